"""Search tools: rendering, the cache (keys, modes, replay, failures, multi-process, parquet, paper format), the
local text and image indexes on corpora built from packaged data, the index and search stages."""
from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import build
from pipeline.search import ReplayMiss, SearchHit, SearchParams, SearchResult, SearchTools
from pipeline.search.backends import Backend
from pipeline.search.cache import SearchCache, cache_key
from pipeline.search.normalize import normalize_query
from pipeline.search.render import ERROR_TEXT, IMAGE_HEADER, TEXT_HEADER, information_blocks, information_text, tool_content

REPO = Path(__file__).resolve().parents[1]
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
)


# ---------------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------------
def _img_result(n_with_thumb: int, n_without: int) -> SearchResult:
    hits = [SearchHit(f"Page {i}", f"https://e.org/{i}", "", thumbnail=PNG + bytes([i])) for i in range(n_with_thumb)]
    hits += [SearchHit(f"Bare {i}", "", "") for i in range(n_without)]
    return SearchResult("image_search", "img", hits)


@pytest.mark.parametrize("with_thumb,without", [(5, 0), (3, 2), (0, 2)])
def test_image_rendering_one_image_block_and_placeholder_per_thumbnail(with_thumb, without):
    r = _img_result(with_thumb, without)
    blocks = information_blocks(r, with_images=True)
    images = [b for b in blocks if b["type"] == "image"]
    assert [b["image"] for b in images] == [h.thumbnail for h in r.hits if h.thumbnail]
    assert all(a["type"] != b["type"] or a["type"] == "image" for a, b in zip(blocks, blocks[1:]))  # texts merged
    text = information_text(r, image_placeholder="<IMG>")
    assert text.startswith(IMAGE_HEADER)
    assert text.count("<IMG>") == with_thumb
    for i, h in enumerate(r.hits, 1):
        assert f"{i}. " in text and h.title in text
    assert text.count("url: https://e.org/") == with_thumb
    assert not any(b["type"] == "image" for b in information_blocks(r, with_images=False))
    assert "<IMG>" not in information_text(r, image_placeholder="")


def test_text_and_error_rendering():
    r = SearchResult("text_search", "q", [SearchHit("France", "https://w/France", "France is a country.\n Its capital is Paris.")])
    text = information_text(r)
    assert text == TEXT_HEADER + "1. (https://w/France) France: France is a country. Its capital is Paris.\n"
    assert tool_content(r) == text
    err = SearchResult("image_search", "q", error="HTTP 500 from host")
    assert information_text(err) == f"[Image Search Results] {ERROR_TEXT}"
    assert "HTTP 500" in information_text(err, error_detail=True)
    empty = SearchResult("text_search", "q", [])
    assert information_text(empty).startswith("[Text Search Results] No relevant results")
    assert isinstance(tool_content(_img_result(2, 0)), list)


# ---------------------------------------------------------------------------------------------------------------
# cache with a counting in-process backend
# ---------------------------------------------------------------------------------------------------------------
class CountingText(Backend):
    """A real backend over a fixed dict; counts calls; fails on queries containing 'fail'."""

    tool, name = "text_search", "dict"

    def __init__(self, version="1"):
        self.calls, self._v = 0, version

    def version(self):
        return self._v

    def search(self, value, k, context=None):
        self.calls += 1
        if "fail" in value:
            from pipeline.search import SearchError

            raise SearchError("provider said no")
        return [SearchHit(f"{value} #{i}", f"https://e.org/{value}/{i}", f"about {value}") for i in range(k)]


def _tools(tmp_path, mode="cache_first", backend=None, **kw):
    params = build(SearchParams, {"cache": {"mode": mode, "path": "c.sqlite"}, **kw})
    return SearchTools(params, tmp_path, backends={"text_search": backend or CountingText()})


def test_key_is_content_addressed():
    base = cache_key("text_search", "local", "v1", "capital of france")
    assert base == cache_key("text_search", "local", "v1", normalize_query("  Capital of   FRANCE "))
    assert len({base, cache_key("image_search", "local", "v1", "capital of france"),
                cache_key("text_search", "serpapi", "v1", "capital of france"),
                cache_key("text_search", "local", "v2", "capital of france")}) == 4


def test_cache_first_then_replay_only_identical_and_no_backend(tmp_path):
    b = CountingText()
    t = _tools(tmp_path, backend=b)
    queries = ["capital of France", "who wrote Hamlet", "capital of  france", "tallest mountain"]
    first = t.run_many([("text_search", q) for q in queries])
    assert b.calls == 3  # the two spellings of the France query share a key
    assert t.metrics()["hits"] + t.metrics()["misses"] == 4
    t.close()

    class Unreachable(CountingText):
        def search(self, value, k, context=None):
            raise AssertionError("replay_only must never call the backend")

    r = _tools(tmp_path, mode="replay_only", backend=Unreachable())
    again = r.run_many([("text_search", q) for q in queries])
    assert [(x.cache_key, x.hits) for x in again] == [(x.cache_key, x.hits) for x in first]
    assert all(x.from_cache for x in again)
    m = r.metrics()
    assert m["misses"] == 0 and m["hits"] == 4 and m["live_calls"] == 0
    with pytest.raises(ReplayMiss) as exc:
        r.text_search("never asked")
    key = cache_key("text_search", "dict", "1", "never asked")
    assert key in str(exc.value)
    # asking for more results than were stored is a miss too
    with pytest.raises(ReplayMiss):
        r.text_search("capital of France", k=9)


