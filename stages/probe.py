"""Probe the items: sampled multi-turn rollouts under a cascade of conditions, every rollout kept as evidence.

Reads:  <items> (data/dedup/items.parquet, ITEM_FEATURES); the labeler model folder <model> (data/bootstrap/model;
        a folder holding only `model_ref.json` points at another model spec, which is what a disabled bootstrap
        writes); the `rollout:` section (protocol, limits, search_k, judge, format_rule), the `label_rule:` section
        (when adaptive sampling may stop) and the `search:` section (tools and their cache) of the same params file.
Writes: <out_dir>/<condition>/evidence.parquet for each of `conditions` (ROLLOUT_FEATURES, ordered by item then
        sample; empty when no item reached the condition) and <out_dir>/metrics.json (rollouts against the full
        design, pass rate, valid turns, searches and tokens per condition, rollouts/s);
        <parts_dir>/<fingerprint>/batch-NNNNN.parquet while it runs (one atomic file per finished batch).
Run:    python -m stages probe [--shard i/n] [workers=N]

The conditions run cheapest first (closed_book, image_only, text_only, tools); with `cascade` an item goes on only
when the label rule settles the current condition as fail, and with `adaptive` each condition is sampled in rounds
only while an item's verdict is open (pipeline/probe.py). Items are cut into fixed batches of `batch_items` (the
unit of work, of resumption and of sharding: batch b belongs to shard b mod n). A run killed at any point and run
again skips the finished batches and produces the same evidence; shards produce the same evidence as one machine.
With `workers` N > 1 (and no --shard) the stage starts N worker processes, `--shard i/N` each with its own engine
(GPUs i*T .. i*T+T-1 for engine.tensor_parallel_size T, when GPUs are visible), waits for them, then merges: one
engine per GPU (or per T GPUs) of a node. On several machines run `--shard i/n` on each (a shared parts_dir), then
any shard again to write the evidence.
Does not support: changing batch_items/seed/samples in the middle of a run (that starts a new fingerprint).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.probe import ProbeParams

Params = ProbeParams
SECTION = "probe"


def add_arguments(parser) -> None:
    parser.add_argument("--shard", default="0/1", help="i/n: run only batches b with b %% n == i (default 0/1)")


def run(params: ProbeParams, args) -> int:
    from pipeline.config import load_section
    from pipeline.io import write_json
    from pipeline.probe import probe
    from pipeline.runs import parse_shard
    from pipeline.schema import write_table
    from pipeline.search import SearchParams, SearchTools

    if params.workers > 1 and parse_shard(args.shard) == (0, 1):
        run_workers(params.workers, args, max(1, params.engine.tensor_parallel_size))
    result = probe(params, lambda: SearchTools.from_params(load_section(SearchParams, "search", args.params)),
                   parse_shard(args.shard))
    if result.evidence is None:
        print("probe: shard done; batches of other shards missing (run the other shards, then any shard again to "
              "write the evidence)")
        return 0
    out = Path(params.out_dir)
    for condition, table in result.evidence.items():
        write_table(table, out / condition / "evidence.parquet")
    write_json(result.metrics, out / "metrics.json")
    m = result.metrics
    print(f"probe: {m['rollouts']} rollouts over {m['items']} items ({m['saved_vs_full_design']:.1%} fewer than "
          f"{m['samples']} per item and condition) -> {out}")
    for c, pc in m["per_condition"].items():
        print(f"  {c:<12} {pc['items']:>4} items {pc['rollouts']:>5} rollouts, pass rate {pc['pass_rate']:.3f}, "
              f"valid format {pc['valid_format_rate']:.3f}, search rate {pc['search_rate']:.3f}")
    return 0


def run_workers(n: int, args, gpus_per_engine: int = 1) -> None:
    """Play shard i/n in worker process i (each loads its own engine: GPUs i*g .. i*g+g-1 for g = `gpus_per_engine`
    when GPUs are visible) and wait for all; raises naming the failed workers. The workers' batches land in
    parts_dir, where the merge finds them."""
    import os
    import subprocess
    import sys

    devices = worker_devices(n, _visible_gpus(), gpus_per_engine)
    procs = []
    for i in range(n):
        env = dict(os.environ)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        else:  # CPU engines share the cores instead of each taking all of them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
        cmd = [sys.executable, "-m", "stages", "probe", "--params", args.params, *args.overrides, "workers=1",
               "--shard", f"{i}/{n}"]
        procs.append(subprocess.Popen(cmd, env=env))
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise RuntimeError(f"probe workers {failed} of {n} failed (their output is above); run the stage again: "
                           "finished batches are kept, only the missing ones are played")


def worker_devices(n: int, gpus: list[str], per_engine: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each of `n` workers: consecutive groups of `per_engine` of `gpus` ([] without GPUs)."""
    if not gpus:
        return []
    if n * per_engine > len(gpus):
        raise ValueError(f"probe.workers={n} engines of {per_engine} GPU(s) each need {n * per_engine} GPUs, "
                         f"{len(gpus)} visible: lower workers (or engine.tensor_parallel_size)")
    return [",".join(gpus[i * per_engine:(i + 1) * per_engine]) for i in range(n)]


def _visible_gpus() -> list[str]:
    """CUDA device ids this process may use ([] without CUDA)."""
    import os

    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA means CPU workers
        return []
    if not count:
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]
