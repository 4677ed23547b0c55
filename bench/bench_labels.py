"""How right and how stable the labels are: accuracy against the demo world's answer key, agreement of two probe +
label runs with different seeds, and adaptive cascade probing against the full fixed-K design.

    python bench/bench_labels.py [--params params.yaml] [--items 0] [--seeds 0 1] [--fixed-items 64] [--fixed-k 8]
                                 [--evidence data/probe] [--set KEY=VALUE ...]

Uses the probe's model (data/bootstrap/model), items (data/dedup/items.parquet), search tools (`search:`) and label
rule (`label_rule:`), one engine for every run:
1. the probe as configured (cascade + adaptive) with each seed in --seeds over the first --items items (0 = all the
   probe would take): labels, their accuracy against the answer key, rollouts played;
   With --evidence, the first seed's rollouts are read from that probe output (data/probe/*/evidence.parquet of a
   finished `dvc repro`, which ran with probe.seed = the first seed) instead of being played again;
2. agreement of the labels of the first two seeds (uncertain counts as a label);
3. on --fixed-items of them (a seeded choice spread over the file, so every kind of item is in it): every condition
   with K = --fixed-k rollouts (no cascade, no early stop) labelled by the same rule, against the adaptive labels of
   the first seed on the same items: agreement, and how many times fewer rollouts the adaptive cascade played.
Prints one JSON object (with the machine); writes nothing but the search cache.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def probe_all(engine, protocol, tools, items, params, model):
    from pipeline.probe import probe_batch

    rows, t0 = [], time.perf_counter()
    for i in range(0, len(items), params.batch_items):
        rows += probe_batch(engine, protocol, lambda: tools, items[i:i + params.batch_items], params, model)
    return rows, time.perf_counter() - t0


def read_evidence(folder, ids):
    import glob

    import pandas as pd

    files = sorted(glob.glob(os.path.join(folder, "*", "evidence.parquet")))
    if not files:
        raise SystemExit(f"error: --evidence {folder}: no */evidence.parquet there; run `dvc repro probe` first")
    df = pd.concat([pd.read_parquet(f) for f in files])
    return [r for r in df.to_dict("records") if r["item_id"] in ids]


def labels_of(rows, ids, rule):
    from pipeline.curate.label import label_items

    return {lab["id"]: lab["label"] for lab in label_items(rows, ids, rule)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--items", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--fixed-items", type=int, default=64)
    ap.add_argument("--fixed-k", type=int, default=8)
    ap.add_argument("--evidence", default="", help="probe output folder whose evidence stands for the first seed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a probe key")
    args = ap.parse_args()
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        os.environ.setdefault(k, v)

    import datasets

    from pipeline.config import load_section
    from pipeline.curate.answer_key import compare
    from pipeline.hardware import machine_line
    from pipeline.models import resolve_model
    from pipeline.probe import AdaptiveParams, ProbeParams, select_items
    from pipeline.rollout.engines import make_engine
    from pipeline.schema import read_items
    from pipeline.search import SearchParams, SearchTools

    params: ProbeParams = load_section(ProbeParams, "probe", args.params, args.set)
    model = resolve_model(params.model)
    ds = read_items(params.items).cast_column("image", datasets.Image(decode=False))
    chosen = select_items(ds["id"], params.max_items, params.seed)
    items = [ds[i] for i in (chosen[: args.items] if args.items else chosen)]
    ids = [it["id"] for it in items]
    protocol = params.make_protocol()
    tools = SearchTools.from_params(load_section(SearchParams, "search", args.params))
    engine = make_engine(params.engine.kind, model, protocol=protocol, seed=params.seed, params=params.engine)
    out: dict = {"machine": machine_line(), "load_average": os.getloadavg(), "items": len(items),
                 "conditions": params.conditions, "samples": params.samples, "runs": {}}
    runs = {}
    for seed in args.seeds:
        p = dataclasses.replace(params, seed=seed)
        if args.evidence and seed == args.seeds[0]:
            rows, secs = read_evidence(args.evidence, set(ids)), None  # played by the probe stage, not timed here
        else:
            rows, secs = probe_all(engine, protocol, tools, items, p, model)
        labels = labels_of(rows, ids, p)
        key, _ = compare([{"id": it["id"], "meta": it["meta"]} for it in items], labels,
                         {r["item_id"]: r["saw_image"] for r in rows})
        runs[seed] = (rows, labels)
        out["runs"][str(seed)] = {"rollouts": len(rows), "seconds": None if secs is None else round(secs, 1),
                                  "accuracy": key["accuracy"], "uncertain": key["uncertain"], "recall": key["recall"]}
        print(json.dumps({"seed": seed, **out["runs"][str(seed)]}), flush=True)
    if len(args.seeds) >= 2:
        a, b = runs[args.seeds[0]][1], runs[args.seeds[1]][1]
        out["seed_agreement"] = round(sum(a[i] == b[i] for i in ids) / len(ids), 4)
    if args.fixed_items:
        sub = [items[i] for i in select_items(ids, args.fixed_items, args.seeds[0])]  # spread over every kind
        sub_ids = {it["id"] for it in sub}
        full = dataclasses.replace(params, seed=args.seeds[0], samples=args.fixed_k, cascade=False,
                                   adaptive=AdaptiveParams(enabled=False))
        rows, secs = probe_all(engine, protocol, tools, sub, full, model)
        fixed = labels_of(rows, [it["id"] for it in sub], full)
        adaptive_rows = [r for r in runs[args.seeds[0]][0] if r["item_id"] in sub_ids]
        adaptive = runs[args.seeds[0]][1]
        out["fixed_vs_adaptive"] = {
            "items": len(sub), "fixed_k": args.fixed_k, "fixed_rollouts": len(rows),
            "adaptive_rollouts": len(adaptive_rows),
            "fewer_rollouts": round(len(rows) / max(len(adaptive_rows), 1), 2),
            "agreement": round(sum(fixed[i] == adaptive[i] for i in sub_ids) / len(sub_ids), 4),
            "fixed_seconds": round(secs, 1)}
    engine.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
