"""Balance: quotas per stratum, cluster-aware seeded splits, exclusions that add up, the stage end to end."""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.curate import balance as bl
from pipeline.schema import LABEL_FEATURES, LABELS, SEARCH_REQUIRED, label_row, write_table
from test_dedup import _run_stage as run_dedup_stage
from test_dedup import cropped, encode, make_item, reencoded, resized, synth

SHARE = 0.68


# ---------------------------------------------------------------------------------------------------------------
# quotas
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("share", [0.68, 0.5, 0.0, 1.0])
def test_stratum_quota_hits_the_share_and_keeps_the_most_items(share):
    for n_free in range(0, 9):
        for n_req in range(0, 12):
            q = bl.stratum_quota({"search_free": n_free, "text_search_required": n_req}, share)
            f, r = q["search_free"], q["search_required"]
            assert f <= n_free and r <= n_req
            t = f + r
            assert abs(r - share * t) <= 0.5 + 1e-9
            # no larger total meets the target within half an item with what is available
            for bigger in range(t + 1, n_free + n_req + 1):
                rb = math.floor(share * bigger + 0.5)
                assert not (rb <= n_req and bigger - rb <= n_free)


def test_stratum_quota_with_sub_targets():
    counts = {"search_free": 50, "image_search_required": 30, "text_search_required": 10, "mixed_search_required": 40}
    q = bl.stratum_quota(counts, SHARE, {"image_search_required": 0.5, "text_search_required": 0.5})
    assert q["text_search_required"] == 10  # text is the bottleneck
    assert q["image_search_required"] - q["text_search_required"] in (0, 1)  # 50:50 within one item
    assert "mixed_search_required" not in q
    r = q["image_search_required"] + q["text_search_required"]
    assert abs(r - SHARE * (r + q["search_free"])) <= 0.5
    # a sub-label missing from the stratum is renormalised away, not a reason to drop the stratum
    q2 = bl.stratum_quota({"search_free": 5, "image_search_required": 10}, SHARE, {"image_search_required": 0.5, "text_search_required": 0.5})
    assert q2["image_search_required"] == 10 and q2["search_free"] == 5


