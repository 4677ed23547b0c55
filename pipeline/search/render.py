"""How a `SearchResult` becomes the text (and images) a protocol puts inside <information>..</information>.

Formats follow MMSearch-R1's released code: an image search lists up to k results as "N. image: <image>" + title
(+ URL); a text search lists up to k results as "N. (url) title: summary"; a failed search gives the paper's error
sentence. Exactly one image block (or one placeholder) is emitted per returned thumbnail, in result order.
Reads/writes nothing.
"""
from __future__ import annotations

from typing import Any

from pipeline.search.types import SearchResult

IMAGE_HEADER = (
    "[Image Search Results] The result of the image search consists of web page information related to the image "
    "from the user's original question. Each result includes the main image from the web page and its title, ranked "
    "in descending order of search relevance, as demonstrated below:\n"
)
TEXT_HEADER = (
    "[Text Search Results] Below are the text summaries of the most relevant webpages related to your query, ranked "
    "in descending order of relevance:\n"
)
ERROR_TEXT = "There is an error encountered in performing search. Please reason with your own capabilities."
EMPTY_TEXT = "No relevant results were found. Please reason with your own capabilities."
QWEN_VL_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def _prefix(tool: str) -> str:
    return "[Image Search Results]" if tool == "image_search" else "[Text Search Results]"


def _one_line(s: str) -> str:
    return " ".join((s or "").split())


def information_blocks(result: SearchResult, with_images: bool = True, error_detail: bool = False) -> list[dict[str, Any]]:
    """Content blocks for inside <information>..</information>.

    Args:
        result: the tool result.
        with_images: True: one {"type": "image", "image": <bytes>} block per returned thumbnail (for VLMs);
            False: thumbnails are left out and only titles/URLs remain (for text-only models).
        error_detail: append the backend's error message to the paper's error sentence.

    Returns:
        A list of {"type": "text", "text": ...} / {"type": "image", "image": bytes} blocks, adjacent texts merged.
    """
    blocks: list[dict[str, Any]] = []

    def text(s: str) -> None:
        if blocks and blocks[-1]["type"] == "text":
            blocks[-1]["text"] += s
        else:
            blocks.append({"type": "text", "text": s})

    if result.error:
        text(f"{_prefix(result.tool)} {ERROR_TEXT}" + (f" ({_one_line(result.error)})" if error_detail else ""))
        return blocks
    if not result.hits:
        text(f"{_prefix(result.tool)} {EMPTY_TEXT}")
        return blocks
    if result.tool == "image_search":
        text(IMAGE_HEADER)
        for i, hit in enumerate(result.hits, 1):
            if with_images and hit.thumbnail:
                text(f"{i}. image: ")
                blocks.append({"type": "image", "image": hit.thumbnail})
                text(f"\ntitle: {_one_line(hit.title)}\n")
            else:
                text(f"{i}. title: {_one_line(hit.title)}\n")
            if hit.url:
                text(f"url: {hit.url}\n")
    else:
        text(TEXT_HEADER)
        for i, hit in enumerate(result.hits, 1):
            link = f"({hit.url}) " if hit.url else ""
            body = _one_line(hit.snippet)
            text(f"{i}. {link}{_one_line(hit.title)}" + (f": {body}" if body else "") + "\n")
    return blocks


def information_text(result: SearchResult, image_placeholder: str = QWEN_VL_PLACEHOLDER, error_detail: bool = False) -> str:
    """The same rendering as one string, each thumbnail replaced by `image_placeholder` (one per returned image).

    Args:
        result: the tool result.
        image_placeholder: text standing for each returned image (e.g. the model's vision placeholder);
            "" renders image results without images (titles and URLs only).
        error_detail: append the backend's error message to the paper's error sentence.

    Returns:
        The text that goes between <information> and </information>.
    """
    parts = []
    for block in information_blocks(result, with_images=bool(image_placeholder), error_detail=error_detail):
        parts.append(block["text"] if block["type"] == "text" else image_placeholder)
    return "".join(parts)


def tool_content(result: SearchResult, with_images: bool = True) -> str | list[dict[str, Any]]:
    """Content of a chat-template `tool` message: a plain string when there is no image, else content blocks."""
    blocks = information_blocks(result, with_images=with_images)
    if all(b["type"] == "text" for b in blocks):
        return "".join(b["text"] for b in blocks)
    return blocks
