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


def with_ci(m: Mapping[str, Any], key: str, fmt=pct) -> str:
    """A figure with its 95% interval from the metrics' `ci95`: '55.0 [45.2–64.5]'; the figure alone when it has
    no interval."""
    ci = (m.get("ci95") or {}).get(key)
    text = fmt(m.get(key))
    return text if ci is None or m.get(key) is None else f"{text} [{fmt(ci['lo'])}–{fmt(ci['hi'])}]"


def _get(metrics: Nested, model: str, mode: str, dataset: str, key: str) -> Any:
    return metrics.get(model, {}).get(mode, {}).get(dataset, {}).get(key)


def with_summaries(metrics: Nested, datasets: Sequence[str]) -> dict:
    """Copy of `metrics` with an `avg` pseudo-dataset per model x mode (unweighted mean over `datasets` of
    accuracy and search_ratio, as the paper's Avg column) and, per model and dataset, a `vs_rag` entry comparing
    on-demand search with the always-search workflow of the same model (or, for a model not played in RAG mode, of the
    first model that is: the paper compares its trained policy with the base model's RAG workflow):
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
        rag_modes = modes if "rag" in modes else next((ms for ms in out.values() if "rag" in ms), None)
        if "on_demand" in modes and rag_modes:
            cmp = {}
            for d in list(datasets) + [AVG]:
                od, rag = modes["on_demand"].get(d, {}), rag_modes["rag"].get(d, {})
                acc_od, acc_rag = od.get("accuracy"), rag.get("accuracy")
                cmp[d] = {
                    "search_reduction": search_reduction(od.get("search_ratio"), rag.get("search_ratio")),
                    "accuracy_gap": None if acc_od is None or acc_rag is None else acc_od - acc_rag,
                }
            modes["vs_rag"] = cmp
    return out


def render_table(metrics: Nested, models: Sequence[str], modes: Sequence[str], datasets: Sequence[str]) -> str:
    """Markdown shaped like the paper's Table 1: one row per model x mode (grouped by mode), the unweighted average
    first, then per dataset n (trajectories), Acc % and SR % with their 95% intervals; then one search-efficiency
    table per dataset."""
    lines = [
        "# Evaluation",
        "",
        "Acc: accuracy (%), SR: search ratio (% of trajectories with at least one search call), each with its 95% "
        "Wilson interval in brackets; n: trajectories of the cell (one per item with one sample). Avg: unweighted "
        "mean over the datasets (no interval). '–': no trajectories (or an empty subset).",
        "",
    ]
    header = "| Mode | Model | Avg Acc | Avg SR | " + " | ".join(f"{d} n | {d} Acc | {d} SR" for d in datasets) + " |"
    lines += [header, "|" + "---|" * 2 + "---:|" * (2 + 3 * len(datasets))]
    for mode in modes:
        for model in models:
            if mode not in metrics.get(model, {}):  # a model not played in this mode (evaluate.models[].modes)
                continue
            cells = [pct(mean_or_none(_get(metrics, model, mode, x, key) for x in datasets))
                     for key in ("accuracy", "search_ratio")]
            for d in datasets:
                m = metrics.get(model, {}).get(mode, {}).get(d) or {}
                cells += [str(m["n_rollouts"]) if m else "–", with_ci(m, "accuracy"), with_ci(m, "search_ratio")]
            lines.append(f"| {MODE_TITLES.get(mode, mode)} | {model} | " + " | ".join(cells) + " |")
    for d in datasets:
        lines += [
            "",
            f"## {d}: search efficiency",
            "",
            "| Mode | Model | Items (req./free) | Traj. | Acc | Acc req. | Acc free | SR | Over-search | Under-search "
            "| Calls/traj. | Searches/correct | Tool prod. | Tool fail | Invalid fmt | Tokens/item |",
            "|---|---|" + "---:|" * 14,
        ]
        for mode in modes:
            for model in models:
                m = metrics.get(model, {}).get(mode, {}).get(d)
                if m:
                    lines.append(f"| {MODE_TITLES.get(mode, mode)} | {model} | " + " | ".join(efficiency_cells(m)) + " |")
    lines += [
        "",
        "Items (req./free): evaluated items (of them search-required / search-free). Acc req. / Acc free: accuracy on "
        "the search-required / search-free items. Over-search: share of search-free trajectories that searched. "
        "Under-search: share of search-required trajectories that answered wrongly without searching. Tool prod.: "
        "correct answers per search call (OTC-PO's tool productivity; '–' without search calls). Brackets: 95% "
        "intervals, Wilson for the shares, a seeded bootstrap over items for Calls/traj., Searches/correct and Tool "
        "prod. Definitions: `pipeline/evaluate/metrics.py`.",
        "",
    ]
    return "\n".join(lines)


def behaviour_table(rows: Sequence[Mapping[str, Any]], models: Sequence[str], dataset: str, mode: str = "on_demand",
                    top: int = 6) -> str:
    """What the policy did per label: one row per model x label, one column per action sequence (the `top` most
    frequent over the table, the rest in 'other'), each cell 'trajectories (correct)'. Empty when no row matches.
    A collapse the aggregate figures hide shows here: e.g. every mixed item answered after the image search alone."""
    from collections import Counter

    picked = [r for r in rows if r.get("dataset") == dataset and r.get("condition") == mode and r.get("model") in models]
    if not picked:
        return ""
    seq = lambda r: " > ".join(r.get("actions") or []) or "(none)"  # noqa: E731
    freq = Counter(seq(r) for r in picked)
    cols = [s for s, _ in freq.most_common(top)]
    other = len(freq) > len(cols)
    cells: dict[tuple, list[int]] = {}
    for r in picked:
        s = seq(r)
        key = (r["model"], r.get("label") or "(no label)", s if s in cols else "other")
        c = cells.setdefault(key, [0, 0])
        c[0] += 1
        c[1] += bool(r.get("correct"))
    heads = cols + (["other"] if other else [])
    lines = ["", f"## {dataset}: what the policy did per label ({MODE_TITLES.get(mode, mode)})", "",
             "Trajectories per action sequence, correct ones in brackets.", "",
             "| Model | Label | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
    labels = sorted({k[1] for k in cells})
    for model in models:
        for label in labels:
            row = [cells.get((model, label, h)) for h in heads]
            if any(row):
                lines.append(f"| {model} | {label} | " + " | ".join(f"{c[0]} ({c[1]})" if c else "–" for c in row) + " |")
    return "\n".join(lines) + "\n"


def key_table(by_key: Nested, by_label: Nested, models: Sequence[str], modes: Sequence[str], dataset: str) -> str:
    """The search decisions against the answer key (`metrics_by_answer_key`) next to the same figures against the
    labels, one row per model x mode; empty when no evaluated item of `dataset` has a key."""
    rows = [(mode, model, by_key[model][mode][dataset], (by_label.get(model, {}).get(mode, {}).get(dataset) or {}))
            for mode in modes for model in models if dataset in by_key.get(model, {}).get(mode, {})]
    if not rows:
        return ""
    lines = ["", f"## {dataset}: search decisions against the answer key", "",
             "The demo world's answer key says what each item needs; here each item counts by the label the key "
             "implies instead of the probe's. Where they differ, the label is wrong: a search-free label on an item "
             "that needs a search makes the right search count as over-search. Items (req./free): by the key.", "",
             "| Mode | Model | Items (req./free) | Over-search: key | labels | Under-search: key | labels "
             "| Acc free: key | Acc req.: key |", "|---|---|" + "---:|" * 7]
    for mode, model, k, lab in rows:
        lines.append(f"| {MODE_TITLES.get(mode, mode)} | {model} | {k['n_search_required']}/{k['n_search_free']} | "
                     + " | ".join([with_ci(k, "over_search_rate"), pct(lab.get("over_search_rate")),
                                   with_ci(k, "under_search_rate"), pct(lab.get("under_search_rate")),
                                   with_ci(k, "accuracy_search_free"), with_ci(k, "accuracy_search_required")]) + " |")
    return "\n".join(lines) + "\n"


def efficiency_cells(m: Mapping[str, Any]) -> list[str]:
    """The cells of one model x mode row of a dataset's search-efficiency table (after Mode and Model)."""
    return [
        f"{m['n_items']} ({m['n_search_required']}/{m['n_search_free']})", str(m["n_rollouts"]),
        with_ci(m, "accuracy"), with_ci(m, "accuracy_search_required"), with_ci(m, "accuracy_search_free"),
        with_ci(m, "search_ratio"), with_ci(m, "over_search_rate"), with_ci(m, "under_search_rate"),
        with_ci(m, "search_calls_per_rollout", num), with_ci(m, "searches_per_correct", num),
        with_ci(m, "tool_productivity", num), with_ci(m, "tool_failure_rate"), with_ci(m, "invalid_format_rate"),
        num(m["tokens_per_item"], 0),
    ]


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
            for model in models for mode in modes if mode in metrics.get(model, {})]
