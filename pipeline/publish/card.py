"""The dataset card: huggingface_hub's DatasetCard, its metadata made by the libraries, its body from data_cards/.

Reads:  the published configs (rows, sources, licences, rule versions), the probe evidence and search-cache tables,
        the exclusions table, metrics JSONs (via `pipeline.publish.figures`; the label metrics' agreement with a
        source's reference label via `pipeline.curate.reference`), the labels before balancing
        (`labels_file`), the params file (shown redacted in the reproduction recipe), the Jinja template.
Writes: `<folder>/README.md` through `DatasetCard.save`.

The YAML header is a `huggingface_hub.DatasetCardData` (licences, tasks, size, language, tags) filled with the
`configs:` (datasets' MetadataConfigs) and `dataset_info` (datasets' DatasetInfosDict) of the folder; the template
places it with `{{ card_data }}` as huggingface_hub's own templates do. The body is rendered with a strict Jinja
environment (an undefined name is an error, not a blank), which is why `DatasetCard.from_template` (a bare
`jinja2.Template`, no filters) is not used; the rendered text is then parsed back by `DatasetCard` and must carry
exactly the metadata that was made. Values of secret-looking params keys never reach the card; absolute paths of
this machine are written relative to the project root or ~ (as in the published tables).
"""
from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.curate.reference import card_summary as reference_card_summary
from pipeline.publish import figures
from pipeline.publish.folder import DEFAULT_CONFIG, ConfigData
from pipeline.publish.inputs import scrub_text
from pipeline.schema import LABELS, SEARCH_REQUIRED

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "data_cards"
DEFAULT_TEMPLATE = "dataset_card.md.jinja"
METRIC_SECTIONS = ("gather", "dedup", "bootstrap", "probe", "label", "balance", "search")  # sections of the card

