"""The paper's claim as DVC experiments: fewer searches at the same accuracy, and what each ingredient does.

    python bench/claim_experiment.py [--runs baseline,no_penalty,no_balance,gdpo,among_correct]
                                     [--profile cpu|cpu36|cpu48|gpu] [--out bench/claim] [--dry]
                                     [--set train.max_steps=12 --set evaluate.max_items=48 ...]

Runs one `dvc exp run -n claim-<run>-<time>` per run, one after the other, in this workspace (a finished `dvc repro`: only
the train and evaluate stages re-run, plus balance for nothing). The runs (the issue's ablations, MMSearch-R1 Table 1
and its section 4):
  baseline       the paper's fixed search penalty on search-balanced data (train.efficiency=paper)
  no_penalty     train.search_penalty=0.0: nothing rewards answering without search
  no_balance     train.data=unbalanced: the train clusters before the balance quotas
  gdpo           train.efficiency=gdpo: accuracy, format and penalty normalised each on its own (TRL normalize_then_sum)
  among_correct  train.efficiency=among_correct: the efficiency term among the group's correct rollouts only
  gdpo_weighted  gdpo with train.efficiency_weight=0.45 (not in the default set; name it in --runs)
Every run restates every key any run changes (the others' values are this workspace's params.yaml), so no run
inherits another's override; `--set` overrides apply to all runs (the training and evaluation budget). The baseline
runs last, so the workspace ends on it (with the `--set` budget: `git checkout params.yaml dvc.lock && dvc checkout`
returns to the commit); `dvc exp show` lists the runs.

After each run it copies data/evaluate/metrics.json, table.md (as evaluation.md) and rollouts.parquet,
data/train/curves.tsv and the train and reprobe metrics to <out>/<run>/ (`bench/claim_compare.py A B` tells whether a
re-run reproduced them), and at the end writes
<out>/table.md (one row per run: the trained policy's on-demand accuracy and search ratio with 95% intervals, RAG's
(the base model's workflow unless the trained model is played in RAG mode too), the search cut vs RAG, the accuracy
gap, over-search on search-free items vs the base labeler (by the labels, and by the demo world's answer key where the
evaluation has it), tool productivity, and the reprobe stage's label moves
between search-required and search_free) and
<out>/curves.png (search ratio and accuracy reward over training steps, one line per run: the mean of SMOOTH steps). Prints the table.
`--report-only` rebuilds table and plot from <out>/ without running anything. `--sampled K` also evaluates each run's
policy sampled (K rollouts per item at temperature 1, base and trained, on demand) into <out>/<run>/sampled/, and the
table gets a second part with those figures.

`--start-over-search SHARE` starts GRPO not from the labeler but from a policy that searches what it knows: a cold
start with `over_search: SHARE` of the known items searched anyway under tools (train.cold_start with
train.cold_start_overrides; made once, under data/train/cold_start, and reused by every run). `--start-from labeler`
(default) gives the labeler a short cold start on its own demonstrations, so its knowledge stays the one the labels
measured and only the search habit changes; `--start-from base` runs the whole cold start on the base model. The
labels stay the labeler's. The evaluation gets a `start` row (on demand), and the table shows its search ratio and
over-search next to the trained policy's.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's packages, run from anywhere

RUNS = {
    "no_penalty": {"train.search_penalty": 0.0},
    "no_balance": {"train.data": "unbalanced"},
    "gdpo": {"train.efficiency": "gdpo"},
    # GDPO with the efficiency component weighted 0.45 instead of Eq. 1's 0.09 (which per-component normalisation
    # weakens six-fold, bench/RESULTS.md round 5): at 48 steps it cut searches as the paper's penalty does
    "gdpo_weighted": {"train.efficiency": "gdpo", "train.efficiency_weight": 0.45},
    "among_correct": {"train.efficiency": "among_correct"},
    "baseline": {},
}
COPIED = {"data/evaluate/metrics.json": "metrics.json", "data/train/curves.tsv": "curves.tsv",
          "data/train/metrics.json": "train_metrics.json",
          "data/reprobe/metrics.json": "reprobe.json",
          "data/evaluate/table.md": "evaluation.md",
          "data/evaluate/rollouts.parquet": "rollouts.parquet"}  # kept per run under <out>/<run>/ (evaluation.md: the
# full report, with what the policy did per label; rollouts.parquet: every evaluation trajectory, which
# bench/claim_compare.py compares between a run and its re-run)
# Budgets (--profile): `cpu` fits 2 CPU cores: 12 GRPO steps of 2 prompts x 4 rollouts at a learning rate 15x the
# demo's, 14-24 minutes per run (the penalty runs still collapse, bench/RESULTS.md); `gpu` is the params.yaml GPU
# profile (a real VLM, the whole train split, 8 rollouts per prompt, LoRA): run it on a GPU machine after setting the
# model of the probe/bootstrap GPU profiles. `cpu48` is round 5's budget (bench/RESULTS.md: with `--start-over-search
# 0.4` the penalty run cuts 31% below RAG, 11.5 points above its accuracy): 48 steps over 64 items at 1.2e-5, top 10
# layers, 18-23 minutes per run on a 2-core AMX CPU. `cpu36` is the same at 36 steps and 1.6e-5 (the same
# steps x learning rate): the five runs in one call took 85.9 minutes on that CPU, with the same 31% cut (round 6).
PROFILES = {
    "demo": {},
    "cpu": {"train.max_steps": "12", "train.per_device_train_batch_size": "8", "train.learning_rate": "1.5e-05"},
    "cpu48": {"train.max_steps": "48", "train.max_items": "64", "train.per_device_train_batch_size": "8",
              "train.learning_rate": "1.2e-05", "train.train_layers": "10"},
    "cpu36": {"train.max_steps": "36", "train.max_items": "64", "train.per_device_train_batch_size": "8",
              "train.learning_rate": "1.6e-05", "train.train_layers": "10"},
    "gpu": {"train.max_steps": "0", "train.num_train_epochs": "1", "train.max_items": "0", "train.samples": "8",
            "train.per_device_train_batch_size": "8", "train.max_completion_length": "4096", "train.learning_rate": "1.0e-06",
            "train.beta": "0.001", "train.lora.enabled": "true", "train.precision": "bf16",
            "train.vllm_gpu_memory_utilization": "0.4", "train.grpo_overrides": "{}"},
}
ORDER = ["no_penalty", "no_balance", "gdpo", "gdpo_weighted", "among_correct", "baseline"]  # baseline last: the
# workspace ends on it
DEFAULT_RUNS = ["no_penalty", "no_balance", "gdpo", "among_correct", "baseline"]  # the ablations


def param_value(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SystemExit(f"params.yaml has no key {dotted!r}: check the name (a run or --set refers to it)")
        node = node[part]
    return node


def evaluate_models(params: dict) -> list[dict]:
    """params.yaml's evaluate.models, or the stage's default (base, trained) when the file leaves it out."""
    from pipeline.evaluate.run import _default_models

    models = (params.get("evaluate") or {}).get("models")
    return [dict(m) for m in models] if models else [dataclasses.asdict(m) for m in _default_models()]


def hydra_value(v) -> str:
    """A value in the override grammar of `dvc exp run -S` (Hydra): strings as they are, mappings as {k: v}."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(hydra_value(x) for x in v) + "]"
    return json.dumps(v)


