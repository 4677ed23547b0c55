"""The pipeline outputs that publish reads, checked and cast to the published schemas (Arrow tables, no writing).

Reads:  the balanced splits (item columns + label columns with the label as a string + cluster_id), probe evidence
        parquets (ROLLOUT_FEATURES), the search-cache export (key, tool, backend, backend_version, input,
        result_json, error) or the cache database itself, and exclusion tables (EXCLUSION_FEATURES).
Writes: nothing (a cache database is exported to a temporary file that is removed again).

Rows of a split that break the contract (no id, unknown label, empty question or answer, an image struct without
bytes) are not published: they come back as exclusion rows (stage "publish"), so rows in = rows out + excluded.
A file that is unusable as a whole (missing, a column missing or of the wrong kind) raises PublishError naming the
file and column and what to do.
"""
from __future__ import annotations

import dataclasses
import glob as globmod
import json
import os
from pathlib import Path
from typing import Any, Iterable

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io import exclusion
from pipeline.schema import EXCLUSION_FEATURES, ITEM_FEATURES, LABEL_FEATURES, LABELS, ROLLOUT_FEATURES

CACHE_COLUMNS = ("key", "tool", "backend", "backend_version", "input")  # the rest of the export is kept as is
STAGE = "publish"


class PublishError(ValueError):
    """Input or folder that cannot be published; the message names the file/column/config and what to do."""


def split_features(extra: datasets.Features | None = None) -> datasets.Features:
    """Features of the `default` config: items, label columns (label as ClassLabel), cluster_id, then `extra`."""
    feats: dict[str, Any] = dict(ITEM_FEATURES)
    feats.update({k: v for k, v in LABEL_FEATURES.items() if k != "id"})
    feats["cluster_id"] = datasets.Value("string")
    for k, v in (extra or {}).items():
        if k not in feats:
            feats[k] = v
    return datasets.Features(feats)


REQUIRED_SPLIT_COLUMNS = tuple(split_features())


def expand(patterns: Iterable[str], root: Path) -> list[Path]:
    """Sorted, de-duplicated files matching glob `patterns` (relative to `root`)."""
    out: list[Path] = []
    for pat in patterns:
        for p in sorted(globmod.glob(str(Path(root) / pat))):
            if Path(p).is_file() and Path(p) not in out:
                out.append(Path(p))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PreparedSplit:
    table: pa.Table  # cast to `features`, bad rows removed
    features: datasets.Features
    excluded: list[dict]  # exclusion rows for the removed ones
    rows_in: int


def _bad_images(col: pa.ChunkedArray) -> list[bool]:
    """Per row: an image struct is present but holds no bytes (computed in Arrow; image bytes are not copied)."""
    if not pa.types.is_struct(col.type) or col.type.get_field_index("bytes") < 0:
        return [False] * len(col)
    data = pc.struct_field(col, "bytes")
    empty = pc.or_kleene(pc.is_null(data), pc.equal(pc.binary_length(data), 0))
    return pc.and_(col.is_valid(), pc.fill_null(empty, True)).to_pylist()


def _label_names(table: pa.Table, split: str, path: Path) -> pa.ChunkedArray:
    """The label column as names (ClassLabel ids are mapped back, so one code path checks them)."""
    col = table.column("label")
    if pa.types.is_integer(col.type):
        names = [LABELS[i] if i is not None and 0 <= i < len(LABELS) else f"<id {i}>" for i in col.to_pylist()]
        return pa.chunked_array([pa.array(names, pa.string())])
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise PublishError(f"split {split!r} ({path}): column 'label' has type {col.type}; expected the label name (string)")
    return col.cast(pa.string())


def _row_problem(row: dict, label: str, bad_image: bool) -> tuple[str, str]:
    """(reason, what to do) for a row that must not be published, ("", "") for a good one."""
    if not row.get("id"):
        return "id_missing", "row has no id; items need make_item_id ids (re-run gather)"
    if label not in LABELS:
        return "label_unknown", f"label {label!r} is not one of {list(LABELS)}; re-run the label stage"
    if not (row.get("question") or "").strip() or not (row.get("answer") or "").strip():
        return "text_empty", "question or answer is empty; fix the source row or drop it in gather"
    if bad_image:
        return "image_invalid", "image struct has no bytes; re-run gather for this item"
    return "", ""