def test_failures_recorded_not_served_and_live_overwrites(tmp_path):
    b = CountingText()
    t = _tools(tmp_path, backend=b)
    r1 = t.text_search("please fail")
    assert r1.error == "provider said no" and not r1.hits and not r1.from_cache
    r2 = t.text_search("please fail")
    assert b.calls == 2 and r2.error  # the failure was not served from the cache
    assert t.cache.failure(r1.cache_key) == "provider said no"
    assert t.metrics()["errors"] == 2 and t.cache.stats()["failures"] == 1
    with pytest.raises(ReplayMiss, match="provider said no"):
        _tools(tmp_path, mode="replay_only", backend=b).text_search("please fail")
    live = _tools(tmp_path, mode="live", backend=b)
    live.text_search("ok")
    live.text_search("ok")
    assert b.calls == 4


def _writer(path: str, worker: int, n: int) -> None:
    cache = SearchCache(path, busy_timeout_s=60)
    for i in range(n):
        key = cache_key("text_search", "mp", "1", f"w{worker}-q{i}")
        cache.put(key, "text_search", "mp", "1", f"w{worker}-q{i}", f"q{i}", 3,
                  [SearchHit(f"t{worker}-{i}", "u", "s", thumbnail=bytes([worker, i % 256]) * 50)])


def test_four_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "mp.sqlite")
    SearchCache(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = SearchCache(path)
    assert cache.stats()["entries"] == 600
    got = cache.get(cache_key("text_search", "mp", "1", "w3-q149"))
    assert got.hits[0].title == "t3-149" and got.hits[0].thumbnail == bytes([3, 149]) * 50


def test_parquet_export_import_roundtrip_and_datasets_loads(tmp_path):
    import datasets

    t = _tools(tmp_path)
    t.run_many([("text_search", q) for q in ("alpha", "beta", "gamma")])
    t.cache.put(cache_key("image_search", "x", "1", "img"), "image_search", "x", "1", "img", "img", 2,
                [SearchHit("Flag", "u", "", thumbnail=PNG), SearchHit("No thumb", "", "")])
    out = tmp_path / "export.parquet"
    assert t.cache.export_parquet(out) == 4
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train")
    assert ds.num_rows == 4 and set(ds.column_names) >= {"key", "tool", "backend", "backend_version", "input", "hits"}
    row = [r for r in ds if r["tool"] == "image_search"][0]
    assert row["hits"][0]["thumbnail"].size == (1, 1) and row["hits"][1]["thumbnail"] is None
    t.cache.export_parquet(tmp_path / "again.parquet")
    assert (tmp_path / "again.parquet").read_bytes() == out.read_bytes()  # deterministic

    fresh = SearchCache(tmp_path / "fresh.sqlite")
    assert fresh.import_parquet(out) == {"imported": 4, "rejected": 0}
    assert sorted(fresh.keys()) == sorted(t.cache.keys())
    img = fresh.get(cache_key("image_search", "x", "1", "img"))
    assert img.hits[0].thumbnail == PNG and img.hits[1].thumbnail is None
    # a row whose key does not match its content is rejected
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    tampered = table.set_column(table.schema.get_field_index("input"), "input",
                                [["tampered"] * table.num_rows])
    pq.write_table(tampered, tmp_path / "bad.parquet")
    assert SearchCache(tmp_path / "bad.sqlite").import_parquet(tmp_path / "bad.parquet") == {"imported": 0, "rejected": 4}


def test_paper_cache_import_and_replay_by_data_id(tmp_path):
    paper = {
        "fvqa_train_67": {"tool_returned_web_title_list": ["Södertälje city - Wikidata", "B", "C"],
                          "tool_returned_images_urls": ["https://img/1.jpg", "https://img/2.jpg", "https://img/3.jpg"]},
        "fvqa_train_68": {"tool_returned_web_title_list": ["Only"], "tool_returned_images_urls": ["https://img/x.jpg"]},
        "broken": {"something": 1},
    }
    pkl = tmp_path / "cache.pkl"
    pkl.write_bytes(pickle.dumps(paper))
    params = build(SearchParams, {"image_backend": "paper_replay", "cache": {"mode": "replay_only", "path": "c.sqlite"}})
    tools = SearchTools(params, tmp_path)
    report = tools.cache.import_paper_cache(pkl)
    assert (report["imported"], report["rejected"], report["urls_without_image"]) == (2, 1, 4)
    assert report["problems"] == ["data_id broken: rejected: entry lacks the lists 'tool_returned_web_title_list' "
                                  "and 'tool_returned_images_urls'"]
    r = tools.image_search(PNG, context={"data_id": "fvqa_train_67"})
    assert [h.title for h in r.hits] == ["Södertälje city - Wikidata", "B", "C"] and r.from_cache
    assert r.hits[0].url == "https://img/1.jpg" and r.n_images == 0
    assert "1. title: Södertälje city - Wikidata" in information_text(r)
    with pytest.raises(ReplayMiss, match="data_id=unknown"):
        tools.image_search(PNG, context={"data_id": "unknown"})
    no_id = tools.image_search(PNG)
    assert "data_id" in no_id.error
    # a pickle that smuggles a class is refused
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"x": Path("/")}))
    with pytest.raises(pickle.UnpicklingError):
        tools.cache.import_paper_cache(tmp_path / "evil.pkl")


