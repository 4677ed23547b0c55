"""Probing: K sampled multi-turn rollouts per item and condition, fixed or adaptive, every rollout kept as evidence.

`probe_condition(params, condition, make_tools, shard)` is the whole probe of one condition: it reads the items
(`params.items`), chooses them (`select_items`), cuts them into batches of `batch_items` (the unit of work, resume and
sharding of a `pipeline.runs.Run` under `<parts_dir>/<condition>/<fingerprint>/batch-NNNNN.parquet`), plays the
batches this shard still lacks (`probe_batch`) and, once every batch exists, returns the evidence table (in
ROLLOUT_FEATURES, ordered by item then sample) and its summary metrics (`summarize`). Writes only the parts folder.

A batch's rollouts depend only on its items, the parameters and the seed (the engine's sampler is re-seeded per call
and its prefix cache emptied per batch), so a killed run started again, or the same run over shards, gives the same
evidence. The fingerprint covers everything that shapes the rollouts (parameters, condition, model bytes, the chosen
item ids), so changed inputs never reuse stale parts.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.config import param
from pipeline.rollout.config import RolloutParams
from pipeline.rollout.engines import EngineParams, Sampling


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
class ProbeParams(RolloutParams):
    """The `probe:` section (the rollout settings come from `rollout:`)."""

    items: str = param("data/dedup/items.parquet", help="items to probe (ITEM_FEATURES parquet)")
    out_dir: str = param("data/probe", help="evidence is written to <out_dir>/<condition>/")
    parts_dir: str = param("data/probe_parts", help="finished batches while a run is in progress (resume state)")
    model: str = param("data/bootstrap/model", help="labeler: a model folder (or one with model_ref.json), "
                       "'packaged:smollm2', 'tiny:text', 'tiny:vlm' or a Hub id")
    conditions: list[str] = param(["closed_book", "tools"], help="conditions probed (one DVC stage each; label reads them all)")
    samples: int = param(4, help="rollouts per item and condition (K)")
    max_items: int = param(0, help="probe at most this many items (0 = all); a seeded choice spread over the file")
    batch_items: int = param(16, help="items per batch (unit of work, resume and sharding)")
    seed: int = param(0, help="base seed of item choice and sampling")
    with_image: bool = param(True, help="show the image to a vision-language model (a text-only model never sees it)")
    engine: EngineParams = param(factory=EngineParams, help="generation engine")
    sampling: Sampling = param(factory=lambda: Sampling(temperature=1.0, max_tokens=64), help="sampling per turn")
    adaptive: AdaptiveParams = param(factory=AdaptiveParams, help="adaptive sampling")

    def validate(self) -> None:
        from pipeline.schema import CONDITIONS

        RolloutParams.validate(self)
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise ValueError(f"unknown condition {bad[0]!r}; use of {list(CONDITIONS)}")
        if self.samples < 1 or self.batch_items < 1 or self.max_items < 0:
            raise ValueError("samples and batch_items must be >= 1, max_items >= 0")


@dataclasses.dataclass
class ProbeRun:
    """What `probe_condition` did: the batches, how many were done before/now, and (once complete) the results."""

    batches: int
    done_before: int
    ran: int
    evidence: Any = None  # pyarrow.Table once every batch exists, else None
    metrics: dict | None = None


def select_items(ids: list[str], max_items: int, seed: int) -> list[int]:
    """Row positions to probe, in file order: all, or a seeded choice of `max_items` spread over the file."""
    from pipeline.rollout.engines import derive_seed

    if not max_items or max_items >= len(ids):
        return list(range(len(ids)))
    ranked = sorted(range(len(ids)), key=lambda i: (derive_seed(seed, "select", ids[i]), ids[i]))
    return sorted(ranked[:max_items])


def fingerprint(params: ProbeParams, condition: str, model_path: str, item_ids: list[str]) -> str:
    """Everything that shapes the rollouts of one condition (output locations and the condition list excluded)."""
    from pipeline.runs import fingerprint as fp, path_digest

    keep = dataclasses.asdict(params)
    for k in ("out_dir", "parts_dir", "items", "model", "conditions"):
        keep.pop(k)
    keep["engine"] = {k: keep["engine"][k] for k in ("kind", "dtype", "seed_mode")}
    return fp({"params": keep, "condition": condition, "model": path_digest(model_path), "items": fp(item_ids)})


def probe_batch(engine, protocol, tools, items: list[dict], condition: str, params: ProbeParams, batch_seed: int,
                model_name: str) -> tuple[list[dict], int]:
    """Rollouts of one batch (fixed K, or adaptive rounds); returns (rows, generations requested)."""
    from pipeline.curate.label import RuleParams, settled
    from pipeline.rollout.loop import run_rollouts

    common = dict(judge_cfg=params.judge, format_rule=params.format_rule, sampling=params.sampling,
                  with_image=params.with_image, seed=batch_seed, model_name=model_name, search_k=params.search_k or None)
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


def summarize(rows: list[dict], condition: str, params: ProbeParams, extra: dict[str, Any]) -> dict:
    """Metrics of a condition's evidence: pass rate, valid turns, searches, tokens, generations saved."""
    n = len(rows)
    turns = sum(len(r["actions"]) for r in rows)
    valid_turns = sum(sum(a != "invalid" for a in r["actions"]) for r in rows)
    items = len({r["item_id"] for r in rows})
    rate = lambda k: round(sum(k(r) for r in rows) / n, 4) if n else 0.0  # noqa: E731
    return {
        "condition": condition,
        "items": items,
        "rollouts": n,
        "rollouts_fixed_k": items * params.samples,
        "generations_saved": items * params.samples - n,
        "pass_rate": rate(lambda r: r["correct"]),
        "answered_rate": rate(lambda r: bool(r["final_answer"])),
        "valid_format_rate": rate(lambda r: r["valid_format"]),
        "valid_turn_rate": round(valid_turns / turns, 4) if turns else 0.0,
        "turns": turns,
        "mean_image_search": rate(lambda r: r["n_image_search"]),
        "mean_text_search": rate(lambda r: r["n_text_search"]),
        "search_rate": rate(lambda r: (r["n_image_search"] + r["n_text_search"]) > 0),
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


def probe_condition(params: ProbeParams, condition: str, make_tools: Callable[[], Any],
                    shard: tuple[int, int] = (0, 1), log: Callable[[str], None] = print) -> ProbeRun:
    """Probe `condition`: this shard's missing batches, then (when every batch exists) the merged evidence and its
    metrics. `make_tools()` builds the search tools; it is called only when a batch with tools is left to play."""
    import datasets

    from pipeline.io import progress
    from pipeline.models import resolve_model
    from pipeline.rollout.engines import derive_seed, make_engine
    from pipeline.rollout.protocols import condition_tools
    from pipeline.runs import Run
    from pipeline.schema import ROLLOUT_FEATURES, read_items

    ds = read_items(params.items).cast_column("image", datasets.Image(decode=False))
    ids = ds["id"]
    chosen = select_items(ids, params.max_items, params.seed)
    batches = [chosen[i:i + params.batch_items] for i in range(0, len(chosen), params.batch_items)]
    model_path = resolve_model(params.model)
    fp = fingerprint(params, condition, model_path, [ids[i] for i in chosen])
    run = Run(Path(params.parts_dir) / condition, fp, range(len(batches)), name=lambda b: f"batch-{b:05d}",
              shard=shard).start({"condition": condition, "model": model_path, "params": dataclasses.asdict(params)})
    mine, todo = run.mine(), run.todo()
    log(f"probe {condition}: {len(chosen)} of {len(ids)} items, {len(batches)} batches, shard {shard[0]}/{shard[1]}: "
        f"{len(mine) - len(todo)} batches already done, {len(todo)} to run (parts {run.folder})")

    t_run, new_rollouts, tools = time.perf_counter(), 0, None
    if todo:
        protocol = params.make_protocol()
        tools = make_tools() if condition_tools(condition) else None
        engine = make_engine(params.engine.kind, model_path, protocol=protocol, seed=params.seed, params=params.engine)
        t_run = time.perf_counter()
        bar = progress(total=sum(len(batches[b]) for b in mine) * params.samples, desc=f"probe {condition}",
                       unit="rollout", initial=sum(len(batches[b]) for b in mine if b not in todo) * params.samples)

        def produce(b: int):
            nonlocal new_rollouts
            items = [ds[i] for i in batches[b]]
            seed = derive_seed(params.seed, condition, *[it["id"] for it in items])
            rows, _ = probe_batch(engine, protocol, tools, items, condition, params, seed, model_path)
            new_rollouts += len(rows)
            return rows_table(rows)

        run.execute(produce, on_unit=lambda b, _t: bar.update(len(batches[b]) * params.samples))
        bar.close()
        engine.close()
    elapsed = time.perf_counter() - t_run
    result = ProbeRun(len(batches), len(mine) - len(todo), len(todo))
    if not run.complete():
        return result
    result.evidence = run.merge(schema=ROLLOUT_FEATURES.arrow_schema)
    extra = {"model": params.model, "model_path_name": Path(model_path).name, "protocol": params.protocol,
             "samples": params.samples, "adaptive": params.adaptive.enabled, "fingerprint": fp,
             "items_available": len(ids)}
    result.metrics = summarize(result.evidence.to_pylist(), condition, params, extra)
    if new_rollouts:
        result.metrics["this_run"] = {"rollouts": new_rollouts, "seconds": round(elapsed, 2),
                                      "rollouts_per_s": round(new_rollouts / elapsed, 3) if elapsed else 0.0}
    if tools is not None:
        result.metrics["search"] = {k: v for k, v in tools.metrics().items()
                                    if k in ("calls", "hits", "misses", "errors", "hit_rate", "mode")}
    run.clear_stale()
    return result
