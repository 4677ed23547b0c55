"""The multi-turn rollout loop, both engines and the probe stage's resumability, on a small real search world.

Tiny random models are first warmed up on protocol demonstrations (tests/train_world.py) so that their rollouts
contain real image searches through the local indexes and the cache.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from train_world import build_world

    return build_world(tmp_path_factory.mktemp("probe_world"))


@pytest.fixture(scope="module")
def warm_text(world, tiny_text_model_path, tmp_path_factory):
    """The tiny text model after the bootstrap's own cold start on demonstrations built with the real tools."""
    from pipeline.bootstrap import build_demonstrations
    from trainer.sft import ColdStartParams, cold_start
    from pipeline.rollout.protocols import get_protocol
    from pipeline.search import SearchTools

    proto = get_protocol("mmsearch_r1")
    tools = SearchTools.from_params(world.search, world.root)
    demos, counts = build_demonstrations(world.items, proto, tools, {}, with_image=False)
    assert counts == {"image_only/image": 8, "tools/image": 8}  # every flag found by the real image search
    out = tmp_path_factory.mktemp("warm_text")
    stats = cold_start(tiny_text_model_path, demos, out, protocol=proto, log=None,
                       params=ColdStartParams(steps=60, lr=3e-3, train_layers=0, batch_tokens=2048))
    assert stats["loss_last"] < stats["loss_first"] / 3
    return str(out)


@pytest.fixture(scope="module")
def warm_vlm(world, tiny_vlm_path, tmp_path_factory):
    from train_world import warm_up

    return warm_up(str(tiny_vlm_path), world, tmp_path_factory.mktemp("warm_vlm"), steps=40)


@pytest.fixture(scope="module")
def tools(world):
    from pipeline.search import SearchTools

    t = SearchTools.from_params(world.search, world.root)
    yield t
    t.close()


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]


def _check_rows(rows, items, condition, k, protocol, saw_image):
    from pipeline.schema import ROLLOUT_FEATURES

    assert len(rows) == len(items) * k
    assert [r["rollout_id"] for r in rows] == [f"{it['id']}/{condition}/{s}" for it in items for s in range(k)]
    for r in rows:
        assert set(r) == set(ROLLOUT_FEATURES)
        assert r["protocol"] == protocol and r["saw_image"] is saw_image
        msgs = json.loads(r["messages"])
        assert msgs[-1]["role"] == "assistant" and r["prompt_tokens"] > 0 and r["completion_tokens"] > 0
        assert len(r["actions"]) == sum(m["role"] == "assistant" for m in msgs) <= 3
        calls = json.loads(r["tool_calls"])
        executed = [c for c in calls if not c["refused"]]
        assert r["n_image_search"] + r["n_text_search"] == len(executed)
        assert all(len(c["cache_key"]) > 8 for c in executed)
        # images never travel in the evidence, only their sha1
        assert "bytes" not in r["messages"]
        if r["final_answer"]:
            assert "<answer>" in msgs[-1]["content"]  # the scorer reads the answer of the last turn
        else:
            assert not r["correct"]
    _reward_agrees_with_evidence(rows, protocol)


def _reward_agrees_with_evidence(rows, protocol_name):
    """The GRPO reward, given each rollout as a completion, sees the same format, answer and search count as the
    evidence (one scorer for labels and rewards)."""
    from pipeline.rollout.protocols import get_protocol
    from trainer.rewards import RewardParams, resolve

    proto = get_protocol(protocol_name)
    fn = resolve("format", RewardParams(), proto, rows[0]["condition"])
    completions = []
    for r in rows:
        msgs = json.loads(r["messages"])
        first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        completions.append(msgs[first:])
    scored = fn.scorer.score(completions, ["x"] * len(rows))
    assert [s["format"] == 1.0 for s in scored] == [r["valid_format"] for r in rows]
    assert [s["trajectory"].search_count for s in scored] == [r["search_count"] for r in rows]
    assert [s["trajectory"].answer or "" for s in scored] == [r["final_answer"] for r in rows]


