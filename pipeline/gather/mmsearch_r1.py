"""The MMSearch-R1 / veRL training parquet, including FVQA as released (lmms-lab/FVQA `fvqa_{train,test}.parquet`).

Reads `params.path` (a parquet file or a folder of them), one record batch at a time. Columns: `prompt` (chat
messages, or a string), `images` (a list of {bytes, path}; null or empty = no image), `reward_model` {ground_truth,
candidate_answers (a JSON-encoded string list, or a list), style}, `data_source`, `image_urls` (null in the released
files), and optionally `data_id`, `category`, `extra_info`. Writes nothing.

- question: the text of the last user message, image placeholders and the paper's instruction wrapper removed;
  answer: `reward_model.ground_truth`; aliases: `reward_model.candidate_answers`.
- id: `data_id` (e.g. `fvqa_train_0`), else `extra_info.data_id`; it is kept in the item meta as `data_id` (the key
  of the paper's image-search cache, used by the `paper_replay` backend) and `source_id`.
- `category`: in FVQA it is the paper's own search-behaviour label (`search_free` / `search_required`). Such a value
  becomes the item's reference label (meta `reference_label`; the label stage reports agreement with it) and the
  item category is `params.category` (or the source name). Any other value (e.g. in this project's own veRL
  export) is the item category. Without a search-behaviour `category`, `extra_info.label` (this project's export)
  is the reference label when it is one of our labels.
- the first string of `image_urls`, if any, becomes meta `image_url` (Google Lens searches with it as it is).
Does not support: multi-image rows (only the first image is kept; the count is in meta `n_images`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from pipeline.gather.base import SourceParams, raw_row
from pipeline.gather.local import data_files

_PLACEHOLDER = re.compile(r"<image>|<\|image_pad\|>|<\|vision_start\|>|<\|vision_end\|>|<img>")
_QUESTION = re.compile(r"(?:^|\n)\s*Question\s*:\s*(.+?)(?:\n\s*\n|\Z)", re.S | re.I)
BATCH_ROWS = 64  # record batch size: the released train file is 1.5 GB of image bytes; never read it whole


def question_from_prompt(prompt: Any) -> str | None:
    """The user question inside a veRL prompt (a list of {role, content}) or a plain string."""
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, (list, tuple)):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            return None
        content = users[-1].get("content")
        if isinstance(content, list):  # content blocks
            content = "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
        text = content if isinstance(content, str) else None
        if text is None:
            return None
    else:
        return None
    text = _PLACEHOLDER.sub("", text).strip()
    matches = _QUESTION.findall(text)
    if matches:  # the paper's template: instructions ... "Question: <q>" ...
        text = matches[-1].strip()
    return text


def _aliases(reward: dict) -> Any:
    cand = reward.get("candidate_answers")
    if isinstance(cand, str):
        try:
            return json.loads(cand)
        except json.JSONDecodeError:
            return [cand]
    return cand or []


def reference_label(category: Any, extra: dict) -> str | None:
    """The row's reference search label (the paper's `category`, or our export's `extra_info.label`), or None."""
    from pipeline.curate.reference import is_search_label

    if isinstance(category, str) and is_search_label(category):
        return category
    label = extra.get("label") if isinstance(extra, dict) else None
    return label if isinstance(label, str) and is_search_label(label) else None


def _first_url(urls: Any) -> str:
    if isinstance(urls, str):
        return urls if urls.startswith(("http://", "https://")) else ""
    if isinstance(urls, (list, tuple)):
        return next((u for u in urls if isinstance(u, str) and u.startswith(("http://", "https://"))), "")
    return ""


def read_mmsearch_r1(params: SourceParams) -> Iterator[dict]:
    import pyarrow.parquet as pq

    count = 0
    for path in data_files(Path(params.path)):
        i = -1
        # no pre-buffering and a bounded read buffer: memory stays ~40 MB even when the file is one row group
        for batch in pq.ParquetFile(path, pre_buffer=False, buffer_size=8 << 20).iter_batches(batch_size=BATCH_ROWS):
            for rec in batch.to_pylist():
                i += 1
                if params.limit and count >= params.limit:
                    return
                count += 1
                yield _row(rec, f"{path.name}:{i}", i, params)


def _row(rec: dict, key: str, i: int, params: SourceParams) -> dict:
    reward = rec.get("reward_model") or {}
    if not isinstance(reward, dict):
        return raw_row(key, error=("wrong_type", "reward_model", f"expected a struct, got {type(reward).__name__}"))
    images = rec.get("images") or []
    image = images[0] if len(images) else None
    extra = rec.get("extra_info") if isinstance(rec.get("extra_info"), dict) else {}
    source_id = rec.get("data_id") or extra.get("data_id")
    category = rec.get("category")
    ref = reference_label(category, extra)
    item_category = params.category if not isinstance(category, str) or ref == category else category
    meta = {
        "data_id": str(source_id) if source_id not in (None, "") else None,
        "reference_label": ref,
        "data_source": rec.get("data_source") or "",
        "n_images": len(images),
        "image_url": _first_url(rec.get("image_urls")),
        "reward_style": reward.get("style"),
        "extra_info": extra,
        "row": i,
    }
    return raw_row(
        key,
        id=meta["data_id"],
        image=image,
        question=question_from_prompt(rec.get("prompt")),
        answer=reward.get("ground_truth"),
        aliases=_aliases(reward),
        category=item_category,
        license=params.license or "see data_source",
        entity="",
        meta={k: v for k, v in meta.items() if v not in (None, {}, "")},
    )
