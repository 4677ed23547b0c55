"""Every evaluation metric's definition, checked on hand-made rollouts (edge cases included)."""
import json
import math

import pytest

from pipeline.evaluate.metrics import (
    BOOTSTRAP_KEYS, KEY_FIGURES, METRIC_KEYS, WILSON_KEYS, compute_metrics, is_correct, mean_or_none,
    metrics_by_answer_key, metrics_by_group, search_calls, search_reduction, searched, subset_of, tool_call_outcomes,
)


def call(tool, error="", refused=False, query="q"):
    return {"tool": tool, "query": query, "cache_key": "k", "error": error, "n_results": 0 if error else 5,
            "refused": refused}


def rollout(item, actions=("answer",), correct=False, answer="x", calls=(), valid=True, prompt=10, completion=5,
            error="", sample=0, model="m", mode="on_demand", dataset="test"):
    calls = list(calls)
    return {
        "rollout_id": f"{item}/{mode}/{sample}", "item_id": item, "condition": mode, "sample": sample,
        "model": model, "protocol": "mmsearch_r1", "saw_image": True, "messages": "[]", "actions": list(actions),
        "tool_calls": json.dumps(calls),
        "n_image_search": sum(1 for c in calls if c["tool"] == "image_search" and not c["refused"]),
        "n_text_search": sum(1 for c in calls if c["tool"] == "text_search" and not c["refused"]),
        "final_answer": answer, "correct": correct, "judge": "em", "valid_format": valid,
        "prompt_tokens": prompt, "completion_tokens": completion, "latency_s": 0.1, "error": error,
        "dataset": dataset,
    }


LABELS = {"A": "search_free", "B": "search_free", "C": "image_search_required", "D": "text_search_required"}


def four_items():
    return [
        rollout("A", correct=True),  # answered from knowledge, right
        rollout("B", ("text_search", "answer"), correct=True, calls=[call("text_search")]),  # over-search
        rollout("C", correct=False),  # under-search: needed search, did not, wrong
        rollout("D", ("image_search", "text_search", "answer"), correct=True,
                calls=[call("image_search"), call("text_search")]),
    ]


def test_keys_are_the_documented_set():
    m = compute_metrics(four_items(), LABELS)
    assert tuple(m) == METRIC_KEYS + ("ci95",)
    assert tuple(m["ci95"]) == WILSON_KEYS + BOOTSTRAP_KEYS


def test_core_metrics_on_four_items():
    m = compute_metrics(four_items(), LABELS)
    assert m["n_items"] == 4 and m["n_rollouts"] == 4
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["search_ratio"] == pytest.approx(2 / 4)
    assert m["image_search_ratio"] == pytest.approx(1 / 4)
    assert m["text_search_ratio"] == pytest.approx(2 / 4)
    assert m["search_calls_per_rollout"] == pytest.approx(3 / 4)
    assert m["image_search_calls_per_rollout"] == pytest.approx(1 / 4)
    assert m["text_search_calls_per_rollout"] == pytest.approx(2 / 4)
    assert m["n_search_required"] == 2 and m["n_search_free"] == 2
    assert m["accuracy_search_required"] == pytest.approx(1 / 2)
    assert m["accuracy_search_free"] == pytest.approx(2 / 2)
    assert m["over_search_rate"] == pytest.approx(1 / 2)  # B searched although search-free
    assert m["under_search_rate"] == pytest.approx(1 / 2)  # C wrong without searching
    assert m["searches_per_correct"] == pytest.approx(3 / 3)
    assert m["tool_productivity"] == pytest.approx(3 / 3)  # 3 correct answers for 3 search calls
    assert m["tool_calls"] == 3 and m["failed_tool_calls"] == 0 and m["tool_failure_rate"] == 0.0
    assert m["invalid_format_rate"] == 0.0 and m["no_answer_rate"] == 0.0 and m["error_rate"] == 0.0
    assert m["prompt_tokens_per_item"] == 10 and m["completion_tokens_per_item"] == 5 and m["tokens_per_item"] == 15


def test_under_search_needs_both_no_search_and_wrong():
    rows = [
        rollout("C", correct=True),  # knew it without searching: not under-search
        rollout("D", ("text_search", "answer"), correct=False, calls=[call("text_search")]),  # searched: not under
    ]
    m = compute_metrics(rows, LABELS)
    assert m["under_search_rate"] == 0.0
    assert m["accuracy_search_required"] == pytest.approx(1 / 2)


