"""The Table-1-shaped Markdown, the summaries (avg, vs_rag) and the plot data of the evaluation report."""
import csv
import json
from pathlib import Path

import pytest

from pipeline.evaluate.report import (behaviour_table, key_table, plot_records, render_table, with_summaries,
                                      write_plots)
from pipeline.evaluate.metrics import METRIC_KEYS


def metrics(acc, sr, **kw):
    m = {k: None for k in METRIC_KEYS}
    m.update(n_items=10, n_rollouts=10, tool_calls=0, failed_tool_calls=0, refused_tool_calls=0,
             n_search_required=0, n_search_free=0, accuracy=acc, search_ratio=sr)
    m.update(kw)
    return m


NESTED = {
    "base": {
        "direct": {"test": metrics(0.10, 0.0), "extra": metrics(0.30, 0.0)},
        "rag": {"test": metrics(0.40, 1.0), "extra": metrics(0.50, 1.0)},
        "on_demand": {"test": metrics(0.35, 0.5)},  # no result on `extra`
    },
    "trained": {
        "direct": {"test": metrics(0.20, 0.0), "extra": metrics(0.20, 0.0)},
        "rag": {"test": metrics(0.50, 1.0), "extra": metrics(0.60, 1.0)},
        "on_demand": {"test": metrics(0.55, 0.6, over_search_rate=0.25), "extra": metrics(0.65, 0.8)},
    },
}
MODELS, MODES, DATASETS = ["base", "trained"], ["direct", "rag", "on_demand"], ["test", "extra"]


def table_rows(md):
    return [line for line in md.splitlines() if line.startswith("| ")]


def cells(row):
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_table_has_one_row_per_model_and_mode_and_a_column_pair_per_dataset():
    md = render_table(NESTED, MODELS, MODES, DATASETS)
    main = md.split("\n## ")[0]
    rows = table_rows(main)
    assert rows[0] == "| Mode | Model | Avg Acc | Avg SR | test n | test Acc | test SR | extra n | extra Acc | extra SR |"
    body = rows[1:]
    assert len(body) == len(MODELS) * len(MODES)
    # grouped by mode like the paper: direct rows first, on-demand last
    assert body[0].startswith("| Direct answer | base |") and body[-1].startswith("| On-demand search | trained |")
    trained_od = cells(body[-1])
    assert trained_od[2:4] == ["60.0", "70.0"]  # avg = mean over the datasets
    assert trained_od[4:10] == ["10", "55.0", "60.0", "10", "65.0", "80.0"]  # n, Acc, SR per dataset
    base_od = cells([r for r in body if r.startswith("| On-demand search | base |")][0])
    assert base_od[7:10] == ["–", "–", "–"]  # missing dataset shows a dash, not 0
    assert base_od[2] == "35.0"  # the average skips the missing dataset


def test_efficiency_tables_per_dataset_show_nulls_as_dashes():
    md = render_table(NESTED, MODELS, MODES, DATASETS)
    assert "## test: search efficiency" in md and "## extra: search efficiency" in md
    test_part = md.split("## test: search efficiency")[1].split("## extra")[0]
    row = cells([r for r in table_rows(test_part) if r.startswith("| On-demand search | trained |")][0])
    assert row[2] == "10 (0/0)" and row[3] == "10" and row[4] == "55.0" and row[8] == "25.0"  # items, traj., Acc, over-search
    assert row[5] == "–"  # accuracy on search-required: no such items
    extra_part = md.split("## extra: search efficiency")[1]
    assert not any(r.startswith("| On-demand search | base |") for r in table_rows(extra_part))


def test_summaries_add_avg_and_vs_rag():
    s = with_summaries(NESTED, DATASETS)
    assert s["trained"]["on_demand"]["avg"]["accuracy"] == pytest.approx(0.60)
    assert s["trained"]["on_demand"]["avg"]["search_ratio"] == pytest.approx(0.70)
    assert s["trained"]["vs_rag"]["test"]["search_reduction"] == pytest.approx(0.4)
    assert s["trained"]["vs_rag"]["test"]["accuracy_gap"] == pytest.approx(0.05)
    assert s["trained"]["vs_rag"]["avg"]["search_reduction"] == pytest.approx(0.3)
    assert s["base"]["vs_rag"]["extra"] == {"search_reduction": None, "accuracy_gap": None}
    assert "avg" not in NESTED["base"]["direct"]  # the input is not modified


