"""Run the common step over a source's raw rows with dask, and write the gather outputs of one source.

`gather_rows` spreads `convert.process_row` over dask partitions (scheduler: synchronous, threads, processes or a
distributed scheduler address), then `convert.finalize` removes duplicates in input order, so the result is the
same for any partitioning or worker count. `write_outputs` writes, under one folder: items.parquet,
quarantine.parquet, metrics.json, and bootstrap.parquet when the source has a bootstrap split.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Iterable

from pipeline.images import ImageParams
from pipeline.io import write_exclusions, write_json
from pipeline.schema import ITEM_COLUMNS, ITEM_FEATURES, write_items, write_table
from pipeline.gather.convert import finalize, process_row


@dataclasses.dataclass
class GatherResult:
    source: str
    rows_in: int
    splits: dict[str, list[dict]]
    quarantine: list[dict]

    def metrics(self) -> dict:
        reasons = collections.Counter(q["reason"] for q in self.quarantine)
        m = {
            "source": self.source,
            "rows_in": self.rows_in,
            "items_out": len(self.splits.get("items", [])),
            "quarantined": len(self.quarantine),
            "quarantined_by_reason": dict(sorted(reasons.items())),
        }
        for split, rows in sorted(self.splits.items()):
            if split != "items":
                m[f"{split}_out"] = len(rows)
        m["counts_add_up"] = m["rows_in"] == sum(len(r) for r in self.splits.values()) + len(self.quarantine)
        return m


def _process_partition(rows: list[dict], source: str, opts: ImageParams, require_image: bool) -> list[tuple[str, dict]]:
    return [process_row(r, source, opts, require_image) for r in rows]


def compute_kwargs(scheduler: str, num_workers: int) -> tuple[dict, object | None]:
    """dask compute() kwargs for a scheduler name or a distributed address; returns (kwargs, client to close)."""
    if "://" in scheduler:
        from distributed import Client

        client = Client(scheduler)
        return {"scheduler": client}, client
    if scheduler not in ("synchronous", "threads", "processes"):
        raise ValueError(f"scheduler {scheduler!r}: use synchronous, threads, processes or tcp://host:port")
    kwargs: dict = {"scheduler": scheduler}
    if scheduler != "synchronous":
        kwargs["num_workers"] = num_workers
    return kwargs, None


def gather_rows(
    raws: Iterable[dict], source: str, opts: ImageParams, *, require_image: bool = True,
    scheduler: str = "threads", num_workers: int = 2, partition_size: int = 64,
) -> GatherResult:
    """Raw rows -> GatherResult; per-row work runs in dask partitions, order and result independent of them."""
    import dask.bag as db

    raws = list(raws)
    if not raws:
        return GatherResult(source, 0, {}, [])
    bag = db.from_sequence(raws, partition_size=max(1, partition_size))
    kwargs, client = compute_kwargs(scheduler, num_workers)
    try:
        results = bag.map_partitions(_process_partition, source, opts, require_image).compute(**kwargs)
    finally:
        if client is not None:
            client.close()
    splits, quarantine = finalize(results, source)
    return GatherResult(source, len(raws), splits, quarantine)


def _write_items(rows: list[dict], path: Path) -> None:
    if rows:
        write_items(rows, path)
    else:  # every row quarantined: still an items file, with the schema and no rows
        import datasets

        empty = datasets.Dataset.from_dict({c: [] for c in ITEM_COLUMNS}, features=ITEM_FEATURES)
        write_table(empty.data.table, path)


def write_outputs(result: GatherResult, out_dir: str | os.PathLike) -> dict:
    """Write items.parquet, quarantine.parquet, metrics.json (+ <split>.parquet for other splits); returns metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_items(result.splits.get("items", []), out / "items.parquet")
    for split, rows in sorted(result.splits.items()):
        if split != "items":
            _write_items(rows, out / f"{split}.parquet")
    write_exclusions(result.quarantine, out / "quarantine.parquet")
    metrics = result.metrics()
    write_json(metrics, out / "metrics.json")
    return metrics
