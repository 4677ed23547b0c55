"""Image normalisation: any encoded image in, one canonical RGB encoding out, or a reason-coded error.

`normalize_image(data, opts)` checks the bytes (empty, unidentifiable, absurd size read from the header BEFORE any
pixel is decoded, truncated), applies the EXIF orientation, converts every mode (CMYK, palette, alpha, 16-bit
grey, ...) to RGB (alpha is composited onto white), bounds the pixel count, and re-encodes with fixed settings and
no metadata so that the same input gives the same bytes on every run.

`image_bytes(value)` is the one way to get the encoded bytes of an image in any form the pipeline meets (bytes, a
`datasets` Image dict, a path, a PIL image, the veRL `images` list); it reads a file only when the value is a path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping, NamedTuple

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pipeline.config import param

# Reason codes (also used as quarantine reasons by the gather step).
ZERO_BYTES = "image_zero_bytes"
UNREADABLE = "image_unreadable"
TRUNCATED = "image_truncated"
TOO_LARGE = "image_too_large"
WRONG_TYPE = "image_wrong_type"
REASONS = (ZERO_BYTES, UNREADABLE, TRUNCATED, TOO_LARGE, WRONG_TYPE)


class ImageError(ValueError):
    """An image that cannot be normalised; `reason` is one of REASONS, the message says what to do."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclasses.dataclass
class ImageParams:
    max_pixels: int = param(1024 * 1024, help="images with more pixels are downscaled (aspect kept) to at most this many")
    max_input_pixels: int = param(
        100_000_000, help="images whose header declares more pixels are rejected as image_too_large without decoding"
    )
    max_side: int = param(30_000, help="images with a side longer than this (in the header) are rejected as image_too_large")
    format: Literal["png", "jpeg"] = param(
        "jpeg", help="output encoding: jpeg (fixed settings; ~30x faster and ~5x smaller than png on photos) or png (lossless)"
    )
    jpeg_quality: int = param(90, help="JPEG quality when format=jpeg (fixed, 4:2:0 subsampling, no metadata)")

    def validate(self) -> None:
        if self.max_pixels < 1 or self.max_input_pixels < 1 or self.max_side < 1:
            raise ValueError("max_pixels, max_input_pixels and max_side must be >= 1")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95, got {self.jpeg_quality}")


class NormalizedImage(NamedTuple):
    bytes: bytes
    sha1: str
    width: int
    height: int


def _open_header(data: bytes, opts: ImageParams) -> Image.Image:
    """Open lazily (header only) and enforce the size bounds before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1)):,} px" if found else "a size"
        raise ImageError(
            TOO_LARGE,
            f"header declares {declared}, a decompression bomb (limit {opts.max_input_pixels:,} px); "
            "downscale the file or drop it",
        ) from None
    except UnidentifiedImageError:
        raise ImageError(UNREADABLE, f"not a recognised image format ({len(data)} bytes, starts {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(UNREADABLE, f"cannot read the image header: {exc}") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(UNREADABLE, f"header declares an empty image ({w}x{h})")
    if w * h > opts.max_input_pixels or max(w, h) > opts.max_side:
        raise ImageError(
            TOO_LARGE,
            f"header declares {w}x{h} = {w * h:,} px (limit {opts.max_input_pixels:,} px, side {opts.max_side}); "
            "downscale the file or raise image.max_input_pixels",
        )
    return img


def _decode(img: Image.Image) -> Image.Image:
    """Decode the first frame fully; a short file is `image_truncated`, anything else broken is `image_unreadable`."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a cut-off file must fail, not come back half grey
    try:
        img.seek(0)
        img.load()
    except OSError as exc:
        text = str(exc).lower()
        if "truncated" in text or "broken data stream" in text or "incomplete" in text:
            raise ImageError(TRUNCATED, f"file ends before the image data does ({exc}); re-download it") from None
        raise ImageError(UNREADABLE, f"pixel data cannot be decoded: {exc}") from None
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(UNREADABLE, f"pixel data cannot be decoded: {exc}") from None
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto white, 16/32-bit grey is rescaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(np.rint(scaled).astype("uint8"), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def bound_pixels(img: Image.Image, max_pixels: int) -> Image.Image:
    w, h = img.size
    if w * h <= max_pixels:
        return img
    scale = math.sqrt(max_pixels / (w * h))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def encode(img: Image.Image, fmt: str = "png", jpeg_quality: int = 90) -> bytes:
    """Encode with fixed settings and no metadata (byte-identical for identical pixels)."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=2, optimize=False, progressive=False)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use png or jpeg")
    return buf.getvalue()


def normalize_image(data: bytes, opts: ImageParams | None = None) -> NormalizedImage:
    """Encoded image bytes -> NormalizedImage(bytes, sha1, width, height); raises ImageError with a reason code."""
    opts = opts or ImageParams()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(WRONG_TYPE, f"expected encoded image bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageError(ZERO_BYTES, "the image file is empty (0 bytes); re-export or drop it")
    img = _decode(_open_header(data, opts))
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        pass
    img = bound_pixels(to_rgb(img), opts.max_pixels)
    out = encode(img, opts.format, opts.jpeg_quality)
    return NormalizedImage(out, hashlib.sha1(out).hexdigest(), img.size[0], img.size[1])


def image_bytes(value: Any, base: str | os.PathLike | None = None) -> bytes | None:
    """The encoded bytes of an image, or None when there is none.

    bytes / bytearray / memoryview: as they are. A `datasets` Image dict {"bytes", "path"}: its bytes, else the file
    at its path. A str or Path: that file. Relative paths are read under `base` when given. A PIL image: encoded as
    PNG. A list, tuple or array of images (the veRL `images` column): its first image. None, an empty list and a
    dict with neither bytes nor path give None. A path that cannot be read raises OSError (FileNotFoundError); any
    other kind of value raises TypeError."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        return _read(value["path"], base) if value.get("path") else None
    if isinstance(value, (str, Path)):
        return _read(value, base)
    if hasattr(value, "save") and hasattr(value, "mode"):  # PIL
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    if hasattr(value, "tolist"):  # numpy / pyarrow arrays of images
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return image_bytes(value[0], base) if len(value) else None
    raise TypeError(f"unsupported image value of type {type(value).__name__} (expected bytes, an Image dict "
                    "{bytes, path}, a path or a PIL image)")


def _read(path: str | os.PathLike, base: str | os.PathLike | None) -> bytes:
    p = Path(path)
    if base is not None and not p.is_absolute():
        p = Path(base) / p
    return p.read_bytes()
