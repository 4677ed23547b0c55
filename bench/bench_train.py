"""Seconds per GRPO step and where they go: training variants side by side, each in a fresh process.

    python bench/bench_train.py [--steps 4] [--model packaged:smollm2] [--variants before,lean]
                                [--demo] [--rollouts 8]

Each variant trains the same `--steps` GRPO steps (same seed, same data) in its own process and reports start-up,
mean seconds per step (steps 2..N; step 1 includes warm-up) and where a step's time goes, from TRL's own profiling
blocks: generation (vLLM.generate or transformers.generate), weight sync, the forward passes for log-probabilities
(old policy for the importance-sampling correction, reference model for the KL term, and the loss's own forward),
rewards, and the rest (backward pass and optimizer step). Variants (`--variants`, comma-separated):
  before        fp32 training, KL beta 0.001 (a reference model), vLLM importance-sampling correction on
  lean          precision auto (bf16 autocast where the CPU computes bf16 natively, else fp32), beta 0 (no
                reference model), no importance-sampling correction (one sampling pass per step, on-policy)
  transformers  `before` with transformers `generate` instead of vLLM colocate
  top10         `lean` with only the top 10 decoder layers trained (train.train_layers: the backward pass and the
                optimizer stop there, as in the bootstrap's cold start)
Data: by default a small search world (8 flags: corpora -> local indexes -> items -> cache) in a temporary folder
and the packaged SmolLM2-135M-Instruct (env BENCH_MODEL or --model overrides); `--demo` uses this workspace's
params.yaml (train and search sections, a finished `dvc repro`: the bootstrapped labeler, the balanced train
split, the probe's search cache), so the step is the demo's own. Prints one table and the machine.
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
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "before": {"precision": "fp32", "beta": 0.001, "use_vllm": True,
               "grpo_overrides": {"vllm_importance_sampling_correction": True}},
    "lean": {"precision": "auto", "beta": 0.0, "use_vllm": True,
             "grpo_overrides": {"vllm_importance_sampling_correction": False}},
    "transformers": {"precision": "fp32", "beta": 0.001, "use_vllm": False, "grpo_overrides": {}},
    "top10": {"precision": "auto", "beta": 0.0, "use_vllm": True, "train_layers": 10,
              "grpo_overrides": {"vllm_importance_sampling_correction": False}},
}
PHASES = {  # TRL profiling block -> column
    "vLLM.generate": "generate", "transformers.generate": "generate", "transformers.generate_batch": "generate",
    "sync_weights": "sync", "_get_per_token_logps_and_entropies": "logps", "_calculate_rewards": "rewards",
    "_prepare_inputs": "prepare", "compute_loss": "loss",
}


def step_phases(spent: dict[str, list[tuple[float, float]]], since: float, steps: int) -> dict[str, float]:
    """Seconds per step of each phase over the calls that started after `since` (step 1's end), over `steps` steps.

    generate / sync / rewards: TRL's blocks; logps: the log-probability passes inside `_prepare_inputs` (old policy
    and reference model); loss: `compute_loss` (the loss's own forward pass); prepare_other: the rest of
    `_prepare_inputs` (tool calls, tokenisation, advantages)."""
    def calls(name, within=None):
        out = [(a, b) for a, b in spent.get(name, []) if a >= since]
        if within is not None:
            out = [(a, b) for a, b in out if any(x <= a and b <= y for x, y in within)]
        return out

    def total(intervals):
        return sum(b - a for a, b in intervals) / steps

    prepare = calls("_prepare_inputs")
    ph = {"generate": total(calls("vLLM.generate") + calls("transformers.generate")
                             + calls("transformers.generate_batch")),
          "sync": total(calls("sync_weights")), "rewards": total(calls("_calculate_rewards")),
          "logps": total(calls("_get_per_token_logps_and_entropies", within=prepare)),
          "loss": total(calls("compute_loss"))}
    ph["prepare_other"] = total(prepare) - ph["generate"] - ph["sync"] - ph["rewards"] - ph["logps"]
    return ph


def one_run(root: Path, variant: str, model: str, steps: int, rollouts: int) -> dict:
    """Train `steps` steps in this process with `variant`; return timings (called in a subprocess)."""
    import yaml
    from transformers import TrainerCallback
    from trl.extras import profiling

    from pipeline.config import build
    from pipeline.hardware import machine_line, training_bf16
    from pipeline.search import SearchParams
    from trainer.config import TrainParams
    from trainer.grpo import build_trainer

    spent: dict[str, list[tuple[float, float]]] = defaultdict(list)  # TRL block -> (start, end) of every call
    original = profiling.ProfilingContext._log_metrics

    def record(self, duration):
        end = time.perf_counter()
        owner, _, block = self.name.partition(".")
        spent[block if owner.endswith("Trainer") else self.name].append((end - duration, end))
        original(self, duration)

    profiling.ProfilingContext._log_metrics = record

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.t = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

    cfg = yaml.safe_load((root / "params.yaml").read_text())
    v = VARIANTS[variant]
    p = build(TrainParams, {**cfg["train"], **v, "model": model or cfg["train"]["model"],
                            "grpo_overrides": {**cfg["train"].get("grpo_overrides", {}), **v["grpo_overrides"]},
                            "per_device_train_batch_size": rollouts,
                            "output_dir": str(Path(tempfile.mkdtemp()) / f"out-{variant}"), "max_steps": steps,
                            "resume": "never", "save_steps": 1000})
    t0 = time.perf_counter()
    times = StepTimes()
    run = build_trainer(p, build(SearchParams, cfg["search"]), root=root, callbacks=[times])
    init_s = time.perf_counter() - t0
    spent.clear()
    times.t = [time.perf_counter()]
    run.trainer.train()
    step_s = [b - a for a, b in zip(times.t, times.t[1:])]
    later = max(len(step_s) - 1, 1)
    phases = step_phases(spent, times.t[1] if len(times.t) > 1 else 0.0, later)
    hist = [h for h in run.trainer.state.log_history if "completions/mean_length" in h]
    return {"variant": variant, "bf16": bool(training_bf16(p.precision)), "machine": machine_line(),
            "init_s": round(init_s, 1), "step_s": [round(s, 1) for s in step_s],
            "mean_step_s_after_first": round(sum(step_s[1:]) / later, 2),
            "phases": {k: round(x, 1) for k, x in phases.items()},
            "mean_completion_tokens": round(sum(h["completions/mean_length"] for h in hist) / max(len(hist), 1), 1),
            "tool_calls_per_rollout": round(sum(h.get("tools/call_frequency", 0) for h in hist) / max(len(hist), 1), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--model", default=os.environ.get("BENCH_MODEL", ""),
                    help="policy (default: packaged:smollm2, or the workspace's train.model with --demo)")
    ap.add_argument("--variants", default="before,lean", help=f"comma-separated, of {sorted(VARIANTS)}")
    ap.add_argument("--rollouts", type=int, default=8, help="rollouts per step (prompts x train.samples)")
    ap.add_argument("--demo", action="store_true", help="use this workspace's params.yaml and data (after dvc repro)")
    ap.add_argument("--one", nargs=2, metavar=("ROOT", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        result = one_run(Path(args.one[0]), args.one[1], args.model, args.steps, args.rollouts)
        print("RESULT " + json.dumps(result))
        return
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; use one of {sorted(VARIANTS)}")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CI": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TRL_EXPERIMENTAL_SILENCE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            root, model = Path.cwd(), args.model
            if not (root / "params.yaml").is_file():
                raise SystemExit("--demo runs in a workspace with params.yaml and a finished dvc repro")
        else:
            sys.path.insert(0, str(REPO / "tests"))
            import yaml
            from train_world import build_world

            root, model = Path(tmp), args.model or "packaged:smollm2"
            world = build_world(root)
            train = {"train_file": "data/balance/train.parquet", "max_items": 8, "samples": 4,
                     "max_completion_length": 256, "learning_rate": 1e-6, "seed": 0}
            (root / "params.yaml").write_text(yaml.safe_dump({"search": dataclasses.asdict(world.search),
                                                              "train": train}))
            env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
        results = []
        for variant in variants:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--steps", str(args.steps), "--model", model,
                   "--rollouts", str(args.rollouts), "--one", str(root), variant]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if out.returncode or not line:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"variant {variant} failed")
            results.append(json.loads(line[0][7:]))
            print(f"{variant}: {results[-1]}", flush=True)
    where = "demo workspace" if args.demo else "flags world"
    print(f"GRPO, {args.rollouts} rollouts per step, {args.steps} steps, {where}, model {model or 'train.model'}; "
          f"{results[0]['machine']}")
    cols = ["generate", "sync", "logps", "loss", "rewards", "prepare_other"]
    print(f"{'variant':<13}{'bf16':>5}{'init s':>8}{'s/step':>8}  " + "".join(f"{c:>14}" for c in cols)
          + f"{'backward+opt':>13}{'tok/rollout':>13}{'tools/rollout':>15}")
    for r in results:
        ph = r["phases"]
        named = sum(ph.get(c, 0) for c in cols)
        print(f"{r['variant']:<13}{str(r['bf16']):>5}{r['init_s']:>8}{r['mean_step_s_after_first']:>8}  "
              + "".join(f"{ph.get(c, 0):>14}" for c in cols)
              + f"{r['mean_step_s_after_first'] - named:>13.1f}{r['mean_completion_tokens']:>13}"
              f"{r['tool_calls_per_rollout']:>15}")
    base = results[0]["mean_step_s_after_first"]
    for r in results[1:]:
        print(f"{r['variant']} vs {results[0]['variant']}: {base / r['mean_step_s_after_first']:.2f}x fewer s/step")


if __name__ == "__main__":
    main()
