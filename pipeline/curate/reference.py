"""Agreement between our labels and a reference label that a source carries (the paper's FVQA `category`).

A source may give each item a reference search label in its meta (`meta.reference_label`; the `mmsearch_r1`
source takes FVQA's `category`, a local/hf source a column named `reference_label`). Both sides are collapsed to
two classes, `search_free` and `search_required` (our image/text/mixed_search_required all count as
search_required). Our `unanswerable` (excluded from the dataset) is its own row of the confusion table and is not
counted as agreement or disagreement; reference values that are not a search label are counted as unrecognised.

`compare(items, labels)` returns the metrics (agreement, Cohen's kappa, confusion table ours x theirs) and one row
per item that has a reference label (REFERENCE_FEATURES). Reads and writes nothing.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable, Mapping

from pipeline.schema import SEARCH_REQUIRED

SEARCH_FREE = "search_free"
REQUIRED = "search_required"
CLASSES = (SEARCH_FREE, REQUIRED)  # the reference's classes (columns of the confusion table)
OURS = (SEARCH_FREE, REQUIRED, "unanswerable", "uncertain")  # our collapsed labels (rows)
EXCLUDED = ("unanswerable", "uncertain")  # our labels that are excluded from the dataset: their own rows
META_KEY = "reference_label"


def _norm(value: Any) -> str:
    return str(value).strip().lower().replace("-", "_").replace(" ", "_") if isinstance(value, str) else ""


def collapse(value: Any) -> str | None:
    """`search_free`, `search_required` or None (not a search label). Accepts our five labels and the paper's two
    (case, '-' and ' ' ignored)."""
    v = _norm(value)
    if v == SEARCH_FREE:
        return SEARCH_FREE
    if v == REQUIRED or v in SEARCH_REQUIRED:
        return REQUIRED
    return None


def is_search_label(value: Any) -> bool:
    return collapse(value) is not None


def reference_of(meta: str | Mapping[str, Any] | None) -> str | None:
    """The raw reference label in an item's meta (JSON string or dict), or None."""
    if isinstance(meta, str):
        try:
            meta = json.loads(meta or "{}")
        except json.JSONDecodeError:
            return None
    value = meta.get(META_KEY) if isinstance(meta, Mapping) else None
    return value if isinstance(value, str) and value.strip() else None


def reference_features():
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"),  # item id
        "data_id": datasets.Value("string"),  # the source's own id ("" when none), e.g. fvqa_train_0
        "reference_label": datasets.Value("string"),  # as the source gave it
        "reference": datasets.Value("string"),  # collapsed: search_free | search_required | "" (unrecognised)
        "label": datasets.Value("string"),  # ours ("" when the item was not probed)
        "ours": datasets.Value("string"),  # search_free | search_required | unanswerable | uncertain | not_probed
        "agree": datasets.Value("bool"),  # null when either side is not search_free / search_required
    })


def _kappa(table: dict[str, dict[str, int]], n: int) -> float | None:
    if not n:
        return None
    p_o = sum(table[c][c] for c in CLASSES) / n
    p_e = sum(sum(table[c].values()) * sum(table[r][c] for r in CLASSES) for c in CLASSES) / (n * n)
    if p_e >= 1.0:
        return 1.0 if p_o >= 1.0 else None
    return round((p_o - p_e) / (1.0 - p_e), 4)


def compare(items: Iterable[Mapping[str, Any]], labels: Mapping[str, str]) -> tuple[dict, list[dict]]:
    """items: {id, meta} rows; labels: item id -> our label (items absent were not probed).

    Returns (metrics, rows). metrics: items (with a reference label), unrecognised, not_probed, compared (both
    sides search_free / search_required), agreement and kappa over those (None when none), confusion
    {ours_<row>: {theirs_<class>: n}}, and the class shares of each side over the compared items."""
    rows: list[dict] = []
    for it in items:
        ref = reference_of(it.get("meta"))
        if ref is None:
            continue
        meta = json.loads(it.get("meta") or "{}") if isinstance(it.get("meta"), str) else dict(it.get("meta") or {})
        ours_label = labels.get(it["id"], "")
        ours = (ours_label if ours_label in EXCLUDED else collapse(ours_label)) if ours_label else "not_probed"
        theirs = collapse(ref) or ""
        agree = (ours == theirs) if theirs and ours in CLASSES else None
        rows.append({"id": it["id"], "data_id": str(meta.get("data_id") or meta.get("source_id") or ""),
                     "reference_label": ref, "reference": theirs, "label": ours_label, "ours": ours or "",
                     "agree": agree})
    table = {o: {c: 0 for c in CLASSES} for o in OURS}
    for r in rows:
        if r["reference"] and r["ours"] in table:
            table[r["ours"]][r["reference"]] += 1
    compared = [r for r in rows if r["agree"] is not None]
    n = len(compared)
    ours_n, theirs_n = Counter(r["ours"] for r in compared), Counter(r["reference"] for r in compared)
    metrics = {
        "items": len(rows),
        "unrecognised": sum(1 for r in rows if not r["reference"]),
        "not_probed": sum(1 for r in rows if r["ours"] == "not_probed"),
        "compared": n,
        "agreement": round(sum(bool(r["agree"]) for r in compared) / n, 4) if n else None,
        "kappa": _kappa(table, n),
        "confusion": {f"ours_{o}": {f"theirs_{c}": table[o][c] for c in CLASSES} for o in OURS},
        "ours_shares": {c: round(ours_n[c] / n, 4) if n else None for c in CLASSES},
        "reference_shares": {c: round(theirs_n[c] / n, 4) if n else None for c in CLASSES},
    }
    return metrics, rows


def card_summary(metrics: Mapping[str, Any]) -> dict | None:
    """What the dataset card shows: the label metrics' `reference` section (from `metrics["label"].files`, the card's
    loaded metrics) as {items, compared, agreement, kappa, not_probed, unrecognised, rows: [[ours, n per class]]},
    or None when no item carries a reference label."""
    for obj in getattr(metrics.get("label"), "files", {}).values():
        ref = obj.get("reference") if isinstance(obj, Mapping) else None
        if isinstance(ref, Mapping) and ref.get("items"):
            confusion = ref.get("confusion") or {}
            rows = [[o, *[int((confusion.get(f"ours_{o}") or {}).get(f"theirs_{c}", 0)) for c in CLASSES]] for o in OURS]
            return {k: ref.get(k) for k in ("items", "compared", "agreement", "kappa", "not_probed", "unrecognised")} | {
                "columns": list(CLASSES), "rows": rows}
    return None


__all__ = ["CLASSES", "META_KEY", "OURS", "card_summary", "collapse", "compare", "is_search_label",
           "reference_features", "reference_of"]
