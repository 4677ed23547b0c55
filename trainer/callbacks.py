"""Training curves: every logged step as JSON and TSV (DVC plots) and a PNG of the main curves.

Writes, under the given folder: `curves.json` (list of {step, metric: value}), `curves.tsv` (same, one column per
metric, empty where a step did not log it) and `curves.png` (reward, its components, search calls, KL, loss).
The rows come from `TrainerState.log_history`, which checkpoints carry, so a resumed run rewrites the whole curve
including the steps before the kill. Only the main process writes.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

# metric -> panel title of the PNG; the first that exist are plotted
PANELS = (
    ("reward", "reward (Eq. 1)"),
    ("reward/accuracy", "accuracy"),
    ("reward/format", "format"),
    ("reward/search_penalty", "search penalty (reward lost)"),
    ("reward/efficiency", "efficiency term (efficiency: gdpo / among_correct)"),
    ("search/ratio", "share of rollouts that searched"),
    ("search/image_search_calls", "image searches / rollout"),
    ("search/text_search_calls", "text searches / rollout"),
    ("kl", "KL to reference"),
    ("loss", "loss"),
    ("completions/mean_length", "completion tokens"),
)


def curve_rows(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per training step (train logs only; eval rows keep their `eval_` prefix), numbers only."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        row = rows.setdefault(int(step), {"step": int(step)})
        for key, value in entry.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            row[key] = value
    return [rows[s] for s in sorted(rows)]


def write_curves(log_history: list[dict[str, Any]], folder: str | os.PathLike, png: bool = True) -> list[dict[str, Any]]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = curve_rows(log_history)
    _atomic(folder / "curves.json", json.dumps(rows, indent=1, sort_keys=True) + "\n")
    columns = ["step"] + sorted({k for r in rows for k in r} - {"step"})
    lines = ["\t".join(columns)] + ["\t".join(_fmt(r.get(c, "")) for c in columns) for r in rows]
    _atomic(folder / "curves.tsv", "\n".join(lines) + "\n")
    if png:
        plot_curves(rows, folder / "curves.png")
    return rows


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in PANELS if any(k in r for r in rows)] or [("step", "no metrics logged yet")]
    ncols = 3
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    tmp = Path(str(path) + ".tmp.png")
    fig.savefig(tmp, dpi=90, metadata={"Software": None})  # no version/timestamp: same curve, same bytes
    plt.close(fig)
    os.replace(tmp, path)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class CurvesCallback(TrainerCallback):
    """Rewrites the curve files after every log (JSON/TSV) and the PNG at each save and at the end."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            write_curves(state.log_history, self.folder, png=False)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_curves(state.log_history, self.folder, png=True)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_curves(state.log_history, self.folder, png=True)
