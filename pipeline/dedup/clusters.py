"""Near-duplicate clusters, duplicates and contamination over the gathered items.

Definitions (all deterministic; item order = sources in the order given, rows in file order):
- Two images are near-duplicates when the full perceptual hash of one is within `threshold` bits of the full hash
  or of a crop-window hash of the other (`pipeline.dedup.hashing`). Search is multi-index hashing
  (`pipeline.dedup.hamming`), never all pairs. Image groups are the connected components of that relation.
- An item is a duplicate when an earlier item is in the same image group (or both have no image) AND has the same
  normalised question AND the same normalised answer; it is excluded with reason "duplicate" and the kept id in
  the detail. Same image and question with a different answer is a conflict, not a duplicate: both stay (one
  cluster) and the report lists it. Same image with a different question stays too.
- An item is contaminated when its image is a near-duplicate of an evaluation-set image, or its normalised question
  equals an evaluation-set question that is not a template; it is excluded with reason "contaminated".
- Template questions ("Which country's flag is this?") occur in `template_min_count` or more items (pool and
  evaluation sets together); they link nothing and do not count for question-only contamination.
- Clusters (the unit that never straddles splits) are the connected components over: image groups, the same
  non-template normalised question, and (optionally) the same non-empty entity.

Reads nothing itself except through `read_meta` / `write_items_with_clusters` (items parquet files); pure logic
otherwise. Does not support hashes other than 64 bits.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dedup.contamination import EvalData
from pipeline.dedup.hamming import hamming_pairs, popcount
from pipeline.dedup.hashing import NO_IMAGE
from pipeline.schema import sha1_hex

META_COLUMNS = ("id", "source", "category", "entity", "question", "answer", "image_sha1")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Question/answer key: NFKC, case-folded, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def read_meta(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Item metadata (no image bytes) of several items files, in order, with a `file` column."""
    frames = []
    for path in paths:
        df = pq.read_table(path, columns=list(META_COLUMNS)).to_pandas()
        df["file"] = str(path)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*META_COLUMNS, "file"])
    return pd.concat(frames, ignore_index=True)


@dataclass
class DedupResult:
    """Outcome per item (aligned with the input rows) plus the report."""

    cluster_id: list[str]  # "" for excluded items
    excluded: dict[int, tuple[str, str]]  # row -> (reason, detail)
    report: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def _cluster_ids(n_nodes: int, edges_a: np.ndarray, edges_b: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n_nodes == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(edges_a), dtype=np.int8), (edges_a, edges_b)), shape=(n_nodes, n_nodes))
    _, labels = connected_components(graph, directed=False)
    return labels


