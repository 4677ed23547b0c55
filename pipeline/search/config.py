"""`search:` section of params.yaml as dataclasses (backend per tool, k, cache, local index, web endpoints, costs)."""
from __future__ import annotations

import dataclasses
from typing import Literal

from pipeline.config import param

CacheMode = Literal["live", "cache_first", "replay_only"]


@dataclasses.dataclass
class CacheParams:
    mode: CacheMode = param(
        "cache_first",
        help="live: always call the backend and overwrite the cache; cache_first: serve hits, call the backend on a "
        "miss; replay_only: never call a backend, a miss is an error naming the key (offline, reproducible)",
    )
    path: str = param("data/cache/search/cache.sqlite", help="cache database (sqlite, WAL; safe for several processes)")
    busy_timeout_s: float = param(60.0, help="how long a writer waits for another process's lock before failing")

    def validate(self) -> None:
        if not self.path:
            raise ValueError("cache.path must be set (e.g. data/cache/search/cache.sqlite)")


@dataclasses.dataclass
class LocalParams:
    index_dir: str = param("data/index", help="folder the `index` stage wrote (text/ and image/ subfolders)")
    rerank: bool = param(False, help="re-rank the BM25 candidates of text search with the packaged MiniLM embedder")
    rerank_pool: int = param(20, help="BM25 candidates re-ranked when rerank is on")
    snippet_chars: int = param(400, help="passage characters returned per text hit (cut at a sentence end)")
    image_hash_weight: float = param(
        0.25, help="weight of perceptual-hash similarity added to the embedding cosine when ranking images"
    )
    threads: int = param(0, help="torch threads for query-time embedding (0: leave the process setting alone)")


@dataclasses.dataclass
class UploadParams:
    """Where query images without a public URL go, so that Google Lens can fetch them (pipeline/search/image_host.py)."""

    to: Literal["none", "hub", "fsspec", "post"] = param(
        "none",
        help="Google Lens needs a public image URL. An item's meta.image_url is used as it is; other images are "
        "uploaded once and their URL is remembered by the image's sha256 in the search cache. none: no upload (such "
        "calls fail with a clear error); hub: the dataset's Hub repo (repo_id; needs HF_HUB_OFFLINE=0 and a token); "
        "fsspec: any fsspec location (fsspec_url) served at public_url_template; post: an endpoint (post_url)",
    )
    repo_id: str = param("", help="hub: the dataset repo ORG/NAME (usually the one you publish to); it must be public for Lens to read the images")
    revision: str = param("main", help="hub: branch the images are committed to; the URLs name the commit, so they stay valid")
    folder: str = param("lens_images", help="hub: folder of the repo the images go to, as <sha256>.<ext>")
    fsspec_url: str = param("", help="fsspec: writable folder, e.g. s3://bucket/lens or gcs://bucket/lens (credentials from that filesystem's own environment)")
    public_url_template: str = param("", help="fsspec: public URL of an uploaded file; {name} = <sha256>.<ext>, e.g. https://bucket.s3.amazonaws.com/lens/{name}")
    post_url: str = param("", help="post: endpoint that takes the image bytes (POST) and answers JSON {\"url\": ...}")
    batch: int = param(256, help="hub: images per commit when uploading many at once (search --upload-images)")

    def validate(self) -> None:
        need = {"hub": ("repo_id",), "fsspec": ("fsspec_url", "public_url_template"), "post": ("post_url",)}
        missing = [k for k in need.get(self.to, ()) if not getattr(self, k)]
        if missing:
            raise ValueError(f"upload.to={self.to} needs upload.{missing[0]}")
        if self.to == "fsspec" and "{name}" not in self.public_url_template:
            raise ValueError("upload.public_url_template must contain {name} (the uploaded file's name)")
        if self.batch < 1:
            raise ValueError("upload.batch must be >= 1")


@dataclasses.dataclass
class WebParams:
    serpapi_base_url: str = param("https://serpapi.com/search.json", help="SerpAPI endpoint (Google Lens and Google Search)")
    serpapi_key_env: str = param("SERPAPI_API_KEY", help="name of the env var holding the SerpAPI key (never the key)")
    lens_type: str = param("visual_matches", help="SerpAPI google_lens `type`: all | products | exact_matches | visual_matches")
    hl: str = param("en", help="interface language sent to SerpAPI")
    gl: str = param("us", help="country sent to SerpAPI google (google_lens: `country`)")
    reader_base_url: str = param("https://r.jina.ai/", help="page reader: GET <base><page url> returns the page as text")
    reader_key_env: str = param("JINA_API_KEY", help="env var with the reader's bearer token (optional; unset = none)")
    summarizer_base_url: str = param(
        "http://127.0.0.1:8000/v1", help="OpenAI-compatible endpoint (e.g. a vLLM server) used to summarise pages"
    )
    summarizer_model: str = param("Qwen/Qwen3-32B", help="model name sent to the summariser (the paper used Qwen3-32B)")
    summarizer_key_env: str = param("OPENAI_API_KEY", help="env var with the summariser key (optional; unset = none)")
    summarize: bool = param(True, help="summarise each page with the chat endpoint; false: use the provider's snippet")
    max_page_chars: int = param(30000, help="page characters given to the summariser (paper: the first 30,000)")
    max_summary_sentences: int = param(5, help="summary length in sentences (paper: at most 5)")
    timeout_s: float = param(30.0, help="per-request timeout")
    retries: int = param(3, help="retries on timeouts, 429 and 5xx (with exponential backoff)")
    backoff_s: float = param(1.0, help="first backoff; doubles each retry; a Retry-After header wins when present")
    concurrency: int = param(4, help="at most this many requests in flight per provider (all threads of a process)")
    fetch_thumbnails: bool = param(True, help="download result thumbnails so image results carry images")
    upload: UploadParams = param(factory=UploadParams, help="public URLs for query images (Google Lens needs one)")


@dataclasses.dataclass
class CostParams:
    serpapi_usd_per_call: float = param(0.015, help="estimated cost of one SerpAPI search (for metrics only)")
    reader_usd_per_call: float = param(0.0, help="estimated cost of one page read")
    summarizer_usd_per_call: float = param(0.0, help="estimated cost of one summariser call")


@dataclasses.dataclass
class SearchParams:
    image_backend: Literal["local", "serpapi", "paper_replay"] = param(
        "local",
        help="local: image index built by `index`; serpapi: Google Lens; paper_replay: the paper's released "
        "image-search cache imported with `python -m stages search --import-paper-cache FILE` (keyed by the "
        "item's meta.data_id)",
    )
    text_backend: Literal["local", "serpapi"] = param(
        "local", help="local: BM25 index built by `index`; serpapi: Google Search + page reader + summariser"
    )
    k_image: int = param(5, help="image search results per call (paper: 5)")
    k_text: int = param(5, help="text search results per call (paper: 5)")
    concurrency: int = param(4, help="threads used by run_many (calls go through the cache concurrently)")
    cache: CacheParams = param(factory=CacheParams, help="tool-result cache")
    local: LocalParams = param(factory=LocalParams, help="local backends")
    web: WebParams = param(factory=WebParams, help="web backends (used only when chosen above)")
    cost: CostParams = param(factory=CostParams, help="estimated API cost per call")

    def validate(self) -> None:
        if self.k_image < 1 or self.k_text < 1:
            raise ValueError("k_image and k_text must be >= 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
