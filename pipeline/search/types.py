"""Result types every search backend, the cache and the renderers share. Reads/writes nothing."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

TOOLS = ("image_search", "text_search")


@dataclasses.dataclass
class SearchHit:
    """One search result: a web page (or corpus entry) with its title, URL, a short passage and an optional thumbnail."""

    title: str
    url: str = ""
    snippet: str = ""
    thumbnail: bytes | None = None  # encoded image (PNG/JPEG) for image-search results; None when there is none

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "url": self.url, "snippet": self.snippet, "thumbnail": self.thumbnail}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchHit":
        return cls(title=d.get("title") or "", url=d.get("url") or "", snippet=d.get("snippet") or "", thumbnail=d.get("thumbnail"))

    def __repr__(self) -> str:  # thumbnails are bytes: keep reprs and logs short
        thumb = f"<{len(self.thumbnail)} bytes>" if self.thumbnail else None
        return f"SearchHit(title={self.title!r}, url={self.url!r}, snippet={self.snippet[:60]!r}, thumbnail={thumb})"


@dataclasses.dataclass
class SearchResult:
    """What one tool call returned.

    `error` is "" on success; on failure `hits` is empty and `error` says what went wrong (never a secret).
    `query` is the text query, or for image search a short description of the query image ("image sha256=...").
    `cache_key` is the content address of the call (see pipeline.search.cache.cache_key); `from_cache` tells whether
    the result was served from the cache rather than a live backend call.
    """

    tool: str
    query: str
    hits: list[SearchHit] = dataclasses.field(default_factory=list)
    error: str = ""
    cache_key: str = ""
    from_cache: bool = False
    backend: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def n_images(self) -> int:
        """Number of thumbnails returned (= number of image blocks / placeholders when rendered with images)."""
        return sum(1 for h in self.hits if h.thumbnail)

    def summary(self) -> dict[str, Any]:
        """JSON-able digest for rollout evidence: {tool, query, cache_key, error, n_results, titles}."""
        return {
            "tool": self.tool,
            "query": self.query,
            "cache_key": self.cache_key,
            "error": self.error,
            "n_results": len(self.hits),
            "titles": [h.title for h in self.hits],
        }


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


class ReplayMiss(LookupError):
    """replay_only mode found no cached result for a call; the message names the key and the input."""


class SearchError(RuntimeError):
    """A backend failed (network, provider error, bad response); the message is safe to log (no secrets)."""
