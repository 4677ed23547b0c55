"""The common step of every source: raw rows -> items (ITEM_FEATURES) or quarantine rows with a reason.

`convert_row` does the per-row work (load + normalise the image, check and decode the text) and is what dask runs
in partitions; `finalize` (or `Finalizer`, one row at a time) then drops duplicate ids in input order, so the result
does not depend on partitioning.
Reads image files named by rows; writes nothing.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from pipeline.images import ImageError, ImageParams, image_bytes, normalize_image
from pipeline.io import exclusion
from pipeline.schema import make_item_id, to_json

# Row-level reason codes (image reasons come from pipeline.images).
MISSING_QUESTION = "missing_question"
MISSING_ANSWER = "missing_answer"
MISSING_IMAGE = "image_missing"
WRONG_TYPE = "wrong_type"
NOT_UTF8 = "text_not_utf8"
DUPLICATE_ID = "duplicate_id"
ROW_UNREADABLE = "row_unreadable"


class RowError(ValueError):
    """A raw row that cannot become an item: names the row, the field and the reason code."""

    def __init__(self, key: str, field: str, reason: str, detail: str):
        self.key, self.field, self.reason, self.detail = key, field, reason, detail
        super().__init__(f"row {key!r}: field {field!r}: {reason}: {detail}")


def _text(raw: dict, field: str, *, required: bool) -> str:
    value = raw.get(field)
    key = raw["key"]
    if value is None or (isinstance(value, float) and value != value):  # None or NaN from pandas
        value = ""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowError(key, field, NOT_UTF8, f"bytes are not valid UTF-8 ({exc.reason} at byte {exc.start}); re-encode the file as UTF-8") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and field == "answer":
        value = str(value)  # numeric answers (years, counts) are legitimate
    if not isinstance(value, str):
        raise RowError(key, field, WRONG_TYPE, f"expected text, got {type(value).__name__} {str(value)[:60]!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the reader decoded invalid bytes with surrogateescape
        raise RowError(key, field, NOT_UTF8, "text contains bytes that are not valid UTF-8; re-encode the file as UTF-8") from None
    value = value.strip()
    if required and not value:
        reason = MISSING_QUESTION if field == "question" else MISSING_ANSWER
        raise RowError(key, field, reason, f"{field} is missing or empty; fill it in or drop the row")
    return value


def _aliases(raw: dict) -> list[str]:
    value = raw.get("aliases")
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise RowError(raw["key"], "aliases", WRONG_TYPE, "looks like a JSON list but does not parse") from None
        else:
            value = [text] if text else []
    if hasattr(value, "tolist"):  # numpy arrays from pandas/parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise RowError(raw["key"], "aliases", WRONG_TYPE, f"expected a list of strings, got {type(value).__name__}")
    out: list[str] = []
    for a in value:
        a = _text({"key": raw["key"], "aliases": a}, "aliases", required=False)
        if a and a not in out:
            out.append(a)
    return out


def _image_bytes(raw: dict) -> bytes | None:
    image = raw.get("image")
    key = raw["key"]
    try:
        if hasattr(image, "load") and not hasattr(image, "mode"):  # a lazy recipe (demo) renders its bytes
            return image.load()
        if not isinstance(image, (list, tuple)) and not hasattr(image, "tolist"):  # one image per item, not a list
            return image_bytes(image)
    except FileNotFoundError as exc:
        raise RowError(key, "image", MISSING_IMAGE, f"image file not found: {exc.filename}; fix the path or image_root") from None
    except OSError as exc:
        raise RowError(key, "image", "image_unreadable", f"cannot read the image file: {exc}") from None
    except ImageError as exc:  # a lazy recipe (demo) may fail while rendering
        raise RowError(key, "image", exc.reason, exc.detail) from None
    except TypeError:
        pass
    raise RowError(key, "image", WRONG_TYPE, f"expected image bytes or a path, got {type(image).__name__}")


def convert_row(raw: dict, source: str, opts: ImageParams, require_image: bool = True) -> dict:
    """One raw row -> an item dict (+ `_split`, `_key`, `_source_id`); raises RowError with a reason code."""
    key = str(raw.get("key"))
    if raw.get("error"):
        reason, field, detail = raw["error"]
        raise RowError(key, field, reason, detail)
    question = _text(raw, "question", required=True)
    answer = _text(raw, "answer", required=True)
    aliases = [a for a in _aliases(raw) if a != answer]
    category = _text(raw, "category", required=False) or source
    license_ = _text(raw, "license", required=False) or "unknown"
    entity = _text(raw, "entity", required=False)
    data = _image_bytes(raw)
    meta = dict(raw.get("meta") or {})
    if data is None:
        if require_image:
            raise RowError(key, "image", MISSING_IMAGE, "row has no image; add one or set require_image: false")
        image, sha1 = None, ""
    else:
        try:
            norm = normalize_image(data, opts)
        except ImageError as exc:
            raise RowError(key, "image", exc.reason, exc.detail) from None
        image, sha1 = {"bytes": norm.bytes, "path": None}, norm.sha1
        meta.update(width=norm.width, height=norm.height)
    source_id = raw.get("id")
    if source_id is not None and not isinstance(source_id, str):
        source_id = str(source_id)
    if source_id:
        meta["source_id"] = source_id
    meta["source_key"] = key
    item_id = make_item_id(source, question, answer, sha1)
    return {
        "id": item_id,
        "image": image,
        "image_sha1": sha1,
        "question": question,
        "answer": answer,
        "aliases": aliases,
        "source": source,
        "category": category,
        "license": license_,
        "entity": entity,
        "meta": to_json(meta),
        "_split": raw.get("split") or "items",
        "_source_id": source_id or "",
    }


def process_row(raw: dict, source: str, opts: ImageParams, require_image: bool = True) -> tuple[str, dict]:
    """("item", item) or ("quarantine", exclusion row): never raises for bad input."""
    try:
        return "item", convert_row(raw, source, opts, require_image)
    except RowError as exc:
        record = {k: v for k, v in raw.items() if k not in ("error",) and _plain(v)}
        return "quarantine", exclusion(
            id=f"{source}:{exc.key}", stage="gather", source=source, reason=exc.reason,
            detail=f"row {exc.key!r}, field {exc.field!r}: {exc.detail}", record=record,
        )


def _plain(v: Any) -> bool:
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    return v is None or isinstance(v, (bool, int, float, bytes, bytearray, list, dict)) and not hasattr(v, "load")


class Finalizer:
    """Duplicate removal in input order, one result at a time (the whole source never needs to be in memory): a
    later row repeating a source id or an item id becomes a duplicate_id quarantine row. Holds the ids seen."""

    def __init__(self, source: str):
        self.source = source
        self.seen_ids: dict[str, str] = {}
        self.seen_source_ids: dict[str, str] = {}

    def add(self, kind: str, row: dict) -> tuple[str | None, dict]:
        """(split, item) for a kept item, (None, quarantine row) for a dropped one."""
        if kind == "quarantine":
            return None, row
        source = self.source
        key = json.loads(row["meta"])["source_key"]
        sid = row.pop("_source_id")
        split = row.pop("_split")
        first = self.seen_source_ids.get(sid) if sid else None
        why = f"source id {sid!r} already used by row {first!r}" if first else ""
        if not why and row["id"] in self.seen_ids:
            why = f"same content (item id {row['id']}) as row {self.seen_ids[row['id']]!r}"
        if why:
            return None, exclusion(
                id=f"{source}:{key}", stage="gather", source=source, reason=DUPLICATE_ID,
                detail=f"row {key!r}, field 'id': {why}; the first occurrence is kept",
                record={k: v for k, v in row.items() if k != "image"},
            )
        self.seen_ids[row["id"]] = key
        if sid:
            self.seen_source_ids[sid] = key
        return split, row


def finalize(results: Iterable[tuple[str, dict]], source: str) -> tuple[dict[str, list[dict]], list[dict]]:
    """Split results into {split: items} and quarantine rows; later rows repeating a source id or item id are duplicates."""
    splits: dict[str, list[dict]] = {}
    quarantine: list[dict] = []
    fin = Finalizer(source)
    for kind, row in results:
        split, row = fin.add(kind, row)
        if split is None:
            quarantine.append(row)
        else:
            splits.setdefault(split, []).append(row)
    return splits, quarantine
