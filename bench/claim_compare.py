"""Is a claim experiment reproduced? Compares two output folders of bench/claim_experiment.py, run by run.

    python bench/claim_compare.py bench/claim7 <rerun-out> [--runs baseline,no_penalty] [--tolerance 0.5]

For every run in both folders (or the `--runs` named), it compares
  metrics.json   every figure of the evaluation (the comparison table's rows are read from it), as numbers within
                 `--tolerance` (absolute: the figures are percentages and counts; 0 = equal), anything else equal;
  reprobe.json   the reprobe stage's label moves, the same way;
  curves.tsv     the training curves column by column, the wall-clock columns (TIMING_COLUMNS) aside;
  rollouts.parquet  the evaluation's trajectories message for message, the latency aside (where both have them).
timing.json is printed, never compared: minutes depend on the machine and its load. Prints one line per run with
what differs (the first few keys), and exits 1 when any run differs beyond the tolerance, 2 when no run is shared.
Reads the two folders; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

TIMING_COLUMNS = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second"}
SHOWN = 6  # differing keys printed per file


def flatten(value, prefix: str = "") -> dict:
    """{"a.b.0": leaf} of nested dicts and lists."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, sub in enumerate(value) for k, v in flatten(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def same_value(a, b, tolerance: float) -> bool:
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if numbers:
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance
    return type(a) is type(b) and a == b  # True is not 1 here


def json_diff(a: Path, b: Path, tolerance: float) -> list[str]:
    fa, fb = flatten(json.loads(a.read_text())), flatten(json.loads(b.read_text()))
    return [k for k in sorted(fa.keys() | fb.keys()) if k not in fa or k not in fb
            or not same_value(fa[k], fb[k], tolerance)]


def curves_diff(a: Path, b: Path, tolerance: float) -> list[str]:
    import pandas as pd

    ca, cb = pd.read_csv(a, sep="\t"), pd.read_csv(b, sep="\t")
    if len(ca) != len(cb):
        return [f"steps {len(ca)} vs {len(cb)}"]
    out = []
    for col in sorted((set(ca.columns) | set(cb.columns)) - TIMING_COLUMNS):
        if col not in ca or col not in cb:
            out.append(col)
        elif not all(same_value(x, y, tolerance) for x, y in zip(ca[col].tolist(), cb[col].tolist())):
            out.append(col)
    return out


def rollouts_diff(a: Path, b: Path) -> list[str]:
    import pyarrow.parquet as pq

    def rows(path):
        table = pq.read_table(path)
        table = table.drop(["latency_s"]) if "latency_s" in table.column_names else table
        return {(r["rollout_id"], r.get("model")): r for r in table.to_pylist()}

    ra, rb = rows(a), rows(b)
    if ra.keys() != rb.keys():
        return [f"{len(ra.keys() ^ rb.keys())} trajectories in one folder only"]
    return [f"{k[0]} ({k[1]})" for k in sorted(ra, key=str) if ra[k] != rb[k]]


def compare_run(a: Path, b: Path, tolerance: float) -> dict[str, list[str]]:
    """{file: differing keys} for one run's two folders (files missing in either are skipped)."""
    checks = {"metrics.json": lambda x, y: json_diff(x, y, tolerance),
              "reprobe.json": lambda x, y: json_diff(x, y, tolerance),
              "curves.tsv": lambda x, y: curves_diff(x, y, tolerance),
              "rollouts.parquet": rollouts_diff}
    return {name: check(a / name, b / name) for name, check in checks.items()
            if (a / name).exists() and (b / name).exists()}


def minutes(folder: Path) -> str:
    path = folder / "timing.json"
    return str(json.loads(path.read_text()).get("run_minutes", "?")) if path.exists() else "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path, help="a claim_experiment.py output folder (e.g. bench/claim7)")
    ap.add_argument("second", type=Path, help="another one (e.g. the re-run's --out)")
    ap.add_argument("--runs", default="", help="comma-separated runs to compare (default: every run in both)")
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="largest absolute difference of a number that still counts as the same (default 0)")
    args = ap.parse_args(argv)
    shared = sorted(p.name for p in args.first.iterdir() if (p / "metrics.json").exists()
                    and (args.second / p.name / "metrics.json").exists()) if args.first.is_dir() else []
    runs = [r for r in args.runs.split(",") if r] or shared
    missing = [r for r in runs if r not in shared]
    if not runs or missing:
        print(f"no run with metrics.json in both {args.first} and {args.second}: {missing or 'none shared'}")
        return 2
    differing = 0
    for run in runs:
        diffs = compare_run(args.first / run, args.second / run, args.tolerance)
        bad = {name: keys for name, keys in diffs.items() if keys}
        differing += bool(bad)
        what = "; ".join(f"{name}: {', '.join(keys[:SHOWN])}" + (f" (+{len(keys) - SHOWN})" * (len(keys) > SHOWN))
                         for name, keys in bad.items())
        print(f"{run}: {'DIFFERS' if bad else 'same'} ({', '.join(diffs)} compared; minutes "
              f"{minutes(args.first / run)} vs {minutes(args.second / run)})" + (f": {what}" if what else ""))
    print(f"{len(runs) - differing} of {len(runs)} runs reproduced within {args.tolerance}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
