"""End to end: the evaluate stage with the transformers engine, tiny models and a small real search world
(local indexes + cache), and its parts: dataset loading and stratified selection, the forced rag workflow, resume."""
import argparse
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.evaluate.data import DatasetParams, load_dataset
from pipeline.subsets import stratified_subset
from pipeline.schema import write_items

LABEL_CYCLE = ["search_free", "image_search_required", "text_search_required", "mixed_search_required"]
KEY_CYCLE = ["image", "image", "text", "mixed"]  # the demo world's answer key: the first label of the cycle is wrong


def _with_labels(items, path, labels):
    """The items with `label` and an answer key (meta.expected_need, KEY_CYCLE) written to `path`."""
    items = [{**it, "meta": json.dumps({**json.loads(it.get("meta") or "{}"), "expected_need": KEY_CYCLE[i % 4]})}
             for i, it in enumerate(items)]
    write_items(items, path)
    table = pq.read_table(path).append_column("label", pa.array(labels))
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_text_model_path):
    """Search world of tests/train_world.py, a labelled test split, and a tiny model warmed up on the protocols."""
    from train_world import build_world, warm_up

    root = tmp_path_factory.mktemp("eval_world")
    w = build_world(root)
    labels = [LABEL_CYCLE[i % len(LABEL_CYCLE)] for i in range(len(w.items))]
    _with_labels(w.items, root / "data" / "balance" / "test.parquet", labels)
    warmed = warm_up(str(tiny_text_model_path), w, root / "models" / "warm", steps=200)
    return w, dict(zip([it["id"] for it in w.items], labels)), warmed


def _params_file(root: Path, world, warmed: str, base: str, **evaluate) -> Path:
    import dataclasses

    section = {
        "models": [{"name": "base", "path": base}, {"name": "trained", "path": warmed}],
        "engine": {"kind": "transformers"},
        "sampling": {"temperature": 0.0, "max_tokens": 48},
        "max_items": 6,
    }
    section.update(evaluate)
    doc = {"evaluate": section, "search": json.loads(json.dumps(dataclasses.asdict(world.search)))}
    path = root / "params_eval.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(root: Path, params_file: Path, *overrides: str) -> int:
    from pipeline.config import load_section
    from stages import evaluate

    cwd = os.getcwd()
    os.chdir(root)
    try:
        params = load_section(evaluate.Params, "evaluate", params_file, list(overrides))
        return evaluate.run(params, argparse.Namespace(params=str(params_file)))
    finally:
        os.chdir(cwd)


def _dir_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _without_latency(path):
    return [{k: v for k, v in r.items() if k != "latency_s"} for r in pq.read_table(path).to_pylist()]


