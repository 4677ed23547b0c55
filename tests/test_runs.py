"""pipeline/runs.py: fingerprints, atomic parts, resume after an interruption, shards, merge order, stale cleanup,
fingerprinted folders (training checkpoints) and the dask executor."""
from __future__ import annotations

import functools
import json

import pyarrow as pa
import pytest

from pipeline import runs


def _table(unit: int) -> pa.Table:
    return pa.table({"unit": [unit] * (unit % 3 + 1), "square": [unit * unit] * (unit % 3 + 1)})


class Produce:
    """Counts calls; raises at `fail_at` (an interrupted run)."""

    def __init__(self, fail_at: int | None = None):
        self.calls: list[int] = []
        self.fail_at = fail_at

    def __call__(self, unit: int) -> pa.Table:
        if unit == self.fail_at:
            raise KeyboardInterrupt("killed")
        self.calls.append(unit)
        return _table(unit)


UNITS = list(range(7))
EXPECTED = pa.concat_tables([_table(u) for u in UNITS])


def _run(tmp_path, fp="fp1", units=UNITS, shard=(0, 1)):
    return runs.Run(tmp_path / "parts", fp, units, name=lambda u: f"unit-{u:03d}", shard=shard)


def test_fingerprint_is_canonical_and_sensitive(tmp_path):
    assert runs.fingerprint({"a": 1, "b": [1, 2]}) == runs.fingerprint({"b": [1, 2], "a": 1})
    assert runs.fingerprint({"a": 1}) != runs.fingerprint({"a": 2})
    assert len(runs.fingerprint("x")) == 16 and len(runs.fingerprint("x", length=40)) == 40
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "w.bin").write_bytes(b"\x00\x01")
    (folder / "sub" / "c.json").write_text("{}")
    first = runs.path_digest(folder)
    (folder / ".complete").write_text("ok")  # builder marker: not content
    assert runs.path_digest(folder) == first
    (folder / "w.bin").write_bytes(b"\x00\x02")
    assert runs.path_digest(folder) != first
    (folder / "sub" / "c.json").rename(folder / "c.json")  # same bytes, other place
    changed = runs.path_digest(folder)
    (folder / "c.json").rename(folder / "sub" / "c.json")
    assert runs.path_digest(folder) != changed
    assert runs.path_digest("org/hub-model") != runs.path_digest("org/other-model")
    assert runs.path_digest(folder / "w.bin") != runs.path_digest(folder)


def test_interrupted_run_resumes_and_merges_the_same_table(tmp_path):
    first = Produce(fail_at=4)
    run = _run(tmp_path).start({"what": "test"})
    with pytest.raises(KeyboardInterrupt):
        run.execute(first)
    assert first.calls == [0, 1, 2, 3]
    assert sorted(p.name for p in run.folder.glob("*.parquet")) == [f"unit-{u:03d}.parquet" for u in range(4)]
    assert json.loads((run.folder / "run.json").read_text()) == {"fingerprint": "fp1", "what": "test"}
    assert not run.complete() and run.todo() == [4, 5, 6]
    with pytest.raises(FileNotFoundError, match="3 units have no part"):
        run.merge()

    again = Produce()
    seen = []
    resumed = _run(tmp_path)
    assert resumed.execute(again, on_unit=lambda u, t: seen.append((u, t.num_rows))) == 3
    assert again.calls == [4, 5, 6] and seen == [(4, 2), (5, 3), (6, 1)]
    assert resumed.complete() and resumed.merge().equals(EXPECTED)
    assert resumed.execute(Produce(fail_at=0)) == 0  # nothing left to do: produce is never called


def test_shards_split_the_units_and_the_last_one_merges(tmp_path):
    a, b = _run(tmp_path, shard=(0, 2)), _run(tmp_path, shard=(1, 2))
    assert a.mine() == [0, 2, 4, 6] and b.mine() == [1, 3, 5]
    pa_, pb = Produce(), Produce()
    a.execute(pa_)
    assert pa_.calls == [0, 2, 4, 6] and not a.complete() and a.missing() == [1, 3, 5]
    b.execute(pb)
    assert pb.calls == [1, 3, 5] and b.complete() and a.complete()
    assert b.merge().equals(EXPECTED)  # unit order, not finishing order


