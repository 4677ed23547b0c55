"""bench/claim_seeds.py: the claim's figures per seed, their mean and range, and the issue's acceptance per seed."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def seeds_module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("claim_seeds", BENCH / "claim_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def group(acc: float, sr: float, over: float | None = None) -> dict:
    return {"test": {"accuracy": acc, "search_ratio": sr, **({"over_search_rate": over} if over is not None else {})}}


def write_run(folder: Path, acc: float, sr: float, over: float, labeler_over: float = 0.0,
              sampled: tuple[float, float] | None = None) -> None:
    folder.mkdir(parents=True)
    metrics = {"trained": {"on_demand": group(acc, sr, over)},
               "base": {"on_demand": group(0.84, 0.675, labeler_over), "rag": group(0.746, 1.0)}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if sampled:
        (folder / "sampled").mkdir()
        (folder / "sampled" / "metrics.json").write_text(json.dumps(
            {"trained": {"on_demand": group(0.65, 0.7, sampled[0])}, "base": {"on_demand": group(0.5, 0.68, sampled[1])}}))


def test_figures_per_seed_with_mean_range_and_the_acceptance(tmp_path, capsys):
    cs = seeds_module()
    write_run(tmp_path / "s0" / "baseline", 0.849, 0.690, 0.10, sampled=(0.225, 0.275))
    write_run(tmp_path / "s0" / "no_penalty", 0.873, 1.0, 1.0)
    write_run(tmp_path / "s1" / "baseline", 0.70, 0.60, 0.0)  # cuts 40% but 4.6 points below RAG; no over-search
    write_run(tmp_path / "s1" / "no_penalty", 0.87, 0.70, 0.5)  # only 10 points above
    out_file = tmp_path / "seeds.md"
    assert cs.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--labels", "seed 0,seed 1",
                    "--out", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert text == out_file.read_text()
    assert "| baseline | On-demand SR | 69.0 | 60.0 | 64.5 | 9.0 |" in text
    assert "| no_penalty | On-demand SR | 100.0 | 70.0 | 85.0 | 30.0 |" in text
    assert "| baseline | Sampled over-search | 22.5 | – | 22.5 | – |" in text  # one seed has no range
    assert "_RAG SR" not in text
    assert "| SR >= 30% below RAG, Acc within 3 points | yes | no |" in text
    assert "| no_penalty SR >= 15 points above | yes | no |" in text
    assert "| over-search below the labeler's: greedy / sampled | no / yes | equal / – |" in text
    assert cs.main([str(tmp_path / "s0"), "--sampled", "sampled8"]) == 0  # another sampled folder: none here
    assert "Sampled" not in capsys.readouterr().out


def test_sampled_over_search_is_paired_by_item(tmp_path):
    """Per search-free item: the trained policy's search share minus the labeler's; other labels and models are
    left out, and the interval is over items."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cs = seeds_module()
    rows = []
    for i in range(10):  # the labeler searches 1 of 2 samples everywhere; trained 0 of 2 on items 0-5, 2 of 2 on 6
        for k in range(2):
            rows.append(("free-%d" % i, "base", "search_free", int(k == 0)))
            rows.append(("free-%d" % i, "trained", "search_free", 0 if i < 6 else int(i == 6 or k == 0)))
            rows.append(("req-%d" % i, "trained", "text_search_required", 1))
            rows.append(("free-%d" % i, "start", "search_free", 1))
    item, model, label, count = zip(*rows)
    path = tmp_path / "rollouts.parquet"
    pq.write_table(pa.table({"item_id": item, "model": model, "label": label, "search_count": count}), path)
    p = cs.paired_over_search(path)
    assert (p["items"], p["less"], p["more"]) == (10, 6, 1)
    assert p["diff"] == pytest.approx((6 * -0.5 + 0.5 + 3 * 0.0) / 10)
    assert p["lo"] < p["diff"] < p["hi"] < 0.1
    assert cs.paired_over_search(tmp_path / "none.parquet") is None


def test_folders_without_the_runs_are_refused(tmp_path, capsys):
    cs = seeds_module()
    (tmp_path / "empty").mkdir()
    assert cs.main([str(tmp_path / "empty")]) == 2
    assert "no folder holds <run>/metrics.json" in capsys.readouterr().out
