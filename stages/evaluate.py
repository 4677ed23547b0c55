"""Evaluate checkpoints by direct answer, the always-search RAG workflow and on-demand search: accuracy and search efficiency.

Reads:  the datasets of evaluate.datasets (default: data/balance/test.parquet, items + `label`; any extra benchmark
        parquet/folder, in item schema or through a gather source with a column mapping); the models of
        evaluate.models (default: base = data/bootstrap/model, trained = data/train/model; a folder holding only
        model_ref.json points at another model spec); the `rollout:` section (protocol, limits, search_k, judge) and
        the `search:` section (data/index, the tool cache data/cache/search, for the rag and on_demand modes).
Writes: <out_dir>/rollouts.parquet (every trajectory: ROLLOUT_FEATURES + dataset + label; `condition` = the mode,
        `model` = the model's name; rollout_id = model/mode/dataset/item/sample), <out_dir>/metrics.json (nested
        model -> mode -> dataset -> metric, so `dvc metrics show` prints keys like trained.on_demand.test.search_ratio;
        each cell with `ci95` (95% interval per rate and ratio, e.g. trained.on_demand.test.ci95.accuracy.lo) and
        tool_productivity; plus `avg` per model x mode and `vs_rag` per model; `answer_key` where items carry the
        demo world's key: over-/under-search and accuracy per subset with the labels the key implies),
        <out_dir>/table.md (the paper's Table 1 shape, n and intervals per cell, then per dataset what the
        on-demand policy did per label: its action sequences with their counts and correct ones, and the search
        decisions against the answer key next to the label-based figures),
        followed by the reprobe stage's table of label moves (evaluate.transitions, data/reprobe/transitions.md),
        <out_dir>/accuracy_vs_search.png and <out_dir>/plots/accuracy_vs_search_<dataset>.csv (DVC plots),
        <out_dir>/exclusions.parquet (dataset rows that are not valid items, with the reason), <out_dir>/run.json;
        <parts_dir>/<fingerprint>/<model>__<dataset>__<mode>.parquet while it runs (resume state).
        The shared search cache is only read: evaluation searches go through a private copy (private_cache).
Resumable: each model x dataset x mode is one unit written atomically; a killed run skips finished units. The parts
        folder is keyed by a fingerprint of the model weights, the selected items and every setting that shapes
        the rollouts, so changed inputs never reuse stale parts (pipeline/evaluate/run.py).
Metric definitions: pipeline/evaluate/metrics.py. Modes: pipeline/evaluate/modes.py.
Does not support: several engines at once (models are evaluated one after the other, one engine each); an LLM
        judge without an OpenAI-compatible endpoint; sharding across machines.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.evaluate.run import EvaluateParams

Params = EvaluateParams
SECTION = "evaluate"


def run(params: EvaluateParams, args) -> int:
    from pipeline.evaluate.metrics import metrics_by_answer_key, metrics_by_group
    from pipeline.evaluate.report import (behaviour_table, key_table, render_table, summary_lines, with_summaries,
                                          write_plots)
    from pipeline.evaluate.run import EvaluateError, evaluate
    from pipeline.io import write_exclusions, write_json
    from pipeline.schema import write_table

    try:
        ev = evaluate(params, args.params)
    except EvaluateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(params.out_dir)
    write_exclusions(ev.excluded, out / "exclusions.parquet")
    write_table(ev.rollouts, out / "rollouts.parquet")
    rows = ev.rollouts.to_pylist()
    nested = metrics_by_group(rows, ev.labels)
    names, datasets = [m.name for m in params.models], list(params.datasets)
    metrics = with_summaries(nested, datasets)
    by_key = metrics_by_answer_key(rows, ev.needs)
    write_json({**metrics, "datasets": ev.datasets, **({"answer_key": by_key} if by_key else {})},
               out / "metrics.json")
    table = render_table(nested, names, params.modes, datasets)
    table += "".join(behaviour_table(rows, names, d) + key_table(by_key, nested, names, params.modes, d)
                     for d in datasets)
    if params.transitions and Path(params.transitions).exists():
        table += "\n" + Path(params.transitions).read_text(encoding="utf-8")
    elif params.transitions:
        print(f"evaluate: no {params.transitions} (evaluate.transitions): the report has no table of label moves; "
              "run `python -m stages reprobe` first, or set it to ''", file=sys.stderr)
    (out / "table.md").write_text(table, encoding="utf-8")
    write_plots(nested, names, params.modes, datasets, out / "plots", out / "accuracy_vs_search.png")
    # Provenance (deterministic: the tool counters depend on what a resumed run re-did, so they are printed only).
    (out / "run.json").write_text(json.dumps({"fingerprints": ev.fingerprints, "model_digests": ev.digests,
                                              "models": {m.name: m.path for m in params.models}},
                                             indent=1, sort_keys=True) + "\n")
    if ev.tool_metrics is not None:
        t = ev.tool_metrics
        print(f"evaluate: search tools this run: {t.get('calls')} calls, {t.get('hits')} cache hits, "
              f"{t.get('errors')} errors")
    for line in summary_lines(metrics, names, params.modes, datasets):
        print(f"evaluate: {line}")
    print(f"evaluate: {ev.rollouts.num_rows} rollouts -> {out / 'rollouts.parquet'}, {out / 'table.md'}, "
          f"{out / 'metrics.json'}")
    return 0
