"""Publish: build the Hugging Face dataset folder (splits, probe evidence, search cache, exclusions, card) and push it.

Reads:  data/balance/{train,validation,test}.parquet, data/probe/*/evidence.parquet, the search-cache export
        (data/cache/search/export.parquet), every exclusion table, data/label/labels.parquet, the metrics JSONs of
        the earlier stages and their plots, the params file (shown in the card).
Writes: data/publish/dataset/ (README.md card, data/<config>/<split>-0000i-of-0000n.parquet, plots/),
        data/publish/verl/<split>.parquet (MMSearch-R1/veRL training format), data/publish/exclusions.parquet,
        data/publish/manifest.json (files, sizes, sha256), data/publish/metrics.json, and with --push
        data/publish/push.json (repo, revision, commit sha).

Default is a dry run: build, validate and print what would be uploaded. `--push` uploads the folder in one commit;
it needs HF_HUB_OFFLINE=0 in the environment (the stage runner defaults to offline) and a token from HF_TOKEN or
the login cache. The push is refused, with nothing uploaded, when the card or the schema fails validation.
A push replaces the folder's own remote files: the same commit deletes files under data/ and plots/ that the folder
no longer has (e.g. shards of an earlier push with another shard count); other remote files are left alone.
Does not support: pushing from `dvc repro` (the DVC stage only builds), pull requests.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Literal

from pipeline.config import param
from pipeline.publish.verl import VerlParams

DEFAULT_METRICS = {
    "gather": ["data/gather/*/metrics.json"],
    "dedup": ["data/dedup/metrics.json", "data/dedup/report.json"],
    "bootstrap": ["data/bootstrap/metrics.json"],
    "probe": ["data/probe/*/metrics.json"],
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
class Params:
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


def add_arguments(parser) -> None:
    parser.add_argument("--repo-id", default="", help="Hub dataset id ORG/NAME (also used in the card)")
    parser.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    parser.add_argument("--revision", default="main", help="branch to commit to (created when missing)")
    parser.add_argument("--push", action="store_true", help="upload (default: dry run that only builds and lists)")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(params: Params, args) -> int:
    from pipeline.publish.folder import PublishError, PushRefused, manifest, push_folder
    from pipeline.io import write_exclusions, write_json

    root = Path(".")
    out = root / "data" / "publish"
    repo_id = getattr(args, "repo_id", "") or ""
    push = bool(getattr(args, "push", False))
    if push and not repo_id:
        print("error: --push needs --repo-id ORG/NAME", file=sys.stderr)
        return 2
    if push:  # refuse before the build when the push cannot happen anyway
        from pipeline.publish.folder import check_push_ready

        try:
            check_push_ready(repo_id)
        except PushRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        from pipeline.publish.folder import build_dataset

        result = build_dataset(params, root, repo_id=repo_id, params_file=getattr(args, "params", "params.yaml"))
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_exclusions(result.excluded, out / "exclusions.parquet")
    files = manifest(result.folder)
    write_json({"files": files, "bytes": sum(f["size"] for f in files)}, out / "manifest.json")
    write_json(result.metrics(), out / "metrics.json")

    for e in result.excluded:
        print(f"excluded: {e['detail']}", file=sys.stderr)
    total = sum(f["size"] for f in files)
    target = f"datasets/{repo_id or params.repo_id or 'ORG/NAME'}@{getattr(args, 'revision', 'main')}"
    print(f"{'uploading' if push else 'dry run: would upload'} {len(files)} files ({_human(total)}) to {target} in one commit:")
    for f in files:
        print(f"  {f['path']:<60} {_human(f['size']):>10}")
    for config, splits in result.rows.items():
        print(f"  config {config}: " + ", ".join(f"{s}={n}" for s, n in splits.items()))
    if result.problems:
        print("validation failed; this folder must not be published:", file=sys.stderr)
        for p in result.problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    if not push:
        print("dry run: nothing uploaded (add --push --repo-id ORG/NAME to upload)")
        return 0
    try:
        record = push_folder(result.folder, repo_id, revision=args.revision, private=args.private,
                             commit_message=params.commit_message)
    except PushRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json({k: v for k, v in record.items() if k != "manifest"} | {"files": record["manifest"]}, out / "push.json")
    print(f"pushed {record['files']} files to {record['repo_id']}@{record['revision']}: commit {record['commit_sha']}")
    return 0
