"""Gather and dedup hashing on a real dask.distributed cluster: a LocalCluster of 2 worker processes on this machine
(started once for the module) gives the same output bytes as the threads scheduler; `local-cluster` starts and
closes its own; a bad setting or an unreachable address says what to do."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from local_source import make_source
from pipeline import cluster
from pipeline.dedup.hashing import HashSpec, hash_files
from pipeline.gather.base import SourceParams
from pipeline.gather.collect import gather_rows, gather_source
from pipeline.gather.local import read_local
from pipeline.images import ImageParams

OPTS = ImageParams(max_pixels=4096, format="jpeg")
OUTPUTS = ("items.parquet", "quarantine.parquet", "metrics.json")


@pytest.fixture(scope="module")
def dask_cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            Client(lc) as client:
        yield lc, client


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> SourceParams:
    root = tmp_path_factory.mktemp("scale_src")
    return SourceParams(kind="local", path=str(make_source(root, 300)))


def _gather(src: SourceParams, out: Path, scheduler: str) -> dict:
    metrics, _ = gather_source(read_local(src), "s", OPTS, out / "s", fingerprint="fp", scheduler=scheduler,
                               num_workers=2, partition_size=16, part_rows=100)
    return metrics


@pytest.fixture(scope="module")
def threads_out(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("threads")
    _gather(source, out, "threads")
    return out


def test_gather_on_a_two_worker_cluster_is_byte_identical_to_threads(dask_cluster, source, threads_out, tmp_path):
    from distributed import get_task_stream

    lc, client = dask_cluster
    with get_task_stream(client) as ts:
        metrics = _gather(source, tmp_path, lc.scheduler_address)
    ran = [t for t in ts.data if "process_partition" in str(t["key"])]
    assert ran and {t["worker"] for t in ran} <= set(lc.scheduler_info["workers"]), "the rows were not processed on the cluster"
    assert metrics["rows_in"] == 300 and metrics["quarantined_by_reason"]["duplicate_id"] > 0 and metrics["counts_add_up"]
    for name in OUTPUTS:
        assert (tmp_path / "s" / name).read_bytes() == (threads_out / "s" / name).read_bytes(), name
    assert not (tmp_path / "s" / "_parts").exists()


def test_dedup_hashing_on_the_cluster_is_identical_to_threads(dask_cluster, threads_out, tmp_path):
    from stages.dedup import Params, run

    lc, _ = dask_cluster
    items = [threads_out / "s" / "items.parquet"]
    spec = HashSpec(crop_scales=(0.9,), crop_grid=2)
    h1, e1, _ = hash_files(items, spec, scheduler="threads", workers=2, chunk_rows=64)
    h2, e2, s2 = hash_files(items, spec, scheduler=lc.scheduler_address, chunk_rows=64, cache_dir=tmp_path / "cache")
    assert h1.shape == (len(e1), 5) and s2["chunks"] > 1 and np.array_equal(h1, h2) and e1 == e2

    outs = {}
    for scheduler in ("threads", lc.scheduler_address):
        root = tmp_path / scheduler.replace(":", "_").replace("/", "_")
        (root / "data/gather").mkdir(parents=True)
        (root / "data/gather/s").symlink_to(threads_out / "s")
        params = Params(sources=["s"], cache_dir="", scheduler=scheduler, crop_scales=[0.9], crop_grid=2, chunk_rows=64)
        assert run(params, argparse.Namespace(root=str(root))) == 0
        outs[scheduler] = {n: (root / "data/dedup" / n).read_bytes() for n in ("items.parquet", "exclusions.parquet", "report.json")}
    assert outs["threads"] == outs[lc.scheduler_address]
    assert b"duplicate" in outs["threads"]["report.json"]  # shared images: the comparison covers real clusters


def test_local_cluster_setting_starts_its_own_cluster(source):
    rows = list(read_local(SourceParams(kind="local", path=source.path, limit=40)))
    a = gather_rows(rows, "s", OPTS, scheduler="threads")
    b = gather_rows(rows, "s", OPTS, scheduler="local-cluster", num_workers=1, partition_size=8)  # 1: test time
    assert a.splits == b.splits and a.quarantine == b.quarantine and b.rows_in == 40 and a.splits["items"]


def test_unreachable_address_says_what_to_do():
    with pytest.raises(OSError, match=r"cannot reach the dask scheduler at tcp://127.0.0.1:9.*dask scheduler"):
        with cluster.client("tcp://127.0.0.1:9", connect_timeout=1):
            pass


def test_bad_scheduler_setting_lists_the_valid_ones():
    from stages.gather import Params

    with pytest.raises(ValueError, match="local-cluster"):
        Params(scheduler="cluster").validate()
    with pytest.raises(ValueError, match="tcp://host:8786"):
        cluster.check("dask")
