"""Probe one condition: K sampled multi-turn rollouts per item, every rollout kept as evidence (sharded, resumable).

Reads:  <items> (data/dedup/items.parquet, ITEM_FEATURES); the labeler model folder <model> (data/bootstrap/model;
        a folder holding only `model_ref.json` points at another model spec, which is what a disabled bootstrap
        writes); the `rollout:` section (protocol, limits, search_k, judge) and the `search:` section (tools and
        their cache, for conditions with tools) of the same params file.
Writes: <out_dir>/<condition>/evidence.parquet (ROLLOUT_FEATURES, ordered by item then sample) and metrics.json
        (pass rate, valid turns, searches, tokens, rollouts/s, generations saved by adaptive sampling);
        <parts_dir>/<condition>/<fingerprint>/batch-NNNNN.parquet while it runs (one atomic file per finished batch).
Run:    python -m stages probe --condition tools [--shard i/n]

Items are cut into fixed batches of `batch_items` (the unit of work, of resumption and of sharding: batch b belongs
to shard b mod n). A run killed at any point and run again skips the finished batches and produces the same evidence
as an uninterrupted run; shards produce the same evidence as one machine. The parts folder is keyed by a fingerprint
of everything that shapes the rollouts, so changed parameters never reuse stale parts. The last process to finish a
batch writes evidence.parquet when all batches exist. The work itself: pipeline/probe.py.
Does not support: changing batch_items/seed/samples in the middle of a run (that starts a new fingerprint).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.probe import ProbeParams

Params = ProbeParams
SECTION = "probe"


def add_arguments(parser) -> None:
    parser.add_argument("--condition", required=True, help="closed_book | tools | image_only | text_only")
    parser.add_argument("--shard", default="0/1", help="i/n: run only batches b with b %% n == i (default 0/1)")


def run(params: ProbeParams, args) -> int:
    from pipeline.config import load_section
    from pipeline.io import write_json
    from pipeline.probe import probe_condition
    from pipeline.runs import parse_shard
    from pipeline.schema import write_table
    from pipeline.search import SearchParams, SearchTools

    condition = args.condition
    if condition not in params.conditions:
        print(f"error: condition {condition!r} is not in probe.conditions {params.conditions}")
        return 2
    result = probe_condition(params, condition, lambda: SearchTools.from_params(
        load_section(SearchParams, "search", args.params)), parse_shard(args.shard))
    if result.evidence is None:
        print(f"probe {condition}: shard done; batches of other shards missing "
              f"(run the other shards, then any shard again to write the evidence)")
        return 0
    out = Path(params.out_dir) / condition
    write_table(result.evidence, out / "evidence.parquet")
    write_json(result.metrics, out / "metrics.json")
    m = result.metrics
    print(f"probe {condition}: {m['rollouts']} rollouts over {m['items']} items; pass rate {m['pass_rate']:.3f}, "
          f"valid turns {m['valid_turn_rate']:.3f}, search rate {m['search_rate']:.3f} -> {out / 'evidence.parquet'}")
    return 0