def test_evaluate_end_to_end_and_resume(world, tiny_text_model_path):
    from pipeline.evaluate.metrics import metrics_by_answer_key, metrics_by_group

    w, labels, warmed = world
    root = w.root
    pf = _params_file(root, w, warmed, str(tiny_text_model_path))
    shared_cache = _dir_bytes(root / "data" / "cache" / "search")
    assert _run(root, pf) == 0
    # the shared search cache (a dependency of the stage) is only read: new searches went to a private copy
    assert _dir_bytes(root / "data" / "cache" / "search") == shared_cache
    out = root / "data" / "evaluate"
    rows = pq.read_table(out / "rollouts.parquet").to_pylist()
    assert len(rows) == 2 * 3 * 6  # models x modes x items, one greedy sample each
    assert len({r["rollout_id"] for r in rows}) == len(rows)

    by = lambda model, mode: [r for r in rows if r["model"] == model and r["condition"] == mode]  # noqa: E731
    for model in ("base", "trained"):
        for r in by(model, "direct"):  # no tools: never a search call
            assert r["n_image_search"] == r["n_text_search"] == 0
        for r in by(model, "rag"):  # forced workflow: image search, then text search (title + question), then answer
            assert r["actions"][:2] == ["image_search", "text_search"] and len(r["actions"]) == 3
            assert r["n_image_search"] == 1 and r["n_text_search"] == 1
            calls = json.loads(r["tool_calls"])
            assert [c["tool"] for c in calls] == ["image_search", "text_search"]
            question = next(it["question"] for it in w.items if it["id"] == r["item_id"])
            assert calls[1]["query"] == f"{calls[0]['titles'][0]} {question}"
            assert r["label"] == labels[r["item_id"]] and r["dataset"] == "test"

    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("base", "trained"):
        assert metrics[model]["rag"]["test"]["search_ratio"] == 1.0
        assert metrics[model]["direct"]["test"]["search_ratio"] == 0.0
        assert metrics[model]["direct"]["test"]["n_items"] == 6
        assert set(metrics[model]["vs_rag"]["test"]) == {"search_reduction", "accuracy_gap"}
    # the warmed-up model follows the protocol, so on-demand search is exercised for real
    assert metrics["trained"]["on_demand"]["test"]["search_ratio"] > 0
    # every number is recomputable from the stored rollouts
    again = metrics_by_group(rows, {"test": labels})
    assert again["trained"]["on_demand"]["test"] == metrics["trained"]["on_demand"]["test"]
    # the same decisions against the answer key: every search-free label is wrong by KEY_CYCLE, so no item is
    # search-free by the key and each labelled search-free item counts as search-required
    keys = {it["id"]: KEY_CYCLE[i % 4] for i, it in enumerate(w.items)}
    by_key = metrics["answer_key"]["trained"]["on_demand"]["test"]
    assert by_key == metrics_by_answer_key(rows, {"test": keys})["trained"]["on_demand"]["test"]
    assert by_key["n_search_free"] == 0 and by_key["over_search_rate"] is None
    assert by_key["n_search_required"] == metrics["trained"]["on_demand"]["test"]["n_items"] == 6
    assert metrics["datasets"]["test"] == {"rows": 8, "valid_items": 8, "excluded": 0, "evaluated_items": 6,
                                           "labelled_items": 6}
    table = (out / "table.md").read_text()
    assert "## test: search decisions against the answer key" in table
    assert table.count("| RAG workflow |") >= 2 and "| test Acc | test SR |" in table
    # what the on-demand policy did per label: the counts of its action sequences add up to its trajectories
    behaviour = table.split("what the policy did per label")[1]
    counts = [int(c.split(" (")[0]) for line in behaviour.splitlines() if line.startswith("| trained |")
              for c in line.split(" | ")[2:] if c.strip(" |") != "–"]
    assert sum(counts) == metrics["trained"]["on_demand"]["test"]["n_rollouts"] == 6
    assert (out / "accuracy_vs_search.png").exists()
    assert (out / "plots" / "accuracy_vs_search_test.csv").read_text().count("\n") == 1 + 6

    # resume: a lost unit is re-run, the others are reused; the rollouts are the same (wall-clock latency aside)
    first = _without_latency(out / "rollouts.parquet")
    parts = sorted((root / "data" / "evaluate_parts").rglob("*.parquet"))
    assert len(parts) == 6
    victim = [p for p in parts if p.name == "trained__test__on_demand.parquet"][0]
    victim.unlink()
    others = {p: p.stat().st_mtime_ns for p in parts if p != victim}
    assert _run(root, pf) == 0
    assert victim.exists() and all(p.stat().st_mtime_ns == t for p, t in others.items())
    assert _without_latency(out / "rollouts.parquet") == first


def test_changed_settings_do_not_reuse_parts(world, tiny_text_model_path):
    w, _, warmed = world
    root = w.root
    pf = _params_file(root, w, warmed, str(tiny_text_model_path), modes=["direct"], models=[
        {"name": "base", "path": str(tiny_text_model_path)}])
    assert _run(root, pf) == 0
    assert _run(root, pf, "sampling.max_tokens=8") == 0
    rows = pq.read_table(root / "data" / "evaluate" / "rollouts.parquet").to_pylist()
    assert rows and all(r["completion_tokens"] <= 8 for r in rows)


def test_missing_model_and_dataset_fail_with_a_clear_message(world, tiny_text_model_path, capsys):
    w, _, warmed = world
    pf = _params_file(w.root, w, warmed, "data/no_such/model")
    assert _run(w.root, pf) == 2
    assert "model 'base'" in capsys.readouterr().err
    pf = _params_file(w.root, w, warmed, str(tiny_text_model_path), datasets={"test": {"path": "data/nope.parquet"}})
    assert _run(w.root, pf) == 2
    assert "data/nope.parquet not found" in capsys.readouterr().err


def test_dataset_loading_excludes_bad_rows_and_labels(world, tmp_path):
    w, _, _ = world
    items = [dict(it) for it in w.items[:4]]
    path = tmp_path / "bench.parquet"
    _with_labels(items, path, ["search_free", "not_a_label", None, "text_search_required"])
    table = pq.read_table(path).to_pylist()
    table[2]["question"] = "   "  # invalid item
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(path)), path)
    ds = load_dataset("bench", DatasetParams(path=str(path)))
    assert ds.n_rows == 4 == len(ds.items) + len(ds.excluded)
    assert sorted(e["reason"] for e in ds.excluded) == ["item_invalid", "label_unknown"]
    assert any("not_a_label" in e["detail"] and "bench" in e["detail"] for e in ds.excluded)
    assert ds.labels[items[0]["id"]] == "search_free" and ds.labels[items[3]["id"]] == "text_search_required"
    unlabelled = load_dataset("bench", DatasetParams(path=str(path), label_column=""))
    assert all(v is None for v in unlabelled.labels.values()) and len(unlabelled.items) == 3


