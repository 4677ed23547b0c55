"""The search-necessity label of an item from its probe evidence (rule version `RULE_VERSION`).

Rule "1" (the paper's search balancing, with thresholds from the `label:` params):

1. Only rollouts without an engine error count (a tool error does not void a rollout: the model still answered).
2. A rollout "did not search" when it made no executed search (closed-book rollouts never do; a tools rollout may
   choose to answer directly). If at least `search_free_min_correct` rollouts that did not search are correct and
   their pass rate is at least `search_free_min_pass_rate`  =>  `search_free`.
3. Otherwise, if at least `search_min_correct` rollouts that searched are correct (any condition that offers
   tools) and their pass rate is at least `search_min_pass_rate`, each such correct rollout votes for the kind of
   search it used: image only, text only, or both (mixed). The kind with most votes wins; a tie goes to the
   cheaper kind (image < text < mixed)  =>  `image_search_required` | `text_search_required` | `mixed_search_required`.
4. Otherwise  =>  `unanswerable` (the caller excludes it, with the reason).

Each label carries the pass rate per probed condition (NaN when not probed), the number of rollouts counted and a
confidence in [0, 1]: search_free: the pass rate of the rollouts that did not search; search-required: the winning
kind's share of the correct searched rollouts times (1 - the no-search pass rate); unanswerable: n / (n + 1) for
n counted rollouts (more failed attempts, more confidence).

`settled(...)` tells adaptive sampling when more rollouts of a condition cannot change the label it leads to.
Reads and writes nothing.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping

from pipeline.config import param
from pipeline.schema import CONDITIONS

RULE_VERSION = "1"
KIND_LABEL = {"image": "image_search_required", "text": "text_search_required", "mixed": "mixed_search_required"}
KIND_ORDER = ("image", "text", "mixed")


@dataclasses.dataclass
class RuleParams:
    """Thresholds of the label rule."""

    search_free_min_correct: int = param(1, help="correct rollouts without search needed for search_free")
    search_free_min_pass_rate: float = param(0.0, help="and their pass rate (correct / rollouts without search) at least this")
    search_min_correct: int = param(1, help="correct rollouts with search needed for a search-required label")
    search_min_pass_rate: float = param(0.0, help="and their pass rate (correct / rollouts with search) at least this")

    def validate(self) -> None:
        if self.search_free_min_correct < 1 or self.search_min_correct < 1:
            raise ValueError("the min_correct thresholds must be >= 1")
        for v in (self.search_free_min_pass_rate, self.search_min_pass_rate):
            if not 0.0 <= v <= 1.0:
                raise ValueError("pass-rate thresholds must be in [0, 1]")


def search_kind(rollout: Mapping[str, Any]) -> str:
    """"" (no search), "image", "text" or "mixed" from a rollout's executed searches."""
    img, txt = int(rollout.get("n_image_search") or 0) > 0, int(rollout.get("n_text_search") or 0) > 0
    return "mixed" if img and txt else "image" if img else "text" if txt else ""


def _counted(rollouts: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    # Engine failures say nothing about the item; tool failures do (the model had to cope), so they count.
    return [r for r in rollouts if not str(r.get("error") or "").startswith("engine:")]


def label_item(item_id: str, rollouts: Iterable[Mapping[str, Any]], rule: RuleParams | None = None) -> dict:
    """LABEL_FEATURES row (label as a string) for one item from all its rollouts (all conditions)."""
    rule = rule or RuleParams()
    rs = _counted(rollouts)
    by_cond: dict[str, list] = defaultdict(list)
    for r in rs:
        by_cond[r["condition"]].append(r)
    rates = {c: (sum(bool(r["correct"]) for r in by_cond[c]) / len(by_cond[c]) if by_cond[c] else math.nan)
             for c in CONDITIONS}
    no_search = [r for r in rs if not search_kind(r)]
    searched = [r for r in rs if search_kind(r)]
    ns_correct = sum(bool(r["correct"]) for r in no_search)
    ns_rate = ns_correct / len(no_search) if no_search else 0.0
    s_correct = [r for r in searched if r["correct"]]
    s_rate = len(s_correct) / len(searched) if searched else 0.0
    n = len(rs)
    summary = (f"no-search {ns_correct}/{len(no_search)} correct, with search {len(s_correct)}/{len(searched)} "
               f"correct, {n} rollouts")
    if ns_correct >= rule.search_free_min_correct and ns_rate >= rule.search_free_min_pass_rate:
        label, confidence = "search_free", ns_rate
        reason = f"answered without search: {summary}"
    elif len(s_correct) >= rule.search_min_correct and s_rate >= rule.search_min_pass_rate:
        votes = Counter(search_kind(r) for r in s_correct)
        kind = max(KIND_ORDER, key=lambda k: (votes[k], -KIND_ORDER.index(k)))
        label = KIND_LABEL[kind]
        confidence = votes[kind] / len(s_correct) * (1.0 - ns_rate)
        reason = (f"correct only with search ({', '.join(f'{k} {votes[k]}' for k in KIND_ORDER if votes[k])}): "
                  f"{summary}")
    else:
        label, confidence = "unanswerable", (n / (n + 1) if n else 0.0)
        reason = f"no rollout met the thresholds: {summary}" if n else "no usable rollout"
    return {
        "id": item_id,
        "label": label,
        "rule_version": RULE_VERSION,
        **{f"pass_rate_{c}": float(rates[c]) for c in CONDITIONS},
        "n_rollouts": n,
        "confidence": float(round(confidence, 6)),
        "reason": reason,
    }


def label_items(rollouts: Iterable[Mapping[str, Any]], item_ids: Iterable[str] | None = None,
                rule: RuleParams | None = None) -> list[dict]:
    """Labels of every item (in `item_ids` order when given, else first-seen order of the evidence)."""
    grouped: dict[str, list] = defaultdict(list)
    order: list[str] = []
    for r in rollouts:
        if r["item_id"] not in grouped:
            order.append(r["item_id"])
        grouped[r["item_id"]].append(r)
    ids = list(item_ids) if item_ids is not None else order
    return [label_item(i, grouped.get(i, []), rule) for i in ids]


def settled(condition: str, rollouts: Iterable[Mapping[str, Any]], rule: RuleParams | None = None) -> bool:
    """True when more rollouts of `condition` for this item cannot change the label it leads to.

    The only early certainty the rule gives is search_free: once enough rollouts without search are correct (and
    with a pass-rate threshold of 0), later rollouts cannot take that label away. Search-required labels depend on
    the votes of all correct searched rollouts, so such a condition keeps sampling."""
    rule = rule or RuleParams()
    if rule.search_free_min_pass_rate > 0:
        return False
    rs = [r for r in _counted(rollouts) if r["condition"] == condition]
    ns_correct = sum(1 for r in rs if r["correct"] and not search_kind(r))
    return ns_correct >= rule.search_free_min_correct


__all__ = ["KIND_LABEL", "RULE_VERSION", "RuleParams", "label_item", "label_items", "search_kind", "settled"]
