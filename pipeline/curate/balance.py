"""Search-balanced, cluster-aware, seeded train/validation/test splits.

How a split is built (all deterministic for a given seed):
1. Items without a usable label are excluded: "unanswerable", "unlabeled" (or the label stage's own reason).
2. Whole clusters (from dedup) are assigned to splits: clusters in a seeded random order, largest first, each to
   the split furthest below its target fraction within the cluster's dominant stratum and search group. A cluster
   is never divided between splits.
3. Within each (split, stratum) — stratum = the values of `strata` columns, by default category and source — the
   largest subset with the target share of search-required items is kept: R = round(share * T) search-required
   and T - R search-free, so the share is within half an item of the target. Optional sub-targets divide R among
   image / text / mixed search-required (renormalised over the sub-labels present in the stratum). Which items
   are kept is decided by a seeded hash of the item id; the others are excluded as "over_quota".

Reads the tables through DuckDB (`load_pool`); `select` is pure pandas logic; nothing is written here.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.schema import LABELS, SEARCH_REQUIRED

SPLITS = ("train", "validation", "test")
SEARCH_FREE = "search_free"
UNANSWERABLE = "unanswerable"


def load_pool(items_path: str | Path, labels_path: str | Path, label_exclusions: str | Path | None = None) -> pd.DataFrame:
    """Items (no image bytes) left-joined with their label, via DuckDB.

    Columns: id, source, category, entity, cluster_id, label (name or None), label_excluded_reason,
    label_excluded_detail. The label column may be stored as class index (ClassLabel) or as name.
    """
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE names AS SELECT * FROM (VALUES " + ", ".join(f"({i}, '{n}')" for i, n in enumerate(LABELS)) + ") t(idx, name)")
    label_type = con.execute("SELECT typeof(label) FROM read_parquet(?) LIMIT 1", [str(labels_path)]).fetchone()
    label_expr = "l.label" if label_type and "VARCHAR" in label_type[0] else "n.name"
    if label_exclusions and Path(label_exclusions).exists():
        con.execute("CREATE TABLE lx AS SELECT id, min(reason) AS reason, arg_min(detail, reason) AS detail "
                    "FROM read_parquet(?) GROUP BY id", [str(label_exclusions)])
    else:
        con.execute("CREATE TABLE lx (id VARCHAR, reason VARCHAR, detail VARCHAR)")
    excl = "LEFT JOIN lx ON lx.id = i.id"
    sql = f"""
        WITH lab AS (SELECT l.id, {label_expr} AS label FROM read_parquet(?) l LEFT JOIN names n ON n.idx = TRY_CAST(l.label AS INTEGER))
        SELECT i.id, i.source, i.category, i.entity, i.cluster_id, lab.label,
               lx.reason AS label_excluded_reason, lx.detail AS label_excluded_detail
        FROM read_parquet(?, file_row_number=true) i
        LEFT JOIN lab ON lab.id = i.id {excl}
        ORDER BY i.file_row_number
    """
    df = con.execute(sql, [str(labels_path), str(items_path)]).df()
    con.close()
    return df


def seeded_rank(ids: Sequence[str], seed: int) -> np.ndarray:
    """A per-item random key that depends only on (seed, id): selection does not depend on row order."""
    return np.array([int.from_bytes(hashlib.sha1(f"{seed}\x1f{i}".encode()).digest()[:8], "big") for i in ids], dtype=np.uint64)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def apportion(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split `total` by weights (largest remainders; ties in key order)."""
    s = sum(weights.values())
    if total <= 0 or s <= 0:
        return {k: 0 for k in weights}
    exact = {k: total * w / s for k, w in weights.items()}
    out = {k: int(math.floor(v)) for k, v in exact.items()}
    rest = total - sum(out.values())
    for k in sorted(weights, key=lambda k: (-(exact[k] - out[k]), list(weights).index(k)))[:rest]:
        out[k] += 1
    return out


def stratum_quota(counts: Mapping[str, int], share: float, sub_targets: Mapping[str, float] | None = None) -> dict[str, int]:
    """How many items of each label to keep in one (split, stratum).

    Returns {search_free: F, <search-required label>: n, ...} for the largest total T = F + R with
    R = round(share * T), every count within what is available, and (with sub-targets) R divided by them.
    Without sub-targets the search-required quota is returned under the key "search_required".
    """
    n_free = int(counts.get(SEARCH_FREE, 0))
    weights = None
    if sub_targets:
        weights = {k: float(w) for k, w in sub_targets.items() if w > 0 and counts.get(k, 0) > 0}
        avail_r = sum(int(counts.get(k, 0)) for k in weights)
    else:
        avail_r = sum(int(counts.get(k, 0)) for k in SEARCH_REQUIRED)

    def feasible_r(r: int) -> bool:
        if r > avail_r:
            return False
        if weights is None or r == 0:
            return True
        return all(v <= counts.get(k, 0) for k, v in apportion(r, weights).items())

    upper = avail_r + n_free
    if share < 1:
        upper = min(upper, int((n_free + 1) / (1 - share)) + 1)
    if share > 0:
        upper = min(upper, int((avail_r + 1) / share) + 1)
    for t in range(upper, -1, -1):
        r = _round(share * t)
        if t - r <= n_free and feasible_r(r):
            break
    else:  # pragma: no cover - t = 0 always satisfies
        t, r = 0, 0
    out = {SEARCH_FREE: t - r}
    if weights is None:
        out["search_required"] = r
    else:
        out.update(apportion(r, weights) if r else {k: 0 for k in weights})
    return out