@pytest.mark.parametrize("protocol_name", ["mmsearch_r1", "tool_calls"])
@pytest.mark.parametrize("model", ["text", "vlm"])
def test_loop_with_transformers_engine(protocol_name, model, world, tools, warm_text, warm_vlm):
    from pipeline.rollout.engines import Sampling, make_engine
    from pipeline.rollout.loop import run_rollouts
    from pipeline.rollout.protocols import get_protocol

    proto = get_protocol(protocol_name)
    path = warm_text if model == "text" else warm_vlm
    engine = make_engine("transformers", path, protocol=proto, seed=0)
    items = world.items[:4]
    sampling = Sampling(temperature=0.5, max_tokens=48)
    rows = run_rollouts(engine, proto, tools, items, "tools", 2, "em", sampling=sampling, seed=3)
    _check_rows(rows, items, "tools", 2, protocol_name, saw_image=(model == "vlm"))
    again = run_rollouts(engine, proto, tools, items, "tools", 2, "em", sampling=sampling, seed=3)
    assert _strip(rows) == _strip(again)
    if protocol_name == "mmsearch_r1" and model == "text":
        # the cold-started model searches; its image searches ran through the real index and the cache
        searched = [r for r in rows if r["n_image_search"]]
        assert searched, [json.loads(r["messages"])[-1]["content"] for r in rows]
        msgs = json.loads(searched[0]["messages"])
        assert msgs[2]["role"] == "tool" and "Flag of" in json.dumps(msgs[2])
    closed = run_rollouts(engine, proto, None, items, "closed_book", 1, "em", sampling=sampling, seed=3)
    assert all(r["n_image_search"] + r["n_text_search"] == 0 for r in closed)


def test_text_only_model_never_sees_images(world, tools, warm_text):
    from pipeline.rollout.engines import make_engine
    from pipeline.rollout.protocols import get_protocol

    proto = get_protocol("mmsearch_r1")
    engine = make_engine("transformers", warm_text, protocol=proto)
    msgs = proto.initial_messages(world.items[0], "tools", with_image=True)
    text, images = engine.render(msgs)
    assert images == [] and "<|image_pad|>" not in text


@pytest.fixture(scope="module")
def vllm_engine(warm_text):
    from pipeline.rollout.engines import EngineParams, make_engine
    from pipeline.rollout.protocols import get_protocol

    engine = make_engine("vllm", warm_text, protocol=get_protocol("mmsearch_r1"), seed=0,
                         params=EngineParams(max_model_len=2048, block_size=32))  # the demo's block size
    yield engine
    engine.close()


def test_vllm_engine_loop_is_batch_deterministic(world, tools, vllm_engine):
    from pipeline.rollout.engines import Sampling
    from pipeline.rollout.loop import run_rollouts

    proto = vllm_engine.protocol
    sampling = Sampling(temperature=0.5, max_tokens=48)
    a, b = world.items[:4], world.items[4:]
    first = run_rollouts(vllm_engine, proto, tools, a, "tools", 3, "em", sampling=sampling, seed=11)
    _check_rows(first, a, "tools", 3, "mmsearch_r1", saw_image=False)
    assert any(r["n_image_search"] for r in first)
    # another batch in between (different prefix cache and RNG history) must not change batch `a`
    run_rollouts(vllm_engine, proto, tools, b, "tools", 3, "em", sampling=sampling, seed=12)
    assert _strip(run_rollouts(vllm_engine, proto, tools, a, "tools", 3, "em", sampling=sampling, seed=11)) == _strip(first)
    other = run_rollouts(vllm_engine, proto, tools, a, "tools", 3, "em", sampling=sampling, seed=99)
    assert [r["messages"] for r in other] != [r["messages"] for r in first]


def test_vllm_and_transformers_render_the_same_prompt(world, vllm_engine, warm_text):
    from pipeline.rollout.engines import make_engine

    proto = vllm_engine.protocol
    hf = make_engine("transformers", warm_text, protocol=proto)
    msgs = proto.initial_messages(world.items[0], "tools", with_image=False)
    assert vllm_engine.render(msgs) == hf.render(msgs)
    outs = vllm_engine.generate([msgs, msgs], n=2)
    assert [len(o) for o in outs] == [2, 2] and outs[0][0].prompt_tokens > 10


