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
    configs: list[ConfigData]  # default first
    missing: list[dict]  # configs or splits not published, with the reason (shown in the card)
    prepared: dict[str, inputs.PreparedSplit]
    default_tables: dict[str, pa.Table]  # every split of the default config (scrubbed), empty ones included
    evidence: pa.Table | None
    cache: pa.Table | None
    cache_stats: dict | None
    exclusions: pa.Table


def _read_configs(p, root: Path) -> _Inputs:
    """Every config from the pipeline's outputs (local paths in string columns scrubbed). A split or extra config
    without rows is not published (`datasets` cannot load an empty split) and is named in `missing`; when every
    split is empty there is nothing to publish (PublishError)."""
    from pipeline.io import progress

    prepared = {s: inputs.prepare_split(root / p.balance_dir / f"{s}.parquet", s)
                for s in progress(p.splits, desc="publish: splits", unit="split")}
    if len({str(v.table.schema) for v in prepared.values()}) > 1:
        raise PublishError("the splits have different columns or types; re-run balance so every split has the same schema")
    default_tables = {s: inputs.scrub_local_paths(v.table, root) for s, v in prepared.items()}
    if not any(len(t) for t in default_tables.values()):
        raise PublishError(
            f"nothing to publish: every split in {p.balance_dir} is empty ({sum(v.rows_in for v in prepared.values())} "
            f"rows read, {sum(len(v.excluded) for v in prepared.values())} excluded by publish); "
            "data/label/metrics.json and data/balance/metrics.json say why no item was kept")
    missing = [{"name": f"{DEFAULT_CONFIG}/{s}", "reason": "the split has no rows after balancing"}
               for s, t in default_tables.items() if not len(t)]
    configs = [make_config(DEFAULT_CONFIG, {s: t for s, t in default_tables.items() if len(t)},
                           "the search-balanced VQA items with their labels", next(iter(prepared.values())).features)]

    def extra(name: str, table: pa.Table | None, description: str, absent: str, empty: str) -> None:
        if table is None or not len(table):
            missing.append({"name": name, "reason": absent if table is None else empty})
        else:
            configs.append(make_config(name, {EXTRA_SPLIT: inputs.scrub_local_paths(table, root)}, description))

    evidence_paths = inputs.expand(p.probe_evidence, root)
    evidence = inputs.probe_evidence_table(evidence_paths) if evidence_paths else None
    extra("probe_evidence", evidence, "every probe rollout (messages, tool calls, verdicts)",
          f"no file matched {', '.join(p.probe_evidence)}", "the evidence files hold no rollout")
    cache_file = next((c for c in p.search_cache if (root / c).is_file()), None)
    cache, cache_stats = None, None
    if cache_file is not None:
        referenced = p.cache_entries == "referenced" and evidence is not None
        published_ids = {i for t in default_tables.values() for i in t.column("id").to_pylist()}
        keys = inputs.referenced_cache_keys(evidence, published_ids) if referenced else None
        cache, cache_stats = inputs.search_cache_table(root / cache_file, keys)
    extra("search_cache", cache, "search-tool cache entries for offline replay",
          "no search cache at " + ", ".join(f"`{c}`" for c in p.search_cache),
          f"`{cache_file}` has no entry" + (" referenced by the published items' evidence" if p.cache_entries == "referenced" else ""))
    excl = inputs.exclusions_table(inputs.expand(p.exclusions, root), [e for v in prepared.values() for e in v.excluded])
    extra("exclusions", excl, "every item dropped by any stage, with its reason", "", "no item was excluded by any stage")
    return _Inputs(configs, missing, prepared, default_tables, evidence, cache, cache_stats, excl)


def build_dataset(p, root: Path = Path("."), *, repo_id: str = "", params_file: str | Path = "params.yaml") -> BuildResult:
    """Build the HF dataset folder at `root/p.out_dir` (and the veRL export), deterministically, from scratch.
    `p` is a PublishParams (pipeline/publish/params.py: the `publish:` section of params.yaml)."""
    root = Path(root)
    read = _read_configs(p, root)
    folder = root / p.out_dir
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    configs = read.configs
    files = write_configs(configs, tmp, p.shard_rows)
    plots = copy_plots(p.plots, root, tmp)

    context = cards.card_context(p, root, configs=configs, missing_configs=read.missing, evidence=read.evidence,
                                 cache=read.cache, cache_stats=read.cache_stats, exclusions=read.exclusions,
                                 plots=plots, repo_id=repo_id, params_file=Path(params_file))
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

        for s, table in read.default_tables.items():  # the published (scrubbed) rows; empty splits too
            verl_rows[s] = export_split(table, s, root / p.verl.out_dir / f"{s}.parquet", p.verl)
    return BuildResult(folder, files, {c.name: c.rows for c in configs}, {s: v.rows_in for s, v in read.prepared.items()},
                       [e for v in read.prepared.values() for e in v.excluded], read.cache_stats, problems, verl_rows)
