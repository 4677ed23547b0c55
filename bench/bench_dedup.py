"""Benchmark of the dedup stage's two costs: perceptual hashing throughput and the near-duplicate search.

1. Hashing: N synthetic pictures (320x240 PNG) in an items parquet, hashed with the stage's settings (full image
   + crop windows) by dask with 1 and then 2 local worker processes (process start-up included).
2. Search: n random 64-bit hashes (100k and 1M by default) with planted near-duplicates (1..threshold random bit
   flips); multi-index hashing must find every planted pair; the time and its growth from the smaller to the larger
   n are printed next to the quadratic growth an all-pairs search would have, and the all-pairs time is
   extrapolated from a measured sample of queries.

Usage: python bench/bench_dedup.py [--images 400] [--sizes 100000 1000000] [--threshold 8] [--planted 2000]
Writes nothing but a temporary folder; prints the figures.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.dedup.hamming import hamming_pairs, plan_blocks, popcount  # noqa: E402
from pipeline.dedup.hashing import HashSpec, hash_files  # noqa: E402


def synthetic_items(n: int, path: Path) -> None:
    from PIL import Image, ImageDraw

    from pipeline.schema import make_item_id, sha1_hex, write_items

    rows = []
    for s in range(n):
        rng = np.random.default_rng(s)
        img = Image.new("RGB", (320, 240), tuple(int(x) for x in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, 320)), int(rng.integers(0, 240))
            w, h = (int(v) for v in rng.integers(20, 160, 2))
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=tuple(int(x) for x in rng.integers(0, 256, 3)))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        b = buf.getvalue()
        q = f"question {s}?"
        rows.append({"id": make_item_id("bench", q, "a", sha1_hex(b)), "image": {"bytes": b, "path": None},
                     "image_sha1": sha1_hex(b), "question": q, "answer": "a", "aliases": [], "source": "bench",
                     "category": "visual", "license": "CC0-1.0", "entity": "", "meta": "{}"})
    write_items(rows, path)


def bench_hashing(n_images: int) -> None:
    spec = HashSpec()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "items.parquet"
        synthetic_items(n_images, path)
        print(f"hashing: {n_images} images 320x240 PNG, {spec.method}, {spec.n_variants} hashes per image (full + crop windows)")
        base = None
        for workers in (1, 2):
            t0 = time.perf_counter()
            hashes, errors, _ = hash_files([path], spec, scheduler="processes", workers=workers, chunk_rows=64)
            dt = time.perf_counter() - t0
            assert not any(errors) and hashes.shape[0] == n_images
            base = base or dt
            print(f"  workers={workers}: {dt:6.2f} s  {n_images / dt:7.1f} images/s  speed-up x{base / dt:.2f}")


def planted_hashes(n: int, n_planted: int, threshold: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, np.iinfo(np.uint64).max, n - n_planted, dtype=np.uint64, endpoint=True)
    src = rng.choice(len(h), n_planted, replace=False)
    copies = h[src].copy()
    for j in range(n_planted):
        for b in rng.choice(64, int(rng.integers(1, threshold + 1)), replace=False):
            copies[j] ^= np.uint64(1) << np.uint64(int(b))
    allh = np.concatenate([h, copies])
    order = rng.permutation(n)  # planted copies anywhere, not at the end
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n)
    pairs = {tuple(sorted((int(inv[s]), int(inv[len(h) + j])))) for j, s in enumerate(src)}
    return allh[order], pairs


def bench_search(sizes: list[int], threshold: int, n_planted: int) -> None:
    print(f"near-duplicate search: random 64-bit hashes, threshold {threshold} bits, {n_planted} planted pairs each")
    times = {}
    for n in sizes:
        h, planted = planted_hashes(n, n_planted, threshold)
        t0 = time.perf_counter()
        qi, ii, _ = hamming_pairs(h, threshold=threshold)
        dt = time.perf_counter() - t0
        found = set(zip(qi.tolist(), ii.tolist()))
        missing = planted - found
        times[n] = dt
        # all-pairs estimate from 200 queries against the whole set
        t1 = time.perf_counter()
        for q in h[:200]:
            popcount(h ^ q)
        brute = (time.perf_counter() - t1) / 200 * n / 2
        print(f"  n={n:>9,}: {dt:7.2f} s, blocks={plan_blocks(n, n, threshold)}, pairs found {len(found):,}, "
              f"planted found {len(planted) - len(missing)}/{len(planted)}; all-pairs estimate {brute:8.1f} s")
        assert not missing, f"{len(missing)} planted pairs missed"
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        print(f"  growth {a:,} -> {b:,}: x{times[b] / times[a]:.1f} (linear x{b / a:.0f}, quadratic x{(b / a) ** 2:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--threshold", type=int, default=8)
    ap.add_argument("--planted", type=int, default=2000)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs")
    bench_hashing(args.images)
    bench_search(args.sizes, args.threshold, args.planted)


if __name__ == "__main__":
    main()
