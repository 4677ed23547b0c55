"""bench/claim_compare.py: two claim-experiment folders are the same run by run (timings aside), or it says what
differs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


def compare_module():
    path = Path(__file__).resolve().parents[1] / "bench" / "claim_compare.py"
    spec = importlib.util.spec_from_file_location("claim_compare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(folder: Path, accuracy: float, step_time: float, answer: str, minutes: float) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    metrics = {"trained": {"on_demand": {"test": {"accuracy": accuracy, "search_ratio": 0.691, "n_items": 139,
                                                  "per_label": [{"label": "search_free", "n": 44}]}}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "reprobe.json").write_text(json.dumps({"items": 139, "required_to_search_free": 0}))
    (folder / "timing.json").write_text(json.dumps({"run_minutes": minutes}))
    (folder / "curves.tsv").write_text("step\treward\tstep_time\n1\t0.5\t%s\n2\t0.75\t20.0\n" % step_time)
    pq.write_table(pa.table({"rollout_id": ["a/0", "b/0"], "model": ["trained", "trained"],
                             "final_answer": ["Paris", answer], "latency_s": [1.0, minutes]}),
                   folder / "rollouts.parquet")


def test_same_runs_pass_whatever_the_timings(tmp_path, capsys):
    cc = compare_module()
    write_run(tmp_path / "a" / "baseline", 0.871, 24.0, "Chad", 17.1)
    write_run(tmp_path / "b" / "baseline", 0.871, 19.0, "Chad", 20.7)
    assert cc.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "baseline: same (metrics.json, reprobe.json, curves.tsv, rollouts.parquet compared; minutes 17.1 vs 20.7)" \
        in out and "1 of 1 runs reproduced within 0.0" in out


def test_a_changed_figure_trajectory_or_curve_is_named(tmp_path, capsys):
    cc = compare_module()
    write_run(tmp_path / "a" / "baseline", 0.871, 24.0, "Chad", 17.1)
    write_run(tmp_path / "b" / "baseline", 0.864, 24.0, "Peru", 17.1)
    assert cc.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "metrics.json: trained.on_demand.test.accuracy" in out and "rollouts.parquet: b/0 (trained)" in out
    # within a stated noise the figure is the same, the trajectory is not
    assert cc.main([str(tmp_path / "a"), str(tmp_path / "b"), "--tolerance", "0.01"]) == 1
    assert "metrics.json:" not in capsys.readouterr().out
    (tmp_path / "b" / "baseline" / "curves.tsv").write_text("step\treward\tstep_time\n1\t0.5\t1\n")
    assert cc.compare_run(tmp_path / "a" / "baseline", tmp_path / "b" / "baseline", 0.0)["curves.tsv"] == \
        ["steps 2 vs 1"]


def test_no_shared_run_is_an_error(tmp_path, capsys):
    cc = compare_module()
    write_run(tmp_path / "a" / "baseline", 0.871, 24.0, "Chad", 17.1)
    (tmp_path / "b").mkdir()
    assert cc.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert cc.main([str(tmp_path / "a"), str(tmp_path / "a"), "--runs", "gdpo"]) == 2
    assert "['gdpo']" in capsys.readouterr().out


@pytest.mark.parametrize("a, b, same", [(1, 1.0, True), (float("nan"), float("nan"), True), (True, 1, False),
                                        ("x", "x", True), (0.5, 0.52, False)])
def test_values_compare_as_numbers_only_when_both_are(a, b, same):
    assert compare_module().same_value(a, b, 0.01) is same
