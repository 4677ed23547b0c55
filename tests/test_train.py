"""GRPO steps on TRL with the real search tools (local indexes + replayed cache): tiny text model and tiny VLM,
both protocols; tool-result tokens masked from the loss; rollouts matched to their own item; image-search
thumbnails fed back to the VLM; vLLM colocate on CPU with the weight-sync fix; training curves and final model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.config import ParamsError, build
from train_world import build_world, record_reward, warm_up
from trainer.config import TrainParams, to_grpo_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("train_world"))


@pytest.fixture(scope="module")
def warm_text(world, tiny_text_model_path):
    return warm_up(str(tiny_text_model_path), world, world.root / "warm_text", steps=400)


@pytest.fixture(scope="module")
def warm_vlm(world, tiny_vlm_path):
    return warm_up(str(tiny_vlm_path), world, world.root / "warm_vlm", steps=400)


def _params(world, model, out, **kw):
    values = dict(model=model, train_file=str(world.train_file), output_dir=str(out), max_items=4, max_steps=1,
                  samples=4, per_device_train_batch_size=4, max_completion_length=700, save_steps=1,
                  learning_rate=1e-4, temperature=1.0, reward_functions=["paper", "train_world:record_reward"],
                  reward_weights=[1.0, 0.0])
    values.update(kw)
    return build(TrainParams, values)


@pytest.fixture
def captured(monkeypatch):
    """Every generated batch (completion ids, masks, image counts) as GRPOTrainer produced it for the loss."""
    from trl import GRPOTrainer

    batches = []
    original = GRPOTrainer._generate_and_score_completions

    def wrapper(self, inputs):
        out = original(self, inputs)
        batches.append({k: (v.detach().cpu() if hasattr(v, "detach") else v) for k, v in out.items()
                        if k in ("completion_ids", "completion_mask", "tool_mask", "num_images")})
        return out

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", wrapper)
    record_reward.rows.clear()
    return batches


def _segments(ids, mask, keep):
    """Runs of token ids whose mask equals `keep`."""
    runs, cur = [], []
    for t, m in zip(ids, mask):
        if m == keep:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def _check_rollouts_match_items(world, rows, tool_tag):
    """Each rollout's environment saw its own item, its tool results name its own question, and an image search
    of its image returned its own flag first (the index holds the exact images)."""
    by_id = {it["id"]: it for it in world.items}
    assert rows
    for r in rows:
        item = by_id[r["id"]]
        assert r["question"] == item["question"] and r["env_question"] == item["question"]
        assert item["question"] in r["prompt_text"]
        # every call the environment ran reached the completion, except one whose result TRL dropped because it did
        # not fit in max_completion_length: then it is the last call and the completion ends on the turn that asked
        delivered = [c for c in r["env_calls"] if c["delivered"]]
        dropped = [c for c in r["env_calls"] if not c["delivered"]]
        assert r["executed_calls"] == len(delivered) == len(r["tool_texts"])
        assert r["env_calls"][: len(delivered)] == delivered and len(dropped) <= 1
        if dropped:
            assert r["last_role"] == "assistant" and r["last_has_call"] and dropped[0]["error"].startswith("result dropped")
        assert [c["turn"] for c in r["env_calls"]] == sorted(c["turn"] for c in r["env_calls"])
        for text, call in zip(r["tool_texts"], delivered):
            assert f"Question: {item['question']}" in text
            if call["tool"] == "image_search" and not call["refused"]:
                assert call["error"] == "" and call["cache_key"]  # replayed from the cache (replay_only)
                assert f"1. image: \ntitle: Flag of {item['entity']}" in text or f"1. title: Flag of {item['entity']}" in text


@pytest.mark.parametrize("protocol, tool_tag", [("mmsearch_r1", "<information>"), ("tool_calls", "<tool_response>")])
def test_grpo_text_model_tool_loop_and_mask(world, warm_text, tmp_path, captured, protocol, tool_tag):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.grpo import train

    p = _params(world, warm_text, tmp_path / "train", protocol=protocol, max_steps=2)
    metrics = train(p, world.search, root=world.root)
    assert metrics["steps"] == 2 and metrics["items"] == 4 and metrics["excluded"] == 0

    tok = AutoTokenizer.from_pretrained(warm_text)
    rollouts_with_tools = 0
    for batch in captured:
        assert "tool_mask" in batch
        for ids, cmask, tmask in zip(batch["completion_ids"], batch["completion_mask"], batch["tool_mask"]):
            n = int(cmask.sum())
            ids, tmask = ids[:n].tolist(), tmask[:n].tolist()
            masked = [tok.decode(s) for s in _segments(ids, tmask, 0)]
            model_text = tok.decode([t for t, m in zip(ids, tmask) if m == 1])
            assert tool_tag not in model_text and "Question:" not in model_text
            for seg in masked:  # each masked run is exactly one spliced tool-result turn
                assert seg.lstrip().startswith("<|im_start|>user") and seg.endswith("<|im_start|>assistant\n")
                # the environment's result (TRL's own error text when the call itself was malformed)
                assert (tool_tag in seg and "Question:" in seg) or "{'error'" in seg
            if masked:
                rollouts_with_tools += 1
                assert model_text.count("<|im_end|>") == len(masked) + (1 if ids[-1] == tok.convert_tokens_to_ids("<|im_end|>") else 0)
    assert rollouts_with_tools > 0, "the warmed-up model made no tool call: the loop was not exercised"
    _check_rollouts_match_items(world, record_reward.rows, tool_tag)

    out = Path(p.output_dir)
    curves = json.loads((out / "curves.json").read_text())
    assert [r["step"] for r in curves] == [1, 2]
    for key in ("reward", "reward/accuracy", "reward/format", "reward/search_penalty", "search/image_search_calls",
                "search/text_search_calls", "search/ratio"):
        assert key in curves[0], key
    assert (out / "curves.tsv").read_text().splitlines()[0].startswith("step\t")
    assert (out / "curves.png").stat().st_size > 1000
    assert sorted(c.name for c in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    model = AutoModelForCausalLM.from_pretrained(p.model_dir)
    saved_tok = AutoTokenizer.from_pretrained(p.model_dir)
    assert model.config.vocab_size == tok.vocab_size or model.config.vocab_size >= len(tok)
    assert saved_tok.chat_template and "<|im_start|>" in saved_tok.chat_template
    assert saved_tok.response_template["start_anchor"] == "<|im_start|>assistant\n"


def test_dropped_tool_result_is_recorded_and_scored(world, warm_vlm, tmp_path, captured):
    """A completion budget too small for the image-search result (thumbnails are many image tokens): TRL runs the
    call, then drops the result. The call is recorded as not delivered (the invariants of
    `_check_rollouts_match_items` hold for it: it is the last call and the completion ends on the turn that asked)."""
    from trainer.grpo import train

    p = _params(world, warm_vlm, tmp_path / "train", max_steps=1, save_steps=10, max_completion_length=72,
                per_device_train_batch_size=8, reward_functions=["paper", "train_world:record_reward"])
    train(p, world.search, root=world.root)
    rows = record_reward.rows
    _check_rollouts_match_items(world, rows, "")
    dropped = [r for r in rows if any(not c["delivered"] for c in r["env_calls"])]
    assert dropped, "no tool result was dropped: the budget no longer forces the path this test is for"


@pytest.mark.parametrize("protocol", ["mmsearch_r1", "tool_calls"])
def test_grpo_vlm_image_search_returns_images(world, warm_vlm, tmp_path, captured, protocol):
    from trainer.grpo import train

    p = _params(world, warm_vlm, tmp_path / "train", protocol=protocol, max_steps=1, save_steps=10,
                per_device_train_batch_size=8)
    metrics = train(p, world.search, root=world.root)
    assert metrics["steps"] == 1
    rows = record_reward.rows
    _check_rollouts_match_items(world, rows, "")
    # every rollout sees its item image in the prompt; each image search adds its thumbnails (k_image=2) as images
    searched = [r for r in rows if any(c["tool"] == "image_search" and not c["refused"] and c["delivered"]
                                       for c in r["env_calls"])]
    assert searched, "the warmed-up VLM made no image search"
    for r in searched:
        assert sum(r["tool_images"]) >= 2
    num_images = [int(n) for b in captured for n in b["num_images"]]
    assert sorted(num_images) == sorted(1 + sum(r["tool_images"]) for r in rows)
    assert (Path(p.model_dir) / "model.safetensors").exists()
    from pipeline.models import load_processor

    proc = load_processor(p.model_dir)
    assert hasattr(proc, "image_processor") and proc.tokenizer.response_template


def test_vllm_colocate_cpu_weight_sync(world, warm_text, tmp_path):
    """Two steps with vLLM colocated on CPU: generation, then the weight sync after step 1 (which fails without
    the fix); vLLM's weights equal the trained policy's afterwards."""
    import torch

    from trainer.grpo import build_trainer, save_final_model

    p = _params(world, warm_text, tmp_path / "train", max_steps=2, use_vllm=True, save_steps=10,
                reward_functions=["paper"], reward_weights=[])
    run = build_trainer(p, world.search, root=world.root)
    trainer = run.trainer
    trainer.train()
    assert trainer.state.global_step == 2
    trainer._generate_single_turn([[1, 2, 3]], None, {}, 1)  # a generation after the last step triggers a sync
    vllm_model = trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    theirs = dict(vllm_model.named_parameters())
    ours = dict(trainer.model.named_parameters())
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(ours[name].detach(), _load(warm_text)[name]), "training did not change the weights"
    assert torch.allclose(theirs[name].detach().float(), ours[name].detach().float(), atol=1e-2)
    save_final_model(run, p.model_dir)
    assert (Path(p.model_dir) / "model.safetensors").exists()


def _load(path):
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(Path(path) / "model.safetensors")).items()}


def test_config_maps_onto_grpo_config_and_rejects_unknown_keys():
    p = build(TrainParams, {"limits": {"max_turns": 4}, "beta": 0.0, "epsilon": 0.3, "samples": 8, "per_device_train_batch_size": 8,
                            "lora": {"enabled": True, "r": 8}, "grpo_overrides": {"num_iterations": 2}})
    cfg = to_grpo_config(p, reward_weights=[1.0])
    assert cfg.max_tool_calling_iterations == 3 and cfg.beta == 0.0 and cfg.epsilon == 0.3
    assert cfg.num_generations == 8 and cfg.num_iterations == 2 and cfg.output_dir.endswith("checkpoints")
    assert p.lora.to_peft().r == 8
    with pytest.raises(ParamsError, match="did you mean 'samples'"):
        build(TrainParams, {"sample": 4})
    with pytest.raises(ParamsError, match="'num_generations': it is called 'samples' here"):
        build(TrainParams, {"num_generations": 4})  # TRL's name for K; ours is the same in every stage
    with pytest.raises(ValueError, match="num_generations = train.samples"):
        to_grpo_config(build(TrainParams, {"grpo_overrides": {"num_generations": 2}}))
    with pytest.raises(ParamsError, match="limits.max_turns"):
        build(TrainParams, {"limits": {"max_turn": 2}})
    with pytest.raises(ValueError, match="not a GRPOConfig field; did you mean 'num_iterations'"):
        to_grpo_config(build(TrainParams, {"grpo_overrides": {"num_iteration": 2}}))
    # advantage scaling is a first-class switch (Dr. GRPO's none); the override cannot set it behind its back
    assert cfg.scale_rewards == "group" and to_grpo_config(build(TrainParams, {"scale_rewards": "none"})).scale_rewards == "none"
    with pytest.raises(ValueError, match="scale_rewards = train.scale_rewards"):
        to_grpo_config(build(TrainParams, {"grpo_overrides": {"scale_rewards": "batch"}}))
    with pytest.raises(ParamsError, match="scale_rewards"):
        build(TrainParams, {"scale_rewards": "std"})
    # fingerprints ignore cadence/output settings but not what changes the trajectory
    a = build(TrainParams, {})
    assert a.fingerprint() == build(TrainParams, {"save_steps": 99, "max_steps": 3}).fingerprint()
    assert a.fingerprint() != build(TrainParams, {"learning_rate": 2e-6}).fingerprint()
    assert a.fingerprint() != build(TrainParams, {"scale_rewards": "none"}).fingerprint()


def test_efficiency_switch_sets_trls_aggregation():
    # paper leaves TRL's default (the committed baseline's config); gdpo is TRL's own normalize_then_sum (GDPO)
    assert to_grpo_config(build(TrainParams, {})).multi_objective_aggregation == "sum_then_normalize"
    assert to_grpo_config(build(TrainParams, {"efficiency": "gdpo"})).multi_objective_aggregation == "normalize_then_sum"
    assert to_grpo_config(build(TrainParams, {"efficiency": "among_correct"})).multi_objective_aggregation == "sum_then_normalize"
    with pytest.raises(ValueError, match="multi_objective_aggregation = train.efficiency"):
        to_grpo_config(build(TrainParams, {"grpo_overrides": {"multi_objective_aggregation": "normalize_then_sum"}}))
    with pytest.raises(ParamsError, match="train.efficiency: 'gdp' is not one of"):
        build(TrainParams, {"efficiency": "gdp"}, prefix="train.")
    with pytest.raises(ParamsError, match=r"multiple of samples \(4\)"):
        build(TrainParams, {"efficiency": "among_correct", "per_device_train_batch_size": 6}, prefix="train.")


def test_data_switch_picks_the_training_file():
    assert build(TrainParams, {}).data_file == "data/balance/train.parquet"
    unbalanced = build(TrainParams, {"data": "unbalanced"})
    assert unbalanced.data_file == "data/balance/train_unbalanced.parquet"
    assert build(TrainParams, {"data": "unbalanced", "unbalanced_file": "x.parquet"}).data_file == "x.parquet"
    assert unbalanced.fingerprint() != build(TrainParams, {}).fingerprint()  # a checkpoint of one is not resumed by the other
    with pytest.raises(ParamsError, match=r"train.data: 'unbalance' is not one of \['balanced', 'unbalanced'\]"):
        build(TrainParams, {"data": "unbalance"}, prefix="train.")


@pytest.mark.parametrize("efficiency", ["gdpo", "among_correct"])
def test_efficiency_components_train_and_log_apart(world, warm_text, tmp_path, efficiency):
    from trainer.grpo import train

    p = _params(world, warm_text, tmp_path / "train", efficiency=efficiency)
    train(p, world.search, root=world.root)
    row = json.loads((Path(p.output_dir) / "curves.json").read_text())[0]
    acc, fmt, eff = (row[f"rewards/{n}_reward/mean"] for n in ("accuracy", "format", "efficiency"))
    assert row["reward/efficiency"] == pytest.approx(eff)
    # TRL's logged reward is the weighted sum of the components: (1 - a), a, (1 - a) p (and 0 for record_reward)
    assert row["reward"] == pytest.approx(0.9 * acc + 0.1 * fmt + 0.09 * eff, abs=1e-5)
    if efficiency == "among_correct":
        assert eff == pytest.approx(0.0, abs=1e-6)  # sums to 0 within every group


def test_training_tools_answer_queries_the_probe_never_made(world):
    """The default train.cache_mode serves a query missing from the cache from the local backend; replay_only would
    fail it (with replay_only every tool call of the demo's GRPO failed and the policy learnt to stop searching)."""
    import dataclasses

    from pipeline.rollout.environment import SEARCH_IMAGE_COLUMN, environment_class
    from pipeline.rollout.protocols import get_protocol
    from pipeline.search import SearchTools

    def env_for(mode):
        search = dataclasses.replace(world.search, cache=dataclasses.replace(world.search.cache, mode=mode))
        cls = environment_class(get_protocol("mmsearch_r1"), SearchTools.from_params(search, world.root), "tools",
                                with_images=False)
        env = cls()
        item = world.items[0]
        env.reset(question=item["question"], meta=item["meta"], **{SEARCH_IMAGE_COLUMN: item["image"]})
        return env

    query = "a query the probe never made about flags"
    env = env_for(TrainParams().cache_mode)
    out = env.text_search(query=query)
    assert out and len(env.calls) == 1 and env.calls[0]["error"] == ""  # passages, not an error
    with pytest.raises(Exception, match="replay_only"):
        env_for("replay_only").text_search(query=query + " again")


def test_train_layers_freezes_all_but_the_top_layers(world, warm_text, tmp_path):
    """train.train_layers=1: a GRPO step moves the top decoder layer and leaves every lower layer and the embeddings
    bit-equal to the start model (the backward pass stops there); LoRA and a negative count are refused."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.grpo import train

    p = _params(world, warm_text, tmp_path / "train", train_layers=1, learning_rate=1e-3)
    train(p, world.search, root=world.root)
    start = AutoModelForCausalLM.from_pretrained(warm_text).state_dict()
    end = AutoModelForCausalLM.from_pretrained(p.model_dir).state_dict()
    top = f"model.layers.{len([k for k in start if k.endswith('input_layernorm.weight')]) - 1}."
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    assert moved and all(k.startswith(top) or k.startswith("model.norm.") for k in moved), sorted(moved)[:5]
    for bad in ({"train_layers": -1}, {"train_layers": 2, "lora": {"enabled": True}}):
        with pytest.raises(ParamsError, match="train_layers"):
            build(TrainParams, bad, prefix="train.")


def test_max_items_keeps_the_label_mix_of_a_grouped_split(tmp_path):
    """A split is written in item order, grouped by kind; train.max_items used to take its head (14 search_free items
    of 16 in the demo, so GRPO learnt to answer directly whatever the penalty). Now: a seeded subset with the file's
    label mix, the same for the same seed; 0 keeps every row in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer.grpo import read_rows

    labels = ["search_free"] * 14 + ["image_search_required"] * 4 + ["text_search_required"] * 2
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"id": [f"i{n:02d}" for n in range(20)], "question": ["q"] * 20, "answer": ["a"] * 20,
                             "label": labels}), path)
    picked = read_rows(path, 10, seed=0)
    counts = {lab: sum(r["label"] == lab for r in picked) for lab in set(labels)}
    assert counts == {"search_free": 7, "image_search_required": 2, "text_search_required": 1}
    assert [r["id"] for r in read_rows(path, 10, seed=0)] == [r["id"] for r in picked]
    assert {r["id"] for r in read_rows(path, 10, seed=1)} != {r["id"] for r in picked}
    assert [r["id"] for r in read_rows(path)] == [f"i{n:02d}" for n in range(20)]