def test_vllm_prefix_cache_is_counted_in_blocks(world, vllm_engine):
    """A repeated prompt comes from the prefix cache in whole 32-token blocks; begin_batch forgets it."""
    proto = vllm_engine.protocol
    msgs = proto.initial_messages(world.items[0], "tools", with_image=False)
    vllm_engine.begin_batch()
    vllm_engine.token_counts.clear()
    first = vllm_engine.generate([msgs], n=1)[0][0]
    again = vllm_engine.generate([msgs], n=1)[0][0]
    n = first.prompt_tokens
    assert n > 64 and first.cached_prompt_tokens == 0
    assert again.cached_prompt_tokens % 32 == 0 and n - 32 <= again.cached_prompt_tokens < n
    assert vllm_engine.token_counts["prompt"] == 2 * n
    assert vllm_engine.token_counts["cached_prompt"] == again.cached_prompt_tokens
    assert vllm_engine.token_counts["completion"] == first.completion_tokens + again.completion_tokens
    vllm_engine.begin_batch()
    assert vllm_engine.generate([msgs], n=1)[0][0].cached_prompt_tokens == 0


def test_engine_params_reject_bad_block_size():
    from pipeline.rollout.engines import EngineParams

    for bad in (dict(block_size=-32), dict(kv_cache_gib=0)):
        with pytest.raises(ValueError, match="block_size must be >= 0"):
            EngineParams(**bad).validate()


# ---------------------------------------------------------------------------------------------------------------
# probe stage: kill -9 in the middle, run again => same evidence as an uninterrupted run
# ---------------------------------------------------------------------------------------------------------------
def _probe_env(world, warm_text, name: str, batch_items: int = 2) -> tuple[Path, list[str], dict]:
    from pipeline.config import to_dict
    from pipeline.schema import write_items

    items_file = world.root / "data" / "items.parquet"
    if not items_file.exists():
        write_items(world.items, items_file)
    params = {
        "search": to_dict(world.search),
        "probe": {"items": str(items_file), "out_dir": str(world.root / name / "probe"),
                  "parts_dir": str(world.root / name / "parts"), "model": warm_text, "samples": 2,
                  "conditions": ["tools"], "adaptive": {"enabled": False},
                  "batch_items": batch_items, "engine": {"kind": "transformers", "max_batch": 8},
                  "sampling": {"max_tokens": 48, "temperature": 0.5}},
    }
    pfile = world.root / f"{name}.yaml"
    pfile.write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "1"}
    cmd = [sys.executable, "-m", "stages", "probe", "--params", str(pfile)]
    return world.root / name, cmd, env


def _evidence(out: Path) -> list[dict]:
    """Evidence rows without the wall-clock latency (a measurement, the only column that may differ)."""
    import pyarrow.parquet as pq

    return pq.read_table(out / "probe" / "tools" / "evidence.parquet").drop(["latency_s"]).to_pylist()


