"""The `paper_replay` image-search backend: the paper's released image-search cache, replayed offline.

Reads/writes nothing itself: the entries live in the search cache (imported with
`python -m stages search --import-paper-cache FILE`, see `SearchCache.import_paper_cache`).
"""
from __future__ import annotations

from typing import Any, Mapping

from pipeline.search.backends import Backend
from pipeline.search.cache import PAPER_REPLAY_BACKEND, PAPER_REPLAY_VERSION, paper_input
from pipeline.search.types import SearchError, SearchHit


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