def test_plot_records_and_files(tmp_path):
    recs = plot_records(NESTED, MODELS, MODES, "extra")
    assert [r["point"] for r in recs] == ["base/direct", "base/rag", "trained/direct", "trained/rag", "trained/on_demand"]
    assert recs[-1] == {"point": "trained/on_demand", "model": "trained", "mode": "on_demand",
                        "search_ratio": 80.0, "accuracy": 65.0}
    written = write_plots(NESTED, MODELS, MODES, DATASETS, tmp_path / "plots", tmp_path / "acc.png")
    assert [p.name for p in written] == ["accuracy_vs_search_test.csv", "accuracy_vs_search_extra.csv", "acc.png"]
    with open(tmp_path / "plots" / "accuracy_vs_search_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["search_ratio"] == "0.0" and rows[0]["accuracy"] == "10.0"
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cells_carry_their_interval_and_tool_productivity():
    from pipeline.evaluate.metrics import compute_metrics
    from test_evaluate_metrics import LABELS, four_items

    # four items: 3/4 correct (Wilson [30.1, 95.4]), 2/4 searched ([15.0, 85.0]), 3 correct for 3 calls
    nested = {"m": {"on_demand": {"test": compute_metrics(four_items(), LABELS)}}}
    md = render_table(nested, ["m"], ["on_demand"], ["test"])
    main = cells(table_rows(md.split("\n## ")[0])[1])
    assert main[4:7] == ["4", "75.0 [30.1–95.4]", "50.0 [15.0–85.0]"]
    eff = cells(table_rows(md.split("## test: search efficiency")[1])[1])
    assert eff[2:5] == ["4 (2/2)", "4", "75.0 [30.1–95.4]"]
    assert eff[8] == "50.0 [9.5–90.5]"  # over-search: 1 of the 2 search-free items
    assert eff[12].startswith("1.00 [")  # tool productivity: 3 correct / 3 calls
    assert "Tool prod." in md and "Wilson" in md


def claim_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("claim", Path(__file__).resolve().parents[1] / "bench" / "claim_experiment.py")
    claim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claim)
    return claim


def test_claim_table_reads_the_base_rag_and_the_label_moves(tmp_path):
    """bench/claim_experiment.py's table: RAG figures from the base model when the trained one has no RAG rows, the
    search cut and accuracy gap computed from them, and the reprobe stage's moves per run."""
    claim = claim_module()
    cell = lambda acc, sr, **kw: {"test": {"accuracy": acc, "search_ratio": sr, "n_items": 10, **kw}}  # noqa: E731
    metrics = {"base": {"rag": cell(0.6, 1.0), "on_demand": cell(0.7, 0.8, over_search_rate=0.5)},
               "trained": {"on_demand": cell(0.65, 0.6, over_search_rate=0.25, tool_productivity=1.5)}}
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "baseline" / "reprobe.json").write_text(json.dumps(
        {"required_to_search_free": 3, "search_free_to_required": 1, "items": 10}))
    (tmp_path / "baseline" / "timing.json").write_text(json.dumps({"run_minutes": 14.5, "sampled_minutes": 3.0}))
    text = claim.table(tmp_path, ["no_penalty", "baseline"])
    row = next(line for line in text.splitlines() if line.startswith("| baseline"))
    assert row == "| baseline | 10 | 65.0 | 60.0 | 60.0 | 40% | +5.0 | 25.0 / 50.0 | – | 1.50 | 3 / 1 of 10 | 14.5 + 3.0 |"
    assert "| no_penalty | – | (not run) |" in text


def test_claim_sampled_evaluation_params_pass_the_stage_and_fill_a_second_table(tmp_path):
    """`--sampled K`: the params it writes are a valid evaluate section (checked by the stage's own loader) that plays
    only on-demand search, for base and trained, K rollouts at temperature 1, with the rest of params.yaml as it
    was; its figures form a second table, and a run without them leaves it out."""
    import yaml

    from pipeline.config import load_section
    from pipeline.evaluate.run import EvaluateParams

    claim = claim_module()
    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    spec = claim.sampled_params(params, 4, "out/s", "parts/s")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    ev = load_section(EvaluateParams, "evaluate", tmp_path / "p.yaml")
    assert ev.modes == ["on_demand"] and [m.modes for m in ev.models] == [["on_demand"]] * len(ev.models) == [["on_demand"]] * 2
    assert ev.samples == 4 and ev.sampling.temperature == 1.0 and ev.sampling.max_tokens == params["evaluate"]["sampling"]["max_tokens"]
    assert (ev.out_dir, ev.parts_dir, ev.transitions) == ("out/s", "parts/s", "")
    assert params["evaluate"]["samples"] == 1 and spec["train"] == params["train"]  # the workspace's params untouched
    cell = lambda acc, sr, over: {"test": {"accuracy": acc, "search_ratio": sr, "over_search_rate": over,  # noqa: E731
                                           "under_search_rate": 0.1, "n_rollouts": 40}}
    (tmp_path / "baseline" / "sampled").mkdir(parents=True)
    (tmp_path / "baseline" / "sampled" / "metrics.json").write_text(json.dumps(
        {"base": {"on_demand": cell(0.5, 0.7, 0.2)}, "trained": {"on_demand": cell(0.55, 0.6, 0.1)}}))
    text = claim.sampled_table(tmp_path, ["no_penalty", "baseline"])
    assert text.strip().splitlines()[-1] == "| baseline | 40 | 55.0 | 50.0 | 60.0 | 70.0 | 10.0 | 20.0 | 10.0 | 10.0 |"
    assert "no_penalty" not in text and claim.sampled_table(tmp_path, ["no_penalty"]) == ""


