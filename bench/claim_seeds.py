r"""How far does the claim move with the seed? Reads output folders of bench/claim_experiment.py that ran the same runs
at different `train.seed` (the training subset, the rollouts' sampling and the data order change with it):

    python bench/claim_seeds.py bench/claim7 bench/claim7_seed1 bench/claim7_seed2 --labels "seed 0,seed 1,seed 2" \
        [--runs baseline,no_penalty] [--sampled sampled] [--out bench/claim7_seeds.md]

Prints (and with --out writes) one markdown table: per run and figure the value at each seed, the mean and the range
(largest minus smallest, in points); where a folder has the sampled evaluation (<run>/sampled/, from `--sampled K`
or `run_sampled`), the trained policy's over-search minus the labeler's, paired by item with a bootstrap interval
over items; then the issue's acceptance checked at each seed:
  cut      the paper-penalty run (`baseline`) searches at least 30% less than RAG, at accuracy at most 3 points below;
  gap      `no_penalty`'s search ratio at least 15 points above the baseline's;
  over     the baseline's greedy over-search on search-free items below the base labeler's (and sampled).
Figures are on-demand search on the test split, from each folder's <run>/metrics.json. Reads the folders; writes
only --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claim_experiment import figure, rag_figure  # noqa: E402

FIGURES = [  # (row name, how to read it from metrics.json), shares in [0, 1]
    ("On-demand Acc", lambda m: figure(m, "trained", "on_demand", "accuracy")[0]),
    ("On-demand SR", lambda m: figure(m, "trained", "on_demand", "search_ratio")[0]),
    ("RAG Acc", lambda m: rag_figure(m, "accuracy")[0]),
    ("_RAG SR", lambda m: rag_figure(m, "search_ratio")[0]),  # for the cut; not printed
    ("Over-search", lambda m: figure(m, "trained", "on_demand", "over_search_rate")[0]),
    ("Over-search, base labeler", lambda m: figure(m, "base", "on_demand", "over_search_rate")[0]),
    ("Over-search by the answer key", lambda m: key_figure(m, "trained")),
    ("Over-search by the answer key, base labeler", lambda m: key_figure(m, "base")),
]
SAMPLED = [("Sampled over-search", "trained"), ("Sampled over-search, base labeler", "base")]


def key_figure(metrics: dict, model: str) -> float | None:
    """Over-search with the labels the demo world's answer key implies (the evaluation's `answer_key` section)."""
    return metrics.get("answer_key", {}).get(model, {}).get("on_demand", {}).get("test", {}).get("over_search_rate")


def read(folder: Path, run: str, name: str = "metrics.json") -> dict | None:
    path = folder / run / name
    return json.loads(path.read_text()) if path.is_file() else None


def values(folders: list[Path], run: str, sampled: str = "sampled") -> dict[str, list[float | None]]:
    """{figure: [value per folder]} of one run (None where a folder lacks the run or the figure)."""
    out: dict[str, list[float | None]] = {}
    for folder in folders:
        m = read(folder, run) or {}
        for name, get in FIGURES:
            out.setdefault(name, []).append(get(m) if m else None)
        s = read(folder, run, f"{sampled}/metrics.json") or {}
        for name, model in SAMPLED:
            out.setdefault(name, []).append(figure(s, model, "on_demand", "over_search_rate")[0] if s else None)
    if not any(v is not None for v in out.get("Sampled over-search", [])):
        for name, _ in SAMPLED:
            out.pop(name, None)
    return out


def paired_over_search(rollouts: Path) -> dict | None:
    """Trained minus base labeler over-search on the search-free items of a sampled evaluation, paired by item: the
    mean per-item difference of search shares with a 95% bootstrap interval over items (an item's samples move
    together; pipeline/evaluate/metrics.py's resampling), and on how many items each policy searched more."""
    import pandas as pd

    from pipeline.evaluate.metrics import bootstrap_ratios

    if not rollouts.is_file():
        return None
    r = pd.read_parquet(rollouts, columns=["item_id", "model", "label", "search_count"])
    r = r[(r.label == "search_free") & r.model.isin(["trained", "base"])].assign(searched=lambda d: d.search_count > 0)
    share = r.groupby(["item_id", "model"]).searched.mean().unstack("model").dropna()
    if share.empty or not {"trained", "base"} <= set(share.columns):
        return None
    diff = (share["trained"] - share["base"]).to_numpy()
    ci = bootstrap_ratios({"diff": (diff, [1.0] * len(diff))})["diff"]
    return {"diff": float(diff.mean()), "lo": ci["lo"], "hi": ci["hi"], "items": len(diff),
            "less": int((diff < 0).sum()), "more": int((diff > 0).sum())}


def cell(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.1f}"


def spread(vs: list[float | None]) -> tuple[str, str]:
    got = [v for v in vs if v is not None]
    if not got:
        return "–", "–"
    return f"{statistics.mean(got) * 100:.1f}", f"{(max(got) - min(got)) * 100:.1f}" if len(got) > 1 else "–"


def checks(base: dict, free: dict | None, i: int) -> list[str]:
    """The acceptance at folder i: cut, gap, over (greedy, then sampled: 'equal' where both are the same, as 0 and
    0 for a labeler that never searches a search-free item greedily), each 'yes'/'no'/'–'."""
    acc, sr, rag, rag_sr = (base[k][i] for k in ("On-demand Acc", "On-demand SR", "RAG Acc", "_RAG SR"))
    yes = {True: "yes", False: "no"}
    cut = "–" if None in (acc, sr, rag) or not rag_sr else yes[1 - sr / rag_sr >= 0.30 and acc >= rag - 0.03]
    gap = "–" if not free or None in (sr, free["On-demand SR"][i]) else yes[free["On-demand SR"][i] - sr >= 0.15]
    over, labeler = base["Over-search"][i], base["Over-search, base labeler"][i]
    s, sb = (base.get(n, [None] * (i + 1))[i] for n, _ in SAMPLED)
    greedy, sampled = ("–" if None in (a, b) else "yes" if a < b else "equal" if a == b else "no"
                       for a, b in ((over, labeler), (s, sb)))
    return [cut, gap, f"{greedy} / {sampled}"]


def report(folders: list[Path], labels: list[str], runs: list[str], sampled: str = "sampled") -> str:
    head = "| Run | Figure (%) | " + " | ".join(labels) + " | mean | range (pts) |"
    rows = [head, "|---|---|" + "---:|" * (len(labels) + 2)]
    per_run = {r: values(folders, r, sampled) for r in runs}
    for r, figs in per_run.items():
        for name, vs in figs.items():
            if not name.startswith("_"):
                cells = [cell(v) for v in vs] + list(spread(vs))
                rows.append(f"| {r} | {name} | " + " | ".join(cells) + " |")
        paired = [paired_over_search(f / r / sampled / "rollouts.parquet") for f in folders]
        if any(paired):
            got = [p["diff"] for p in paired if p]
            cells = [f"{p['diff'] * 100:+.1f} [{p['lo'] * 100:+.0f}, {p['hi'] * 100:+.0f}]" if p else "–" for p in paired]
            rows.append(f"| {r} | Sampled over-search, trained - labeler, paired by item [95% over items] | "
                        + " | ".join(cells) + f" | {statistics.mean(got) * 100:+.1f} | "
                        + (f"{(max(got) - min(got)) * 100:.1f} |" if len(got) > 1 else "– |"))
            rows.append(f"| {r} | Search-free items the trained policy searched less / more often | "
                        + " | ".join(f"{p['less']} / {p['more']} of {p['items']}" if p else "–" for p in paired)
                        + " | | |")
    if "baseline" in per_run:
        rows += ["", "| Acceptance | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        per_seed = [checks(per_run["baseline"], per_run.get("no_penalty"), i) for i in range(len(folders))]
        for k, name in enumerate(["SR >= 30% below RAG, Acc within 3 points", "no_penalty SR >= 15 points above",
                                  "over-search below the labeler's: greedy / sampled"]):
            rows.append(f"| {name} | " + " | ".join(c[k] for c in per_seed) + " |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", type=Path, nargs="+", help="claim_experiment.py output folders, one per seed")
    ap.add_argument("--labels", default="",
                    help="comma-separated column names, one per folder (default: the folder names)")
    ap.add_argument("--runs", default="baseline,no_penalty", help="comma-separated runs (default baseline,no_penalty)")
    ap.add_argument("--sampled", default="sampled",
                    help="the folder of each run holding the sampled evaluation (default sampled: `--sampled K`'s)")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    labels = [x for x in args.labels.split(",") if x] or [f.name for f in args.folders]
    if len(labels) != len(args.folders):
        ap.error(f"--labels names {len(labels)} seeds for {len(args.folders)} folders")
    runs = [r for r in args.runs.split(",") if r]
    if not any(read(f, r) for f in args.folders for r in runs):
        print(f"no folder holds <run>/metrics.json for the runs {runs}: check the folders")
        return 2
    text = report(args.folders, labels, runs, args.sampled)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
