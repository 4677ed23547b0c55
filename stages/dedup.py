"""Near-duplicate clusters, duplicate removal and contamination control over all gathered items.

Reads:  data/gather/<source>/items.parquet for each source in `sources` (not the demo bootstrap split), and the
        parquet files of `eval_sets` (evaluation sets to keep out of the pool).
Writes: data/dedup/items.parquet (kept items + `cluster_id`), exclusions.parquet (reason duplicate / contaminated /
        image_unreadable, detail naming the kept item or the evaluation item), report.json (clusters, sizes,
        examples, near-duplicate pairs, conflicts, the full contamination list), metrics.json; hash cache chunks
        under `cache_dir` (a killed run resumes from them).
Does not support: hashes other than 64 bits; fuzzy (paraphrase) question matching beyond normalisation.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from pipeline import cluster
from pipeline.config import param
from pipeline.dedup.contamination import EvalSet


@dataclass
class Params:
    sources: list[str] = param(["demo"], help="gather sources whose data/gather/<source>/items.parquet are pooled, in priority order (the first copy of a duplicate is kept)")
    gather_dir: str = param("data/gather", help="folder holding one sub-folder per gather source")
    out_dir: str = param("data/dedup", help="output folder")
    cache_dir: str = param("data/cache/dedup", help="per-chunk hash cache (resume and re-runs); empty to disable")
    method: str = param("phash", help="imagehash method: phash, dhash, ahash or whash (64-bit)")
    crop_scales: list[float] = param([0.95, 0.9, 0.85, 0.8], help="scales of the crop windows hashed besides the full image (catches cropped copies); [] for one hash per image")
    crop_grid: int = param(3, help="window positions per axis and scale (3: corners, edge centres, centre)")
    threshold: int = param(8, help="Hamming distance (bits of 64) at or below which two images are near-duplicates")
    template_min_count: int = param(5, help="a normalised question in at least this many items is a template: it links no items and is no contamination on its own (0: no templates)")
    link_entity: bool = param(True, help="items about the same non-empty entity share a cluster (splits never share entities)")
    eval_sets: list[EvalSet] = param([], help="evaluation sets to keep out of the pool: [{path, name, columns: {id, question, image}}]")
    scheduler: str = param("processes", help="where hashing runs: " + cluster.HELP + "; see README 'Scale out'")
    workers: int = param(2, help="dask workers for hashing with threads / processes / local-cluster")
    chunk_rows: int = param(512, help="rows per hashing task (whole parquet row groups)")
    examples: int = param(20, help="examples per section of report.json")

    def validate(self) -> None:
        from pipeline.dedup.hashing import METHODS

        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 0 <= self.threshold <= 32:
            raise ValueError(f"threshold {self.threshold} must be within 0..32 bits")
        if any(not 0.3 <= s < 1.0 for s in self.crop_scales):
            raise ValueError("crop_scales must lie in [0.3, 1)")
        if self.crop_grid < 1 or self.workers < 1 or self.chunk_rows < 1:
            raise ValueError("crop_grid, workers and chunk_rows must be at least 1")
        cluster.check(self.scheduler)
        if not self.sources:
            raise ValueError("sources is empty: name at least one gather source")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=".", help="folder that data paths are relative to (default: .)")


def run(params: Params, args) -> int:
    from pathlib import Path

    from pipeline.dedup import clusters as dd
    from pipeline.dedup.contamination import load_eval_set
    from pipeline.dedup.hashing import HashSpec, hash_files, hash_many
    from pipeline.io import progress, write_exclusions, write_json
    from pipeline.schema import to_json

    root = Path(getattr(args, "root", ".") or ".")
    paths = []
    for s in params.sources:
        p = root / params.gather_dir / s / "items.parquet"
        if not p.exists():
            raise SystemExit(f"dedup: source {s!r}: {p} not found; run `python -m stages gather --source {s}` first or remove it from dedup.sources")
        paths.append(p)
    out = root / params.out_dir
    spec = HashSpec(params.method, tuple(params.crop_scales), params.crop_grid)
    meta = dd.read_meta(paths)

    t0 = time.perf_counter()
    with progress(total=len(meta), desc="dedup: hashing images", unit="img") as bar:
        hashes, errors, hstats = hash_files(
            paths, spec, scheduler=params.scheduler, workers=params.workers, chunk_rows=params.chunk_rows,
            cache_dir=(root / params.cache_dir) if params.cache_dir else None, progress=bar.update,
        )
    t_hash = time.perf_counter() - t0

    evals, eval_hashes, eval_errors = [], [], []
    for es in params.eval_sets:
        try:
            e = load_eval_set(EvalSet(str(root / es.path) if not Path(es.path).is_absolute() else es.path, es.label, es.columns))
        except ValueError as exc:
            raise SystemExit(f"dedup: {exc}") from None
        h, err = hash_many(e.images, spec)
        evals.append(e), eval_hashes.append(h), eval_errors.append(err)

    t1 = time.perf_counter()
    result = dd.dedup(
        meta, hashes, errors, threshold=params.threshold, template_min_count=params.template_min_count,
        link_entity=params.link_entity, evals=evals, eval_hashes=eval_hashes, eval_errors=eval_errors,
        examples=params.examples,
    )
    t_search = time.perf_counter() - t1

    written = dd.write_items_with_clusters(paths, result.cluster_id, out / "items.parquet")
    rows = dd.exclusion_rows(meta, result.excluded)
    write_exclusions(rows, out / "exclusions.parquet")
    assert written + len(rows) == len(meta), "counts in must equal kept + excluded"

    report = {**result.report, "sources": params.sources, "eval_sets": [e.name for e in evals],
              "hash": {"method": spec.method, "crop_scales": list(spec.crop_scales), "crop_grid": spec.crop_grid,
                       "variants_per_image": spec.n_variants}}
    write_json(report, out / "report.json")
    metrics = {**result.metrics, "hash_seconds": round(t_hash, 3), "search_seconds": round(t_search, 3),
               "images_per_second": round(len(meta) / t_hash, 1) if t_hash > 0 else None,
               "hash_chunks": hstats["chunks"], "hash_chunks_from_cache": hstats["chunks_from_cache"]}
    write_json(metrics, out / "metrics.json")
    print(f"dedup: {len(meta)} items in, {written} kept in {metrics['clusters']} clusters, "
          f"{len(rows)} excluded {to_json(metrics['excluded'])}")
    return 0