def test_empty_subsets_are_null_not_zero():
    only_free = [rollout("A", correct=True), rollout("B", correct=False)]
    m = compute_metrics(only_free, LABELS)
    assert m["n_search_required"] == 0
    assert m["accuracy_search_required"] is None and m["under_search_rate"] is None
    assert m["accuracy_search_free"] == pytest.approx(0.5) and m["over_search_rate"] == 0.0
    only_req = [rollout("C", correct=False)]
    m = compute_metrics(only_req, LABELS)
    assert m["accuracy_search_free"] is None and m["over_search_rate"] is None
    assert m["under_search_rate"] == 1.0


def test_unlabelled_and_unanswerable_items_are_in_no_subset():
    rows = [rollout("X", correct=True), rollout("Y", ("text_search", "answer"), calls=[call("text_search")]),
            rollout("U", correct=False)]
    m = compute_metrics(rows, {"U": "unanswerable"})
    assert m["accuracy"] == pytest.approx(1 / 3) and m["search_ratio"] == pytest.approx(1 / 3)
    assert m["n_search_required"] == m["n_search_free"] == 0
    for key in ("accuracy_search_required", "accuracy_search_free", "over_search_rate", "under_search_rate"):
        assert m[key] is None
    assert compute_metrics(rows)["accuracy"] == pytest.approx(1 / 3)  # no labels at all


def test_no_rollouts_at_all():
    m = compute_metrics([], LABELS)
    assert m["n_items"] == 0 and m["n_rollouts"] == 0 and m["tool_calls"] == 0
    rates = [k for k in METRIC_KEYS if not k.startswith("n_") and k not in ("tool_calls", "failed_tool_calls", "refused_tool_calls")]
    assert all(m[k] is None for k in rates)


def test_no_correct_answer_gives_null_searches_per_correct():
    rows = [rollout("C", ("image_search", "answer"), calls=[call("image_search")], correct=False)]
    m = compute_metrics(rows, LABELS)
    assert m["accuracy"] == 0.0 and m["searches_per_correct"] is None


def test_failed_and_refused_tool_calls():
    rows = [
        # image search backend failed (replay miss), then answered wrongly
        rollout("C", ("image_search", "answer"), calls=[call("image_search", error="replay miss: key abc")]),
        # second image search refused by the limits: never ran, so it is not a search call
        rollout("D", ("image_search", "image_search", "answer"), correct=True,
                calls=[call("image_search"), call("image_search", error="Image search is not allowed", refused=True)]),
    ]
    m = compute_metrics(rows, LABELS)
    assert m["tool_calls"] == 2 and m["failed_tool_calls"] == 1 and m["refused_tool_calls"] == 1
    assert m["tool_failure_rate"] == pytest.approx(1 / 2)
    assert m["search_ratio"] == 1.0  # a failed call still counts as a search
    assert m["image_search_calls_per_rollout"] == pytest.approx(2 / 2)
    assert m["searches_per_correct"] == pytest.approx(2 / 1)
    assert tool_call_outcomes(rows[1]) == (1, 0, 1)
    assert search_calls(rows[1]) == {"image_search": 1, "text_search": 0}


def test_refused_search_only_is_not_a_search():
    # direct mode: the model wrote a search tag, the condition offers no tools, the loop refused it
    row = rollout("C", ("text_search", "answer"), calls=[call("text_search", error="not available", refused=True)])
    m = compute_metrics([row], LABELS)
    assert not searched(row) and m["search_ratio"] == 0.0 and m["refused_tool_calls"] == 1
    assert m["tool_calls"] == 0 and m["tool_failure_rate"] is None
    assert m["under_search_rate"] == 1.0


def test_tool_failure_rate_null_without_tool_calls():
    m = compute_metrics([rollout("A", correct=True)], LABELS)
    assert m["tool_calls"] == 0 and m["tool_failure_rate"] is None


def test_invalid_format_and_missing_answer_count_as_wrong():
    rows = [
        rollout("A", ("invalid", "invalid", "invalid"), answer="", valid=False),
        # a stale `correct` flag without an answer must not count
        rollout("B", ("invalid",), answer="  ", correct=True, valid=False),
        rollout("C", ("answer",), correct=True, valid=True),
        rollout("D", ("answer",), correct=False, valid=True, error="engine: prompt too long"),
    ]
    m = compute_metrics(rows, LABELS)
    assert m["invalid_format_rate"] == pytest.approx(2 / 4)
    assert m["no_answer_rate"] == pytest.approx(2 / 4)
    assert m["error_rate"] == pytest.approx(1 / 4)
    assert m["accuracy"] == pytest.approx(1 / 4)
    assert m["accuracy_search_free"] == 0.0
    assert m["search_ratio"] == 0.0
    assert not is_correct(rows[1]) and is_correct(rows[2])