def assign_clusters(pool: pd.DataFrame, fractions: Mapping[str, float], strata: Sequence[str], seed: int) -> dict[str, str]:
    """cluster_id -> split. `pool` has cluster_id, the strata columns and `group` (search_required / search_free)."""
    if pool.empty:
        return {}
    key_cols = [*strata, "group"]
    counts = pool.groupby(["cluster_id", *key_cols], sort=True).size().rename("n").reset_index()
    # dominant key of each cluster: most items, then the smallest key
    counts = counts.sort_values(["cluster_id", "n", *key_cols], ascending=[True, False, *[True] * len(key_cols)], kind="stable")
    dom = counts.drop_duplicates("cluster_id").set_index("cluster_id")
    sizes = pool.groupby("cluster_id").size()
    clusters = np.array(sorted(sizes.index))
    rng = np.random.default_rng(seed)
    clusters = clusters[rng.permutation(len(clusters))]
    clusters = sorted(clusters, key=lambda c: -int(sizes[c]))  # stable: the seeded order breaks size ties
    names = list(fractions)
    frac = np.array([fractions[s] for s in names], dtype=float)
    assigned: dict[tuple, np.ndarray] = {}
    out = {}
    for c in clusters:
        key = tuple(dom.loc[c, key_cols])
        have = assigned.setdefault(key, np.zeros(len(names)))
        size = int(sizes[c])
        deficit = frac * (have.sum() + size) - have
        s = int(np.argmax(deficit))
        have[s] += size
        out[c] = names[s]
    return out


@dataclass
class Selection:
    selected: pd.DataFrame  # pool rows kept, with `split`
    excluded: pd.DataFrame  # pool rows not kept, with `reason`, `detail` (and `split` where assigned)
    strata: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (split, stratum): counts, share, deviation


def select(
    pool: pd.DataFrame,
    *,
    share: float = 0.68,
    fractions: Mapping[str, float] | None = None,
    strata: Sequence[str] = ("category", "source"),
    sub_targets: Mapping[str, float] | None = None,
    seed: int = 0,
) -> Selection:
    """Split and balance `pool` (rows: id, cluster_id, label, strata columns, optional label_excluded_*)."""
    fractions = dict(fractions or {"train": 0.8, "validation": 0.1, "test": 0.1})
    pool = pool.reset_index(drop=True).copy()
    for col in strata:
        pool[col] = pool[col].fillna("").astype(str)
    reason = pd.Series([None] * len(pool), dtype=object)
    detail = pd.Series([""] * len(pool), dtype=object)
    label = pool["label"]
    no_label = label.isna()
    lx = pool["label_excluded_reason"] if "label_excluded_reason" in pool else pd.Series([None] * len(pool))
    lxd = pool["label_excluded_detail"] if "label_excluded_detail" in pool else pd.Series([""] * len(pool))
    has_lx = no_label & lx.notna()
    reason[has_lx] = lx[has_lx]
    detail[has_lx] = "label stage: " + lxd[has_lx].fillna("").astype(str)
    plain = no_label & ~has_lx
    reason[plain] = "unlabeled"
    detail[plain] = "no label for this item in the label stage output; re-run probe and label for it"
    unknown = ~no_label & ~label.isin(LABELS)
    reason[unknown] = "label_unknown"
    detail[unknown] = "label " + label[unknown].astype(str) + " is not one of " + ", ".join(LABELS)
    unans = label == UNANSWERABLE
    reason[unans] = UNANSWERABLE
    detail[unans] = "unanswerable with and without search under the probe; not used for training"

    ok = reason.isna()
    cand = pool[ok].copy()
    cand["group"] = np.where(cand["label"] == SEARCH_FREE, SEARCH_FREE, "search_required")
    split_of = assign_clusters(cand, fractions, strata, seed)
    cand["split"] = cand["cluster_id"].map(split_of)
    cand["rank"] = seeded_rank(cand["id"].tolist(), seed)
    pool["split"] = None
    pool.loc[cand.index, "split"] = cand["split"]

    keep = pd.Series(False, index=pool.index)
    rows = []
    for (split, *stratum), g in cand.groupby(["split", *strata], sort=True):
        counts = g["label"].value_counts().to_dict()
        quota = stratum_quota(counts, share, sub_targets)
        g = g.sort_values("rank", kind="stable")
        chosen = []
        chosen += list(g.index[g["label"] == SEARCH_FREE][: quota[SEARCH_FREE]])
        if "search_required" in quota:
            chosen += list(g.index[g["label"].isin(SEARCH_REQUIRED)][: quota["search_required"]])
        else:
            for lab in SEARCH_REQUIRED:
                chosen += list(g.index[g["label"] == lab][: quota.get(lab, 0)])
        keep[chosen] = True
        n_r = int(g.loc[chosen, "label"].isin(SEARCH_REQUIRED).sum())
        total = len(chosen)
        desc = ", ".join(f"{c}={v}" for c, v in zip(strata, stratum))
        dropped = g.index.difference(pd.Index(chosen))
        reason[dropped] = "over_quota"
        detail[dropped] = (
            f"stratum {desc} in split {split}: keeps {total - n_r} search-free and {n_r} search-required items "
            f"to hold the {share:.2f} search-required share; this " + g.loc[dropped, "label"].astype(str) + " item is beyond its quota"
        )
        rows.append({"split": split, **dict(zip(strata, stratum)), "available": len(g), "selected": total,
                     "search_required": n_r, "search_free": total - n_r,
                     "share": (n_r / total) if total else None,
                     "deviation_items": abs(n_r - share * total),
                     **{f"n_{k}": int(v) for k, v in sorted(counts.items())}})
    selected = pool[keep].copy()
    excluded = pool[~keep].copy()
    excluded["reason"] = reason[~keep]
    excluded["detail"] = detail[~keep]
    assert len(selected) + len(excluded) == len(pool)
    assert excluded["reason"].notna().all()
    # a cluster is in one split by construction; check it anyway, it is the property the splits exist for
    per_cluster = selected.groupby("cluster_id")["split"].nunique()
    assert (per_cluster <= 1).all(), "a cluster straddles splits"
    return Selection(selected=selected, excluded=excluded, strata=pd.DataFrame(rows))