def test_claim_start_over_search_commands_pass_the_stages_loaders_and_the_table_shows_the_start(tmp_path):
    """`--start-over-search`: every run's dvc command trains from the base model's cold start with the share given
    (a mapping forced in with ++, in Hydra's grammar) and evaluates a `start` row; the overrides, applied to
    params.yaml, pass the train and evaluate stages' own loaders; the table then shows the start's figures."""
    import yaml

    from pipeline.config import load_section
    from pipeline.evaluate.run import EvaluateParams
    from trainer.config import TrainParams

    claim = claim_module()
    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    base = claim.start_overrides(params, 0.5, "base")
    assert base["train.model"] == params["bootstrap"]["base_model"] and base["train.cold_start_overrides"] == \
        {"over_search": 0.5}
    extra = claim.start_overrides(params, 0.75)
    (name, cmd), = claim.run_commands(["no_penalty"], params, extra, "t")
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"]
    assert f"++train.cold_start_overrides={{over_search: 0.75, cold_start: {{steps: {claim.START_STEPS}}}}}" in sets
    assert "train.cold_start=true" in sets and "train.search_penalty=0.0" in sets
    assert not any(s.startswith("train.model=") for s in sets)  # the labeler, params.yaml's train.model
    models = next(s for s in sets if s.startswith("evaluate.models="))
    assert yaml.safe_load(models.split("=", 1)[1])[1] == {"name": "start", "path": "data/train/cold_start/model",
                                                           "modes": ["on_demand"]}
    for key, value in extra.items():  # what `dvc exp run -S` writes into params.yaml
        section, *path = key.split(".")
        node = params[section]
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    train = load_section(TrainParams, "train", tmp_path / "p.yaml")
    assert train.cold_start and train.cold_start_overrides["over_search"] == 0.75
    assert claim.start_overrides(params, 0.75)["evaluate.models"] == extra["evaluate.models"]  # one start row
    ev = load_section(EvaluateParams, "evaluate", tmp_path / "p.yaml")
    assert [m.name for m in ev.models] == ["base", "start", "trained"]
    assert [m.name for m in load_section(EvaluateParams, "evaluate", tmp_path / "p.yaml").models] == \
        [m["name"] for m in claim.sampled_params(params, 2, "o", "p")["evaluate"]["models"]]
    cell = lambda acc, sr, over: {"test": {"accuracy": acc, "search_ratio": sr, "n_items": 10,  # noqa: E731
                                           "over_search_rate": over}}
    metrics = {"base": {"rag": cell(0.6, 1.0, 1.0), "on_demand": cell(0.7, 0.7, 0.1)},
               "start": {"on_demand": cell(0.7, 0.95, 0.9)}, "trained": {"on_demand": cell(0.7, 0.6, 0.05)}}
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "metrics.json").write_text(json.dumps(metrics))
    row = claim.table(tmp_path, ["baseline"]).splitlines()[-1]
    assert "| 5.0 / 10.0 (start: 90.0, SR 95.0) | – |" in row  # no answer key in these metrics
    metrics["answer_key"] = {"trained": {"on_demand": {"test": {"over_search_rate": 0.0}}},
                             "base": {"on_demand": {"test": {"over_search_rate": 0.02}}}}
    (tmp_path / "baseline" / "metrics.json").write_text(json.dumps(metrics))
    row = claim.table(tmp_path, ["baseline"]).splitlines()[-1]
    assert "| 5.0 / 10.0 (start: 90.0, SR 95.0) | 0.0 / 2.0 |" in row


def test_claim_profiles_pass_the_train_stages_loader(tmp_path):
    """Every `--profile` budget and every run's overrides, applied to params.yaml as `dvc exp run -S` would, is a
    valid train section (a misspelt or mistyped key, or a weight the loader refuses, fails here, not an hour into an
    experiment)."""
    import yaml

    from pipeline.config import load_section
    from trainer.config import TrainParams

    claim = claim_module()
    root = Path(__file__).resolve().parents[1]
    budgets = {f"profile {k}": v for k, v in claim.PROFILES.items()}
    budgets.update({f"run {k}": {key: claim.hydra_value(v) for key, v in keys.items()}
                    for k, keys in claim.RUNS.items()})
    for name, keys in budgets.items():
        params = yaml.safe_load((root / "params.yaml").read_text())
        for key, value in keys.items():
            *path, field = key.split(".")
            node = params
            for part in path:
                node = node[part]
            node[field] = yaml.safe_load(value)
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
        train = load_section(TrainParams, "train", tmp_path / "p.yaml")
        for key, value in keys.items():
            got = train
            for part in key.split(".")[1:]:
                got = getattr(got, part)
            assert got == yaml.safe_load(value), (name, key, got)
    assert claim.PROFILES["cpu48"]["train.max_steps"] == "48"
    assert {"profile cpu36", "run gdpo_weighted"} <= set(budgets)


