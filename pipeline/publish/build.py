"""Build the whole publishable output: the Hugging Face dataset folder (configs, card, plots) and the veRL export.

Reads:  what `pipeline.publish.inputs` reads (balanced splits, probe evidence, search cache, exclusion tables), the
        metrics, labels and params files the card shows (`pipeline.publish.card`), plots; all paths from
        PublishParams, relative to the project root.
Writes: `<out_dir>/` (README.md, data/<config>/<split>-*.parquet, plots/), built in `<out_dir>.tmp` and swapped in
        at the end so a killed run leaves the last good folder; `<verl.out_dir>/<split>.parquet` when enabled.

The folder is then checked (`pipeline.publish.validate`: card, shards, and with `verify_load` a real
`datasets.load_dataset` of every config); the problems come back in BuildResult.problems, and a folder with problems
must not be pushed (the push refuses it too). Nothing here touches the network.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
from pathlib import Path

import pyarrow as pa

from pipeline.publish import card as cards
from pipeline.publish import inputs
from pipeline.publish.folder import (DEFAULT_CONFIG, EXTRA_SPLIT, ConfigData, copy_plots, dataset_infos, make_config,
                                     metadata_configs, write_configs)
from pipeline.publish.inputs import PublishError
from pipeline.publish.validate import validate_folder, verify_load


@dataclasses.dataclass
class BuildResult:
    folder: Path
    files: dict[str, dict[str, list[str]]]  # config -> split -> shard paths
    rows: dict[str, dict[str, int]]  # config -> split -> rows
    rows_in: dict[str, int]  # split -> rows read
    excluded: list[dict]  # publish's own exclusions
    cache_stats: dict | None
    problems: list[str]
    verl_rows: dict[str, int]

    def metrics(self) -> dict:
        return {
            "rows": self.rows,
            "rows_in": self.rows_in,
            "excluded": len(self.excluded),
            "excluded_by_reason": dict(sorted(collections.Counter(e["reason"] for e in self.excluded).items())),
            "search_cache": self.cache_stats or {},
            "problems": self.problems,
            "verl_rows": self.verl_rows,
            "files": sum(len(v) for c in self.files.values() for v in c.values()),
        }


@dataclasses.dataclass
class _Inputs:
    configs: list[ConfigData]  # default first, exclusions last
    missing: list[dict]  # extra configs not built, with the reason (shown in the card)
    prepared: dict[str, inputs.PreparedSplit]
    evidence: pa.Table | None
    cache: pa.Table | None
    cache_stats: dict | None


def _read_configs(p, root: Path) -> _Inputs:
    """Every config from the pipeline's outputs (local paths in string columns scrubbed)."""
    from pipeline.io import progress

    prepared = {s: inputs.prepare_split(root / p.balance_dir / f"{s}.parquet", s)
                for s in progress(p.splits, desc="publish: splits", unit="split")}
    if len({str(v.table.schema) for v in prepared.values()}) > 1:
        raise PublishError("the splits have different columns or types; re-run balance so every split has the same schema")
    features = next(iter(prepared.values())).features
    published_ids = {i for v in prepared.values() for i in v.table.column("id").to_pylist()}

    def config(name: str, tables: dict[str, pa.Table], description: str, feats=None) -> ConfigData:
        return make_config(name, {s: inputs.scrub_local_paths(t, root) for s, t in tables.items()}, description, feats)

    configs = [config(DEFAULT_CONFIG, {s: v.table for s, v in prepared.items()},
                      "the search-balanced VQA items with their labels", features)]
    missing: list[dict] = []
    evidence_paths = inputs.expand(p.probe_evidence, root)
    evidence = inputs.probe_evidence_table(evidence_paths) if evidence_paths else None
    if evidence is not None:
        configs.append(config("probe_evidence", {EXTRA_SPLIT: evidence}, "every probe rollout (messages, tool calls, verdicts)"))
    else:
        missing.append({"name": "probe_evidence", "reason": f"no file matched {', '.join(p.probe_evidence)}"})

    cache_path = next((root / c for c in p.search_cache if (root / c).is_file()), None)
    cache, cache_stats = None, None
    if cache_path is not None:
        referenced = p.cache_entries == "referenced" and evidence is not None
        keys = inputs.referenced_cache_keys(evidence, published_ids) if referenced else None
        cache, cache_stats = inputs.search_cache_table(cache_path, keys)
        configs.append(config("search_cache", {EXTRA_SPLIT: cache}, "search-tool cache entries for offline replay"))
    else:
        missing.append({"name": "search_cache", "reason": "no search cache at " + ", ".join(f"`{c}`" for c in p.search_cache)})

    own_excluded = [e for v in prepared.values() for e in v.excluded]
    excl = inputs.exclusions_table(inputs.expand(p.exclusions, root), own_excluded)
    configs.append(config("exclusions", {EXTRA_SPLIT: excl}, "every item dropped by any stage, with its reason"))
    return _Inputs(configs, missing, prepared, evidence, cache, cache_stats)


def build_dataset(p, root: Path = Path("."), *, repo_id: str = "", params_file: str | Path = "params.yaml") -> BuildResult:
    """Build the HF dataset folder at `root/p.out_dir` (and the veRL export), deterministically, from scratch.
    `p` is a PublishParams (pipeline/publish/params.py: the `publish:` section of params.yaml)."""
    root = Path(root)
    folder = root / p.out_dir
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    read = _read_configs(p, root)
    configs = read.configs
    files = write_configs(configs, tmp, p.shard_rows)
    plots = copy_plots(p.plots, root, tmp)

    context = cards.card_context(p, root, configs=configs, missing_configs=read.missing, evidence=read.evidence,
                                 cache=read.cache, cache_stats=read.cache_stats, plots=plots, repo_id=repo_id,
                                 params_file=Path(params_file))
    data = cards.card_data(p, licenses=[i for s in context["sources"] for i in s["hub_ids"]],
                           total_rows=sum(configs[0].rows.values()), configs=metadata_configs(files),
                           infos=dataset_infos(configs, tmp, files))
    cards.render_card(context, data, cards.template_path(p.template, root), root).save(tmp / "README.md")

    problems = validate_folder(tmp)
    if p.verify_load and not problems:
        problems = verify_load(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)

    verl_rows = {}
    if p.verl.enabled:
        from pipeline.publish.verl import export_split

        for s in configs[0].dataset:  # the published (scrubbed) default config
            verl_rows[s] = export_split(configs[0].table(s), s, root / p.verl.out_dir / f"{s}.parquet", p.verl)
    return BuildResult(folder, files, {c.name: c.rows for c in configs}, {s: v.rows_in for s, v in read.prepared.items()},
                       [e for v in read.prepared.values() for e in v.excluded], read.cache_stats, problems, verl_rows)
