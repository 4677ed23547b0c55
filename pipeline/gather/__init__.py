"""Gatherers: each source module reads one kind of input and yields raw rows; `convert` makes items of them.

`read_source(params)` dispatches on `SourceParams.kind` (local, hf, mmsearch_r1); the demo world has its own
entry point, `pipeline.gather.demo.build_demo_world` (it also writes the search corpora and a bootstrap split).
To add a source: write `pipeline/gather/<kind>.py` with a `read_<kind>(params) -> Iterator[raw row]` (see
`base.py` for the raw row keys), add the kind to `SourceParams.kind` and to `READERS` below.
"""
from __future__ import annotations

from typing import Iterator

from pipeline.gather.base import SOURCE_KINDS, SourceParams


def read_source(params: SourceParams) -> Iterator[dict]:
    """Raw rows of a configured (non-demo) source."""
    if params.kind == "local":
        from pipeline.gather.local import read_local as reader
    elif params.kind == "hf":
        from pipeline.gather.hf import read_hf as reader
    elif params.kind == "mmsearch_r1":
        from pipeline.gather.mmsearch_r1 import read_mmsearch_r1 as reader
    else:
        raise ValueError(f"unknown source kind {params.kind!r}; use one of {', '.join(SOURCE_KINDS)}")
    return reader(params)


__all__ = ["SOURCE_KINDS", "SourceParams", "read_source"]
