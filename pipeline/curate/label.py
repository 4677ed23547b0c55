"""The search-necessity label of an item from its probe evidence (rule version `RULE_VERSION`).

Rule "2": the cheapest sufficient knowledge, each step settled with a confidence bound.

The conditions are read in cascade order, cheapest first: `closed_book` (no tools), `image_only`, `text_only`,
`tools` (both). Per condition, the labeler "can answer" when its pass rate p (correct rollouts / rollouts) is at least
`threshold`. With s correct out of n rollouts, p has the posterior Beta(s + 1, n - s + 1) (a uniform prior), so
  P(can answer)    = P(p >= threshold)   settles "pass" when >= `confidence`,
  P(cannot answer) = P(p <  threshold)   settles "fail" when >= `confidence`,
and anything in between is "open": more samples are needed (adaptive probing draws them, `settle`).
Walking the cascade, the first condition that passes gives the label:
  closed_book -> search_free;  image_only -> image_search_required;  text_only -> text_search_required;
  tools -> the search kind that the correct rollouts used most (image < text < mixed on a tie): with image_only
           and text_only probed before, what is left is usually mixed_search_required.
A condition that fails sends the item on to the next one; every probed condition failing gives `unanswerable`; a
condition left open (its samples used up) before any pass gives `uncertain`. Both are excluded downstream with the
reason. Conditions that were not probed are skipped (e.g. the classic closed_book + tools pair).

Rule "3" is rule 2 with the blind-guess guard (`label_rule.blind_guesses`): a labeler that does not see the image
(a text-only model, `saw_image` false) reads only the question text, and where items with the same question text
have no answer in common (`blind_ambiguous`: "Which country's flag is shown?"), a right answer from that text alone
is a guess, not knowledge: identical input cannot know different answers. Such a rollout counts as correct only when
it looked the image up (an image search ran); so closed_book and text_only cannot pass on these items and the
cascade goes on to image search. The evidence keeps the judge's verdict; only the rule discounts (`discount_guesses`),
and the reason says how many rollouts it discounted. Without the guard the rule is rule 2 and labels say so.

Each label carries, per probed condition, the pass rate and a central `interval` Beta credible interval, the
condition that settled it, and a confidence: the posterior probability of every step taken (P(fail) of each
condition passed over times P(pass) of the deciding one). Engine failures are not counted; tool failures are (the
model had to cope). Reads and writes nothing.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from typing import AbstractSet, Any, ClassVar, Iterable, Mapping, Sequence

from pipeline.config import param
from pipeline.schema import CONDITIONS

RULE_VERSION = "3"  # rule 2 + the blind-guess guard; with the guard off labels record "2"
CASCADE = ("closed_book", "image_only", "text_only", "tools")
CONDITION_LABEL = {"closed_book": "search_free", "image_only": "image_search_required",
                   "text_only": "text_search_required"}
KIND_LABEL = {"image": "image_search_required", "text": "text_search_required", "mixed": "mixed_search_required"}
KIND_ORDER = ("image", "text", "mixed")
PASS, FAIL, OPEN = "pass", "fail", "open"


@dataclasses.dataclass
class RuleParams:
    """Thresholds of the label rule: the shared `label_rule:` section, read by the label stage and by the probe
    (whose adaptive sampling stops when this rule settles a condition)."""

    SHARED_SECTION: ClassVar[str] = "label_rule"

    threshold: float = param(0.5, help="pass rate at which the labeler counts as able to answer under a condition")
    confidence: float = param(0.8, help="posterior probability that settles a condition as pass or fail "
                              "(P(p >= threshold) or P(p < threshold) under Beta(s+1, n-s+1))")
    interval: float = param(0.9, help="width of the credible interval reported per condition")
    blind_guesses: bool = param(True, help="rule 3: a rollout that did not see the image, of an item whose question "
                                "text other items share with no answer in common, counts as correct only if it ran "
                                "an image search (its right answer is otherwise a guess); false: rule 2")

    def validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence}")
        if not 0.0 < self.interval < 1.0:
            raise ValueError(f"interval must be in (0, 1), got {self.interval}")


def rule_version(rule: RuleParams) -> str:
    """The version the labels of `rule` record: "3" with the blind-guess guard, "2" without."""
    return RULE_VERSION if rule.blind_guesses else "2"


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def blind_ambiguous(items: Mapping[str, Sequence[Any]]) -> set[str]:
    """Ids of the items whose question text (case and spacing aside) is shared by items with no accepted answer in
    common (answer and aliases, compared the same way). items: columns id, question, answer and optionally aliases."""
    aliases = items.get("aliases") or [None] * len(items["id"])
    accepted: dict[str, list[set[str]]] = defaultdict(list)
    for q, a, al in zip(items["question"], items["answer"], aliases):
        accepted[_norm(q)].append({_norm(a), *(_norm(x) for x in al or [])})
    open_texts = {q for q, sets in accepted.items() if len(sets) > 1 and not set.intersection(*sets)}
    return {i for i, q in zip(items["id"], items["question"]) if _norm(q) in open_texts}


def discount_guesses(rollouts: Iterable[Mapping[str, Any]], ambiguous: AbstractSet[str]) -> list[Mapping[str, Any]]:
    """The rollouts with `correct` false (and `guess` true) where the answer was a blind guess: the item is in
    `ambiguous`, the rollout did not see the image and ran no image search. Others are returned as they are."""
    out = []
    for r in rollouts:
        if r["item_id"] in ambiguous and r["correct"] and not r.get("saw_image") \
                and not int(r.get("n_image_search") or 0):
            r = {**r, "correct": False, "guess": True}
        out.append(r)
    return out


def p_pass(correct: int, n: int, threshold: float) -> float:
    """P(p >= threshold) under the posterior Beta(correct + 1, n - correct + 1)."""
    from scipy.special import betainc

    return float(1.0 - betainc(correct + 1, n - correct + 1, threshold))


def credible_interval(correct: int, n: int, width: float) -> tuple[float, float]:
    """The central `width` credible interval of the pass rate."""
    from scipy.stats import beta

    lo, hi = beta.ppf([(1 - width) / 2, (1 + width) / 2], correct + 1, n - correct + 1)
    return float(lo), float(hi)


def decide(correct: int, n: int, rule: RuleParams) -> tuple[str, float]:
    """(pass | fail | open, P(pass)) for one condition's counts."""
    p = p_pass(correct, n, rule.threshold)
    if p >= rule.confidence:
        return PASS, p
    if 1.0 - p >= rule.confidence:
        return FAIL, p
    return OPEN, p


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
    stats = {}
    for c in CONDITIONS:
        n = len(by_cond[c])
        s = sum(bool(r["correct"]) for r in by_cond[c])
        lo, hi = credible_interval(s, n, rule.interval) if n else (math.nan, math.nan)
        stats[c] = {"n": n, "correct": s, "rate": s / n if n else math.nan, "lo": lo, "hi": hi}
    label, settled_by, confidence, steps = "unanswerable", "", 1.0, []
    for c in CASCADE:
        st = stats[c]
        if not st["n"]:
            continue
        verdict, p = decide(st["correct"], st["n"], rule)
        guesses = sum(bool(r.get("guess")) for r in by_cond[c])
        steps.append(f"{c} {st['correct']}/{st['n']} {verdict}" + (f" ({guesses} blind guesses not counted)"
                                                                      if guesses else ""))
        if verdict == FAIL:
            confidence *= 1.0 - p
            continue
        settled_by = c
        if verdict == OPEN:
            label, confidence = "uncertain", confidence * max(p, 1.0 - p)
            break
        confidence *= p
        if c in CONDITION_LABEL:
            label = CONDITION_LABEL[c]
        else:
            votes = Counter(search_kind(r) for r in by_cond[c] if r["correct"])
            kind = max(KIND_ORDER, key=lambda k: (votes[k], -KIND_ORDER.index(k)))
            label = KIND_LABEL[kind] if votes[kind] else "search_free"  # correct only without searching
        break
    if not steps:
        reason = "no usable rollout"
        confidence = 0.0
    else:
        reason = "; ".join(steps) + (f" -> {label}" if label != "unanswerable" else " -> no condition passed")
    return {
        "id": item_id,
        "label": label,
        "rule_version": rule_version(rule),
        **{f"pass_rate_{c}": float(stats[c]["rate"]) for c in CONDITIONS},
        **{f"ci_low_{c}": float(stats[c]["lo"]) for c in CONDITIONS},
        **{f"ci_high_{c}": float(stats[c]["hi"]) for c in CONDITIONS},
        "n_rollouts": len(rs),
        "settled_by": settled_by,
        "confidence": float(round(confidence, 6)),
        "reason": reason,
    }


