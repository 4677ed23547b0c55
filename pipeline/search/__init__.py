"""Search tools (image_search, text_search), their backends (local indexes, SerpAPI web, paper replay) and the
content-addressed, replayable tool-result cache. `backends.py` is the base class, `registry.py` picks the backend of
each tool, `tools.py` runs calls through the cache (`cache.py`).

    from pipeline.search import SearchTools, SearchParams
    tools = SearchTools.from_params(params.search, root=Path("."))
    result = tools.text_search("capital of France")      # SearchResult(tool, query, hits, error, cache_key, from_cache)
    from pipeline.search.render import information_blocks, information_text
"""
from pipeline.search.config import CacheParams, CostParams, LocalParams, SearchParams, WebParams
from pipeline.search.types import ReplayMiss, SearchError, SearchHit, SearchResult
from pipeline.search.tools import SearchTools

__all__ = [
    "SearchTools",
    "SearchParams",
    "CacheParams",
    "LocalParams",
    "WebParams",
    "CostParams",
    "SearchResult",
    "SearchHit",
    "ReplayMiss",
    "SearchError",
]
