"""Label every probed item search_free / image|text|mixed_search_required (or exclude it) from the probe evidence.

Reads:  <items> (data/dedup/items.parquet) and <probe_dir>/<condition>/evidence.parquet for each of `conditions`
        that exists (the probe's cascade skips conditions no item reached).
Writes: <out_dir>/labels.parquet (LABEL_FEATURES: label, rule_version, pass rate and credible interval per
        condition, the deciding condition, confidence, reason) for the items with a usable label;
        <out_dir>/exclusions.parquet: unanswerable, uncertain and not-probed items, each with its reason;
        <out_dir>/metrics.json: counts and shares per label, `answer_key` (accuracy, recall and the confusion table
        against the demo world's answer key) and `reference` (agreement with a source's reference label such as
        FVQA's category); <out_dir>/key_confusion.json (one row per item: expected vs label, a DVC confusion plot)
        and plots/key_confusion.png; <out_dir>/reference.parquet (ours vs theirs per item).
The rule (`pipeline.curate.label`, RULE_VERSION) is documented there; its thresholds are the shared `label_rule:`
section (the probe's adaptive sampling stops by the same rule).
Does not support: mixing evidence of different models (the evidence's model column is reported, not checked).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.config import param
from pipeline.curate.label import RuleParams


@dataclasses.dataclass
class Params(RuleParams):
    """The `label:` section (the rule's thresholds come from `label_rule:`)."""

    items: str = param("data/dedup/items.parquet", help="the items that were probed (ITEM_FEATURES)")
    probe_dir: str = param("data/probe", help="evidence folder: <probe_dir>/<condition>/evidence.parquet")
    conditions: list[str] = param(["closed_book", "image_only", "text_only", "tools"],
                                  help="conditions whose evidence is read (a missing one is skipped)")
    out_dir: str = param("data/label", help="labels, exclusions, reports and metrics.json are written here")


def run(params: Params, args) -> int:
    import datasets
    import pyarrow.parquet as pq

    from pipeline.curate.answer_key import plot_confusion
    from pipeline.curate.labelling import EVIDENCE_COLUMNS, LABEL_ITEM_COLUMNS, label_evidence
    from pipeline.curate.reference import reference_features
    from pipeline.io import write_exclusions, write_json
    from pipeline.schema import LABEL_FEATURES, LABELS, read_items, write_table

    items = read_items(params.items)
    evidence, read = [], []
    for cond in params.conditions:
        path = Path(params.probe_dir) / cond / "evidence.parquet"
        if path.exists():
            evidence += pq.read_table(path, columns=EVIDENCE_COLUMNS).to_pylist()
            read.append(cond)
    if not read:
        print(f"error: no evidence under {params.probe_dir} for {params.conditions}; run the probe stage first")
        return 2
    out = label_evidence({c: items[c] for c in LABEL_ITEM_COLUMNS}, evidence, params, read)
    folder = Path(params.out_dir)
    keep = out["labels"]
    write_table(datasets.Dataset.from_list(keep, features=LABEL_FEATURES).data.table if keep else
                LABEL_FEATURES.arrow_schema.empty_table(), folder / "labels.parquet")
    write_exclusions(out["excluded"], folder / "exclusions.parquet")
    ref_rows = out["reference"][1]
    write_table(datasets.Dataset.from_list(ref_rows, features=reference_features()).data.table if ref_rows else
                reference_features().arrow_schema.empty_table(), folder / "reference.parquet")
    key_metrics, key_rows = out["answer_key"]
    write_json(key_rows, folder / "key_confusion.json")
    if key_rows:
        (folder / "plots").mkdir(parents=True, exist_ok=True)
        plot_confusion(key_rows, folder / "plots" / "key_confusion.png")
    metrics = {**out["metrics"], "conditions_read": read}
    write_json(metrics, folder / "metrics.json")
    assert metrics["counts_add_up"], metrics
    print(f"label: {metrics['probed']} probed items -> " + ", ".join(f"{k} {metrics['counts'][k]}" for k in LABELS)
          + f"; {metrics['labelled']} labelled, {metrics['excluded']} excluded -> {folder}")
    if key_metrics["items"]:
        print(f"label: answer key: {key_metrics['correct']} of {key_metrics['labelled']} keyed items given their key's "
              f"label (accuracy {key_metrics['accuracy']}; unanswerable counts, {key_metrics['uncertain']} uncertain "
              f"left aside)")
    ref = metrics["reference"]
    if ref["items"]:
        print(f"label: {ref['items']} items carry a reference label; agreement {ref['agreement']} "
              f"(kappa {ref['kappa']}) over {ref['compared']} compared -> {folder / 'reference.parquet'}")
    return 0
