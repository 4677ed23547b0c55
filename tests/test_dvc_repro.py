"""The whole graph through `dvc repro`, as a user runs it, on a tiny params profile in a temporary copy of the
project: every stage runs from the embedded default's params with a few dozen items, tiny models and one GRPO step,
and every stage's counts add up (nothing lost between stages)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# What the tiny profile changes in params.yaml (merged key by key); everything else is the embedded default.
TINY = {
    "gather": {"demo": {"named_capital_known": 4, "named_region_known": 2, "named_capital_unknown": 4,
                        "named_currency": 2, "flag_country": 4, "flag_capital_known": 3, "flag_region_known": 2, "flag_capital_unknown": 3,
                        "flag_currency": 2, "visual": 2, "bootstrap_countries": 4, "bootstrap_visual": 2,
                        "wiki_passages": 50}},
    # the packaged SmolLM2 (a random tiny model labels everything unanswerable and leaves nothing to balance)
    # no facts: the 199 known facts (all countries, not the tiny world's) fill most of the few cold-start steps of a
    # 4-country bootstrap; with them, a 12-step fp32 cold start on an AVX2 CPU learnt no search and every label came
    # out unanswerable (nothing to publish)
    "bootstrap": {"cold_start": {"steps": 16}, "facts": ""},
    "probe": {"samples": 4, "batch_items": 16, "engine": {"kind": "transformers", "max_batch": 32}},
    "balance": {"fractions": {"train": 0.5, "validation": 0.1, "test": 0.4}},
    "train": {"max_steps": 1, "max_items": 2, "samples": 2, "per_device_train_batch_size": 2,
              "max_completion_length": 128, "use_vllm": False},
    "evaluate": {"max_items": 3, "engine": {"kind": "transformers", "max_batch": 8}},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file() and not f.startswith("data/")]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_dvc_repro_runs_the_whole_graph_and_counts_add_up(tmp_path):
    project = tmp_path / "project"
    for f in tracked_files():
        (project / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, project / f)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(project),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    res = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    d = project / "data"

    gather = read(d / "gather/demo/metrics.json")
    assert gather["counts_add_up"] and gather["rows_in"] == gather["items_out"] + gather["bootstrap_out"] + gather["quarantined"]
    dedup = read(d / "dedup/metrics.json")
    assert dedup["items_in"] == gather["items_out"]
    assert dedup["items_in"] == dedup["items_out"] + sum(dedup["excluded"].values())
    boot = read(d / "bootstrap/metrics.json")
    assert boot["enabled"] and boot["n_demonstrations"] > 0 and boot["heldout_items"] > 0
    probe = read(d / "probe/metrics.json")
    assert probe["items"] == dedup["items_out"] and probe["per_condition"]["closed_book"]["items"] == probe["items"]
    assert probe["rollouts"] == sum(c["rollouts"] for c in probe["per_condition"].values())
    label = read(d / "label/metrics.json")
    assert label["counts_add_up"] and label["items_in"] == dedup["items_out"] == label["probed"]
    assert label["items_in"] == label["labelled"] + label["excluded"]
    assert label["answer_key"]["items"] == label["probed"]  # every demo item carries its key
    balance = read(d / "balance/metrics.json")  # every dedup item (kept or excluded) is selected or excluded, by reason
    assert balance["items_in"] == dedup["items_out"] + sum(dedup["excluded"].values())
    assert balance["items_in"] == balance["selected"] + balance["excluded"] == balance["selected"] + sum(balance["excluded_by_reason"].values())
    assert 0 < balance["selected"] <= label["labelled"]
    assert balance["selected"] == sum(s["items"] for s in balance["splits"].values())
    assert (d / "publish/dataset/README.md").exists()
    train = read(d / "train/metrics.json")
    assert train["steps"] == 1
    reprobe = read(d / "reprobe/metrics.json")  # every test item re-probed by the trained policy, each move counted
    assert reprobe["items"] == balance["splits"]["test"]["items"] == reprobe["relabel"]["items_in"]
    assert reprobe["items"] == reprobe["same_label"] + reprobe["moved_across_boundary"] + \
        reprobe["changed_search_kind"] + reprobe["fell_out"]
    assert (d / "reprobe/labels.parquet").exists() and "before \\ after" in (d / "evaluate/table.md").read_text()
    evaluate = read(d / "evaluate/metrics.json")
    if reprobe["items"]:  # the tiny labeler may leave the test split empty
        assert evaluate["trained"]["on_demand"]["test"]["n_items"] == min(3, reprobe["items"])
        assert "rag" not in evaluate["trained"] and "vs_rag" in evaluate["trained"]  # RAG is the base's workflow
        by_key = evaluate["answer_key"]["trained"]["on_demand"]["test"]  # demo items carry the answer key
        assert by_key["n_search_required"] + by_key["n_search_free"] <= min(3, reprobe["items"])
    # the repro is complete: a second run has nothing to do
    again = subprocess.run(["dvc", "status"], cwd=project, env=env, capture_output=True, text=True)
    assert "changed" not in again.stdout, again.stdout
