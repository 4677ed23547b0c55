"""The label rule (pipeline/curate/label.py) on hand-made evidence, edge cases included, and the label stage's outputs."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from pipeline.curate.label import RULE_VERSION, RuleParams, label_item, label_items, settled


def R(cond, correct, img=0, txt=0, error="", item="a"):
    return {"item_id": item, "condition": cond, "correct": correct, "n_image_search": img, "n_text_search": txt,
            "error": error}


def test_closed_book_correct_is_search_free_even_when_tools_fail():
    lab = label_item("a", [R("closed_book", True), R("closed_book", False), R("tools", False, img=1)])
    assert lab["label"] == "search_free" and lab["rule_version"] == RULE_VERSION
    assert lab["pass_rate_closed_book"] == 0.5 and lab["pass_rate_tools"] == 0.0
    assert math.isnan(lab["pass_rate_image_only"]) and lab["n_rollouts"] == 3


def test_tools_rollout_that_chose_not_to_search_counts_as_search_free():
    lab = label_item("a", [R("closed_book", False), R("tools", True), R("tools", True, img=1)])
    assert lab["label"] == "search_free"


@pytest.mark.parametrize("rollouts, expected", [
    ([R("tools", True, img=1), R("tools", True, img=1), R("tools", True, txt=1)], "image_search_required"),
    ([R("tools", True, txt=2), R("tools", False, img=1)], "text_search_required"),
    ([R("tools", True, img=1, txt=1), R("tools", False)], "mixed_search_required"),
    # a tie goes to the cheaper kind
    ([R("tools", True, img=1), R("tools", True, txt=1)], "image_search_required"),
    ([R("tools", True, txt=1), R("tools", True, img=1, txt=1)], "text_search_required"),
    # image_only / text_only evidence counts like tools evidence
    ([R("closed_book", False), R("text_only", True, txt=1)], "text_search_required"),
])
def test_search_required_kind_by_votes_of_correct_searched_rollouts(rollouts, expected):
    lab = label_item("a", [R("closed_book", False), R("closed_book", False)] + rollouts)
    assert lab["label"] == expected
    assert 0.0 < lab["confidence"] <= 1.0


def test_unanswerable_and_engine_errors():
    lab = label_item("a", [R("closed_book", False), R("tools", False, img=1), R("tools", False)])
    assert lab["label"] == "unanswerable" and lab["confidence"] == pytest.approx(3 / 4)
    # an engine failure is not evidence; a tool failure is (the model had to cope)
    only_err = label_item("a", [R("closed_book", True, error="engine: out of memory")])
    assert only_err["label"] == "unanswerable" and only_err["n_rollouts"] == 0
    assert label_item("a", [])["reason"] == "no usable rollout"
    tool_err = label_item("a", [R("tools", True, img=1, error="image_search: timeout")])
    assert tool_err["label"] == "image_search_required"


def test_thresholds_change_the_label():
    ev = [R("closed_book", True), R("closed_book", False), R("closed_book", False), R("closed_book", False),
          R("tools", True, img=1), R("tools", True, img=1)]
    assert label_item("a", ev)["label"] == "search_free"
    strict = RuleParams(search_free_min_correct=2)
    assert label_item("a", ev, strict)["label"] == "image_search_required"
    assert label_item("a", ev, RuleParams(search_free_min_pass_rate=0.5))["label"] == "image_search_required"
    assert label_item("a", ev, RuleParams(search_free_min_correct=2, search_min_correct=3))["label"] == "unanswerable"
    with pytest.raises(ValueError):
        RuleParams(search_free_min_correct=0).validate()


def test_settled_for_adaptive_sampling():
    assert not settled("closed_book", [R("closed_book", False)])
    assert settled("closed_book", [R("closed_book", False), R("closed_book", True)])
    assert not settled("tools", [R("tools", True, img=1)])  # search-required kinds need every vote
    assert settled("tools", [R("tools", True)])
    assert not settled("closed_book", [R("closed_book", True)], RuleParams(search_free_min_pass_rate=0.5))


def test_label_items_keeps_order_and_groups():
    ev = [R("tools", True, img=1, item="b"), R("closed_book", True, item="a")]
    labs = label_items(ev, ["a", "b", "c"])
    assert [l["id"] for l in labs] == ["a", "b", "c"]
    assert [l["label"] for l in labs] == ["search_free", "image_search_required", "unanswerable"]


def test_label_stage_counts_in_equal_out_plus_excluded(tmp_path):
    import datasets
    import pyarrow.parquet as pq

    from pipeline.io import read_json
    from pipeline.schema import LABEL_FEATURES, ROLLOUT_FEATURES, write_items, write_table
    from stages.label import Params, run

    items = [{"id": i, "image": None, "image_sha1": "", "question": "q?", "answer": "x", "aliases": [],
              "source": "demo", "category": "c", "license": "MIT", "entity": "", "meta": "{}"} for i in "abcd"]
    write_items(items, tmp_path / "items.parquet")
    base = {k: None for k in ROLLOUT_FEATURES}
    ev = [R("closed_book", True, item="a"), R("closed_book", False, item="b"), R("closed_book", False, item="c"),
          R("tools", True, img=1, item="b"), R("tools", False, txt=1, item="c")]
    for cond in ("closed_book", "tools"):
        rows = [{**base, "rollout_id": f"{r['item_id']}/{cond}/{i}", "sample": i, "model": "m", "protocol": "p",
                 "saw_image": False, "messages": "[]", "actions": ["answer"], "tool_calls": "[]", "final_answer": "",
                 "judge": "em", "valid_format": True, "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.0,
                 **r} for i, r in enumerate(x for x in ev if x["condition"] == cond)]
        write_table(datasets.Dataset.from_list(rows, features=ROLLOUT_FEATURES).data.table,
                    tmp_path / "probe" / cond / "evidence.parquet")
    params = Params(items=str(tmp_path / "items.parquet"), probe_dir=str(tmp_path / "probe"),
                    out_dir=str(tmp_path / "label"))
    assert run(params, SimpleNamespace()) == 0
    labels = datasets.Dataset(pq.read_table(tmp_path / "label" / "labels.parquet"))
    assert labels.features["label"] == LABEL_FEATURES["label"]
    assert dict(zip(labels["id"], labels.features["label"].int2str(labels["label"]))) == {
        "a": "search_free", "b": "image_search_required"}
    excl = pq.read_table(tmp_path / "label" / "exclusions.parquet").to_pylist()
    assert {(e["id"], e["reason"]) for e in excl} == {("c", "unanswerable"), ("d", "not_probed")}
    m = read_json(tmp_path / "label" / "metrics.json")
    assert m["items_in"] == 4 == m["labelled"] + m["excluded"] and m["counts"]["unanswerable"] == 1
    assert m["shares"]["search_free"] == pytest.approx(1 / 3, abs=1e-3)
