"""Probe throughput: the batched multi-turn loop vs a naive loop (adaptive vs fixed K: bench/bench_labels.py).

    python bench/bench_probe.py [--params params.yaml] [--items 32] [--samples 4] [--naive-items 0]
                                [--set engine.dtype=bfloat16 ...]

Uses the probe's model (data/bootstrap/model, or --model), items (data/dedup/items.parquet) and search tools (the
`search:` section; the cache is warmed by the first pass so both loops see the same tool latency):
1. batched: `run_rollouts` over all items at once (vLLM `n` samples per prompt, all live trajectories per turn);
2. naive: the same engine and items, one item, one sample, one turn at a time (K separate calls with n=1 per item;
   `--naive-items N` runs only the first N items: quicker, but their rollouts need not cost the same as the batch's);
   rollouts/s of both, the speed-up, and the tokens each loop made the engine compute (prompt tokens not found in
   the prefix cache, plus generated tokens) with the rate it computed them at. A prompt sampled n times is one
   request: vLLM prefills it once and its n samples share the blocks;
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
    ap.add_argument("--naive-items", type=int, default=0, help="naive loop over the first N items only (0 = all)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the probe section (or rollout.KEY of the shared rollout section), "
                    "e.g. engine.enforce_eager=false (repeatable)")
    args = ap.parse_args()
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        os.environ.setdefault(k, v)

    import datasets

    from pipeline.config import load_section
    from pipeline.models import resolve_model
    from pipeline.probe import ProbeParams, select_items
    from pipeline.rollout.engines import make_engine
    from pipeline.schema import read_items
    from pipeline.search import SearchParams, SearchTools

    params: ProbeParams = load_section(ProbeParams, "probe", args.params, args.set)
    model = resolve_model(args.model or params.model)
    ds = read_items(params.items).cast_column("image", datasets.Image(decode=False))
    items = [ds[i] for i in select_items(ds["id"], args.items, params.seed)]
    proto = params.make_protocol()
    tools = SearchTools.from_params(load_section(SearchParams, "search", args.params))
    engine = make_engine(args.engine, model, protocol=proto, seed=params.seed, params=params.engine)
    print(f"engine {engine.params}")
    k = args.samples
    common = dict(sampling=params.sampling, seed=1, search_k=params.search_k or None)
    speed(engine, proto, tools, items, k, common, args)
    engine.close()


def speed(engine, proto, tools, items, k, common, args) -> None:
    """Batched multi-turn loop vs one item, one sample, one turn at a time."""
    from pipeline.rollout.loop import run_rollouts

    run_rollouts(engine, proto, tools, items, "tools", 1, "em", **common)  # warm the search cache and the engine

    def timed(loop):
        engine.token_counts.clear()
        t = time.perf_counter()
        rows = loop()
        return rows, time.perf_counter() - t, dict(engine.token_counts)

    def naive_loop():
        rows = []
        for it in items[: args.naive_items or None]:
            for s in range(k):
                rows += run_rollouts(engine, proto, tools, [it], "tools", 1, "em", sample_start=s,
                                     **{**common, "seed": 100 + s})
        return rows

    batched, tb, cb = timed(lambda: run_rollouts(engine, proto, tools, items, "tools", k, "em", **common))
    naive, tn, cn = timed(naive_loop)
    print(f"engine {args.engine}, {len(items)} items x {k} samples (tools condition), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    for name, rows, secs, c in (("batched", batched, tb, cb), ("naive", naive, tn, cn)):
        prompt, cached, gen = c.get("prompt", 0), c.get("cached_prompt", 0), c.get("completion", 0)
        print(f"{name:8s} {len(rows)} rollouts in {secs:.1f} s = {len(rows) / secs:.2f} rollouts/s; "
              f"{prompt} prompt tokens in engine requests ({cached} from the prefix cache), {gen} generated: "
              f"{(prompt - cached + gen) / secs:.0f} computed tokens/s")
    print(f"speed-up {len(batched) / tb / (len(naive) / tn):.1f}x")


if __name__ == "__main__":
    main()
