"""Local files: a .jsonl, .csv or .parquet file, or a folder of them, with image paths or image bytes.

Reads `params.path` (files in a folder are taken in sorted name order), streaming: a line, a CSV record or a parquet
record batch at a time; and the image files rows point to (lazily, at conversion). Text is decoded as UTF-8 with `surrogateescape`, so invalid bytes reach the common step and are
quarantined as text_not_utf8 instead of failing the whole file. Writes nothing.
Does not support: spreadsheets, archives (unpack first), remote URLs.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from pipeline.gather.base import SourceParams, map_record, raw_row

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def data_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; set gather.sources.<name>.path to a file or folder")
    return [path]


def _lines(path: Path) -> Iterator[bytes]:
    """The file's lines without their ends, read one at a time (the same lines as bytes.splitlines())."""
    with open(path, "rb") as fh:
        for line in fh:  # a file line ends at \n; bytes.splitlines() also ends one at a lone \r
            yield from line.splitlines()


def _jsonl(path: Path) -> Iterator[tuple[str, dict | None, str]]:
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        key = f"{path.name}:{n}"
        text = line.decode("utf-8", errors="surrogateescape")
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            yield key, None, f"line is not valid JSON ({exc.msg} at column {exc.colno})"
            continue
        if not isinstance(rec, dict):
            yield key, None, f"line is a JSON {type(rec).__name__}, expected an object"
            continue
        yield key, rec, ""


def _csv(path: Path) -> Iterator[tuple[str, dict | None, str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        for n, rec in enumerate(csv.DictReader(fh), 2):  # line 1 is the header
            yield f"{path.name}:{n}", {k: v for k, v in rec.items() if k is not None}, ""


def _parquet(path: Path) -> Iterator[tuple[str, dict | None, str]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    n = 0
    for batch in pf.iter_batches(batch_size=256):
        for rec in batch.to_pylist():
            yield f"{path.name}:{n}", rec, ""
            n += 1


READERS = {".jsonl": _jsonl, ".json": _jsonl, ".csv": _csv, ".parquet": _parquet}


def read_local(params: SourceParams) -> Iterator[dict]:
    """Yield raw rows from the file(s) at params.path, applying the column mapping."""
    count = 0
    for path in data_files(Path(params.path)):
        for key, rec, error in READERS[path.suffix.lower()](path):
            if params.limit and count >= params.limit:
                return
            count += 1
            if rec is None:
                yield raw_row(key, error=("row_unreadable", "row", error))
            else:
                yield map_record(rec, params, key, base_dir=path.parent)
