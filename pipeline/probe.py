"""Probing: sampled multi-turn rollouts per item under a cascade of conditions, adaptive, every rollout kept.

`probe(params, make_tools, shard)` is the whole probe: it reads the items (`params.items`), chooses them
(`select_items`), cuts them into batches of `batch_items` (the unit of work, resume and sharding of a
`pipeline.runs.Run` under `<parts_dir>/<fingerprint>/batch-NNNNN.parquet`), plays the batches this shard still lacks
(`probe_batch`) and, once every batch exists, returns the evidence of each condition (ROLLOUT_FEATURES, ordered by
item then sample) and summary metrics. Writes only the parts folder.

Within a batch the conditions run in `conditions` order (cheapest first: closed_book, image_only, text_only, tools).
With `cascade`, an item goes on to the next condition only when the label rule (`pipeline.curate.label`, the shared
`label_rule:` section) settles the current one as *fail*: an item the labeler answers closed-book is never searched,
one that image search settles is never text-searched. With `adaptive`, each condition is sampled in rounds
(`first_round`, then `round_size` more) only for the items whose verdict is still open, up to `samples` (K); without
it every item gets K rollouts per condition it reaches. So samples are spent only where a label is not settled yet.
With the rule's blind-guess guard (`label_rule.blind_guesses`), the items whose question text alone cannot know the
answer are found once over the whole item file (`blind_ambiguous`; a caller may give the set found over a larger
population, as the reprobe stage does), and their blind right answers without an image search do not settle a
condition as pass, in the cascade exactly as in the label stage.

A batch's rollouts depend only on its items, the parameters and the seed (the engine's sampler is re-seeded per call
and its prefix cache emptied per batch), so a killed run started again, or the same run over shards, gives the same
evidence. The fingerprint covers everything that shapes the rollouts (parameters, model bytes, the chosen item ids),
so changed inputs never reuse stale parts.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.config import param
from pipeline.curate.label import CASCADE, FAIL, OPEN, RuleParams, blind_ambiguous, settle
from pipeline.rollout.config import RolloutParams
from pipeline.rollout.engines import EngineParams, Sampling


@dataclasses.dataclass
class AdaptiveParams:
    enabled: bool = param(True, help="sample in rounds and stop an item's condition once the label rule settles it "
                          "(false: `samples` rollouts for every item and condition it reaches)")
    first_round: int = param(2, help="rollouts per item in the first round (the screening pass)")
    round_size: int = param(2, help="rollouts per item in each later round, for the items still open (up to `samples`)")

    def validate(self) -> None:
        if self.first_round < 1 or self.round_size < 1:
            raise ValueError("first_round and round_size must be >= 1")


@dataclasses.dataclass
class ProbeParams(RolloutParams, RuleParams):
    """The `probe:` section (the rollout settings come from `rollout:`, the label rule that stops sampling from
    `label_rule:`)."""

    items: str = param("data/dedup/items.parquet", help="items to probe (ITEM_FEATURES parquet)")
    out_dir: str = param("data/probe", help="evidence is written to <out_dir>/<condition>/")
    parts_dir: str = param("data/probe_parts", help="finished batches while a run is in progress (resume state)")
    model: str = param("data/bootstrap/model", help="labeler: a model folder (or one with model_ref.json), "
                       "'packaged:smollm2', 'tiny:text', 'tiny:vlm' or a Hub id")
    conditions: list[str] = param(list(CASCADE), help="conditions probed, cheapest first (closed_book, image_only, "
                                  "text_only, tools); evidence per condition, label reads them all")
    cascade: bool = param(True, help="an item goes on to the next condition only when the current one settles as "
                          "fail (false: every item under every condition, the full design)")
    samples: int = param(8, help="most rollouts per item and condition (K); adaptive sampling stops earlier")
    max_items: int = param(0, help="probe at most this many items (0 = all); a seeded choice spread over the file")
    batch_items: int = param(16, help="items per batch (unit of work, resume and sharding)")
    workers: int = param(1, help="engine processes on this machine: worker i plays the batches of shard i/workers "
                         "with its own engine (on a GPU node one per GPU, CUDA_VISIBLE_DEVICES=i), then the stage "
                         "merges them into the evidence one process gives; 1 = one engine, in process")
    seed: int = param(0, help="base seed of item choice and sampling")
    with_image: bool = param(True, help="show the image to a vision-language model (a text-only model never sees it)")
    engine: EngineParams = param(factory=EngineParams, help="generation engine")
    sampling: Sampling = param(factory=lambda: Sampling(temperature=1.0, max_tokens=64), help="sampling per turn")
    adaptive: AdaptiveParams = param(factory=AdaptiveParams, help="adaptive sampling")

    def validate(self) -> None:
        from pipeline.schema import CONDITIONS

        RolloutParams.validate(self)
        RuleParams.validate(self)
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise ValueError(f"unknown condition {bad[0]!r}; use of {list(CONDITIONS)}")
        if len(set(self.conditions)) != len(self.conditions) or not self.conditions:
            raise ValueError(f"conditions must be distinct and not empty, got {self.conditions}")
        if self.samples < 1 or self.batch_items < 1 or self.max_items < 0 or self.workers < 1:
            raise ValueError("samples, batch_items and workers must be >= 1, max_items >= 0")


@dataclasses.dataclass
class ProbeRun:
    """What `probe` did: the batches, how many were done before/now, and (once complete) the evidence of each
    condition (pyarrow tables) and the metrics."""

    batches: int
    done_before: int
    ran: int
    evidence: dict[str, Any] | None = None
    metrics: dict | None = None


def select_items(ids: list[str], max_items: int, seed: int) -> list[int]:
    """Row positions to probe, in file order: all, or a seeded choice of `max_items` spread over the file."""
    from pipeline.rollout.engines import derive_seed

    if not max_items or max_items >= len(ids):
        return list(range(len(ids)))
    ranked = sorted(range(len(ids)), key=lambda i: (derive_seed(seed, "select", ids[i]), ids[i]))
    return sorted(ranked[:max_items])


def fingerprint(params: ProbeParams, model_path: str, item_ids: list[str], guarded: set[str] = frozenset()) -> str:
    """Everything that shapes the rollouts (output locations excluded); `guarded`: the chosen items the blind-guess
    guard watches."""
    from pipeline.runs import fingerprint as fp, path_digest

    keep = dataclasses.asdict(params)
    for k in ("out_dir", "parts_dir", "items", "model", "workers"):  # workers: the same batches, wherever they run
        keep.pop(k)
    keep["engine"] = {k: keep["engine"][k] for k in ("kind", "dtype", "seed_mode")}
    if not keep["blind_guesses"]:  # rule 2 runs keep the fingerprint (and the parts) they had before the guard existed
        keep.pop("blind_guesses")
        return fp({"params": keep, "model": path_digest(model_path), "items": fp(item_ids)})
    return fp({"params": keep, "model": path_digest(model_path), "items": fp(item_ids), "guarded": sorted(guarded)})


def probe_condition_rounds(engine, protocol, tools, items: list[dict], condition: str, params: ProbeParams,
                           seed: int, model_name: str, ambiguous: set[str] = frozenset()
                           ) -> tuple[list[dict], dict[str, str]]:
    """Rollouts of `items` under one condition (K fixed, or adaptive rounds) and each item's verdict under the label
    rule (pass | fail | open); `ambiguous`: the item ids the blind-guess guard watches."""
    from pipeline.rollout.loop import run_rollouts

    common = dict(judge_cfg=params.judge, format_rule=params.format_rule, sampling=params.sampling,
                  with_image=params.with_image, seed=seed, model_name=model_name, search_k=params.search_k or None)
    per_item: dict[str, list[dict]] = {it["id"]: [] for it in items}
    done, size = 0, params.samples if not params.adaptive.enabled else min(params.adaptive.first_round, params.samples)
    while done < params.samples:
        counts = [size if done == 0 or settle(condition, per_item[it["id"]], params, ambiguous) == OPEN else 0
                  for it in items]
        if not any(counts):
            break
        for r in run_rollouts(engine, protocol, tools, items, condition, size, sample_start=done,
                              item_samples=counts, **common):
            per_item[r["item_id"]].append(r)
        done += size
        size = min(params.adaptive.round_size, params.samples - done)
    rows = [r for it in items for r in sorted(per_item[it["id"]], key=lambda r: r["sample"])]
    return rows, {i: settle(condition, rs, params, ambiguous) for i, rs in per_item.items()}


def probe_batch(engine, protocol, make_tools: Callable[[], Any], items: list[dict], params: ProbeParams,
                model_name: str, ambiguous: set[str] = frozenset()) -> list[dict]:
    """Every condition's rollouts of one batch, the cascade applied (see the module docstring)."""
    from pipeline.rollout.engines import derive_seed
    from pipeline.rollout.protocols import condition_tools

    rows: list[dict] = []
    left = list(items)
    for condition in params.conditions:
        if not left:
            break
        seed = derive_seed(params.seed, condition, *[it["id"] for it in left])
        tools = make_tools() if condition_tools(condition) else None
        got, verdicts = probe_condition_rounds(engine, protocol, tools, left, condition, params, seed, model_name,
                                               ambiguous)
        rows += got
        if params.cascade:
            left = [it for it in left if verdicts[it["id"]] == FAIL]
    return rows


