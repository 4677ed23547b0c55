"""Search benchmarks: latency (p50, p99) and throughput of text search on the demo corpus and on a 1,000,000-passage
synthetic corpus, and of image search on a 100,000-image index; index build time and size.

    python bench/bench_search.py [--passages 1000000] [--images 100000] [--queries 500] [--workdir DIR]

The 1M-passage corpus is synthetic (Zipf vocabulary, 60 words per passage; bench/synthetic.py). The 100k image
index holds the real demo corpus images plus synthetic rows (random unit embeddings, colour layouts and hashes) up to
the target size: query-time work (decode, EfficientNet embedding, colour layout, phash, exact scoring of every row,
top-k) is the real code path; the per-image build rate is measured on the real demo images. Prints one JSON object.
Reads packaged data only; writes under --workdir (default: a temporary folder, removed at the end).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def latency(fn, inputs: list, warmup: int = 3) -> dict:
    for x in inputs[:warmup]:
        fn(x)
    ts = []
    t0 = time.perf_counter()
    for x in inputs:
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"n": len(ts), "p50_ms": round(pct(ts, 0.5) * 1000, 2), "p99_ms": round(pct(ts, 0.99) * 1000, 2),
            "mean_ms": round(statistics.mean(ts) * 1000, 2), "qps_1_thread": round(len(ts) / wall, 1)}


def throughput(fn, inputs: list, threads: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, inputs))
    return round(len(inputs) / (time.perf_counter() - t0), 1)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def bench_demo_text(work: Path, n_queries: int) -> dict:
    from pipeline.search.config import LocalParams
    from pipeline.search.local_text import LocalTextBackend, build_text_index
    from pipeline.gather import demo_data
    from pipeline.gather.demo_corpora import passage_rows

    rows = passage_rows()
    res = build_text_index(rows, work / "demo_text", "demo")
    backend = LocalTextBackend(work / "demo_text", LocalParams())
    rng = random.Random(0)
    countries = [c for c in demo_data.countries() if c.capital]
    queries = [f"capital of {c.name}" for c in countries] + [r["title"] for r in rng.sample(rows, 200)]
    rng.shuffle(queries)
    queries = (queries * 3)[:n_queries]
    good = sum(bool(h) and h[0].url == next(r["url"] for r in rows if r["passage_id"].startswith("facts-") and r["entity"] == c.name)
               for c in countries for h in [backend.search(f"capital of {c.name}", 5)])
    out = {"passages": res["passages"], "build_s": res["build_s"], "index_mb": round(res["bytes"] / 1e6, 2),
           **latency(lambda q: backend.search(q, 5), queries),
           "qps_2_threads": throughput(lambda q: backend.search(q, 5), queries, 2),
           "capital_of_x_first": round(good / len(countries), 4)}
    rr = LocalTextBackend(work / "demo_text", LocalParams(rerank=True))
    out["rerank_minilm_pool20"] = latency(lambda q: rr.search(q, 5), queries[:60])
    return out


def bench_synthetic_text(work: Path, n: int, n_queries: int) -> dict:
    from pipeline.io import progress
    from pipeline.search.config import LocalParams
    from pipeline.search.local_text import LocalTextBackend, build_text_index
    from synthetic import synthetic_passages  # bench/synthetic.py

    t0 = time.perf_counter()
    res = build_text_index(synthetic_passages(n, seed=0), work / "syn_text", "synthetic", total=n, progress=progress)
    build_s = time.perf_counter() - t0
    backend = LocalTextBackend(work / "syn_text", LocalParams())
    # queries: 2-4 words from passages (realistic: words that co-occur), mixing frequent and rare terms
    rng = random.Random(1)
    sample = [p for i, p in zip(range(20000), synthetic_passages(20000, seed=0)) if i % 40 == 0]
    queries = []
    for _ in range(n_queries):
        words = rng.choice(sample)["text"].split()
        queries.append(" ".join(rng.sample(words, rng.randint(2, 4))))
    return {"passages": res["passages"], "build_s_incl_generation": round(build_s, 1),
            "index_mb": round(res["bytes"] / 1e6, 1), **latency(lambda q: backend.search(q, 5), queries),
            "qps_2_threads": throughput(lambda q: backend.search(q, 5), queries, 2)}


def bench_image(work: Path, n_total: int, n_queries: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline.images import ImageParams
    from pipeline.search.config import LocalParams
    from pipeline.search.embed import COLOR_DIM, IMAGE_DIM, color_layout, decode_rgb, shared_image_embedder
    from pipeline.search.local_image import ImageIndex, LocalImageBackend, build_image_index, image_features
    from pipeline.gather.demo_corpora import image_rows
    from pipeline.gather.demo import DemoParams
    from pipeline.gather.rephoto import rephotograph

    rows = image_rows(ImageParams())
    t0 = time.perf_counter()
    res = build_image_index(rows, work / "img", "demo-images", threads=2)
    build_rate = res["images"] / (time.perf_counter() - t0)
    d = work / "img"
    emb, col, ph = np.load(d / "embeddings.npy"), np.load(d / "colors.npy"), np.load(d / "phash.npy")
    meta = pq.read_table(d / "meta.parquet")
    n_real = emb.shape[0]
    n_fake = max(0, n_total - n_real)
    rng = np.random.default_rng(0)
    # synthetic rows: unit vectors in the positive orthant like real post-ReLU6 mean features / centred colour layouts
    fe = np.abs(rng.standard_normal((n_fake, IMAGE_DIM), dtype=np.float32))
    fe /= np.linalg.norm(fe, axis=1, keepdims=True)
    fc = rng.standard_normal((n_fake, COLOR_DIM), dtype=np.float32)
    fc /= np.linalg.norm(fc, axis=1, keepdims=True)
    np.save(d / "embeddings.npy", np.concatenate([emb, fe]))
    np.save(d / "colors.npy", np.concatenate([col, fc]))
    np.save(d / "phash.npy", np.concatenate([ph, rng.integers(0, 2**63, n_fake, dtype=np.int64).astype(np.uint64)]))
    thumb = meta.column("thumbnail")[0].as_py()
    fake = pa.table({"image_id": [f"syn{i}" for i in range(n_fake)], "title": [f"Synthetic {i}" for i in range(n_fake)],
                     "url": [""] * n_fake, "entity": [""] * n_fake, "license": [""] * n_fake,
                     "thumbnail": pa.array([thumb] * n_fake, type=pa.binary())})
    pq.write_table(pa.concat_tables([meta, fake.cast(meta.schema)]), d / "meta.parquet")
    backend = LocalImageBackend(d, LocalParams())
    t = time.perf_counter()
    index = backend.index()
    load_s = time.perf_counter() - t
    flags = [r for r in rows if r["image_id"].startswith("flag-")]
    qrows = [flags[i % len(flags)] for i in range(n_queries)]
    queries = [rephotograph(Image.open(io.BytesIO(r["image"]["bytes"])), seed=i, p=DemoParams().jitter) for i, r in enumerate(qrows)]
    top1 = sum(backend.search(q, 5)[0].title == r["title"] for q, r in zip(queries, qrows))
    lat = latency(lambda q: backend.search(q, 5), queries)
    emb_ = shared_image_embedder(2)
    pil = [decode_rgb(q) for q in queries]
    feats = [image_features(emb_, [p]) for p in pil[:50]]
    stage = {
        "embed_only": latency(lambda p: emb_.embed_pil([p]), pil[:50]),
        "score_topk_only": latency(lambda f: index.top_k(index.scores(f[0][0], f[1][0], int(f[2][0]), 1.0, 0.25), 5), feats),
    }
    size = sum((d / n).stat().st_size for n in ("embeddings.npy", "colors.npy", "phash.npy", "meta.parquet"))
    return {"images": len(index), "real_images": n_real, "synthetic_rows": n_fake,
            "build_rate_img_per_s_real": round(build_rate, 1),
            "est_build_s_100k_real": round(n_total / build_rate, 0), "index_mb": round(size / 1e6, 1),
            "load_s": round(load_s, 2), "top1_real_queries_vs_100k": round(top1 / len(queries), 4), **lat,
            "qps_2_threads": throughput(lambda q: backend.search(q, 5), queries, 2), "breakdown": stage}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--only", choices=("demo", "text", "image"), default=None)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench_search_"))
    work.mkdir(parents=True, exist_ok=True)
    out = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}}
    try:
        if a.only in (None, "demo"):
            out["text_demo"] = bench_demo_text(work, a.queries)
        if a.only in (None, "text"):
            out["text_synthetic"] = bench_synthetic_text(work, a.passages, a.queries)
        if a.only in (None, "image"):
            out["image"] = bench_image(work, a.images, min(a.queries, 200))
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    out["machine"]["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
