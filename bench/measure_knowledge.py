"""Measure what the packaged SmolLM2-135M-Instruct knows about countries without search, and write the table the
demo world's answer key is built from (pipeline/gather/knowledge/smollm2-135m.json).

    python bench/measure_knowledge.py [--model packaged:smollm2] [--samples 8] [--out FILE]

For every flag country and fact (capital, world region, currency) the model is asked in its own chat template
("Answer in a few words. What is the capital city of France?"), once greedily and `--samples` times at temperature 1.
A reply is right when a gold answer occurs in it (SubEM: the model answers in a sentence). Nothing is taught here:
this is the base model's own knowledge. Prints per-fact counts and the machine; writes the JSON table:
    {"model": ..., "machine": ..., "facts": {"capital": {"France": {"greedy": true, "rate": 0.5}, ...}, ...}}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "pipeline" / "gather" / "knowledge" / "smollm2-135m.json"


def questions() -> list[tuple[str, str, str, list[str]]]:
    """(fact, country, question, golds) for every country and fact the packaged data holds."""
    from pipeline.gather import demo_data
    from pipeline.gather.demo import CURRENCY_NAMES

    out = []
    for c in demo_data.countries():
        if c.capital:
            out.append(("capital", c.name, f"What is the capital city of {c.name}?", [c.capital]))
        if c.region:
            golds = [c.region] + (["America", "North America", "South America"] if c.region == "Americas" else [])
            out.append(("region", c.name, f"On which continent is {c.name}?", golds))
        if c.currencies:
            code = c.currencies[0]
            out.append(("currency", c.name, f"What is the currency of {c.name}?",
                        [code] + ([CURRENCY_NAMES[code]] if code in CURRENCY_NAMES else [])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="packaged:smollm2")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args()

    from vllm import LLM, SamplingParams

    from pipeline.hardware import inference_dtype, machine_line
    from pipeline.judge import sub_em
    from pipeline.models import resolve_model

    path = resolve_model(args.model)
    qs = questions()
    t0 = time.perf_counter()
    llm = LLM(model=path, dtype=inference_dtype("auto"), max_model_len=1024, enforce_eager=True, seed=0)
    tok = llm.get_tokenizer()
    prompts = [tok.apply_chat_template([{"role": "user", "content": "Answer in a few words. " + q}], tokenize=False,
                                       add_generation_prompt=True) for _, _, q, _ in qs]
    greedy = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)
    sampled = llm.generate(prompts, SamplingParams(temperature=1.0, max_tokens=16, n=args.samples), use_tqdm=False)
    facts: dict[str, dict[str, dict]] = {}
    for (fact, country, _, golds), g, s in zip(qs, greedy, sampled):
        rate = sum(bool(sub_em(o.text, golds)) for o in s.outputs) / len(s.outputs)
        facts.setdefault(fact, {})[country] = {"greedy": bool(sub_em(g.outputs[0].text, golds)), "rate": rate}
    table = {"model": args.model, "machine": machine_line(), "samples": args.samples, "judge": "subem",
             "prompt": "Answer in a few words. <question>", "facts": facts}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    summary = {fact: {"countries": len(rows), "greedy_right": sum(r["greedy"] for r in rows.values()),
                      "sampled_rate_ge_0.5": sum(r["rate"] >= 0.5 for r in rows.values()),
                      "never_right": sum(not r["greedy"] and r["rate"] == 0 for r in rows.values())}
               for fact, rows in facts.items()}
    print(json.dumps({"machine": machine_line(), "seconds": round(time.perf_counter() - t0, 1), "facts": summary,
                      "out": str(args.out)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
