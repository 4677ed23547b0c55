"""Search-balanced, cluster-aware train/validation/test splits with every dropped item kept with its reason.

Reads:  data/dedup/items.parquet (items + cluster_id), data/dedup/exclusions.parquet, data/label/labels.parquet,
        data/label/exclusions.parquet (optional).
Writes: data/balance/{train,validation,test}.parquet (item columns, cluster_id, label columns with the label as a
        string, split), data/balance/train_unbalanced.parquet (same columns: the train split before the quotas, i.e.
        the balanced train items plus the train clusters' over_quota items; `train.data: unbalanced` trains on it),
        data/balance/exclusions.parquet (dedup exclusions carried over, plus unlabeled, unanswerable, over_quota,
        ...: counts in = selected + excluded; train_unbalanced is not counted), metrics.json, strata.json (per split and
        stratum: counts, share, deviation in items), plots/labels_by_{category,source}.{csv,png}.
Does not support: balancing on more than one share at once (one search-required share; sub-targets within it).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipeline.config import param


@dataclass
class Params:
    dedup_dir: str = param("data/dedup", help="dedup stage output folder")
    label_dir: str = param("data/label", help="label stage output folder")
    out_dir: str = param("data/balance", help="output folder")
    seed: int = param(0, help="seed of the cluster-to-split assignment and of which items fill each quota")
    search_required_share: float = param(0.68, help="target share of search-required items in every split and stratum (paper: about 68:32)")
    sub_targets: dict[str, float] = param({}, help="optional shares of image_search_required / text_search_required / mixed_search_required within the search-required items, e.g. {image_search_required: 0.4, text_search_required: 0.4, mixed_search_required: 0.2}")
    fractions: dict[str, float] = param({"train": 0.8, "validation": 0.1, "test": 0.1}, help="target fraction of items per split (keys train, validation, test)")
    strata: list[str] = param(["category", "source"], help="item columns whose values define a stratum")

    def validate(self) -> None:
        from pipeline.curate.balance import SPLITS
        from pipeline.schema import ITEM_COLUMNS, SEARCH_REQUIRED

        if not 0.0 <= self.search_required_share <= 1.0:
            raise ValueError(f"search_required_share {self.search_required_share} must lie in [0, 1]")
        if sorted(self.fractions) != sorted(SPLITS):
            raise ValueError(f"fractions must have exactly the keys {', '.join(SPLITS)}")
        if any(v < 0 for v in self.fractions.values()) or abs(sum(self.fractions.values()) - 1.0) > 1e-6:
            raise ValueError("fractions must be non-negative and sum to 1")
        bad = [k for k in self.sub_targets if k not in SEARCH_REQUIRED]
        if bad:
            raise ValueError(f"sub_targets key {bad[0]!r} is not one of {', '.join(SEARCH_REQUIRED)}")
        if self.sub_targets and (any(v < 0 for v in self.sub_targets.values()) or sum(self.sub_targets.values()) <= 0):
            raise ValueError("sub_targets must be non-negative with a positive sum")
        bad = [c for c in self.strata if c not in ITEM_COLUMNS]
        if bad:
            raise ValueError(f"strata column {bad[0]!r} is not an item column")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=".", help="folder that data paths are relative to (default: .)")


def run(params: Params, args) -> int:
    from pathlib import Path

    import pyarrow.parquet as pq

    from pipeline.curate import balance as bl
    from pipeline.io import exclusion, write_exclusions, write_json
    from pipeline.curate.plots import write_plots
    from pipeline.schema import EXCLUSION_FEATURES, SEARCH_REQUIRED, to_json

    root = Path(getattr(args, "root", ".") or ".")
    dedup_dir, label_dir, out = root / params.dedup_dir, root / params.label_dir, root / params.out_dir
    items_path, labels_path = dedup_dir / "items.parquet", label_dir / "labels.parquet"
    for p, stage in ((items_path, "dedup"), (labels_path, "label")):
        if not p.exists():
            raise SystemExit(f"balance: {p} not found; run `python -m stages {stage}` first")
    pool = bl.load_pool(items_path, labels_path, label_dir / "exclusions.parquet")
    sel = bl.select(pool, share=params.search_required_share, fractions=params.fractions, strata=params.strata,
                    sub_targets=params.sub_targets or None, seed=params.seed)

    dedup_excl_path = dedup_dir / "exclusions.parquet"
    carried = pq.read_table(dedup_excl_path).select(list(EXCLUSION_FEATURES)).to_pylist() if dedup_excl_path.exists() else []
    rows = list(carried)
    for r in sel.excluded.itertuples(index=False):
        rec = {"id": r.id, "source": r.source, "category": r.category, "cluster_id": r.cluster_id,
               "label": r.label if isinstance(r.label, str) else None, "split": r.split if isinstance(r.split, str) else None}
        rows.append(exclusion(r.id, "balance", r.source, r.reason, r.detail, rec))
    write_exclusions(rows, out / "exclusions.parquet")

    counts = bl.write_splits(items_path, labels_path, sel.selected, out)
    unbalanced = bl.unbalanced_train(sel)
    bl.write_splits(items_path, labels_path, unbalanced, out, files={"train": "train_unbalanced"})
    n_in = len(pool) + len(carried)
    n_selected = sum(counts.values())
    assert n_in == n_selected + len(rows), f"counts in ({n_in}) != selected ({n_selected}) + excluded ({len(rows)})"

    before = pool[pool["label"].notna()]
    write_plots(before, sel.selected, out / "plots")
    write_json(sel.strata.to_dict(orient="records"), out / "strata.json")

    metrics: dict = {"items_in": n_in, "selected": n_selected, "excluded": len(rows), "seed": params.seed,
                     "target_search_required_share": params.search_required_share, "splits": {}}
    reasons: dict[str, int] = {}
    for row in rows:
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    metrics["excluded_by_reason"] = dict(sorted(reasons.items()))
    for split in bl.SPLITS:
        s = sel.selected[sel.selected["split"] == split]
        n_r = int(s["label"].isin(SEARCH_REQUIRED).sum())
        metrics["splits"][split] = {
            "items": len(s), "clusters": int(s["cluster_id"].nunique()),
            "search_required_share": round(n_r / len(s), 4) if len(s) else None,
            "labels": {k: int(v) for k, v in sorted(s["label"].value_counts().items())},
        }
    n_r = int(unbalanced["label"].isin(SEARCH_REQUIRED).sum())
    metrics["train_unbalanced"] = {  # the ablation's training items (train.data: unbalanced)
        "items": len(unbalanced), "search_required_share": round(n_r / len(unbalanced), 4) if len(unbalanced) else None,
        "labels": {k: int(v) for k, v in sorted(unbalanced["label"].value_counts().items())},
    }
    dev = sel.strata["deviation_items"] if len(sel.strata) else []
    metrics["max_stratum_deviation_items"] = round(float(max(dev, default=0.0)), 4)
    metrics["strata"] = int(len(sel.strata))
    write_json(metrics, out / "metrics.json")
    print(f"balance: {n_in} in, {n_selected} selected {to_json(counts)}, {len(rows)} excluded {to_json(metrics['excluded_by_reason'])}")
    return 0
