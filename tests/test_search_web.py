"""Web backends against an HTTP server on 127.0.0.1 started by the test (SerpAPI JSON shapes, a Jina-style reader, an
OpenAI-compatible summariser): success, 429 then success, timeout, malformed JSON, empty results, provider errors,
and that the API key never reaches the cache, results, errors or reprs."""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.config import build
from pipeline.search import SearchParams, SearchTools
from pipeline.search.render import information_text

KEY = "sk-test-SECRET-0123456789"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
)
LONG_PAGE = "Lima is the capital of Peru. " + "Filler sentence about nothing. " * 2000  # > 30,000 characters


def _qs(path: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}


@pytest.fixture
def world(loopback_server, monkeypatch, tmp_path):
    """One loopback server playing SerpAPI, the reader, the summariser and a thumbnail host."""
    state = {"n429": 0, "summaries": []}

    def handler(req):
        path = urlsplit(req.path).path
        if path == "/search.json":
            q = _qs(req.path)
            if q.get("api_key") != KEY:
                return 401, {"error": "Invalid API key"}
            if q["engine"] == "google_lens":
                base = q["url"].rsplit("/", 1)[0]
                return 200, {"search_metadata": {"status": "Success"}, "visual_matches": [
                    {"position": i + 1, "title": f"Flag of Peru {i}", "link": f"https://pages.example/{i}",
                     "source": "example", "thumbnail": f"{base}/thumb/{i}.png"} for i in range(7)]}
            text = q["q"]
            if text == "rate limited":
                state["n429"] += 1
                if state["n429"] == 1:
                    return 429, {"error": "Too many requests"}, {"Retry-After": "0"}
            if text == "slow":
                time.sleep(1.5)
            if text == "malformed":
                return 200, "{not json", {"Content-Type": "application/json"}
            if text == "nothing":
                return 200, {"search_metadata": {"status": "Success"},
                             "error": "Google hasn't returned any results for this query."}
            if text == "empty list":
                return 200, {"organic_results": []}
            if text == "server down":
                return 503, f"upstream failure for key {KEY}"
            return 200, {"organic_results": [
                {"position": i + 1, "title": f"Result {i} for {text}", "link": f"https://pages.example/{i}",
                 "snippet": f"snippet {i}"} for i in range(int(q.get("num", 10)))]}
        if path.startswith("/reader/"):
            return 200, LONG_PAGE, {"Content-Type": "text/plain"}
        if path == "/v1/chat/completions":
            body = req.json()
            state["summaries"].append(body)
            return 200, {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "<think>hmm</think>Lima is the capital. One. Two. Three. Four. Five. Six."}}]}
        if path.startswith("/img/thumb/"):
            return 200, PNG, {"Content-Type": "image/png"}
        return 404, {"error": "not found"}

    url = loopback_server(handler)
    monkeypatch.setenv("SERPAPI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    def tools(mode="cache_first", **web):
        params = build(SearchParams, {
            "image_backend": "serpapi", "text_backend": "serpapi", "k_text": 3,
            "cache": {"mode": mode, "path": "web.sqlite"},
            "web": {"serpapi_base_url": f"{url}/search.json", "reader_base_url": f"{url}/reader/",
                    "summarizer_base_url": f"{url}/v1", "summarizer_model": "tiny", "timeout_s": 0.5,
                    "retries": 1, "backoff_s": 0.01, **web},
        })
        return SearchTools(params, tmp_path)

    return url, state, tools, loopback_server.requests[url]


def test_text_search_success_reads_and_summarises(world, tmp_path):
    url, state, tools, log = world
    t = tools()
    r = t.text_search("capital of Peru")
    assert r.error == "" and [h.title for h in r.hits] == [f"Result {i} for capital of peru" for i in range(3)]
    assert r.hits[0].url == "https://pages.example/0"
    assert r.hits[0].snippet == "Lima is the capital. One. Two. Three. Four."  # <= 5 sentences, no thinking
    prompt = state["summaries"][0]["messages"][1]["content"]
    assert "capital of peru" in prompt and "at most 5 sentences" in prompt
    assert prompt.count("Filler sentence") < LONG_PAGE.count("Filler sentence")  # only the first 30,000 chars
    assert len(prompt) < 30_000 + 1000
    assert "(https://pages.example/0) Result 0" in information_text(r)
    assert t.metrics()["est_cost_usd"] > 0 and t.metrics()["live_calls"] == 1
    # replay: same result, no request
    before = len(log)
    again = tools(mode="replay_only").text_search("Capital of  Peru")
    assert again.hits == r.hits and again.from_cache and len(log) == before


def test_rate_limit_then_success(world):
    _, state, tools, log = world
    r = tools(summarize=False).text_search("rate limited")
    assert r.error == "" and len(r.hits) == 3 and r.hits[0].snippet == "snippet 0"
    assert state["n429"] == 2


def test_timeout_is_an_error_recorded_not_served(world):
    _, _, tools, _ = world
    t = tools(summarize=False)
    r = t.text_search("slow")
    assert "timed out" in r.error and r.hits == []
    assert t.cache.failure(r.cache_key) and t.cache.get(r.cache_key) is None
    assert t.metrics()["errors"] == 1


def test_malformed_json_and_server_errors(world):
    _, _, tools, _ = world
    t = tools(summarize=False)
    bad = t.text_search("malformed")
    assert "not JSON" in bad.error
    down = t.text_search("server down")
    assert "HTTP 503" in down.error and "gave up after 2 attempts" in down.error
    assert KEY not in down.error and "***" in down.error  # the provider echoed the key; it is scrubbed


@pytest.mark.parametrize("query", ["nothing", "empty list"])
def test_empty_results_are_results(world, query):
    _, _, tools, _ = world
    t = tools(summarize=False)
    r = t.text_search(query)
    assert r.error == "" and r.hits == []
    assert information_text(r).startswith("[Text Search Results] No relevant results")
    assert t.cache.get(r.cache_key) is not None  # an empty answer is a valid, cacheable answer


def test_lens_image_search_with_thumbnails(world):
    url, _, tools, _ = world
    t = tools()
    r = t.image_search(PNG, context={"image_url": f"{url}/img/query.png"})
    assert r.error == "" and len(r.hits) == 5 and r.n_images == 5
    assert r.hits[0].title == "Flag of Peru 0" and r.hits[0].thumbnail == PNG
    text = information_text(r, image_placeholder="<IMG>")
    assert text.count("<IMG>") == 5 and "title: Flag of Peru 4" in text
    missing = t.image_search(PNG + b"x")
    assert "public image URL" in missing.error


def test_missing_or_wrong_key_and_no_secret_anywhere(world, monkeypatch, tmp_path):
    _, _, tools, log = world
    t = tools(summarize=False)
    ok = t.text_search("capital of Peru")
    r2 = t.image_search(PNG, context={"image_url": f"{world[0]}/img/q.png"})
    assert ok.error == "" and r2.error == ""
    assert any(KEY in req.path for req in log)  # the key was really sent to the provider
    export = tmp_path / "export.parquet"
    t.cache.export_parquet(export)
    for f in [tmp_path / "web.sqlite", tmp_path / "web.sqlite-wal", export]:
        if f.exists():
            assert KEY.encode() not in f.read_bytes()
    for obj in (t, ok, r2, t.backend("text_search"), t.metrics()):
        assert KEY not in repr(obj)
    monkeypatch.setenv("SERPAPI_API_KEY", "wrong-key")
    wrong = tools(summarize=False).text_search("another query")
    assert "HTTP 401" in wrong.error and "wrong-key" not in wrong.error
    monkeypatch.delenv("SERPAPI_API_KEY")
    unset = tools(summarize=False).text_search("third query")
    assert "SERPAPI_API_KEY is not set" in unset.error