START_STEPS = 20  # --start-from labeler: SFT steps that add the search habit to a labeler that knows its demonstrations


def start_overrides(params: dict, share: float, start_from: str = "labeler") -> dict:
    """The overrides of `--start-over-search SHARE`: GRPO starts from a cold start with SHARE of the known items
    searched anyway, and the evaluation plays that start on demand as a `start` row. `start_from` labeler: a short
    cold start (START_STEPS) of the labeler on its own demonstrations, so only the search habit changes; base: the
    bootstrap's whole cold start of the base model (bootstrap.base_model), a second labeler with its own calibration
    of what it knows."""
    models = [m for m in evaluate_models(params) if m["name"] != "start"]
    start = {"name": "start", "path": f"{param_value(params, 'train.output_dir')}/cold_start/model",
             "modes": ["on_demand"]}
    out = {"train.cold_start": True, "train.cold_start_overrides": {"over_search": share},
           "evaluate.models": [m for m in models if m["name"] != "trained"] + [start] +
                              [m for m in models if m["name"] == "trained"]}
    if start_from == "base":
        out["train.model"] = param_value(params, "bootstrap.base_model")
    else:
        out["train.cold_start_overrides"]["cold_start"] = {"steps": START_STEPS}
    return out


def run_commands(runs: list[str], params: dict, extra: dict, stamp: str) -> list[tuple[str, list[str]]]:
    """(run, dvc command) per run: every key any run changes, at the run's value or the workspace's; experiments are
    named claim-<run>-<stamp> (a name is unique per baseline commit, so a re-run needs a new one). A mapping value
    is forced in (`++key=`: params.yaml's empty mapping has none of its keys)."""
    keys = sorted({k for r in runs for k in RUNS[r]})
    out = []
    for r in runs:
        values = {k: RUNS[r].get(k, param_value(params, k)) for k in keys}
        values.update(extra)
        sets = [a for k, v in values.items()
                for a in ("-S", f"{'++' if isinstance(v, dict) else ''}{k}={hydra_value(v)}")]
        out.append((r, ["dvc", "exp", "run", "-n", f"claim-{r}-{stamp}", *sets]))
    return out


