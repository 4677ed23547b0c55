"""What every source yields (raw rows) and how a source is configured (SourceParams).

A source module reads its input and yields raw rows: plain dicts with the keys below, values still unchecked
(text may be bytes, the image may be a path, bytes or a lazy recipe). `pipeline.gather.convert` turns them into
items or quarantine rows. Reads/writes nothing by itself.

Raw row keys:
  key       where the row came from, for messages ("rows.jsonl:7", "parquet row 3"); required
  id        the source's own id or None (duplicates are quarantined as duplicate_id)
  image     None | bytes | {"bytes": ..., "path": ...} | str/Path of a file | an object with .load() -> bytes
  question, answer   text (str; bytes are decoded as UTF-8 or quarantined)
  aliases   list of str (or a JSON list in a string)
  category, license, entity   str
  meta      dict of extra metadata (kept as JSON)
  split     "items" (default) or "bootstrap" (demo only)
  error     optional (reason, field, detail) set by a reader that could not parse the row at all
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pipeline.config import param

SOURCE_KINDS = ("local", "hf", "mmsearch_r1")
ITEM_TARGETS = ("id", "image", "question", "answer", "aliases", "category", "license", "entity")


@dataclasses.dataclass
class SourceParams:
    kind: Literal["local", "hf", "mmsearch_r1"] = param("local", help="reader: local (folder/jsonl/csv/parquet), hf (datasets by name or local folder), mmsearch_r1 (veRL parquet)")
    path: str = param("", help="local: a .jsonl/.csv/.parquet file or a folder of them; hf: a save_to_disk folder or data folder (instead of name); mmsearch_r1: a parquet file or folder")
    name: str = param("", help="hf: Hub dataset id, e.g. 'lmms-lab/...'; used online only")
    config: str = param("", help="hf: dataset config name ('' = default)")
    split: str = param("train", help="hf: split to read")
    revision: str = param("", help="hf: pinned Hub revision (commit sha or tag); '' = main")
    streaming: bool = param(True, help="hf: read a Hub dataset or a data-files folder as a stream, batch by batch (false: convert it to Arrow first, as datasets does by default)")
    columns: dict[str, str] = param({}, help="item field -> source column, for fields: " + ", ".join(ITEM_TARGETS) + " (unmapped fields use the same name)")
    image_root: str = param("", help="folder that relative image paths are resolved against ('' = the data file's folder)")
    license: str = param("", help="licence recorded on items whose row has none")
    category: str = param("", help="category recorded on items whose row has none ('' = the source name)")
    limit: int = param(0, help="read at most this many rows (0 = all)")
    require_image: bool = param(True, help="quarantine rows without an image (image_missing) instead of keeping text-only items")

    def validate(self) -> None:
        bad = [k for k in self.columns if k not in ITEM_TARGETS]
        if bad:
            raise ValueError(f"columns: unknown item field {bad[0]!r}; valid: {', '.join(ITEM_TARGETS)}")
        if self.kind == "hf" and not (self.name or self.path):
            raise ValueError("kind hf needs name (Hub id) or path (local dataset folder)")
        if self.kind in ("local", "mmsearch_r1") and not self.path:
            raise ValueError(f"kind {self.kind} needs path")
        if self.limit < 0:
            raise ValueError("limit must be >= 0")

    def column(self, field: str) -> str:
        return self.columns.get(field, field)


@dataclasses.dataclass(frozen=True)
class FileImage:
    """An image read from disk when the row is processed (inside a dask worker), not when it is listed."""

    path: str

    def load(self) -> bytes:
        return Path(self.path).read_bytes()


def raw_row(key: str, **fields: Any) -> dict:
    row = {"key": key, "id": None, "image": None, "question": None, "answer": None, "aliases": [], "category": "",
           "license": "", "entity": "", "meta": {}, "split": "items", "error": None}
    row.update(fields)
    return row


def map_record(record: dict, params: SourceParams, key: str, base_dir: Path | None = None) -> dict:
    """A flat source record (dict of columns) -> raw row, following the column mapping; extra columns go to meta."""
    used = set()

    def get(field: str, default: Any = None) -> Any:
        col = params.column(field)
        if col in record:
            used.add(col)
            return record[col]
        return default

    image = get("image")
    if isinstance(image, (str, Path)) and str(image):
        p = Path(image)
        if not p.is_absolute():
            root = Path(params.image_root) if params.image_root else (base_dir or Path("."))
            p = root / p
        image = FileImage(str(p))
    elif isinstance(image, dict) and image.get("bytes") is None and image.get("path"):
        image = FileImage(str(image["path"]))
    meta = {k: v for k, v in record.items() if k not in used and _jsonable(v)}
    return raw_row(
        key,
        id=get("id"),
        image=image,
        question=get("question"),
        answer=get("answer"),
        aliases=get("aliases", []),
        category=get("category") or params.category,
        license=get("license") or params.license,
        entity=get("entity") or "",
        meta=meta,
    )


def _jsonable(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float)):
        return True
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(v, (list, tuple)):
        return all(_jsonable(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _jsonable(x) for k, x in v.items())
    return False
