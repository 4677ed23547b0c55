"""Evaluation metrics: pure functions from stored rollouts (ROLLOUT_FEATURES rows) and item labels to numbers.

Reads and writes nothing. Every figure of the evaluate stage is computed here from the rollouts kept in
data/evaluate/rollouts.parquet, so any number in the report can be recomputed (and traced) from the trajectories.

Conventions used by every metric below:
- A *trajectory* is one rollout row (one sample of one item under one mode). Rates are shares of trajectories;
  with the default of one greedy sample per item this is the same as a share of items.
- A *search call* is a call that reached a tool: `n_image_search` + `n_text_search` of the row, as the rollout
  loop counts them. A call that the backend failed (error, timeout, replay miss) counts: the model decided to
  search and the tool ran. A call the limits refused (a search in direct mode, a second image search, a search on
  the last turn) never ran and does not count; it shows in `refused_tool_calls` instead. A trajectory *searched*
  when it made at least one search call.
- A trajectory is *correct* when its stored judge verdict `correct` is true and it gave a non-empty
  `final_answer`; a trajectory that ended without an answer (invalid format, turn limit, engine error) is wrong.
- Item labels come from the label stage (`search_free`, `image_search_required`, `text_search_required`,
  `mixed_search_required`); the *search-required* subset is the three `*_search_required` labels, the
  *search-free* subset is `search_free`. Items without a label (an extra benchmark with no label column, or an
  `unanswerable` item) belong to neither subset.
- A rate whose denominator is empty is `None` (JSON null), never 0: "no search-free items" is not "no over-search".
- Every rate and ratio comes with a 95% interval in `ci95` ({metric: {"lo", "hi"}}, None where the figure is None):
  proportions (WILSON_KEYS) get the Wilson score interval over their own denominator (trajectories, or executed
  calls for tool_failure_rate; trajectories of one item are taken as independent, exact with one sample per item);
  ratios of sums (BOOTSTRAP_KEYS) get a percentile bootstrap over items (an item's trajectories move together),
  BOOTSTRAP_RESAMPLES resamples from a fixed seed, resamples where the ratio is undefined left out.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pipeline.schema import SEARCH_REQUIRED

SEARCH_ACTIONS = ("image_search", "text_search")
SEARCH_FREE = "search_free"

# Keys of `compute_metrics`, in report order (the metrics JSON and the tests rely on this exact set).
METRIC_KEYS = (
    "n_items",
    "n_rollouts",
    "accuracy",
    "search_ratio",
    "image_search_ratio",
    "text_search_ratio",
    "search_calls_per_rollout",
    "image_search_calls_per_rollout",
    "text_search_calls_per_rollout",
    "n_search_required",
    "n_search_free",
    "accuracy_search_required",
    "accuracy_search_free",
    "over_search_rate",
    "under_search_rate",
    "searches_per_correct",
    "tool_productivity",
    "tool_calls",
    "failed_tool_calls",
    "refused_tool_calls",
    "tool_failure_rate",
    "invalid_format_rate",
    "no_answer_rate",
    "error_rate",
    "prompt_tokens_per_item",
    "completion_tokens_per_item",
    "tokens_per_item",
)
# figures with a Wilson interval (proportions) and with a bootstrap interval over items (ratios of sums)
WILSON_KEYS = (
    "accuracy", "search_ratio", "image_search_ratio", "text_search_ratio", "accuracy_search_required",
    "accuracy_search_free", "over_search_rate", "under_search_rate", "tool_failure_rate", "invalid_format_rate",
    "no_answer_rate", "error_rate",
)
BOOTSTRAP_KEYS = ("search_calls_per_rollout", "searches_per_correct", "tool_productivity")
# figures of `metrics_by_answer_key`: the search decisions, measured against the answer key instead of the labels
KEY_FIGURES = ("n_search_required", "n_search_free", "accuracy_search_required", "accuracy_search_free",
               "over_search_rate", "under_search_rate")
Z95 = 1.959963984540054  # standard normal quantile of 0.975
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def ratio(num: float, den: float) -> float | None:
    """num / den, or None when the denominator is 0 (an empty subset has no rate)."""
    return None if not den else num / den


def _tool_call_list(row: Mapping[str, Any]) -> list[dict]:
    raw = row.get("tool_calls") or "[]"
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"rollout {row.get('rollout_id', '?')!r}: field 'tool_calls' is not JSON") from None
    return [c for c in raw if isinstance(c, Mapping)]


def search_calls(row: Mapping[str, Any]) -> dict[str, int]:
    """Search calls of a trajectory that reached a tool, per tool: {"image_search": n, "text_search": m}."""
    return {"image_search": int(row.get("n_image_search") or 0), "text_search": int(row.get("n_text_search") or 0)}


def searched(row: Mapping[str, Any]) -> bool:
    """True when the trajectory made at least one search call of any tool."""
    return sum(search_calls(row).values()) > 0


def is_correct(row: Mapping[str, Any]) -> bool:
    """Stored judge verdict, and only for a trajectory that actually gave an answer."""
    return bool(row.get("correct")) and bool((row.get("final_answer") or "").strip())


def wilson(k: int, n: int, z: float = Z95) -> dict[str, float] | None:
    """Wilson score interval of the proportion k / n ({"lo", "hi"}); None when n is 0."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # the bounds at k = 0 and k = n are exactly 0 and 1 (the formula leaves float noise there)
    return {"lo": 0.0 if k == 0 else centre - half, "hi": 1.0 if k == n else centre + half}


