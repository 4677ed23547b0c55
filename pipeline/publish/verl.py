"""Export published splits to the MMSearch-R1 / veRL training parquet.

Reads:  split tables in the published layout (item columns, label as ClassLabel id or name, cluster_id).
Writes: one parquet per split with columns `prompt`, `images`, `reward_model{candidate_answers, ground_truth,
        style}`, `data_source`, `image_urls` (exactly the Arrow types of the paper's released training parquet),
        then `extra_info` (the item's own fields, so nothing is lost), `data_id` (item id) and `category`.

The prompt is either the paper's tag-protocol instruction wrapped around the question (`prompt="protocol"`, taken
from the `mmsearch_r1` protocol when it is available) or the bare question (`prompt="question"`, as in the released
file, whose trainer applies its own round-1 template). `candidate_answers` is a JSON list (ASCII-escaped like the
released file) of the answer and its aliases. Does not support: image URLs in `image_urls` (that column is typed
null in the released schema; URLs found in the item's meta go to `extra_info.image_url`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import pyarrow as pa

from pipeline.config import param
from pipeline.images import image_bytes

_ELEMENT = "element"  # list child name as pyarrow reads it back from parquet
PROMPT_TYPE = pa.list_(pa.field(_ELEMENT, pa.struct([("content", pa.string()), ("role", pa.string())])))
IMAGES_TYPE = pa.list_(pa.field(_ELEMENT, pa.struct([("bytes", pa.binary()), ("path", pa.null())])))
REWARD_TYPE = pa.struct([("candidate_answers", pa.string()), ("ground_truth", pa.string()), ("style", pa.string())])
# The columns shared with the paper's released parquet, with its exact types and order.
VERL_SHARED_SCHEMA = pa.schema(
    [("prompt", PROMPT_TYPE), ("images", IMAGES_TYPE), ("reward_model", REWARD_TYPE), ("data_source", pa.string()),
     ("image_urls", pa.null())]
)
EXTRA_INFO_TYPE = pa.struct(
    [("index", pa.int64()), ("split", pa.string()), ("id", pa.string()), ("question", pa.string()),
     ("answer", pa.string()), ("aliases", pa.list_(pa.field(_ELEMENT, pa.string()))), ("source", pa.string()),
     ("entity", pa.string()), ("license", pa.string()), ("label", pa.string()), ("cluster_id", pa.string()),
     ("image_sha1", pa.string()), ("image_url", pa.string()), ("meta", pa.string())]
)
VERL_SCHEMA = pa.schema(list(VERL_SHARED_SCHEMA) + [("extra_info", EXTRA_INFO_TYPE), ("data_id", pa.string()), ("category", pa.string())])

# Used only while pipeline/rollout/protocols has no `mmsearch_r1` protocol: the paper's round-1 instruction in our
# own words (tags and limits as in the paper).
PLACEHOLDER_MMSEARCH_R1_PROMPT = (
    "Answer the question about the image. Think first inside <reason> and </reason>. If you cannot answer from "
    "your own knowledge, you may call a tool: <search><img></search> searches the web with the image (only in your "
    "first turn, at most once), <text_search>query</text_search> searches the web with text (at most twice). "
    "Search results come back inside <information> and </information>. When you know the answer, give it as "
    "<answer>short answer</answer>. You have at most 3 turns.\n\nQuestion: {question}"
)


@dataclasses.dataclass
class VerlParams:
    enabled: bool = param(True, help="also export the splits to the MMSearch-R1/veRL training parquet")
    out_dir: str = param("data/publish/verl", help="folder of the export: <split>.parquet per split")
    prompt: Literal["protocol", "question"] = param(
        "protocol", help="protocol: the mmsearch_r1 tag instruction around the question; question: the bare question "
        "(as in the paper's released file, whose trainer applies its own template)")
    protocol: str = param("mmsearch_r1", help="protocol whose first-turn messages make the prompt (prompt=protocol)")
    data_source_prefix: str = param("mmsearch_r1", help="data_source = <prefix>/<item source>_<split> (veRL picks the reward by it)")
    reward_style: str = param("rule", help="reward_model.style (the paper's released data uses 'rule')")
    image_placeholder: str = param("<image>", help="text that stands for an image block inside the prompt text")


def candidate_answers(answer: str, aliases: Iterable[str]) -> str:
    """JSON list of the accepted answers, the answer first, duplicates dropped, ASCII-escaped like the paper's file."""
    seen, out = set(), []
    for a in [answer, *aliases]:
        if a and a not in seen:
            seen.add(a)
            out.append(a)
    return json.dumps(out)


