"""Seeded, stratified subsets of items: the one choice of "at most N items" shared by the evaluation
(`evaluate.max_items`, strata: the label) and training (`train.max_items`, strata: `train.subset_strata`, label x
category by default), so a budget keeps the split's mix.

Reads and writes nothing: items are dicts with an `id`; labels map id -> stratum (a label, or a key made of several
columns' values; None = unlabelled).
"""
from __future__ import annotations

import hashlib


def _rank(seed: int, item_id: str) -> str:
    return hashlib.sha1(f"{seed}\x1f{item_id}".encode()).hexdigest()


def stratified_subset(items: list[dict], labels: dict[str, str | None], max_items: int, seed: int) -> list[dict]:
    """A seeded subset of at most `max_items` items (0 = all), stratified by label: each label (unlabelled is its
    own stratum) gets a share proportional to its size by largest remainder, and every present stratum at least
    one item when `max_items` allows it. The result is in a stable order (by seeded rank), independent of the
    input order."""
    ranked = sorted(items, key=lambda it: _rank(seed, it["id"]))
    if not max_items or max_items >= len(items):
        return ranked
    strata: dict[str, list[dict]] = {}
    for it in ranked:
        strata.setdefault(labels.get(it["id"]) or "", []).append(it)
    keys = sorted(strata)
    total = len(items)
    quota = {k: max_items * len(strata[k]) // total for k in keys}
    if max_items >= len(keys):
        for k in keys:
            quota[k] = max(quota[k], 1)
    rest = sorted(keys, key=lambda k: (-(max_items * len(strata[k]) % total), k))
    i = 0
    while sum(quota.values()) < max_items:
        k = rest[i % len(rest)]
        if quota[k] < len(strata[k]):
            quota[k] += 1
        i += 1
    while sum(quota.values()) > max_items:  # the minimum of one per stratum overshot: trim the largest
        k = max(keys, key=lambda k: (quota[k], k))
        quota[k] -= 1
    chosen = {it["id"] for k in keys for it in strata[k][: quota[k]]}
    return [it for it in ranked if it["id"] in chosen]


__all__ = ["stratified_subset"]