def figure(metrics: dict, model: str, mode: str, key: str):
    group = metrics.get(model, {}).get(mode, {}).get("test", {})
    return group.get(key), (group.get("ci95") or {}).get(key)


def rag_figure(metrics: dict, key: str):
    """The RAG workflow's figure: the trained model's when it was played in RAG mode, else the base model's (the
    default: evaluate.models[trained].modes leaves RAG to the base, as the paper's Table 1)."""
    value = figure(metrics, "trained", "rag", key)
    return value if value[0] is not None else figure(metrics, "base", "rag", key)


def moves(out: Path, run: str) -> str:
    """search-required -> search_free / search_free -> search-required of the reprobe stage, of the run's items."""
    path = out / run / "reprobe.json"
    if not path.is_file():
        return "–"
    m = json.loads(path.read_text())
    return f"{m['required_to_search_free']} / {m['search_free_to_required']} of {m['items']}"


def minutes(out: Path, run: str) -> str:
    """The run's `dvc exp run` wall time (+ the sampled evaluation's), from <out>/<run>/timing.json."""
    path = out / run / "timing.json"
    if not path.is_file():
        return "–"
    t = json.loads(path.read_text())
    return f"{t['run_minutes']}" + (f" + {t['sampled_minutes']}" if "sampled_minutes" in t else "")


def fmt(value, ci=None, pct=True) -> str:
    if value is None:
        return "–"
    scale = 100 if pct else 1
    text = f"{value * scale:.1f}" if pct else f"{value:.2f}"
    return text + (f" [{ci['lo'] * scale:.0f}, {ci['hi'] * scale:.0f}]" if ci and pct else "")