def test_tokens_are_summed_per_item_then_averaged():
    rows = [rollout("A", sample=0, prompt=100, completion=10), rollout("A", sample=1, prompt=100, completion=30),
            rollout("B", sample=0, prompt=50, completion=0)]
    m = compute_metrics(rows, LABELS)
    assert m["n_items"] == 2 and m["n_rollouts"] == 3
    assert m["prompt_tokens_per_item"] == pytest.approx(250 / 2)
    assert m["completion_tokens_per_item"] == pytest.approx(40 / 2)
    assert m["tokens_per_item"] == pytest.approx(290 / 2)


def test_search_calls_come_from_the_executed_counts():
    row = rollout("D", actions=(), calls=[call("text_search"), call("text_search")])
    assert search_calls(row) == {"image_search": 0, "text_search": 2} and searched(row)


def test_bad_tool_calls_json_names_the_rollout():
    row = rollout("A")
    row["tool_calls"] = "{not json"
    with pytest.raises(ValueError, match="A/on_demand/0.*tool_calls"):
        compute_metrics([row])


def test_subsets():
    assert subset_of("mixed_search_required") == "search_required"
    assert subset_of("search_free") == "search_free"
    assert subset_of("unanswerable") is None and subset_of(None) is None and subset_of("") is None


def test_metrics_by_group_nests_model_mode_dataset_with_per_dataset_labels():
    rows = [rollout("A", correct=True, model="base", mode="direct", dataset="test"),
            rollout("A", ("text_search", "answer"), correct=True, calls=[call("text_search")], model="base",
                    mode="rag", dataset="test"),
            rollout("A", correct=False, model="trained", mode="direct", dataset="extra")]
    out = metrics_by_group(rows, {"test": {"A": "search_free"}})
    assert set(out) == {"base", "trained"} and set(out["base"]) == {"direct", "rag"}
    assert out["base"]["rag"]["test"]["over_search_rate"] == 1.0
    assert out["base"]["direct"]["test"]["over_search_rate"] == 0.0
    assert out["trained"]["direct"]["extra"]["over_search_rate"] is None  # no labels for that dataset


def test_means_and_search_reduction():
    assert mean_or_none([0.2, None, 0.4]) == pytest.approx(0.3)
    assert mean_or_none([None, float("nan")]) is None
    assert search_reduction(0.6, 1.0) == pytest.approx(0.4)
    assert search_reduction(None, 1.0) is None and search_reduction(0.5, 0.0) is None
    assert not math.isnan(search_reduction(0.0, 1.0))


def _ci(m, key):
    return None if m["ci95"][key] is None else (m["ci95"][key]["lo"], m["ci95"][key]["hi"])


def test_wilson_intervals_on_four_items():
    # Wilson, z = 1.96, z^2 = 3.8415: centre = (p + z^2/2n) / (1 + z^2/n), half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    # 3/4: centre (0.75 + 0.48018) / 1.96037 = 0.62752, half 1.96 x 0.32695 / 1.96037 = 0.32689 -> 0.30064, 0.95441
    m = compute_metrics(four_items(), LABELS)
    assert _ci(m, "accuracy") == pytest.approx((0.30064, 0.95441), abs=1e-5)
    # 2/4: centre exactly 0.5, half 1.96 x sqrt(0.0625 + 0.060023) / 1.96037 = 0.34996
    assert _ci(m, "search_ratio") == pytest.approx((0.15004, 0.84996), abs=1e-5)
    # 1/2 (over-search on the two search-free items): centre 0.5, half 1.96 x sqrt(0.125 + 0.24009) / 2.92074 = 0.40547
    assert _ci(m, "over_search_rate") == pytest.approx((0.09453, 0.90547), abs=1e-5)
    # 0/3 executed calls failed: the lower bound is exactly 0; hi = 2 x z^2/6 / (1 + z^2/3) = 1.28049 / 2.28049
    assert _ci(m, "tool_failure_rate") == pytest.approx((0.0, 0.56150), abs=1e-5)
    assert _ci(m, "tool_failure_rate")[0] == 0.0
    # 0/4 errors: [0, z^2/4 / (1 + z^2/4) = 0.96037 / 1.96037]
    assert _ci(m, "error_rate") == pytest.approx((0.0, 0.48989), abs=1e-5)


