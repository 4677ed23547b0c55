"""Two training processes on CPU (gloo, launched with torchrun; accelerate picks the ranks up): the multi-turn
tool loop finishes (no hang) and every rollout stays with its own item (its environment, tool results and reward
inputs all name the item its prompt asked about), in both processes."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train_world import build_world, warm_up

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_two_processes_gloo_tool_loop(tmp_path, tiny_text_model_path):
    world = build_world(tmp_path)
    model = warm_up(str(tiny_text_model_path), world, tmp_path / "warm_text", steps=400)
    params = {
        "search": dataclasses.asdict(world.search),
        "train": {"model": model, "train_file": "data/balance/train.parquet", "max_items": 8, "max_steps": 2,
                  "save_steps": 10, "samples": 4, "per_device_train_batch_size": 4,
                  "max_completion_length": 700, "learning_rate": 1e-4,
                  "reward_functions": ["paper", "train_world:record_reward"], "reward_weights": [1.0, 0.0]},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "CI": "1",
           "TRAIN_RECORD": str(tmp_path / "record"), "OMP_NUM_THREADS": "1"}
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous (torchrun's port 0 hangs with a static rendezvous)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           "-m", "stages", "train", "--params", "params.yaml"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    metrics = json.loads((tmp_path / "data/train/metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2

    by_id = {it["id"]: it for it in world.items}
    rows = {r: [json.loads(l) for l in (tmp_path / f"record.{r}.jsonl").read_text().splitlines()] for r in ("0", "1")}
    assert len(rows["0"]) == len(rows["1"]) == 2 * 4  # 2 steps x 4 completions per process
    for rank, rs in rows.items():
        for r in rs:
            item = by_id[r["id"]]
            assert r["env_question"] == r["question"] == item["question"] and item["question"] in r["prompt_text"]
            assert r["executed_calls"] == len(r["env_calls"]) == len(r["tool_texts"])
            for text, call in zip(r["tool_texts"], r["env_calls"]):
                assert f"Question: {item['question']}" in text
                if call["tool"] == "image_search" and not call["refused"]:
                    assert f"title: Flag of {item['entity']}" in text
    # each step's 8 completions are 2 prompts x 4 generations, split between the processes: a group never mixes
    ids = [r["id"] for r in rows["0"] + rows["1"]]
    assert all(ids.count(i) % 4 == 0 for i in set(ids))
    assert sum(len(r["env_calls"]) for rs in rows.values() for r in rs) > 0, "no tool call in either process"
