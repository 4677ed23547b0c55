"""The label rule (pipeline/curate/label.py) on hand-made evidence: the cascade, the Beta posterior that settles each
condition, uncertain and unanswerable items; the answer-key report; and the label stage's outputs."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from pipeline.curate.answer_key import compare, expected_label
from pipeline.curate.label import (FAIL, OPEN, PASS, RULE_VERSION, RuleParams, blind_ambiguous, decide,
                                   discount_guesses, label_item, label_items, p_pass, settle)


def R(cond, correct, img=0, txt=0, error="", item="a", saw=False):
    return {"item_id": item, "condition": cond, "correct": correct, "n_image_search": img, "n_text_search": txt,
            "error": error, "saw_image": saw, "model": "m"}


def many(cond, n_right, n_wrong, **kw):
    return [R(cond, True, **kw)] * n_right + [R(cond, False, **kw)] * n_wrong


def test_posterior_and_decisions():
    # Beta(s+1, f+1): 2/2 right -> P(p >= 0.5) = 1 - 0.5^3
    assert p_pass(2, 2, 0.5) == pytest.approx(0.875)
    assert p_pass(0, 2, 0.5) == pytest.approx(0.125)
    assert p_pass(1, 2, 0.5) == pytest.approx(0.5)
    rule = RuleParams()
    assert decide(2, 2, rule)[0] == PASS and decide(0, 2, rule)[0] == FAIL and decide(1, 2, rule)[0] == OPEN
    assert decide(2, 2, RuleParams(confidence=0.9))[0] == OPEN  # a stricter bound needs more samples
    assert decide(3, 3, RuleParams(confidence=0.9))[0] == PASS
    assert decide(5, 8, rule)[0] == OPEN and decide(7, 8, rule)[0] == PASS


def test_cascade_gives_the_cheapest_sufficient_condition():
    free = label_item("a", many("closed_book", 2, 0) + many("tools", 0, 2, img=1), RuleParams(blind_guesses=False))
    assert free["label"] == "search_free" and free["settled_by"] == "closed_book"
    assert free["rule_version"] == "2" and free["pass_rate_closed_book"] == 1.0  # rule 3 without its guard
    assert math.isnan(free["pass_rate_image_only"]) and math.isnan(free["ci_low_image_only"])
    assert 0 < free["ci_low_closed_book"] < free["ci_high_closed_book"] <= 1
    img = label_item("a", many("closed_book", 0, 2) + many("image_only", 2, 0, img=1))
    assert img["label"] == "image_search_required" and img["confidence"] == pytest.approx(0.875 * 0.875)
    txt = label_item("a", many("closed_book", 0, 2) + many("image_only", 0, 2, img=1) + many("text_only", 3, 1, txt=1))
    assert txt["label"] == "text_search_required" and txt["settled_by"] == "text_only"
    mixed = label_item("a", many("closed_book", 0, 2) + many("image_only", 0, 2, img=1) + many("text_only", 0, 2, txt=1)
                       + many("tools", 2, 0, img=1, txt=1))
    assert mixed["label"] == "mixed_search_required" and "tools 2/2 pass" in mixed["reason"]


@pytest.mark.parametrize("tools, expected", [
    (many("tools", 2, 0, img=1) + many("tools", 1, 0, txt=1), "image_search_required"),
    (many("tools", 3, 0, txt=2) + many("tools", 0, 1, img=1), "text_search_required"),
    (many("tools", 3, 0, img=1, txt=1), "mixed_search_required"),
    (many("tools", 1, 0, img=1) + many("tools", 1, 0, txt=1) + [R("tools", True, img=1, txt=1)], "image_search_required"),
])
def test_tools_alone_votes_for_the_kind(tools, expected):
    """Without image_only / text_only evidence (the classic closed_book + tools design), the correct tools rollouts
    vote; a tie goes to the cheaper kind."""
    assert label_item("a", many("closed_book", 0, 2) + tools)["label"] == expected


def test_uncertain_unanswerable_and_engine_errors():
    unsure = label_item("a", many("closed_book", 0, 2) + many("image_only", 1, 1, img=1))
    assert unsure["label"] == "uncertain" and unsure["settled_by"] == "image_only"
    none = label_item("a", many("closed_book", 0, 2) + many("tools", 0, 2, img=1))
    assert none["label"] == "unanswerable" and none["settled_by"] == "" and none["confidence"] == pytest.approx(0.875 ** 2)
    only_err = label_item("a", [R("closed_book", True, error="engine: out of memory")])
    assert only_err["label"] == "unanswerable" and only_err["n_rollouts"] == 0 and only_err["reason"] == "no usable rollout"
    # a tool failure is evidence (the model had to cope)
    tool_err = label_item("a", many("closed_book", 0, 2) + many("image_only", 2, 0, img=1, error="image_search: timeout"))
    assert tool_err["label"] == "image_search_required"


def test_thresholds_change_the_label():
    ev = many("closed_book", 2, 6) + many("image_only", 4, 0, img=1)
    assert label_item("a", ev)["label"] == "image_search_required"            # 2/8 fails at threshold 0.5
    assert label_item("a", ev, RuleParams(threshold=0.15))["label"] == "search_free"
    with pytest.raises(ValueError):
        RuleParams(confidence=0.4).validate()


def test_settle_for_adaptive_sampling():
    assert settle("closed_book", [R("closed_book", False)]) == OPEN            # one sample settles nothing at 0.8
    assert settle("closed_book", many("closed_book", 0, 2)) == FAIL
    assert settle("closed_book", many("closed_book", 2, 0)) == PASS
    assert settle("tools", many("closed_book", 2, 0)) == OPEN                  # no evidence of that condition


def test_blind_ambiguous_finds_question_texts_no_one_answer_fits():
    items = {"id": list("abcdefg"),
             "question": ["Which flag is shown?", "which  FLAG is shown?", "Which flag is shown?",
                          "Capital of X?", "Capital of X?", "Is it red?", "Solo?"],
             "answer": ["Chad", "Peru", "Chad", "Paris", "paris", "yes", "no"],
             "aliases": [[], [], [], [], [], [], []]}
    assert blind_ambiguous(items) == {"a", "b", "c"}  # case and spacing aside; the same answer twice is no ambiguity
    items["aliases"][1] = ["chad"]  # Peru's item also accepts "Chad": one answer fits all, a blind answer may know
    assert blind_ambiguous(items) == set()
    assert blind_ambiguous({k: v for k, v in items.items() if k != "aliases"}) == {"a", "b", "c"}


def test_discount_guesses_only_blind_answers_without_an_image_search():
    rs = [R("closed_book", True), R("tools", True, img=1), R("tools", True, txt=1), R("closed_book", True, saw=True),
          R("closed_book", False), R("closed_book", True, item="b")]
    out = discount_guesses(rs, {"a"})
    assert [r["correct"] for r in out] == [False, True, False, True, False, True]
    assert [bool(r.get("guess")) for r in out] == [True, False, True, False, False, False]
    assert rs[0]["correct"] is True  # the evidence itself is left as the judge wrote it


def test_blind_guess_guard_sends_guesses_on_to_image_search():
    guard = RuleParams(blind_guesses=True)
    ev = (many("closed_book", 2, 0) + many("image_only", 0, 2, img=1) + many("text_only", 2, 0, txt=1)
          + many("tools", 2, 0, img=1, txt=1))
    assert label_item("a", ev)["label"] == "search_free"  # rule 2: the lucky blind answer settles it
    assert label_items(ev, ["a"], guard)[0]["label"] == "search_free"  # not an ambiguous item: nothing changes
    lab = label_items(ev, ["a"], guard, {"a"})[0]
    assert lab["label"] == "mixed_search_required" and lab["settled_by"] == "tools"
    assert lab["rule_version"] == RULE_VERSION == "3"
    assert lab["reason"] == ("closed_book 0/2 fail (2 blind guesses not counted); image_only 0/2 fail; text_only 0/2 "
                             "fail (2 blind guesses not counted); tools 2/2 pass -> mixed_search_required")
    assert lab["pass_rate_closed_book"] == 0.0 and lab["pass_rate_tools"] == 1.0
    # tools: a right answer after a text search alone is a guess too (the text never names the flag)
    tools = many("tools", 1, 0, img=1) + many("tools", 2, 0, txt=1) + many("tools", 1, 0, img=1, txt=1)
    assert label_items(tools, ["a"])[0]["label"] == "text_search_required"
    lab = label_items(tools, ["a"], guard, {"a"})[0]
    assert lab["label"] == "uncertain" and lab["reason"] == "tools 2/4 open (2 blind guesses not counted) -> uncertain"
    # a model that saw the image is never second-guessed, and settle (the probe's rounds) applies the same guard
    seen = many("closed_book", 2, 0, saw=True)
    assert label_items(seen, ["a"], guard, {"a"})[0]["label"] == "search_free"
    assert settle("closed_book", many("closed_book", 2, 0), guard, {"a"}) == FAIL
    assert settle("closed_book", many("closed_book", 2, 0), RuleParams(blind_guesses=False), {"a"}) == PASS


def test_label_items_keeps_order_and_groups():
    ev = many("image_only", 2, 0, img=1, item="b") + many("closed_book", 2, 0, item="a")
    labs = label_items(ev, ["a", "b", "c"])
    assert [lab["id"] for lab in labs] == ["a", "b", "c"]
    assert [lab["label"] for lab in labs] == ["search_free", "image_search_required", "unanswerable"]


def test_answer_key_report():
    items = [{"id": i, "meta": json.dumps({"expected_need": need})} for i, need in
             [("a", "none"), ("b", "image"), ("c", "text"), ("d", "mixed"), ("e", "visual"), ("f", "text")]]
    items.append({"id": "g", "meta": "{}"})  # no key: left out
    labels = {"a": "search_free", "b": "image_search_required", "c": "mixed_search_required",
              "d": "mixed_search_required", "e": "unanswerable", "f": "uncertain", "g": "search_free"}
    m, rows = compare(items, labels, {})
    assert m["items"] == 6 and m["labelled"] == 5 and m["uncertain"] == 1
    assert m["correct"] == 4 and m["accuracy"] == pytest.approx(0.8)
    assert m["confusion"]["text_search_required"] == {"mixed_search_required": 1, "uncertain": 1}
    assert m["recall"]["text_search_required"] == 0.0 and m["recall"]["search_free"] == 1.0
    assert {r["id"] for r in rows} == set("abcdef")
    assert expected_label("visual", saw_image=True) == "search_free"
    with pytest.raises(ValueError, match="unknown expected_need"):
        expected_label("telepathy", False)


def _write_probe(tmp_path, items, ev) -> None:
    """items (id, question, answer, need) and rollouts `ev` as the probe stage writes them, under tmp_path."""
    import datasets

    from pipeline.schema import ROLLOUT_FEATURES, write_items, write_table

    write_items([{"id": i, "image": None, "image_sha1": "", "question": q, "answer": a, "aliases": [],
                  "source": "demo", "category": "c", "license": "MIT", "entity": "",
                  "meta": json.dumps({"expected_need": need})} for i, q, a, need in items], tmp_path / "items.parquet")
    base = {k: None for k in ROLLOUT_FEATURES}
    for cond in sorted({r["condition"] for r in ev}):
        rows = [{**base, "rollout_id": f"{r['item_id']}/{cond}/{i}", "sample": i, "model": "m", "protocol": "p",
                 "messages": "[]", "actions": ["answer"], "tool_calls": "[]", "final_answer": "",
                 "judge": "em", "valid_format": True, "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.0,
                 "search_count": 0, **r} for i, r in enumerate(x for x in ev if x["condition"] == cond)]
        write_table(datasets.Dataset.from_list(rows, features=ROLLOUT_FEATURES).data.table,
                    tmp_path / "probe" / cond / "evidence.parquet")


def _run_label(tmp_path, **rule) -> dict:
    """Runs the label stage on _write_probe's files; returns {id: label} of the kept labels."""
    import datasets
    import pyarrow.parquet as pq

    from pipeline.schema import LABEL_FEATURES
    from stages.label import Params, run

    params = Params(items=str(tmp_path / "items.parquet"), probe_dir=str(tmp_path / "probe"),
                    out_dir=str(tmp_path / "label"), **rule)
    assert run(params, SimpleNamespace()) == 0  # conditions without evidence are skipped
    labels = datasets.Dataset(pq.read_table(tmp_path / "label" / "labels.parquet"))
    assert labels.features["label"] == LABEL_FEATURES["label"]
    return dict(zip(labels["id"], labels.features["label"].int2str(labels["label"])))