def prepare_split(path: str | os.PathLike, split: str) -> PreparedSplit:
    """Read one balanced split and cast it to `split_features()`; rows that break the contract become exclusions.

    A missing file, a missing column or a column of the wrong kind raises PublishError (the whole file is unusable)."""
    path = Path(path)
    if not path.exists():
        raise PublishError(f"split {split!r}: {path} not found; run the balance stage first (dvc repro balance)")
    table = pq.read_table(path)
    missing = [c for c in REQUIRED_SPLIT_COLUMNS if c not in table.column_names]
    if missing:
        raise PublishError(
            f"split {split!r} ({path}): column(s) {', '.join(missing)} missing; the balance stage must write the item "
            "columns, the label columns and cluster_id (re-run it with the current code)"
        )
    extra_names = [c for c in table.column_names if c not in REQUIRED_SPLIT_COLUMNS]
    extra = datasets.Features.from_arrow_schema(table.select(extra_names).schema) if extra_names else None
    features = split_features(extra)
    table = table.set_column(table.column_names.index("label"), "label", _label_names(table, split, path))

    light = table.select(["id", "question", "answer", "source"]).to_pylist()
    labels = table.column("label").to_pylist()
    bad_image = _bad_images(table.column("image"))
    keep: list[bool] = []
    excluded: list[dict] = []
    for i, row in enumerate(light):
        reason, problem = _row_problem(row, labels[i], bad_image[i])
        keep.append(not problem)
        if problem:
            item_id = row.get("id") or f"{split}:{i}"
            excluded.append(exclusion(str(item_id), STAGE, str(row.get("source") or ""), reason,
                                      f"split {split!r}: item {item_id!r}: {problem}", {**row, "label": labels[i]}))

    table = table.filter(pa.array(keep, pa.bool_())) if len(table) else table
    label_ids = pc.index_in(table.column("label"), value_set=pa.array(LABELS, pa.string())).cast(pa.int64())
    arrays = []
    for name, feature in features.items():
        col = label_ids if name == "label" else table.column(name)
        try:
            arrays.append(col.cast(features.arrow_schema.field(name).type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PublishError(f"split {split!r} ({path}): column {name!r} ({col.type}) cannot become {feature}: {exc}") from None
    return PreparedSplit(pa.Table.from_arrays(arrays, schema=features.arrow_schema), features, excluded, rows_in=len(keep))


# ---------------------------------------------------------------------------------------------------------------
# Extra configs
# ---------------------------------------------------------------------------------------------------------------
def _cast_to(table: pa.Table, features: datasets.Features, what: str) -> pa.Table:
    missing = [c for c in features if c not in table.column_names]
    if missing:
        raise PublishError(f"{what}: column(s) {', '.join(missing)} missing; re-run the stage that wrote it")
    try:
        return table.select(list(features)).cast(features.arrow_schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PublishError(f"{what}: does not match the expected schema: {exc}") from None


def concat_tables(paths: Iterable[Path], features: datasets.Features, what: str) -> pa.Table:
    """All rows of `paths` (in order) cast to `features`; an empty table with the schema when there are none."""
    tables = [_cast_to(pq.read_table(p), features, f"{what} {p}") for p in paths]
    if not tables:
        return features.arrow_schema.empty_table()
    return pa.concat_tables(tables).replace_schema_metadata(features.arrow_schema.metadata)


def probe_evidence_table(paths: Iterable[Path]) -> pa.Table:
    return concat_tables(paths, ROLLOUT_FEATURES, "probe evidence")


def exclusions_table(paths: Iterable[Path], extra_rows: Iterable[dict] = ()) -> pa.Table:
    """Every exclusion table of `paths`, then `extra_rows` (publish's own), with EXCLUSION_FEATURES."""
    table = concat_tables(paths, EXCLUSION_FEATURES, "exclusion table")
    extra_rows = list(extra_rows)
    if extra_rows:
        more = datasets.Dataset.from_list(extra_rows, features=EXCLUSION_FEATURES).data.table
        table = pa.concat_tables([table, more.cast(EXCLUSION_FEATURES.arrow_schema)])
    return table.replace_schema_metadata(EXCLUSION_FEATURES.arrow_schema.metadata)


def referenced_cache_keys(evidence: pa.Table, item_ids: set[str] | None = None) -> set[str]:
    """Cache keys of every tool call in the evidence (of `item_ids` only, when given)."""
    keys: set[str] = set()
    for item_id, calls in zip(evidence.column("item_id").to_pylist(), evidence.column("tool_calls").to_pylist()):
        if item_ids is not None and item_id not in item_ids:
            continue
        try:
            parsed = json.loads(calls or "[]")
        except json.JSONDecodeError:
            continue
        for call in parsed if isinstance(parsed, list) else []:
            key = call.get("cache_key") if isinstance(call, dict) else None
            if key:
                keys.add(key)
    return keys


def read_cache_export(path: Path) -> pa.Table:
    """The search-cache export at `path`: a parquet export, or the cache database itself (*.sqlite / *.db),
    exported on the fly with the search package's `SearchCache.export_parquet` into a temporary file."""
    if path.suffix in (".sqlite", ".db"):
        import tempfile

        from pipeline.search.cache import SearchCache

        with tempfile.TemporaryDirectory(prefix="publish-cache-") as tmp:
            out = Path(tmp) / "export.parquet"
            cache = SearchCache(path)
            try:
                cache.export_parquet(out)
            finally:
                cache.close()
            return pq.read_table(out)
    return pq.read_table(path)


def search_cache_table(path: Path, keys: set[str] | None) -> tuple[pa.Table, dict]:
    """The cache export at `path` (see `read_cache_export`), restricted to `keys` (None = all), rows sorted by key.
    Returns (table, stats)."""
    table = read_cache_export(path)
    missing = [c for c in CACHE_COLUMNS if c not in table.column_names]
    if missing:
        raise PublishError(f"search cache export {path}: column(s) {', '.join(missing)} missing; re-export the cache "
                           "with the search package (SearchCache.export_parquet)")
    table = table.select(list(CACHE_COLUMNS) + [c for c in table.column_names if c not in CACHE_COLUMNS])
    total = len(table)
    if keys is not None:
        table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(sorted(keys), table.column("key").type)))
    table = table.take(pc.sort_indices(table, sort_keys=[("key", "ascending")]))
    table = table.replace_schema_metadata(datasets.Features.from_arrow_schema(table.schema).arrow_schema.metadata)
    present = set(table.column("key").to_pylist())
    stats = {"entries_in_export": total, "entries_published": len(table)}
    if keys is not None:
        stats.update(keys_referenced=len(keys), keys_missing=len(keys - present))
    return table, stats


def local_prefixes(root: Path) -> list[tuple[str, str]]:
    """(absolute prefix of this machine, what replaces it): the project root -> "", the home folder -> "~/"."""
    prefixes = [(str(Path(root).resolve()) + "/", ""), (str(Path.home()) + "/", "~/")]
    return [(a, b) for a, b in prefixes if len(a) > 2]


def scrub_text(text: str, root: Path) -> str:
    """`text` with absolute paths under the project root made relative to it, and those under ~ written with ~."""
    for pattern, repl in local_prefixes(root):
        text = text.replace(pattern, repl)
    return text


def scrub_local_paths(table: pa.Table, root: Path) -> pa.Table:
    """Rewrite absolute paths of this machine inside string columns (exclusion records, meta, messages, model paths)
    as in `scrub_text`: a published dataset must not carry local directories. (Image paths are cut to their file
    names when the folder is written: see `pipeline.publish.folder.to_dataset`.)"""
    for i, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        col = table.column(i)
        for pattern, repl in local_prefixes(root):
            col = pc.replace_substring(col, pattern=pattern, replacement=repl)
        table = table.set_column(i, field, col)
    return table
