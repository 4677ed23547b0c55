"""Small file helpers every stage uses: atomic JSON, exclusion tables, progress bars."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import datasets

from pipeline.schema import EXCLUSION_FEATURES, to_json, write_table


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` as pretty, key-sorted JSON, atomically (readable by `dvc metrics show`); the temporary file is
    per process, as in `write_table`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def exclusion(id: str, stage: str, source: str, reason: str, detail: str, record: Mapping[str, Any] | None = None) -> dict:
    """One exclusion/quarantine row; binary values in `record` are replaced by their length."""
    clean = {}
    for k, v in (record or {}).items():
        if isinstance(v, (bytes, bytearray)):
            clean[k] = f"<{len(v)} bytes>"
        elif isinstance(v, Mapping) and isinstance(v.get("bytes"), (bytes, bytearray)):
            clean[k] = f"<image {len(v['bytes'])} bytes>"
        else:
            clean[k] = v
    return {"id": id, "stage": stage, "source": source, "reason": reason, "detail": detail, "record": to_json(clean) if record else "{}"}


def write_exclusions(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Write exclusion rows (see `exclusion`) to parquet; an empty file with the schema when there are none."""
    rows = list(rows)
    table = datasets.Dataset.from_list(rows, features=EXCLUSION_FEATURES).data.table if rows else (
        EXCLUSION_FEATURES.arrow_schema.empty_table()
    )
    write_table(table, path)
    return len(rows)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0):
    """A tqdm bar with rate and ETA on stderr; quiet when stderr is not a terminal and CI is set."""
    from tqdm.auto import tqdm

    disable = bool(os.environ.get("CI")) and not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, dynamic_ncols=True, mininterval=1.0)
