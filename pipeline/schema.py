"""Data contracts of the pipeline: items, rollouts (probe evidence), labels and exclusions.

Every table the stages exchange is described here once, as HF `datasets.Features` (which carry the Arrow schema),
so a parquet written by one stage loads unchanged in the next and on the Hub.

Reads/writes nothing by itself; `read_items` / `write_items` are the one way items go to and from disk.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"

# ---------------------------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------------------------
ITEM_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),  # stable content id: f"{source}-{sha1(question, answer, image)[:16]}"
        "image": datasets.Image(),  # {"bytes", "path"}; decoded lazily by `datasets`, never by us on read
        "image_sha1": datasets.Value("string"),  # sha1 of the normalised image bytes ("" when no image)
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "aliases": datasets.Sequence(datasets.Value("string")),  # other accepted answers (not including `answer`)
        "source": datasets.Value("string"),  # gather source name, e.g. "demo", "mmsearch_r1"
        "category": datasets.Value("string"),  # e.g. "flag_country", "flag_capital", "visual", "photo_fact"
        "license": datasets.Value("string"),  # SPDX-like licence of the item (image + text)
        "entity": datasets.Value("string"),  # entity the item is about ("" when none); splits never share entities
        "meta": datasets.Value("string"),  # JSON object with anything else (width, height, original ids, urls)
    }
)
ITEM_COLUMNS = list(ITEM_FEATURES)
REQUIRED_TEXT_FIELDS = ("question", "answer")


class ItemError(ValueError):
    """A row that cannot become an item. `item` names the row (id or position), `field` the offending key."""

    def __init__(self, item: str, field: str, reason: str, hint: str = ""):
        self.item, self.field, self.reason, self.hint = item, field, reason, hint
        msg = f"item {item!r}: field {field!r}: {reason}"
        super().__init__(msg + (f" ({hint})" if hint else ""))


def sha1_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha1(data).hexdigest()


def make_item_id(source: str, question: str, answer: str, image_sha1: str) -> str:
    """Content id: identical content from the same source gives the same id on every run and machine."""
    digest = sha1_hex("\x1f".join([source, question.strip(), answer.strip(), image_sha1]))
    return f"{source}-{digest[:16]}"


def validate_item(row: Mapping[str, Any], where: str = "?") -> None:
    """Raise `ItemError` naming the item and the field when `row` does not satisfy the item contract."""
    item = str(row.get("id") or where)
    for key in ITEM_COLUMNS:
        if key not in row:
            raise ItemError(item, key, "missing", "every item needs all of " + ", ".join(ITEM_COLUMNS))
    for key in ("id", "image_sha1", "question", "answer", "source", "category", "license", "entity", "meta"):
        if not isinstance(row[key], str):
            raise ItemError(item, key, f"expected a string, got {type(row[key]).__name__}")
    for key in REQUIRED_TEXT_FIELDS:
        if not row[key].strip():
            raise ItemError(item, key, "empty", "drop the row or fill the field in the source")
    aliases = row["aliases"]
    if not isinstance(aliases, (list, tuple)) or not all(isinstance(a, str) for a in aliases):
        raise ItemError(item, "aliases", "expected a list of strings")
    image = row["image"]
    if image is not None and not (isinstance(image, Mapping) and isinstance(image.get("bytes"), (bytes, bytearray))):
        raise ItemError(item, "image", "expected None or {'bytes': <encoded image>, 'path': ...}")
    try:
        meta = json.loads(row["meta"] or "{}")
    except json.JSONDecodeError as exc:
        raise ItemError(item, "meta", f"not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ItemError(item, "meta", "must be a JSON object")


def items_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Arrow table of item rows, in the order given, with the HF features attached as schema metadata."""
    rows = list(rows)
    if not rows:  # from_list cannot infer anything from zero rows; an empty table with the full schema is still valid
        return ITEM_FEATURES.arrow_schema.empty_table()
    return datasets.Dataset.from_list(rows, features=ITEM_FEATURES).data.table


