"""`SearchTools`: the two search tools (image_search, text_search) behind the one content-addressed cache.

Every call: normalise the input -> key (tool, backend, backend version, input) -> cache per mode -> backend on a
miss (live / cache_first) -> store success, record failure. Counters (hits, misses, errors, live calls, estimated
cost) feed the stage metrics. Reads the local indexes or web services through the backends; writes the cache file.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.search.backends import Backend
from pipeline.search.cache import SearchCache, cache_key
from pipeline.search.config import SearchParams
from pipeline.search.registry import make_backend
from pipeline.search.types import TOOLS, ReplayMiss, SearchError, SearchResult


class SearchTools:
    """Image and text search through the cache. Thread-safe; use one instance per process."""

    def __init__(self, params: SearchParams, root: Path = Path("."), *, backends: Mapping[str, Backend] | None = None,
                 cache: SearchCache | None = None):
        self.params = params
        self.root = Path(root)
        self.mode = params.cache.mode
        self.cache = cache or SearchCache(self.root / params.cache.path, params.cache.busy_timeout_s)
        self._backends: dict[str, Backend] = dict(backends or {})
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Lock] = {}
        self._counts = {t: {"calls": 0, "hits": 0, "misses": 0, "errors": 0, "live_calls": 0, "replay_misses": 0,
                            "est_cost_usd": 0.0} for t in TOOLS}

    @classmethod
    def from_params(cls, params: SearchParams, root: Path = Path(".")) -> "SearchTools":
        return cls(params, root)

    def __repr__(self) -> str:
        return f"SearchTools(mode={self.mode!r}, image={self.params.image_backend!r}, text={self.params.text_backend!r}, cache={self.cache!r})"

    # -- tools -------------------------------------------------------------------------------------------------
    def image_search(self, image: bytes, k: int | None = None, *, context: Mapping[str, Any] | None = None) -> SearchResult:
        """Search the web (or the local image index) with the item's image.

        Args:
            image: encoded query image (PNG/JPEG bytes).
            k: number of results (default: params.k_image).
            context: the item's meta (e.g. {"data_id": ...} for the paper_replay backend, {"image_url": ...} for Lens).

        Returns:
            A SearchResult whose hits carry a title, a URL and a thumbnail each; `error` set when the search failed.
        """
        return self._call("image_search", image, k or self.params.k_image, context)

    def text_search(self, query: str, k: int | None = None, *, context: Mapping[str, Any] | None = None) -> SearchResult:
        """Search the web (or the local passage index) with a text query.

        Args:
            query: the query text written by the model.
            k: number of results (default: params.k_text).
            context: unused by the built-in backends; passed through for custom ones.

        Returns:
            A SearchResult whose hits carry a title, a URL and a short passage or summary each.
        """
        return self._call("text_search", query, k or self.params.k_text, context)

    def run_many(self, calls: Sequence[tuple], k: int | None = None) -> list[SearchResult]:
        """Run calls concurrently (params.concurrency threads) through the cache; results in the order given.

        Each call is (tool, input) or (tool, input, context) with tool "image_search" (input: bytes) or
        "text_search" (input: str). In replay_only mode a miss raises ReplayMiss (after the other calls finish).
        """
        def one(call: tuple) -> SearchResult:
            tool, value = call[0], call[1]
            context = call[2] if len(call) > 2 else None
            if tool == "image_search":
                return self.image_search(value, k, context=context)
            if tool == "text_search":
                return self.text_search(value, k, context=context)
            raise ValueError(f"unknown tool {tool!r} in run_many; expected image_search or text_search")

        if len(calls) <= 1 or self.params.concurrency <= 1:
            return [one(c) for c in calls]
        with ThreadPoolExecutor(max_workers=self.params.concurrency, thread_name_prefix="search") as pool:
            futures = [pool.submit(one, c) for c in calls]
            return [f.result() for f in futures]

    def metrics(self) -> dict[str, Any]:
        """Counters since this object was made: totals and per tool (calls, hits, misses, errors, live_calls,
        replay_misses, est_cost_usd), plus the cache mode and the cache's entry counts."""
        with self._lock:
            per_tool = {t: dict(c) for t, c in self._counts.items()}
        total = {key: sum(c[key] for c in per_tool.values()) for key in next(iter(per_tool.values()))}
        total["est_cost_usd"] = round(total["est_cost_usd"], 6)
        total["hit_rate"] = round(total["hits"] / total["calls"], 4) if total["calls"] else 0.0
        return {**total, "mode": self.mode, "per_tool": per_tool, "cache": self.cache.stats()}

    def backend(self, tool: str) -> Backend:
        with self._lock:
            if tool not in self._backends:
                self._backends[tool] = make_backend(tool, self.params, self.root, self.cache)
            return self._backends[tool]

    def close(self) -> None:
        self.cache.close()

    # -- the one call path -------------------------------------------------------------------------------------
    def _count(self, tool: str, **inc: float) -> None:
        with self._lock:
            for key, v in inc.items():
                self._counts[tool][key] += v

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._inflight.setdefault(key, threading.Lock())

    def _call(self, tool: str, value: Any, k: int, context: Mapping[str, Any] | None) -> SearchResult:
        self._count(tool, calls=1)
        backend = self.backend(tool)
        try:
            norm = backend.normalized_input(value, context)
            query = backend.describe(value, context)
        except ValueError as exc:  # undecodable image, missing data_id: the call cannot even be keyed
            self._count(tool, errors=1)
            return SearchResult(tool=tool, query=str(value)[:200] if isinstance(value, str) else "", error=str(exc),
                                backend=backend.name)
        try:
            version = backend.version()
        except FileNotFoundError as exc:
            if self.mode != "replay_only":
                self._count(tool, errors=1)
                return SearchResult(tool=tool, query=query, error=str(exc), backend=backend.name)
            version = None  # replay on a machine without the index: find the entry by input (see _replay_lookup)
        key = cache_key(tool, backend.name, version, norm) if version is not None else ""

        if self.mode != "live":
            hit = self.cache.get(key, k) if key else self._replay_lookup(tool, backend.name, norm, k)
            if hit is not None:
                self._count(tool, hits=1)
                return hit
            self._count(tool, misses=1)
            if self.mode == "replay_only":
                self._count(tool, replay_misses=1)
                last = self.cache.failure(key) if key else None
                raise ReplayMiss(
                    f"replay_only: no cached {tool} result for key {key or '(index version unknown)'} "
                    f"(backend {backend.name}, input {norm[:120]!r}, k={k})"
                    + (f"; the last live call failed: {last}" if last else "")
                    + ". Fill the cache with search.cache.mode=cache_first, or import a cache that has it."
                )
        else:
            self._count(tool, misses=1)

        with self._key_lock(key):  # identical concurrent calls: one backend call, the others read the cache
            if self.mode != "live":
                hit = self.cache.get(key, k)
                if hit is not None:
                    self._count(tool, misses=-1, hits=1)
                    return hit
            self._count(tool, live_calls=1, est_cost_usd=backend.cost_per_call)
            try:
                # text backends get the normalised query, so one key always means one backend input
                hits = backend.search(norm if tool == "text_search" else value, k, context)
            except (SearchError, ValueError, OSError) as exc:
                self._count(tool, errors=1)
                self.cache.record_failure(key, tool, backend.name, version, norm, query, str(exc))
                return SearchResult(tool=tool, query=query, error=str(exc), cache_key=key, backend=backend.name)
            hits = hits[:k]
            self.cache.put(key, tool, backend.name, version, norm, query, k, hits)
            return SearchResult(tool=tool, query=query, hits=hits, cache_key=key, from_cache=False, backend=backend.name)

    def _replay_lookup(self, tool: str, backend: str, norm: str, k: int) -> SearchResult | None:
        """The cached entry for (tool, backend, input) whatever its version, when exactly one version exists."""
        rows = self.cache._con().execute(
            "SELECT key FROM results WHERE tool=? AND backend=? AND input=?", (tool, backend, norm)
        ).fetchall()
        return self.cache.get(rows[0][0], k) if len(rows) == 1 else None
