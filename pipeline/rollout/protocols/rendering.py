"""Tool results as content blocks for a protocol's tool message (the search package renders the results).

A SearchResult goes through `pipeline.search.render.information_blocks`; a plain string (a refusal or a failure
text) becomes one text block. Reads and writes nothing.
"""
from __future__ import annotations

from typing import Any


def result_blocks(result: Any, with_images: bool = True) -> list[dict]:
    """Blocks for inside <information>..</information> (never empty)."""
    if isinstance(result, str):
        return [{"type": "text", "text": result}]
    from pipeline.search.render import information_blocks

    blocks = [dict(b) for b in information_blocks(result, with_images=with_images)]
    return blocks or [{"type": "text", "text": ""}]


def blocks_text(blocks: list[dict], image_placeholder: str = "") -> str:
    """Blocks as one string, images replaced by `image_placeholder`."""
    return "".join(b.get("text", "") if b.get("type") == "text" else image_placeholder for b in blocks)
