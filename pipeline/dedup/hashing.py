"""Perceptual image hashes as 64-bit integers, computed in parallel with dask and cached per chunk.

Each image gets one "full" hash (of the whole picture) followed by hashes of crop windows (centred and off-centre
crops at a few scales). Matching the full hash of one image against every window hash of another catches copies
that were cropped, besides re-encoded and resized ones: a crop of an image looks like one of its windows.

Reads items parquet files (columns `image`, `image_sha1` only, a chunk of row groups per task); writes one small
parquet per finished chunk under the cache folder (a `pipeline.runs.Run`: chunks are its units), so a killed run
resumes where it stopped and a re-run with the same inputs and settings hashes nothing. Does not support hashes other than 64 bits (hash_size 8).
"""
from __future__ import annotations

import functools
import io
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import runs
from pipeline.images import image_bytes

METHODS = ("phash", "dhash", "ahash", "whash")
NO_IMAGE = "no image"  # the hash "error" of an item that has no image
PREVIEW_SIDE = 128  # images are shrunk to this side before cropping: the hashes look at 32x32 pixels at most


@dataclass(frozen=True)
class HashSpec:
    """How images are hashed; part of the cache key."""

    method: str = "phash"
    crop_scales: tuple[float, ...] = (0.95, 0.9, 0.85, 0.8)
    crop_grid: int = 3  # window positions per axis for each scale (3 -> corners, edge centres, centre)

    @property
    def n_variants(self) -> int:
        return 1 + len(self.crop_scales) * self.crop_grid**2

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _hash_fn(method: str) -> Callable:
    import imagehash

    return {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash, "whash": imagehash.whash}[method]


def to_uint64(h) -> int:
    """An `imagehash.ImageHash` of 64 bits as an unsigned integer (row-major bits, first bit most significant)."""
    bits = np.asarray(h.hash, dtype=bool).ravel()
    if bits.size != 64:
        raise ValueError(f"expected a 64-bit hash, got {bits.size} bits")
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def windows(img, spec: HashSpec) -> list:
    """The full image followed by its crop windows, in a fixed order."""
    out = [img]
    width, height = img.size
    positions = np.linspace(0.0, 1.0, spec.crop_grid) if spec.crop_grid > 1 else np.array([0.5])
    for scale in spec.crop_scales:
        w, h = width * scale, height * scale
        for fy in positions:
            for fx in positions:
                x0, y0 = (width - w) * fx, (height - h) * fy
                out.append(img.crop((round(x0), round(y0), round(x0 + w), round(y0 + h))))
    return out


def hash_image(data: bytes, spec: HashSpec = HashSpec()) -> np.ndarray:
    """Hashes (uint64, length `spec.n_variants`) of one encoded image; raises on an unreadable image."""
    from PIL import Image

    fn = _hash_fn(spec.method)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        img = im.convert("RGB")
    img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return np.array([to_uint64(fn(w)) for w in windows(img, spec)], dtype=np.uint64)


def hash_many(images: Sequence[bytes | None], spec: HashSpec = HashSpec()) -> tuple[np.ndarray, list[str]]:
    """Hashes of many images: array (n, n_variants) (zeros where none) and per image "" or the error text."""
    out = np.zeros((len(images), spec.n_variants), dtype=np.uint64)
    errors = [""] * len(images)
    for i, data in enumerate(images):
        if data is None:
            errors[i] = NO_IMAGE
            continue
        try:
            out[i] = hash_image(data, spec)
        except Exception as exc:  # PIL raises many types for broken files
            errors[i] = f"{type(exc).__name__}: {exc}"
    return out, errors


# ---------------------------------------------------------------------------------------------------------------
# Parallel, resumable hashing of parquet files (units and parts of pipeline/runs.py)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Chunk:
    """A run of row groups of one parquet file: the unit of work and of caching."""

    path: str
    row_groups: list[int]
    rows: int
    digest: str = ""  # fingerprint of the chunk's image_sha1 values: its part name in the cache
    image_sha1: list[str] = field(default_factory=list)


def plan_chunks(paths: Sequence[str | os.PathLike], spec: HashSpec, chunk_rows: int = 512) -> list[Chunk]:
    """Split files into chunks of whole row groups (about `chunk_rows` rows each), in file and row order."""
    chunks = []
    for path in paths:
        pf = pq.ParquetFile(path)
        sha = pf.read(columns=["image_sha1"]).column("image_sha1").to_pylist()
        pos, current, rows = 0, [], 0
        for rg in range(pf.num_row_groups):
            current.append(rg)
            rows += pf.metadata.row_group(rg).num_rows
            if rows >= chunk_rows or rg == pf.num_row_groups - 1:
                ids = sha[pos : pos + rows]
                chunks.append(Chunk(str(path), current, rows, runs.fingerprint(ids, length=40), ids))
                pos += rows
                current, rows = [], 0
    return chunks


def hash_chunk(chunk: Chunk, spec: HashSpec) -> pa.Table:
    """Worker: the chunk's images hashed, as a table (hashes: fixed-size lists of n_variants uint64, error)."""
    table = pq.ParquetFile(chunk.path).read_row_groups(chunk.row_groups, columns=["image"])
    hashes, errors = hash_many([image_bytes(v) for v in table.column("image").to_pylist()], spec)
    lists = pa.FixedSizeListArray.from_arrays(pa.array(hashes.reshape(-1), type=pa.uint64()), spec.n_variants)
    return pa.table({"hashes": lists, "error": pa.array(errors, pa.string())})


def _arrays(tables: list[pa.Table], n_variants: int) -> tuple[np.ndarray, list[str]]:
    if not tables:
        return np.zeros((0, n_variants), np.uint64), []
    t = pa.concat_tables(tables)
    flat = t.column("hashes").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, n_variants).astype(np.uint64), t.column("error").to_pylist()


def hash_files(
    paths: Sequence[str | os.PathLike],
    spec: HashSpec = HashSpec(),
    *,
    scheduler: str = "processes",
    workers: int = 2,
    chunk_rows: int = 512,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[str], dict]:
    """Hash the images of items files, rows in file order: (hashes (n, n_variants), errors, stats).

    `scheduler`: "synchronous", "threads", "processes" (dask local schedulers, `workers` of them),
    "local-cluster" (a dask.distributed LocalCluster of `workers` processes) or the address of a running dask
    distributed scheduler ("tcp://host:8786"); see pipeline/cluster.py. Chunks are the units of a `pipeline.runs.Run` whose parts
    live in `cache_dir/<fingerprint of the spec>/` (None: no cache): chunks found there are not recomputed, and
    after a complete run parts of other specs and of chunks no longer present are removed.
    """
    chunks = plan_chunks(paths, spec, chunk_rows)
    run = runs.Run(cache_dir, runs.fingerprint(asdict(spec)), chunks, name=lambda c: c.digest).start(
        {"hash_spec": asdict(spec)})
    cached = [c for c in chunks if run.done(c)]
    if progress:
        for c in cached:
            progress(c.rows)
    run.execute(functools.partial(hash_chunk, spec=spec), map_units=runs.dask_map(scheduler, workers),
                on_unit=(lambda c, _t: progress(c.rows)) if progress else None)
    hashes, errors = run.merge(lambda tables: _arrays(tables, spec.n_variants))
    run.clear_stale()
    stats = {"chunks": len(chunks), "chunks_from_cache": len(cached), "images": int(hashes.shape[0])}
    return hashes, errors, stats
