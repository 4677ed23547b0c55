"""The label stage's work: probe evidence in, labels, exclusions and the reports of how right they are out.

`label_evidence(items, evidence, rule)` labels every probed item with the rule of `pipeline.curate.label` and
returns what the stage writes: the kept labels (LABEL_FEATURES rows), the exclusions (unanswerable, uncertain, not
probed; each with its evidence summary and what to do), the agreement with a source's reference label
(`pipeline.curate.reference`), the accuracy against the demo world's answer key (`pipeline.curate.answer_key`) and
the metrics (counts add up: items in = labelled + excluded). Reads and writes nothing.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping, Sequence

# What label_evidence reads of the items (question, answer and aliases for the blind-guess guard).
LABEL_ITEM_COLUMNS = ("id", "source", "meta", "question", "answer", "aliases")
EVIDENCE_COLUMNS = ["item_id", "condition", "correct", "n_image_search", "n_text_search", "error", "model", "saw_image"]
WHY = {
    "unanswerable": "no probed condition passed under rule {rule} (a stronger labeler, more samples or better search "
                    "may answer it)",
    "uncertain": "the evidence did not settle it under rule {rule} (raise probe.adaptive.max_samples or lower "
                 "label.rule.confidence)",
}


def label_evidence(items: Mapping[str, Sequence[Any]], evidence: list[dict], rule: Any,
                   conditions: Sequence[str], ambiguous: set[str] | None = None) -> dict:
    """items: columns id, source, meta (and question, answer, aliases for the blind-guess guard of
    `rule.blind_guesses`, whose items are `blind_ambiguous(items)` unless `ambiguous` gives them); evidence: rollout
    rows (EVIDENCE_COLUMNS). Returns {"labels", "excluded", "reference": (metrics, rows), "answer_key": (metrics,
    rows), "metrics"}."""
    from pipeline.curate import answer_key, reference
    from pipeline.curate.label import blind_ambiguous, discount_guesses, label_items, rule_version
    from pipeline.io import exclusion
    from pipeline.schema import LABELS

    ids, sources = list(items["id"]), dict(zip(items["id"], items["source"]))
    probed = {r["item_id"] for r in evidence}
    ambiguous = set() if not rule.blind_guesses else blind_ambiguous(items) if ambiguous is None else set(ambiguous)
    labels = label_items(evidence, [i for i in ids if i in probed], rule, ambiguous)
    version = rule_version(rule)
    keep = [lab for lab in labels if lab["label"] not in WHY]
    excluded = [exclusion(lab["id"], "label", sources.get(lab["id"], ""), lab["label"],
                          f"item {lab['id']}: {lab['reason']}; " + WHY[lab["label"]].format(rule=version),
                          {k: v for k, v in lab.items() if k != "label"})
                for lab in labels if lab["label"] in WHY]
    excluded += [exclusion(i, "label", sources.get(i, ""), "not_probed",
                           f"item {i} has no probe evidence; raise probe.max_items (0 = all) and re-run probe")
                 for i in ids if i not in probed]
    by_id = {lab["id"]: lab["label"] for lab in labels}
    item_rows = [{"id": i, "meta": m} for i, m in zip(ids, items["meta"])]
    saw = {r["item_id"]: bool(r.get("saw_image")) for r in evidence}
    ref = reference.compare(item_rows, by_id)
    key = answer_key.compare(item_rows, by_id, saw)
    counts = Counter(lab["label"] for lab in labels)
    n = len(labels)

    def mean(key_):
        vals = [lab[key_] for lab in labels if not math.isnan(lab[key_])]
        return round(sum(vals) / len(vals), 4) if vals else None

    metrics = {
        "rule_version": version,
        # the guard's reach: items whose question text alone cannot know the answer, right blind answers discounted
        "blind_ambiguous_items": len(ambiguous & probed),
        "blind_guesses_discounted": sum(bool(r.get("guess")) for r in discount_guesses(evidence, ambiguous)),
        "items_in": len(ids),
        "probed": n,
        "labelled": len(keep),
        "excluded": len(excluded),
        "not_probed": len(ids) - n,
        "counts_add_up": len(ids) == len(keep) + len(excluded),
        "counts": {k: counts.get(k, 0) for k in LABELS},
        "shares": {k: round(counts.get(k, 0) / n, 4) if n else 0.0 for k in LABELS},
        "settled_by": dict(sorted(Counter(lab["settled_by"] or "none" for lab in labels).items())),
        "mean_pass_rate": {c: mean(f"pass_rate_{c}") for c in conditions},
        "mean_confidence": round(sum(lab["confidence"] for lab in labels) / n, 4) if n else 0.0,
        "models": sorted({r["model"] for r in evidence}),
        "reference": ref[0],
        "answer_key": key[0],
    }
    return {"labels": keep, "excluded": excluded, "reference": ref, "answer_key": key, "metrics": metrics}


__all__ = ["EVIDENCE_COLUMNS", "LABEL_ITEM_COLUMNS", "label_evidence"]
