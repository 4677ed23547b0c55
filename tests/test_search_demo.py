"""Acceptance on the demo world (pipeline/gather/demo.py): image search finds the entity of re-photographed query
images (top-1 >= 90%, top-5 >= 98%) and text search puts the right article first for "capital of X" (>= 90%)."""
from __future__ import annotations

import io

import pytest

from pipeline.config import build
from pipeline.search import SearchParams, SearchTools


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from pipeline.gather.demo import DemoParams, build_demo_world
    from stages.index import Params, run

    root = tmp_path_factory.mktemp("demo")
    params = DemoParams().small()
    build_demo_world(root / "data", params)
    assert run(Params(corpora_dir=str(root / "data/corpora"), out_dir=str(root / "data/index")), None) == 0
    tools = SearchTools(build(SearchParams, {"cache": {"path": "data/cache/search/cache.sqlite"}}), root)
    return root, params, tools


def test_image_search_on_demo_query_photos(demo):
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline.schema import read_items
    from pipeline.gather.rephoto import rephotograph

    root, params, tools = demo
    corpus = pq.read_table(root / "data/corpora/images.parquet").to_pylist()
    titles_of = {}
    for row in corpus:
        titles_of.setdefault(row["entity"], set()).add(row["title"])
    queries = []  # (image bytes, acceptable titles)
    for path in ("gather/demo/items.parquet", "gather/demo/bootstrap.parquet"):
        for item in read_items(root / "data" / path):
            if item["entity"] in titles_of and item["image"] is not None:
                buf = io.BytesIO()
                item["image"].convert("RGB").save(buf, format="PNG")
                queries.append((buf.getvalue(), titles_of[item["entity"]]))
    # plus one demo-style re-photograph (same jitter as the items) of every other corpus image
    for i, row in enumerate(corpus[::3]):
        img = Image.open(io.BytesIO(row["image"]["bytes"]))
        queries.append((rephotograph(img, seed=1000 + i, p=params.jitter), {row["title"]}))
    assert len(queries) >= 100
    top1 = top5 = 0
    misses = []
    for image, good in queries:
        r = tools.image_search(image)
        assert r.error == "", r.error
        titles = [h.title for h in r.hits]
        top1 += titles[0] in good
        top5 += bool(good & set(titles))
        if titles[0] not in good:
            misses.append((sorted(good)[0], titles[:3]))
    n = len(queries)
    assert top1 / n >= 0.90, (top1 / n, misses[:10])
    assert top5 / n >= 0.98, (top5 / n, misses[:10])


def test_text_search_capital_of_country_first(demo):
    import pyarrow.parquet as pq

    root, _, tools = demo
    facts = [r for r in pq.read_table(root / "data/corpora/passages.parquet").to_pylist() if r["passage_id"].startswith("facts-")]
    facts = [r for r in facts if "The capital of" in r["text"]]
    assert len(facts) >= 100
    first = 0
    for row in facts:
        r = tools.text_search(f"capital of {row['entity']}")
        first += bool(r.hits) and r.hits[0].url == row["url"]
    assert first / len(facts) >= 0.90, first / len(facts)
