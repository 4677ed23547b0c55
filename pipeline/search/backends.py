"""What a search backend is: the base class that every backend (local_image, local_text, web, paper_replay) extends.

A backend turns one tool input into hits. It also says how its input is normalised for the cache key and which
version it is (a new index or algorithm = a new version = new cache keys). Which backend serves which tool is
decided in `pipeline/search/registry.py`. Heavy state (indexes, models, HTTP clients) loads on the first search, so
replaying from the cache never touches it. Reads/writes nothing itself.
"""
from __future__ import annotations

from typing import Any, Mapping

from pipeline.search.normalize import describe_image, normalize_image, normalize_query
from pipeline.search.types import SearchHit


class Backend:
    """Base class: subclasses set `tool`, `name`, implement `version()` and `search()`."""

    tool = ""
    name = ""
    cost_per_call = 0.0  # estimated USD per live call (metrics only)

    def version(self) -> str:
        raise NotImplementedError

    def normalized_input(self, value: Any, context: Mapping[str, Any] | None = None) -> str:
        return normalize_image(value) if self.tool == "image_search" else normalize_query(value)

    def describe(self, value: Any, context: Mapping[str, Any] | None = None) -> str:
        return describe_image(value) if self.tool == "image_search" else str(value)

    def search(self, value: Any, k: int, context: Mapping[str, Any] | None = None) -> list[SearchHit]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tool={self.tool!r}, name={self.name!r})"