def unbalanced_train(sel: Selection) -> pd.DataFrame:
    """The train split before the quotas (the unbalanced ablation): every item whose cluster went to train and that
    was dropped only as "over_quota", plus the balanced train items; validation and test stay as balanced.
    Rows: the pool columns with `split` = train."""
    over = sel.excluded[(sel.excluded["reason"] == "over_quota") & (sel.excluded["split"] == "train")]
    rows = pd.concat([sel.selected[sel.selected["split"] == "train"], over[sel.selected.columns]])
    return rows.sort_index(kind="stable")


def split_schema():
    """Arrow schema (with HF features metadata) of the split files: items, cluster_id, label columns, split."""
    import datasets

    from pipeline.schema import ITEM_FEATURES, LABEL_FEATURES

    label_cols = {k: (datasets.Value("string") if k == "label" else v) for k, v in LABEL_FEATURES.items() if k != "id"}
    feats = datasets.Features({**ITEM_FEATURES, "cluster_id": datasets.Value("string"), **label_cols, "split": datasets.Value("string")})
    return feats.arrow_schema


def write_splits(items_path: str | Path, labels_path: str | Path, selected: pd.DataFrame, out_dir: str | Path,
                 files: Mapping[str, str] | None = None) -> dict[str, int]:
    """Stream the deduplicated items into one parquet per split (rows in dedup order): `<out_dir>/<name>.parquet`
    for each split -> name of `files` (default: every split under its own name); returns rows per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schema import LABEL_FEATURES

    schema = split_schema()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = pq.read_table(labels_path).to_pandas().drop_duplicates("id").set_index("id")
    if pd.api.types.is_integer_dtype(labels["label"]):
        labels["label"] = [LABELS[i] for i in labels["label"]]
    label_cols = [k for k in LABEL_FEATURES if k != "id"]
    split_of = dict(zip(selected["id"], selected["split"]))
    files = dict(files or {s: s for s in SPLITS})
    counts = {s: 0 for s in files}
    tmp = {s: out_dir / f"{name}.parquet.tmp" for s, name in files.items()}
    writers = {s: pq.ParquetWriter(tmp[s], schema, compression="zstd", write_statistics=True) for s in files}
    try:
        pf = pq.ParquetFile(items_path)
        item_cols = [n for n in schema.names if n in pf.schema_arrow.names]
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=item_cols)
            t = t.filter(pa.array([i in split_of for i in t.column("id").to_pylist()], pa.bool_()))
            ids = t.column("id").to_pylist()
            splits = [split_of[i] for i in ids]
            lab = labels.reindex(ids)
            for col in label_cols:
                t = t.append_column(col, pa.array(lab[col].tolist(), type=schema.field(col).type, from_pandas=True))
            t = t.append_column("split", pa.array(splits, pa.string()))
            for s in files:
                part = t.filter(pa.array([x == s for x in splits], pa.bool_()))
                if part.num_rows:
                    writers[s].write_table(part.select(schema.names).cast(schema), row_group_size=256)
                    counts[s] += part.num_rows
    finally:
        for w in writers.values():
            w.close()
    for s, name in files.items():
        tmp[s].replace(out_dir / f"{name}.parquet")
    if sum(counts.values()) != len(selected):
        raise RuntimeError(f"{len(selected)} items selected but {sum(counts.values())} written; was {items_path} changed meanwhile?")
    return counts