def table(out: Path, runs: list[str]) -> str:
    rows = ["| Run | n | On-demand Acc | On-demand SR | RAG Acc | SR cut vs RAG | Acc vs RAG (pts) | Over-search "
            "(trained / base) | by the answer key | Tool productivity | Re-probe: req.->free / free->req. | Minutes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        path = out / r / "metrics.json"
        if not path.is_file():
            rows.append(f"| {r} | – | (not run) | | | | | | | | | |")
            continue
        m = json.loads(path.read_text())
        acc, acc_ci = figure(m, "trained", "on_demand", "accuracy")
        sr, sr_ci = figure(m, "trained", "on_demand", "search_ratio")
        rag_acc, rag_ci = rag_figure(m, "accuracy")
        rag_sr, _ = rag_figure(m, "search_ratio")
        over, _ = figure(m, "trained", "on_demand", "over_search_rate")
        base_over, _ = figure(m, "base", "on_demand", "over_search_rate")
        start_over, _ = figure(m, "start", "on_demand", "over_search_rate")
        start_sr, _ = figure(m, "start", "on_demand", "search_ratio")
        start = f" (start: {fmt(start_over)}, SR {fmt(start_sr)})" if start_sr is not None else ""
        # the evaluation's `answer_key` figures: over-search with the labels the demo world's key implies
        key = {name: m.get("answer_key", {}).get(name, {}).get("on_demand", {}).get("test", {})
               for name in ("trained", "base")}
        by_key = (f"{fmt(key['trained'].get('over_search_rate'))} / {fmt(key['base'].get('over_search_rate'))}"
                  if key["trained"] else "–")
        prod, _ = figure(m, "trained", "on_demand", "tool_productivity")
        n, _ = figure(m, "trained", "on_demand", "n_items")
        cut = f"{(1 - sr / rag_sr) * 100:.0f}%" if sr is not None and rag_sr else "–"
        gap = f"{(acc - rag_acc) * 100:+.1f}" if acc is not None and rag_acc is not None else "–"
        rows.append(f"| {r} | {n} | {fmt(acc, acc_ci)} | {fmt(sr, sr_ci)} | {fmt(rag_acc, rag_ci)} | {cut} | {gap} | "
                    f"{fmt(over)} / {fmt(base_over)}{start} | {by_key} | {fmt(prod, pct=False)} | {moves(out, r)} | "
                    f"{minutes(out, r)} |")
    return "\n".join(rows) + "\n"


def sampled_params(params: dict, samples: int, out_dir: str, parts_dir: str) -> dict:
    """params.yaml with an evaluate section that plays only on-demand search, base and trained, `samples` rollouts
    per item at temperature 1: the policy GRPO trains (it samples), where greedy decoding shows only the decisions
    that flipped."""
    out = json.loads(json.dumps(params))
    e = out["evaluate"]
    e["models"] = [dict(m, modes=["on_demand"]) for m in evaluate_models(params)]
    e["modes"] = ["on_demand"]
    e["samples"] = samples
    e["sampling"] = dict(e.get("sampling") or {}, temperature=1.0)
    e.update(transitions="", out_dir=out_dir, parts_dir=parts_dir)
    return out


def sampled_table(out: Path, runs: list[str]) -> str:
    """The trained and base policies sampled (<out>/<run>/sampled/metrics.json); '' when no run has them."""
    rows = []
    for r in runs:
        path = out / r / "sampled" / "metrics.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        cells = []
        for key in ("accuracy", "search_ratio", "over_search_rate", "under_search_rate"):
            cells += [fmt(*figure(m, "trained", "on_demand", key)), fmt(figure(m, "base", "on_demand", key)[0])]
        n, _ = figure(m, "trained", "on_demand", "n_rollouts")
        rows.append(f"| {r} | {n} | " + " | ".join(cells) + " |")
        if "start" in m:  # the over-searching start (--start-over-search), in the base columns' place
            cells = [c for key in ("accuracy", "search_ratio", "over_search_rate", "under_search_rate")
                     for c in (fmt(*figure(m, "start", "on_demand", key)), "")]
            rows.append(f"| {r}: its start | {figure(m, 'start', 'on_demand', 'n_rollouts')[0]} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    head = ["", "Sampled on-demand policy (temperature 1, `--sampled` rollouts per item; trained, then base):", "",
            "| Run | trajectories | Acc | base | SR | base | Over-search | base | Under-search | base |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    return "\n".join(head + rows) + "\n"


def run_sampled(params: dict, samples: int, out: Path) -> None:
    """Evaluate the workspace's base and trained policies sampled (`sampled_params`) into `out`."""
    spec = Path(out) / "sampled_params.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(yaml.safe_dump(sampled_params(params, samples, str(out), "data/evaluate_sampled_parts"),
                                   sort_keys=False))
    subprocess.run([sys.executable, "-m", "stages", "evaluate", "--params", str(spec)], check=True)