def _min_variant_distance(full: np.ndarray, variants: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance used for a pair of items: min over full(a) vs windows(b) and full(b) vs windows(a)."""
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64)
    d1 = popcount(np.ascontiguousarray(full[a][:, None] ^ variants[b])).min(axis=1)
    d2 = popcount(np.ascontiguousarray(full[b][:, None] ^ variants[a])).min(axis=1)
    return np.minimum(d1, d2).astype(np.int64)


def image_pairs(
    full_q: np.ndarray, variants_i: np.ndarray, threshold: int, same: bool
) -> pd.DataFrame:
    """Pairs (q, i, distance) where full hash q is within `threshold` of any window hash of row i.

    `full_q`: (nq,) uint64; `variants_i`: (ni, V) uint64. With `same=True` the two sides are the same rows and
    self pairs are skipped. Works on unique hash values, so exact copies cost nothing extra.
    """
    uq, q_inv = np.unique(full_q, return_inverse=True)
    flat = variants_i.reshape(-1)
    owner = np.repeat(np.arange(variants_i.shape[0]), variants_i.shape[1])
    uv, v_inv = np.unique(flat, return_inverse=True)
    owners = pd.DataFrame({"v": v_inv, "i": owner}).drop_duplicates()
    q_group = index_group = None
    if same:
        # skip a unique full value against windows owned only by rows that have that same full value
        owner_full = q_inv[owners["i"].to_numpy()]
        og = pd.DataFrame({"v": owners["v"].to_numpy(), "g": owner_full}).drop_duplicates()
        single = og.groupby("v")["g"].agg(["first", "nunique"])
        index_group = np.full(len(uv), -1, dtype=np.int64)
        ok = single["nunique"].to_numpy() == 1
        index_group[single.index.to_numpy()[ok]] = single["first"].to_numpy()[ok]
        q_group = np.arange(len(uq), dtype=np.int64)
    qa, vb, dist = hamming_pairs(uq, uv, threshold, query_group=q_group, index_group=index_group)
    pairs = pd.DataFrame({"uq": qa, "v": vb, "d": dist})
    rows_q = pd.DataFrame({"uq": q_inv, "q": np.arange(len(full_q))})
    out = pairs.merge(owners, on="v").merge(rows_q, on="uq")[["q", "i", "d"]]
    if same:
        out = out[out["q"] != out["i"]]
        # rows with identical full hashes were skipped above (own windows); pair each with the first such row
        first = rows_q.groupby("uq")["q"].transform("min").to_numpy()
        twin = first != rows_q["q"].to_numpy()
        out = pd.concat([out, pd.DataFrame({"q": first[twin], "i": rows_q["q"].to_numpy()[twin], "d": 0})])
    return out.groupby(["q", "i"], as_index=False)["d"].min().sort_values(["q", "i"], kind="stable")


def dedup(
    meta: pd.DataFrame,
    hashes: np.ndarray,
    hash_errors: Sequence[str],
    *,
    threshold: int = 8,
    template_min_count: int = 5,
    link_entity: bool = True,
    evals: Sequence[EvalData] = (),
    eval_hashes: Sequence[np.ndarray] = (),
    eval_errors: Sequence[Sequence[str]] = (),
    examples: int = 20,
) -> DedupResult:
    """Cluster, de-duplicate and check contamination of items (`meta` rows aligned with `hashes` rows).

    `hash_errors[i]` is "" for a hashed image, "no image" for an item without one, else why decoding failed.
    """
    n = len(meta)
    ids = meta["id"].tolist()
    excluded: dict[int, tuple[str, str]] = {}
    errors = np.asarray(list(hash_errors), dtype=object)
    if len(errors) != n or hashes.shape[0] != n:
        raise ValueError(f"{n} items but {hashes.shape[0]} hash rows and {len(errors)} hash results")
    has_image = errors != NO_IMAGE
    for r in np.nonzero(has_image & (errors != ""))[0]:
        excluded[int(r)] = ("image_unreadable", f"image could not be decoded ({errors[r]}); fix or drop it in the source")
    valid = np.nonzero(has_image & (errors == ""))[0]
    full = hashes[:, 0] if n else np.zeros(0, np.uint64)

    qnorm = [normalize_text(q) for q in meta["question"]]
    anorm = [normalize_text(a) for a in meta["answer"]]
    qcounts = pd.Series(qnorm, dtype=object).value_counts() if n else pd.Series(dtype=int)
    eval_q = [[normalize_text(q) for q in e.questions] for e in evals]
    for qs in eval_q:
        qcounts = qcounts.add(pd.Series(qs, dtype=object).value_counts(), fill_value=0)
    templates = set(qcounts[qcounts >= template_min_count].index) if template_min_count > 0 else set()

    # ---- contamination -----------------------------------------------------------------------------------
    contamination: list[dict] = []
    for e, eh, ee, eq in zip(evals, eval_hashes, eval_errors, eval_q):
        ev_ok = np.nonzero(np.asarray(ee, dtype=object) == "")[0]
        hits: dict[int, dict] = {}
        if len(valid) and len(ev_ok):
            a = image_pairs(full[valid], eh[ev_ok], threshold, same=False)  # pool item is a crop of eval
            b = image_pairs(eh[ev_ok, 0], hashes[valid], threshold, same=False)  # eval is a crop of pool item
            both = pd.concat([a, b.rename(columns={"q": "i", "i": "q"})]).groupby(["q", "i"], as_index=False)["d"].min()
            for q, i, d in both.itertuples(index=False):
                row = int(valid[q])
                cur = hits.get(row)
                if cur is None or d < cur["distance"]:
                    hits[row] = {"kind": "image", "eval_id": e.ids[ev_ok[i]], "distance": int(d)}
        eq_index: dict[str, str] = {}
        for j, q in enumerate(eq):
            if q and q not in templates:
                eq_index.setdefault(q, e.ids[j])
        for row, q in enumerate(qnorm):
            if row not in hits and q in eq_index:
                hits[row] = {"kind": "question", "eval_id": eq_index[q], "distance": -1}
        for row in sorted(hits):
            h = hits[row]
            contamination.append({"id": ids[row], "eval_set": e.name, **h, "question": meta["question"].iat[row]})
            if row not in excluded:
                what = f"image within {h['distance']} bits of" if h["kind"] == "image" else "same question as"
                excluded[row] = ("contaminated", f"{what} {h['eval_id']!r} of evaluation set {e.name!r}")

    # ---- image groups over the pool --------------------------------------------------------------------
    image_group = np.full(n, -1, dtype=np.int64)
    pool_pairs = pd.DataFrame({"q": [], "i": [], "d": []}, dtype=np.int64)
    if len(valid):
        pool_pairs = image_pairs(full[valid], hashes[valid], threshold, same=True)
        labels = _cluster_ids(len(valid), pool_pairs["q"].to_numpy(), pool_pairs["i"].to_numpy())
        image_group[valid] = labels

    # ---- duplicates (image group + question + answer), conflicts ------------------------------------------
    dup_exact = dup_near = 0
    dup_examples, conflicts = [], []
    answers_seen: dict[tuple, dict[str, int]] = {}
    dup_rows, kept_rows = [], []
    for row in range(n):
        if row in excluded:
            continue
        key = (int(image_group[row]) if has_image[row] else -1, qnorm[row])
        by_answer = answers_seen.setdefault(key, {})
        if anorm[row] in by_answer:
            dup_rows.append(row)
            kept_rows.append(by_answer[anorm[row]])
        else:
            if by_answer and len(conflicts) < examples:
                other = next(iter(by_answer.values()))
                conflicts.append({"ids": [ids[other], ids[row]], "question": meta["question"].iat[row],
                                  "answers": [meta["answer"].iat[other], meta["answer"].iat[row]]})
            by_answer[anorm[row]] = row
    dup_rows_a, kept_rows_a = np.asarray(dup_rows, dtype=np.int64), np.asarray(kept_rows, dtype=np.int64)
    with_img = has_image[dup_rows_a] if len(dup_rows_a) else np.zeros(0, bool)
    dists = np.full(len(dup_rows_a), -1, dtype=np.int64)
    if with_img.any():
        dists[with_img] = _min_variant_distance(full, hashes, dup_rows_a[with_img], kept_rows_a[with_img])
    for row, kept, d in zip(dup_rows, kept_rows, dists):
        same_bytes = meta["image_sha1"].iat[row] == meta["image_sha1"].iat[kept]
        exact = same_bytes and meta["question"].iat[row].strip() == meta["question"].iat[kept].strip()
        dup_exact += int(exact)
        dup_near += int(not exact)
        how = "exact copy" if exact else ("no image, same normalised question" if d < 0 else
                                          f"image within {int(d)} bits, same normalised question and answer")
        excluded[row] = ("duplicate", f"duplicate of {ids[kept]} ({how}); kept {ids[kept]}")
        if len(dup_examples) < examples:
            dup_examples.append({"id": ids[row], "kept": ids[kept], "distance": int(d), "exact": bool(exact)})

    # ---- clusters ----------------------------------------------------------------------------------------
    keep = np.array([r not in excluded for r in range(n)], dtype=bool)
    rows = np.nonzero(keep)[0]
    k = len(rows)
    ea, eb = [], []
    offset = k
    ig = image_group[rows]
    m = ig >= 0
    ea.append(np.nonzero(m)[0]); eb.append(offset + ig[m]); offset += int(image_group.max(initial=-1)) + 1
    q_kept = pd.Series([qnorm[r] for r in rows], dtype=object)
    qlink = ~q_kept.isin(templates).to_numpy() & (q_kept != "").to_numpy()
    qcodes, _ = pd.factorize(q_kept)
    ea.append(np.nonzero(qlink)[0]); eb.append(offset + qcodes[qlink]); offset += int(qcodes.max(initial=-1)) + 1
    if link_entity:
        ent = meta["entity"].iloc[rows].fillna("").astype(str).reset_index(drop=True)
        ecodes, _ = pd.factorize(ent)
        el = (ent != "").to_numpy()
        ea.append(np.nonzero(el)[0]); eb.append(offset + ecodes[el]); offset += int(ecodes.max(initial=-1)) + 1
    comp = _cluster_ids(offset, np.concatenate(ea).astype(np.int64), np.concatenate(eb).astype(np.int64))[:k]
    kept_ids = [ids[r] for r in rows]
    comp_min = pd.Series(kept_ids).groupby(comp).min() if k else pd.Series(dtype=object)
    comp_name = {c: "c-" + sha1_hex(v)[:16] for c, v in comp_min.items()}
    cluster_id = [""] * n
    for r, c in zip(rows, comp):
        cluster_id[r] = comp_name[c]

    # ---- report ------------------------------------------------------------------------------------------
    sizes = pd.Series(comp).value_counts() if k else pd.Series(dtype=int)
    hist = {str(s): int(c) for s, c in sorted(sizes.value_counts().items())}
    largest = []
    for c in sorted(sizes.index, key=lambda c: (-sizes[c], comp_name[c]))[: min(examples, 10)]:
        members = rows[comp == c]
        largest.append({
            "cluster_id": comp_name[c], "size": int(sizes[c]),
            "members": [{"id": ids[r], "source": meta["source"].iat[r], "question": meta["question"].iat[r],
                         "entity": meta["entity"].iat[r]} for r in members[:10]],
        })
    near = pool_pairs[pool_pairs["d"] > 0].sort_values(["d", "q", "i"], ascending=[False, True, True]).head(examples)
    near_examples = [{"ids": [ids[valid[q]], ids[valid[i]]], "distance": int(d)} for q, i, d in near.itertuples(index=False)]
    reasons = pd.Series([v[0] for v in excluded.values()], dtype=object).value_counts().to_dict()
    report = {
        "threshold_bits": threshold,
        "template_questions": sorted(templates)[:50],
        "clusters": {"count": int(len(sizes)), "multi_member": int((sizes > 1).sum()),
                     "max_size": int(sizes.max()) if len(sizes) else 0, "size_histogram": hist, "largest": largest},
        "near_duplicate_images": {"pairs": int(len(pool_pairs)), "exact_pairs": int((pool_pairs["d"] == 0).sum()),
                                  "examples": near_examples},
        "duplicates": {"count": len(dup_rows), "exact": dup_exact, "near": dup_near, "examples": dup_examples},
        "conflicts": conflicts,
        "contamination": {"count": len(contamination), "by_eval_set": {e.name: sum(1 for c in contamination if c["eval_set"] == e.name) for e in evals},
                          "items": contamination},
    }
    per_source = meta.assign(kept=keep).groupby("source")["kept"].agg(["size", "sum"]) if n else None
    metrics = {
        "items_in": n, "items_out": int(keep.sum()),
        "excluded": {str(k_): int(v) for k_, v in reasons.items()},
        "duplicates": len(dup_rows), "duplicates_exact": dup_exact, "duplicates_near": dup_near,
        "contaminated": int(reasons.get("contaminated", 0)), "conflicts": len(conflicts),
        "clusters": int(len(sizes)), "clusters_multi_member": int((sizes > 1).sum()),
        "max_cluster_size": int(sizes.max()) if len(sizes) else 0,
        "near_duplicate_pairs": int(len(pool_pairs)),
        "per_source": {s: {"in": int(r["size"]), "out": int(r["sum"])} for s, r in per_source.iterrows()} if per_source is not None else {},
    }
    assert metrics["items_out"] + len(excluded) == n
    assert len(set(kept_ids)) == len(kept_ids), "kept item ids must be unique (equal ids are equal content)"
    return DedupResult(cluster_id=cluster_id, excluded=excluded, report=report, metrics=metrics)


def output_schema() -> pa.Schema:
    """Items schema plus `cluster_id`, with the HF features in the metadata."""
    import datasets

    from pipeline.schema import ITEM_FEATURES

    feats = datasets.Features({**ITEM_FEATURES, "cluster_id": datasets.Value("string")})
    return feats.arrow_schema


def write_items_with_clusters(paths: Sequence[str | Path], cluster_id: Sequence[str], out: str | Path) -> int:
    """Stream the items files row group by row group, keeping rows with a cluster id, into one parquet file."""
    from pipeline.schema import ITEM_COLUMNS

    schema = output_schema()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pos = written = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=True) as writer:
        for path in paths:
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                t = pf.read_row_group(rg, columns=list(ITEM_COLUMNS))
                cids = list(cluster_id[pos : pos + t.num_rows])
                pos += t.num_rows
                mask = pa.array([c != "" for c in cids], pa.bool_())
                t = t.append_column("cluster_id", pa.array(cids, pa.string())).filter(mask)
                if t.num_rows:
                    writer.write_table(t.cast(schema), row_group_size=256)
                    written += t.num_rows
    if pos != len(cluster_id):
        raise RuntimeError(f"items files changed while deduplicating: {pos} rows read, {len(cluster_id)} expected")
    tmp.replace(out)
    return written


def exclusion_rows(meta: pd.DataFrame, excluded: dict[int, tuple[str, str]]) -> list[dict]:
    """Exclusion rows (pipeline.io.exclusion) of the dropped items, in row order, with their identifying columns."""
    from pipeline.io import exclusion

    rows = []
    for r in sorted(excluded):
        reason, detail = excluded[r]
        rec = meta.iloc[r][["id", "source", "category", "entity", "question", "answer", "image_sha1"]].to_dict()
        rows.append(exclusion(rec["id"], "dedup", rec["source"], reason, detail, rec))
    return rows
