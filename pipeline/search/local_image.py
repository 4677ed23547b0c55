"""Local image search: finds the corpus image of the same entity as a re-photographed query image.

Score of a corpus image = cosine of EfficientNet-Lite0 embeddings + colour_weight * cosine of colour layouts
+ hash_weight * perceptual-hash similarity (1 - Hamming/64). Exact top-k by matrix products over all rows (fast
enough for 100k images on 2 cores, see bench/bench_search.py). Results carry the corpus image's thumbnail, title, URL.

Reads: images parquet (image_id, title, url, entity, license, image{bytes,path}) at build time; `<index>/image/`
(embeddings.npy, colors.npy, phash.npy, meta.parquet, manifest.json) at query time. Writes: the index folder (build),
with resumable per-chunk files under `<index>/image/.chunks/` removed once the index is complete.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from pipeline.images import image_bytes
from pipeline.search.backends import Backend
from pipeline.search.types import SearchError, SearchHit

IMAGE_INDEX_VERSION = "effnet-color-phash-v1"
COLOR_WEIGHT = 1.0
THUMBNAIL_PX = 256


def thumbnail_bytes(im, max_px: int = THUMBNAIL_PX) -> bytes:
    """Deterministic JPEG thumbnail (longest side <= max_px) of an RGB PIL image."""
    from PIL import Image

    im = im.copy()
    im.thumbnail((max_px, max_px), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88, optimize=True)
    return buf.getvalue()


def phash_int(im) -> int:
    import imagehash

    return int(str(imagehash.phash(im)), 16)


def image_features(embedder, images: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings (n,1280), colour layouts (n,384), phashes (n,) uint64) for RGB PIL images."""
    from pipeline.search.embed import color_layout

    return embedder.embed_pil(images), color_layout(images), np.array([phash_int(im) for im in images], dtype=np.uint64)


