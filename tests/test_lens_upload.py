"""Google Lens on local images: an image without a public URL is uploaded once (to the dataset's Hub repo, an fsspec
location or an upload endpoint), its URL is remembered by the image's hash, and the loopback Lens fetches exactly
those bytes from it. Images that already have a URL are searched with it as it is."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from pipeline.config import build
from pipeline.search import SearchParams, SearchTools

REPO = Path(__file__).resolve().parents[1]
KEY = "serp-test-key-42"


def encoded(seed: int, fmt: str) -> bytes:
    arr = (np.random.default_rng(seed).random((20, 30, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


PNG, JPG = encoded(1, "PNG"), encoded(2, "JPEG")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def lens(loopback_server):
    """A loopback SerpAPI google_lens that fetches the image URL it is given (`resolve(url)` may answer for URLs of
    the fake Hub) and names the sha256 of what it fetched in its first result's title."""
    state = {"urls": [], "resolve": None}

    def handler(req):
        q = {k: v[0] for k, v in parse_qs(urlsplit(req.path).query).items()}
        if q.get("api_key") != KEY or q.get("engine") != "google_lens":
            return 401, {"error": "Invalid API key"}
        state["urls"].append(q["url"])
        data = state["resolve"](q["url"]) if state["resolve"] else None
        if data is None:
            try:
                data = urllib.request.urlopen(q["url"], timeout=5).read()
            except OSError as exc:
                return 200, {"error": f"Couldn't fetch the image ({exc})"}
        return 200, {"visual_matches": [{"position": 1, "title": f"fetched {sha(data)}", "link": "https://pages.example/1",
                                         "source": "example"}]}

    url = loopback_server(handler)
    return url, state


@pytest.fixture
def public(loopback_server, tmp_path):
    """A folder served read-only on 127.0.0.1 (the 'public bucket'), and an upload endpoint that writes into it."""
    folder = tmp_path / "public"
    folder.mkdir()
    posts = []

    def handler(req):
        path = urlsplit(req.path).path
        if req.method == "POST" and path == "/upload":
            posts.append(req.body)
            name = f"posted-{len(posts)}.bin"
            (folder / name).write_bytes(req.body)
            return 200, {"url": f"{base}/files/{name}"}
        f = folder / path.removeprefix("/files/")
        return (200, f.read_bytes()) if path.startswith("/files/") and f.is_file() else (404, "no such file")

    base = loopback_server(handler)
    return base, folder, posts


def tools_for(tmp_path, lens_url, upload: dict, mode="cache_first") -> SearchTools:
    params = build(SearchParams, {"image_backend": "serpapi", "cache": {"mode": mode, "path": "c.sqlite"},
                                  "web": {"serpapi_base_url": f"{lens_url}/search.json", "timeout_s": 5.0, "retries": 0,
                                          "fetch_thumbnails": False, "upload": upload}})
    return SearchTools(params, tmp_path)


@pytest.mark.parametrize("to", ["fsspec", "post"])
def test_local_image_is_uploaded_once_and_lens_fetches_it(tmp_path, lens, public, monkeypatch, to):
    monkeypatch.setenv("SERPAPI_API_KEY", KEY)
    lens_url, state = lens
    base, folder, posts = public
    upload = ({"to": "fsspec", "fsspec_url": f"file://{folder}", "public_url_template": f"{base}/files/{{name}}"}
              if to == "fsspec" else {"to": "post", "post_url": f"{base}/upload"})
    t = tools_for(tmp_path, lens_url, upload)
    r = t.image_search(PNG)
    assert r.error == "" and r.hits[0].title == f"fetched {sha(PNG)}"  # Lens read exactly our bytes from the URL
    files = sorted(p.name for p in folder.iterdir())
    assert files == ([f"{sha(PNG)}.png"] if to == "fsspec" else ["posted-1.bin"])
    assert t.cache.image_url(sha(PNG), t.backend("image_search").host.destination) == state["urls"][0]

    # another process, live mode (the backend is called again): the remembered URL, no second upload
    stamp = [(p.name, p.stat().st_mtime_ns) for p in folder.iterdir()]
    again = tools_for(tmp_path, lens_url, upload, mode="live").image_search(PNG)
    assert again.error == "" and not again.from_cache and state["urls"][1] == state["urls"][0]
    assert [(p.name, p.stat().st_mtime_ns) for p in folder.iterdir()] == stamp and len(posts) == (to == "post")

    # an image with a public URL of its own is searched with it, nothing is uploaded
    (folder / "given.jpg").write_bytes(JPG)
    own = t.image_search(JPG, context={"image_url": f"{base}/files/given.jpg"})
    assert own.hits[0].title == f"fetched {sha(JPG)}" and state["urls"][-1] == f"{base}/files/given.jpg"
    assert len(list(folder.iterdir())) == 2
    if to == "fsspec":  # a JPEG keeps its extension (JPG's result is cached already: another JPEG)
        other = encoded(5, "JPEG")
        assert t.image_search(other).hits[0].title == f"fetched {sha(other)}"
        assert (folder / f"{sha(other)}.jpg").read_bytes() == other