def test_extra_benchmark_through_a_gather_source_with_column_mapping(tmp_path):
    """The paper's veRL parquet fixture, read with the mmsearch_r1 gather source (no labels: subsets are null)."""
    from shared_fixtures import MMSEARCH_R1_MINI, require_shared_fixture

    fixture = require_shared_fixture(MMSEARCH_R1_MINI)
    ds = load_dataset("paper", DatasetParams(path=str(fixture), format="mmsearch_r1", label_column=""))
    assert ds.n_rows == len(ds.items) + len(ds.excluded) and ds.items
    assert all(it["question"] and it["answer"] for it in ds.items)


def test_stratified_subset_is_seeded_stratified_and_order_free():
    items = [{"id": f"i{k}"} for k in range(20)]
    labels = {f"i{k}": ("search_free" if k < 15 else "image_search_required") for k in range(20)}
    labels["i19"] = None
    a = stratified_subset(items, labels, 8, seed=1)
    b = stratified_subset(list(reversed(items)), labels, 8, seed=1)
    assert a == b and len(a) == 8
    strata = [labels[it["id"]] for it in a]
    assert strata.count("search_free") == 6 and strata.count("image_search_required") == 1 and strata.count(None) == 1
    assert stratified_subset(items, labels, 8, seed=2) != a
    assert len(stratified_subset(items, labels, 0, seed=1)) == 20


@pytest.mark.parametrize("name", ["mmsearch_r1", "tool_calls"])
def test_forced_workflow_turns_parse_back_in_both_protocols(name):
    from pipeline.evaluate.modes import forced_text
    from pipeline.rollout.protocols import get_protocol

    proto = get_protocol(name)
    img_text, txt_text = forced_text(proto, "image_search"), forced_text(proto, "text_search", "Flag of Peru capital")
    img, txt = proto.parse_call(img_text), proto.parse_call(txt_text)
    assert img.kind == "image_search" and txt.kind == "text_search" and txt.query.strip() == "Flag of Peru capital"
    # the workflow's turns are well formed for the scorer: RAG rollouts are judged on the model's answer turn
    assert proto.score([img_text, txt_text, "<reason>r</reason><answer>Lima</answer>"]).format_ok
    assert ("<reason>" in img_text) is (name == "mmsearch_r1")  # only the tag protocol needs a reason
    if name == "mmsearch_r1":  # the turn as the demonstrations write it: the action right after </reason>
        assert "</reason><search>" in img_text and "</reason><text_search>" in txt_text



def test_rag_query():
    from pipeline.evaluate.modes import rag_query

    assert rag_query("What is the capital\nof it?", ["Flag of Peru", "x"], "title_question") == \
        "Flag of Peru What is the capital of it?"
    assert rag_query("Q?", ["Flag of Peru"], "question") == "Q?"
    assert rag_query("Q?", [], "title_question") == "Q?"  # the image search found nothing


def test_per_model_modes_compare_with_the_base_rag_and_append_the_label_moves(world, tiny_text_model_path, capsys):
    """The paper's Table 1 shape: RAG only for the base model; the trained policy's vs_rag compares with it. The
    reprobe stage's table of label moves is appended to the report when present, and its absence is reported."""
    w, _, warmed = world
    root = w.root
    moves = root / "data" / "reprobe" / "transitions.md"
    moves.parent.mkdir(parents=True, exist_ok=True)
    moves.write_text("## Labels after re-probing with the trained policy\n\n| before \\ after | free |\n")
    pf = _params_file(root, w, warmed, str(tiny_text_model_path), out_dir="data/eval_modes", parts_dir="data/eval_mp",
                      max_items=4, models=[{"name": "base", "path": str(tiny_text_model_path)},
                                           {"name": "trained", "path": warmed, "modes": ["on_demand"]}])
    assert _run(root, pf) == 0
    out = root / "data" / "eval_modes"
    rows = pq.read_table(out / "rollouts.parquet").to_pylist()
    assert sorted({(r["model"], r["condition"]) for r in rows}) == [
        ("base", "direct"), ("base", "on_demand"), ("base", "rag"), ("trained", "on_demand")]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["trained"]) == {"on_demand", "vs_rag"}
    base_rag, trained_od = metrics["base"]["rag"]["test"], metrics["trained"]["on_demand"]["test"]
    gap = metrics["trained"]["vs_rag"]["test"]["accuracy_gap"]
    assert gap == pytest.approx(trained_od["accuracy"] - base_rag["accuracy"])
    table = (out / "table.md").read_text()
    assert "| RAG workflow | trained |" not in table and "| On-demand search | trained |" in table
    assert table.rstrip().endswith("| before \\ after | free |")
    moves.unlink()
    assert _run(root, pf) == 0  # every unit reused; the report now says the moves are missing
    assert "no data/reprobe/transitions.md" in capsys.readouterr().err
    assert "before \\ after" not in (out / "table.md").read_text()
    with pytest.raises(Exception, match="must be distinct values of evaluate.modes"):
        _run(root, _params_file(root, w, warmed, str(tiny_text_model_path), modes=["direct"], models=[
            {"name": "base", "path": str(tiny_text_model_path), "modes": ["rag"]}]))
