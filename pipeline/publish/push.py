"""The push of a built dataset folder to the Hugging Face Hub, in one commit, and the checks that come before it.

Reads:  the dataset folder (every file; validated with `pipeline.publish.validate` first), the Hub token as
        huggingface_hub resolves it (HF_TOKEN, else the login cache), HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE,
        HF_ENDPOINT; the remote file list of the target revision (to delete stale shards).
Writes: one commit to the dataset repo (created if missing; the branch created when it is not main); nothing local.
        The token is never passed around, printed or stored here.

Why one folder commit and not `Dataset.push_to_hub` per config: push_to_hub makes one commit per config and split
and rewrites the README's metadata from what the remote had, so a push of four configs would be several commits,
each leaving the repo in a mixed state, and the card would not be the validated one. The folder is written in the
same layout and with the same writer push_to_hub uses (see `pipeline.publish.folder`), then `HfApi.create_commit`
uploads it whole: shards through LFS/Xet as the Hub says, README.md validated by the Hub, stale shards deleted.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.publish.folder import manifest
from pipeline.publish.validate import validate_folder

MANAGED_PREFIXES = ("data/", "plots/")  # remote paths a push owns (stale ones are deleted)


class PushRefused(RuntimeError):
    """The push was not attempted; the message says why and what to do. Nothing was uploaded."""


def _truthy(v: str | None) -> bool:
    return (v or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """True when Hub access is switched off (HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE when HF_HUB_OFFLINE is unset)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE")
    if env is None:
        env = os.environ.get("TRANSFORMERS_OFFLINE")
    return _truthy(env) or constants.HF_HUB_OFFLINE


def check_push_ready(repo_id: str) -> None:
    """Raise PushRefused (nothing sent) when offline mode is on, `repo_id` is malformed or no token is available."""
    from huggingface_hub import get_token

    if hub_offline():
        raise PushRefused(
            "pushing needs the Hub, but offline mode is on (HF_HUB_OFFLINE=1; `python -m stages` sets it unless you set "
            "it yourself). Nothing was uploaded. To push, run the command again with HF_HUB_OFFLINE=0 in its "
            "environment, e.g. `HF_HUB_OFFLINE=0 python -m stages publish --repo-id ORG/NAME --push`."
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushRefused(f"--repo-id {repo_id!r} must look like ORG/NAME (your user or organisation, then the dataset name)")
    if not get_token():
        raise PushRefused("no Hub token: set the HF_TOKEN environment variable or run `hf auth login` "
                          "(the token is read from there only and never written by this project)")


def push_folder(folder: Path, repo_id: str, *, revision: str = "main", private: bool = False,
                commit_message: str = "Upload dataset", endpoint: str | None = None) -> dict:
    """Upload every file of `folder` to the dataset repo `repo_id` in ONE commit; returns the commit record.

    The same commit deletes remote files under data/ and plots/ that the folder no longer has (stale shards, which
    the configs' globs would otherwise pick up). Creates the repo (exist_ok) and the branch `revision` when it is not
    main. Raises PushRefused before any request when offline, without a token, or when the folder fails validation."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    folder = Path(folder)
    check_push_ready(repo_id)
    problems = validate_folder(folder)
    if problems:
        raise PushRefused("the dataset folder failed validation, nothing was uploaded:\n  - " + "\n  - ".join(problems))
    revision = revision or "main"
    files = manifest(folder)
    api = HfApi(endpoint=endpoint)
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    local = {f["path"] for f in files}
    remote = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    stale = sorted(r for r in remote if r.startswith(MANAGED_PREFIXES) and r not in local)
    ops = [CommitOperationAdd(path_in_repo=f["path"], path_or_fileobj=str(folder / f["path"])) for f in files]
    ops += [CommitOperationDelete(path_in_repo=r) for r in stale]
    info = api.create_commit(repo_id, operations=ops, commit_message=commit_message, repo_type="dataset",
                             revision=revision)
    return {
        "repo_id": repo_id,
        "repo_url": str(repo_url),
        "revision": revision,
        "commit_sha": info.oid,
        "commit_url": info.commit_url,
        "private": private,
        "files": len(files),
        "bytes": sum(f["size"] for f in files),
        "deleted": stale,
        "manifest": files,
    }