def write_items(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Write item rows to one parquet file, atomically (tmp + rename); returns the row count."""
    table = items_table(rows)
    write_table(table, path)
    return table.num_rows


ROW_GROUP_ROWS = 256  # rows per parquet row group of every file write_table writes


def write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Atomic, deterministic parquet write (no timestamps in the file, fixed row groups). The temporary file is
    per process: two processes writing one path (probe shards that finish together) each replace it whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=True)
    os.replace(tmp, path)


def read_items(path: str | os.PathLike) -> datasets.Dataset:
    """Load an items parquet as a `datasets.Dataset` with ITEM_FEATURES (images stay encoded until accessed)."""
    table = pq.read_table(path)
    missing = [c for c in ITEM_COLUMNS if c not in table.column_names]
    if missing:
        raise ItemError(str(path), missing[0], "column missing from the items file", "re-run the stage that wrote it")
    return datasets.Dataset(table.select(ITEM_COLUMNS).cast(ITEM_FEATURES.arrow_schema), info=datasets.DatasetInfo(features=ITEM_FEATURES))


# ---------------------------------------------------------------------------------------------------------------
# Quarantine / exclusions: one row per dropped input, with its reason. Nothing vanishes.
# ---------------------------------------------------------------------------------------------------------------
EXCLUSION_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),  # item id when known, else f"{source}:{row position or file name}"
        "stage": datasets.Value("string"),  # stage that dropped it: gather, dedup, label, balance, ...
        "source": datasets.Value("string"),
        "reason": datasets.Value("string"),  # short machine-readable reason code, e.g. "image_unreadable"
        "detail": datasets.Value("string"),  # human message: what is wrong and what to do
        "record": datasets.Value("string"),  # JSON of the offending row without binary payloads (for inspection)
    }
)

# ---------------------------------------------------------------------------------------------------------------
# Probe evidence: one row per rollout
# ---------------------------------------------------------------------------------------------------------------
CONDITIONS = ("closed_book", "tools", "image_only", "text_only")
ACTIONS = ("answer", "image_search", "text_search", "invalid")
ROLLOUT_FEATURES = datasets.Features(
    {
        "rollout_id": datasets.Value("string"),  # f"{item_id}/{condition}/{sample}"
        "item_id": datasets.Value("string"),
        "condition": datasets.Value("string"),  # one of CONDITIONS (evaluate adds direct / rag / on_demand)
        "sample": datasets.Value("int32"),
        "model": datasets.Value("string"),
        "protocol": datasets.Value("string"),  # mmsearch_r1 | tool_calls
        "saw_image": datasets.Value("bool"),  # False for a text-only model: it must rely on image search
        "messages": datasets.Value("string"),  # JSON list of chat messages (images replaced by {"type": "image", "sha1"})
        "actions": datasets.Sequence(datasets.Value("string")),  # per model turn, the scorer's kind (one of ACTIONS)
        "tool_calls": datasets.Value("string"),  # JSON list of call records (pipeline/rollout/step.py)
        "n_image_search": datasets.Value("int32"),  # executed image searches
        "n_text_search": datasets.Value("int32"),  # executed text searches
        "search_count": datasets.Value("int32"),  # the scorer's search count (the reward's penalty counts these)
        "final_answer": datasets.Value("string"),  # the scorer's answer; "" when the last turn has none
        "correct": datasets.Value("bool"),  # judged against answer + aliases (judge method below)
        "judge": datasets.Value("string"),  # em | subem | f1 | llm
        "valid_format": datasets.Value("bool"),  # the scorer's format rule (pipeline/rollout/score.py)
        "prompt_tokens": datasets.Value("int32"),
        "completion_tokens": datasets.Value("int32"),
        "latency_s": datasets.Value("float32"),
        "error": datasets.Value("string"),  # "" or what went wrong (engine error, tool failure, ...)
    }
)

# ---------------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------------
LABELS = (
    "search_free",
    "image_search_required",
    "text_search_required",
    "mixed_search_required",
    "unanswerable",
    "uncertain",  # the evidence did not settle it (pipeline/curate/label.py); excluded like unanswerable
)
SEARCH_REQUIRED = LABELS[1:4]
LABEL_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),  # item id
        "label": datasets.ClassLabel(names=list(LABELS)),
        "rule_version": datasets.Value("string"),
        "pass_rate_closed_book": datasets.Value("float32"),  # NaN when the condition was not probed
        "pass_rate_tools": datasets.Value("float32"),
        "pass_rate_image_only": datasets.Value("float32"),
        "pass_rate_text_only": datasets.Value("float32"),
        **{f"ci_{side}_{c}": datasets.Value("float32")  # Beta credible interval of each pass rate (NaN: not probed)
           for side in ("low", "high") for c in ("closed_book", "tools", "image_only", "text_only")},
        "n_rollouts": datasets.Value("int32"),
        "settled_by": datasets.Value("string"),  # the condition whose evidence decided the label
        "confidence": datasets.Value("float32"),  # in [0, 1]: posterior probability of the steps that gave it
        "reason": datasets.Value("string"),  # one line: why this label
    }
)


def label_row(item_id: str, label: str, **fields: Any) -> dict:
    """One LABEL_FEATURES row: the given fields, every other column at its "not probed" value (NaN rates and
    intervals, 0 rollouts, empty strings). Unknown field names raise KeyError naming them."""
    unknown = set(fields) - set(LABEL_FEATURES)
    if unknown:
        raise KeyError(f"label_row: unknown label columns {sorted(unknown)}; known: {list(LABEL_FEATURES)}")
    row: dict[str, Any] = {}
    for name, feature in LABEL_FEATURES.items():
        dtype = getattr(feature, "dtype", "")
        row[name] = math.nan if dtype.startswith("float") else 0 if dtype.startswith("int") else ""
    row.update(fields, id=item_id, label=label)
    return row


def to_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) so that files written twice are byte-identical."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