# What each label means (documentation of the rule's classes; the rule itself lives in pipeline/curate/label.py).
LABEL_MEANINGS = {
    "search_free": "the probe model answers correctly with no tool (closed book), settled with confidence",
    "image_search_required": "it fails closed book and succeeds with image search alone",
    "text_search_required": "it fails closed book and with image search alone, and succeeds with text search alone",
    "mixed_search_required": "it succeeds only with both tools, its correct answers using image and text search",
    "unanswerable": "it fails in every probed condition, tools included (excluded, kept with the reason)",
    "uncertain": "the evidence did not settle it within the probe budget (excluded, kept with the reason)",
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
    """The card cannot be rendered (template missing, bad context, metadata lost by the template)."""


# ---------------------------------------------------------------------------------------------------------------
# Metadata (the YAML header)
# ---------------------------------------------------------------------------------------------------------------
def hub_license_ids(license_text: str) -> list[str]:
    """'CC-BY-SA-4.0 AND MIT' -> ['cc-by-sa-4.0', 'mit']; remarks in parentheses are dropped ('MIT (easy-vqa)' ->
    ['mit']), spaces inside one licence become hyphens ('CC BY-SA 4.0' -> ['cc-by-sa-4.0']); ids the Hub does not
    know become 'other'."""
    text = re.sub(r"\([^()]*\)", " ", license_text or "")
    parts = [p.strip().lower() for p in re.split(r"\s+(?:and|or|with)\s+|[,;+&]", text, flags=re.I)]
    ids = []
    for p in parts:
        if not p:
            continue
        p = re.sub(r"\s+", "-", p)
        p = {"public-domain": "other", "cc0": "cc0-1.0"}.get(p, p)
        ids.append(p if p in HUB_LICENSES else "other")
    return ids or ["unknown"]


def size_category(n: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>1M"


def card_data(p, *, licenses: list[str], total_rows: int, configs, infos):
    """The card's metadata: a DatasetCardData with licences, tasks, size, `configs` (datasets' MetadataConfigs) and
    `dataset_info` (datasets' DatasetInfosDict), written into it by the `datasets` helpers; default config first."""
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(
        license=sorted(set(licenses)) or ["unknown"],
        task_categories=list(p.task_categories),
        language=list(p.language),
        size_categories=[size_category(total_rows)],
        pretty_name=p.pretty_name,
        tags=list(p.tags),
    )
    configs.to_dataset_card_data(data)
    infos.to_dataset_card_data(data)
    data.configs = sorted(data.configs, key=lambda c: (c["config_name"] != DEFAULT_CONFIG, c["config_name"]))
    return data


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
# Context: what the template shows
# ---------------------------------------------------------------------------------------------------------------
def sources_table(splits: Mapping[str, pa.Table]) -> list[dict]:
    """Per source: rows, licences as gathered, and the Hub licence ids they map to."""
    by_source: dict[str, dict] = {}
    for table in splits.values():
        for src, lic in zip(table.column("source").to_pylist(), table.column("license").to_pylist()):
            entry = by_source.setdefault(src, {"name": src, "rows": 0, "licenses": set()})
            entry["rows"] += 1
            entry["licenses"].add(lic or "unknown")
    out = []
    for src in sorted(by_source):
        e = by_source[src]
        ids = sorted({i for lic in e["licenses"] for i in hub_license_ids(lic)})
        out.append({**e, "licenses": sorted(e["licenses"]), "hub_ids": ids})
    return out


def card_context(p, root: Path, *, configs: list[ConfigData], missing_configs: list[dict], evidence: pa.Table | None,
                 cache: pa.Table | None, cache_stats: dict | None, exclusions: pa.Table, plots: list[dict],
                 repo_id: str, params_file: Path) -> dict:
    """Everything the template shows, from the published configs and the files the pipeline wrote."""
    default = next(c for c in configs if c.name == DEFAULT_CONFIG)
    splits = {s: default.table(s) for s in default.dataset}
    metrics = figures.load_metrics(p.metrics, root)
    for name in METRIC_SECTIONS:
        metrics.setdefault(name, figures.MetricsSection(name, {}, []))
    split_labels = {s: figures.label_counts(t) for s, t in splits.items()}
    after = {name: sum(c.get(name, 0) for c in split_labels.values()) for name in LABELS}
    labels_path = root / p.labels_file
    before = figures.label_counts(pq.read_table(labels_path, columns=["label"])) if labels_path.exists() else None
    search_share = {s: sum(c.get(n, 0) for n in SEARCH_REQUIRED) / max(1, sum(c.values())) for s, c in split_labels.items()}
    probe = figures.probe_summary(evidence)
    cache_info = figures.cache_summary(cache, cache_stats)
    rate, rate_source = figures.hit_rate(metrics)
    excl_counts = collections.Counter(zip(exclusions.column("stage").to_pylist(), exclusions.column("reason").to_pylist()))
    try:
        from pipeline.curate.label import RULE_VERSION as rule_version_code  # type: ignore
    except ImportError:
        rule_version_code = ""
    return {
        "pretty_name": p.pretty_name,
        "repo_id": repo_id or p.repo_id or "ORG/NAME",
        "configs": [{"name": c.name, "description": c.description, "rows": c.rows} for c in configs],
        "missing_configs": missing_configs,
        "label_table": figures.counter_table(split_labels, list(LABELS)),
        "search_share": search_share,
        "sources": sources_table(splits),
        "rule_versions": sorted({r for t in splits.values() for r in t.column("rule_version").to_pylist()} - {None}),
        "rule_version_code": rule_version_code,
        "metrics": metrics,
        "probe": probe,
        "cache": cache_info,
        "hit_rate": rate,
        "hit_rate_source": rate_source,
        "before": before,
        "after": after,
        "plots": plots,
        "exclusions": [{"stage": s, "reason": r, "rows": n} for (s, r), n in sorted(excl_counts.items())],
        "code_revision": figures.git_revision(root),
        "versions": figures.env_summary(),
        "params_yaml": params_yaml(Path(params_file)),
        "limits": figures.known_limits(probe=probe, cache=cache_info, before=before, search_share=search_share),
        "reference": reference_card_summary(metrics),  # agreement with a source's reference label (e.g. FVQA's)
    }


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------
def template_path(template: str, root: Path) -> Path:
    """`template` relative to the project root, else relative to the code's own checkout."""
    path = Path(root) / template
    return path if path.exists() else TEMPLATE_DIR.parent / template


def render_card(context: Mapping[str, Any], data, template: Path = TEMPLATE_DIR / DEFAULT_TEMPLATE,
                root: Path | None = None):
    """A huggingface_hub DatasetCard: `template` rendered with `context` and the metadata `data` (DatasetCardData).
    With `root`, absolute paths of this machine in the text (a model path in the metrics or the evidence, a path
    in the params) are written relative to it or to ~, as in the published tables.
    Raises CardError when the template is missing or does not carry the metadata through."""
    import jinja2
    from huggingface_hub import DatasetCard

    template = Path(template)
    if not template.exists():
        raise CardError(f"card template {template} not found")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["fmt"] = figures.fmt
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * float(v):.1f}%"
    try:
        text = env.get_template(template.name).render(**context, card_data=data.to_yaml(), label_meanings=LABEL_MEANINGS,
                                                      labels=list(LABELS), search_required=list(SEARCH_REQUIRED))
    except jinja2.TemplateError as exc:
        raise CardError(f"card template {template}: {type(exc).__name__}: {exc}") from None
    text = re.sub(r"\n{3,}", "\n\n", text)
    card = DatasetCard(scrub_text(text, root) if root is not None else text)
    if card.data.to_dict() != data.to_dict():
        raise CardError(f"card template {template} must start with the metadata block: ---, {{{{ card_data }}}}, ---")
    return card
