"""Checks that a dataset folder is fit to publish: the card, every shard against the card, and a real load.

Reads:  `<folder>/README.md` (parsed by huggingface_hub's DatasetCard; `configs:` and `dataset_info` by `datasets`'
        MetadataConfigs and DatasetInfosDict), the parquet shards (schema, row counts, label ids, ids, clusters);
        `verify_load` loads every config with `datasets.load_dataset` into a throwaway cache.
Writes: nothing (the throwaway cache is removed).

Each check returns a list of problems, [] when fine; each problem names the file/config/split and what is wrong.
The online check of the Hub (its validate-yaml endpoint) runs when huggingface_hub commits the README on push.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import datasets
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.publish.card import HUB_LICENSES, SIZE_CATEGORIES
from pipeline.publish.folder import DEFAULT_CONFIG, quiet_datasets
from pipeline.schema import LABELS

MAX_PROBLEMS = 50


def local_paths() -> list[str]:
    """Absolute paths of this machine that must not appear in a published card."""
    out = {str(Path.cwd().resolve()), str(Path.home())}
    return sorted(p for p in out if len(p) > 1)


def _parse(text: str):
    """(DatasetCard, MetadataConfigs, DatasetInfosDict) of a card's text; raises on a broken header."""
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    card = DatasetCard(text)
    return card, MetadataConfigs.from_dataset_card_data(card.data), DatasetInfosDict.from_dataset_card_data(card.data)


def validate_card(text: str, folder: Path | None = None) -> list[str]:
    """Problems with a card ([] when fine): YAML header parsed by huggingface_hub's DatasetCard, licence ids, task
    categories, `configs` and `dataset_info` parsed by `datasets`, data files present in `folder`, no unrendered
    template text, no local absolute paths."""
    from huggingface_hub import DatasetCard

    if not text.startswith("---\n"):
        return ["README.md: the card must start with a YAML header (---)"]
    try:
        data = DatasetCard(text).data
    except Exception as exc:  # huggingface_hub raises ValueError/yaml errors for a broken header
        return [f"README.md: YAML header does not parse: {exc}"]
    problems = []
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
        card, configs, infos = _parse(text)
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
    if "{{" in card.text or "{%" in card.text:
        problems.append("README.md: unrendered template text in the card body")
    if any(p in text for p in local_paths()):
        problems.append("README.md: contains a local absolute path of this machine; publish relative paths only")
    return problems


class _SplitChecks:
    """Across the shards of the default config: no item twice, no dedup cluster in two splits, label ids in range."""

    def __init__(self):
        self.ids: dict[str, str] = {}
        self.clusters: dict[str, str] = {}

    def check(self, shard: Path, rel: str, split: str) -> list[str]:
        problems = []
        t = pq.read_table(shard, columns=["id", "label", "cluster_id"])
        labels = t.column("label")
        if len(t) and (pc.min(labels).as_py() < 0 or pc.max(labels).as_py() >= len(LABELS)):
            problems.append(f"{rel}: label id outside 0..{len(LABELS) - 1}")
        for item_id, cluster in zip(t.column("id").to_pylist(), t.column("cluster_id").to_pylist()):
            if item_id in self.ids:
                problems.append(f"item {item_id!r} appears twice (splits {self.ids[item_id]!r} and {split!r})")
            self.ids[item_id] = split
            if cluster and self.clusters.setdefault(cluster, split) != split:
                problems.append(f"cluster {cluster!r} straddles splits {self.clusters[cluster]!r} and {split!r}; "
                                "dedup clusters must stay in one split (re-run balance)")
        return problems


def validate_folder(folder: Path) -> list[str]:
    """Problems that make the folder unfit to publish ([] when fine): the card (YAML header, configs, dataset_info)
    and every shard's schema against the card's features; labels in range; splits sharing no id or cluster."""
    folder = Path(folder)
    readme = folder / "README.md"
    if not readme.exists():
        return [f"{readme}: missing; the card is written by the publish stage"]
    text = readme.read_text(encoding="utf-8")
    problems = validate_card(text, folder)
    if problems:
        return problems
    _, configs, infos = _parse(text)
    if DEFAULT_CONFIG not in configs:
        problems.append(f"README.md: no {DEFAULT_CONFIG!r} config")
    default_checks = _SplitChecks()
    for name, cfg in configs.items():
        features = infos[name].features if name in infos else None
        if features is None:
            problems.append(f"README.md: config {name!r} has no dataset_info features")
            continue
        for entry in cfg.get("data_files", []):
            split, pattern = entry["split"], entry["path"]
            rows = 0
            for shard in sorted(folder.glob(pattern)):
                rel = shard.relative_to(folder).as_posix()
                if datasets.Features.from_arrow_schema(pq.read_schema(shard)) != features:
                    problems.append(f"{rel}: features differ from the card's dataset_info of {name!r}")
                    continue
                rows += pq.read_metadata(shard).num_rows
                if name == DEFAULT_CONFIG:
                    problems += default_checks.check(shard, rel, split)
            split_info = infos[name].splits.get(split) if infos[name].splits else None
            if split_info is not None and split_info.num_examples != rows:
                problems.append(f"config {name!r} split {split!r}: card says {split_info.num_examples} rows, shards hold {rows}")
    return problems[:MAX_PROBLEMS]


def verify_load(folder: Path) -> list[str]:
    """Load every config of `folder` with `datasets.load_dataset` (throwaway cache) and compare rows and features
    with the card's dataset_info."""
    import tempfile

    _, _, infos = _parse((Path(folder) / "README.md").read_text(encoding="utf-8"))
    problems = []
    with tempfile.TemporaryDirectory(prefix="publish-verify-") as cache, quiet_datasets():
        for name, info in infos.items():
            try:
                ds = datasets.load_dataset(str(folder), name, cache_dir=cache)
            except Exception as exc:  # any loader failure is a reason not to publish
                problems.append(f"config {name!r}: datasets.load_dataset failed: {type(exc).__name__}: {exc}")
                continue
            for split, split_info in (info.splits or {}).items():
                got = len(ds[split]) if split in ds else None
                if got != split_info.num_examples:
                    problems.append(f"config {name!r} split {split!r}: loaded {got} rows, card says {split_info.num_examples}")
                elif ds[split].features != info.features:
                    problems.append(f"config {name!r} split {split!r}: loaded features differ from the card")
    return problems
