"""Evaluation report: the Table-1-shaped Markdown table, the flat metrics JSON and the accuracy-vs-search plots.

Inputs are the nested metrics of `pipeline.evaluate.metrics.metrics_by_group` ({model: {mode: {dataset: metrics}}});
`render_table` and `plot_records` are pure, `write_plots` writes CSV plot data (for `dvc plots`) and one PNG.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.evaluate.metrics import mean_or_none, search_reduction

MODE_TITLES = {"direct": "Direct answer", "rag": "RAG workflow", "on_demand": "On-demand search"}
AVG = "avg"

Nested = Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]]


def pct(value: float | None, digits: int = 1) -> str:
    """A [0, 1] rate as a percentage string; '–' for an unknown (None) value."""
    return "–" if value is None else f"{100 * value:.{digits}f}"


def num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _get(metrics: Nested, model: str, mode: str, dataset: str, key: str) -> Any:
    return metrics.get(model, {}).get(mode, {}).get(dataset, {}).get(key)


def with_summaries(metrics: Nested, datasets: Sequence[str]) -> dict:
    """Copy of `metrics` with an `avg` pseudo-dataset per model x mode (unweighted mean over `datasets` of
    accuracy and search_ratio, as the paper's Avg column) and, per model and dataset, a `vs_rag` entry comparing
    on-demand search with the always-search workflow of the same model:
    search_reduction = 1 - SR(on_demand) / SR(rag), accuracy_gap = Acc(on_demand) - Acc(rag)."""
    out: dict = {m: {mode: dict(per) for mode, per in modes.items()} for m, modes in metrics.items()}
    for model, modes in out.items():
        for mode, per in modes.items():
            if mode == "vs_rag":
                continue
            per[AVG] = {
                "accuracy": mean_or_none(per.get(d, {}).get("accuracy") for d in datasets),
                "search_ratio": mean_or_none(per.get(d, {}).get("search_ratio") for d in datasets),
            }
        if "on_demand" in modes and "rag" in modes:
            cmp = {}
            for d in list(datasets) + [AVG]:
                od, rag = modes["on_demand"].get(d, {}), modes["rag"].get(d, {})
                acc_od, acc_rag = od.get("accuracy"), rag.get("accuracy")
                cmp[d] = {
                    "search_reduction": search_reduction(od.get("search_ratio"), rag.get("search_ratio")),
                    "accuracy_gap": None if acc_od is None or acc_rag is None else acc_od - acc_rag,
                }
            modes["vs_rag"] = cmp
    return out


def render_table(metrics: Nested, models: Sequence[str], modes: Sequence[str], datasets: Sequence[str]) -> str:
    """Markdown shaped like the paper's Table 1: one row per model x mode (grouped by mode), one column pair
    (Acc %, SR %) per dataset, the unweighted average first; then one search-efficiency table per dataset."""
    lines = [
        "# Evaluation",
        "",
        "Acc: accuracy (%), SR: search ratio (% of trajectories with at least one search call). "
        "Avg: unweighted mean over the datasets. '–': no trajectories (or an empty subset).",
        "",
    ]
    cols = [AVG] + list(datasets)
    header = "| Mode | Model | " + " | ".join(f"{'Avg' if d == AVG else d} Acc | {'Avg' if d == AVG else d} SR" for d in cols) + " |"
    lines += [header, "|" + "---|" * 2 + "---:|" * (2 * len(cols))]
    for mode in modes:
        for model in models:
            cells = []
            for d in cols:
                if d == AVG:
                    acc = mean_or_none(_get(metrics, model, mode, x, "accuracy") for x in datasets)
                    sr = mean_or_none(_get(metrics, model, mode, x, "search_ratio") for x in datasets)
                else:
                    acc, sr = _get(metrics, model, mode, d, "accuracy"), _get(metrics, model, mode, d, "search_ratio")
                cells += [pct(acc), pct(sr)]
            lines.append(f"| {MODE_TITLES.get(mode, mode)} | {model} | " + " | ".join(cells) + " |")
    for d in datasets:
        lines += [
            "",
            f"## {d}: search efficiency",
            "",
            "| Mode | Model | Items | Acc | Acc req. | Acc free | SR | Over-search | Under-search | Calls/traj. "
            "| Searches/correct | Tool fail | Invalid fmt | Tokens/item |",
            "|---|---|" + "---:|" * 12,
        ]
        for mode in modes:
            for model in models:
                m = metrics.get(model, {}).get(mode, {}).get(d)
                if not m:
                    continue
                lines.append(
                    f"| {MODE_TITLES.get(mode, mode)} | {model} | {m['n_items']} | {pct(m['accuracy'])} "
                    f"| {pct(m['accuracy_search_required'])} | {pct(m['accuracy_search_free'])} | {pct(m['search_ratio'])} "
                    f"| {pct(m['over_search_rate'])} | {pct(m['under_search_rate'])} | {num(m['search_calls_per_rollout'])} "
                    f"| {num(m['searches_per_correct'])} | {pct(m['tool_failure_rate'])} | {pct(m['invalid_format_rate'])} "
                    f"| {num(m['tokens_per_item'], 0)} |"
                )
    lines += [
        "",
        "Acc req. / Acc free: accuracy on the search-required / search-free items. Over-search: share of search-free "
        "trajectories that searched. Under-search: share of search-required trajectories that answered wrongly "
        "without searching. Definitions: `pipeline/evaluate/metrics.py`.",
        "",
    ]
    return "\n".join(lines)


def plot_records(metrics: Nested, models: Sequence[str], modes: Sequence[str], dataset: str) -> list[dict]:
    """One record per model x mode with a result on `dataset`: {point, model, mode, search_ratio, accuracy}
    (percentages; rows with an unknown value are left out)."""
    out = []
    for model in models:
        for mode in modes:
            acc, sr = _get(metrics, model, mode, dataset, "accuracy"), _get(metrics, model, mode, dataset, "search_ratio")
            if acc is None or sr is None:
                continue
            out.append({"point": f"{model}/{mode}", "model": model, "mode": mode,
                        "search_ratio": round(100 * sr, 4), "accuracy": round(100 * acc, 4)})
    return out


def write_plots(metrics: Nested, models: Sequence[str], modes: Sequence[str], datasets: Sequence[str],
                data_dir: str | os.PathLike, png_path: str | os.PathLike) -> list[Path]:
    """Write `<data_dir>/accuracy_vs_search_<dataset>.csv` per dataset (x = search_ratio, y = accuracy, for
    `dvc plots`) and one PNG with a scatter panel per dataset (colour = model, marker = mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for d in datasets:
        path = data_dir / f"accuracy_vs_search_{d}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["point", "model", "mode", "search_ratio", "accuracy"], lineterminator="\n")
            w.writeheader()
            w.writerows(plot_records(metrics, models, modes, d))
        written.append(path)

    markers = {"direct": "o", "rag": "s", "on_demand": "^"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets) + 1.5, 4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for rec in plot_records(metrics, models, modes, d):
            color = colors[list(models).index(rec["model"]) % len(colors)]
            ax.scatter(rec["search_ratio"], rec["accuracy"], color=color, marker=markers.get(rec["mode"], "x"), s=60,
                       label=f"{rec['model']} · {MODE_TITLES.get(rec['mode'], rec['mode'])}")
        ax.set_xlim(-5, 105)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("search ratio (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(d)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.78 if handles else 1, 1))
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    written.append(png_path)
    return written


def summary_lines(metrics: Nested, models: Sequence[str], modes: Sequence[str], datasets: Sequence[str]) -> list[str]:
    """One line per model x mode: accuracy and search ratio per dataset, as percentages (for the console)."""
    def cell(model: str, mode: str, d: str, key: str) -> str:
        value = _get(metrics, model, mode, d, key)
        return "–" if value is None else f"{pct(value)}%"

    return [f"{model} {mode}: " + ", ".join(f"{d}: acc {cell(model, mode, d, 'accuracy')} "
                                            f"SR {cell(model, mode, d, 'search_ratio')}" for d in datasets)
            for model in models for mode in modes]