def label_items(rollouts: Iterable[Mapping[str, Any]], item_ids: Iterable[str] | None = None,
                rule: RuleParams | None = None, ambiguous: AbstractSet[str] = frozenset()) -> list[dict]:
    """Labels of every item (in `item_ids` order when given, else first-seen order of the evidence); `ambiguous`
    (`blind_ambiguous` of the items) is read only with `rule.blind_guesses`."""
    rule = rule or RuleParams()
    if rule.blind_guesses:
        rollouts = discount_guesses(rollouts, ambiguous)
    grouped: dict[str, list] = defaultdict(list)
    order: list[str] = []
    for r in rollouts:
        if r["item_id"] not in grouped:
            order.append(r["item_id"])
        grouped[r["item_id"]].append(r)
    ids = list(item_ids) if item_ids is not None else order
    return [label_item(i, grouped.get(i, []), rule) for i in ids]


def settle(condition: str, rollouts: Iterable[Mapping[str, Any]], rule: RuleParams | None = None,
           ambiguous: AbstractSet[str] = frozenset()) -> str:
    """pass | fail | open for one item's rollouts of `condition` (what adaptive probing asks after each round);
    `ambiguous` as in `label_items`."""
    rule = rule or RuleParams()
    if rule.blind_guesses:
        rollouts = discount_guesses(rollouts, ambiguous)
    rs = [r for r in _counted(rollouts) if r["condition"] == condition]
    return decide(sum(bool(r["correct"]) for r in rs), len(rs), rule)[0] if rs else OPEN


__all__ = ["CASCADE", "FAIL", "KIND_LABEL", "OPEN", "PASS", "RULE_VERSION", "RuleParams", "blind_ambiguous",
           "credible_interval", "decide", "discount_guesses", "label_item", "label_items", "p_pass", "rule_version",
           "search_kind", "settle"]
