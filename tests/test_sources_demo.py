"""The demo world: deterministic, an answer key on every item that follows the measured knowledge, bootstrap entities
isolated, query images differ from corpus images yet look alike, corpora let a "capital of X" query reach the right
article, licences on every item."""
from __future__ import annotations

import collections
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.images import ImageParams
from pipeline.schema import read_items, validate_item
from pipeline.gather import demo_data
from pipeline.gather.demo import (COUNTRY_KINDS, KINDS, DemoParams, build_demo_world, country_fact, knows,
                                  load_knowledge, read_demo)

SMALL = DemoParams(seed=7).small()
FILES = ("gather/demo/items.parquet", "gather/demo/bootstrap.parquet", "gather/demo/quarantine.parquet",
         "gather/demo/metrics.json", "gather/demo/facts.parquet", "corpora/passages.parquet", "corpora/images.parquet")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    build_demo_world(root, SMALL, ImageParams(), scheduler="threads", num_workers=2, partition_size=8)
    return root


def test_counts_kinds_and_schema(world):
    metrics = json.loads((world / "gather/demo/metrics.json").read_text())
    items = read_items(world / "gather/demo/items.parquet")
    boot = read_items(world / "gather/demo/bootstrap.parquet")
    assert metrics["quarantined"] == 0 and metrics["counts_add_up"]
    assert metrics["items_out"] == len(items) and metrics["bootstrap_out"] == len(boot)
    got = collections.Counter((c, json.loads(m)["expected_need"]) for c, m in zip(items["category"], items["meta"]))
    want = {k: v for k, v in SMALL.counts().items() if v}
    assert {k: got[k] for k in want} == want
    assert got[("visual", "visual")] == SMALL.visual and sum(v for (c, _), v in got.items() if c == "photo_fact") == 2
    assert sum(got.values()) == sum(want.values()) + SMALL.visual + 2
    for row in pq.read_table(world / "gather/demo/items.parquet").to_pylist():
        validate_item(row)
        assert row["license"] and row["image_sha1"] and row["source"] == "demo"
    assert len(set(items["id"])) == len(items)
    # 4 bootstrap countries x every country kind they have an item for (at least the two identity kinds), + 2 visual
    assert 4 * 2 + 2 <= len(boot) <= 4 * len(COUNTRY_KINDS) + 2
    boot_needs = collections.Counter(json.loads(m)["expected_need"] for m in boot["meta"])
    assert boot_needs["none"] and boot_needs["text"] and boot_needs["image"] and boot_needs["mixed"]


def test_answer_key_follows_the_measured_knowledge(world):
    """none: the labeler knows the fact of the named country; text: it does not; image: the question asks the flag's
    country or a fact it knows about it; mixed: a fact it does not know about the flag's country."""
    knowledge = load_knowledge()
    rows = pq.read_table(world / "gather/demo/items.parquet").to_pylist()
    seen = set()
    for r in rows:
        meta = json.loads(r["meta"])
        need, kind = meta["expected_need"], r["category"]
        if kind not in KINDS:
            continue
        fact = KINDS[kind][1]
        seen.add(need)
        if need in ("none", "text"):
            assert r["entity"] in r["question"], r
        if need == "none":
            assert knows(knowledge, fact, r["entity"]) is True, r
        elif need == "text":
            assert knows(knowledge, fact, r["entity"]) is False, r
        elif need == "image":
            assert r["entity"] not in r["question"] and knows(knowledge, fact, r["entity"]) is True, r
        else:
            assert need == "mixed" and r["entity"] not in r["question"], r
            assert knows(knowledge, fact, r["entity"]) is False, r
    assert seen == {"none", "image", "text", "mixed"}


def test_known_slice_teaches_no_answer_a_search_item_needs(world):
    """facts.parquet holds exactly the facts the labeler knows (capital, region), and no text or mixed item asks one
    of them: the cold start re-teaches what the key calls known and nothing a search-required item needs."""
    import pandas as pd

    knowledge = load_knowledge()
    facts = pd.read_parquet(world / "gather/demo/facts.parquet")
    metrics = json.loads((world / "gather/demo/metrics.json").read_text())
    taught = set(zip(facts["entity"], facts["fact"]))
    assert len(taught) == metrics["known_facts"] > 0 and len(facts) == metrics["known_fact_questions"]
    # every fact in each phrasing, the probe's own question among them, all with the same statement and answer
    per_fact = facts.groupby(["entity", "fact"])
    assert (per_fact["question"].nunique() == 3).all() and (per_fact["statement"].nunique() == 1).all()
    capitals = facts[facts["fact"] == "capital"]
    asked = set(zip(capitals["entity"], capitals["question"]))
    assert all((e, KINDS["named_capital"][0].format(name=e)) in asked for e in set(capitals["entity"]))
    assert all(knows(knowledge, f, e) is True for e, f in taught)
    assert {f for _, f in taught} == {"capital", "region"}
    want = {(c.name, f) for c in demo_data.countries() for f in ("capital", "region")
            if knows(knowledge, f, c.name) is True and (c.capital if f == "capital" else c.region)}
    assert taught == want
    for e, st, a in zip(facts["entity"], facts["statement"], facts["answer"]):
        assert e in st and st.endswith(f"{a}.")
    rows = pq.read_table(world / "gather/demo/items.parquet").to_pylist() + \
        pq.read_table(world / "gather/demo/bootstrap.parquet").to_pylist()
    asked = [(r["entity"], KINDS[r["category"]][1], json.loads(r["meta"])["expected_need"]) for r in rows
             if r["category"] in KINDS]
    assert any(n == "none" and (e, f) in taught for e, f, n in asked)
    assert not [x for x in asked if x[2] in ("text", "mixed") and (x[0], x[1]) in taught]


