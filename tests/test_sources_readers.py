"""Readers: the MMSearch-R1 fixture (5 rows with images, answers, aliases), a Hugging Face dataset from a local
folder (save_to_disk and a parquet data folder), and a CSV with a column mapping."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from pipeline.config import ParamsError, build
from pipeline.images import ImageParams
from pipeline.gather import read_source
from pipeline.gather.base import SourceParams
from pipeline.gather.collect import gather_rows
from pipeline.gather.mmsearch_r1 import question_from_prompt

from shared_fixtures import MMSEARCH_R1_MINI, shared_fixture

FIXTURE = shared_fixture(MMSEARCH_R1_MINI)


def png(seed: int, size=(24, 16)) -> bytes:
    arr = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_mmsearch_r1_fixture_all_rows():
    if not FIXTURE.exists():
        pytest.skip(f"fixture not present: {FIXTURE} (set MMSC_SHARED_FIXTURES)")
    params = SourceParams(kind="mmsearch_r1", path=str(FIXTURE))
    result = gather_rows(read_source(params), "mmsearch_r1", ImageParams(), scheduler="synchronous")
    items = result.splits["items"]
    assert result.rows_in == 5 and len(items) == 5 and not result.quarantine
    assert [i["answer"] for i in items] == ["Spain", "Gautama Buddha", "Order of Hospitallers", "Tuileries Palace", "Portugal"]
    assert items[0]["question"] == "What is the country of origin of this food?"
    assert "Kingdom of Spain" in items[0]["aliases"] and "Spain" not in items[0]["aliases"]
    assert {"Buddha", "Shakyamuni"} <= set(items[1]["aliases"])
    assert items[3]["aliases"] == ["Palais des Tuileries"]
    for item in items:
        img = Image.open(io.BytesIO(item["image"]["bytes"]))
        assert img.mode == "RGB" and min(img.size) > 100
        meta = json.loads(item["meta"])
        assert meta["data_source"] == "mmsearch_r1/infoseek_train_split" and meta["n_images"] == 1
    assert len({i["id"] for i in items}) == 5


def test_question_from_paper_style_prompt():
    prompt = [{"role": "user", "content": "<image>Answer the user's question based on the image.\nYou may search: "
               "use <search><img></search> ...\n\nQuestion: Who designed this bridge?"}]
    assert question_from_prompt(prompt) == "Who designed this bridge?"
    assert question_from_prompt([{"role": "user", "content": "<image>\nWhat is this?"}]) == "What is this?"
    assert question_from_prompt([{"role": "system", "content": "x"}]) is None


@pytest.fixture(scope="module")
def hf_rows():
    return [
        {"q": "What colour dominates?", "a": "red", "alts": ["crimson"], "img": {"bytes": png(1), "path": None}, "uid": "r1"},
        {"q": "What colour dominates?", "a": "blue", "alts": [], "img": {"bytes": png(2), "path": None}, "uid": "r2"},
        {"q": "", "a": "green", "alts": [], "img": {"bytes": png(3), "path": None}, "uid": "r3"},
        {"q": "Broken?", "a": "yes", "alts": [], "img": {"bytes": b"GIF89a-not-really", "path": None}, "uid": "r4"},
    ]


FEATURES = datasets.Features({"q": datasets.Value("string"), "a": datasets.Value("string"),
                              "alts": datasets.Sequence(datasets.Value("string")), "img": datasets.Image(),
                              "uid": datasets.Value("string")})
MAPPING = {"question": "q", "answer": "a", "aliases": "alts", "image": "img", "id": "uid"}


def _check_hf(result):
    items = result.splits["items"]
    assert [json.loads(i["meta"])["source_id"] for i in items] == ["r1", "r2"]
    assert items[0]["aliases"] == ["crimson"] and items[0]["answer"] == "red"
    assert {q["reason"] for q in result.quarantine} == {"missing_question", "image_unreadable"}
    assert "'test:2'" in next(q["detail"] for q in result.quarantine if q["reason"] == "missing_question")


def test_hf_save_to_disk_folder(tmp_path, hf_rows):
    folder = tmp_path / "ds"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(hf_rows, features=FEATURES)}).save_to_disk(str(folder))
    params = SourceParams(kind="hf", path=str(folder), split="test", columns=MAPPING, license="CC-BY-4.0")
    result = gather_rows(read_source(params), "hfdisk", ImageParams(), scheduler="synchronous")
    _check_hf(result)
    assert result.splits["items"][0]["license"] == "CC-BY-4.0"


def test_hf_parquet_folder_via_load_dataset(tmp_path, hf_rows):
    folder = tmp_path / "repo"
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_list(hf_rows, features=FEATURES).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    params = SourceParams(kind="hf", path=str(folder), split="test", columns=MAPPING)
    result = gather_rows(read_source(params), "hfparquet", ImageParams(), scheduler="synchronous")
    _check_hf(result)


def test_hf_by_name_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="not available offline.*unset HF_HUB_OFFLINE"):
        list(read_source(SourceParams(kind="hf", name="no-such-owner/no-such-dataset-xyz")))


def test_local_csv_with_mapping_and_image_root(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png(5))
    (tmp_path / "pics" / "b.png").write_bytes(png(6))
    (tmp_path / "table.csv").write_bytes(
        "key,image_file,prompt,gold,alts,topic\n"
        "k1,a.png,What is it?,noise,\"[\"\"static\"\"]\",tests\n"
        "k2,b.png,What else?,,[],tests\n".encode()
    )
    params = build(SourceParams, {"kind": "local", "path": str(tmp_path / "table.csv"), "image_root": str(tmp_path / "pics"),
                                  "columns": {"id": "key", "image": "image_file", "question": "prompt", "answer": "gold",
                                              "aliases": "alts", "category": "topic"}})
    result = gather_rows(read_source(params), "csv", ImageParams(), scheduler="synchronous")
    (item,) = result.splits["items"]
    assert item["aliases"] == ["static"] and item["category"] == "tests" and item["question"] == "What is it?"
    assert [q["reason"] for q in result.quarantine] == ["missing_answer"]
    assert "table.csv:3" in result.quarantine[0]["detail"]


def test_source_params_are_checked():
    with pytest.raises(ParamsError, match="unknown item field 'questoin'"):
        build(SourceParams, {"kind": "local", "path": "x", "columns": {"questoin": "q"}})
    with pytest.raises(ParamsError, match="needs path"):
        build(SourceParams, {"kind": "mmsearch_r1"})