def test_bootstrap_intervals_over_items_by_hand():
    # X: correct without search; Y: correct with 2 calls. Resampling 2 items: XX, XY, YX, YY (1/4 each)
    rows = [rollout("X", correct=True),
            rollout("Y", ("image_search", "text_search", "answer"), correct=True,
                    calls=[call("image_search"), call("text_search")])]
    m = compute_metrics(rows)
    # searches per correct: XX 0/2, XY 2/2, YY 4/2 -> {0: 1/4, 1: 1/2, 2: 1/4}: 2.5% / 97.5% quantiles 0 and 2
    assert m["searches_per_correct"] == 1.0 and _ci(m, "searches_per_correct") == (0.0, 2.0)
    assert _ci(m, "search_calls_per_rollout") == (0.0, 2.0)  # the same sums over 2 trajectories
    # tool productivity: XX has no call (undefined, left out), XY 2/2 = 1, YY 2/4 = 0.5 -> {1: 2/3, 0.5: 1/3}
    assert m["tool_productivity"] == 1.0 and _ci(m, "tool_productivity") == (0.5, 1.0)
    assert compute_metrics(rows)["ci95"] == m["ci95"]  # fixed seed: the same interval every run


def test_tool_productivity_without_search_calls_is_null():
    rows = [rollout("A", correct=True, mode="direct"), rollout("C", correct=False, mode="direct")]
    m = compute_metrics(rows, LABELS)
    assert m["tool_productivity"] is None and m["ci95"]["tool_productivity"] is None
    assert m["searches_per_correct"] == 0.0 and _ci(m, "searches_per_correct") == (0.0, 0.0)
    # every item one call and correct: 1 correct per call in every resample
    one = [rollout(i, ("text_search", "answer"), correct=True, calls=[call("text_search")]) for i in "ABCD"]
    assert _ci(compute_metrics(one, LABELS), "tool_productivity") == (1.0, 1.0)
    # empty subsets have no interval either
    assert compute_metrics(one, {})["ci95"]["over_search_rate"] is None


def test_search_decisions_against_the_answer_key_count_label_errors_as_the_key_says():
    """A: labelled search_free, the key says it needs an image search: searching it is over-search by the labels and
    right by the key. C: labelled search_free, needs text by the key, answered wrongly without search: under-search by
    the key only. D has no key (left out). E is a `visual` item: search-free for a model that saw the image,
    unanswerable (in no subset) for one that did not."""
    labels = {"A": "search_free", "B": "search_free", "C": "search_free", "D": "text_search_required",
              "E": "search_free"}
    needs = {"test": {"A": "image", "B": "none", "C": "text", "E": "visual"}}
    rows = [rollout("A", ("image_search", "answer"), correct=True, calls=[call("image_search")]),
            rollout("B", correct=True), rollout("C", correct=False),
            rollout("D", ("text_search", "answer"), correct=True, calls=[call("text_search")]),
            rollout("E", correct=True)]
    blind = dict(rollout("E", correct=True, model="blind"), saw_image=False)
    by_label = metrics_by_group(rows, {"test": labels})["m"]["on_demand"]["test"]
    out = metrics_by_answer_key(rows + [blind], needs)
    key = out["m"]["on_demand"]["test"]
    assert tuple(key) == KEY_FIGURES + ("ci95",) and set(key["ci95"]) == set(KEY_FIGURES) - {"n_search_required",
                                                                                          "n_search_free"}
    assert by_label["over_search_rate"] == pytest.approx(1 / 4)  # A searched, of A, B, C, E
    assert key["n_search_free"] == 2 and key["n_search_required"] == 2  # B, E / A, C
    assert key["over_search_rate"] == 0.0  # the only search was on an item that needs it
    assert key["under_search_rate"] == pytest.approx(1 / 2)  # C: needed a search, did not, wrong
    assert key["accuracy_search_free"] == 1.0 and key["accuracy_search_required"] == pytest.approx(1 / 2)
    assert out["blind"]["on_demand"]["test"]["n_search_free"] == 0  # E unanswerable without the image
    assert metrics_by_answer_key(rows, {"test": {}}) == {} and metrics_by_answer_key(rows, {}) == {}
