"""The figures a dataset card shows, each from a file the pipeline wrote or from the published tables.

Reads:  metrics JSONs (glob patterns per card section, relative to the project root), the published tables handed
        in (probe evidence, search cache, splits), `.git/HEAD` for the code revision (read, git is not run).
Writes: nothing.

A metrics file that is missing or unreadable is reported as missing (the card says so), never replaced by a
made-up number.
"""
from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipeline.publish.inputs import expand
from pipeline.schema import LABELS


# ---------------------------------------------------------------------------------------------------------------
# Metrics files
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class MetricsSection:
    """The metrics files found for one section (e.g. "probe"): {relative path: parsed JSON}, and the glob patterns
    that were searched (shown in the card when nothing matched)."""

    name: str
    files: dict[str, Any]
    patterns: list[str]

    @property
    def found(self) -> bool:
        return bool(self.files)

    def rows(self, per_file: int = 40) -> list[tuple[str, str, str]]:
        """(file, key, value) for the scalar figures of each file (nested keys dotted; at most `per_file` each, the
        rest summarised in one row)."""
        out = []
        for path, obj in self.files.items():
            flat = flatten(obj)
            out.extend((path, key, value) for key, value in flat[:per_file])
            if len(flat) > per_file:
                out.append((path, "…", f"{len(flat) - per_file} more figures in the file"))
        return out

    def find(self, *names: str) -> Any:
        """First value under any of `names` (top level or one level down) across the files; None when absent."""
        for obj in self.files.values():
            if not isinstance(obj, Mapping):
                continue
            for d in [obj] + [v for v in obj.values() if isinstance(v, Mapping)]:
                for n in names:
                    if n in d and not isinstance(d[n], (Mapping, list)):
                        return d[n]
        return None


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Scalar leaves of a JSON object as (dotted key, formatted value); short scalar lists are joined."""
    out: list[tuple[str, str]] = []
    if isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            out.extend(flatten(obj[k], f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list):
        if len(obj) <= 12 and all(not isinstance(v, (Mapping, list)) for v in obj):
            out.append((prefix, ", ".join(fmt(v) for v in obj)))
        else:
            out.append((prefix, f"[{len(obj)} entries]"))
    else:
        out.append((prefix, fmt(obj)))
    return out


def fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if v is not None else "null"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def load_metrics(sections: Mapping[str, Iterable[str]], root: Path) -> dict[str, MetricsSection]:
    """{section: MetricsSection} from glob patterns relative to `root` (unreadable JSON counts as missing)."""
    out = {}
    for name, patterns in sections.items():
        files = {}
        for p in expand(list(patterns), root):
            try:
                files[p.relative_to(root).as_posix()] = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
        out[name] = MetricsSection(name, files, list(patterns))
    return out


def hit_rate(metrics: Mapping[str, MetricsSection]) -> tuple[float | None, str]:
    """Cache hit rate: hits / (hits + misses) summed over the files of the first section ("search", then "probe")
    that reports them, else the first `hit_rate` reported. (None, "") when no metrics file has them."""
    for name in ("search", "probe"):
        section = metrics.get(name)
        if section is None:
            continue
        hits = misses = 0.0
        used, rate, rate_path = [], None, ""
        for path, obj in section.files.items():
            one = MetricsSection(name, {path: obj}, [])
            h, m = one.find("hits", "cache_hits"), one.find("misses", "cache_misses")
            if isinstance(h, (int, float)) and isinstance(m, (int, float)):
                hits, misses = hits + h, misses + m
                used.append(path)
            r = one.find("hit_rate", "cache_hit_rate")
            if rate is None and isinstance(r, (int, float)):
                rate, rate_path = float(r), path
        if used and hits + misses > 0:
            where = ", ".join(f"`{u}`" for u in used)
            return hits / (hits + misses), f"{int(hits)} hits, {int(misses)} misses in {where}"
        if rate is not None:
            return rate, f"`{rate_path}`"
    return None, ""


# ---------------------------------------------------------------------------------------------------------------
# Summaries of the published tables
# ---------------------------------------------------------------------------------------------------------------
def counter_table(counts: Mapping[str, Mapping[str, int]], columns: list[str]) -> dict:
    """{"columns": [...], "rows": [[name, c1, c2, ..., total]]} for the template."""
    rows = []
    for name in columns:
        vals = [int(counts.get(split, {}).get(name, 0)) for split in counts]
        rows.append([name, *vals, sum(vals)])
    totals = [sum(int(v) for v in c.values()) for c in counts.values()]
    return {"columns": list(counts), "rows": rows, "totals": [*totals, sum(totals)]}


def label_counts(table, column: str = "label") -> dict[str, int]:
    """{label name: rows} for a table whose label column holds ClassLabel ids or names."""
    vals = table.column(column).to_pylist()
    names = [LABELS[v] if isinstance(v, int) and 0 <= v < len(LABELS) else str(v) for v in vals]
    return dict(collections.Counter(names))


def probe_summary(evidence) -> dict | None:
    """Per-condition figures of the probe evidence table (None when it has no rows)."""
    if evidence is None or len(evidence) == 0:
        return None
    rows = evidence.select(["item_id", "condition", "sample", "model", "protocol", "saw_image", "correct",
                            "valid_format", "n_image_search", "n_text_search", "judge"]).to_pylist()
    by_cond: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by_cond[r["condition"]].append(r)
    conditions = []
    for name in sorted(by_cond):
        rs = by_cond[name]
        per_item = collections.Counter(r["item_id"] for r in rs)
        samples = sorted(set(per_item.values()))
        conditions.append({
            "name": name,
            "rollouts": len(rs),
            "samples": "/".join(str(s) for s in samples),
            "correct": sum(bool(r["correct"]) for r in rs) / len(rs),
            "valid": sum(bool(r["valid_format"]) for r in rs) / len(rs),
            "image_search": sum(int(r["n_image_search"] or 0) for r in rs),
            "text_search": sum(int(r["n_text_search"] or 0) for r in rs),
        })
    return {
        "n_rollouts": len(rows),
        "n_items": len({r["item_id"] for r in rows}),
        "models": sorted({r["model"] for r in rows}),
        "protocols": sorted({r["protocol"] for r in rows}),
        "judges": sorted({r["judge"] for r in rows}),
        "saw_image_share": sum(bool(r["saw_image"]) for r in rows) / len(rows),
        "conditions": conditions,
    }


def cache_summary(cache, stats: Mapping[str, int] | None) -> dict | None:
    if cache is None:
        return None
    counts = collections.Counter(zip(*(cache.column(c).to_pylist() for c in ("tool", "backend", "backend_version"))))
    backends = [{"tool": t, "backend": b, "backend_version": v, "entries": n} for (t, b, v), n in sorted(counts.items(), key=lambda kv: tuple(map(str, kv[0])))]
    return {**dict(stats or {}), "backends": backends}


def known_limits(*, probe: dict | None, cache: dict | None, before: dict | None, search_share: Mapping[str, float]) -> list[str]:
    """Limits that follow from how this particular folder was made, plus the ones of the method."""
    out = [
        "Labels describe what the probe model needed, not what any model needs: a stronger model answers more items "
        "closed book, so re-probe with your own model before relying on the split of search-free vs search-required.",
        "Pass rates come from a few sampled rollouts per item and condition; the `confidence` column says how "
        "clear-cut each label was.",
        "Exact match after SQuAD normalisation against the answer and its aliases misses correct paraphrases.",
    ]
    if probe and probe.get("saw_image_share") is not None and probe["saw_image_share"] < 1.0:
        out.append(f"In {100 * (1 - probe['saw_image_share']):.1f}% of the rollouts the model did not see the image "
                   "(text-only model): those items rely on image search for any visual information.")
    if cache is None:
        out.append("No search cache is published: training cannot replay the probe's searches offline.")
    elif cache.get("keys_missing"):
        out.append(f"{cache['keys_missing']} search results referenced by the evidence are missing from the cache "
                   "export; replaying those calls offline fails with an error naming the key.")
    if before is None:
        out.append("The counts before balancing were not available when the card was built.")
    if search_share and max(search_share.values()) - min(search_share.values()) > 0.1:
        out.append("The search-required share differs by more than 10 points between splits.")
    out.append("Search results reflect the backends and their versions at probe time (see the cache table); live "
               "web results change.")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------------------------
def env_summary() -> dict[str, str]:
    """Library versions that produced the folder (no machine details)."""
    import datasets
    import huggingface_hub
    import pyarrow

    return {"datasets": datasets.__version__, "huggingface_hub": huggingface_hub.__version__, "pyarrow": pyarrow.__version__}


def git_revision(root: Path) -> str:
    """The code revision (git HEAD), or "" when unknown; read without running git."""
    head = root / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            target = root / ".git" / ref[5:]
            return target.read_text().strip() if target.exists() else ""
        return ref
    except OSError:
        return ""
