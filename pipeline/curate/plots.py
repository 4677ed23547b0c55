"""Label distributions before and after balancing, per category and per source: PNG figures and DVC plot data.

Writes, for each dimension D in (category, source), into the given folder:
  labels_by_<D>.csv   rows: group ("<D value> | <label> | before|after"), D, label, phase, count — rendered by
                      `dvc plots show` with the bar_horizontal template (x: count, y: group)
  labels_by_<D>.png   grouped bars (matplotlib, Agg), before on the left, after on the right
Reads nothing.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.schema import LABELS

DIMENSIONS = ("category", "source")
PHASES = ("before", "after")


def distribution(before: pd.DataFrame, after: pd.DataFrame, dim: str) -> pd.DataFrame:
    """Counts per (dim value, label, phase); zeros included so that bars line up."""
    frames = []
    for phase, df in (("before", before), ("after", after)):
        c = df.groupby([dim, "label"]).size().rename("count").reset_index() if len(df) else pd.DataFrame(columns=[dim, "label", "count"])
        c["phase"] = phase
        frames.append(c)
    counts = pd.concat(frames, ignore_index=True)
    values = sorted(set(before[dim].astype(str)) | set(after[dim].astype(str)))
    labels = [lab for lab in LABELS if lab in set(counts["label"])] or list(LABELS)
    full = pd.MultiIndex.from_product([values, labels, list(PHASES)], names=[dim, "label", "phase"]).to_frame(index=False)
    out = full.merge(counts, on=[dim, "label", "phase"], how="left").fillna({"count": 0})
    out["count"] = out["count"].astype(int)
    out["group"] = out[dim].astype(str) + " | " + out["label"] + " | " + out["phase"]
    return out[["group", dim, "label", "phase", "count"]]


def write_plots(before: pd.DataFrame, after: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write the CSV and PNG of each dimension; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dim in DIMENSIONS:
        table = distribution(before, after, dim)
        csv = out_dir / f"labels_by_{dim}.csv"
        table.to_csv(csv, index=False, lineterminator="\n")
        written.append(csv)
        values = list(dict.fromkeys(table[dim]))
        labels = list(dict.fromkeys(table["label"]))
        fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(values) + 3) * 2, 4.5), sharey=True)
        for ax, phase in zip(axes, PHASES):
            sub = table[table["phase"] == phase]
            width = 0.8 / max(1, len(labels))
            for k, lab in enumerate(labels):
                ys = [int(sub[(sub[dim] == v) & (sub["label"] == lab)]["count"].sum()) for v in values]
                ax.bar([i + k * width for i in range(len(values))], ys, width=width, label=lab)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(values))])
            ax.set_xticklabels(values, rotation=30, ha="right")
            total = int(sub["count"].sum())
            ax.set_title(f"{phase} balancing ({total} items)")
            ax.set_xlabel(dim)
        axes[0].set_ylabel("items")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        png = out_dir / f"labels_by_{dim}.png"
        fig.savefig(png, dpi=80, metadata={"Software": None})  # no version string: re-runs are byte-identical
        plt.close(fig)
        written.append(png)
    return written
