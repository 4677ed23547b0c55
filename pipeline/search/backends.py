"""What a search backend is, and which backend serves which tool for a given `search` params section.

A backend turns one tool input into hits. It also says how its input is normalised for the cache key and which
version it is (a new index or algorithm = a new version = new cache keys). Heavy state (indexes, models, HTTP
clients) loads on the first search, so replaying from the cache never touches it. Reads/writes nothing itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.search.cache import PAPER_REPLAY_BACKEND, PAPER_REPLAY_VERSION, paper_input
from pipeline.search.normalize import describe_image, normalize_image, normalize_query
from pipeline.search.types import SearchError, SearchHit


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


class PaperReplayBackend(Backend):
    """The paper's released image-search cache, imported into our cache (see SearchCache.import_paper_cache).

    The paper keyed results by the dataset item's `data_id`, not by image content, so this backend's input is the
    item's `data_id` (from `context`, i.e. the item's meta). It has no live service: a call that the cache cannot
    answer fails with a message naming the data_id.
    """

    tool = "image_search"
    name = PAPER_REPLAY_BACKEND

    def version(self) -> str:
        return PAPER_REPLAY_VERSION

    def normalized_input(self, value: Any, context: Mapping[str, Any] | None = None) -> str:
        data_id = str((context or {}).get("data_id") or "")
        if not data_id:
            raise ValueError("image_backend=paper_replay needs the item's data_id (item meta key 'data_id')")
        return paper_input(data_id)

    def describe(self, value: Any, context: Mapping[str, Any] | None = None) -> str:
        return f"data_id {(context or {}).get('data_id', '')}"

    def search(self, value: Any, k: int, context: Mapping[str, Any] | None = None) -> list[SearchHit]:
        raise SearchError(
            f"paper_replay: no imported image-search result for data_id {(context or {}).get('data_id')!r}; "
            "import the paper's cache (python -m stages search --import-paper-cache FILE) or use another image_backend"
        )


def make_backend(tool: str, params, root: Path, cache=None) -> Backend:
    """The backend that serves `tool` under `params` (a SearchParams); paths are relative to `root`. `cache` (the
    SearchCache) keeps the public URLs of uploaded query images for Google Lens."""
    if tool == "image_search":
        choice = params.image_backend
        if choice == "local":
            from pipeline.search.local_image import LocalImageBackend

            return LocalImageBackend(root / params.local.index_dir / "image", params.local)
        if choice == "paper_replay":
            return PaperReplayBackend()
        if choice == "serpapi":
            from pipeline.search.web import LensBackend

            return LensBackend(params.web, params.cost, cache)
    elif tool == "text_search":
        choice = params.text_backend
        if choice == "local":
            from pipeline.search.local_text import LocalTextBackend

            return LocalTextBackend(root / params.local.index_dir / "text", params.local)
        if choice == "serpapi":
            from pipeline.search.web import GoogleTextBackend

            return GoogleTextBackend(params.web, params.cost)
    else:
        raise ValueError(f"unknown tool {tool!r}; expected image_search or text_search")
    raise ValueError(f"unknown backend {choice!r} for {tool}")
