"""HTTP for the web backends and the image host: requests with retries and backoff (Retry-After honoured), a
per-host concurrency limit shared by every client of the process, and secrets scrubbed from every error message.

Reads/writes nothing but the network; raises `SearchError` with a message that names the call and never a key.
"""
from __future__ import annotations

import email.utils
import random
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from pipeline.search.types import SearchError

_SEMAPHORES: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SEM_LOCK = threading.Lock()


def _semaphore(host: str, limit: int) -> threading.BoundedSemaphore:
    with _SEM_LOCK:
        return _SEMAPHORES.setdefault((host, limit), threading.BoundedSemaphore(max(1, limit)))


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class HttpClient:
    """requests with retries/backoff, a per-host semaphore and secret scrubbing of every error message."""

    def __init__(self, timeout_s: float, retries: int, backoff_s: float, concurrency: int, secrets: list[str] | None = None):
        self.timeout_s, self.retries, self.backoff_s, self.concurrency = timeout_s, retries, backoff_s, concurrency
        self._secrets = [s for s in (secrets or []) if s]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"HttpClient(timeout_s={self.timeout_s}, retries={self.retries}, concurrency={self.concurrency})"

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _session(self):
        import requests

        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    @staticmethod
    def _retry_after(resp) -> float | None:
        value = resp.headers.get("Retry-After")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value)
            return max(0.0, parsed.timestamp() - time.time()) if parsed else None

    def request(self, method: str, url: str, what: str, **kwargs) -> Any:
        """Send with retries; return the `requests.Response` of a 2xx, else raise SearchError (no secrets inside).
        `what` names the call in messages (e.g. "SerpAPI google"); URLs in messages lose their query string."""
        import requests

        safe_url = url.split("?", 1)[0]
        last = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff_s * (2 ** attempt) * (0.5 + random.random() / 2)
            try:
                with _semaphore(_host(url), self.concurrency):
                    resp = self._session().request(method, url, timeout=self.timeout_s, **kwargs)
            except requests.Timeout:
                last = f"{what}: timed out after {self.timeout_s:g} s ({safe_url})"
            except requests.RequestException as exc:
                last = f"{what}: connection failed ({type(exc).__name__}, {safe_url})"
            else:
                if resp.status_code < 300:
                    return resp
                body = self.scrub(resp.text[:200].replace("\n", " "))
                last = f"{what}: HTTP {resp.status_code} from {safe_url}: {body}"
                if resp.status_code != 429 and resp.status_code < 500:
                    raise SearchError(self.scrub(last))
                retry_after = self._retry_after(resp)
                if retry_after is not None:
                    wait = min(retry_after, 60.0)
            if attempt < self.retries:
                time.sleep(wait)
        raise SearchError(self.scrub(last + f" (gave up after {self.retries + 1} attempts)"))

    def get_json(self, url: str, what: str, **kwargs) -> Any:
        resp = self.request("GET", url, what, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise SearchError(f"{what}: response is not JSON ({resp.text[:80]!r}...)") from None