def test_claim_restores_the_workspace_after_a_failed_run(tmp_path, monkeypatch):
    """A failed `dvc exp run` leaves its -S override in params.yaml, a dvc.lock with the stages that ran, a failed
    stage's cached outputs deleted and its uncached ones (metrics, in git) rewritten; restore_workspace puts params,
    lock and uncached outputs back byte for byte and checks the cached outputs out of the DVC cache (a real DVC
    repository; no stage re-runs)."""
    import subprocess

    claim = claim_module()
    monkeypatch.chdir(tmp_path)
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True, text=True)  # noqa: E731
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    Path("params.yaml").write_text("n: 1\n")
    Path("dvc.yaml").write_text("stages:\n  make:\n    cmd: python -c \"import yaml; n = yaml.safe_load(open("
                                "'params.yaml'))['n']; open('out.txt','w').write(str(n)); "
                                "open('m.json','w').write(str(n))\"\n"
                                "    params: [n]\n    outs: [out.txt]\n    metrics: [{m.json: {cache: false}}]\n")
    run("dvc", "repro", "-q")
    before = claim.snapshot_workspace(Path("params.yaml"))
    assert set(before) == {Path("params.yaml"), Path("dvc.lock"), Path("m.json")}
    # what a failed run leaves: the override, a lock of another run, the output gone, the metrics rewritten
    Path("params.yaml").write_text("n: 2\n")
    Path("dvc.lock").write_text(before[Path("dvc.lock")].decode().replace("n: 1", "n: 2"))
    Path("out.txt").unlink()
    Path("m.json").write_text("2")
    claim.restore_workspace(before)
    assert Path("params.yaml").read_text() == "n: 1\n"
    assert Path("out.txt").read_text() == "1" and Path("m.json").read_text() == "1"
    assert "up to date" in run("dvc", "status").stdout


def test_behaviour_table_counts_action_sequences_per_label():
    """Hand-built trajectories: cells count each label's action sequences (correct ones in brackets), rare sequences
    beyond `top` go to 'other', other modes, models and datasets are left out."""
    def row(label, actions, correct, model="trained", mode="on_demand", dataset="test"):
        return {"dataset": dataset, "condition": mode, "model": model, "label": label, "actions": actions,
                "correct": correct}
    rows = [row("mixed_search_required", ["image_search", "answer"], False)] * 3 + \
        [row("mixed_search_required", ["image_search", "text_search", "answer"], True),
         row("search_free", ["answer"], True), row("search_free", ["answer"], False),
         row("search_free", ["text_search", "text_search", "answer"], True),
         row("search_free", ["answer"], True, mode="rag"), row("search_free", ["answer"], True, model="base"),
         row("search_free", ["answer"], True, dataset="other")]
    text = behaviour_table(rows, ["trained"], "test", top=3)
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in text.splitlines()
             if line.startswith("| trained |")}
    header = next(line for line in text.splitlines() if line.startswith("| Model |"))
    assert header == "| Model | Label | image_search > answer | answer | image_search > text_search > answer | other |"
    assert lines[("trained", "mixed_search_required")].endswith("| 3 (0) | – | 1 (1) | – |")
    assert lines[("trained", "search_free")].endswith("| – | 2 (1) | – | 1 (1) |")
    assert behaviour_table(rows, ["trained"], "missing") == ""


def test_key_table_puts_the_answer_keys_figures_next_to_the_labels():
    """One row per model x mode that has key figures, the key's over-/under-search (with intervals) next to the
    label-based ones; empty for a dataset without any key."""
    key = {"n_search_required": 3, "n_search_free": 1, "over_search_rate": 0.0, "under_search_rate": 1 / 3,
           "accuracy_search_free": 1.0, "accuracy_search_required": 2 / 3,
           "ci95": {"over_search_rate": {"lo": 0.0, "hi": 0.79}}}
    by_key = {"trained": {"on_demand": {"test": key}}}
    text = key_table(by_key, NESTED, MODELS, MODES, "test")
    rows = [cells(r) for r in table_rows(text) if r.startswith("| On-demand")]
    assert rows == [["On-demand search", "trained", "3/1", "0.0 [0.0–79.0]", "25.0", "33.3", "–", "100.0", "66.7"]]
    assert key_table(by_key, NESTED, MODELS, MODES, "extra") == ""
