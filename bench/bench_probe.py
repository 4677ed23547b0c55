"""Probe throughput: the batched multi-turn loop vs a naive loop, and adaptive vs fixed-K sampling.

    python bench/bench_probe.py [--params params.yaml] [--items 32] [--samples 4] [--naive-items 4]

Uses the probe's model (data/bootstrap/model, or --model), items (data/dedup/items.parquet) and search tools (the
`search:` section; the cache is warmed by the first pass so both loops see the same tool latency):
1. batched: `run_rollouts` over all items at once (vLLM `n` samples per prompt, all live trajectories per turn);
2. naive: the same engine, one item, one sample, one turn at a time (K separate calls with n=1 per item);
   rollouts/s of both and the speed-up;
3. adaptive vs fixed K (closed_book and tools): generations played and agreement of the labels the two give.
Prints figures; writes nothing but the search cache.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="")
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--naive-items", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--engine", default="vllm")
    args = ap.parse_args()
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        os.environ.setdefault(k, v)

    import dataclasses

    import datasets

    from pipeline.config import load_section
    from pipeline.label import label_items
    from pipeline.rollout.engines import make_engine
    from pipeline.rollout.loop import run_rollouts
    from pipeline.rollout.protocols import get_protocol
    from pipeline.schema import read_items
    from pipeline.search import SearchParams, SearchTools
    from stages.probe import AdaptiveParams, Params, probe_batch, resolve_labeler, select_items

    params: Params = load_section(Params, "probe", args.params)
    model = resolve_labeler(args.model or params.model)
    ds = read_items(params.items).cast_column("image", datasets.Image(decode=False))
    items = [ds[i] for i in select_items(ds["id"], args.items, params.seed)]
    proto = get_protocol(params.protocol, params.limits)
    tools = SearchTools.from_params(load_section(SearchParams, "search", args.params))
    engine = make_engine(args.engine, model, protocol=proto, seed=params.seed, params=params.engine)
    k = args.samples
    common = dict(sampling=params.sampling, seed=1, search_k=params.search_k or None)
    run_rollouts(engine, proto, tools, items, "tools", 1, "em", **common)  # warm the search cache and the engine

    t = time.perf_counter()
    batched = run_rollouts(engine, proto, tools, items, "tools", k, "em", **common)
    tb = time.perf_counter() - t
    naive_items = items[: args.naive_items]
    t = time.perf_counter()
    naive = []
    for it in naive_items:
        for s in range(k):
            naive += run_rollouts(engine, proto, tools, [it], "tools", 1, "em", sample_start=s,
                                  **{**common, "seed": 100 + s})
    tn = time.perf_counter() - t
    rb, rn = len(batched) / tb, len(naive) / tn
    print(f"engine {args.engine}, model {Path(model).name}, {len(items)} items x {k} samples (tools condition)")
    print(f"batched: {len(batched)} rollouts in {tb:.1f} s = {rb:.2f} rollouts/s")
    print(f"naive:   {len(naive)} rollouts in {tn:.1f} s = {rn:.2f} rollouts/s  -> speed-up {rb / rn:.1f}x")

    fixed_p = dataclasses.replace(params, samples=k, adaptive=AdaptiveParams(enabled=False))
    adapt_p = dataclasses.replace(params, samples=k, adaptive=dataclasses.replace(params.adaptive, enabled=True))
    rows = {"fixed": [], "adaptive": []}
    gens = {"fixed": 0, "adaptive": 0}
    for name, p in (("fixed", fixed_p), ("adaptive", adapt_p)):
        for cond in ("closed_book", "tools"):
            r, g = probe_batch(engine, proto, tools if cond == "tools" else None, items, cond, p, 7, model)
            rows[name] += r
            gens[name] += g
    lf = {l["id"]: l["label"] for l in label_items(rows["fixed"])}
    la = {l["id"]: l["label"] for l in label_items(rows["adaptive"])}
    agree = sum(lf[i] == la.get(i) for i in lf) / len(lf)
    print(f"fixed K={k}: {gens['fixed']} rollouts; adaptive: {gens['adaptive']} rollouts "
          f"({1 - gens['adaptive'] / gens['fixed']:.1%} saved); label agreement {agree:.1%}")
    engine.close()


if __name__ == "__main__":
    main()
