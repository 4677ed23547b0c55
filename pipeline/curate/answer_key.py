"""How right the labels are: comparison with the answer key that the demo world writes into each item.

The demo world knows, per item, what the demo labeler needs (`meta.expected_need`: none | image | text | mixed |
visual; see pipeline/gather/demo.py). `expected_label` turns that into the label a perfect probe would give; a
`visual` item is search_free for a labeler that sees the image and unanswerable for a text-only one.
`compare(...)` gives accuracy over the labelled items (uncertain ones are counted apart: the rule declined to label
them), recall per key, the confusion table key x label and one row per item for `dvc plots` (confusion template).
Items without a key (other sources) are left out. Reads and writes nothing.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable, Mapping

from pipeline.schema import LABELS

NEED_LABEL = {"none": "search_free", "image": "image_search_required", "text": "text_search_required",
              "mixed": "mixed_search_required"}


def expected_need(meta: Any) -> str | None:
    """The item's answer key (`expected_need` in its meta JSON), or None."""
    if isinstance(meta, str):
        try:
            meta = json.loads(meta or "{}")
        except ValueError:
            return None
    need = meta.get("expected_need") if isinstance(meta, Mapping) else None
    return need if isinstance(need, str) and need else None


def expected_label(need: str, saw_image: bool) -> str:
    if need == "visual":
        return "search_free" if saw_image else "unanswerable"
    if need not in NEED_LABEL:
        raise ValueError(f"unknown expected_need {need!r}; use one of {sorted(NEED_LABEL) + ['visual']}")
    return NEED_LABEL[need]


def compare(items: Iterable[Mapping[str, Any]], labels: Mapping[str, str], saw_image: Mapping[str, bool]) -> tuple[dict, list[dict]]:
    """(metrics, plot rows) for items {id, meta} against `labels` (id -> label of every probed item).

    metrics: items (with a key and a label), labelled (not uncertain), correct, accuracy, uncertain, recall per
    expected label, confusion {expected: {label: n}}. Plot rows: {"id", "expected", "label"}."""
    rows = []
    for it in items:
        need = expected_need(it.get("meta"))
        label = labels.get(it["id"])
        if need is None or label is None:
            continue
        rows.append({"id": it["id"], "expected": expected_label(need, bool(saw_image.get(it["id"]))), "label": label})
    labelled = [r for r in rows if r["label"] != "uncertain"]
    correct = sum(r["expected"] == r["label"] for r in labelled)
    confusion: dict[str, dict[str, int]] = {}
    for r in rows:
        confusion.setdefault(r["expected"], Counter())[r["label"]] += 1
    recall = {e: round(c[e] / sum(v for k, v in c.items() if k != "uncertain"), 4)
              for e, c in confusion.items() if sum(v for k, v in c.items() if k != "uncertain")}
    order = {lab: i for i, lab in enumerate(LABELS)}
    metrics = {
        "items": len(rows),
        "labelled": len(labelled),
        "correct": correct,
        "accuracy": round(correct / len(labelled), 4) if labelled else None,
        "uncertain": len(rows) - len(labelled),
        "recall": dict(sorted(recall.items(), key=lambda kv: order.get(kv[0], 99))),
        "confusion": {e: dict(sorted(c.items(), key=lambda kv: order.get(kv[0], 99)))
                      for e, c in sorted(confusion.items(), key=lambda kv: order.get(kv[0], 99))},
    }
    return metrics, rows


def plot_confusion(rows: list[dict], path: Any) -> None:
    """A key x label heat map (PNG) of the comparison rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    present = [lab for lab in LABELS if any(r["expected"] == lab or r["label"] == lab for r in rows)] or list(LABELS)
    idx = {lab: i for i, lab in enumerate(present)}
    m = np.zeros((len(present), len(present)), dtype=int)
    for r in rows:
        m[idx[r["expected"]], idx[r["label"]]] += 1
    fig, ax = plt.subplots(figsize=(1.2 * len(present) + 2, 1.0 * len(present) + 1.5))
    ax.imshow(m, cmap="Blues")
    short = [lab.replace("_search_required", "").replace("_", " ") for lab in present]
    ax.set_xticks(range(len(present)), short, rotation=30, ha="right")
    ax.set_yticks(range(len(present)), short)
    ax.set_xlabel("label from the probe")
    ax.set_ylabel("label the answer key implies")
    for i in range(len(present)):
        for j in range(len(present)):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    total = max(int(m.sum()), 1)
    ax.set_title(f"labels vs answer key: {int(np.trace(m))}/{total} on the diagonal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["NEED_LABEL", "compare", "expected_label", "expected_need", "plot_confusion"]
