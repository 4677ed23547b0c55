"""Where dask work runs: a `scheduler` setting -> a dask executor for `dask.compute`, opened and closed here.

Settings (gather.scheduler, dedup.scheduler):
  synchronous | threads | processes   dask's local schedulers, `workers` threads or processes on this machine
  local-cluster                        a `distributed.LocalCluster` of `workers` worker processes (one thread each),
                                       started for the run and closed after it
  tcp://host:8786 (any "://" address)  an existing `distributed` scheduler: `dask scheduler` + `dask worker`,
                                       dask-jobqueue (`cluster.scheduler_address`), a Kubernetes scheduler service...
                                       Any cluster manager that gives an address works; there is no code per kind.
Workers of a distributed cluster must be able to import this project (the same environment) and read the files
the rows point to (image paths); results come back to this process, which writes every output file.
Reads and writes nothing.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

LOCAL = ("synchronous", "threads", "processes")
LOCAL_CLUSTER = "local-cluster"
HELP = "synchronous | threads | processes | local-cluster | tcp://host:8786 (a running dask.distributed scheduler)"


def check(scheduler: str) -> str:
    """The setting, or a ValueError that lists the valid ones."""
    if scheduler in LOCAL or scheduler == LOCAL_CLUSTER or "://" in scheduler:
        return scheduler
    raise ValueError(f"scheduler {scheduler!r}: use {HELP}")


def is_distributed(scheduler: str) -> bool:
    return scheduler == LOCAL_CLUSTER or "://" in scheduler


@contextlib.contextmanager
def client(scheduler: str, workers: int = 2, *, connect_timeout: float = 30.0):
    """A `distributed.Client` for `local-cluster` (a new LocalCluster of `workers` processes) or an address."""
    from distributed import Client, LocalCluster

    check(scheduler)
    if scheduler == LOCAL_CLUSTER:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
                Client(cl) as c:
            yield c
        return
    try:
        c = Client(scheduler, timeout=connect_timeout)
    except OSError as exc:
        raise OSError(f"cannot reach the dask scheduler at {scheduler} ({exc}); start one (`dask scheduler`, then "
                      f"`dask worker {scheduler}`) or set scheduler: threads") from None
    with c:
        yield c


@contextlib.contextmanager
def compute_kwargs(scheduler: str, workers: int = 2) -> Iterator[dict]:
    """Keyword arguments for `dask.compute` that run on `scheduler`, valid inside the `with` block. Local process
    and thread pools are made once for the block, so repeated computes do not re-spawn workers."""
    import concurrent.futures as cf
    import multiprocessing

    check(scheduler)
    if is_distributed(scheduler):
        with client(scheduler, workers) as c:
            yield {"scheduler": c}
        return
    if scheduler == "synchronous":
        yield {"scheduler": "synchronous"}
        return
    pool = (cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            if scheduler == "processes" else cf.ThreadPoolExecutor(max_workers=workers))
    with pool:
        yield {"scheduler": scheduler, "num_workers": workers, "pool": pool}