def read_curves(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    col = lambda k: [float(r[k]) if r.get(k) not in (None, "") else float("nan") for r in rows]  # noqa: E731
    return {"step": col("step"), "search/ratio": col("search/ratio"), "reward/accuracy": col("reward/accuracy")}


SMOOTH = 4  # steps per plotted mean: a demo step holds one prompt, so single steps jump between 0 and 1


def rolling_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each step (fewer at the start), NaN steps left out."""
    out = []
    for i in range(len(values)):
        seen = [v for v in values[max(0, i - window + 1): i + 1] if v == v]
        out.append(sum(seen) / len(seen) if seen else float("nan"))
    return out


def plot(out: Path, runs: list[str]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for r in runs:
        path = out / r / "curves.tsv"
        if not path.is_file():
            continue
        c = read_curves(path)
        for ax, key in zip(axes, ("search/ratio", "reward/accuracy")):
            line, = ax.plot(c["step"], rolling_mean(c[key], SMOOTH), label=r, linewidth=2)
            ax.plot(c["step"], c[key], linestyle="none", marker=".", alpha=0.35, color=line.get_color())
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, title in zip(axes, (f"search ratio of the rollouts (mean of {SMOOTH} steps; dots: each step)",
                                f"accuracy reward of the rollouts (mean of {SMOOTH} steps)")):
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    return out / "curves.png"


def uncached_outputs() -> list[Path]:
    """The stage outputs DVC leaves to git (`cache: false`: metrics, plots, reports); a directory as its files."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        paths = [Path(o.def_path) for s in repo.index.stages for o in s.outs if not o.use_cache]
    return [f for p in paths for f in (sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])]


def snapshot_workspace(params: Path) -> dict[Path, bytes | None]:
    """What restore_workspace puts back: params, dvc.lock and the uncached outputs (None: the file was absent)."""
    return {f: f.read_bytes() if f.is_file() else None for f in [params, Path("dvc.lock"), *uncached_outputs()]}


