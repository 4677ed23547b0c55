"""Streaming gather that resumes: a real SIGKILL of `python -m stages gather` midway, then a re-run, gives the bytes
of an uninterrupted gather and does not process the parts the killed run finished; the streamed items writer
matches `write_items`; parts of another fingerprint are never reused."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from local_source import make_source
from pipeline.gather.base import SourceParams
from pipeline.gather.collect import ItemsWriter, gather_rows, gather_source, write_outputs
from pipeline.gather.local import read_local
from pipeline.images import ImageParams
from pipeline.schema import write_items

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("items.parquet", "quarantine.parquet", "metrics.json")


def test_sigkill_mid_gather_then_rerun_is_byte_identical_and_skips_finished_parts(tmp_path):
    rows_path = make_source(tmp_path / "src", 1200, side=160)
    params = tmp_path / "params.yaml"
    params.write_text(
        f"gather:\n  out_dir: {tmp_path / 'out'}\n  scheduler: threads\n  num_workers: 1\n  partition_size: 20\n"
        f"  part_rows: 40\n  image: {{max_pixels: 4096}}\n  sources:\n    s: {{kind: local, path: {rows_path}}}\n")
    cmd = [sys.executable, "-m", "stages", "gather", "--params", str(params), "--source", "s"]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    parts = tmp_path / "out" / "s" / "_parts"

    child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*/part-*.parquet"))) < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stdout.read().decode()[-2000:]
    finished = sorted(p.name for p in parts.glob("*/part-*.parquet"))
    assert 3 <= len(finished) < 30, f"the kill should land midway (30 parts), found {len(finished)} finished"
    assert not (tmp_path / "out" / "s" / "items.parquet").exists()

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    m = re.search(r"gather s: (\d+) parts: (\d+) finished by an earlier run, (\d+) processed", again.stdout)
    assert m, again.stdout
    total, resumed, processed = map(int, m.groups())  # the killed child is gone: its finished parts are those listed
    assert total == 30 and resumed == len(finished) and processed == total - resumed
    assert not parts.exists(), "the parts folder is removed once the outputs are written"

    src = SourceParams(kind="local", path=str(rows_path))
    write_outputs(gather_rows(read_local(src), "s", ImageParams(max_pixels=4096), scheduler="synchronous"), tmp_path / "ref")
    for name in OUTPUTS:
        assert (tmp_path / "out" / "s" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_streamed_items_writer_is_byte_identical_to_write_items(tmp_path):
    src = SourceParams(kind="local", path=str(make_source(tmp_path / "src", 700, side=8)), require_image=False)
    items = gather_rows(read_local(src), "s", ImageParams(), scheduler="synchronous").splits["items"]
    assert len(items) > 2 * 256 + 1
    write_items(items, tmp_path / "all.parquet")
    w = ItemsWriter(tmp_path / "streamed.parquet", buffer_groups=1)  # a flush every 256 rows: several writes
    for row in items:
        w.add(row)
    assert w.close() == len(items)
    assert (tmp_path / "streamed.parquet").read_bytes() == (tmp_path / "all.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "streamed.parquet").num_row_groups == -(-len(items) // 256)


def test_parts_of_another_fingerprint_are_not_reused(tmp_path):
    src = SourceParams(kind="local", path=str(make_source(tmp_path / "src", 90, side=8)))
    stale = tmp_path / "out" / "_parts" / "oldfp"
    stale.mkdir(parents=True)
    pq.write_table(pa.table({"kind": ["item"], "row": [b"not a row"]}), stale / "part-000000.parquet")
    metrics, stats = gather_source(read_local(src), "s", ImageParams(), tmp_path / "out", fingerprint="newfp",
                                   scheduler="synchronous", part_rows=32)
    assert stats.parts == 3 and stats.resumed == [] and stats.processed == [0, 1, 2]
    assert metrics["rows_in"] == 90 and metrics["counts_add_up"] and not (tmp_path / "out" / "_parts").exists()