def test_without_upload_the_error_says_what_to_set(tmp_path, lens, monkeypatch):
    monkeypatch.setenv("SERPAPI_API_KEY", KEY)
    r = tools_for(tmp_path, lens[0], {}).image_search(PNG)
    assert "no meta.image_url" in r.error and "search.web.upload.to is none" in r.error and lens[1]["urls"] == []
    with pytest.raises(Exception, match="upload.to=fsspec needs upload.fsspec_url"):
        tools_for(tmp_path, lens[0], {"to": "fsspec"})


def test_items_upload_to_the_hub_in_one_commit_then_lens_uses_the_urls(tmp_path, lens, monkeypatch):
    from huggingface_hub import constants

    from pipeline.schema import make_item_id, write_items
    from test_publish_push import TOKEN, FakeHub

    def item(n, image, meta):
        return {"id": make_item_id("fvqa", f"q{n}", "a", sha(image)), "image": {"bytes": image, "path": None},
                "image_sha1": hashlib.sha1(image).hexdigest(), "question": f"q{n}", "answer": "a", "aliases": [],
                "source": "fvqa", "category": "fvqa", "license": "x", "entity": "", "meta": json.dumps(meta)}

    items = tmp_path / "items.parquet"
    write_items([item(0, PNG, {"data_id": "fvqa_train_0"}), item(1, JPG, {}), item(2, PNG, {"data_id": "copy"}),
                 item(3, encoded(3, "PNG"), {"image_url": "https://images.example/3.png"})], items)
    (tmp_path / "params.yaml").write_text(
        "search:\n  cache:\n    path: c.sqlite\n  web:\n    upload:\n      to: hub\n      repo_id: my-org/fvqa-lens\n")
    with FakeHub() as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update({"PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf_home"), "HF_ENDPOINT": hub.endpoint,
                    "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"})

        def cli(offline: str):
            return subprocess.run([sys.executable, "-m", "stages", "search", "--upload-images", str(items)],
                                  cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": offline}, capture_output=True,
                                  text=True, timeout=240)

        refused = cli("1")
        assert refused.returncode == 1 and "HF_HUB_OFFLINE=0" in refused.stderr and hub.requests == []
        first = cli("0")
        assert first.returncode == 0, first.stderr[-3000:]
        counts = json.loads(first.stdout)
        assert {k: counts[k] for k in ("items", "with_url", "images", "uploaded", "already_uploaded")} == {
            "items": 4, "with_url": 1, "images": 2, "uploaded": 2, "already_uploaded": 0}
        assert len(hub.commits) == 1 and hub.commits[0]["repo"] == "my-org/fvqa-lens"
        assert hub.commits[0]["files"] == {f"lens_images/{sha(PNG)}.png": PNG, f"lens_images/{sha(JPG)}.jpg": JPG}
        second = cli("0")
        assert json.loads(second.stdout)["already_uploaded"] == 2 and len(hub.commits) == 1
        for out in (first, second):
            assert TOKEN not in out.stdout + out.stderr
        assert TOKEN.encode() not in (tmp_path / "c.sqlite").read_bytes()

        # in this process: Lens gets the commit-pinned Hub URL from the cache, and the file there is our image
        def resolve(url: str):
            m = re.fullmatch(re.escape(hub.endpoint) + r"/datasets/([^/]+/[^/]+)/resolve/([0-9a-f]+)/(.+)", url)
            commit = next((c for c in hub.commits if m and c["oid"] == m.group(2) and c["repo"] == m.group(1)), None)
            return commit["files"].get(m.group(3)) if commit else None

        lens_url, state = lens
        state["resolve"] = resolve
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setenv("SERPAPI_API_KEY", KEY)
        before = len(hub.requests)
        t = tools_for(tmp_path, lens_url, {"to": "hub", "repo_id": "my-org/fvqa-lens"})
        for image in (PNG, JPG):
            r = t.image_search(image, context={"data_id": "fvqa_train_0"})
            assert r.error == "" and r.hits[0].title == f"fetched {sha(image)}"
        assert state["urls"][0] == f"{hub.endpoint}/datasets/my-org/fvqa-lens/resolve/{hub.commits[0]['oid']}/lens_images/{sha(PNG)}.png"
        assert len(hub.requests) == before  # nothing uploaded again