def summarize(rows: list[dict], condition: str, params: ProbeParams, extra: dict[str, Any]) -> dict:
    """Metrics of a condition's evidence: pass rate, valid turns, searches, tokens, generations saved against K
    rollouts for every item that reached the condition."""
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


def probe(params: ProbeParams, make_tools: Callable[[], Any], shard: tuple[int, int] = (0, 1),
          log: Callable[[str], None] = print, ambiguous: set[str] | None = None) -> ProbeRun:
    """This shard's missing batches, then (when every batch exists) the evidence per condition and the metrics.
    `make_tools()` builds the search tools; it is called (once) only when a condition with tools is played.
    `ambiguous`: the blind-guess guard's items (default: `blind_ambiguous` of the item file); read only with the
    guard on."""
    import functools

    import datasets

    from pipeline.io import progress
    from pipeline.models import resolve_model
    from pipeline.rollout.engines import make_engine
    from pipeline.runs import Run
    from pipeline.schema import ROLLOUT_FEATURES, read_items

    ds = read_items(params.items).cast_column("image", datasets.Image(decode=False))
    ids = ds["id"]
    chosen = select_items(ids, params.max_items, params.seed)
    if not params.blind_guesses:
        ambiguous = set()
    elif ambiguous is None:
        ambiguous = blind_ambiguous({c: ds[c] for c in ("id", "question", "answer", "aliases")})
    batches = [chosen[i:i + params.batch_items] for i in range(0, len(chosen), params.batch_items)]
    model_path = resolve_model(params.model)
    fp = fingerprint(params, model_path, [ids[i] for i in chosen], {ids[i] for i in chosen} & ambiguous)
    run = Run(Path(params.parts_dir), fp, range(len(batches)), name=lambda b: f"batch-{b:05d}",
              shard=shard).start({"model": model_path, "params": dataclasses.asdict(params)})
    mine, todo = run.mine(), run.todo()
    log(f"probe {' > '.join(params.conditions)}: {len(chosen)} of {len(ids)} items, {len(batches)} batches, "
        f"shard {shard[0]}/{shard[1]}: {len(mine) - len(todo)} batches already done, {len(todo)} to run "
        f"(parts {run.folder})")

    t_run, new_rollouts = time.perf_counter(), 0
    tools = functools.lru_cache(maxsize=1)(make_tools)
    if todo:
        protocol = params.make_protocol()
        engine = make_engine(params.engine.kind, model_path, protocol=protocol, seed=params.seed, params=params.engine)
        t_run = time.perf_counter()
        bar = progress(total=sum(len(batches[b]) for b in mine), desc="probe", unit="item",
                       initial=sum(len(batches[b]) for b in mine if b not in todo))

        def produce(b: int):
            nonlocal new_rollouts
            rows = probe_batch(engine, protocol, tools, [ds[i] for i in batches[b]], params, model_path, ambiguous)
            new_rollouts += len(rows)
            return rows_table(rows)

        run.execute(produce, on_unit=lambda b, _t: bar.update(len(batches[b])))
        bar.close()
        engine.close()
    elapsed = time.perf_counter() - t_run
    result = ProbeRun(len(batches), len(mine) - len(todo), len(todo))
    if not run.complete():
        return result
    merged = run.merge(schema=ROLLOUT_FEATURES.arrow_schema)
    import pyarrow.compute as pc

    result.evidence = {c: merged.filter(pc.equal(merged["condition"], c)) for c in params.conditions}
    extra = {"model": params.model, "model_path_name": Path(model_path).name, "protocol": params.protocol,
             "adaptive": params.adaptive.enabled, "cascade": params.cascade, "fingerprint": fp}
    per = {c: summarize(t.to_pylist(), c, params, {}) for c, t in result.evidence.items()}
    total = sum(m["rollouts"] for m in per.values())
    full = len(chosen) * params.samples * len(params.conditions)
    result.metrics = {"items": len(chosen), "items_available": len(ids), "conditions": params.conditions,
                      "samples": params.samples, "rollouts": total, "rollouts_full_design": full,
                      "saved_vs_full_design": round(1 - total / full, 4) if full else 0.0,
                      "per_condition": per, **extra}
    if new_rollouts:
        result.metrics["this_run"] = {"rollouts": new_rollouts, "seconds": round(elapsed, 2),
                                      "rollouts_per_s": round(new_rollouts / elapsed, 3) if elapsed else 0.0}
    if tools.cache_info().currsize:
        result.metrics["search"] = {k: v for k, v in tools().metrics().items()
                                    if k in ("calls", "hits", "misses", "errors", "hit_rate", "mode")}
    run.clear_stale()
    return result
