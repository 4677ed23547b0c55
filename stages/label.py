"""Label every probed item search_free / image|text|mixed_search_required / unanswerable from the probe evidence.

Reads:  <items> (data/dedup/items.parquet) and <probe_dir>/<condition>/evidence.parquet for each of `conditions`.
Writes: <out_dir>/labels.parquet (LABEL_FEATURES: label, rule_version, pass rate per condition, n_rollouts,
        confidence, reason) for items with a usable label; <out_dir>/exclusions.parquet (EXCLUSION_FEATURES):
        unanswerable items (with the evidence summary) and items that were not probed; <out_dir>/metrics.json
        (counts and shares per label, pass rates, rule version, and `reference`: agreement and a confusion table
        with the reference label some sources carry, e.g. FVQA's `category`; see pipeline/curate/reference.py);
        <out_dir>/reference.parquet: per item with a reference label, ours vs theirs. Items in = labelled + excluded.
The rule (`pipeline.curate.label`, RULE_VERSION) is documented there; its thresholds are `rule.*` below.
Does not support: mixing evidence of different models (the evidence's model column is reported, not checked).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.config import param
from pipeline.curate.label import RuleParams


@dataclasses.dataclass
class Params:
    items: str = param("data/dedup/items.parquet", help="the items that were probed (ITEM_FEATURES)")
    probe_dir: str = param("data/probe", help="evidence folder: <probe_dir>/<condition>/evidence.parquet")
    conditions: list[str] = param(["closed_book", "tools"], help="conditions whose evidence is read")
    out_dir: str = param("data/label", help="labels.parquet, exclusions.parquet, reference.parquet and metrics.json are written here")
    rule: RuleParams = param(factory=RuleParams, help="thresholds of the label rule")


def run(params: Params, args) -> int:
    import math
    from collections import Counter

    import datasets
    import pyarrow.parquet as pq

    from pipeline.io import exclusion, write_exclusions, write_json
    from pipeline.curate.label import RULE_VERSION, label_items
    from pipeline.curate.reference import compare, reference_features
    from pipeline.schema import LABEL_FEATURES, LABELS, read_items, write_table

    items = read_items(params.items)
    ids = items["id"]
    sources = dict(zip(ids, items["source"]))
    rollouts = []
    models = set()
    for cond in params.conditions:
        path = Path(params.probe_dir) / cond / "evidence.parquet"
        if not path.exists():
            print(f"error: {path} is missing; run `python -m stages probe --condition {cond}` first")
            return 2
        t = pq.read_table(path, columns=["item_id", "condition", "correct", "n_image_search", "n_text_search",
                                         "error", "model"])
        rows = t.to_pylist()
        models |= {r["model"] for r in rows}
        rollouts.extend(rows)
    probed = {r["item_id"] for r in rollouts}
    labels = label_items(rollouts, [i for i in ids if i in probed], params.rule)
    keep = [l for l in labels if l["label"] != "unanswerable"]
    excluded = [exclusion(l["id"], "label", sources.get(l["id"], ""), "unanswerable",
                          f"item {l['id']}: {l['reason']}; no correct rollout under rule {RULE_VERSION} "
                          "(a stronger labeler, more samples or better search may answer it)",
                          {k: v for k, v in l.items() if k != "label"})
                for l in labels if l["label"] == "unanswerable"]
    excluded += [exclusion(i, "label", sources.get(i, ""), "not_probed",
                           f"item {i} has no probe evidence; raise probe.max_items (0 = all) and re-run probe")
                 for i in ids if i not in probed]
    out = Path(params.out_dir)
    table = datasets.Dataset.from_list(keep, features=LABEL_FEATURES).data.table if keep else \
        LABEL_FEATURES.arrow_schema.empty_table()
    write_table(table, out / "labels.parquet")
    write_exclusions(excluded, out / "exclusions.parquet")
    reference, ref_rows = compare(({"id": i, "meta": m} for i, m in zip(ids, items["meta"])),
                                  {l["id"]: l["label"] for l in labels})
    write_table(datasets.Dataset.from_list(ref_rows, features=reference_features()).data.table if ref_rows else
                reference_features().arrow_schema.empty_table(), out / "reference.parquet")
    counts = Counter(l["label"] for l in labels)
    n = len(labels)

    def mean(key):
        vals = [l[key] for l in labels if not math.isnan(l[key])]
        return round(sum(vals) / len(vals), 4) if vals else None

    metrics = {
        "rule_version": RULE_VERSION,
        "items_in": len(ids),
        "probed": n,
        "labelled": len(keep),
        "excluded": len(excluded),
        "not_probed": len(ids) - n,
        "counts": {k: counts.get(k, 0) for k in LABELS},
        "shares": {k: round(counts.get(k, 0) / n, 4) if n else 0.0 for k in LABELS},
        "mean_pass_rate": {c: mean(f"pass_rate_{c}") for c in params.conditions},
        "mean_confidence": round(sum(l["confidence"] for l in labels) / n, 4) if n else 0.0,
        "models": sorted(models),
        "reference": reference,
    }
    write_json(metrics, out / "metrics.json")
    assert len(ids) == len(keep) + len(excluded)
    print(f"label: {n} probed items -> " + ", ".join(f"{k} {counts.get(k, 0)}" for k in LABELS)
          + f"; {len(keep)} labelled, {len(excluded)} excluded -> {out}")
    if reference["items"]:
        print(f"label: {reference['items']} items carry a reference label; agreement {reference['agreement']} "
              f"(kappa {reference['kappa']}) over {reference['compared']} compared -> {out / 'reference.parquet'}")
    return 0
