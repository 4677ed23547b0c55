"""Probe one condition: K sampled multi-turn rollouts per item, every rollout kept as evidence (sharded, resumable).

Reads:  <items> (data/dedup/items.parquet, ITEM_FEATURES); the labeler model folder <model> (data/bootstrap/model;
        a folder holding only `model_ref.json` points at another model spec, which is what a disabled bootstrap
        writes); the `search:` section of the same params file (tools and their cache) for conditions with tools.
Writes: <out_dir>/<condition>/evidence.parquet (ROLLOUT_FEATURES, ordered by item then sample) and metrics.json
        (pass rate, valid turns, searches, tokens, rollouts/s, generations saved by adaptive sampling);
        <parts_dir>/<condition>/<fingerprint>/batch-NNNNN.parquet while it runs (one atomic file per finished batch).
Run:    python -m stages probe --condition tools [--shard i/n]

Items are cut into fixed batches of `batch_items` (the unit of work, of resumption and of sharding: batch b belongs
to shard b mod n). A batch's rollouts depend only on its items, the parameters and the seed (the engine's sampler is
re-seeded per call and its prefix cache emptied per batch), so a run killed at any point and run again skips the
finished batches and produces the same evidence as an uninterrupted run; shards produce the same evidence as one
machine. The parts folder is keyed by a fingerprint of everything that shapes the rollouts, so changed parameters
never reuse stale parts. The last process to finish a batch writes evidence.parquet when all batches exist.
Does not support: changing batch_items/seed/samples in the middle of a run (that starts a new fingerprint).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from pipeline.config import param
from pipeline.judge import JudgeParams
from pipeline.rollout.engines import EngineParams, Sampling
from pipeline.rollout.protocols import Limits

SECTION = "probe"


@dataclasses.dataclass
class AdaptiveParams:
    enabled: bool = param(False, help="sample in rounds and stop an item's condition once its label is settled")
    first_round: int = param(2, help="rollouts per item in the first round")
    round_size: int = param(2, help="rollouts per item in each later round (up to `samples` in all)")
    min_correct: int = param(1, help="correct rollouts without search that settle search_free (= label.rule.search_free_min_correct)")

    def validate(self) -> None:
        if self.first_round < 1 or self.round_size < 1 or self.min_correct < 1:
            raise ValueError("first_round, round_size and min_correct must be >= 1")


@dataclasses.dataclass
class Params:
    items: str = param("data/dedup/items.parquet", help="items to probe (ITEM_FEATURES parquet)")
    out_dir: str = param("data/probe", help="evidence is written to <out_dir>/<condition>/")
    parts_dir: str = param("data/probe_parts", help="finished batches while a run is in progress (resume state)")
    model: str = param("data/bootstrap/model", help="labeler: a model folder (or one with model_ref.json), "
                       "'packaged:smollm2', 'tiny:text', 'tiny:vlm' or a Hub id")
    protocol: str = param("mmsearch_r1", help="mmsearch_r1 (the paper's tags) | tool_calls (native tool calling)")
    limits: Limits = param(factory=Limits, help="per-rollout limits (the paper: 3 turns, 1 image search in turn 1, 2 text searches)")
    conditions: list[str] = param(["closed_book", "tools"], help="conditions probed (one DVC stage each; label reads them all)")
    samples: int = param(4, help="rollouts per item and condition (K)")
    max_items: int = param(0, help="probe at most this many items (0 = all); a seeded choice spread over the file")
    batch_items: int = param(16, help="items per batch (unit of work, resume and sharding)")
    seed: int = param(0, help="base seed of item choice and sampling")
    search_k: int = param(0, help="results per search call (0 = search.k_image / search.k_text); keep equal to bootstrap.search_k")
    with_image: bool = param(True, help="show the image to a vision-language model (a text-only model never sees it)")
    engine: EngineParams = param(factory=EngineParams, help="generation engine")
    sampling: Sampling = param(factory=lambda: Sampling(temperature=1.0, max_tokens=64), help="sampling per turn")
    judge: JudgeParams = param(factory=JudgeParams, help="answer judge (the paper's reward: em)")
    adaptive: AdaptiveParams = param(factory=AdaptiveParams, help="adaptive sampling")

    def validate(self) -> None:
        from pipeline.schema import CONDITIONS

        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise ValueError(f"unknown condition {bad[0]!r}; use of {list(CONDITIONS)}")
        if self.samples < 1 or self.batch_items < 1 or self.max_items < 0:
            raise ValueError("samples and batch_items must be >= 1, max_items >= 0")


def add_arguments(parser) -> None:
    parser.add_argument("--condition", required=True, help="closed_book | tools | image_only | text_only")
    parser.add_argument("--shard", default="0/1", help="i/n: run only batches b with b %% n == i (default 0/1)")


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} must look like i/n, e.g. 0/2") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def resolve_labeler(spec: str) -> str:
    """A model folder; a folder with model_ref.json (written when bootstrap is off) resolves to its spec."""
    from pipeline.models import resolve_model

    ref = Path(spec) / "model_ref.json"
    if ref.exists():
        spec = json.loads(ref.read_text())["model"]
    return resolve_model(spec)


def select_items(ids: list[str], max_items: int, seed: int) -> list[int]:
    """Row positions to probe, in file order: all, or a seeded choice of `max_items` spread over the file."""
    from pipeline.rollout.engines import derive_seed

    if not max_items or max_items >= len(ids):
        return list(range(len(ids)))
    ranked = sorted(range(len(ids)), key=lambda i: (derive_seed(seed, "select", ids[i]), ids[i]))
    return sorted(ranked[:max_items])


def fingerprint(params: Params, condition: str, model_path: str, item_ids: list[str]) -> str:
    from pipeline.models import folder_digest
    from pipeline.schema import sha1_hex, to_json

    keep = dataclasses.asdict(params)
    for k in ("out_dir", "parts_dir", "items", "model", "conditions"):
        keep.pop(k)
    keep["engine"] = {k: keep["engine"][k] for k in ("kind", "dtype", "seed_mode")}
    return sha1_hex(to_json({"params": keep, "condition": condition, "model": folder_digest(model_path),
                             "items": sha1_hex("\n".join(item_ids))}))[:16]


def probe_batch(engine, protocol, tools, items: list[dict], condition: str, params: Params, batch_seed: int,
                model_name: str) -> tuple[list[dict], int]:
    """Rollouts of one batch (fixed K, or adaptive rounds); returns (rows, generations requested)."""
    from pipeline.curate.label import RuleParams, settled
    from pipeline.rollout.loop import run_rollouts

    common = dict(judge_cfg=params.judge, sampling=params.sampling, with_image=params.with_image,
                  seed=batch_seed, model_name=model_name, search_k=params.search_k or None)
    if not params.adaptive.enabled:
        rows = run_rollouts(engine, protocol, tools, items, condition, params.samples, **common)
        return rows, len(rows)
    rule = RuleParams(search_free_min_correct=params.adaptive.min_correct)
    rows: list[dict] = []
    done = 0
    size = min(params.adaptive.first_round, params.samples)
    per_item: dict[str, list[dict]] = {it["id"]: [] for it in items}
    while done < params.samples:
        counts = [0 if settled(condition, per_item[it["id"]], rule) else size for it in items]
        if not any(counts):
            break
        new = run_rollouts(engine, protocol, tools, items, condition, size, sample_start=done, item_samples=counts,
                           **common)
        for r in new:
            per_item[r["item_id"]].append(r)
        rows.extend(new)
        done += size
        size = min(params.adaptive.round_size, params.samples - done)
    order = {it["id"]: i for i, it in enumerate(items)}
    rows.sort(key=lambda r: (order[r["item_id"]], r["sample"]))
    return rows, len(rows)


def summarize(rows: list[dict], condition: str, params: Params, extra: dict[str, Any]) -> dict:
    n = len(rows)
    turns = sum(len(r["actions"]) for r in rows)
    valid_turns = sum(sum(a != "invalid" for a in r["actions"]) for r in rows)
    items = len({r["item_id"] for r in rows})
    return {
        "condition": condition,
        "items": items,
        "rollouts": n,
        "rollouts_fixed_k": items * params.samples,
        "generations_saved": items * params.samples - n,
        "pass_rate": round(sum(r["correct"] for r in rows) / n, 4) if n else 0.0,
        "answered_rate": round(sum(bool(r["final_answer"]) for r in rows) / n, 4) if n else 0.0,
        "valid_format_rate": round(sum(r["valid_format"] for r in rows) / n, 4) if n else 0.0,
        "valid_turn_rate": round(valid_turns / turns, 4) if turns else 0.0,
        "turns": turns,
        "mean_image_search": round(sum(r["n_image_search"] for r in rows) / n, 4) if n else 0.0,
        "mean_text_search": round(sum(r["n_text_search"] for r in rows) / n, 4) if n else 0.0,
        "search_rate": round(sum((r["n_image_search"] + r["n_text_search"]) > 0 for r in rows) / n, 4) if n else 0.0,
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "errors": sum(bool(r["error"]) for r in rows),
        **extra,
    }


def rows_table(rows: list[dict]):
    import datasets

    from pipeline.schema import ROLLOUT_FEATURES

    if not rows:
        return ROLLOUT_FEATURES.arrow_schema.empty_table()
    return datasets.Dataset.from_list(rows, features=ROLLOUT_FEATURES).data.table


def run(params: Params, args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import load_section
    from pipeline.io import progress, write_json
    from pipeline.rollout.engines import derive_seed, make_engine
    from pipeline.rollout.protocols import condition_tools, get_protocol
    from pipeline.schema import read_items, write_table

    condition = args.condition
    if condition not in params.conditions:
        print(f"error: condition {condition!r} is not in probe.conditions {params.conditions}")
        return 2
    shard, n_shards = parse_shard(args.shard)
    import datasets

    ds = read_items(params.items).cast_column("image", datasets.Image(decode=False))
    ids = ds["id"]
    chosen = select_items(ids, params.max_items, params.seed)
    batches = [chosen[i:i + params.batch_items] for i in range(0, len(chosen), params.batch_items)]
    model_path = resolve_labeler(params.model)
    fp = fingerprint(params, condition, model_path, [ids[i] for i in chosen])
    parts = Path(params.parts_dir) / condition / fp
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "params.json").write_text(json.dumps({"condition": condition, "model": model_path,
                                                   "params": dataclasses.asdict(params)}, indent=1, default=str))
    part = lambda b: parts / f"batch-{b:05d}.parquet"  # noqa: E731
    mine = [b for b in range(len(batches)) if b % n_shards == shard]
    todo = [b for b in mine if not part(b).exists()]
    print(f"probe {condition}: {len(chosen)} of {len(ids)} items, {len(batches)} batches, shard {shard}/{n_shards}: "
          f"{len(mine) - len(todo)} batches already done, {len(todo)} to run (parts {parts})")

    t_run = time.perf_counter()
    generations, new_rollouts, tools = 0, 0, None
    if todo:
        protocol = get_protocol(params.protocol, params.limits)
        if condition_tools(condition):
            from pipeline.search import SearchParams, SearchTools

            tools = SearchTools.from_params(load_section(SearchParams, "search", args.params))
        engine = make_engine(params.engine.kind, model_path, protocol=protocol, seed=params.seed, params=params.engine)
        t_run = time.perf_counter()
        expect = sum(len(batches[b]) for b in mine) * params.samples
        done_before = sum(len(batches[b]) for b in mine if b not in todo) * params.samples
        bar = progress(total=expect, desc=f"probe {condition}", unit="rollout", initial=done_before)
        for b in todo:
            items = [ds[i] for i in batches[b]]
            seed = derive_seed(params.seed, condition, *[it["id"] for it in items])
            rows, gens = probe_batch(engine, protocol, tools, items, condition, params, seed, model_path)
            write_table(rows_table(rows), part(b))
            generations += gens
            new_rollouts += len(rows)
            bar.update(len(batches[b]) * params.samples)
        bar.close()
        engine.close()
    elapsed = time.perf_counter() - t_run

    missing = [b for b in range(len(batches)) if not part(b).exists()]
    if missing:
        print(f"probe {condition}: shard done; {len(missing)} batches of other shards missing "
              f"(run the other shards, then any shard again to write the evidence)")
        return 0
    table = pa.concat_tables([pq.read_table(part(b)) for b in range(len(batches))]) if batches else rows_table([])
    out = Path(params.out_dir) / condition
    write_table(table, out / "evidence.parquet")
    rows = table.to_pylist()
    extra = {"model": params.model, "model_path_name": Path(model_path).name, "protocol": params.protocol,
             "samples": params.samples, "adaptive": params.adaptive.enabled, "fingerprint": fp,
             "items_available": len(ids)}
    metrics = summarize(rows, condition, params, extra)
    if new_rollouts:
        metrics["this_run"] = {"rollouts": new_rollouts, "seconds": round(elapsed, 2),
                               "rollouts_per_s": round(new_rollouts / elapsed, 3) if elapsed else 0.0}
    if tools is not None:
        metrics["search"] = {k: v for k, v in tools.metrics().items() if k in ("calls", "hits", "misses", "errors",
                                                                                "hit_rate", "mode")}
    write_json(metrics, out / "metrics.json")
    for stale in (Path(params.parts_dir) / condition).iterdir():
        if stale.is_dir() and stale.name != fp:
            import shutil

            shutil.rmtree(stale, ignore_errors=True)
    print(f"probe {condition}: {metrics['rollouts']} rollouts over {metrics['items']} items; pass rate "
          f"{metrics['pass_rate']:.3f}, valid turns {metrics['valid_turn_rate']:.3f}, search rate "
          f"{metrics['search_rate']:.3f} -> {out / 'evidence.parquet'}")
    return 0