def test_label_stage_counts_in_equal_out_plus_excluded(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.io import read_json

    keys = {"a": "none", "b": "image", "c": "text", "d": "mixed", "e": "none"}
    ev = (many("closed_book", 2, 0, item="a") + many("closed_book", 0, 2, item="b") + many("closed_book", 0, 2, item="c")
          + many("closed_book", 1, 1, item="d") + many("image_only", 2, 0, img=1, item="b")
          + many("image_only", 0, 2, img=1, item="c"))
    _write_probe(tmp_path, [(i, "q?", "x", keys[i]) for i in "abcde"], ev)
    assert _run_label(tmp_path) == {"a": "search_free", "b": "image_search_required"}
    excl = pq.read_table(tmp_path / "label" / "exclusions.parquet").to_pylist()
    assert {(e["id"], e["reason"]) for e in excl} == {("c", "unanswerable"), ("d", "uncertain"), ("e", "not_probed")}
    m = read_json(tmp_path / "label" / "metrics.json")
    assert m["items_in"] == 5 == m["labelled"] + m["excluded"] and m["counts_add_up"]
    assert m["counts"]["unanswerable"] == 1 and m["counts"]["uncertain"] == 1
    assert m["conditions_read"] == ["closed_book", "image_only"]
    key = m["answer_key"]
    assert key["items"] == 4 and key["labelled"] == 3 and key["correct"] == 2 and key["uncertain"] == 1
    confusion = read_json(tmp_path / "label" / "key_confusion.json")
    assert {r["id"]: (r["expected"], r["label"]) for r in confusion}["c"] == ("text_search_required", "unanswerable")
    assert (tmp_path / "label" / "plots" / "key_confusion.png").stat().st_size > 1000


def test_label_stage_blind_guess_guard_fixes_a_lucky_guess(tmp_path):
    """Two flags share one question text: the text-only labeler's closed-book "Chad" is right for one of them by
    luck. Rule 2 labels it search_free (against the key); rule 3 sends it to image search, as the key says."""
    from pipeline.io import read_json

    items = [("a", "Which flag is shown?", "Chad", "image"), ("b", "Which  flag is shown?", "Peru", "image"),
             ("c", "Capital of France?", "Paris", "none")]
    ev = (many("closed_book", 2, 0, item="a") + many("closed_book", 0, 2, item="b")
          + many("closed_book", 2, 0, item="c") + many("image_only", 2, 0, img=1, item="a")
          + many("image_only", 2, 0, img=1, item="b"))
    _write_probe(tmp_path, items, ev)
    assert _run_label(tmp_path, blind_guesses=False) == {"a": "search_free", "b": "image_search_required",
                                                         "c": "search_free"}
    m = read_json(tmp_path / "label" / "metrics.json")
    assert (m["rule_version"], m["blind_ambiguous_items"], m["answer_key"]["correct"]) == ("2", 0, 2)
    assert _run_label(tmp_path) == {"a": "image_search_required", "b": "image_search_required", "c": "search_free"}
    m = read_json(tmp_path / "label" / "metrics.json")
    assert (m["rule_version"], m["blind_ambiguous_items"], m["blind_guesses_discounted"]) == ("3", 2, 2)
    assert m["answer_key"]["correct"] == 3


def test_transitions_count_moves_across_the_search_boundary():
    from pipeline.curate.transitions import render_transitions, transitions

    before = {"a": "search_free", "b": "search_free", "c": "image_search_required", "d": "text_search_required",
              "e": "mixed_search_required", "f": "mixed_search_required", "g": "search_free"}
    after = {"a": "search_free", "b": "text_search_required", "c": "search_free", "d": "image_search_required",
             "e": "mixed_search_required", "f": "unanswerable", "zz": "search_free"}  # g not re-probed, zz not before
    t = transitions(before, after)
    assert t["items"] == 7 and t["same_label"] == 2  # a, e
    assert t["search_free_to_required"] == 1 and t["required_to_search_free"] == 1  # b; c
    assert t["moved_across_boundary"] == 2 and t["changed_search_kind"] == 1  # d
    assert t["fell_out"] == 2  # f (unanswerable), g (not re-probed)
    assert t["search_free_before"] == 3 and t["search_free_after"] == 2
    assert t["matrix"]["search_free"]["not_reprobed"] == 1 and t["matrix"]["image_search_required"]["search_free"] == 1
    assert sum(sum(r.values()) for r in t["matrix"].values()) == 7
    md = render_transitions(t)
    assert "| free | 1 | 0 | 1 | 0 | 0 | 0 | 1 |" in md and "2 of 7" in md
    with pytest.raises(ValueError, match="unanswerable"):
        transitions({"a": "unanswerable"}, {})
    empty = transitions({}, {"zz": "search_free"})  # an empty test split: zeros, and a table that still renders
    assert empty["items"] == 0 and empty["moved_across_boundary_share"] == 0.0 and "0 of 0" in render_transitions(empty)


def test_the_guard_is_part_of_the_probe_fingerprint(tmp_path):
    """A probe with the guard plays other cascades, so it must not reuse a rule-2 run's parts (and vice versa)."""
    import dataclasses

    from pipeline.probe import ProbeParams, fingerprint

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    off = ProbeParams(blind_guesses=False)
    fp = lambda p: fingerprint(p, str(tmp_path / "model"), ["a", "b"])  # noqa: E731
    on = dataclasses.replace(off, blind_guesses=True)
    assert fp(off) != fp(on)
    assert fp(off) == fp(dataclasses.replace(off, out_dir="elsewhere"))  # output places are not part of it
    watched = lambda g: fingerprint(on, str(tmp_path / "model"), ["a", "b"], g)  # noqa: E731
    assert watched({"a"}) != watched(set()) == fp(on)  # which items the guard watches shapes the cascade
    assert fingerprint(off, str(tmp_path / "model"), ["a", "b"], {"a"}) == fp(off)  # read only with the guard


def test_label_evidence_takes_the_guards_items_from_a_larger_population():
    """The reprobe labels the test split alone, where a shared question text may have one item left: the guard's
    items then come from the population the labels were made on."""
    from pipeline.curate.labelling import label_evidence

    items = {"id": ["a"], "source": ["demo"], "meta": ["{}"], "question": ["Which flag is shown?"], "answer": ["Chad"],
             "aliases": [[]]}
    ev = many("closed_book", 2, 0) + many("image_only", 2, 0, img=1)
    guard = RuleParams(blind_guesses=True)

    def labels(**kw):
        return [lab["label"] for lab in label_evidence(items, ev, guard, ["closed_book"], **kw)["labels"]]

    assert labels() == ["search_free"]  # one item: its text alone shows no ambiguity
    assert labels(ambiguous={"a"}) == ["image_search_required"]


def test_reprobe_names_the_missing_population_of_the_guard(tmp_path, capsys):
    """With the guard on, the reprobe reads probe.items (the labels' population); a missing file is a clear error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stages.reprobe import Params, run

    pq.write_table(pa.table({"id": ["a"], "label": ["search_free"]}), tmp_path / "test.parquet")
    pfile = tmp_path / "params.yaml"
    pfile.write_text(f"probe:\n  items: {tmp_path / 'gone.parquet'}\n")
    assert run(Params(items=str(tmp_path / "test.parquet")), SimpleNamespace(params=str(pfile))) == 2
    out = capsys.readouterr().out
    assert "probe.items" in out and "gone.parquet" in out and "label_rule.blind_guesses: false" in out
