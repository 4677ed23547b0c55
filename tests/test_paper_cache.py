"""The paper's released image-search cache: a pickle built here the way the release was (a dict keyed by data_id,
real PIL JpegImageFile / PngImageFile objects and URL strings inside) loads through the restricted unpickler, its
images become thumbnails in the cache's blob table, and `paper_replay` replays an entry by data_id; pickles naming
any other class are refused with the class named and nothing run."""
from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import build
from pipeline.search import ReplayMiss, SearchParams, SearchTools
from pipeline.search.cache import SearchCache
from pipeline.search.paper_cache import PaperCacheRefused, read_paper_cache

REPO = Path(__file__).resolve().parents[1]
TITLES, IMAGES = "tool_returned_web_title_list", "tool_returned_images_urls"


def pil(fmt: str, seed: int, mode: str = "RGB", size=(40, 30)) -> Image.Image:
    """A real PIL image as the release holds it: opened from encoded bytes (so of class JpegImageFile/PngImageFile)."""
    arr = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")
    img = Image.fromarray(arr)
    if mode == "P":
        img = img.quantize(colors=16)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def globals_in(data: bytes) -> set[str]:
    """Every module.name a pickle imports (what the Hub's pickle scan lists)."""
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif op.name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
    return found


@pytest.fixture
def release(tmp_path):
    images = {"jpeg": pil("JPEG", 1), "png": pil("PNG", 2), "palette": pil("PNG", 3, mode="P"), "grey": pil("JPEG", 4, mode="L")}
    cache = {
        "fvqa_train_0": {TITLES: ["Namus system - Wikipedia", "NamUs | Flickr", "third"],
                         IMAGES: [images["jpeg"], images["png"], images["palette"]]},
        "fvqa_train_1": {TITLES: ["Rubjerg Knude Fyr", "Lighthouse"], IMAGES: ["URL/thumb/ok.png", images["grey"]]},
        "fvqa_train_2": {TITLES: ["dead link"], IMAGES: ["URL/thumb/dead.jpg"]},
        "fvqa_train_3": ["not", "a", "dict"],
    }
    return cache, images


