"""The per-row step of a gather in parts: raw rows read `part_rows` at a time, each part processed on dask, kept.

Reads raw rows from an iterator, one part at a time (the source is never held whole in memory); a part's rows go
through `convert.process_row` in dask partitions of `partition_size` rows, on the scheduler named by the setting
(pipeline/cluster.py: threads, processes, local-cluster, tcp://...). Results keep input order, so they do not
depend on the scheduler or the partitioning.

With a `pipeline.runs.Run` (parts on disk), every finished part is one parquet file (per row: the kind, "item" or
"quarantine", and the pickled result) under `<parts_dir>/<fingerprint>/part-NNNNNN.parquet`, written atomically. A
gather killed midway and started again reads the source again but does not process the parts already there
(`PartStats.resumed`). Writes only that folder; `source_fingerprint` names what a part depends on.
"""
from __future__ import annotations

import dataclasses
import itertools
import pickle
from pathlib import Path
from typing import Iterable, Iterator

from pipeline import cluster, runs
from pipeline.gather.convert import process_row
from pipeline.images import ImageParams


@dataclasses.dataclass
class PartStats:
    """What one pass over the source did: parts seen, rows read, which parts were found finished, which processed."""

    parts: int = 0
    rows: int = 0
    resumed: list[int] = dataclasses.field(default_factory=list)
    processed: list[int] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        return f"{self.parts} parts: {len(self.resumed)} finished by an earlier run, {len(self.processed)} processed"


def part_name(index: int) -> str:
    return f"part-{index:06d}"


class Rows:
    """A list of raw rows passed to a dask task as one opaque value: dask neither hashes nor walks it (a bag made
    with from_sequence tokenizes every row, which cost more than the rows' processing)."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __getstate__(self):
        return self.rows

    def __setstate__(self, rows):
        self.rows = rows


def _process_partition(rows: Rows, source: str, opts: ImageParams, require_image: bool) -> list[tuple[str, dict]]:
    return [process_row(r, source, opts, require_image) for r in rows.rows]


def batches(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive lists of `size` rows (the last may be shorter), read lazily."""
    it = iter(rows)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


def _compute(rows: list[dict], kwargs: dict, source: str, opts: ImageParams, require_image: bool,
             partition_size: int) -> list[tuple[str, dict]]:
    """One dask task per `partition_size` rows; results concatenated in input order."""
    import dask

    size = max(1, partition_size)
    tasks = [dask.delayed(_process_partition, pure=False)(Rows(rows[i:i + size]), source, opts, require_image)
             for i in range(0, len(rows), size)]
    return [r for part in dask.compute(*tasks, **kwargs) for r in part]


def to_table(results: list[tuple[str, dict]]):
    """A part's results as a table: kind (string) and row (pickled dict, exactly as process_row returned it)."""
    import pyarrow as pa

    return pa.table({"kind": pa.array([k for k, _ in results], pa.string()),
                     "row": pa.array([pickle.dumps(r, protocol=5) for _, r in results], pa.binary())})


def from_table(table) -> list[tuple[str, dict]]:
    return [(k, pickle.loads(r)) for k, r in zip(table.column("kind").to_pylist(), table.column("row").to_pylist())]


def process_parts(
    raws: Iterable[dict], source: str, opts: ImageParams, *, require_image: bool = True, scheduler: str = "threads",
    num_workers: int = 2, partition_size: int = 64, part_rows: int = 4096, run: runs.Run | None = None,
    stats: PartStats | None = None,
) -> Iterator[tuple[int, list[tuple[str, dict]] | None]]:
    """Yield (part index, results) in input order. With `run`, a part whose file exists is not processed (results
    None: read it with `run.read`), and every processed part is written there before it is yielded."""
    stats = stats if stats is not None else PartStats()
    with cluster.compute_kwargs(scheduler, num_workers) as kwargs:
        for index, rows in enumerate(batches(raws, max(1, part_rows))):
            stats.parts, stats.rows = index + 1, stats.rows + len(rows)
            if run is not None and run.done(index):
                stats.resumed.append(index)
                yield index, None
                continue
            results = _compute(rows, kwargs, source, opts, require_image, partition_size)
            if run is not None:
                run.write(index, to_table(results))
            stats.processed.append(index)
            yield index, results


def source_fingerprint(name: str, params, *settings) -> str:
    """What a gather's parts depend on: the source name and settings, and the bytes of its data files (local and
    mmsearch_r1 files, an hf folder) or its Hub id and revision. Image files that rows point to are not hashed."""
    from pipeline.gather.local import data_files

    if params.kind in ("local", "mmsearch_r1"):
        data = [(p.name, runs.path_digest(p)) for p in data_files(Path(params.path))]
    elif params.path:
        data = [runs.path_digest(params.path)]
    else:
        data = [params.name, params.config, params.split, params.revision]
    return runs.fingerprint(name, dataclasses.asdict(params), [_plain(s) for s in settings], data)


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
