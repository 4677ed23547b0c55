"""The image-search cache the paper released (lmms-lab/FVQA `fvqa_{train,test}_image_search_results_cache.pkl`).

The file is a pickled dict {data_id: {"tool_returned_web_title_list": [str, ...], "tool_returned_images_urls":
[...]}} where an element of the second list is a thumbnail URL or a PIL image. Pickle can run code, so the file is
read by a restricted unpickler: besides plain data (dict, list, tuple, str, bytes, int, float, bool, None, which
need no import), it resolves exactly two names, `PIL.JpegImagePlugin.JpegImageFile` and
`PIL.PngImagePlugin.PngImageFile` (what pickle protocol >= 3 emits for those images: the class, then NEWOBJ and
BUILD with the state [info, mode, size, palette, pixel bytes]; the Hub's pickle scan of both released files lists
these two and nothing else). Even those are not instantiated: a stand-in keeps the pickled state, which is checked
(mode, size, pixel count, data length) and encoded to JPEG/PNG bytes with PIL's `frombytes`. Any other name
(`os.system`, `copyreg._reconstructor` of protocol 0/1, `_codecs.encode` of protocol 2, ...) stops the load with a
`PaperCacheRefused` naming it.

`read_paper_cache(path)` returns the dict with images as `PickledImage`; `paper_hits(...)` turns one entry into
SearchHits (thumbnail bytes for images; for URLs, bytes from `fetch` when given). Reads the file; writes nothing.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from itertools import zip_longest
from pathlib import Path
from typing import Any, Callable

from pipeline.search.types import SearchHit

TITLES = "tool_returned_web_title_list"
IMAGES = "tool_returned_images_urls"
ALLOWED = {("PIL.JpegImagePlugin", "JpegImageFile"): "JPEG", ("PIL.PngImagePlugin", "PngImageFile"): "PNG"}
MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "I;16", "F"}
MAX_PIXELS = 4096 * 4096  # a search thumbnail is far smaller; a bigger state is refused, not decoded


class PaperCacheRefused(pickle.UnpicklingError):
    """The file asks for a name the restricted unpickler does not allow; nothing from it was imported."""


class PickledImage:
    """What a pickled JpegImageFile / PngImageFile becomes: its pickled state, no PIL object, no PIL code run."""

    fmt = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"PickledImage({self.fmt})"

    def to_bytes(self, max_pixels: int = MAX_PIXELS) -> bytes:
        """Encoded image (JPEG, quality 95, 4:4:4, for a pickled JpegImageFile, PNG for a PngImageFile); ValueError says what is wrong."""
        from PIL import Image

        state = getattr(self, "state", None)
        if not isinstance(state, (list, tuple)) or len(state) < 5:
            raise ValueError("pickled image state is not [info, mode, size, palette, data]")
        _, mode, size, palette, data = state[:5]
        if mode not in MODES:
            raise ValueError(f"pickled image mode {mode!r} is not one of {', '.join(sorted(MODES))}")
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ValueError(f"pickled image size {size!r} is not two positive integers")
        if size[0] * size[1] > max_pixels:
            raise ValueError(f"pickled image of {size[0]}x{size[1]} pixels is larger than {max_pixels} pixels")
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"pickled image data is {type(data).__name__}, not bytes")
        try:
            img = Image.frombytes(mode, tuple(size), bytes(data))
            if mode in ("P", "PA") and palette:
                img.putpalette(palette)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"pickled image does not decode: {exc}") from None
        return encode(img, self.fmt)


def encode(img, fmt: str) -> bytes:
    """PIL image -> JPEG (quality 95; converted to RGB when JPEG cannot hold the mode) or PNG bytes."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        if img.mode not in ("L", "RGB", "CMYK"):
            img = img.convert("RGB")
        img.save(buf, format="JPEG", quality=95, subsampling=0)  # 4:4:4: thumbnails are small
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


_STAND_INS = {key: type(key[1], (PickledImage,), {"fmt": fmt, "__module__": __name__}) for key, fmt in ALLOWED.items()}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        stand_in = _STAND_INS.get((module, name))
        if stand_in is None:
            raise PaperCacheRefused(
                f"refusing to load {module}.{name}: the paper cache may contain only plain data and the classes "
                + ", ".join(f"{m}.{n}" for m, n in ALLOWED) + " (a pickle that names anything else could run code)")
        return stand_in


def read_paper_cache(path: str | os.PathLike) -> dict:
    """The cache file as a dict keyed by data_id (.json, or a pickle read by the restricted unpickler)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"paper cache {str(path)!r} not found")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
    else:
        with open(path, "rb") as f:
            try:
                data = _Unpickler(f).load()
            except PaperCacheRefused as exc:
                raise PaperCacheRefused(f"{path}: {exc}") from None
            except (pickle.UnpicklingError, EOFError, IndexError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); download it again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict keyed by data_id, got {type(data).__name__}")
    return data


def entry_lists(entry: Any) -> tuple[list, list] | str:
    """(titles, images) of a well-formed entry, else the reason it is rejected."""
    if not isinstance(entry, dict):
        return f"entry is a {type(entry).__name__}, not a dict"
    titles, images = entry.get(TITLES), entry.get(IMAGES)
    if not isinstance(titles, (list, tuple)) or not isinstance(images, (list, tuple)):
        return f"entry lacks the lists {TITLES!r} and {IMAGES!r}"
    return list(titles), list(images)


def image_bytes(value: Any) -> bytes:
    """Thumbnail bytes of an image element (a PickledImage, or a PIL image when the dict was built in Python)."""
    if isinstance(value, PickledImage):
        return value.to_bytes()
    from PIL import Image

    if isinstance(value, Image.Image):
        return encode(value, "JPEG" if (value.format or "").upper() == "JPEG" else "PNG")
    raise ValueError(f"a {type(value).__name__} is neither a thumbnail URL nor an image")


def paper_hits(titles: list, images: list, fetched: dict[str, bytes | None]) -> tuple[list[SearchHit], list[str]]:
    """SearchHits of one entry (in order) and its problems (one line each; the hit is kept without a thumbnail)."""
    hits, problems = [], []
    if len(titles) != len(images):
        problems.append(f"{len(titles)} titles but {len(images)} images; the shorter list is padded")
    for n, (title, image) in enumerate(zip_longest(titles, images), start=1):
        url, thumb = "", None
        if isinstance(image, str):
            url, thumb = image, fetched.get(image)
        elif image is not None:
            try:
                thumb = image_bytes(image)
            except ValueError as exc:
                problems.append(f"result {n}: {exc}")
        hits.append(SearchHit(title="" if title is None else str(title), url=url, snippet="", thumbnail=thumb))
    return hits, problems


def fetch_all(urls: list[str], fetch: Callable[[str], bytes | None], threads: int = 8) -> dict[str, bytes | None]:
    """url -> downloaded bytes (None when the download failed), `threads` downloads at a time."""
    unique = sorted(set(urls))
    if not unique:
        return {}

    def one(url: str) -> bytes | None:
        try:
            return fetch(url)
        except Exception:  # a dead thumbnail URL leaves that hit without its image; the import goes on
            return None

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="thumb") as pool:
        return dict(zip(unique, pool.map(one, unique)))
