"""Exact Hamming-radius search over 64-bit hashes by multi-index hashing, without comparing all pairs.

Multi-index hashing (Norouzi, Punjani and Fleet, 2012): split each 64-bit hash into `m` disjoint blocks. If two
hashes differ in at most `r` bits, at least one block differs in at most `r // m` bits (pigeonhole). So each block
is indexed in a table (counting sort over the block value), and a query only probes the table entries within
`r // m` bit flips of its own block; the candidates are then verified on the whole hash. The result is exact (no
missed pairs, no false ones). The number of blocks is chosen by a cost model so that the tables are about as large
as the index (block width ~ log2 n), which keeps the candidates per query roughly constant as `n` grows.

Reads and writes nothing; pure numpy.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

MAX_TABLE_BITS = 24  # a block table has 2**bits int64 offsets (128 MiB at 24 bits)


def block_widths(m: int) -> list[int]:
    """Widths of `m` nearly equal blocks covering 64 bits, widest first."""
    return [64 // m + (1 if k < 64 % m else 0) for k in range(m)]


def _probes(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(min(radius, width) + 1))


def plan_blocks(n_index: int, n_query: int, threshold: int) -> int:
    """Number of blocks minimising probes + expected candidates + table building, for uniform hashes."""
    best, best_cost = None, math.inf
    for m in range(1, 17):
        widths = block_widths(m)
        if widths[0] > MAX_TABLE_BITS:
            continue
        radius = threshold // m
        cost = 0.0
        for w in widths:
            probes = _probes(w, radius)
            cost += n_query * probes * (1.0 + n_index / 2.0**w) + 2.0**w / 4 + n_index
        if cost < best_cost:
            best, best_cost = m, cost
    assert best is not None
    return best


def flip_masks(width: int, radius: int) -> np.ndarray:
    """All `width`-bit masks with at most `radius` bits set, as int64, the zero mask first."""
    masks = [0]
    for k in range(1, min(radius, width) + 1):
        masks.extend(sum(1 << b for b in bits) for bits in itertools.combinations(range(width), k))
    return np.asarray(masks, dtype=np.int64)


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.view(np.uint64))


def hamming_pairs(
    query: np.ndarray,
    index: np.ndarray | None = None,
    threshold: int = 8,
    blocks: int | None = None,
    chunk: int = 1 << 18,
    progress=None,
    query_group: np.ndarray | None = None,
    index_group: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, distance) with Hamming(query[i], index[j]) <= threshold, sorted by (i, j).

    `query`, `index`: uint64 arrays. With `index=None` it is a self-join over `query` and only pairs i < j are
    returned (each unordered pair once). `blocks` overrides the planned number of blocks; `chunk` bounds memory
    (queries per batch); `progress` is an optional callable(n) called as blocks finish. With `query_group` and
    `index_group` (int arrays, -1 = none), pairs whose two groups are equal and not -1 are skipped (e.g. an image
    against its own crop windows).
    """
    query = np.ascontiguousarray(query, dtype=np.uint64)
    self_join = index is None
    index = query if self_join else np.ascontiguousarray(index, dtype=np.uint64)
    if threshold < 0 or threshold > 64:
        raise ValueError(f"threshold {threshold} must be within 0..64 bits")
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    if len(query) == 0 or len(index) == 0:
        return empty
    m = blocks or plan_blocks(len(index), len(query), threshold)
    radius = threshold // m
    q_signed = query.view(np.int64)
    i_signed = index.view(np.int64)
    found_q, found_i, found_d = [], [], []
    shift = 0
    for width in block_widths(m):
        mask = np.int64((1 << width) - 1)
        ikeys = (i_signed >> shift) & mask  # arithmetic shift is fine: the mask drops the sign bits
        order = np.argsort(ikeys, kind="stable")
        dense = width <= MAX_TABLE_BITS
        if dense:  # offsets table: look-ups by index
            offsets = np.zeros((1 << width) + 1, dtype=np.int64)
            np.cumsum(np.bincount(ikeys, minlength=1 << width), out=offsets[1:])
        else:  # too wide for a table (only when `blocks` is forced small): binary search in the sorted keys
            sorted_keys = ikeys[order]
        flips = flip_masks(width, radius)
        # visiting queries in block-key order keeps the table look-ups of neighbouring queries close in memory
        q_order = order if self_join else np.argsort((q_signed >> shift) & mask, kind="stable")
        for start in range(0, len(query), chunk):
            qidx_all = q_order[start : start + chunk]
            qkeys = (q_signed[qidx_all] >> shift) & mask
            for flip in flips:
                probe = qkeys ^ flip
                if dense:
                    lo = offsets[probe]
                    cnt = offsets[probe + 1] - lo
                else:
                    lo = np.searchsorted(sorted_keys, probe, side="left")
                    cnt = np.searchsorted(sorted_keys, probe, side="right") - lo
                hit = cnt > 0
                if not hit.any():
                    continue
                cnt_h = cnt[hit]
                total = int(cnt_h.sum())
                qidx = np.repeat(qidx_all[hit], cnt_h)
                run_start = np.repeat(np.cumsum(cnt_h) - cnt_h, cnt_h)
                pos = np.repeat(lo[hit], cnt_h) + (np.arange(total, dtype=np.int64) - run_start)
                cand = order[pos]
                if self_join:
                    keep = cand > qidx
                    qidx, cand = qidx[keep], cand[keep]
                dist = popcount(query[qidx] ^ index[cand]).astype(np.int64)
                ok = dist <= threshold
                if query_group is not None:
                    g = query_group[qidx]
                    ok &= (g < 0) | (g != index_group[cand])
                if ok.any():
                    found_q.append(qidx[ok])
                    found_i.append(cand[ok])
                    found_d.append(dist[ok])
        shift += width
        if progress is not None:
            progress(1)
    if not found_q:
        return empty
    qi = np.concatenate(found_q)
    ii = np.concatenate(found_i)
    dd = np.concatenate(found_d)
    # a pair close in several blocks is found once per such block
    code = qi * np.int64(len(index)) + ii
    code, first = np.unique(code, return_index=True)
    return qi[first], ii[first], dd[first]


def brute_force_pairs(query: np.ndarray, index: np.ndarray | None = None, threshold: int = 8):
    """Reference all-pairs search (quadratic; for tests and small inputs only). Same output as `hamming_pairs`."""
    query = np.asarray(query, dtype=np.uint64)
    self_join = index is None
    index = query if self_join else np.asarray(index, dtype=np.uint64)
    qs, js, ds = [], [], []
    for i in range(len(query)):
        d = popcount(np.ascontiguousarray(index ^ query[i])).astype(np.int64)
        js_i = np.nonzero(d <= threshold)[0]
        if self_join:
            js_i = js_i[js_i > i]
        qs.append(np.full(len(js_i), i, dtype=np.int64))
        js.append(js_i.astype(np.int64))
        ds.append(d[js_i])
    if not qs:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(qs), np.concatenate(js), np.concatenate(ds)
