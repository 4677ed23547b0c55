"""Long runs in finished pieces: one fingerprint, one part file per unit, resume, shards, merge, stale cleanup.

A long stage cuts its work into *units* (a probe batch, an evaluate model x dataset x mode, a hashing chunk). Each
finished unit is one parquet *part*, written atomically to `<parts_dir>/<fingerprint>/<unit name>.parquet`. The
fingerprint hashes everything that shapes the results (settings, model bytes, the input ids), so changed inputs never
reuse a stale part. A killed run started again skips the units whose part exists. With `shard=(i, n)` a process runs
only the units at positions b with b % n == i; whichever process finds every part present merges them, in unit
order, so the result is the same with or without kills and shards. After a merge, folders of other fingerprints and
leftover temporary or unknown part files are removed.

    run = Run(parts_dir, fingerprint(settings, path_digest(model), item_ids), batches,
              name=lambda b: f"batch-{b:05d}", shard=parse_shard("1/2"))
    run.start({"settings": settings})          # the folder and its run.json
    run.execute(produce)                       # produce(unit) -> pyarrow.Table, for this shard's missing units
    if run.complete():
        table = run.merge()                    # concatenated in unit order
        run.clear_stale()

`run_units(...)` does the same in one call. `execute(..., map_units=dask_map(scheduler, workers))` runs the units on
dask (local threads or processes, a `local-cluster`, or a `tcp://` distributed scheduler); results come back to this
process, which writes the parts, so workers need no shared disk. Without a parts folder (`parts_dir=None`) parts stay in memory.

Training keeps TRL's checkpoints; it uses `fingerprint`, `path_digest` and `claim` (a folder made under another
fingerprint is cleared before it could mix two runs). Reads and writes only the folders it is given.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

MANIFEST = "run.json"  # {"fingerprint": ..., ...} in every fingerprinted folder
PART_SUFFIX = ".parquet"

Produce = Callable[[Any], Any]  # unit -> pyarrow.Table
MapUnits = Callable[[Produce, Sequence[Any]], Iterable[tuple[Any, Any]]]  # yields (unit, table) as units finish


# ---------------------------------------------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------------------------------------------
def fingerprint(*values: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of `values` (sorted keys; non-JSON values by their str), first `length` hex."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def path_digest(path: str | os.PathLike) -> str:
    """sha256 over the relative names and bytes of the files under a folder, or of one file. A path that does not
    exist (a Hub id) is hashed as its text. Builder markers (`.complete`) are left out."""
    root = Path(path)
    h = hashlib.sha256()
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".complete")
        names = [p.relative_to(root).as_posix() for p in files]
    elif root.is_file():
        files, names = [root], [root.name]
    else:
        h.update(f"missing:{path}".encode())
        return h.hexdigest()
    for f, name in zip(files, names):
        h.update(name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# fingerprinted folders
# ---------------------------------------------------------------------------------------------------------------
def folder_fingerprint(folder: str | os.PathLike) -> str | None:
    """The fingerprint recorded in `folder/run.json`, or None (no folder, no file, unreadable file)."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def mark(folder: str | os.PathLike, fp: str, **info: Any) -> None:
    """Create `folder` and record (atomically) that it holds the work of the run with fingerprint `fp`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({**info, "fingerprint": fp}, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, folder / MANIFEST)


def claim(folder: str | os.PathLike, fp: str, *, clear: bool = True) -> bool:
    """Whether `folder` holds the work of the run with fingerprint `fp`. A folder of another run (or of none) is
    deleted when `clear`: its content would silently mix two runs."""
    folder = Path(folder)
    if not folder.exists():
        return False
    if folder_fingerprint(folder) == fp:
        return True
    if clear:
        shutil.rmtree(folder, ignore_errors=True)
    return False


def clear_stale(parts_dir: str | os.PathLike, keep: Iterable[str]) -> list[str]:
    """Remove the sub-folders of `parts_dir` not named in `keep` (parts of runs with other fingerprints); files
    beside them are left alone. Returns the names removed."""
    root, keep = Path(parts_dir), set(keep)
    gone = []
    for sub in sorted(root.iterdir()) if root.is_dir() else []:
        if sub.is_dir() and sub.name not in keep:
            shutil.rmtree(sub, ignore_errors=True)
            gone.append(sub.name)
    return gone


# ---------------------------------------------------------------------------------------------------------------
# shards and executors
# ---------------------------------------------------------------------------------------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; a clear ValueError otherwise."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} must look like i/n, e.g. 0/2") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def sequential_map(produce: Produce, units: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    """Run units one after another in this process."""
    for unit in units:
        yield unit, produce(unit)


def dask_map(scheduler: str = "threads", workers: int = 2) -> MapUnits:
    """An executor on dask: "synchronous", "threads", "processes" (`workers` local workers, one pool for the whole
    run), "local-cluster" (a dask.distributed LocalCluster of `workers` processes) or a distributed scheduler
    address "tcp://host:8786" (see pipeline/cluster.py). `produce` must be picklable for processes and distributed
    workers (a module-level function or a functools.partial of one)."""
    from pipeline import cluster

    if scheduler not in ("sync", "single-threaded"):
        try:
            cluster.check(scheduler)
        except ValueError:
            raise ValueError(f"unknown dask scheduler {scheduler!r}: use {cluster.HELP}") from None

    def run(produce: Produce, units: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        import dask

        units = list(units)
        if not units:
            return
        tasks = [dask.delayed(produce, pure=False)(u) for u in units]
        if cluster.is_distributed(scheduler):
            from dask.distributed import as_completed

            with cluster.client(scheduler, workers) as client:
                futures = client.compute(tasks)
                where = {f.key: k for k, f in enumerate(futures)}
                for fut in as_completed(futures):
                    yield units[where[fut.key]], fut.result()
            return
        with _local_pool(scheduler, workers) as pool:
            step = max(1, workers * 2)  # a few units per worker per round keep progress moving at little cost
            for b in range(0, len(tasks), step):
                extra = {"pool": pool} if pool is not None else {}
                done = dask.compute(*tasks[b:b + step], scheduler=scheduler, num_workers=workers, **extra)
                yield from zip(units[b:b + step], done)

    return run


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _local_pool(scheduler: str, workers: int):
    """One executor reused by every round (a process pool per `dask.compute` call would re-spawn workers)."""
    import concurrent.futures as cf
    import multiprocessing

    if scheduler == "processes":
        return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    if scheduler == "threads":
        return cf.ThreadPoolExecutor(max_workers=workers)
    return _NoPool()


# ---------------------------------------------------------------------------------------------------------------
# a run
# ---------------------------------------------------------------------------------------------------------------
class Run:
    """Named units of one fingerprinted run and their part files (see the module docstring).

    `units`: any objects, in the order of the merged result; `name(unit)` gives each a unique file-name-safe name
    (default `str`). `parts_dir=None` keeps parts in memory (no resume)."""

    def __init__(self, parts_dir: str | os.PathLike | None, fingerprint: str, units: Sequence[Any], *,
                 name: Callable[[Any], str] = str, shard: tuple[int, int] = (0, 1)):
        self.root = Path(parts_dir) if parts_dir is not None else None
        self.fingerprint = fingerprint
        self.units = list(units)
        self.name = name
        self.shard = shard
        names = [name(u) for u in self.units]
        bad = [n for n in names if not n or "/" in n or os.sep in n or n.startswith(".")]
        if bad:
            raise ValueError(f"unit name {bad[0]!r} is not a plain file name")
        if len(set(names)) != len(names):
            raise ValueError("unit names must be unique")
        if not fingerprint or "/" in fingerprint:
            raise ValueError(f"fingerprint {fingerprint!r} is not a plain folder name")
        i, n = shard
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard {i}/{n}: need 0 <= i < n")
        self._memory: dict[str, Any] = {}

    @property
    def folder(self) -> Path | None:
        return self.root / self.fingerprint if self.root is not None else None

    def part(self, unit: Any) -> Path:
        if self.folder is None:
            raise ValueError("this run keeps its parts in memory")
        return self.folder / f"{self.name(unit)}{PART_SUFFIX}"

    def done(self, unit: Any) -> bool:
        return self.name(unit) in self._memory if self.folder is None else self.part(unit).exists()

    def mine(self) -> list:
        """This shard's units: positions b with b % n == i."""
        i, n = self.shard
        return [u for b, u in enumerate(self.units) if b % n == i]

    def todo(self) -> list:
        """This shard's units without a part."""
        return [u for u in self.mine() if not self.done(u)]

    def missing(self) -> list:
        """All units (of every shard) without a part."""
        return [u for u in self.units if not self.done(u)]

    def complete(self) -> bool:
        return not self.missing()

    def start(self, manifest: dict | None = None) -> "Run":
        """Create the folder and its run.json (the fingerprint and `manifest`, for a person reading the folder)."""
        if self.folder is not None:
            mark(self.folder, self.fingerprint, **(manifest or {}))
        return self

    def write(self, unit: Any, table: Any) -> None:
        """Store one unit's table: a temporary file renamed into place, so a part is whole or absent."""
        if self.folder is None:
            self._memory[self.name(unit)] = table
            return
        import pyarrow.parquet as pq

        path = self.part(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)

    def read(self, unit: Any) -> Any:
        if self.folder is None:
            return self._memory[self.name(unit)]
        import pyarrow.parquet as pq

        return pq.read_table(self.part(unit))

    def execute(self, produce: Produce, *, map_units: MapUnits | None = None,
                on_unit: Callable[[Any, Any], None] | None = None) -> int:
        """Produce and store every missing unit of this shard; `on_unit(unit, table)` after each. Returns how many
        units ran."""
        todo = self.todo()
        for unit, table in (map_units or sequential_map)(produce, todo):
            self.write(unit, table)
            if on_unit is not None:
                on_unit(unit, table)
        return len(todo)

    def merge(self, combine: Callable[[list], Any] | None = None, schema: Any = None) -> Any:
        """The parts in unit order, through `combine` (default: one concatenated table; with no units, an empty
        table of `schema`). Raises when a part is missing (see `complete`)."""
        missing = self.missing()
        if missing:
            raise FileNotFoundError(f"{len(missing)} units have no part yet (first: {self.name(missing[0])!r})")
        tables = [self.read(u) for u in self.units]
        if combine is not None:
            return combine(tables)
        import pyarrow as pa

        if not tables:
            return schema.empty_table() if schema is not None else pa.table({})
        return pa.concat_tables(tables)

    def clear_stale(self, keep: Iterable[str] = ()) -> list[str]:
        """Remove other fingerprints' folders (except `keep`) and, in this folder, temporary files and parts of
        units that are not in this run. Returns what was removed."""
        if self.folder is None:
            return []
        gone = clear_stale(self.root, {self.fingerprint, *keep})
        names = {self.name(u) + PART_SUFFIX for u in self.units}
        for f in sorted(self.folder.iterdir()) if self.folder.is_dir() else []:
            if f.is_file() and f.name != MANIFEST and f.name not in names:
                f.unlink(missing_ok=True)
                gone.append(f"{self.fingerprint}/{f.name}")
        return gone


def run_units(units: Sequence[Any], produce: Produce, *, fingerprint: str, parts_dir: str | os.PathLike | None,
              name: Callable[[Any], str] = str, shard: tuple[int, int] = (0, 1), manifest: dict | None = None,
              merge: Callable[[list], Any] | None = None, map_units: MapUnits | None = None,
              on_unit: Callable[[Any, Any], None] | None = None) -> Any | None:
    """One call: start the run, produce this shard's missing units, and, when every part exists, merge them (unit
    order), clear stale parts and return the merged result; None while other shards' parts are missing."""
    run = Run(parts_dir, fingerprint, units, name=name, shard=shard).start(manifest)
    run.execute(produce, map_units=map_units, on_unit=on_unit)
    if not run.complete():
        return None
    merged = run.merge(merge)
    run.clear_stale()
    return merged
