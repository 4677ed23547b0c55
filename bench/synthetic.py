"""Bench-only data: a reproducible synthetic passage stream for the 1M-passage text-search benchmark.

`synthetic_passages(n, seed)` yields n passages of Zipf-distributed pseudo-words in the corpora schema gather writes
(passage_id, title, text, url, entity, license). Writes nothing.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


def synthetic_passages(n: int, seed: int = 0, vocab: int = 200_000, words: int = 60) -> Iterator[dict]:
    """n passages of `words` words drawn from a Zipf(1.1) vocabulary of `vocab` pseudo-words; deterministic."""
    rng = np.random.default_rng(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pa", "de", "gor", "lin", "bar", "zen", "qua", "fi"]
    names = []
    for i in range(vocab):
        j, parts = i, []
        while True:
            parts.append(syll[j % len(syll)])
            j //= len(syll)
            if j == 0:
                break
        names.append("".join(parts))
    names = np.array(names)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks ** -1.1
    p /= p.sum()
    block = 10_000
    for start in range(0, n, block):
        m = min(block, n - start)
        ids = rng.choice(vocab, size=(m, words), p=p)
        for r in range(m):
            toks = names[ids[r]]
            i = start + r
            yield {"passage_id": f"syn:{i}", "title": " ".join(toks[:3]), "text": " ".join(toks[3:]),
                   "url": f"https://example.org/syn/{i}", "entity": "", "license": "CC0-1.0"}
