"""The paper's data at release size: importing an image-search cache like FVQA's train cache, and reading an
FVQA-schema parquet through the `mmsearch_r1` source.

    python bench/bench_fvqa.py [--entries 4856] [--images 74] [--rows 2000] [--workdir DIR]

The cache is synthetic but shaped like the released one: `--entries` data_ids with 1 to 5 results each, of which
`--images` are PIL images (225x225 RGB, pickled as JpegImageFile/PngImageFile, about 11 MB together, like the 11.3 MB
release) and the rest thumbnail URLs. Timed: the restricted unpickler alone, and the whole import into a fresh
cache (images encoded into the blob table). The parquet has `--rows` rows of 640x480 JPEG photos in the released
schema, one row group per 100 rows; timed: the reader (rows/s, MB/s) and Arrow's peak allocation while reading. Prints one JSON object. Writes under --workdir
(default: a temporary folder, removed at the end).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def release_like_cache(entries: int, images: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    counts = [rng.randint(1, 5) for _ in range(entries)]
    slots = [(e, r) for e, n in enumerate(counts) for r in range(n)]
    with_image = set(rng.sample(slots, min(images, len(slots))))
    data = {}
    for e, n in enumerate(counts):
        urls = []
        for r in range(n):
            if (e, r) in with_image:
                arr = (np.random.default_rng(e * 7 + r).random((225, 225, 3)) * 255).astype("uint8")
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG" if r % 2 else "PNG")
                buf.seek(0)
                img = Image.open(buf)
                img.load()
                urls.append(img)
            else:
                urls.append(f"https://encrypted-tbn0.gstatic.com/images?q=tbn:{e}-{r}")
        data[f"fvqa_train_{e}"] = {"tool_returned_web_title_list": [f"Page {r} about item {e} | Example" for r in range(n)],
                                   "tool_returned_images_urls": urls}
    return data


def fvqa_parquet(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.null())]))),
        ("reward_model", pa.struct([("candidate_answers", pa.string()), ("ground_truth", pa.string()), ("style", pa.string())])),
        ("data_source", pa.string()), ("image_urls", pa.null()), ("data_id", pa.string()), ("category", pa.string()),
    ])
    yy, xx = np.mgrid[0:480, 0:640]
    writer = pq.ParquetWriter(path, schema)
    for start in range(0, rows, 100):
        batch = []
        for i in range(start, min(rows, start + 100)):
            arr = np.stack([(xx + i) % 256, (yy * 2 + i) % 256, (xx + yy) % 256], -1).astype("uint8")
            arr = (arr + np.random.default_rng(i).integers(0, 24, arr.shape)).astype("uint8")
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=90)
            batch.append({"prompt": [{"content": f"What is shown in image {i}?", "role": "user"}],
                          "images": [{"bytes": buf.getvalue(), "path": None}],
                          "reward_model": {"candidate_answers": json.dumps([f"thing {i}"]), "ground_truth": f"thing {i}",
                                           "style": "rule"},
                          "data_source": "mmsearch_r1/fvqa_train", "image_urls": None, "data_id": f"fvqa_train_{i}",
                          "category": "search_free" if i % 3 else "search_required"})
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=4856)
    ap.add_argument("--images", type=int, default=74)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    import pyarrow as pa

    from pipeline.gather.base import SourceParams
    from pipeline.gather.mmsearch_r1 import read_mmsearch_r1
    from pipeline.search.cache import SearchCache
    from pipeline.search.paper_cache import read_paper_cache

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-fvqa-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        pkl = work / "fvqa_train_image_search_results_cache.pkl"
        pkl.write_bytes(pickle.dumps(release_like_cache(args.entries, args.images)))
        t0 = time.perf_counter()
        read_paper_cache(pkl)
        t_load = time.perf_counter() - t0
        cache = SearchCache(work / "cache.sqlite")
        t0 = time.perf_counter()
        report = cache.import_paper_cache(pkl)
        t_import = time.perf_counter() - t0
        cache.close()

        parquet = work / "fvqa_train.parquet"
        fvqa_parquet(parquet, args.rows)
        t0 = time.perf_counter()
        n = peak = 0
        for _ in read_mmsearch_r1(SourceParams(kind="mmsearch_r1", path=str(parquet))):
            n += 1
            peak = max(peak, pa.total_allocated_bytes())
        t_read = time.perf_counter() - t0
        mb = parquet.stat().st_size / 2**20
        print(json.dumps({
            "paper_cache": {"entries": args.entries, "pickle_mb": round(pkl.stat().st_size / 2**20, 2),
                            "restricted_load_s": round(t_load, 3), "import_s": round(t_import, 3),
                            "entries_per_s": round(args.entries / t_import, 1),
                            "counts": {k: v for k, v in report.items() if k != "problems"},
                            "cache_mb": round((work / "cache.sqlite").stat().st_size / 2**20, 2)},
            "fvqa_reader": {"rows": n, "parquet_mb": round(mb, 1), "read_s": round(t_read, 3),
                            "rows_per_s": round(n / t_read, 1), "mb_per_s": round(mb / t_read, 1),
                            "arrow_peak_mb": round(peak / 2**20, 1)},
        }, indent=2))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