def restore_workspace(before: dict[Path, bytes | None]) -> None:
    """After a failed `dvc exp run`: its -S overrides stay in params.yaml, dvc.lock holds the stages that ran before
    the failure, the failed stage's outputs are gone and its uncached ones (metrics, plots) half written. Put back
    the files of `before` (snapshot_workspace), byte for byte (git's stat cache can call a rewritten file clean), and
    check the cached outputs out again (from the DVC cache: no stage re-runs)."""
    for path, data in before.items():
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    subprocess.run(["dvc", "checkout", "--force"], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="comma-separated runs, of: " + ", ".join(ORDER))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="params override for every run, e.g. train.max_steps=12 (repeatable)")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                    help="training budget applied before --set: demo (params.yaml as it is), cpu (" +
                    ", ".join(f"{k}={v}" for k, v in PROFILES["cpu"].items()) + "), cpu48 (round 5's budget, with "
                    "--start-over-search 0.4: " + ", ".join(f"{k}={v}" for k, v in PROFILES["cpu48"].items()) +
                    "), cpu36 (cpu48 at 36 steps and 1.6e-5: five runs in 90 minutes), gpu (the GPU profile: whole "
                    "train split, 8 rollouts, LoRA, bf16)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="bench/claim", help="per-run copies, table.md and curves.png go here")
    ap.add_argument("--dry", action="store_true", help="print the dvc commands only")
    ap.add_argument("--report-only", action="store_true", help="rebuild table.md and curves.png from --out")
    ap.add_argument("--sampled", type=int, default=0, metavar="K",
                    help="after each run, also play base and trained on demand with K rollouts per item at temperature "
                    "1 (<out>/<run>/sampled/: the sampled policy GRPO trains moves before greedy decisions flip; "
                    "about 2 minutes per model and K=4 on 2 CPU cores); 0 = off")
    ap.add_argument("--start-over-search", type=float, default=0.0, metavar="SHARE",
                    help="start GRPO from a cold start that searches SHARE of what it knows (1.0: always; "
                    "--start-from says of which model) instead of from the labeler as it is; made once, reused by "
                    "every run, evaluated as a `start` row; 0 = the labeler (default)")
    ap.add_argument("--start-from", choices=["labeler", "base"], default="labeler",
                    help="with --start-over-search: labeler (train.model, the bootstrapped labeler, taught the search "
                    f"habit in {START_STEPS} SFT steps on its own demonstrations: its knowledge stays the labels') or "
                    "base (the whole cold start of bootstrap.base_model: a second labeler)")
    ap.add_argument("--gc", action="store_true",
                    help="after the runs, drop their models and checkpoints from the DVC cache (`dvc gc --workspace "
                    "--all-commits --force`: keeps the workspace's and every commit's outputs, frees about 8 GB per "
                    "run; the runs' experiment refs stay, their outputs cannot be checked out any more)")
    args = ap.parse_args()
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(wanted) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}: use some of {', '.join(ORDER)}")
    runs = sorted(wanted, key=ORDER.index)
    extra = dict(PROFILES[args.profile])
    for s in args.set:
        key, sep, value = s.partition("=")
        if not sep:
            raise SystemExit(f"--set {s!r}: use KEY=VALUE, e.g. train.max_steps=12")
        extra[key.strip()] = value.strip()
    params = yaml.safe_load(Path(args.params).read_text())
    if args.start_over_search:
        if not 0 < args.start_over_search <= 1:
            raise SystemExit(f"--start-over-search {args.start_over_search}: give a share in (0, 1]")
        extra = {**start_overrides(params, args.start_over_search, args.start_from), **extra}
    for key in extra:
        param_value(params, key)  # a misspelt key stops here, before any run
    out = Path(args.out)
    if not args.report_only:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name, cmd in run_commands(runs, params, extra, stamp):
            print("$ " + " ".join(cmd), flush=True)
            if args.dry:
                continue
            before = snapshot_workspace(Path(args.params))
            started = time.time()
            done = subprocess.run(cmd)
            if done.returncode:
                restore_workspace(before)
                raise SystemExit(f"run {name} failed (exit {done.returncode}); the runs before it are in {out}/, and "
                                 f"{args.params} and the outputs are back where they were before it")
            (out / name).mkdir(parents=True, exist_ok=True)
            for src, dst in COPIED.items():
                shutil.copy(src, out / name / dst)
            timing = {"run_minutes": round((time.time() - started) / 60, 1)}
            if args.sampled:
                started = time.time()
                run_sampled(yaml.safe_load(Path(args.params).read_text()), args.sampled, out / name / "sampled")
                timing["sampled_minutes"] = round((time.time() - started) / 60, 1)
            (out / name / "timing.json").write_text(json.dumps(timing))
    if args.dry:
        return
    text = table(out, runs) + sampled_table(out, runs)
    (out / "table.md").write_text(text)
    png = plot(out, runs)
    print(text + (f"plot: {png}" if png else "no curves to plot"))
    if args.gc and not args.report_only:
        cmd = ["dvc", "gc", "--workspace", "--all-commits", "--force"]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    elif not args.report_only:
        print("each run's models and checkpoints stay in the DVC cache (about 8 GB per run); --gc frees them")


if __name__ == "__main__":
    sys.exit(main())
