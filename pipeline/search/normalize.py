"""Normalised tool inputs: the part of a cache key that says *what* was searched. Reads/writes nothing."""
from __future__ import annotations

import unicodedata

from pipeline.search.types import sha256_hex


def normalize_query(query: str) -> str:
    """NFKC, case-folded, whitespace collapsed, surrounding quotes dropped: "  Capital of  FRANCE?" -> "capital of france?"."""
    q = unicodedata.normalize("NFKC", query or "").casefold()
    q = " ".join(q.split())
    while len(q) >= 2 and q[0] == q[-1] and q[0] in "\"'`":
        q = q[1:-1].strip()
    return q


def image_phash(image: bytes) -> str:
    """64-bit perceptual hash (imagehash.phash) of the decoded image, as 16 hex digits."""
    import imagehash

    from pipeline.search.embed import decode_rgb

    return str(imagehash.phash(decode_rgb(image)))


def normalize_image(image: bytes) -> str:
    """'phash=<16 hex>;sha256=<64 hex>': perceptual hash for inspection plus the content hash that makes it exact."""
    if not isinstance(image, (bytes, bytearray)) or not image:
        raise ValueError("image search needs the encoded image bytes (PNG/JPEG/...), got " + type(image).__name__)
    return f"phash={image_phash(bytes(image))};sha256={sha256_hex(bytes(image))}"


def describe_image(image: bytes) -> str:
    """Short human description of a query image for `SearchResult.query`."""
    return f"image sha256={sha256_hex(bytes(image))[:16]} ({len(image)} bytes)"