def bootstrap_ratios(per_item: Mapping[str, tuple[Sequence[float], Sequence[float]]], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict[str, dict[str, float] | None]:
    """Percentile 95% intervals of sum(num) / sum(den) when items are drawn with replacement.

    per_item: figure -> (numerator per item, denominator per item), all over the same items, which one set of
    resampled indices serves. Resamples with a zero denominator are left out; None when no resample is defined.
    """
    out: dict[str, dict[str, float] | None] = {}
    n = len(next(iter(per_item.values()))[0]) if per_item else 0
    if n == 0:
        return {key: None for key in per_item}
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    for key, (num, den) in per_item.items():
        nums, dens = np.asarray(num, float)[idx].sum(axis=1), np.asarray(den, float)[idx].sum(axis=1)
        ok = dens > 0
        if not ok.any():
            out[key] = None
            continue
        lo, hi = np.quantile(nums[ok] / dens[ok], [0.025, 0.975])
        out[key] = {"lo": float(lo), "hi": float(hi)}
    return out


def tool_call_outcomes(row: Mapping[str, Any]) -> tuple[int, int, int]:
    """(executed, failed, refused) tool calls of the trajectory's `tool_calls` records.

    refused: the limits refused the call (record `refused` true; the tool never ran). executed: every other
    record. failed: executed calls whose `error` is non-empty (backend error, timeout, cache miss in replay mode).
    """
    executed = failed = refused = 0
    for c in _tool_call_list(row):
        if c.get("refused"):
            refused += 1
            continue
        executed += 1
        failed += bool(str(c.get("error") or "").strip())
    return executed, failed, refused


def subset_of(label: str | None) -> str | None:
    """'search_required' | 'search_free' | None for an item label (None: unlabelled or unanswerable)."""
    if label in SEARCH_REQUIRED:
        return "search_required"
    if label == SEARCH_FREE:
        return "search_free"
    return None


def compute_metrics(rows: Sequence[Mapping[str, Any]], labels: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """All metrics of one group of trajectories (one model x mode x dataset), keys = METRIC_KEYS, then ci95.

    rows: rollout rows (ROLLOUT_FEATURES). labels: item_id -> label string (None / missing = unlabelled).

    - n_items: distinct item ids; n_rollouts: trajectories.
    - accuracy: correct trajectories / trajectories (see `is_correct`).
    - search_ratio: trajectories with >= 1 search call / trajectories; image_search_ratio and text_search_ratio:
      the same for one tool. search_calls_per_rollout (and per tool): search calls / trajectories.
    - n_search_required / n_search_free: distinct items of each subset present in `rows`.
    - accuracy_search_required / accuracy_search_free: accuracy over the trajectories of that subset's items.
    - over_search_rate: search-free trajectories that searched / search-free trajectories.
    - under_search_rate: search-required trajectories that did not search and were wrong / search-required
      trajectories.
    - searches_per_correct: search calls of all trajectories / correct trajectories (None with no correct one):
      what each correct answer cost in searches.
    - tool_productivity: correct trajectories / search calls (OTC-PO's tool productivity; None when no search call
      was made, e.g. direct mode: undefined, not 0 and not infinite).
    - tool_calls, failed_tool_calls, refused_tool_calls: counts from the `tool_calls` records (see
      `tool_call_outcomes`); tool_failure_rate: failed / executed calls (None when no tool ran).
    - invalid_format_rate: trajectories with `valid_format` false / trajectories; no_answer_rate: trajectories with
      an empty `final_answer`; error_rate: trajectories with a non-empty `error` (engine or tool problem).
    - prompt_tokens_per_item, completion_tokens_per_item, tokens_per_item: tokens summed over an item's
      trajectories, averaged over items (forced turns of the rag workflow generate no tokens).
    - ci95: the 95% interval of every figure of WILSON_KEYS and BOOTSTRAP_KEYS (see the module docstring).
    """
    labels = labels or {}
    rows = list(rows)
    n = len(rows)
    items = {r["item_id"] for r in rows}
    by_subset: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        subset = subset_of(labels.get(r["item_id"]))
        if subset:
            by_subset[subset].append(r)

    calls = [search_calls(r) for r in rows]
    n_calls = sum(sum(c.values()) for c in calls)
    n_correct = sum(is_correct(r) for r in rows)
    executed = failed = refused = 0
    for r in rows:
        e, f, x = tool_call_outcomes(r)
        executed, failed, refused = executed + e, failed + f, refused + x
    req, free = by_subset["search_required"], by_subset["search_free"]
    prompt = sum(int(r.get("prompt_tokens") or 0) for r in rows)
    completion = sum(int(r.get("completion_tokens") or 0) for r in rows)

    # (numerator, denominator) of every proportion: the figure is their ratio, its interval Wilson's
    counts = {
        "accuracy": (n_correct, n),
        "search_ratio": (sum(sum(c.values()) > 0 for c in calls), n),
        "image_search_ratio": (sum(c["image_search"] > 0 for c in calls), n),
        "text_search_ratio": (sum(c["text_search"] > 0 for c in calls), n),
        "accuracy_search_required": (sum(is_correct(r) for r in req), len(req)),
        "accuracy_search_free": (sum(is_correct(r) for r in free), len(free)),
        "over_search_rate": (sum(searched(r) for r in free), len(free)),
        "under_search_rate": (sum((not searched(r)) and not is_correct(r) for r in req), len(req)),
        "tool_failure_rate": (failed, executed),
        "invalid_format_rate": (sum(not r.get("valid_format", True) for r in rows), n),
        "no_answer_rate": (sum(not (r.get("final_answer") or "").strip() for r in rows), n),
        "error_rate": (sum(bool((r.get("error") or "").strip()) for r in rows), n),
    }
    rates = {k: ratio(*v) for k, v in counts.items()}
    out = {
        "n_items": len(items),
        "n_rollouts": n,
        "accuracy": rates["accuracy"],
        "search_ratio": rates["search_ratio"],
        "image_search_ratio": rates["image_search_ratio"],
        "text_search_ratio": rates["text_search_ratio"],
        "search_calls_per_rollout": ratio(n_calls, n),
        "image_search_calls_per_rollout": ratio(sum(c["image_search"] for c in calls), n),
        "text_search_calls_per_rollout": ratio(sum(c["text_search"] for c in calls), n),
        "n_search_required": len({r["item_id"] for r in req}),
        "n_search_free": len({r["item_id"] for r in free}),
        "accuracy_search_required": rates["accuracy_search_required"],
        "accuracy_search_free": rates["accuracy_search_free"],
        "over_search_rate": rates["over_search_rate"],
        "under_search_rate": rates["under_search_rate"],
        "searches_per_correct": ratio(n_calls, n_correct),
        "tool_productivity": ratio(n_correct, n_calls),
        "tool_calls": executed,
        "failed_tool_calls": failed,
        "refused_tool_calls": refused,
        "tool_failure_rate": rates["tool_failure_rate"],
        "invalid_format_rate": rates["invalid_format_rate"],
        "no_answer_rate": rates["no_answer_rate"],
        "error_rate": rates["error_rate"],
        "prompt_tokens_per_item": ratio(prompt, len(items)),
        "completion_tokens_per_item": ratio(completion, len(items)),
        "tokens_per_item": ratio(prompt + completion, len(items)),
    }
    assert tuple(out) == METRIC_KEYS
    out["ci95"] = intervals(rows, counts, out)
    return out


def per_item_sums(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Per item (in first-met order): its trajectories, correct trajectories and search calls."""
    acc: dict[str, list[int]] = {}
    for r in rows:
        t = acc.setdefault(r["item_id"], [0, 0, 0])
        t[0] += 1
        t[1] += is_correct(r)
        t[2] += sum(search_calls(r).values())
    return {"trajectories": [t[0] for t in acc.values()], "correct": [t[1] for t in acc.values()],
            "calls": [t[2] for t in acc.values()]}


def intervals(rows: Sequence[Mapping[str, Any]], counts: Mapping[str, tuple[int, int]],
              figures: Mapping[str, Any]) -> dict[str, dict[str, float] | None]:
    """ci95 of `compute_metrics`: Wilson for the proportions in `counts`, the item bootstrap for the ratios
    (None wherever the figure itself is None)."""
    ci: dict[str, dict[str, float] | None] = {k: wilson(*counts[k]) for k in WILSON_KEYS}
    s = per_item_sums(rows)
    ci.update(bootstrap_ratios({
        "search_calls_per_rollout": (s["calls"], s["trajectories"]),
        "searches_per_correct": (s["calls"], s["correct"]),
        "tool_productivity": (s["correct"], s["calls"]),
    }))
    return {k: (ci[k] if figures[k] is not None else None) for k in (*WILSON_KEYS, *BOOTSTRAP_KEYS)}


def group_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """(model, mode, dataset) of an evaluation rollout row (mode is stored in `condition`)."""
    return (row["model"], row["condition"], row["dataset"])


def metrics_by_group(
    rows: Iterable[Mapping[str, Any]], labels: Mapping[str, Mapping[str, str | None]] | None = None
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Nested {model: {mode: {dataset: compute_metrics(...)}}} over evaluation rollout rows.

    labels: dataset -> item_id -> label. Groups appear in the order first met in `rows`.
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for (model, mode, dataset), rs in groups.items():
        out.setdefault(model, {}).setdefault(mode, {})[dataset] = compute_metrics(rs, (labels or {}).get(dataset))
    return out


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Unweighted mean of the non-None values (the paper's 'Avg' over benchmarks); None when there are none."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def search_reduction(on_demand: float | None, always: float | None) -> float | None:
    """Relative reduction of search ratio of on-demand search vs the always-search workflow:
    1 - on_demand / always (the paper's "over 30% fewer searches"); None when either is unknown or always == 0."""
    if on_demand is None or not always:
        return None
    return 1.0 - on_demand / always


def metrics_by_answer_key(rows: Iterable[Mapping[str, Any]], needs: Mapping[str, Mapping[str, str]]) -> dict:
    """Nested {model: {mode: {dataset: KEY_FIGURES + ci95}}}: the search decisions measured against what each item
    really needs instead of its label. needs: dataset -> item id -> the demo world's answer key (`meta.expected_need`,
    read by `pipeline.curate.answer_key.expected_need`); each item gets the label a perfect probe would give
    (`expected_label`, with the row's saw_image). Items without a key are left out; {} when none has one. Where the
    labels are right the figures equal the label-based ones; where they differ, the difference is label error (a
    search-free label on an item the key says needs a search makes a right search count as over-search)."""
    from pipeline.curate.answer_key import expected_label

    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if needs.get(r["dataset"], {}).get(r["item_id"]):
            groups.setdefault(group_key(r), []).append(r)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for (model, mode, dataset), rs in groups.items():
        key = {r["item_id"]: expected_label(needs[dataset][r["item_id"]], bool(r.get("saw_image"))) for r in rs}
        m = compute_metrics(rs, key)
        out.setdefault(model, {}).setdefault(mode, {})[dataset] = {
            **{k: m[k] for k in KEY_FIGURES}, "ci95": {k: v for k, v in m["ci95"].items() if k in KEY_FIGURES}}
    return out
