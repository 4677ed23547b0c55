"""Which backend serves which tool for a `search:` params section (the one place that knows every backend).

To add a backend: subclass `pipeline.search.backends.Backend` in its own module, add a branch here, and add its name
to the choices of `image_backend` / `text_backend` in `pipeline/search/config.py`. Reads/writes nothing.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.search.backends import Backend


def make_backend(tool: str, params, root: Path, cache=None) -> Backend:
    """The backend that serves `tool` under `params` (a SearchParams); paths are relative to `root`. `cache` (the
    SearchCache) keeps the public URLs of uploaded query images for Google Lens."""
    if tool == "image_search":
        choice = params.image_backend
        if choice == "local":
            from pipeline.search.local_image import LocalImageBackend

            return LocalImageBackend(root / params.local.index_dir / "image", params.local)
        if choice == "paper_replay":
            from pipeline.search.paper_replay import PaperReplayBackend

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