def test_deterministic_and_independent_of_scheduler(world, tmp_path):
    build_demo_world(tmp_path, SMALL, ImageParams(), scheduler="synchronous", partition_size=3)
    for f in FILES:
        assert (world / f).read_bytes() == (tmp_path / f).read_bytes(), f


def test_seed_changes_the_world():
    a = [r["key"] for r in read_demo(SMALL) if r["split"] == "items"]
    b = [r["key"] for r in read_demo(DemoParams(seed=8).small()) if r["split"] == "items"]
    assert a != b and len(a) == len(b)  # other countries and images, same counts per kind


def test_bootstrap_entities_appear_in_no_other_item(world):
    items = read_items(world / "gather/demo/items.parquet")
    boot = read_items(world / "gather/demo/bootstrap.parquet")
    boot_entities = set(boot["entity"])
    assert boot_entities and not boot_entities & set(items["entity"])
    # nor in the text of other items (e.g. a famous_capital question naming the country)
    answers = set(items["answer"]) | {a for al in items["aliases"] for a in al}
    assert not boot_entities & answers
    assert not any(f"flag of {e}." in q for q in items["question"] for e in boot_entities)
    assert not set(boot["image_sha1"]) & set(items["image_sha1"])


def _thumb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((16, 8), Image.Resampling.BOX), dtype=np.float32).ravel()


def test_query_images_differ_from_corpus_but_look_alike(world):
    corpus = pq.read_table(world / "corpora/images.parquet").to_pylist()
    corpus_bytes = {r["image"]["bytes"] for r in corpus}
    flags = {r["entity"]: _thumb(r["image"]["bytes"]) for r in corpus if r["image_id"].startswith("flag-")}
    names = list(flags)
    matrix = np.stack([flags[n] for n in names])
    rows = [r for r in pq.read_table(world / "gather/demo/items.parquet").to_pylist()
            + pq.read_table(world / "gather/demo/bootstrap.parquet").to_pylist()
            if r["category"] in KINDS]
    assert len(rows) > 20
    hits = 0
    for r in rows:
        assert r["image"]["bytes"] not in corpus_bytes
        d = ((matrix - _thumb(r["image"]["bytes"])) ** 2).sum(axis=1)
        hits += names[int(d.argmin())] == r["entity"]
    # the nearest clean flag (16x8 colour thumbnail) is the right one for almost every re-photographed flag
    assert hits / len(rows) >= 0.85, hits / len(rows)
    # two items about the same country get different photos
    by_entity = collections.defaultdict(set)
    for r in rows:
        by_entity[r["entity"]].add(r["image_sha1"])
    assert all(len(v) == sum(1 for r in rows if r["entity"] == e) for e, v in by_entity.items())


def test_corpora_content(world):
    passages = pq.read_table(world / "corpora/passages.parquet").to_pylist()
    images = pq.read_table(world / "corpora/images.parquet").to_pylist()
    assert len({p["passage_id"] for p in passages}) == len(passages)
    items = read_items(world / "gather/demo/items.parquet").filter(lambda c: c.endswith("_capital"), input_columns="category")
    facts = {p["title"]: p for p in passages if p["passage_id"].startswith("facts-")}
    for row in items:
        p = facts[row["entity"]]
        assert f"The capital of {row['entity']} is {row['answer']}." in p["text"]
        assert p["url"].startswith("https://en.wikipedia.org/wiki/")
    wiki_titles = {p["title"] for p in passages if p["passage_id"].startswith("wiki-")}
    assert {"France", "United States", "Hubble Space Telescope", "NASA", "Moon"} <= wiki_titles
    assert all(p["license"] and p["text"] for p in passages)
    flag_entities = {r["entity"] for r in images if r["image_id"].startswith("flag-")}
    assert flag_entities == {c.name for c in demo_data.countries()}
    fr = next(r for r in images if r["entity"] == "France")
    assert fr["title"] == "Flag of France" and fr["url"] == "https://en.wikipedia.org/wiki/Flag_of_France"
    assert Image.open(io.BytesIO(fr["image"]["bytes"])).size == (180, 90)


def test_facts_and_aliases():
    by_name = {c.name: c for c in demo_data.countries()}
    us = by_name["United States"]
    q, a, aliases = country_fact("flag_country", us)
    assert a == "United States" and {"USA", "United States of America"} <= set(aliases)
    assert country_fact("flag_capital", by_name["France"])[1] == "Paris"
    assert country_fact("flag_currency", by_name["Japan"])[1:] == ("JPY", ["Japanese yen"])
    assert country_fact("named_capital", by_name["Peru"])[0] == "What is the capital city of Peru?"
    assert country_fact("named_region", by_name["India"])[1] == "Asia"
    assert country_fact("flag_capital", by_name["Vatican City"]) is None  # no capital in the packaged data
    assert len(by_name) >= 190
