"""Gather throughput: items/s for 1 vs 2 dask workers on ~2,000 generated images.

Writes a temporary local source (JPEG photos-like images of --size pixels + a jsonl), gathers it with each
scheduler and worker count, and prints one line per run. Usage:
    python bench/bench_gather.py [--n 2000] [--size 800x600] [--schedulers processes,threads] [--workers 1,2]
Reads and writes only a temporary folder (removed at the end).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pipeline, not an installed one

from pipeline.images import ImageParams
from pipeline.gather.base import SourceParams
from pipeline.gather.collect import gather_rows
from pipeline.gather.local import read_local


def make_images(root: Path, n: int, size: tuple[int, int]) -> Path:
    """n JPEGs: smooth colour gradients plus noise (a plausible photo's entropy), and rows.jsonl pointing at them."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # a few smooth colour fields and noise fields, combined per image with random shifts (cheap to generate)
    fields = [np.stack([np.sin(xx / (30 + 7 * k) + k), np.cos(yy / (25 + 5 * k) + 2 * k),
                        np.sin((xx + yy) / (45 + 3 * k) + 3 * k)], axis=-1) for k in range(6)]
    noises = [rng.normal(0, 12, size=(h, w, 3)).astype(np.float32) for _ in range(4)]
    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        f = np.roll(fields[i % 6], (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
        arr = (127 + 100 * f + noises[i % 4]).clip(0, 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        (root / "img" / f"{i:05d}.jpg").write_bytes(buf.getvalue())
        lines.append(json.dumps({"id": f"b{i}", "image": f"img/{i:05d}.jpg", "question": f"What is image {i}?",
                                 "answer": f"pattern {i}"}))
    (root / "rows.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "rows.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", default="800x600")
    ap.add_argument("--schedulers", default="processes,threads")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--partition-size", type=int, default=64)
    ap.add_argument("--max-pixels", type=int, default=1024 * 1024)
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-gather-"))
    try:
        t0 = time.perf_counter()
        rows_path = make_images(tmp, args.n, size)
        print(f"generated {args.n} JPEG images {args.size} in {time.perf_counter() - t0:.1f}s "
              f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
        opts = ImageParams(max_pixels=args.max_pixels)
        params = SourceParams(kind="local", path=str(rows_path))
        for scheduler in args.schedulers.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                raws = list(read_local(params))
                t = time.perf_counter()
                result = gather_rows(raws, "bench", opts, scheduler=scheduler, num_workers=workers,
                                     partition_size=args.partition_size)
                dt = time.perf_counter() - t
                n_items = len(result.splits.get("items", []))
                assert n_items == args.n and not result.quarantine, result.metrics()
                print(f"scheduler={scheduler:<10} workers={workers}  {n_items} items in {dt:6.1f}s  "
                      f"{n_items / dt:7.1f} items/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
