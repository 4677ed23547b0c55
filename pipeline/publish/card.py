"""The dataset card: a Jinja template in data_cards/ rendered from the pipeline's own metrics and the published data.

Reads:  metrics JSONs of gather, dedup (+ report.json), label, balance, probe and search (globs from the publish
        params), the published tables (counts, licences, rule versions, probe models), data/label/labels.parquet for
        the counts before balancing, the params file for the reproduction recipe.
Writes: nothing; `render_card` returns the README.md text, `validate_card` checks a card (huggingface_hub's
        DatasetCard parsing + `datasets`' configs / dataset_info parsing + files present + no local paths).

Every figure in the card comes from a file the pipeline wrote; a missing metrics file is stated in its section,
never replaced by a made-up number.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from pipeline.schema import LABELS, SEARCH_REQUIRED

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "data_cards"
DEFAULT_TEMPLATE = "dataset_card.md.jinja"

# What each label means (documentation of the rule's classes; the rule itself lives in pipeline/curate/label.py).
LABEL_MEANINGS = {
    "search_free": "the probe model answers correctly without any tool (closed book) often enough",
    "image_search_required": "it fails closed book but succeeds once image search is available",
    "text_search_required": "it fails closed book but succeeds once text search is available",
    "mixed_search_required": "it needs both image search and text search to answer",
    "unanswerable": "it fails in every probed condition, tools included (kept for analysis, usually not trained on)",
}

# Licence ids the Hub accepts in a card's `license:` field (the common subset; anything else is published as
# "other" and named in the card body).
HUB_LICENSES = frozenset(
    """apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0
    gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl
    apple-amlr mpl-2.0 odc-by odbl openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl
    lgpl-lr deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3
    llama4 gemma unknown other""".split()
)
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"))
SECRET_KEY = re.compile(r"(token|secret|password|passwd|api_key|apikey)$", re.I)


class CardError(ValueError):
    """The card cannot be rendered (template missing, bad context)."""


# ---------------------------------------------------------------------------------------------------------------
# Metrics
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
    from pipeline.publish.folder import expand

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


# ---------------------------------------------------------------------------------------------------------------
# Licences and YAML header
# ---------------------------------------------------------------------------------------------------------------
def hub_license_ids(license_text: str) -> list[str]:
    """'CC-BY-SA-4.0 AND MIT' -> ['cc-by-sa-4.0', 'mit']; ids the Hub does not know become 'other'."""
    parts = [p.strip().lower() for p in re.split(r"\s+(?:and|or|with)\s+|[,;+&]", license_text or "", flags=re.I)]
    ids = []
    for p in parts:
        if not p:
            continue
        p = {"public-domain": "other", "public domain": "other", "cc0": "cc0-1.0", "apache 2.0": "apache-2.0"}.get(p, p)
        ids.append(p if p in HUB_LICENSES else "other")
    return ids or ["unknown"]


def size_category(n: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>1M"


def card_header(*, licenses: list[str], pretty_name: str, task_categories: list[str], language: list[str],
                tags: list[str], total_rows: int, configs: list[dict], infos) -> str:
    """The YAML front matter: licences, tasks, size, `configs` (data files per split) and `dataset_info`."""
    from huggingface_hub import DatasetCardData
    from datasets.utils.metadata import MetadataConfigs

    data = DatasetCardData(
        license=sorted(set(licenses)) or ["unknown"],
        task_categories=list(task_categories),
        language=list(language),
        size_categories=[size_category(total_rows)],
        pretty_name=pretty_name,
        tags=list(tags),
    )
    MetadataConfigs({c["config_name"]: {k: v for k, v in c.items() if k != "config_name"} for c in configs}).to_dataset_card_data(data)
    infos.to_dataset_card_data(data)
    # default config first (MetadataConfigs sorts by name)
    data.configs = sorted(data.configs, key=lambda c: (c["config_name"] != "default", c["config_name"]))
    return data.to_yaml()


# ---------------------------------------------------------------------------------------------------------------
# Params for the reproduction recipe
# ---------------------------------------------------------------------------------------------------------------
def redact(obj: Any) -> Any:
    """Drop values of secret-looking keys (params name env vars; a literal secret must still never be published)."""
    if isinstance(obj, Mapping):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) and obj[k] not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def params_yaml(path: Path) -> str:
    if not path.exists():
        return ""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return yaml.safe_dump(redact(data), sort_keys=False, allow_unicode=True, width=120).rstrip()


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------
def counter_table(counts: Mapping[str, Mapping[str, int]], columns: list[str]) -> dict:
    """{"columns": [...], "rows": [[name, c1, c2, ..., total]]} for the template."""
    rows = []
    for name in columns:
        vals = [int(counts.get(split, {}).get(name, 0)) for split in counts]
        rows.append([name, *vals, sum(vals)])
    totals = [sum(int(v) for v in c.values()) for c in counts.values()]
    return {"columns": list(counts), "rows": rows, "totals": [*totals, sum(totals)]}


def render_card(context: Mapping[str, Any], template: str = DEFAULT_TEMPLATE, template_dir: Path = TEMPLATE_DIR) -> str:
    """Render the card template with `context` (undefined names are errors, not blanks)."""
    import jinja2

    if not (Path(template_dir) / template).exists():
        raise CardError(f"card template {Path(template_dir) / template} not found")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["fmt"] = fmt
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * float(v):.1f}%"
    text = env.get_template(template).render(**context, label_meanings=LABEL_MEANINGS, labels=list(LABELS),
                                             search_required=list(SEARCH_REQUIRED))
    return re.sub(r"\n{3,}", "\n\n", text)


def local_paths() -> list[str]:
    """Absolute paths of this machine that must not appear in a published card."""
    out = {str(Path.cwd().resolve()), str(Path.home())}
    return sorted(p for p in out if len(p) > 1)


def validate_card(text: str, folder: Path | None = None) -> list[str]:
    """Problems with a card ([] when fine): YAML header parsed by huggingface_hub's DatasetCard, licence ids, task
    categories, `configs` and `dataset_info` parsed by `datasets`, data files present in `folder`, no unrendered
    template text, no local absolute paths."""
    from huggingface_hub import DatasetCard
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    problems = []
    if not text.startswith("---\n"):
        return ["README.md: the card must start with a YAML header (---)"]
    try:
        card = DatasetCard(text)
    except Exception as exc:  # huggingface_hub raises ValueError/yaml errors for a broken header
        return [f"README.md: YAML header does not parse: {exc}"]
    data = card.data
    for key in ("license", "task_categories", "configs", "dataset_info", "size_categories"):
        if not data.get(key):
            problems.append(f"README.md: YAML header has no {key!r}")
    licenses = data.get("license") or []
    for lic in [licenses] if isinstance(licenses, str) else licenses:
        if lic not in HUB_LICENSES:
            problems.append(f"README.md: license {lic!r} is not a Hub licence id (use 'other' and name it in the card)")
    for sc in data.get("size_categories") or []:
        if sc not in {name for _, name in SIZE_CATEGORIES} | {"n>1M", "unknown"}:
            problems.append(f"README.md: size category {sc!r} unknown")
    try:
        configs = MetadataConfigs.from_dataset_card_data(data)
        infos = DatasetInfosDict.from_dataset_card_data(data)
    except Exception as exc:
        return problems + [f"README.md: configs/dataset_info do not parse: {exc}"]
    if set(configs) != set(infos):
        problems.append(f"README.md: configs {sorted(configs)} and dataset_info {sorted(infos)} name different configs")
    for name, cfg in configs.items():
        entries = cfg.get("data_files") or []
        if not entries:
            problems.append(f"README.md: config {name!r} lists no data_files")
        for entry in entries:
            if not isinstance(entry, Mapping) or "split" not in entry or "path" not in entry:
                problems.append(f"README.md: config {name!r}: data_files entries need split and path")
                continue
            if folder is not None and not list(Path(folder).glob(entry["path"])):
                problems.append(f"README.md: config {name!r} split {entry['split']!r}: no file matches {entry['path']!r}")
    body = card.text
    if "{{" in body or "{%" in body:
        problems.append("README.md: unrendered template text in the card body")
    for p in local_paths():
        if p in text:
            problems.append("README.md: contains a local absolute path of this machine; publish relative paths only")
    return problems


def label_counts(table, column: str = "label") -> dict[str, int]:
    """{label name: rows} for a table whose label column holds ClassLabel ids or names."""
    vals = table.column(column).to_pylist()
    names = [LABELS[v] if isinstance(v, int) and 0 <= v < len(LABELS) else str(v) for v in vals]
    return dict(collections.Counter(names))


def value_counts(table, column: str) -> dict[str, int]:
    return dict(sorted(collections.Counter(table.column(column).to_pylist()).items(), key=lambda kv: (-kv[1], str(kv[0]))))


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



# ---------------------------------------------------------------------------------------------------------------
# Context: what the template shows, computed from the published tables and the metrics files
# ---------------------------------------------------------------------------------------------------------------
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
