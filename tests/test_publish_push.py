"""The push path against a small Hub API server on 127.0.0.1 (started here) implementing the endpoints
huggingface_hub 2.x calls for create_repo / create_branch / create_commit: repos/create, validate-yaml, branch,
preupload, the LFS batch + basic PUT upload + verify, and commit. The server records every request.

Checked: the right files go up in one commit (regular files inline, parquet/png through LFS with matching sha256),
the commit sha lands in data/publish/push.json, offline mode and failed validation refuse before any request, and
the token never appears in any file the project wrote nor in the captured output."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from test_publish_world import make_world

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_pushtest_" + hashlib.sha1(b"not-a-real-token").hexdigest()[:20]
LFS_SUFFIXES = (".parquet", ".png")


class FakeHub:
    """Records requests; keeps created repos, branches, LFS objects and commits in memory."""

    def __init__(self):
        self.requests: list[dict] = []
        self.repos: dict[str, dict] = {}
        self.branches: set[tuple[str, str]] = set()
        self.lfs: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.trees: dict[tuple[str, str], dict[str, bytes]] = {}  # (repo, revision) -> files
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, obj=None):
                data = json.dumps(obj if obj is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                self._handle("PUT")

            def do_POST(self):
                self._handle("POST")

            def do_GET(self):
                self._handle("GET")

            def _handle(self, method: str):
                body = self._body()
                with hub.lock:
                    hub.requests.append({"method": method, "path": self.path, "auth": self.headers.get("Authorization"),
                                         "body": body})
                    status, obj = hub.route(method, self.path, body, self.headers)
                    hub.requests[-1]["status"] = status
                self._send(status, obj)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, method: str, path: str, body: bytes, headers) -> tuple[int, dict | list]:
        path = path.split("?")[0]
        authed = headers.get("Authorization") == f"Bearer {TOKEN}"
        if method == "POST" and path == "/api/repos/create":
            if not authed:
                return 401, {"error": "Invalid credentials"}
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo", "url": f"{self.endpoint}/datasets/{repo_id}"}
            self.repos[repo_id] = payload
            self.trees[(repo_id, "main")] = {".gitattributes": b"*.parquet filter=lfs\n"}
            return 200, {"url": f"{self.endpoint}/datasets/{repo_id}", "name": repo_id}
        if method == "GET" and path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry (best effort)
            return 200, {"standardEnvVars": [], "harnesses": {}}
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            return (200, {"errors": [], "warnings": []}) if content.startswith("---\n") else (400, {"errors": [{"message": "no yaml"}]})
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/branch/(.+)", path)
        if method == "POST" and m:
            self.branches.add((m.group(1), m.group(2)))
            self.trees.setdefault((m.group(1), m.group(2)), dict(self.trees.get((m.group(1), "main"), {})))
            return 200, {}
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)/?", path)
        if method == "GET" and m:
            tree = self.trees.get((m.group(1), m.group(2)))
            if tree is None:
                return 404, {"error": "Revision not found"}
            return 200, [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                         for p, b in sorted(tree.items())]
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/preupload/(.+)", path)
        if method == "POST" and m:
            if not authed or m.group(1) not in self.repos:
                return 404, {"error": "Repository not found"}
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                                    "shouldIgnore": False, "oid": None} for f in files]}
        m = re.fullmatch(r"/datasets/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if method == "POST" and m:
            objs = json.loads(body)["objects"]
            return 200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "authenticated": True,
                 "actions": {"upload": {"href": f"{self.endpoint}/lfs-upload/{o['oid']}"},
                             "verify": {"href": f"{self.endpoint}/lfs-verify"}}} for o in objs]}
        m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
        if method == "PUT" and m:
            if hashlib.sha256(body).hexdigest() != m.group(1):
                return 400, {"error": "sha256 mismatch"}
            self.lfs[m.group(1)] = body
            return 200, {}
        if method == "POST" and path == "/lfs-verify":
            oid = json.loads(body)["oid"]
            return (200, {}) if oid in self.lfs else (404, {"error": "object not uploaded"})
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/commit/(.+)", path)
        if method == "POST" and m:
            if not authed:
                return 401, {"error": "Invalid credentials"}
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            files = {}
            for line in lines[1:]:
                v = line["value"]
                if line["key"] == "file":
                    files[v["path"]] = base64.b64decode(v["content"])
                elif line["key"] == "lfsFile":
                    if v["oid"] not in self.lfs:
                        return 400, {"error": f"LFS object of {v['path']} missing"}
                    files[v["path"]] = self.lfs[v["oid"]]
                elif line["key"] == "deletedFile":
                    files[v["path"]] = None
            oid = hashlib.sha1(body).hexdigest()
            tree = self.trees.setdefault((m.group(1), m.group(2)), {})
            for p, b in files.items():
                if b is None:
                    tree.pop(p, None)
                else:
                    tree[p] = b
            self.commits.append({"repo": m.group(1), "revision": m.group(2), "header": lines[0], "files": files, "oid": oid})
            return 200, {"commitUrl": f"{self.endpoint}/datasets/{m.group(1)}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None}
        return 404, {"error": f"unexpected {method} {path}"}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pushworld")
    make_world(root)
    return root


def _cli(root: Path, args: list[str], env_extra: dict, drop: tuple[str, ...] = (), overrides: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("HF_", "HUGGING"))}
    env.update({"HF_HOME": str(root / "hf_home"), "PYTHONPATH": str(REPO_ROOT), "CI": "1", **env_extra})
    for k in drop:
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "stages", "publish", "--params", "params.yaml", "verify_load=false", *overrides, *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=240)


def _written_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_push_uploads_folder_in_one_commit(world, hub):
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN,
           "HF_HUB_DISABLE_XET": "1"}
    proc = _cli(world, ["--repo-id", "my-org/vqa-balanced", "--private", "--revision", "v1", "--push"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # one commit, on the requested branch, holding exactly the folder's files with their bytes
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo"] == "my-org/vqa-balanced" and commit["revision"] == "v1"
    folder = world / "data/publish/dataset"
    local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert set(commit["files"]) == set(local)
    assert all(commit["files"][k] == v for k, v in local.items())
    assert "README.md" in local and any(k.startswith("data/search_cache/") for k in local)
    assert any(k.endswith(".parquet") for k in local)
    assert set(hub.lfs) == {hashlib.sha256(v).hexdigest() for k, v in local.items() if k.endswith(LFS_SUFFIXES)}

    assert hub.repos["my-org/vqa-balanced"] == {"name": "vqa-balanced", "organization": "my-org", "visibility": "private", "type": "dataset"}
    assert ("my-org/vqa-balanced", "v1") in hub.branches
    assert all(r["status"] == 200 for r in hub.requests), [(r["method"], r["path"], r["status"]) for r in hub.requests]
    writes = [r for r in hub.requests if r["method"] == "POST" and r["path"].startswith("/api/")]
    assert {re.sub(r"/(my-org/vqa-balanced)/", "/R/", r["path"]).split("?")[0] for r in writes} == {
        "/api/repos/create", "/api/validate-yaml", "/api/datasets/R/branch/v1", "/api/datasets/R/preupload/v1",
        "/api/datasets/R/commit/v1"}
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in writes)
    assert [r["path"] for r in hub.requests if "/commit/" in r["path"]] == ["/api/datasets/my-org/vqa-balanced/commit/v1"]

    record = json.loads((world / "data/publish/push.json").read_text())
    assert record["commit_sha"] == commit["oid"] and record["revision"] == "v1"
    assert record["repo_id"] == "my-org/vqa-balanced" and len(record["files"]) == len(local)
    assert "my-org/vqa-balanced" in local["README.md"].decode()  # the card's usage snippet names the repo

    # a second push with another shard count: one more commit that also deletes the now stale shards
    assert any(k.startswith("data/default/train-00000-of-00003") for k in local)
    again = _cli(world, ["--repo-id", "my-org/vqa-balanced", "--revision", "v1", "--push"], env, overrides=("shard_rows=100",))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(hub.commits) == 2
    now = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    deleted = sorted(k for k, v in hub.commits[1]["files"].items() if v is None)
    assert deleted == sorted(set(local) - set(now)) and "data/default/train-00000-of-00003.parquet" in deleted
    assert hub.trees[("my-org/vqa-balanced", "v1")] == {".gitattributes": b"*.parquet filter=lfs\n", **now}
    assert json.loads((world / "data/publish/push.json").read_text())["deleted"] == deleted

    # the token is nowhere: not in any file written under the project folder, not in the output
    for p in _written_files(world):
        assert TOKEN.encode() not in p.read_bytes(), p
    for out in (proc, again):
        assert TOKEN not in out.stdout and TOKEN not in out.stderr
    assert all(TOKEN.encode() not in r["body"] for r in hub.requests)


def test_dry_run_and_offline_refusal_send_nothing(world, hub):
    base = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN}
    dry = _cli(world, ["--repo-id", "my-org/x"], {**base, "HF_HUB_OFFLINE": "0"})
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "dry run: would upload" in dry.stdout and "README.md" in dry.stdout
    manifest = json.loads((world / "data/publish/manifest.json").read_text())
    assert f"{len(manifest['files'])} files" in dry.stdout

    # HF_HUB_OFFLINE left unset: the stage runner turns offline mode on, and the push refuses with the way out
    offline = _cli(world, ["--repo-id", "my-org/x", "--push"], base, drop=("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    assert offline.returncode == 2
    assert "HF_HUB_OFFLINE=0" in offline.stderr and "Nothing was uploaded" in offline.stderr
    assert hub.requests == []
    assert TOKEN not in dry.stdout + dry.stderr + offline.stdout + offline.stderr


def test_push_refuses_invalid_folder_or_missing_token(world, hub, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    from pipeline.publish.push import PushRefused, push_folder

    folder = tmp_path / "copy"
    shutil.copytree(world / "data/publish/dataset", folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(PushRefused, match="no Hub token"):
        push_folder(folder, "org/name", endpoint=hub.endpoint)

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("- mit\n", "- not-a-licence\n"))
    with pytest.raises(PushRefused, match="(?s)failed validation.*not-a-licence"):
        push_folder(folder, "org/name", endpoint=hub.endpoint)
    with pytest.raises(PushRefused, match="ORG/NAME"):
        push_folder(folder, "just-a-name", endpoint=hub.endpoint)
    assert hub.requests == []