def test_probe_kill_and_resume_gives_the_same_evidence(world, warm_text):
    out_full, cmd_full, env = _probe_env(world, warm_text, "full")
    subprocess.run(cmd_full, cwd=world.root, env=env, check=True, capture_output=True)
    full = _evidence(out_full)

    out_kill, cmd_kill, env = _probe_env(world, warm_text, "killed")
    proc = subprocess.Popen(cmd_kill, cwd=world.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out_kill / "parts").glob("*/batch-00001.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (out_kill / "parts").glob("*/batch-*.parquet"))
    assert 2 <= len(done) < 4, done  # killed in the middle: some batches finished, not all
    assert not (out_kill / "probe" / "tools" / "evidence.parquet").exists()
    res = subprocess.run(cmd_kill, cwd=world.root, env=env, check=True, capture_output=True, text=True)
    assert f"{len(done)} batches already done" in res.stdout
    assert _evidence(out_kill) == full
    metrics = json.loads((out_kill / "probe" / "metrics.json").read_text())
    assert metrics["rollouts"] == 16 and metrics["items"] == 8 and metrics["per_condition"]["tools"]["rollouts"] == 16


def test_probe_shards_give_the_same_evidence(world, warm_text):
    out_a, cmd, env = _probe_env(world, warm_text, "sharded")
    first = subprocess.run(cmd + ["--shard", "1/2"], cwd=world.root, env=env, check=True, capture_output=True, text=True)
    assert "missing" in first.stdout and not (out_a / "probe" / "tools" / "evidence.parquet").exists()
    subprocess.run(cmd + ["--shard", "0/2"], cwd=world.root, env=env, check=True, capture_output=True)
    out_full = world.root / "full" / "probe" / "tools" / "evidence.parquet"
    if out_full.exists():  # written by the kill-and-resume test earlier in the same pytest run
        assert _evidence(out_a) == _evidence(world.root / "full")


def test_probe_workers_give_the_same_evidence(world, warm_text):
    """workers=2: two worker processes, each with its own engine, play one shard each; the stage merges them into
    the evidence one process gives."""
    out_full, cmd_full, env = _probe_env(world, warm_text, "full")
    if not (out_full / "probe" / "tools" / "evidence.parquet").exists():  # else written by an earlier test
        subprocess.run(cmd_full, cwd=world.root, env=env, check=True, capture_output=True)
    out_w, cmd, env = _probe_env(world, warm_text, "workers")
    res = subprocess.run(cmd + ["workers=2"], cwd=world.root, env=env, capture_output=True, text=True)  # shard per worker
    assert res.returncode == 0 and "shard 0/2" in res.stdout and "shard 1/2" in res.stdout, res.stdout + res.stderr[-4000:]
    assert "shard 0/1: 4 batches already done, 0 to run" in res.stdout  # the merge played nothing itself
    assert _evidence(out_w) == _evidence(out_full)


def test_probe_workers_split_the_gpus():
    """One GPU per worker, or tensor_parallel_size GPUs each; too few GPUs is refused with what to lower."""
    from stages.probe import worker_devices

    assert worker_devices(2, [], 1) == []
    assert worker_devices(3, ["0", "1", "2", "3"], 1) == ["0", "1", "2"]
    assert worker_devices(2, ["4", "5", "6", "7"], 2) == ["4,5", "6,7"]
    with pytest.raises(ValueError, match="need 6 GPUs, 4 visible"):
        worker_devices(3, ["0", "1", "2", "3"], 2)


def test_cascade_and_adaptive_rounds_follow_the_label_rule(world, warm_text, tmp_path):
    """Conditions run cheapest first; an item reaches a condition only when the rule settled every earlier one as
    fail, and a condition gets more rounds only while the item's verdict is open (up to K)."""
    from collections import defaultdict

    from pipeline.config import build
    from pipeline.curate.label import CASCADE, FAIL, OPEN, settle
    from pipeline.probe import ProbeParams, probe
    from pipeline.schema import write_items
    from pipeline.search import SearchTools

    items_file = tmp_path / "items.parquet"
    write_items(world.items, items_file)
    params = build(ProbeParams, {"items": str(items_file), "parts_dir": str(tmp_path / "parts"), "model": warm_text,
                                 "samples": 6, "batch_items": 8, "engine": {"kind": "transformers", "max_batch": 16},
                                 "sampling": {"max_tokens": 48, "temperature": 1.0},
                                 "adaptive": {"first_round": 2, "round_size": 2}})
    result = probe(params, lambda: SearchTools.from_params(world.search, world.root), log=lambda _: None)
    rows = defaultdict(lambda: defaultdict(list))
    for cond, table in result.evidence.items():
        for r in table.to_pylist():
            rows[r["item_id"]][cond].append(r)
    reached = defaultdict(int)
    for item_id, by_cond in rows.items():
        previous_failed = True
        for cond in CASCADE:
            got = by_cond.get(cond, [])
            assert bool(got) == previous_failed, (item_id, cond)
            if not got:
                break
            reached[cond] += 1
            assert [r["sample"] for r in got] == list(range(len(got)))
            assert len(got) in (2, 4, 6)
            # every round but the last left the verdict open; the last settled it or used up K
            for n in range(2, len(got), 2):
                assert settle(cond, got[:n], params) == OPEN
            assert len(got) == 6 or settle(cond, got, params) != OPEN
            previous_failed = settle(cond, got, params) == FAIL
    assert reached["closed_book"] == len(world.items) and reached["image_only"] > 0
    m = result.metrics
    assert m["rollouts"] == sum(len(v) for by in rows.values() for v in by.values()) < m["rollouts_full_design"]


# reprobe stage: the trained policy probes the test split again, exactly as the probe stage would
# ---------------------------------------------------------------------------------------------------------------
def test_reprobe_runs_the_probe_and_reports_label_moves(world, warm_text):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import to_dict
    from pipeline.curate.transitions import AFTER, kind
    from pipeline.schema import write_items

    cycle = ["search_free", "image_search_required", "text_search_required", "mixed_search_required"]
    test_file = world.root / "data" / "reprobe_test.parquet"
    write_items(world.items, test_file)
    before = {it["id"]: cycle[i % 4] for i, it in enumerate(world.items)}
    pq.write_table(pq.read_table(test_file).append_column("label", pa.array([before[it["id"]] for it in world.items])),
                   test_file)
    probe = {"items": str(test_file), "samples": 2, "batch_items": 4, "engine": {"kind": "transformers", "max_batch": 8},
             "adaptive": {"enabled": True, "first_round": 1, "round_size": 1}, "sampling": {"max_tokens": 48, "temperature": 0.5}}
    params = {"search": to_dict(world.search), "probe": probe,
              "reprobe": {"items": str(test_file), "model": warm_text, "out_dir": str(world.root / "rp" / "out"),
                          "parts_dir": str(world.root / "rp" / "parts")}}
    pfile = world.root / "reprobe.yaml"
    pfile.write_text(yaml.safe_dump(params))
    cache = world.root / world.search.cache.path
    cache_bytes = cache.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "1"}
    res = subprocess.run([sys.executable, "-m", "stages", "reprobe", "--params", str(pfile)], cwd=world.root, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert cache.read_bytes() == cache_bytes  # the shared cache is only read (searches went to a private copy)
    out = world.root / "rp" / "out"

    # the same evidence the probe stage gives for these items and this model
    params["probe"].update(items=str(test_file), model=warm_text, out_dir=str(world.root / "rp" / "probe"),
                           parts_dir=str(world.root / "rp" / "probe_parts"))
    pfile.write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-m", "stages", "probe", "--params", str(pfile)], cwd=world.root, env=env,
                   check=True, capture_output=True)
    for cond in ("closed_book", "image_only", "text_only", "tools"):
        got = pq.read_table(out / cond / "evidence.parquet").drop(["latency_s"]).to_pylist()
        assert got == pq.read_table(world.root / "rp" / "probe" / cond / "evidence.parquet").drop(["latency_s"]).to_pylist()

    rows = pq.read_table(out / "labels.parquet").to_pylist()
    assert {r["id"]: r["before"] for r in rows} == before
    for r in rows:
        assert r["after"] in AFTER
        want = ("out" if kind(r["after"]) == "out" else "across" if kind(r["after"]) != kind(r["before"])
                else "same" if r["after"] == r["before"] else "kind")
        assert r["moved"] == want, r
    m = json.loads((out / "metrics.json").read_text())
    assert m["items"] == 8 == sum(sum(row.values()) for row in m["matrix"].values())
    moved = [r["moved"] for r in rows]
    assert m["moved_across_boundary"] == moved.count("across") and m["same_label"] == moved.count("same")
    assert m["changed_search_kind"] == moved.count("kind") and m["fell_out"] == moved.count("out")
    assert m["search_free_before"] == 2 and m["relabel"]["counts_add_up"] and m["relabel"]["probed"] == 8
    assert "| before \\ after |" in (out / "transitions.md").read_text()
