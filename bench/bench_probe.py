"""Probe throughput: the batched multi-turn loop vs a naive loop, and vs the engine's own limit
(adaptive vs fixed K: bench/bench_labels.py).

    python bench/bench_probe.py [--params params.yaml] [--items 32] [--samples 4] [--naive-items 0]
                                [--only speed|limit] [--set engine.dtype=bfloat16 ...]

Uses the probe's model (data/bootstrap/model, or --model), items (data/dedup/items.parquet) and search tools (the
`search:` section; the cache is warmed by the first pass so both loops see the same tool latency):
1. batched: `run_rollouts` over all items at once (vLLM `n` samples per prompt, all live trajectories per turn);
2. naive: the same engine and items, one item, one sample, one turn at a time (K separate calls with n=1 per item;
   `--naive-items N` runs only the first N items: quicker, but their rollouts need not cost the same as the batch's);
   rollouts/s of both, the speed-up, and the tokens each loop made the engine compute (prompt tokens not found in
   the prefix cache, plus generated tokens) with the rate it computed them at. A prompt sampled n times is one
   request: vLLM prefills it once and its n samples share the blocks;
3. limit (vLLM only): the batched loop again, recording every `LLM.generate` call it makes (prompt token ids and the
   number of tokens each sample generated) and where its wall time goes (engine, prompt rendering, tools, the rest:
   scoring, judging, bookkeeping); then the same requests replayed as plain batched `generate` calls on the same
   engine, every sample as one request of exactly its recorded length (`min_tokens` = `max_tokens`, `ignore_eos`),
   (a) turn by turn, as the loop issued them, and (b) all in one call, which is the engine's limit: no turn barriers.
   The loop's computed tokens/s as a share of (b) is the figure; (a) tells the turn barriers' part from ours.
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
    ap.add_argument("--only", choices=["speed", "limit"], default="",
                    help="run only the batched-vs-naive comparison or only the engine-limit comparison")
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
    if args.only != "limit":
        speed(engine, proto, tools, items, k, common, args)
    if args.only != "speed" and args.engine == "vllm":
        limit(engine, proto, tools, items, k, common)
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


def _computed(results) -> tuple[int, int]:
    """(prompt tokens computed, i.e. not taken from the prefix cache; tokens generated) of vLLM RequestOutputs."""
    prompt = sum(len(r.prompt_token_ids or []) - int(r.num_cached_tokens or 0) for r in results)
    return prompt, sum(len(c.token_ids) for r in results for c in r.outputs)


def limit(engine, proto, tools, items, k, common) -> None:
    """The batched loop's computed tokens/s as a share of plain batched `generate` over the same requests."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from pipeline.rollout.loop import run_rollouts

    run_rollouts(engine, proto, tools, items, "tools", 1, "em", **common)  # warm the search cache and the engine
    calls, spent = [], {"engine": 0.0, "render": 0.0, "tools": 0.0}
    llm_generate, engine_generate, run_many = engine.llm.generate, engine.generate, tools.run_many

    def timed(key, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t
        return wrapper

    def recording_generate(prompts, params, **kw):
        results = llm_generate(prompts, params, **kw)
        calls.append((prompts, results))
        return results

    engine.llm.generate, engine.generate, tools.run_many = (
        timed("engine", recording_generate), timed("render", engine_generate), timed("tools", run_many))
    try:
        t = time.perf_counter()
        rows = run_rollouts(engine, proto, tools, items, "tools", k, "em", **common)
        loop_s = time.perf_counter() - t
    finally:
        engine.llm.generate, engine.generate, tools.run_many = llm_generate, engine_generate, run_many
    spent["render"] -= spent["engine"]  # engine.generate = rendering + LLM.generate + counting
    loop_split = _computed([r for _, res in calls for r in res])
    loop_tok = sum(loop_split)

    def replay(batch):
        prompts, params = [], []
        for prompt, results in batch:
            for p, r in zip(prompt, results):
                for c in r.outputs:
                    tp = TokensPrompt(prompt_token_ids=list(r.prompt_token_ids))
                    if isinstance(p, dict) and p.get("multi_modal_data"):
                        tp["multi_modal_data"] = p["multi_modal_data"]
                    prompts.append(tp)
                    n = len(c.token_ids)
                    params.append(SamplingParams(n=1, temperature=1.0, max_tokens=n, min_tokens=n, ignore_eos=True))
        return prompts, params

    def run_plain(batches):
        engine.llm.reset_prefix_cache()
        split, secs = [0, 0], 0.0
        for batch in batches:
            prompts, params = replay(batch)
            t = time.perf_counter()
            results = llm_generate(prompts, params, use_tqdm=False)
            secs += time.perf_counter() - t
            split = [a + b for a, b in zip(split, _computed(results))]
        return sum(split), secs, split

    per_turn_tok, per_turn_s, per_turn_split = run_plain([[c] for c in calls])
    all_tok, all_s, all_split = run_plain([calls])
    rest = loop_s - sum(spent.values())
    print(f"limit: {len(items)} items x {k} samples, {len(rows)} rollouts, {len(calls)} engine calls")
    print(f"loop      {loop_s:6.1f} s, {loop_tok} computed tokens ({loop_split[0]} prompt + {loop_split[1]} generated)"
          f" = {loop_tok / loop_s:.0f} tokens/s; its wall time: "
          + ", ".join(f"{key} {v:.1f} s ({v / loop_s:.0%})" for key, v in {**spent, "rest": rest}.items()))
    print(f"per turn  {per_turn_s:6.1f} s, {per_turn_tok} computed tokens ({per_turn_split[0]} + {per_turn_split[1]}) "
          f"= {per_turn_tok / per_turn_s:.0f} tokens/s "
          "(the loop's calls replayed as plain generate, turn by turn)")
    print(f"all once  {all_s:6.1f} s, {all_tok} computed tokens ({all_split[0]} + {all_split[1]}) "
          f"= {all_tok / all_s:.0f} tokens/s "
          "(the engine's limit: every request in one call)")
    print(f"share of the engine's limit: {loop_tok / loop_s / (all_tok / all_s):.0%} "
          f"(of the turn-by-turn replay: {loop_tok / loop_s / (per_turn_tok / per_turn_s):.0%})")


if __name__ == "__main__":
    main()
