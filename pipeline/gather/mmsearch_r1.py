"""The MMSearch-R1 / veRL training parquet: prompt (chat messages), images, reward_model, data_source, ...

Reads `params.path` (a parquet file or a folder of them). The question is the text of the last user message with
image placeholders and the paper's instruction wrapper removed; the answer is `reward_model.ground_truth`; aliases
are `reward_model.candidate_answers` (a JSON list). Row ids come from `data_id`, `extra_info.index` or the row
position. Images are the first of `images` ({bytes, path}). Writes nothing.
Does not support: multi-image rows (only the first image is kept; the count is recorded in meta).
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


def read_mmsearch_r1(params: SourceParams) -> Iterator[dict]:
    import pyarrow.parquet as pq

    count = 0
    for path in data_files(Path(params.path)):
        for i, rec in enumerate(pq.read_table(path).to_pylist()):
            if params.limit and count >= params.limit:
                return
            count += 1
            key = f"{path.name}:{i}"
            reward = rec.get("reward_model") or {}
            if not isinstance(reward, dict):
                yield raw_row(key, error=("wrong_type", "reward_model", f"expected a struct, got {type(reward).__name__}"))
                continue
            images = rec.get("images") or []
            image = images[0] if len(images) else None
            extra = rec.get("extra_info") if isinstance(rec.get("extra_info"), dict) else {}
            source_id = rec.get("data_id") or (extra or {}).get("data_id")
            meta = {
                "data_source": rec.get("data_source") or "",
                "n_images": len(images),
                "image_urls": rec.get("image_urls"),
                "category": rec.get("category"),
                "reward_style": reward.get("style"),
                "extra_info": extra,
                "row": i,
            }
            yield raw_row(
                key,
                id=str(source_id) if source_id not in (None, "") else None,
                image=image,
                question=question_from_prompt(rec.get("prompt")),
                answer=reward.get("ground_truth"),
                aliases=_aliases(reward),
                category=rec.get("category") or params.category or "mmsearch_r1",
                license=params.license or "see data_source",
                entity="",
                meta={k: v for k, v in meta.items() if v not in (None, {}, "")},
            )
