"""Build the local search indexes (BM25 text index, image index) from the search corpora.

Reads:  data/corpora/passages.parquet (passage_id, title, text, url, entity, license)
        data/corpora/images.parquet (image_id, title, url, entity, license, image{bytes,path})
Writes: data/index/text/ (passages.sqlite: sqlite FTS5 BM25 index, manifest.json)
        data/index/image/ (embeddings.npy, colors.npy, phash.npy, meta.parquet with thumbnails, manifest.json)
        data/index/exclusions.parquet (corpus rows not indexed, with the reason), data/index/metrics.json
Resumable: the image build keeps finished chunks and reuses them when re-run on the same corpus; the text build
is rebuilt from scratch (about a minute per million passages). Same corpus => same index files.
Does not support: incremental updates (a changed corpus rebuilds), distributed builds, approximate (ANN) search.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.config import param


@dataclasses.dataclass
class Params:
    corpora_dir: str = param("data/corpora", help="folder with passages.parquet and images.parquet (written by gather)")
    out_dir: str = param("data/index", help="index folder (text/ and image/ are written inside)")
    text: bool = param(True, help="build the text index")
    image: bool = param(True, help="build the image index")
    batch_size: int = param(32, help="images per embedding batch")
    chunk_rows: int = param(1024, help="images per resumable chunk")
    threads: int = param(2, help="torch threads for embedding")


def run(params: Params, args) -> int:
    import sys

    import pyarrow.parquet as pq

    from pipeline.io import exclusion, progress, write_exclusions, write_json
    from pipeline.search.local_image import build_image_index
    from pipeline.search.local_text import PASSAGE_COLUMNS, build_text_index, file_sha256, iter_parquet_rows

    corpora, out = Path(params.corpora_dir), Path(params.out_dir)
    metrics: dict = {}
    excluded: list[dict] = []
    if params.text:
        src = corpora / "passages.parquet"
        if not src.exists():
            print(f"error: {src} not found; run `python -m stages gather` (demo source) first or set index.text=false",
                  file=sys.stderr)
            return 2
        cols = pq.ParquetFile(src).schema_arrow.names
        missing = [c for c in PASSAGE_COLUMNS if c not in cols]
        if missing:
            print(f"error: {src} lacks column(s) {missing}; expected {list(PASSAGE_COLUMNS)}", file=sys.stderr)
            return 2
        n_in = pq.ParquetFile(src).metadata.num_rows
        res = build_text_index(iter_parquet_rows(src, PASSAGE_COLUMNS), out / "text", file_sha256(src), total=n_in,
                               progress=progress)
        excluded += [exclusion(pid, "index", "passages", reason, f"passage {pid}: {reason}; fix the corpus row")
                     for pid, reason in res.pop("excluded_rows")]
        metrics["text"] = {"passages_in": n_in, "passages_indexed": res["passages"], "passages_excluded": res["excluded"],
                           "build_s": res["build_s"], "bytes": res["bytes"]}
        print(f"text index: {res['passages']} passages ({res['excluded']} excluded) in {res['build_s']} s, {res['bytes']/1e6:.1f} MB")
    if params.image:
        src = corpora / "images.parquet"
        if not src.exists():
            print(f"error: {src} not found; run `python -m stages gather` (demo source) first or set index.image=false",
                  file=sys.stderr)
            return 2
        cols = ["image_id", "title", "url", "entity", "license", "image"]
        missing = [c for c in cols if c not in pq.ParquetFile(src).schema_arrow.names]
        if missing:
            print(f"error: {src} lacks column(s) {missing}; expected {cols}", file=sys.stderr)
            return 2
        n_in = pq.ParquetFile(src).metadata.num_rows
        res = build_image_index(iter_parquet_rows(src, cols, batch_size=256), out / "image", file_sha256(src),
                                base_dir=corpora, total=n_in, batch_size=params.batch_size,
                                chunk_rows=params.chunk_rows, threads=params.threads, progress=progress)
        excluded += [exclusion(iid, "index", "images", reason.split(":")[0], f"image {iid}: {reason}; fix or drop the corpus row")
                     for iid, reason in res.pop("excluded_rows")]
        metrics["image"] = {"images_in": n_in, "images_indexed": res["images"], "images_excluded": res["excluded"],
                            "build_s": res["build_s"], "bytes": res["bytes"]}
        print(f"image index: {res['images']} images ({res['excluded']} excluded) in {res['build_s']} s, {res['bytes']/1e6:.1f} MB")
    write_exclusions(excluded, out / "exclusions.parquet")
    write_json(metrics, out / "metrics.json")
    return 0
