"""veRL / MMSearch-R1 export: exactly the released file's Arrow schema for the shared columns, the item's content
in the right places, and a round trip through the gather source that imports this format."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import build
from pipeline.publish.build import build_dataset
from pipeline.publish.params import PublishParams
from pipeline.schema import LABELS
from pipeline.publish.verl import PLACEHOLDER_MMSEARCH_R1_PROMPT, VERL_SHARED_SCHEMA, VerlParams, candidate_answers, export_split
from test_publish_world import make_world

from shared_fixtures import MMSEARCH_R1_MINI, shared_fixture

FIXTURE = shared_fixture(MMSEARCH_R1_MINI)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("verl")
    splits = make_world(root)
    p = build(PublishParams, {"verify_load": False, "verl": {"prompt": "protocol"}})
    result = build_dataset(p, root)
    return root, splits, result


def _fixture_schema():
    if not FIXTURE.exists():
        pytest.skip(f"fixture {FIXTURE} not present in this checkout")
    return pq.read_schema(FIXTURE)


def test_shared_columns_have_exactly_the_fixture_schema(exported):
    root, splits, result = exported
    fixture = _fixture_schema()
    for split in splits:
        schema = pq.read_schema(root / "data/publish/verl" / f"{split}.parquet")
        for field in fixture:
            ours = schema.field(field.name)
            assert ours.type == field.type and str(ours.type) == str(field.type), field.name
            assert ours.nullable == field.nullable
        assert schema.names[: len(fixture.names)] == fixture.names
        assert schema.names[len(fixture.names):] == ["extra_info", "data_id", "category"]
    assert VERL_SHARED_SCHEMA.equals(fixture.remove_metadata())


def test_export_rows_carry_the_item(exported):
    root, splits, result = exported
    rows = pq.read_table(root / "data/publish/verl/train.parquet").to_pylist()
    items = [r for r in splits["train"]]
    assert [r["data_id"] for r in rows] == [i["id"] for i in items]
    for i, (row, item) in enumerate(zip(rows, items)):
        rm = row["reward_model"]
        assert rm["ground_truth"] == item["answer"] and rm["style"] == "rule"
        assert json.loads(rm["candidate_answers"]) == [item["answer"], *item["aliases"]]
        assert row["images"] == ([{"bytes": item["image"]["bytes"], "path": None}] if item["image"] else [])
        assert row["image_urls"] is None
        assert row["category"] == item["category"]
        assert row["data_source"] == f"mmsearch_r1/{item['source']}_train"
        assert len(row["prompt"]) == 1 and row["prompt"][0]["role"] == "user"
        text = row["prompt"][0]["content"]
        assert text.rstrip().endswith(f"Question: {item['question']}")
        assert "<answer>" in text and "<text_search>" in text  # the tag protocol's instruction
        assert text.startswith("<image>") == (item["image"] is not None)
        extra = row["extra_info"]
        assert extra["index"] == i and extra["split"] == "train" and extra["question"] == item["question"]
        assert extra["label"] == item["label"] and extra["cluster_id"] == item["cluster_id"]
        assert extra["image_url"] == json.loads(item["meta"])["url"]


def test_question_prompt_matches_the_released_layout(exported, tmp_path):
    root, splits, result = exported
    table = pq.read_table(next((result.folder / "data/default").glob("test-*.parquet")))
    out = tmp_path / "test.parquet"
    assert export_split(table, "test", out, VerlParams(prompt="question"), batch_rows=2) == len(table)
    rows = pq.read_table(out).to_pylist()
    assert [r["prompt"] for r in rows] == [[{"content": q, "role": "user"}] for q in table.column("question").to_pylist()]
    assert [r["extra_info"]["index"] for r in rows] == list(range(len(table)))  # continuous across batches
    assert [r["extra_info"]["label"] for r in rows] == [LABELS[i] for i in table.column("label").to_pylist()]


def test_candidate_answers_like_the_fixture():
    assert candidate_answers("España", ["ES", "España", "", "Spain"]) == '["Espa\\u00f1a", "ES", "Spain"]'
    if FIXTURE.exists():
        row = pq.read_table(FIXTURE).slice(0, 1).to_pylist()[0]["reward_model"]
        cands = json.loads(row["candidate_answers"])
        assert row["candidate_answers"] == json.dumps(cands)  # the released file uses the same JSON encoding
    assert "{question}" in PLACEHOLDER_MMSEARCH_R1_PROMPT


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_roundtrip_through_the_gather_importer(exported):
    sources = pytest.importorskip("pipeline.gather.mmsearch_r1")
    from pipeline.images import ImageParams
    from pipeline.gather.base import SourceParams
    from pipeline.gather.convert import process_row

    root, splits, result = exported
    params = SourceParams(kind="mmsearch_r1", path=str(root / "data/publish/verl/train.parquet"))
    imported = [process_row(raw, "reimport", ImageParams(format="png"), require_image=False) for raw in sources.read_mmsearch_r1(params)]
    assert [kind for kind, _ in imported] == ["item"] * len(splits["train"])
    for (_, got), want in zip(imported, splits["train"]):
        assert got["question"] == want["question"]
        assert got["answer"] == want["answer"]
        assert got["aliases"] == want["aliases"]
        assert got["category"] == want["category"]
        assert json.loads(got["meta"])["source_id"] == want["id"]
        if want["image"] is None:
            assert got["image"] is None
        else:
            assert np.array_equal(_pixels(got["image"]["bytes"]), _pixels(want["image"]["bytes"]))

    # the paper's own file imports with the same reader: its bare-question prompt is the question
    if FIXTURE.exists():
        raw = next(sources.read_mmsearch_r1(SourceParams(kind="mmsearch_r1", path=str(FIXTURE))))
        assert raw["question"] == "What is the country of origin of this food?"
