"""The labeler's cold start (TRL SFTTrainer, packed, assistant-only loss) in fp32 and in bf16 autocast, same steps.

    python bench/bench_cold_start.py [--demos data/bootstrap/demos.jsonl] [--facts data/gather/demo/facts.parquet]
                                     [--steps 10] [--model packaged:smollm2] [--precision fp32 bf16]

Trains the first --steps steps of the bootstrap's own cold start (its demonstrations, `bootstrap.cold_start`
settings of params.yaml) once per precision, each in a fresh process, and prints one JSON object: the machine, and
per precision the seconds, tokens per second and first/last loss. `precision: auto` in params.yaml picks bf16 only
where the CPU computes bf16 natively (AVX512_BF16 / AMX); this shows what that choice buys on the machine at hand.
Writes only a temporary folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one(demos_file: str, facts_file: str, steps: int, model: str, precision: str) -> dict:
    from pipeline.config import load_section
    from pipeline.models import resolve_model
    from trainer.cold_start import BootstrapParams, read_facts
    from trainer.sft import cold_start

    boot = load_section(BootstrapParams, "bootstrap", str(REPO / "params.yaml"), ["facts="])
    demos = [json.loads(line) for line in Path(demos_file).read_text().splitlines() if line.strip()]
    facts = read_facts(facts_file) * boot.fact_repeats if facts_file and Path(facts_file).is_file() else []
    params = dataclasses.replace(boot.cold_start, steps=steps, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        return cold_start(resolve_model(model), demos, tmp, protocol=boot.make_protocol(), params=params, log=None,
                          facts=facts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demos", default="data/bootstrap/demos.jsonl")
    ap.add_argument("--facts", default="data/gather/demo/facts.parquet")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", default="packaged:smollm2")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    if args.one:
        print(json.dumps(one(args.demos, args.facts, args.steps, args.model, args.one)))
        return
    if not Path(args.demos).is_file():
        sys.exit(f"error: --demos {args.demos} does not exist; run `dvc repro bootstrap` first")
    from pipeline.hardware import machine_line

    out = {"machine": machine_line(), "steps": args.steps, "runs": {}}
    for p in args.precision:
        cmd = [sys.executable, __file__, "--one", p, "--demos", args.demos, "--facts", args.facts,
               "--steps", str(args.steps), "--model", args.model]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if res.returncode:
            sys.exit(f"error: the {p} run failed:\n{res.stderr[-3000:]}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        out["runs"][p] = {k: r[k] for k in ("seconds", "tokens_per_s", "train_tokens", "loss_first", "loss_last")}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
