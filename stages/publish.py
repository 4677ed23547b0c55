"""Publish: build the Hugging Face dataset folder (splits, probe evidence, search cache, exclusions, card) and push it.

Reads:  data/balance/{train,validation,test}.parquet, data/probe/*/evidence.parquet, the search-cache export
        (data/cache/search/export.parquet), every exclusion table, data/label/labels.parquet, the metrics JSONs of
        the earlier stages and their plots, the params file (shown in the card).
Writes: data/publish/dataset/ (README.md: a huggingface_hub DatasetCard; data/<config>/<split>-0000i-of-0000n.parquet
        written by `datasets`; plots/),
        data/publish/verl/<split>.parquet (MMSearch-R1/veRL training format), data/publish/exclusions.parquet,
        data/publish/manifest.json (files, sizes, sha256), data/publish/metrics.json, and with --push
        data/publish/push.json (repo, revision, commit sha).

The work is pipeline/publish (build.py builds and validates, push.py pushes); this module reads the params,
calls it, writes the outputs and prints what would be or was uploaded. A split without rows is left out of the
folder and named in the card; when every split is empty the stage fails (exit 1) saying so.
Default is a dry run: build, validate and print what would be uploaded. `--push` uploads the folder in one commit;
it needs HF_HUB_OFFLINE=0 in the environment (the stage runner defaults to offline) and a token from HF_TOKEN or
the login cache. The push is refused, with nothing uploaded, when the card or the schema fails validation.
A push replaces the folder's own remote files: the same commit deletes files under data/ and plots/ that the folder
no longer has (e.g. shards of an earlier push with another shard count); other remote files are left alone.
Does not support: pushing from `dvc repro` (the DVC stage only builds), pull requests.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline.publish.params import PublishParams as Params  # the stage runner reads `Params`


def add_arguments(parser) -> None:
    parser.add_argument("--repo-id", default="", help="Hub dataset id ORG/NAME (also used in the card)")
    parser.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    parser.add_argument("--revision", default="main", help="branch to commit to (created when missing)")
    parser.add_argument("--push", action="store_true", help="upload (default: dry run that only builds and lists)")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def run(params: Params, args) -> int:
    from pipeline.io import write_exclusions, write_json
    from pipeline.publish.build import build_dataset
    from pipeline.publish.folder import manifest
    from pipeline.publish.inputs import PublishError
    from pipeline.publish.push import PushRefused, check_push_ready, push_folder

    out = Path("data/publish")
    repo_id, push = getattr(args, "repo_id", "") or "", bool(getattr(args, "push", False))
    try:
        if push and not repo_id:
            raise PushRefused("--push needs --repo-id ORG/NAME")
        if push:  # refuse before the build when the push cannot happen anyway
            check_push_ready(repo_id)
    except PushRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = build_dataset(params, Path("."), repo_id=repo_id, params_file=getattr(args, "params", "params.yaml"))
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_exclusions(result.excluded, out / "exclusions.parquet")
    files = manifest(result.folder)
    write_json({"files": files, "bytes": sum(f["size"] for f in files)}, out / "manifest.json")
    write_json(result.metrics(), out / "metrics.json")

    for e in result.excluded:
        print(f"excluded: {e['detail']}", file=sys.stderr)
    target = f"datasets/{repo_id or params.repo_id or 'ORG/NAME'}@{getattr(args, 'revision', 'main')}"
    total = _human(sum(f["size"] for f in files))
    print(f"{'uploading' if push else 'dry run: would upload'} {len(files)} files ({total}) to {target} in one commit:")
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