def _protocol_messages(item: Mapping[str, Any], params: VerlParams) -> list[dict] | None:
    """First-turn messages of the configured protocol, or None when the protocol package is not available."""
    try:
        from pipeline.rollout.protocols import Limits, get_protocol
    except ImportError:
        return None
    protocol = get_protocol(params.protocol, Limits())
    # embed_image=False: an empty image block marks where the image goes; its bytes travel in `images`
    return protocol.initial_messages(dict(item), "tools", item.get("image") is not None, embed_image=False)


def _text_of(content: Any, image_placeholder: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            parts.append(block.get("text", ""))
        elif kind == "image":
            parts.append(image_placeholder)
    return "".join(parts)


def prompt_messages(item: Mapping[str, Any], params: VerlParams) -> list[dict]:
    """The `prompt` column of one item: [{"content", "role"}] messages with images replaced by the placeholder."""
    if params.prompt == "question":
        return [{"content": item["question"], "role": "user"}]
    messages = _protocol_messages(item, params)
    if messages is None:
        text = PLACEHOLDER_MMSEARCH_R1_PROMPT.format(question=item["question"])
        if item.get("image") is not None:
            text = params.image_placeholder + text
        return [{"content": text, "role": "user"}]
    return [{"content": _text_of(m.get("content"), params.image_placeholder), "role": m["role"]} for m in messages]


def _image_url(meta: str) -> str:
    try:
        obj = json.loads(meta or "{}")
    except json.JSONDecodeError:
        return ""
    for key in ("image_url", "url", "image_urls"):
        v = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v and isinstance(v[0], str):
            return v[0]
    return ""


def verl_row(item: Mapping[str, Any], split: str, index: int, params: VerlParams) -> dict:
    """One export row from one published item (label as ClassLabel id or name)."""
    from pipeline.schema import LABELS

    label = item.get("label")
    if isinstance(label, int):
        label = LABELS[label]
    data = image_bytes(item.get("image"))
    images = [{"bytes": data, "path": None}] if data else []
    return {
        "prompt": prompt_messages(item, params),
        "images": images,
        "reward_model": {"candidate_answers": candidate_answers(item["answer"], item.get("aliases") or []),
                         "ground_truth": item["answer"], "style": params.reward_style},
        "data_source": f"{params.data_source_prefix}/{item.get('source') or 'unknown'}_{split}",
        "image_urls": None,
        "extra_info": {
            "index": index, "split": split, "id": item["id"], "question": item["question"], "answer": item["answer"],
            "aliases": list(item.get("aliases") or []), "source": item.get("source") or "",
            "entity": item.get("entity") or "", "license": item.get("license") or "", "label": label or "",
            "cluster_id": item.get("cluster_id") or "", "image_sha1": item.get("image_sha1") or "",
            "image_url": _image_url(item.get("meta") or ""), "meta": item.get("meta") or "{}",
        },
        "data_id": item["id"],
        "category": item.get("category") or "",
    }


def verl_table(items: Iterable[Mapping[str, Any]], split: str, params: VerlParams, start: int = 0) -> pa.Table:
    """Export rows of `items` (numbered from `start` in extra_info.index) as a table with VERL_SCHEMA."""
    rows = [verl_row(item, split, start + i, params) for i, item in enumerate(items)]
    return pa.Table.from_pylist(rows, schema=VERL_SCHEMA) if rows else VERL_SCHEMA.empty_table()


def export_split(table: pa.Table, split: str, out_path: str | Path, params: VerlParams, batch_rows: int = 512) -> int:
    """Write `table` (a published split) as a veRL parquet at `out_path`; returns the row count."""
    from pipeline.schema import write_table

    parts = [verl_table(table.slice(s, batch_rows).to_pylist(), split, params, start=s) for s in range(0, len(table), batch_rows)]
    out = pa.concat_tables(parts) if parts else VERL_SCHEMA.empty_table()
    write_table(out, out_path)
    return len(out)
