"""Gather one source into items, a quarantine table and metrics (the demo world also writes the search corpora).

Reads: the source named by --source: `demo` (packaged data, see pipeline/gather/demo.py) or an entry of
`gather.sources` (local files, a Hugging Face dataset, an MMSearch-R1/veRL parquet).
Writes: <out_dir>/<source>/items.parquet (ITEM_FEATURES), quarantine.parquet (one row + reason per bad input),
metrics.json (rows in, items out, quarantined by reason); for demo also bootstrap.parquet and
<corpora_dir>/{passages,images}.parquet.
Per-row work (image load + normalisation) runs in dask partitions, on local threads/processes or a dask.distributed
cluster (`scheduler`); ids are content hashes and outputs are byte-identical on re-run and across schedulers.
Sources are read `part_rows` rows at a time; finished parts wait under <out_dir>/<source>/_parts/ (removed on
success), so a killed gather started again does not redo them. Does not support: incremental re-gathering of a
changed source (it is re-read whole); resume for the demo world (small, built in memory).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from pipeline import cluster
from pipeline.config import param
from pipeline.images import ImageParams
from pipeline.gather.base import SourceParams
from pipeline.gather.demo import DemoParams


@dataclasses.dataclass
class Params:
    out_dir: str = param("data/gather", help="one folder per source is written under this")
    corpora_dir: str = param("data/corpora", help="where the demo world writes passages.parquet and images.parquet")
    scheduler: str = param("threads", help="where the per-row work runs: " + cluster.HELP + "; see README 'Scale out'")
    num_workers: int = param(2, help="dask workers for threads / processes / local-cluster (an address brings its own)")
    partition_size: int = param(64, help="rows per dask task")
    part_rows: int = param(4096, help="rows read and processed at a time; each finished part is kept under <out_dir>/<source>/_parts/ until the source is done, so a killed gather resumes from it (not the demo world)")
    image: ImageParams = param(factory=ImageParams, help="image normalisation")
    demo: DemoParams = param(factory=DemoParams, help="the demo world (--source demo)")
    sources: dict[str, SourceParams] = param({}, help="other sources by name (--source NAME); see SourceParams")

    def validate(self) -> None:
        if "demo" in self.sources:
            raise ValueError("'demo' is reserved for the demo world (gather.demo); rename the source")
        if self.num_workers < 1 or self.partition_size < 1 or self.part_rows < 1:
            raise ValueError("num_workers, partition_size and part_rows must be >= 1")
        cluster.check(self.scheduler)


def add_arguments(parser) -> None:
    parser.add_argument("--source", required=True, help="'demo' or a key of gather.sources")


def run(params: Params, args) -> int:
    from pipeline.gather import read_source
    from pipeline.gather.collect import gather_source
    from pipeline.gather.demo import build_demo_world

    name = args.source
    if name == "demo":
        data_dir = Path(params.out_dir).parent
        if Path(params.out_dir) != data_dir / "gather" or Path(params.corpora_dir) != data_dir / "corpora":
            print("error: for --source demo, out_dir must be <data>/gather and corpora_dir <data>/corpora", file=sys.stderr)
            return 2
        metrics = build_demo_world(data_dir, params.demo, params.image, scheduler=params.scheduler,
                                   num_workers=params.num_workers, partition_size=params.partition_size)
    else:
        if name not in params.sources:
            known = ", ".join(["demo", *params.sources]) or "demo"
            print(f"error: unknown source {name!r}; configured: {known} (add it under gather.sources)", file=sys.stderr)
            return 2
        src = params.sources[name]
        from pipeline.gather.parts import source_fingerprint
        from pipeline.io import progress

        fp = source_fingerprint(name, src, params.image, params.part_rows)
        rows = progress(read_source(src), desc=f"read {name}", unit="row")
        metrics, stats = gather_source(rows, name, params.image, Path(params.out_dir) / name, fingerprint=fp,
                                       require_image=src.require_image, scheduler=params.scheduler,
                                       num_workers=params.num_workers, partition_size=params.partition_size,
                                       part_rows=params.part_rows)
        print(f"gather {name}: {stats.line()}")
    reasons = ", ".join(f"{k}={v}" for k, v in metrics["quarantined_by_reason"].items()) or "none"
    print(f"gather {name}: {metrics['rows_in']} rows in, {metrics['items_out']} items out"
          + (f", {metrics['bootstrap_out']} bootstrap" if "bootstrap_out" in metrics else "")
          + f", {metrics['quarantined']} quarantined ({reasons})")
    return 0 if metrics["counts_add_up"] else 1
