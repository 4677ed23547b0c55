"""The `publish:` section of params.yaml (PublishParams), read by stages/publish.py and handed to `build_dataset`.

Reads:  nothing itself (pipeline.config loads and checks the section). Writes: nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from pipeline.config import param
from pipeline.publish.verl import VerlParams

DEFAULT_METRICS = {
    "gather": ["data/gather/*/metrics.json"],
    "dedup": ["data/dedup/metrics.json", "data/dedup/report.json"],
    "bootstrap": ["data/bootstrap/metrics.json"],
    "probe": ["data/probe/metrics.json"],
    "label": ["data/label/metrics.json"],
    "balance": ["data/balance/metrics.json"],
    "search": ["data/search/metrics.json", "data/cache/search/metrics.json", "data/index/metrics.json"],
}
DEFAULT_EXCLUSIONS = [
    "data/gather/*/quarantine.parquet",
    "data/dedup/exclusions.parquet",
    "data/label/exclusions.parquet",
    "data/balance/exclusions.parquet",
]


@dataclasses.dataclass
class PublishParams:
    """The `publish:` section of params.yaml."""

    balance_dir: str = param("data/balance", help="folder of the balanced splits (<split>.parquet)")
    splits: list[str] = param(["train", "validation", "test"], help="splits to publish, in this order")
    out_dir: str = param("data/publish/dataset", help="the HF dataset folder to build (replaced on each run)")
    shard_rows: int = param(2000, help="rows per parquet shard")
    probe_evidence: list[str] = param(["data/probe/*/evidence.parquet"], help="globs of the probe evidence (config probe_evidence)")
    search_cache: list[str] = param(
        ["data/cache/search/export.parquet", "data/cache/search/cache.sqlite"],
        help="where the search cache is read from (config search_cache): the first that exists of a parquet export "
        "or the cache database (exported on the fly); none => no search_cache config and the card says so")
    cache_entries: Literal["referenced", "all"] = param(
        "referenced", help="referenced: only entries the published items' evidence used; all: the whole export")
    exclusions: list[str] = param(DEFAULT_EXCLUSIONS, help="globs of exclusion/quarantine tables (config exclusions)")
    labels_file: str = param("data/label/labels.parquet", help="labels before balancing (counts in the card)")
    metrics: dict[str, list[str]] = param(DEFAULT_METRICS, help="card section -> globs of the metrics JSONs it shows")
    plots: list[str] = param(["data/balance/*.png", "data/balance/plots/*.png", "data/dedup/*.png"],
                             help="globs of plots copied into the folder (plots/) and shown in the card")
    template: str = param("data_cards/dataset_card.md.jinja", help="card template")
    pretty_name: str = param("Search-balanced VQA", help="card title")
    repo_id: str = param("", help="Hub id shown in the card's usage snippet (--repo-id overrides; empty: ORG/NAME)")
    task_categories: list[str] = param(["visual-question-answering", "question-answering"], help="card task_categories")
    language: list[str] = param(["en"], help="card language")
    tags: list[str] = param(["search", "multimodal", "vqa", "rl", "mmsearch-r1"], help="card tags")
    commit_message: str = param("Publish search-balanced VQA dataset", help="commit message of the push")
    verify_load: bool = param(True, help="after building, load every config back with datasets and compare rows and features with the card")
    verl: VerlParams = param(factory=VerlParams, help="export to the MMSearch-R1/veRL training parquet")

    def validate(self) -> None:
        if self.shard_rows < 1:
            raise ValueError("shard_rows must be >= 1")
        if not self.splits:
            raise ValueError("splits must name at least one split")
        for s in self.splits:
            if not s.replace("_", "").isalnum():
                raise ValueError(f"split name {s!r} must be letters, digits or _ (the Hub's rule)")
