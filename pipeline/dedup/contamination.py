"""Evaluation sets for contamination control: any parquet a user points to, in item schema or via a column map.

An evaluation set is read into three lists (ids, questions, image bytes). Column values are unwrapped the way common
VQA exports store them: an image may be encoded bytes, a `{"bytes": ...}` struct or a list of those (the first is
used); a question may be a string or a chat prompt (a list of `{"role", "content"}` messages, the last user message
is used, content blocks of type text are joined). So the MMSearch-R1 / veRL parquet works with
`columns: {question: prompt, image: images}`.

Reads the parquet file only; writes nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.config import param
from pipeline.images import image_bytes

FIELDS = ("id", "question", "image")


@dataclass
class EvalSet:
    """One evaluation set to keep out of the pool."""

    path: str = param("", help="parquet file of the evaluation set (item schema, or any schema with `columns`)")
    name: str = param("", help="name used in reports (default: the file name without suffix)")
    columns: dict[str, str] = param(
        {}, help="map of id/question/image to the file's column names, e.g. {question: prompt, image: images}"
    )

    def validate(self) -> None:
        if not self.path:
            raise ValueError("every eval set needs a `path` to a parquet file")
        bad = [k for k in self.columns if k not in FIELDS]
        if bad:
            raise ValueError(f"eval set {self.path}: unknown column key {bad[0]!r}; use some of {', '.join(FIELDS)}")

    @property
    def label(self) -> str:
        return self.name or Path(self.path).stem


@dataclass
class EvalData:
    name: str
    ids: list[str]
    questions: list[str]
    images: list[bytes | None]


_IMAGE_TOKEN = re.compile(r"<image>|<\|image_pad\|>|<\|vision_start\|>|<\|vision_end\|>")


def _unwrap_question(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return _IMAGE_TOKEN.sub(" ", value).strip()
    if isinstance(value, (list, tuple)):
        users = [m for m in value if isinstance(m, dict) and m.get("role", "user") == "user"]
        if not users:
            return ""
        content = users[-1].get("content")
        if isinstance(content, (list, tuple)):
            content = " ".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
        return _unwrap_question(content)
    return str(value)


def load_eval_set(spec: EvalSet) -> EvalData:
    """Read an evaluation set; raises ValueError naming the file and the missing column and what to set."""
    path = Path(spec.path)
    if not path.exists():
        raise ValueError(f"eval set {spec.label!r}: file {spec.path} not found; fix dedup.eval_sets[].path")
    names = pq.ParquetFile(path).schema_arrow.names
    cols = {f: spec.columns.get(f, f) for f in FIELDS}
    for f in ("question", "image"):
        if cols[f] not in names:
            raise ValueError(
                f"eval set {spec.label!r} ({spec.path}): no column {cols[f]!r} for the {f}; "
                f"set dedup.eval_sets[].columns.{f} to one of {names}"
            )
    wanted = [cols["question"], cols["image"]] + ([cols["id"]] if cols["id"] in names else [])
    rows = pq.read_table(path, columns=wanted).to_pylist()
    ids = [str(r[cols["id"]]) if cols["id"] in r else f"{spec.label}:{i}" for i, r in enumerate(rows)]
    images = []
    for item_id, r in zip(ids, rows):
        try:
            images.append(image_bytes(r[cols["image"]], base=path.parent))
        except (OSError, TypeError) as exc:
            raise ValueError(f"eval set {spec.label!r} ({spec.path}): item {item_id}: the image cannot be read ({exc}); "
                             f"fix the file or dedup.eval_sets[].columns.image") from None
    return EvalData(name=spec.label, ids=ids, questions=[_unwrap_question(r[cols["question"]]) for r in rows],
                    images=images)
