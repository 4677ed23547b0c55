"""Evaluation datasets: the balanced test split and any extra benchmark, read into items + labels + exclusions.

A dataset is a parquet in item schema (data/balance/test.parquet: item columns + `label` as a string), or any
file/folder/Hub dataset the gather sources read (`format: local | hf | mmsearch_r1` with a column mapping, e.g. the
paper's veRL parquet). Rows that cannot become items, and labels that are not one of pipeline.schema.LABELS, go to
the exclusion list with a reason; the counts always add up (rows in = items + excluded). The run then takes a
seeded, label-stratified subset (`pipeline.subsets`) so the demo stays small. Reads the dataset files only; writes nothing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.config import param
from pipeline.io import exclusion
from pipeline.schema import ITEM_COLUMNS, LABELS, ItemError, validate_item

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class DatasetParams:
    path: str = param("", help="items parquet (format items) or the file/folder/Hub-saved dataset a gather source reads")
    format: Literal["items", "local", "hf", "mmsearch_r1"] = param(
        "items", help="items: parquet with the item columns (the balance splits); local | hf | mmsearch_r1: read "
        "through the gather source of that kind (see gather.sources) with `columns`")
    columns: dict[str, str] = param({}, help="item field -> column in the file (id, image, question, answer, "
                                    "aliases, category, license, entity); unmapped fields use the same name")
    label_column: str = param("label", help="column with the search-necessity label (search_free, "
                              "*_search_required); missing column or '' = unlabelled (subset metrics are null)")
    require_image: bool = param(True, help="exclude rows without an image (non-items formats)")
    max_items: int | None = param(None, help="items evaluated from this dataset (null = evaluate.max_items)")

    def validate(self) -> None:
        if not self.path:
            raise ValueError("every dataset needs a `path`")
        if self.max_items is not None and self.max_items < 0:
            raise ValueError("max_items must be >= 0 (0 = all)")


@dataclass
class EvalDataset:
    name: str
    items: list[dict]  # ITEM_COLUMNS rows
    labels: dict[str, str | None]  # item id -> label (None = unlabelled)
    excluded: list[dict]  # EXCLUSION_FEATURES rows
    n_rows: int  # rows read (= len(items) + len(excluded) before selection)


def _label(value: Any, item_id: str, name: str, column: str) -> tuple[str | None, dict | None]:
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None, None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(LABELS):
        value = LABELS[value]  # a ClassLabel index
    if value not in LABELS:
        return None, exclusion(item_id, "evaluate", name, "label_unknown",
                               f"dataset {name!r}, item {item_id!r}: column {column!r} holds {value!r}, not one of "
                               f"{', '.join(LABELS)}; fix the label or set label_column: ''")
    return value, None


def _read_items_format(name: str, p: DatasetParams) -> EvalDataset:
    import pyarrow.parquet as pq

    table = pq.read_table(p.path)
    rename = {col: field for field, col in p.columns.items()}
    items, labels, excluded = [], {}, []
    seen: set[str] = set()
    n = 0
    for pos, rec in enumerate(table.to_pylist()):
        n += 1
        rec = {rename.get(k, k): v for k, v in rec.items()}
        where = f"{name}:row {pos}"
        try:
            row = {k: rec.get(k) for k in ITEM_COLUMNS}
            if row["aliases"] is None:
                row["aliases"] = []
            validate_item(row, where)
        except ItemError as exc:
            excluded.append(exclusion(str(rec.get("id") or where), "evaluate", name, "item_invalid",
                                      f"dataset {name!r}: {exc}; fix the row or re-run the stage that wrote {p.path}",
                                      {k: v for k, v in rec.items() if k != "image"}))
            continue
        if row["id"] in seen:
            excluded.append(exclusion(row["id"], "evaluate", name, "duplicate_id",
                                      f"dataset {name!r}: item id {row['id']!r} appears twice; the first is kept"))
            continue
        label, bad = _label(rec.get(p.label_column), row["id"], name, p.label_column) if p.label_column else (None, None)
        if bad:
            excluded.append(bad)
            continue
        seen.add(row["id"])
        items.append(row)
        labels[row["id"]] = label
    return EvalDataset(name, items, labels, excluded, n)


def _read_source_format(name: str, p: DatasetParams) -> EvalDataset:
    from pipeline.images import ImageParams
    from pipeline.gather import SourceParams, read_source
    from pipeline.gather.convert import finalize, process_row

    src = SourceParams(kind=p.format, path=p.path, columns=dict(p.columns), require_image=p.require_image)
    src.validate()
    results = [process_row(raw, name, ImageParams(), p.require_image) for raw in read_source(src)]
    splits, quarantine = finalize(results, name)
    excluded = [dict(q, stage="evaluate") for q in quarantine]
    items, labels = [], {}
    for rows in splits.values():
        for row in rows:
            meta = json.loads(row["meta"] or "{}")
            label, bad = _label(meta.get(p.label_column), row["id"], name, p.label_column) if p.label_column else (None, None)
            if bad:
                excluded.append(bad)
                continue
            items.append({k: row[k] for k in ITEM_COLUMNS})
            labels[row["id"]] = label
    return EvalDataset(name, items, labels, excluded, len(results))


def load_dataset(name: str, p: DatasetParams) -> EvalDataset:
    """Read dataset `name`; raises FileNotFoundError naming the path and the stage that makes it when missing."""
    from pathlib import Path

    if not NAME_RE.match(name):
        raise ValueError(f"dataset name {name!r}: use letters, digits, '_' or '-' (it becomes a metrics key)")
    if p.format != "hf" and not Path(p.path).exists():
        raise FileNotFoundError(f"dataset {name!r}: {p.path} not found; run the balance stage (dvc repro balance) "
                                "for the test split, or fix evaluate.datasets." + name + ".path")
    return _read_items_format(name, p) if p.format == "items" else _read_source_format(name, p)