def dump(cache: dict, base: str, path: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    def fix(v):
        return v.replace("URL", base) if isinstance(v, str) else v

    data = {k: ({kk: [fix(x) for x in vv] for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in cache.items()}
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_release_style_pickle_imports_and_replays_with_thumbnails(tmp_path, release, loopback_server):
    cache, images = release
    url = loopback_server(lambda req: (200, pixels_png(), {"Content-Type": "image/png"}) if req.path == "/thumb/ok.png"
                          else (404, "gone"))
    pkl = dump(cache, url, tmp_path / "fvqa_train_image_search_results_cache.pkl")
    assert globals_in(pkl.read_bytes()) == {"PIL.JpegImagePlugin.JpegImageFile", "PIL.PngImagePlugin.PngImageFile"}
    from pipeline.search.web import thumbnail_fetcher
    from pipeline.search.config import WebParams

    params = build(SearchParams, {"image_backend": "paper_replay", "cache": {"mode": "replay_only", "path": "c.sqlite"}})
    tools = SearchTools(params, tmp_path)
    fetch = thumbnail_fetcher(WebParams(timeout_s=2.0, retries=0))
    report = tools.cache.import_paper_cache(pkl, fetch)
    assert {k: v for k, v in report.items() if k != "problems"} == {
        "imported": 3, "rejected": 1, "results": 6, "thumbnails_from_images": 4, "thumbnails_from_urls": 1,
        "urls_without_image": 1}
    assert report["problems"] == ["data_id fvqa_train_3: rejected: entry is a list, not a dict"]
    assert tools.cache.stats()["thumbnails"] == 5  # every image stored once in the blob table

    r = tools.image_search(b"", context={"data_id": "fvqa_train_0"})
    assert r.error == "" and r.from_cache and r.backend == "paper_replay"
    assert [h.title for h in r.hits] == ["Namus system - Wikipedia", "NamUs | Flickr", "third"] and r.n_images == 3
    png = Image.open(io.BytesIO(r.hits[1].thumbnail))
    assert png.format == "PNG" and np.array_equal(pixels(r.hits[1].thumbnail), pixels_of(images["png"]))
    jpg = Image.open(io.BytesIO(r.hits[0].thumbnail))
    assert jpg.format == "JPEG" and jpg.size == (40, 30)
    assert np.abs(pixels(r.hits[0].thumbnail) - pixels_of(images["jpeg"])).mean() < 4  # re-encoded at quality 95
    assert np.array_equal(pixels(r.hits[2].thumbnail), pixels_of(images["palette"]))  # palette kept
    r1 = tools.image_search(b"", context={"data_id": "fvqa_train_1"})
    assert r1.hits[0].url == f"{url}/thumb/ok.png" and r1.hits[0].thumbnail == pixels_png()
    assert Image.open(io.BytesIO(r1.hits[1].thumbnail)).mode == "L"
    dead = tools.image_search(b"", context={"data_id": "fvqa_train_2"})
    assert dead.hits[0].title == "dead link" and dead.hits[0].thumbnail is None and dead.hits[0].url.endswith("dead.jpg")
    with pytest.raises(ReplayMiss, match="data_id=fvqa_train_9"):
        tools.image_search(b"", context={"data_id": "fvqa_train_9"})


def pixels_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def pixels_of(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def fake_state(state: list) -> Image.Image:
    """A real PngImageFile whose pickle carries `state` (NEWOBJ of the allowed class, then BUILD with it)."""
    img = pil("PNG", 9, size=(2, 2))
    img.__getstate__ = lambda: state  # pickle asks the instance for its state
    return img


def test_other_classes_are_refused_by_name_and_never_run(tmp_path, release):
    marker = tmp_path / "ran"
    cases = {
        "evil": ({"fvqa_train_0": {TITLES: ["x"], IMAGES: [Evil(marker)]}}, pickle.DEFAULT_PROTOCOL, f"{os.system.__module__}.system"),
        "path": ({"x": {TITLES: ["x"], IMAGES: [Path("/")]}}, pickle.DEFAULT_PROTOCOL, "pathlib"),
        # older protocols pickle the same images through helpers that are not allowed either
        "proto2": ({"x": {TITLES: ["x"], IMAGES: [release[1]["png"]]}}, 2, "_codecs.encode"),
        "proto0": ({"x": {TITLES: ["x"], IMAGES: [release[1]["png"]]}}, 0, "copy_?reg._reconstructor"),  # protocol 0 writes the Python 2 module name
    }
    cache = SearchCache(tmp_path / "c.sqlite")
    for name, (data, protocol, named) in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        with pytest.raises(PaperCacheRefused, match=f"refusing to load {named}") as exc:
            cache.import_paper_cache(path)
        assert "PIL.JpegImagePlugin.JpegImageFile" in str(exc.value) and str(path) in str(exc.value)
        assert isinstance(exc.value, pickle.UnpicklingError)
    assert not marker.exists() and cache.stats()["entries"] == 0
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps({"a": {TITLES: ["x"], IMAGES: ["u"]}})[:-5])
    with pytest.raises(ValueError, match="cut.pkl: not a readable pickle"):
        cache.import_paper_cache(tmp_path / "cut.pkl")


def test_allowed_class_with_a_bad_state_keeps_the_title_and_says_why(tmp_path):
    data = {"a": {TITLES: ["huge", "short", "ok"], IMAGES: [
        fake_state([{}, "RGB", (100000, 100000), None, b""]),
        fake_state([{}, "RGB", (10, 10), None, b"\x00" * 7]),
        fake_state([{}, "RGB", (2, 1), None, b"\x00\x01\x02\x03\x04\x05"])]}}
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps(data))
    loaded = read_paper_cache(path)
    assert repr(loaded["a"][IMAGES][0]) == "PickledImage(PNG)"
    cache = SearchCache(tmp_path / "c.sqlite")
    report = cache.import_paper_cache(path)
    assert report["imported"] == 1 and report["thumbnails_from_images"] == 1
    assert any("result 1: pickled image of 100000x100000 pixels is larger" in p for p in report["problems"])
    assert any("result 2: pickled image does not decode" in p for p in report["problems"])


def test_search_stage_imports_and_replays_one_data_id(tmp_path, release):
    cache, _ = release
    pkl = dump({k: v for k, v in cache.items() if k in ("fvqa_train_0", "fvqa_train_3")}, "", tmp_path / "paper.pkl")
    (tmp_path / "params.yaml").write_text("search:\n  cache:\n    path: c.sqlite\n")
    env = {"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stages", "search", "--params", "params.yaml", *args],
                              cwd=tmp_path, capture_output=True, text=True, env=env, timeout=180)

    out = cli("--import-paper-cache", str(pkl))
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)
    assert counts["imported"] == 1 and counts["rejected"] == 1 and counts["thumbnails_from_images"] == 3
    assert "fvqa_train_3: rejected" in out.stderr
    replay = cli("--data-id", "fvqa_train_0", "--protocol", "tool_calls", "cache.mode=replay_only")
    assert replay.returncode == 0, replay.stderr
    message = json.loads(replay.stdout)
    texts = " ".join(b["text"] for b in message["content"] if b["type"] == "text")
    assert "Namus system - Wikipedia" in texts and "NamUs | Flickr" in texts
    assert sum(b["type"] == "image" for b in message["content"]) == 3
    assert "backend=paper_replay" in replay.stderr and "from_cache=True" in replay.stderr
    tags = cli("--data-id", "fvqa_train_0", "cache.mode=replay_only")
    assert tags.returncode == 0 and tags.stdout.startswith("<information>") and "title: NamUs | Flickr" in tags.stdout
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"x": Evil(tmp_path / "ran")}))
    refused = cli("--import-paper-cache", "evil.pkl")
    assert refused.returncode == 2 and "refusing to load" in refused.stderr and "nothing was imported" in refused.stderr
    assert not (tmp_path / "ran").exists()