def test_temporary_and_stale_parts_are_not_results_and_are_cleared(tmp_path):
    old = _run(tmp_path, fp="old").start()
    old.execute(Produce())
    run = _run(tmp_path, units=UNITS[:5]).start()
    run.folder.joinpath("unit-000.parquet.123.tmp").write_bytes(b"half a file")  # a write cut by a kill
    assert not run.done(0) and run.todo() == [0, 1, 2, 3, 4]
    run.execute(Produce())
    run.part(9).write_bytes(b"")  # a part of a unit that is no longer in the run
    (tmp_path / "parts" / "notes.txt").write_text("kept: not a run folder")
    gone = run.clear_stale()
    assert "old" in gone and not old.folder.exists()
    assert sorted(p.name for p in run.folder.iterdir()) == ["run.json"] + [f"unit-{u:03d}.parquet" for u in range(5)]
    assert (tmp_path / "parts" / "notes.txt").exists()
    assert runs.clear_stale(tmp_path / "parts", keep=[]) == ["fp1"]


def test_run_units_in_one_call_and_in_memory(tmp_path):
    shard0 = runs.run_units(UNITS, Produce(), fingerprint="f", parts_dir=tmp_path, name=str, shard=(0, 2))
    assert shard0 is None  # the other shard's parts are missing
    merged = runs.run_units(UNITS, Produce(), fingerprint="f", parts_dir=tmp_path, name=str, shard=(1, 2),
                            merge=lambda ts: sum(t.num_rows for t in ts))
    assert merged == EXPECTED.num_rows
    p = Produce()
    assert runs.run_units(UNITS, p, fingerprint="f", parts_dir=None).equals(EXPECTED) and p.calls == UNITS


def test_bad_names_shards_and_fingerprints_are_rejected(tmp_path):
    for text in ("2/2", "a/b", "1", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            runs.parse_shard(text)
    assert runs.parse_shard("1/3") == (1, 3)
    with pytest.raises(ValueError, match="unique"):
        runs.Run(tmp_path, "f", [1, 1])
    with pytest.raises(ValueError, match="plain file name"):
        runs.Run(tmp_path, "f", ["a/b"])
    with pytest.raises(ValueError, match="plain folder name"):
        runs.Run(tmp_path, "", [1])


def test_claim_keeps_the_same_run_and_clears_another(tmp_path):
    folder = tmp_path / "checkpoints"
    assert not runs.claim(folder, "aaa")
    runs.mark(folder, "aaa", model="m")
    (folder / "checkpoint-1").mkdir()
    assert runs.folder_fingerprint(folder) == "aaa" and runs.claim(folder, "aaa")
    assert not runs.claim(folder, "bbb", clear=False) and (folder / "checkpoint-1").exists()
    assert not runs.claim(folder, "bbb") and not folder.exists()
    folder.mkdir()  # a folder without run.json belongs to no known run
    assert not runs.claim(folder, "aaa") and not folder.exists()


@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes"])
def test_dask_map_gives_every_unit_its_own_result(scheduler):
    produce = functools.partial(runs.fingerprint, length=8)  # picklable for spawned workers
    units = [f"u{i}" for i in range(9)]
    got = dict(runs.dask_map(scheduler, workers=2)(produce, units))
    assert got == {u: runs.fingerprint(u, length=8) for u in units}
    with pytest.raises(ValueError, match="unknown dask scheduler"):
        runs.dask_map("fast")


_WRITER = """
import sys
import pyarrow as pa
from pipeline.io import write_json
from pipeline.schema import write_table
out = sys.argv[1]
for i in range(300):
    write_table(pa.table({"x": list(range(2000))}), out + "/evidence.parquet")
    write_json({"rollouts": 2000}, out + "/metrics.json")
"""


def test_two_processes_write_one_output_at_once(tmp_path):
    """Probe shards that finish together both merge and write the evidence: each write replaces the file whole
    (a temporary file per process; one shared name made the second writer fail, seen as a flaky workers test)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errors)
    assert pq.read_table(tmp_path / "evidence.parquet").column("x").to_pylist() == list(range(2000))
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"rollouts": 2000}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evidence.parquet", "metrics.json"]  # no temporary left
