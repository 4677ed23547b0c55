"""Perceptual image hashes as 64-bit integers, computed in parallel with dask and cached per chunk.

Each image gets one "full" hash (of the whole picture) followed by hashes of crop windows (centred and off-centre
crops at a few scales). Matching the full hash of one image against every window hash of another catches copies
that were cropped, besides re-encoded and resized ones: a crop of an image looks like one of its windows.

Reads items parquet files (columns `image`, `image_sha1` only, a chunk of row groups per task); writes one small
parquet per finished chunk under the cache folder, so a killed run resumes where it stopped and a re-run with the
same inputs and settings hashes nothing. Does not support hashes other than 64 bits (hash_size 8).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
# Parallel, resumable hashing of parquet files
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Chunk:
    """A run of row groups of one parquet file: the unit of work and of caching."""

    path: str
    row_groups: list[int]
    rows: int
    digest: str = ""  # sha1 of the spec and the chunk's image_sha1 values: the cache file name
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
                digest = hashlib.sha1((spec.key() + "\n" + "\n".join(ids)).encode()).hexdigest()
                chunks.append(Chunk(str(path), current, rows, digest, ids))
                pos += rows
                current, rows = [], 0
    return chunks


def _image_bytes(value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("bytes")
    return value


def _hash_chunk(chunk: Chunk, spec: HashSpec, cache_dir: str | None) -> tuple[np.ndarray, list[str]]:
    """Worker: read the chunk's images, hash them, write the cache file; returns (hashes, errors)."""
    table = pq.ParquetFile(chunk.path).read_row_groups(chunk.row_groups, columns=["image"])
    images = [_image_bytes(v) for v in table.column("image").to_pylist()]
    hashes, errors = hash_many(images, spec)
    if cache_dir:
        out = Path(cache_dir) / f"{chunk.digest}.parquet"
        tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
        flat = pa.array(hashes.reshape(-1), type=pa.uint64())
        lists = pa.FixedSizeListArray.from_arrays(flat, spec.n_variants)
        pq.write_table(pa.table({"hashes": lists, "error": pa.array(errors, pa.string())}), tmp)
        os.replace(tmp, out)
    return hashes, errors


def _read_cached(path: Path, n_variants: int) -> tuple[np.ndarray, list[str]]:
    t = pq.read_table(path)
    flat = t.column("hashes").combine_chunks().flatten().to_numpy()
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

    `scheduler`: "synchronous", "threads", "processes" (dask local schedulers, `workers` of them) or the address
    of a dask distributed scheduler ("tcp://host:8786"). Chunks found in `cache_dir` are not recomputed.
    """
    import dask

    chunks = plan_chunks(paths, spec, chunk_rows)
    results: list[tuple[np.ndarray, list[str]] | None] = [None] * len(chunks)
    todo = []
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    for k, chunk in enumerate(chunks):
        cached = Path(cache_dir) / f"{chunk.digest}.parquet" if cache_dir else None
        if cached is not None and cached.exists():
            results[k] = _read_cached(cached, spec.n_variants)
            if progress:
                progress(chunk.rows)
        else:
            todo.append(k)
    cache = str(cache_dir) if cache_dir else None
    if todo:
        tasks = [dask.delayed(_hash_chunk)(chunks[k], spec, cache) for k in todo]
        if "://" in scheduler:
            from dask.distributed import Client

            with Client(scheduler) as client:
                futures = client.compute(tasks)
                for k, fut in zip(todo, futures):
                    results[k] = fut.result()
                    if progress:
                        progress(chunks[k].rows)
        else:
            with _local_pool(scheduler, workers) as pool:
                # a few chunks per worker per batch keep the progress bar moving at little scheduling cost
                step = max(1, workers * 2)
                for b in range(0, len(tasks), step):
                    extra = {"pool": pool} if pool is not None else {}
                    done = dask.compute(*tasks[b : b + step], scheduler=scheduler, num_workers=workers, **extra)
                    for k, res in zip(todo[b : b + step], done):
                        results[k] = res
                        if progress:
                            progress(chunks[k].rows)
    hashes = np.concatenate([r[0] for r in results]) if results else np.zeros((0, spec.n_variants), np.uint64)
    errors = [e for r in results for e in r[1]]
    stats = {"chunks": len(chunks), "chunks_from_cache": len(chunks) - len(todo), "images": int(hashes.shape[0])}
    return hashes, errors, stats


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _local_pool(scheduler: str, workers: int):
    """One executor reused by every batch (a process pool per `dask.compute` call would re-spawn workers)."""
    import concurrent.futures as cf
    import multiprocessing

    if scheduler == "processes":
        return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    if scheduler == "threads":
        return cf.ThreadPoolExecutor(max_workers=workers)
    if scheduler in ("synchronous", "sync", "single-threaded"):
        return _NoPool()
    raise ValueError(f"unknown dask scheduler {scheduler!r}: use synchronous, threads, processes or tcp://host:port")