# ---------------------------------------------------------------------------------------------------------------
# local indexes on corpora built from packaged data (flagpy, countryinfo, offline Wikipedia summaries)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def packaged_world(tmp_path_factory):
    from packaged_corpora import packaged_corpora
    from stages.index import Params, run

    root = tmp_path_factory.mktemp("world")
    pairs = packaged_corpora(root / "data" / "corpora", max_wiki=1500)
    assert run(Params(corpora_dir=str(root / "data/corpora"), out_dir=str(root / "data/index")), None) == 0
    return root, pairs


def test_index_stage_outputs_and_counts(packaged_world):
    import pyarrow.parquet as pq

    root, _ = packaged_world
    m = json.loads((root / "data/index/metrics.json").read_text())
    assert m["text"]["passages_in"] == m["text"]["passages_indexed"] + m["text"]["passages_excluded"]
    assert m["image"]["images_indexed"] == 195 and m["image"]["images_excluded"] == 0
    assert pq.read_table(root / "data/index/exclusions.parquet").num_rows == 0
    assert not (root / "data/index/image/.chunks").exists()


def test_local_text_search_finds_the_capital(packaged_world):
    root, pairs = packaged_world
    t = SearchTools(build(SearchParams, {"cache": {"path": "t.sqlite"}}), root)
    first = sum(cap.lower() in (t.text_search(f"What is the capital of {c}?").hits or [SearchHit("")])[0].snippet.lower()
                for c, cap in pairs)
    assert first / len(pairs) >= 0.9
    assert t.text_search("the of and").error == ""  # stopword-only queries still run
    assert t.text_search("zzzqqq nonexistentword").hits == []


def test_local_image_search_finds_rephotographed_flags(packaged_world):
    import pyarrow.parquet as pq

    from packaged_corpora import photo_like

    root, _ = packaged_world
    t = SearchTools(build(SearchParams, {"cache": {"path": "i.sqlite"}}), root)
    rows = pq.read_table(root / "data/corpora/images.parquet").to_pylist()[::3]  # 65 flags keep the test quick
    top1 = top5 = 0
    for i, row in enumerate(rows):
        r = t.image_search(photo_like(row["image"]["bytes"], seed=i))
        titles = [h.title for h in r.hits]
        assert len(titles) == 5 and r.n_images == 5
        top1 += titles[0] == row["title"]
        top5 += row["title"] in titles
    assert top1 / len(rows) >= 0.9 and top5 / len(rows) >= 0.98
    bad = t.image_search(b"not an image")
    assert bad.error and "decoded" in bad.error


def test_rerank_with_minilm_keeps_the_right_passage(packaged_world):
    root, pairs = packaged_world
    t = SearchTools(build(SearchParams, {"cache": {"path": "rr.sqlite"}, "local": {"rerank": True}}), root)
    base = SearchTools(build(SearchParams, {"cache": {"path": "rr.sqlite"}}), root)
    r = t.text_search("capital city of Peru")
    assert r.cache_key != base.text_search("capital city of Peru").cache_key  # rerank is part of the version
    assert any("Lima" in h.snippet for h in r.hits[:2])


def test_search_stage_cli(packaged_world, tmp_path):
    root, _ = packaged_world
    params = tmp_path / "params.yaml"
    params.write_text(f"search:\n  local:\n    index_dir: {root / 'data/index'}\n  cache:\n    path: {tmp_path / 'c.sqlite'}\n")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "stages", "search", "--params", str(params), "--query", "capital of Peru"],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("<information>[Text Search Results]") and "Lima" in out.stdout
    miss = subprocess.run([sys.executable, "-m", "stages", "search", "--params", str(params), "--query", "unseen",
                           "cache.mode=replay_only"], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert miss.returncode == 3 and "replay_only" in miss.stderr