def test_max_items_keeps_the_label_and_category_mix_and_names_a_missing_column(tmp_path):
    """subset_strata [label, category]: every seed trains on the same mix of question kinds (by label alone, one seed
    drew 6 known-capital items of 20 search-free ones and another 10). A strata column the file lacks is named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer.grpo import read_rows

    kinds = [("search_free", "capital")] * 10 + [("search_free", "region")] * 10 + [("text", "currency")] * 20
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"id": [f"i{n:02d}" for n in range(40)], "question": ["q"] * 40, "answer": ["a"] * 40,
                             "label": [k[0] for k in kinds], "category": [k[1] for k in kinds]}), path)
    mixes = set()
    for seed in range(6):
        picked = read_rows(path, 20, seed=seed, strata=["label", "category"])
        mixes.add(tuple(sorted((r["label"], r["category"], sum(q["category"] == r["category"] for q in picked))
                               for r in picked)))
    assert len(mixes) == 1 and {m[1:] for m in mixes.pop()} == {("capital", 5), ("region", 5), ("currency", 10)}
    by_label = [sum(r["category"] == "capital" for r in read_rows(path, 20, seed=s, strata=["label"])) for s in range(6)]
    assert len(set(by_label)) > 1  # what the category stratum removes: the capital share drifts with the seed
    with pytest.raises(ValueError, match=r"subset_strata.*\['topic'\]"):
        read_rows(path, 20, seed=0, strata=["label", "topic"])
    assert len(read_rows(path, 20, seed=0, strata=[])) == 20
