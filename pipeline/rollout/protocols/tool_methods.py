"""The tool methods an environment exposes to the model, one per tool name a protocol uses.

TRL builds each tool's JSON schema from the method's signature and docstring (and calls it with the parsed
arguments), and the native tool-calling protocol lists the same schemas in its prompt, so the probe's prompts and
TRL's are byte-identical. Each method hands the call to the environment's `_call` (the one tool step).
Reads and writes nothing.
"""
from __future__ import annotations

from pipeline.rollout.score import IMAGE_SEARCH, TEXT_SEARCH


def search(self, query: str = "") -> list:
    """Search the web with the question's image (reverse image search) and return the matching pages:
    titles, snippets and thumbnails.

    Args:
        query: Ignored; the image of the question is what is searched.
    """
    return self._call(IMAGE_SEARCH, "")


def image_search(self) -> list:
    """Search the web with the question's image (reverse image search) and return the matching pages: titles
    and thumbnails."""
    return self._call(IMAGE_SEARCH, "")


def text_search(self, query: str) -> list:
    """Search the web for a text query and return the most relevant passages.

    Args:
        query: What to search for, a few words.
    """
    return self._call(TEXT_SEARCH, query)


# method name (as the model calls the tool) -> method
TOOL_METHODS = {"search": search, "image_search": image_search, "text_search": text_search}
