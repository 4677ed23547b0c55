"""The train stage from the command line: a run killed with SIGKILL after a checkpoint resumes from it and ends
with the same model as an uninterrupted run; the final model loads in transformers and in vLLM."""
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

from train_world import build_world, warm_up

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stage_world(tmp_path_factory, tiny_text_model_path):
    world = build_world(tmp_path_factory.mktemp("train_stage"))
    model = warm_up(str(tiny_text_model_path), world, world.root / "warm_text", steps=400)
    import dataclasses

    params = {
        "search": dataclasses.asdict(world.search),
        "train": {"model": model, "train_file": "data/balance/train.parquet", "max_items": 4, "max_steps": 3,
                  "save_steps": 1, "samples": 4, "per_device_train_batch_size": 4,
                  "max_completion_length": 700, "learning_rate": 1e-4},
    }
    (world.root / "params.yaml").write_text(yaml.safe_dump(params))
    return world


def _cmd(*overrides):
    return [sys.executable, "-m", "stages", "train", "--params", "params.yaml", *overrides]


def _env():
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "CI": "1"}


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def test_kill_resume_same_model_and_loads_in_transformers_and_vllm(stage_world):
    import torch

    root = stage_world.root
    cache = root / stage_world.search.cache.path
    cache_bytes = cache.read_bytes()
    # uninterrupted reference run
    done = subprocess.run(_cmd("output_dir=data/ref"), cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # the shared search cache (a dependency of train, reprobe, evaluate and publish) is only read
    assert cache.read_bytes() == cache_bytes and (root / "data/ref/search_cache_rank0/search_cache.sqlite").exists()
    ref = json.loads((root / "data/ref/metrics.json").read_text())
    assert ref["steps"] == 3 and ref["resumed_from_step"] == 0

    # killed after its first checkpoint, then re-run: continues from the newest complete checkpoint
    out = root / "data/train"
    proc = subprocess.Popen(_cmd(), cwd=root, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (out / "checkpoints/checkpoint-1/trainer_state.json").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (out / "model").exists()
    again = subprocess.run(_cmd(), cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 3 and m["resumed_from_step"] >= 1 and m["steps_this_run"] == 3 - m["resumed_from_step"]
    curves = json.loads((out / "curves.json").read_text())
    assert [r["step"] for r in curves] == [1, 2, 3]  # the curve includes the steps before the kill

    a, b = _weights(root / "data/ref/model"), _weights(out / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-3), k
    assert any(not torch.equal(a[k], _weights(stage_world.root / "warm_text")[k]) for k in a)

    # a finished run started again (as `dvc repro` does when an unrelated dependency changed) takes no step past
    # max_steps: the same model, from the last checkpoint
    rerun = subprocess.run(_cmd(), cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 3 and m["steps_this_run"] == 0 and m["train_loss"] is not None
    assert not (out / "checkpoints/checkpoint-4").exists()
    c = _weights(out / "model")
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert [r["step"] for r in json.loads((out / "curves.json").read_text())] == [1, 2, 3]

    # changed settings: those checkpoints are not resumed (and are cleared), same settings: the newest is
    from pipeline.config import build
    from trainer.config import TrainParams
    from trainer.grpo import resume_checkpoint

    from trainer.grpo import run_fingerprint

    base = yaml.safe_load((root / "params.yaml").read_text())["train"]
    same = build(TrainParams, {**base, "output_dir": str(out), "max_steps": 9})
    fp = run_fingerprint(same, base["model"], root / base["train_file"])
    assert json.loads((out / "checkpoints/run.json").read_text())["fingerprint"] == fp
    assert resume_checkpoint(same, True, fp) == str(out / "checkpoints/checkpoint-3")
    other_model = run_fingerprint(same, str(root / "data/ref/model"), root / base["train_file"])
    assert other_model != fp
    assert resume_checkpoint(build(TrainParams, {**base, "output_dir": str(out), "learning_rate": 2e-4}), True,
                             run_fingerprint(build(TrainParams, {**base, "learning_rate": 2e-4}), base["model"],
                                             root / base["train_file"])) is None
    assert not (out / "checkpoints").exists()  # cleared: they belonged to other settings

    # the final model loads in vLLM (text model) and generates with the saved chat template
    code = (
        "from vllm import LLM, SamplingParams\n"
        "from transformers import AutoTokenizer\n"
        f"path = {str(out / 'model')!r}\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "prompt = tok.apply_chat_template([{'role': 'user', 'content': 'Which flag?'}], tokenize=False, add_generation_prompt=True)\n"
        "llm = LLM(model=path, enforce_eager=True, max_model_len=1024, seed=0)\n"
        "out = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0))\n"
        "print('GENERATED', len(out[0].outputs[0].token_ids))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env={**_env(), "VLLM_CPU_KVCACHE_SPACE": "1"},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "GENERATED" in res.stdout, res.stderr[-3000:]
