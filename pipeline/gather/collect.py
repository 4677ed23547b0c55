"""Run the common step over a source's raw rows with dask, and write the gather outputs of one source.

`gather_rows` spreads `convert.process_row` over dask partitions (scheduler: see pipeline/cluster.py), then
`convert.finalize` removes duplicates in input order, so the result is the same for any partitioning, worker count
or scheduler; `write_outputs` writes it under one folder: items.parquet, quarantine.parquet, metrics.json, and
bootstrap.parquet when the source has a bootstrap split.

`gather_source` does the same for a source of any size, streaming: rows are read and processed in parts
(pipeline/gather/parts.py) kept under <folder>/_parts/ until the outputs are written, then the items are written
row group by row group from the parts in order (byte-identical to `write_outputs`). A killed gather started again
resumes from the finished parts; the _parts folder is removed on success. Held in memory: one part, the ids seen
(for duplicates), and the quarantine rows.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Iterable

from pipeline import runs
from pipeline.images import ImageParams
from pipeline.io import write_exclusions, write_json
from pipeline.schema import ITEM_COLUMNS, ITEM_FEATURES, ROW_GROUP_ROWS, write_items, write_table
from pipeline.gather.convert import Finalizer, finalize
from pipeline.gather.parts import PartStats, from_table, part_name, process_parts

PARTS_DIR = "_parts"  # under <out_dir>/<source>/: finished parts of an unfinished gather; removed on success


@dataclasses.dataclass
class GatherResult:
    source: str
    rows_in: int
    splits: dict[str, list[dict]]
    quarantine: list[dict]

    def metrics(self) -> dict:
        return metrics_of(self.source, self.rows_in, {k: len(v) for k, v in self.splits.items()}, self.quarantine)


def metrics_of(source: str, rows_in: int, split_counts: dict[str, int], quarantine: list[dict]) -> dict:
    """metrics.json of one source: rows in, items out per split, quarantined by reason, whether the counts add up."""
    reasons = collections.Counter(q["reason"] for q in quarantine)
    m = {
        "source": source,
        "rows_in": rows_in,
        "items_out": split_counts.get("items", 0),
        "quarantined": len(quarantine),
        "quarantined_by_reason": dict(sorted(reasons.items())),
    }
    for split, n in sorted(split_counts.items()):
        if split != "items":
            m[f"{split}_out"] = n
    m["counts_add_up"] = m["rows_in"] == sum(split_counts.values()) + len(quarantine)
    return m


def gather_rows(
    raws: Iterable[dict], source: str, opts: ImageParams, *, require_image: bool = True,
    scheduler: str = "threads", num_workers: int = 2, partition_size: int = 64, part_rows: int = 4096,
) -> GatherResult:
    """Raw rows -> GatherResult held in memory (small sources, the demo world, tests): rows are read `part_rows` at a
    time and processed in dask partitions; order and result are independent of both. See `gather_source` for a
    source too big for memory."""
    stats = PartStats()
    results = (r for _, part in process_parts(raws, source, opts, require_image=require_image, scheduler=scheduler,
                                              num_workers=num_workers, partition_size=partition_size,
                                              part_rows=part_rows, stats=stats) for r in part)
    splits, quarantine = finalize(results, source)
    return GatherResult(source, stats.rows, splits, quarantine)


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


class ItemsWriter:
    """Item rows -> one parquet file, written a few row groups at a time as rows arrive; the file is byte-identical
    to `write_items` of all the rows at once (same schema, row groups of ROW_GROUP_ROWS). Atomic: tmp + rename."""

    def __init__(self, path: str | os.PathLike, buffer_groups: int = 16):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.buffer: list[dict] = []
        self.flush_at = ROW_GROUP_ROWS * max(1, buffer_groups)
        self.writer = None
        self.count = 0

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        self.count += 1
        if len(self.buffer) >= self.flush_at:
            self._flush(len(self.buffer) - len(self.buffer) % ROW_GROUP_ROWS)

    def _flush(self, n: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if n <= 0:
            return
        # pyarrow directly: datasets' from_list re-encodes every row and cost 3x the per-row step; the rows are
        # already in encoded form, and tests check the bytes equal write_items'
        table = pa.Table.from_pylist(self.buffer[:n], schema=ITEM_FEATURES.arrow_schema)
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd", write_statistics=True)
        self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        del self.buffer[:n]

    def close(self) -> int:
        self._flush(len(self.buffer))
        if self.writer is None:
            _write_items([], self.path)
        else:
            self.writer.close()
            os.replace(self.tmp, self.path)
        return self.count


def gather_source(
    raws: Iterable[dict], source: str, opts: ImageParams, out_dir: str | os.PathLike, *, fingerprint: str,
    require_image: bool = True, scheduler: str = "threads", num_workers: int = 2, partition_size: int = 64,
    part_rows: int = 4096,
) -> tuple[dict, PartStats]:
    """Stream a source into <out_dir>: items.parquet (+ <split>.parquet), quarantine.parquet, metrics.json, the
    same bytes as `write_outputs(gather_rows(...))`. Parts go to <out_dir>/_parts/<fingerprint>/ first (parts of
    other fingerprints are removed); finished parts found there are not processed again. Returns (metrics, stats)."""
    out = Path(out_dir)
    parts_dir = out / PARTS_DIR
    runs.clear_stale(parts_dir, {fingerprint})
    run = runs.Run(parts_dir, fingerprint, [], name=part_name).start(
        {"source": source, "part_rows": part_rows, "note": "finished parts of an unfinished gather; removed on success"})
    stats = PartStats()
    for _ in process_parts(raws, source, opts, require_image=require_image, scheduler=scheduler,
                           num_workers=num_workers, partition_size=partition_size, part_rows=part_rows, run=run,
                           stats=stats):
        pass  # parts are on disk; the outputs are written from them below, in order
    fin, writers, quarantine = Finalizer(source), {"items": ItemsWriter(out / "items.parquet")}, []
    for index in range(stats.parts):
        for kind, row in from_table(run.read(index)):
            split, row = fin.add(kind, row)
            if split is None:
                quarantine.append(row)
                continue
            if split not in writers:
                writers[split] = ItemsWriter(out / f"{split}.parquet")
            writers[split].add(row)
    counts = {split: w.close() for split, w in writers.items()}
    write_exclusions(quarantine, out / "quarantine.parquet")
    metrics = metrics_of(source, stats.rows, {k: n for k, n in counts.items() if n or k == "items"}, quarantine)
    write_json(metrics, out / "metrics.json")
    shutil.rmtree(parts_dir, ignore_errors=True)
    return metrics, stats
