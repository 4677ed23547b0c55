"""Streaming gather of a big local parquet source: items/s and peak memory, threads vs a 2-worker dask cluster.

Writes a temporary parquet source of --rows text-only rows (id, question, answer, aliases; no images, so the
figures are the per-row step, reading, parts and writing, not image decoding), then gathers it with
`gather_source` (the stage's streaming path: parts of --part-rows rows, outputs written row group by row group)
once per scheduler, each in a fresh subprocess so its peak RSS is its own. Prints one line per run and the machine.
Usage:
    python bench/bench_gather_stream.py [--rows 1000000] [--schedulers threads,local-cluster] [--workers 2]
Peak RSS: the gathering process (ru_maxrss of itself) and, for local-cluster, the largest of its worker processes
(ru_maxrss of waited-for children). Reads and writes only a temporary folder (removed at the end).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_source(path: Path, rows: int, batch: int = 100_000) -> None:
    """rows text-only records in one parquet file, written a batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                                           ("aliases", pa.list_(pa.string()))]), compression="zstd") as w:
        for start in range(0, rows, batch):
            n = range(start, min(rows, start + batch))
            w.write_table(pa.table({
                "id": [f"q{i}" for i in n],
                "question": [f"What is the code of record {i}?" for i in n],
                "answer": [f"C{i * 7919 % 1000003:07d}" for i in n],
                "aliases": [[f"code {i}"] for i in n],
            }))


def one_run(source: Path, out: Path, scheduler: str, workers: int, part_rows: int, partition_size: int) -> dict:
    from pipeline.gather.base import SourceParams
    from pipeline.gather.collect import gather_source
    from pipeline.gather.local import read_local
    from pipeline.images import ImageParams

    params = SourceParams(kind="local", path=str(source), require_image=False)
    t = time.perf_counter()
    metrics, stats = gather_source(read_local(params), "bench", ImageParams(), out, fingerprint="bench",
                                   require_image=False, scheduler=scheduler, num_workers=workers,
                                   partition_size=partition_size, part_rows=part_rows)
    dt = time.perf_counter() - t
    return {"scheduler": scheduler, "workers": workers, "rows": metrics["rows_in"], "items": metrics["items_out"],
            "seconds": round(dt, 1), "items_per_s": round(metrics["items_out"] / dt, 1), "parts": stats.parts,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_rss_children_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "items_bytes": (out / "items.parquet").stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the generated source")
    ap.add_argument("--schedulers", default="threads,local-cluster", help="comma-separated gather.scheduler values")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--part-rows", type=int, default=4096)
    ap.add_argument("--partition-size", type=int, default=1024, help="rows per dask task")
    ap.add_argument("--one", nargs=2, metavar=("SOURCE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--scheduler", default="threads", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(Path(args.one[0]), Path(args.one[1]), args.scheduler, args.workers, args.part_rows,
                                 args.partition_size)))
        return
    from pipeline.hardware import machine_line

    print(machine_line())
    tmp = Path(tempfile.mkdtemp(prefix="bench-gather-stream-"))
    try:
        t = time.perf_counter()
        source = tmp / "source.parquet"
        make_source(source, args.rows)
        print(f"generated {args.rows} text-only rows ({source.stat().st_size / 2**20:.1f} MiB parquet) "
              f"in {time.perf_counter() - t:.1f}s")
        digests = set()
        for scheduler in args.schedulers.split(","):
            out = tmp / f"out-{scheduler}"
            cmd = [sys.executable, __file__, "--one", str(source), str(out), "--scheduler", scheduler,
                   "--workers", str(args.workers), "--part-rows", str(args.part_rows),
                   "--partition-size", str(args.partition_size)]
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{scheduler} run failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            digests.add(hashlib.sha256((out / "items.parquet").read_bytes()).hexdigest())
            print(f"scheduler={r['scheduler']:<13} workers={r['workers']}  {r['items']} items of {r['rows']} rows "
                  f"in {r['seconds']:7.1f}s  {r['items_per_s']:8.1f} items/s  peak RSS {r['peak_rss_mib']:.0f} MiB "
                  f"(largest worker process {r['peak_rss_children_mib']:.0f} MiB)  {r['parts']} parts")
        print("outputs byte-identical across schedulers:", len(digests) == 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