def build_image_index(rows: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike, corpus_sha: str,
                      base_dir: str | os.PathLike = ".", total: int | None = None, batch_size: int = 32,
                      chunk_rows: int = 1024, threads: int | None = None, progress=None) -> dict[str, Any]:
    """Embed every corpus image and write the index; resumable: finished chunks of `chunk_rows` rows are kept under
    `.chunks/<corpus sha>/` and reused when a killed build is run again on the same corpus.

    Rows whose image is missing or cannot be decoded are skipped and returned in `excluded_rows`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.search.embed import IMAGE_EMBEDDER_VERSION, decode_rgb, shared_image_embedder

    out_dir = Path(out_dir)
    chunk_dir = out_dir / ".chunks" / corpus_sha[:16]
    chunk_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    embedder = None
    bar = progress(total=total, desc="image index", unit="image") if progress else None
    excluded: list[tuple[str, str]] = []
    chunk_files: list[Path] = []
    rows_iter = iter(rows)
    chunk_no, position = 0, 0
    seen: set[str] = set()
    while True:
        chunk = []
        for row in rows_iter:
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                break
        if not chunk:
            break
        path = chunk_dir / f"{chunk_no:06d}.npz"
        chunk_files.append(path)
        if path.exists():  # done by an earlier (killed) run on this same corpus
            with np.load(path, allow_pickle=False) as z:
                excluded += [tuple(x.split("\t", 1)) for x in z["excluded"].tolist()]
                seen.update(z["image_id"].tolist())
            position += len(chunk)
            chunk_no += 1
            if bar:
                bar.update(len(chunk))
            continue
        if embedder is None:
            embedder = shared_image_embedder(threads or 0)
        ids, titles, urls, entities, licenses, thumbs, pils, exc_here = [], [], [], [], [], [], [], []
        for row in chunk:
            iid = str(row.get("image_id") or f"row {position}")
            position += 1
            if not row.get("image_id"):
                exc_here.append(f"{iid}\timage_id_missing")
                continue
            if iid in seen:
                exc_here.append(f"{iid}\timage_id_duplicate")
                continue
            try:
                data = image_bytes(row.get("image"), base=base_dir)
                if not data:
                    raise ValueError("row has neither image bytes nor an image path")
                im = decode_rgb(data)
            except (ValueError, OSError, TypeError) as exc:
                exc_here.append(f"{iid}\timage_unreadable: {exc}")
                continue
            seen.add(iid)
            ids.append(iid)
            titles.append(str(row.get("title") or ""))
            urls.append(str(row.get("url") or ""))
            entities.append(str(row.get("entity") or ""))
            licenses.append(str(row.get("license") or ""))
            thumbs.append(thumbnail_bytes(im))
            pils.append(im)
        embs, cols, hashes = [], [], []
        for s in range(0, len(pils), batch_size):
            e, c, h = image_features(embedder, pils[s: s + batch_size])
            embs.append(e), cols.append(c), hashes.append(h)
        from pipeline.search.embed import COLOR_DIM, IMAGE_DIM

        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(
            tmp,
            emb=np.concatenate(embs) if embs else np.zeros((0, IMAGE_DIM), np.float32),
            color=np.concatenate(cols) if cols else np.zeros((0, COLOR_DIM), np.float32),
            phash=np.concatenate(hashes) if hashes else np.zeros((0,), np.uint64),
            image_id=np.array(ids, dtype=str), title=np.array(titles, dtype=str), url=np.array(urls, dtype=str),
            entity=np.array(entities, dtype=str), license=np.array(licenses, dtype=str),
            thumb=np.array(thumbs, dtype=object).astype(np.bytes_) if thumbs else np.zeros((0,), dtype="S1"),
            excluded=np.array(exc_here, dtype=str),
        )
        os.replace(tmp, path)
        excluded += [tuple(x.split("\t", 1)) for x in exc_here]
        chunk_no += 1
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()

    embs, cols, hashes, meta = [], [], [], {k: [] for k in ("image_id", "title", "url", "entity", "license", "thumbnail")}
    for path in chunk_files:
        with np.load(path, allow_pickle=False) as z:
            embs.append(z["emb"]), cols.append(z["color"]), hashes.append(z["phash"])
            for k in ("image_id", "title", "url", "entity", "license"):
                meta[k] += z[k].tolist()
            # np.bytes_ strips trailing NULs; JPEG ends with FFD9 so nothing is lost
            meta["thumbnail"] += [bytes(b) for b in z["thumb"]]
    from pipeline.search.embed import COLOR_DIM, IMAGE_DIM

    emb = np.concatenate(embs) if embs else np.zeros((0, IMAGE_DIM), np.float32)
    col = np.concatenate(cols) if cols else np.zeros((0, COLOR_DIM), np.float32)
    ph = np.concatenate(hashes) if hashes else np.zeros((0,), np.uint64)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, arr in (("embeddings.npy", emb), ("colors.npy", col), ("phash.npy", ph)):
        tmp = out_dir / (name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, out_dir / name)
    table = pa.table({k: pa.array(v, type=pa.binary() if k == "thumbnail" else pa.string()) for k, v in meta.items()})
    pq.write_table(table, out_dir / "meta.parquet.tmp", compression="zstd", row_group_size=1024)
    os.replace(out_dir / "meta.parquet.tmp", out_dir / "meta.parquet")
    manifest = {
        "kind": "image",
        "index_version": IMAGE_INDEX_VERSION,
        "embedder": IMAGE_EMBEDDER_VERSION,
        "corpus_sha256": corpus_sha,
        "images": int(emb.shape[0]),
        "excluded": len(excluded),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.rmtree(out_dir / ".chunks", ignore_errors=True)
    size = sum((out_dir / n).stat().st_size for n in ("embeddings.npy", "colors.npy", "phash.npy", "meta.parquet"))
    return {**manifest, "build_s": round(time.time() - t0, 2), "bytes": size, "excluded_rows": excluded}


class ImageIndex:
    """Loaded image index: exact top-k over all rows.

    Embeddings and colour layouts are held as one float32 torch matrix [emb | colour], scored with one
    matrix-vector product in torch's own thread pool: a numpy (BLAS) product here leaves BLAS threads spinning
    that then slow the next query's EfficientNet pass about 2.5x (bench/bench_search.py).
    """

    def __init__(self, index_dir: str | os.PathLike):
        import pyarrow.parquet as pq
        import torch

        d = Path(index_dir)
        if not (d / "manifest.json").exists():
            raise FileNotFoundError(f"image index {str(d)!r} not found; build it with `python -m stages index` "
                                    "(needs data/corpora/images.parquet)")
        emb = np.load(d / "embeddings.npy")
        color = np.load(d / "colors.npy")
        if emb.shape[0] != color.shape[0]:
            raise ValueError(f"image index {str(d)!r} is inconsistent: {emb.shape[0]} embeddings, {color.shape[0]} "
                             "colour layouts; rebuild it with `python -m stages index`")
        self.emb_dim = int(emb.shape[1])
        self.matrix = torch.from_numpy(np.concatenate([emb, color], axis=1).astype(np.float32, copy=False))
        del emb, color
        self.phash = np.load(d / "phash.npy")
        self.meta = pq.read_table(d / "meta.parquet")
        self._titles = self.meta.column("title").to_pylist()
        self._urls = self.meta.column("url").to_pylist()
        self._entities = self.meta.column("entity").to_pylist()
        self._thumbs = self.meta.column("thumbnail")

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def scores(self, q_emb: np.ndarray, q_color: np.ndarray, q_hash: int, color_weight: float, hash_weight: float) -> np.ndarray:
        import torch

        if q_emb.shape != (self.emb_dim,) or q_emb.shape[0] + q_color.shape[0] != self.matrix.shape[1]:
            raise ValueError(f"query features ({q_emb.shape[0]} + {q_color.shape[0]}) do not match the index "
                             f"({self.emb_dim} + {self.matrix.shape[1] - self.emb_dim}); rebuild the index")
        q = np.concatenate([q_emb, color_weight * q_color]).astype(np.float32)
        s = (self.matrix @ torch.from_numpy(q)).numpy()
        if hash_weight:
            ham = np.bitwise_count(self.phash ^ np.uint64(q_hash)).astype(np.float32)
            s = s + hash_weight * (1.0 - ham / 64.0)
        return s

    def top_k(self, scores: np.ndarray, k: int) -> list[int]:
        k = min(k, len(scores))
        if k <= 0:
            return []
        part = np.argpartition(-scores, k - 1)[:k]
        return sorted(part.tolist(), key=lambda i: (-float(scores[i]), i))

    def row(self, i: int) -> dict[str, Any]:
        return {"title": self._titles[i], "url": self._urls[i], "entity": self._entities[i],
                "thumbnail": self._thumbs[i].as_py()}


class LocalImageBackend(Backend):
    """image_search over the local image index (params: pipeline.search.config.LocalParams)."""

    tool = "image_search"
    name = "local"

    def __init__(self, index_dir: str | os.PathLike, params):
        self.index_dir = Path(index_dir)
        self.params = params
        self._index: ImageIndex | None = None
        self._lock = threading.Lock()

    def version(self) -> str:
        manifest = self.index_dir / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"image index manifest {str(manifest)!r} not found; run `python -m stages index`")
        m = json.loads(manifest.read_text(encoding="utf-8"))
        return (f"{m['index_version']}+corpus-{m['corpus_sha256'][:12]}"
                f"+w{COLOR_WEIGHT:g},{self.params.image_hash_weight:g}")

    def index(self) -> ImageIndex:
        with self._lock:
            if self._index is None:
                self._index = ImageIndex(self.index_dir)
            return self._index

    def search(self, value: Any, k: int, context: Mapping[str, Any] | None = None) -> list[SearchHit]:
        from pipeline.search.embed import decode_rgb, shared_image_embedder

        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"image_search needs encoded image bytes, got {type(value).__name__}")
        im = decode_rgb(bytes(value))
        index = self.index()
        emb, col, h = image_features(shared_image_embedder(self.params.threads), [im])
        try:
            scores = index.scores(emb[0], col[0], int(h[0]), COLOR_WEIGHT, self.params.image_hash_weight)
        except ValueError as exc:
            raise SearchError(f"local image index error: {exc}") from None
        hits = []
        for i in index.top_k(scores, k):
            r = index.row(i)
            hits.append(SearchHit(title=r["title"], url=r["url"], snippet="", thumbnail=r["thumbnail"]))
        return hits