# ---------------------------------------------------------------------------------------------------------------
# selection on a synthetic pool
# ---------------------------------------------------------------------------------------------------------------
def synthetic_pool(n=600, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cluster = [f"c{int(c)}" for c in rng.integers(0, n // 3, n)]  # clusters of about 3 items
    labels = rng.choice(list(LABELS), n, p=[0.35, 0.2, 0.2, 0.15, 0.05, 0.05])
    labels = np.where(rng.random(n) < 0.03, None, labels).tolist()  # some unlabeled
    return pd.DataFrame({
        "id": [f"i{i:04d}" for i in range(n)],
        "source": rng.choice(["demo", "other"], n).tolist(),
        "category": rng.choice(["flag", "photo", "visual"], n).tolist(),
        "entity": "",
        "cluster_id": cluster,
        "label": labels,
    })


def check_selection(sel: bl.Selection, pool: pd.DataFrame, share=SHARE):
    assert len(sel.selected) + len(sel.excluded) == len(pool)
    assert set(sel.selected["id"]).isdisjoint(sel.excluded["id"])
    assert sel.selected.groupby("cluster_id")["split"].nunique().max() == 1
    assert not (sel.selected["label"] == "unanswerable").any() and sel.selected["label"].notna().all()
    for _, g in sel.selected.groupby(["split", "category", "source"]):
        r = g["label"].isin(SEARCH_REQUIRED).sum()
        assert abs(r - share * len(g)) <= 1.0  # within one item per stratum
    reasons = set(sel.excluded["reason"])
    assert {"unanswerable", "unlabeled", "over_quota"} <= reasons


def split_sets(sel):
    return {s: frozenset(sel.selected.loc[sel.selected["split"] == s, "id"]) for s in bl.SPLITS}


def test_select_is_cluster_aware_balanced_and_seeded():
    pool = synthetic_pool()
    a = bl.select(pool, share=SHARE, seed=1)
    check_selection(a, pool)
    sizes = a.selected["split"].value_counts()
    assert sizes["train"] > sizes["validation"] > 0 and sizes["test"] > 0
    assert split_sets(bl.select(pool, share=SHARE, seed=1)) == split_sets(a)
    b = bl.select(pool, share=SHARE, seed=2)
    check_selection(b, pool)
    assert split_sets(b) != split_sets(a)
    for sel in (a, b):  # same shares under either seed
        share_all = sel.selected["label"].isin(SEARCH_REQUIRED).mean()
        assert abs(share_all - SHARE) < 0.02


def test_select_with_sub_targets_and_other_share():
    pool = synthetic_pool(seed=3)
    sub = {"image_search_required": 0.5, "text_search_required": 0.25, "mixed_search_required": 0.25}
    sel = bl.select(pool, share=0.5, sub_targets=sub, seed=0)
    check_selection(sel, pool, share=0.5)
    req = sel.selected[sel.selected["label"].isin(SEARCH_REQUIRED)]["label"].value_counts(normalize=True)
    assert abs(req["image_search_required"] - 0.5) < 0.06


def test_unbalanced_train_is_the_train_split_before_the_quotas():
    # by hand: one stratum, everything to train, share 0.5: 4 search-free + 1 search-required keep 1 + 1;
    # the unbalanced train keeps all 5 answerable items, never the unanswerable or unlabeled one
    labels = ["search_free"] * 4 + ["image_search_required", "unanswerable", None]
    pool = pd.DataFrame({"id": [f"i{k}" for k in range(7)], "source": "demo", "category": "flag", "entity": "",
                         "cluster_id": [f"c{k}" for k in range(7)], "label": labels})
    sel = bl.select(pool, share=0.5, fractions={"train": 1.0, "validation": 0.0, "test": 0.0}, strata=["source"])
    assert len(sel.selected) == 2
    unbalanced = bl.unbalanced_train(sel)
    assert unbalanced["id"].tolist() == ["i0", "i1", "i2", "i3", "i4"] and set(unbalanced["split"]) == {"train"}
    # on a larger pool: a superset of the balanced train split, no cluster shared with validation or test
    pool = synthetic_pool()
    sel = bl.select(pool, share=SHARE, seed=1)
    unbalanced = bl.unbalanced_train(sel)
    train = sel.selected[sel.selected["split"] == "train"]
    over = sel.excluded[(sel.excluded["reason"] == "over_quota") & (sel.excluded["split"] == "train")]
    assert set(unbalanced["id"]) == set(train["id"]) | set(over["id"]) and len(over) > 0
    held_out = sel.selected[sel.selected["split"] != "train"]
    assert set(unbalanced["cluster_id"]).isdisjoint(held_out["cluster_id"])
    assert unbalanced["label"].isin(LABELS).all() and not (unbalanced["label"] == "unanswerable").any()


# ---------------------------------------------------------------------------------------------------------------
# the stage: dedup -> (synthetic) labels -> balance
# ---------------------------------------------------------------------------------------------------------------
def write_labels(root: Path, ids: list[str], seed=0, as_string=False):
    rng = np.random.default_rng(seed)
    rows = []
    for i in ids:
        label = str(rng.choice(list(LABELS), p=[0.3, 0.25, 0.2, 0.15, 0.05, 0.05]))
        rows.append(label_row(i, label, rule_version="test", pass_rate_closed_book=0.25, pass_rate_tools=0.75,
                              n_rollouts=8, confidence=0.8, reason="synthetic"))
    feats = LABEL_FEATURES.copy()
    if as_string:
        feats["label"] = datasets.Value("string")
    write_table(datasets.Dataset.from_list(rows, features=feats).data.table, root / "data/label/labels.parquet")


def build_world(root: Path, n=90) -> dict:
    """Two sources with planted copies of one another's pictures, and an eval set holding copies too."""
    pics = [synth(1000 + s) for s in range(n)]
    cats = ["flag", "photo", "visual"]
    a = [make_item("alpha", f"Question about picture {i}?", f"a{i}", encode(p), category=cats[i % 3]) for i, p in enumerate(pics)]
    planted = {}
    b = []
    for i in range(0, n, 3):  # a copy of every third picture, under another question, in another source
        copy = (reencoded, resized, lambda im, i=i: cropped(im, seed=i))[(i // 3) % 3](pics[i])
        b.append(make_item("beta", f"Another question {i}?", f"b{i}", copy, category=cats[i % 3]))
        planted[b[-1]["id"]] = a[i]["id"]
    b += [make_item("beta", f"Question about picture {i}?", f"a{i}", reencoded(pics[i])) for i in (1, 2)]  # duplicates
    from pipeline.schema import write_items

    write_items(a, root / "data/gather/alpha/items.parquet")
    write_items(b, root / "data/gather/beta/items.parquet")
    write_items([make_item("ev", "eval?", "e", resized(pics[4]))], root / "eval.parquet")
    return {"planted": planted, "n_in": len(a) + len(b), "contaminated": a[4]["id"]}


def run_balance(root: Path, **values) -> dict:
    from pipeline.config import build
    from stages import balance as stage

    stage.run(build(stage.Params, values), argparse.Namespace(root=str(root)))
    return json.loads((root / "data/balance/metrics.json").read_text())


def read_splits(root: Path) -> dict[str, pd.DataFrame]:
    return {s: pq.read_table(root / f"data/balance/{s}.parquet", columns=["id", "cluster_id", "label", "category", "source", "split"]).to_pandas()
            for s in bl.SPLITS}


def test_stage_end_to_end_planted_copies_never_cross_splits(tmp_path):
    world = build_world(tmp_path)
    run_dedup_stage(tmp_path, 'sources=["alpha", "beta"]', 'eval_sets=[{"path": "eval.parquet", "name": "ev"}]',
                    'scheduler="synchronous"')
    dedup_items = pq.read_table(tmp_path / "data/dedup/items.parquet", columns=["id", "cluster_id"]).to_pandas()
    cluster = dict(zip(dedup_items["id"], dedup_items["cluster_id"]))
    for copy, orig in world["planted"].items():  # every planted copy caught
        if orig != world["contaminated"]:
            assert cluster[copy] == cluster[orig], (copy, orig)
    ids = dedup_items["id"].tolist()
    write_labels(tmp_path, ids[:-3])  # three items left unlabeled

    m = run_balance(tmp_path, seed=7)
    splits = read_splits(tmp_path)
    allsel = pd.concat(splits.values())
    excl = pq.read_table(tmp_path / "data/balance/exclusions.parquet").to_pandas()
    assert len(allsel) + len(excl) == world["n_in"] == m["items_in"]
    assert set(allsel["id"]).isdisjoint(excl["id"])
    reasons = set(excl["reason"])
    assert {"duplicate", "contaminated", "unlabeled", "unanswerable", "over_quota"} <= reasons
    assert excl.loc[excl["reason"] == "contaminated", "id"].tolist() == [world["contaminated"]]
    assert allsel.groupby("cluster_id")["split"].nunique().max() == 1  # no cluster crosses splits
    split_of = dict(zip(allsel["id"], allsel["split"]))
    for copy, orig in world["planted"].items():
        if copy in split_of and orig in split_of:
            assert split_of[copy] == split_of[orig]
    for _, g in allsel.groupby(["split", "category", "source"]):
        assert abs(g["label"].isin(SEARCH_REQUIRED).sum() - SHARE * len(g)) <= 1.0
    assert m["max_stratum_deviation_items"] <= 0.5
    # the split files load as HF datasets with images and the label as a string
    ds = datasets.Dataset.from_parquet(str(tmp_path / "data/balance/train.parquet"))
    assert ds.features["label"] == datasets.Value("string") and ds.features["image"] == datasets.Image()
    assert ds[0]["label"] in LABELS and ds[0]["image"].size[0] > 0

    # the ablation's train file: the balanced train items and more, in the same columns
    unbal = pq.read_table(tmp_path / "data/balance/train_unbalanced.parquet").to_pandas()
    assert set(splits["train"]["id"]) < set(unbal["id"]) and len(unbal) == m["train_unbalanced"]["items"]
    assert set(unbal["id"]).isdisjoint(set(splits["test"]["id"]) | set(splits["validation"]["id"]))
    assert list(unbal.columns) == list(pq.read_table(tmp_path / "data/balance/train.parquet").schema.names)

    # plots: CSV for `dvc plots show` and PNG, before and after
    with open(tmp_path / "data/balance/plots/labels_by_category.csv") as f:
        table = list(csv.DictReader(f))
    after = sum(int(r["count"]) for r in table if r["phase"] == "after")
    before = sum(int(r["count"]) for r in table if r["phase"] == "before")
    assert after == len(allsel) and before > after
    assert (tmp_path / "data/balance/plots/labels_by_source.png").read_bytes()[:4] == b"\x89PNG"

    # same seed: identical files; another seed: other splits, same shares
    first = {s: (tmp_path / f"data/balance/{s}.parquet").read_bytes() for s in bl.SPLITS}
    png = (tmp_path / "data/balance/plots/labels_by_source.png").read_bytes()
    run_balance(tmp_path, seed=7)
    assert {s: (tmp_path / f"data/balance/{s}.parquet").read_bytes() for s in bl.SPLITS} == first
    assert (tmp_path / "data/balance/plots/labels_by_source.png").read_bytes() == png
    run_balance(tmp_path, seed=8)
    other = read_splits(tmp_path)
    assert {s: set(d["id"]) for s, d in other.items()} != {s: set(d["id"]) for s, d in splits.items()}
    for _, g in pd.concat(other.values()).groupby(["split", "category", "source"]):
        assert abs(g["label"].isin(SEARCH_REQUIRED).sum() - SHARE * len(g)) <= 1.0


def test_load_pool_reads_string_labels_and_label_exclusions(tmp_path):
    world = build_world(tmp_path, n=12)
    run_dedup_stage(tmp_path, 'sources=["alpha", "beta"]', 'scheduler="synchronous"')
    ids = pq.read_table(tmp_path / "data/dedup/items.parquet", columns=["id"]).column("id").to_pylist()
    write_labels(tmp_path, ids[1:], as_string=True)
    from pipeline.io import exclusion, write_exclusions

    write_exclusions([exclusion(ids[0], "label", "alpha", "probe_failed", "engine error")], tmp_path / "data/label/exclusions.parquet")
    pool = bl.load_pool(tmp_path / "data/dedup/items.parquet", tmp_path / "data/label/labels.parquet", tmp_path / "data/label/exclusions.parquet")
    assert pool["id"].tolist() == ids and pool["label"].iloc[1:].isin(LABELS).all()
    m = run_balance(tmp_path)
    excl = pq.read_table(tmp_path / "data/balance/exclusions.parquet").to_pandas().set_index("id")
    assert excl.loc[ids[0], "reason"] == "probe_failed" and "engine error" in excl.loc[ids[0], "detail"]
    assert m["selected"] + m["excluded"] == m["items_in"] == world["n_in"]
