"""Web backends for users with keys: SerpAPI Google Lens (image search) and Google Search + page reader +
summariser (text search), all over plain HTTPS with timeouts, retries with backoff on 429/5xx/timeouts, and a
per-provider concurrency limit.

Providers (base URLs configurable in params.search.web, so tests point them at 127.0.0.1):
- SerpAPI `GET <serpapi_base_url>?engine=google_lens&url=<image url>&type=visual_matches&api_key=...` ->
  {"visual_matches": [{"position", "title", "link", "source", "thumbnail", ...}]}; `engine=google&q=...&num=k` ->
  {"organic_results": [{"position", "title", "link", "snippet", ...}]}; failures come as {"error": "..."}
  ("Google hasn't returned any results for this query." means an empty result, not a failure).
- Page reader (Jina Reader style): `GET <reader_base_url><page url>` -> the page as plain text/markdown.
- Summariser: OpenAI-compatible `POST <summarizer_base_url>/chat/completions`; the paper's rule: at most 5
  sentences from the first 30,000 characters of the page, with respect to the query.

Keys are read from the environment at call time (names in params) and never stored, logged, cached or put in an
error message or repr. Reads: the network. Writes: nothing (the cache is written by SearchTools).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping

from pipeline.search.backends import Backend
from pipeline.search.http import HttpClient
from pipeline.search.types import SearchError, SearchHit

WEB_VERSION = "web-v1"
NO_RESULTS_MARKERS = ("hasn't returned any results", "no results")

SUMMARY_SYSTEM = "You summarise web pages for a search engine. Answer with the summary only."
SUMMARY_PROMPT = (
    "Query: {query}\n\nWeb page ({url}):\n{page}\n\n"
    "Summarise the web page above with respect to the query in at most {n} sentences. Keep names, dates and numbers "
    "that bear on the query. If the page says nothing about the query, summarise its main content."
)


def thumbnail_fetcher(web) -> Callable[[str], bytes | None]:
    """url -> image bytes, through HttpClient (timeouts, retries, per-host limit) with `web`'s settings; None when
    the download fails or the body is not an image (dead thumbnail URLs are common in old caches)."""
    client = HttpClient(web.timeout_s, web.retries, web.backoff_s, web.concurrency)

    def fetch(url: str) -> bytes | None:
        import io

        from PIL import Image, UnidentifiedImageError

        try:
            data = client.request("GET", url, "thumbnail download").content
            Image.open(io.BytesIO(data)).verify()
        except (SearchError, UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return None
        return data

    return fetch


def _key(env_name: str, required: bool, what: str) -> str:
    value = os.environ.get(env_name, "") if env_name else ""
    if required and not value:
        raise SearchError(f"{what}: environment variable {env_name} is not set (put the API key there)")
    return value


class _WebBackend(Backend):
    name = "serpapi"

    def __init__(self, web, cost):
        self.web, self.cost = web, cost

    def _client(self) -> HttpClient:
        secrets = [_key(self.web.serpapi_key_env, False, ""), _key(self.web.reader_key_env, False, ""),
                   _key(self.web.summarizer_key_env, False, "")]
        return HttpClient(self.web.timeout_s, self.web.retries, self.web.backoff_s, self.web.concurrency, secrets)

    def _serpapi(self, client: HttpClient, params: dict, what: str) -> dict:
        key = _key(self.web.serpapi_key_env, True, what)
        data = client.get_json(self.web.serpapi_base_url, what, params={**params, "api_key": key})
        if not isinstance(data, dict):
            raise SearchError(f"{what}: expected a JSON object, got {type(data).__name__}")
        err = data.get("error")
        if err and not any(m in str(err).lower() for m in NO_RESULTS_MARKERS):
            raise SearchError(client.scrub(f"{what}: provider error: {err}"))
        return data

    def _thumbnail(self, client: HttpClient, url: str) -> bytes | None:
        if not url or not self.web.fetch_thumbnails:
            return None
        try:
            resp = client.request("GET", url, "thumbnail download")
        except SearchError:
            return None  # a result without its image still has a title; the renderer handles it
        return resp.content or None


class LensBackend(_WebBackend):
    """image_search through SerpAPI Google Lens. Lens needs a public image URL: the item's `image_url` (context) as
    it is, else the URL of the image uploaded once per `web.upload` (pipeline/search/image_host.py)."""

    tool = "image_search"

    def __init__(self, web, cost, store=None):
        from pipeline.search.image_host import ImageHost

        super().__init__(web, cost)
        self.host = ImageHost(web.upload, store, self._client)

    def version(self) -> str:
        return f"{WEB_VERSION}+google_lens+{self.web.lens_type}+{self.web.hl}-{self.web.gl}"

    @property
    def cost_per_call(self) -> float:  # type: ignore[override]
        return self.cost.serpapi_usd_per_call

    def search(self, value: Any, k: int, context: Mapping[str, Any] | None = None) -> list[SearchHit]:
        client = self._client()
        image_url = self.host.public_url(bytes(value), context)
        data = self._serpapi(client, {"engine": "google_lens", "url": image_url, "type": self.web.lens_type,
                                      "hl": self.web.hl, "country": self.web.gl}, "SerpAPI google_lens")
        matches = data.get("visual_matches") or data.get("exact_matches") or []
        if not isinstance(matches, list):
            raise SearchError("SerpAPI google_lens: visual_matches is not a list")
        hits = []
        for m in matches[:k]:
            if not isinstance(m, dict):
                continue
            title = str(m.get("title") or m.get("source") or "")
            hits.append(SearchHit(title=title, url=str(m.get("link") or ""), snippet=str(m.get("source") or ""),
                                  thumbnail=self._thumbnail(client, str(m.get("thumbnail") or ""))))
        return hits


class GoogleTextBackend(_WebBackend):
    """text_search through SerpAPI Google Search; each result page is read (reader) and summarised (chat endpoint),
    falling back to the provider's snippet when reading or summarising fails."""

    tool = "text_search"

    def version(self) -> str:
        summ = f"+summ-{self.web.summarizer_model}-{self.web.max_summary_sentences}s-{self.web.max_page_chars}c" if self.web.summarize else ""
        return f"{WEB_VERSION}+google+{self.web.hl}-{self.web.gl}{summ}"

    @property
    def cost_per_call(self) -> float:  # type: ignore[override]
        per_page = (self.cost.reader_usd_per_call + self.cost.summarizer_usd_per_call) if self.web.summarize else 0.0
        return self.cost.serpapi_usd_per_call + per_page * 5

    def search(self, value: Any, k: int, context: Mapping[str, Any] | None = None) -> list[SearchHit]:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("text_search needs a non-empty query")
        client = self._client()
        data = self._serpapi(client, {"engine": "google", "q": value, "num": k, "hl": self.web.hl, "gl": self.web.gl},
                             "SerpAPI google")
        organic = data.get("organic_results") or []
        if not isinstance(organic, list):
            raise SearchError("SerpAPI google: organic_results is not a list")
        hits = []
        for r in organic[:k]:
            if not isinstance(r, dict):
                continue
            link, snippet = str(r.get("link") or ""), str(r.get("snippet") or "")
            if self.web.summarize and link:
                snippet = self._summary(client, value, link) or snippet
            hits.append(SearchHit(title=str(r.get("title") or link), url=link, snippet=snippet))
        return hits

    def read_page(self, client: HttpClient, url: str) -> str:
        token = _key(self.web.reader_key_env, False, "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client.request("GET", self.web.reader_base_url + url, "page reader", headers=headers).text

    def summarize(self, client: HttpClient, query: str, url: str, page: str) -> str:
        token = _key(self.web.summarizer_key_env, False, "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {
            "model": self.web.summarizer_model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SUMMARY_SYSTEM},
                {"role": "user", "content": SUMMARY_PROMPT.format(query=query, url=url, n=self.web.max_summary_sentences,
                                                                   page=page[: self.web.max_page_chars])},
            ],
        }
        resp = client.request("POST", self.web.summarizer_base_url.rstrip("/") + "/chat/completions", "summariser",
                              json=body, headers=headers)
        try:
            text = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise SearchError("summariser: response is not an OpenAI chat completion") from None
        return limit_sentences(str(text or ""), self.web.max_summary_sentences)

    def _summary(self, client: HttpClient, query: str, url: str) -> str:
        try:
            page = self.read_page(client, url)
            return self.summarize(client, query, url, page) if page.strip() else ""
        except SearchError:
            return ""  # the search itself worked; this hit keeps the provider's snippet


def limit_sentences(text: str, n: int) -> str:
    """At most n sentences (split after . ! ? followed by a space), whitespace collapsed; thinking tags dropped."""
    import re

    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)
    text = " ".join(text.split())
    parts = re.split(r"(?<=[.!?])\s+", text)
    return " ".join(parts[:n]).strip()


