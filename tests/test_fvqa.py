"""FVQA as released (lmms-lab/FVQA): a parquet written here in exactly the released schema goes through gather,
dedup and label; `data_id` and the paper's `category` (its search label) survive as the item's meta `data_id` and
`reference_label`, and the label stage reports agreement and a confusion table against it."""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import build

from shared_fixtures import MMSEARCH_R1_MINI, require_shared_fixture

# The released files' columns and Arrow types (fvqa_{train,test}.parquet).
FVQA_SCHEMA = pa.schema([
    ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
    ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.null())]))),
    ("reward_model", pa.struct([("candidate_answers", pa.string()), ("ground_truth", pa.string()), ("style", pa.string())])),
    ("data_source", pa.string()),
    ("image_urls", pa.null()),
    ("data_id", pa.string()),
    ("category", pa.string()),
])
TEMPLATE = ("Answer the user's question based on the provided image. You may call image search with "
            "<search><img></search> or text search with <text_search>...</text_search>.\n\nQuestion: {q}")


def picture(seed: int, fmt: str) -> bytes:
    arr = (np.random.default_rng(seed).random((48, 64, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def fvqa_row(n: int, question: str, answer: str, aliases: list[str], category: str, image: bytes | None,
             data_id: str | None = None, template: bool = False) -> dict:
    text = TEMPLATE.format(q=question) if template else question
    return {
        "prompt": [{"content": ("<image>" if template else "") + text, "role": "user"}],
        "images": None if image is None else [{"bytes": image, "path": None}],
        "reward_model": {"candidate_answers": json.dumps(aliases), "ground_truth": answer, "style": "rule"},
        "data_source": "mmsearch_r1/fvqa_train",
        "image_urls": None,
        "data_id": data_id or f"fvqa_train_{n}",
        "category": category,
    }


ROWS = [
    fvqa_row(0, "What is the name of the system shown in the image?", "namus", [], "search_free", picture(0, "PNG")),
    fvqa_row(1, "What is the location of this building?", "Rubjerg Knude", ["Rubjerg Knude"], "search_required",
             picture(1, "JPEG")),
    fvqa_row(2, "Which historic county does this building belong to?", "Cheshire", ["Cheshire", "County of Chester"],
             "search_required", picture(2, "JPEG"), template=True),
    fvqa_row(3, "Who built this?", "nobody", [], "search_free", None),  # no image: quarantined
    fvqa_row(4, "What animal is this?", "okapi", ["Okapia johnstoni"], "search_required", picture(4, "PNG")),
    fvqa_row(5, "A second row with an id already used?", "x", [], "search_free", picture(5, "PNG"),
             data_id="fvqa_train_1"),
]


def write_fvqa(path: Path, rows=ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=FVQA_SCHEMA), path)
    return path


def gather(root: Path, name: str, path: Path) -> dict:
    from stages import gather as stage

    params = build(stage.Params, {"out_dir": str(root / "data/gather"), "scheduler": "synchronous",
                                  "sources": {name: {"kind": "mmsearch_r1", "path": str(path)}}})
    assert stage.run(params, argparse.Namespace(source=name)) == 0
    return json.loads((root / f"data/gather/{name}/metrics.json").read_text())


def test_released_schema_gathers_with_data_id_and_reference_label(tmp_path):
    path = write_fvqa(tmp_path / "fvqa_train.parquet")
    assert pq.read_schema(path).remove_metadata().equals(FVQA_SCHEMA)
    m = gather(tmp_path, "fvqa", path)
    assert m["rows_in"] == 6 and m["items_out"] == 4 and m["counts_add_up"]
    assert m["quarantined_by_reason"] == {"duplicate_id": 1, "image_missing": 1}
    items = pq.read_table(tmp_path / "data/gather/fvqa/items.parquet").to_pylist()
    metas = [json.loads(i["meta"]) for i in items]
    assert [mt["data_id"] for mt in metas] == ["fvqa_train_0", "fvqa_train_1", "fvqa_train_2", "fvqa_train_4"]
    assert [mt["reference_label"] for mt in metas] == ["search_free", "search_required", "search_required", "search_required"]
    assert all(mt["source_id"] == mt["data_id"] and mt["data_source"] == "mmsearch_r1/fvqa_train" for mt in metas)
    # the paper's label is a reference, not the item's category (balance stratifies by category)
    assert {i["category"] for i in items} == {"fvqa"}
    assert items[0]["question"] == "What is the name of the system shown in the image?"
    assert items[2]["question"] == "Which historic county does this building belong to?"  # template removed
    assert items[2]["aliases"] == ["County of Chester"] and items[3]["aliases"] == ["Okapia johnstoni"]
    assert items[1]["answer"] == "Rubjerg Knude" and items[1]["aliases"] == []
    for it in items:
        assert Image.open(io.BytesIO(it["image"]["bytes"])).size == (64, 48)
    quarantine = pq.read_table(tmp_path / "data/gather/fvqa/quarantine.parquet").to_pylist()
    dup = next(q for q in quarantine if q["reason"] == "duplicate_id")
    assert "fvqa_train_1" in dup["detail"] and "fvqa_train.parquet:5" in dup["detail"]
    assert "fvqa_train.parquet:3" in next(q["detail"] for q in quarantine if q["reason"] == "image_missing")


def test_older_verl_fixture_has_no_reference_label(tmp_path):
    fixture = require_shared_fixture(MMSEARCH_R1_MINI)
    m = gather(tmp_path, "mini", fixture)
    assert m["items_out"] == 5
    items = pq.read_table(tmp_path / "data/gather/mini/items.parquet").to_pylist()
    assert all("reference_label" not in json.loads(i["meta"]) and "data_id" not in json.loads(i["meta"]) for i in items)
    assert {i["category"] for i in items} == {"mini"}


def test_reference_survives_dedup_and_label_reports_agreement(tmp_path):
    import datasets

    from pipeline.io import read_json
    from pipeline.schema import ROLLOUT_FEATURES, write_table
    from stages import dedup, label

    gather(tmp_path, "fvqa", write_fvqa(tmp_path / "raw/fvqa_train.parquet"))
    dedup.run(build(dedup.Params, {"sources": ["fvqa"], "gather_dir": str(tmp_path / "data/gather"),
                                   "out_dir": str(tmp_path / "data/dedup"), "cache_dir": "", "scheduler": "synchronous"}),
              argparse.Namespace(root=str(tmp_path)))
    items = pq.read_table(tmp_path / "data/dedup/items.parquet").to_pylist()
    by_data_id = {json.loads(i["meta"])["data_id"]: i for i in items}
    assert set(by_data_id) == {"fvqa_train_0", "fvqa_train_1", "fvqa_train_2", "fvqa_train_4"}
    assert json.loads(by_data_id["fvqa_train_2"]["meta"])["reference_label"] == "search_required"

    # ours: 0 search_free (agrees), 1 image_search_required (agrees), 2 search_free (theirs: required), 4 unanswerable
    plan = {"fvqa_train_0": [("closed_book", True, 0)], "fvqa_train_1": [("closed_book", False, 0), ("tools", True, 1)],
            "fvqa_train_2": [("closed_book", True, 0)], "fvqa_train_4": [("closed_book", False, 0), ("tools", False, 1)]}
    # four samples per condition: enough for rule 2's posterior to settle 4/4 as pass and 0/4 as fail
    base = {k: None for k in ROLLOUT_FEATURES}
    for cond in ("closed_book", "tools"):
        rows = [{**base, "rollout_id": f"{by_data_id[d]['id']}/{cond}/{k}", "item_id": by_data_id[d]["id"], "condition": c,
                 "sample": k, "model": "m", "protocol": "mmsearch_r1", "saw_image": True, "messages": "[]",
                 "actions": ["answer"], "tool_calls": "[]", "n_image_search": img, "n_text_search": 0,
                 "final_answer": "", "correct": ok, "judge": "em", "valid_format": True, "prompt_tokens": 1,
                 "completion_tokens": 1, "latency_s": 0.0, "error": ""}
                for d, rs in plan.items() for c, ok, img in rs if c == cond for k in range(4)]
        write_table(datasets.Dataset.from_list(rows, features=ROLLOUT_FEATURES).data.table,
                    tmp_path / "data/probe" / cond / "evidence.parquet")
    params = label.Params(items=str(tmp_path / "data/dedup/items.parquet"), probe_dir=str(tmp_path / "data/probe"),
                          out_dir=str(tmp_path / "data/label"))
    assert label.run(params, argparse.Namespace()) == 0
    ref = read_json(tmp_path / "data/label/metrics.json")["reference"]
    assert ref["items"] == 4 and ref["compared"] == 3 and ref["not_probed"] == 0 and ref["unrecognised"] == 0
    assert ref["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert ref["kappa"] == pytest.approx(0.4, abs=1e-4)  # p_o = 2/3, p_e = (2*1 + 1*2) / 9
    assert ref["confusion"] == {
        "ours_search_free": {"theirs_search_free": 1, "theirs_search_required": 1},
        "ours_search_required": {"theirs_search_free": 0, "theirs_search_required": 1},
        "ours_unanswerable": {"theirs_search_free": 0, "theirs_search_required": 1},
        "ours_uncertain": {"theirs_search_free": 0, "theirs_search_required": 0},
    }
    rows = {r["data_id"]: r for r in pq.read_table(tmp_path / "data/label/reference.parquet").to_pylist()}
    assert rows["fvqa_train_2"] == {"id": by_data_id["fvqa_train_2"]["id"], "data_id": "fvqa_train_2",
                                    "reference_label": "search_required", "reference": "search_required",
                                    "label": "search_free", "ours": "search_free", "agree": False}
    assert rows["fvqa_train_1"]["label"] == "image_search_required" and rows["fvqa_train_1"]["agree"] is True
    assert rows["fvqa_train_4"]["ours"] == "unanswerable" and rows["fvqa_train_4"]["agree"] is None


def test_compare_without_reference_and_with_odd_values():
    from pipeline.curate.reference import collapse, compare
    from pipeline.gather.mmsearch_r1 import reference_label

    # our own veRL export: `category` is the item category, extra_info.label our label (a reference on re-import)
    assert reference_label("visual", {"label": "text_search_required"}) == "text_search_required"
    assert reference_label("search_free", {"label": "text_search_required"}) == "search_free"
    assert reference_label("visual", {"label": "other"}) is None and reference_label(None, {}) is None

    assert collapse("Search-Required") == "search_required" and collapse("text_search_required") == "search_required"
    assert collapse("search free") == "search_free" and collapse("unanswerable") is None and collapse(3) is None
    m, rows = compare([{"id": "a", "meta": "{}"}, {"id": "b", "meta": json.dumps({"width": 3})}], {"a": "search_free"})
    assert rows == [] and m["items"] == 0 and m["agreement"] is None and m["kappa"] is None
    items = [{"id": "a", "meta": json.dumps({"reference_label": "maybe"})},
             {"id": "b", "meta": json.dumps({"reference_label": "search_free"})},
             {"id": "c", "meta": json.dumps({"reference_label": "search_free"})}]
    m, rows = compare(items, {"a": "search_free", "b": "search_free"})
    assert m["items"] == 3 and m["unrecognised"] == 1 and m["not_probed"] == 1 and m["compared"] == 1
    assert m["agreement"] == 1.0 and m["kappa"] == 1.0  # one class only on both sides: perfect, by definition
    assert [r["agree"] for r in rows] == [None, True, None]


def test_dataset_card_shows_the_agreement(tmp_path):
    """The card's agreement section comes from the label metrics' `reference` (absent when no item has one)."""
    from pipeline.curate.reference import compare
    from pipeline.io import write_json
    from pipeline.publish.build import build_dataset
    from stages.publish import Params as PublishParams
    from test_publish_world import make_world

    make_world(tmp_path, with_label_metrics=True)
    p = build(PublishParams, {"verify_load": False})
    assert "Agreement with the source's reference label" not in (build_dataset(p, tmp_path).folder / "README.md").read_text()
    items = [{"id": str(i), "meta": json.dumps({"reference_label": ref, "data_id": f"fvqa_train_{i}"})}
             for i, ref in enumerate(["search_free", "search_required", "search_required", "search_free", "search_required"])]
    ours = {"0": "search_free", "1": "text_search_required", "2": "search_free", "3": "search_free", "4": "unanswerable"}
    reference, _ = compare(items, ours)
    write_json({"labelled": 20, "reference": reference}, tmp_path / "data/label/metrics.json")
    card = (build_dataset(p, tmp_path).folder / "README.md").read_text()
    section = card[card.index("## Agreement with the source's reference label"):]
    assert "5 items carry a reference search label" in section and "Over the 4 items compared" in section
    assert "agrees with the reference on 75.0% (Cohen's kappa 0.5)" in section
    assert "| ours \\ reference | `search_free` | `search_required` |" in section
    assert "| `search_free` | 2 | 1 |" in section and "| `search_required` | 0 | 1 |" in section
    assert "| `unanswerable` | 0 | 1 |" in section
