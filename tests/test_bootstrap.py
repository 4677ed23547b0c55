"""The labeler bootstrap shared by the bootstrap stage and train's cold start (trainer/cold_start.py): demonstrations
with the real tools, a short supervised cold start, the written folder; and the disabled case (model_ref.json)."""
from __future__ import annotations

import json

import pytest

from pipeline.bootstrap import CAN_MEET
from pipeline.config import build
from trainer.cold_start import BootstrapParams, bootstrap, cold_start_policy


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from train_world import build_world

    return build_world(tmp_path_factory.mktemp("bootstrap_world"))


def _tools(world):
    from pipeline.search import SearchTools

    return lambda: SearchTools.from_params(world.search, world.root)


def test_bootstrap_writes_a_labeler_that_speaks_the_protocol(world, tiny_text_model_path, tmp_path):
    from transformers import AutoTokenizer

    from pipeline.models import model_info, resolve_model

    import pandas as pd

    facts = tmp_path / "facts.parquet"
    pd.DataFrame({"question": ["What do you know about the capital of Peru?", "Where is Chile?"],
                  "statement": ["The capital of Peru is Lima.", "Chile is in Americas."]}).to_parquet(facts)
    params = build(BootstrapParams, {"items": str(world.train_file), "out_dir": str(tmp_path / "boot"),
                                     "base_model": str(tiny_text_model_path), "search_k": 2, "facts": str(facts),
                                     "fact_repeats": 3, "fact_format": "chat",
                                     "cold_start": {"steps": 2, "batch_tokens": 1024, "train_layers": 0}})
    metrics = bootstrap(params, _tools(world), log=None)
    # the demonstrations and 3 copies of each fact went into TRL's SFTTrainer, in the precision this CPU picks
    from pipeline.hardware import training_bf16

    assert metrics["cold_start"]["facts_used"] == 6 and metrics["cold_start"]["demos_used"] == metrics["n_demonstrations"]
    assert metrics["cold_start"]["precision"] == ("bf16" if training_bf16() else "fp32")
    assert metrics["cold_start"]["train_tokens"] > 0
    out = tmp_path / "boot"
    demos = [json.loads(line) for line in (out / "demos.jsonl").read_text().splitlines()]
    assert metrics["n_demonstrations"] == len(demos) == sum(metrics["demonstrations"].values())
    # each item is demonstrated in exactly the conditions whose tools meet its need (the flags need image search)
    assert all(d["kind"] in CAN_MEET[d["condition"]] for d in demos)
    assert {d["condition"] for d in demos if d["kind"] == "image"} == {"image_only", "tools"}
    # the searching demonstrations carry the real image-search results, through the cache the world filled
    searched = [d for d in demos if d["kind"] in ("image", "mixed")]
    assert searched and all("<search><img></search>" in d["messages"][-3]["content"] for d in searched)
    # one search per item, shared by the conditions it is demonstrated in
    assert metrics["search"]["calls"] >= len({d["item_id"] for d in searched}) and metrics["search"]["errors"] == 0
    assert metrics["cold_start"]["steps"] == 2 and metrics["items"] == len(world.items)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert resolve_model(str(out / "model")) == str(out / "model") and not model_info(out / "model")["is_vlm"]
    assert AutoTokenizer.from_pretrained(out / "model").chat_template == params.make_protocol().chat_template
    assert not (out / "model.tmp").exists()


def test_facts_as_protocol_answers(tiny_text_model_path, tmp_path):
    """fact_format protocol: each fact is a direct answer in the protocol's tags, its repeats spread over the probed
    conditions, the loss on the answer turn only; a facts file without an answer column is refused by name."""
    import pandas as pd

    from pipeline.models import load_processor
    from pipeline.rollout.protocols import get_protocol
    from trainer.cold_start import facts_as_demos, read_facts
    from trainer.sft import encode_demo

    path = tmp_path / "facts.parquet"
    pd.DataFrame({"question": ["What do you know about the capital of Peru?", "What do you know about where Chile is?"],
                  "statement": ["The capital of Peru is Lima.", "Chile is in Americas."]}).to_parquet(path)
    with pytest.raises(ValueError, match="answer.*fact_format to chat"):
        read_facts(str(path), need_answer=True)
    pd.DataFrame({"question": ["What do you know about the capital of Peru?", "What do you know about where Chile is?"],
                  "statement": ["The capital of Peru is Lima.", "Chile is in Americas."],
                  "answer": ["Lima", "Americas"]}).to_parquet(path)
    facts = read_facts(str(path), need_answer=True)
    protocol = get_protocol("mmsearch_r1", prompt="short")
    conditions = ["closed_book", "image_only", "text_only"]
    demos = facts_as_demos(facts, protocol, conditions, with_image=False, repeats=2)
    assert [(d["item_id"], d["condition"]) for d in demos] == [
        ("fact-0", "closed_book"), ("fact-1", "image_only"), ("fact-0", "image_only"), ("fact-1", "text_only")]
    assert demos[1]["messages"][-1]["content"] == "<reason>Chile is in Americas.</reason><answer> Americas</answer>"
    tok = load_processor(str(tiny_text_model_path))
    tok = getattr(tok, "tokenizer", tok)
    ids, labels = encode_demo(tok, protocol, demos[0]["messages"], demos[0]["condition"])
    prompt, learned = tok.decode(ids), tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    assert "Question: What do you know about the capital of Peru?" in prompt and "<text_search>" not in prompt.split(
        "Question:")[0]  # the closed-book prompt offers no tool
    assert learned.startswith("<reason>The capital of Peru is Lima.</reason><answer> Lima</answer>")
    with pytest.raises(ValueError, match="fact_format"):
        build(BootstrapParams, {"fact_format": "json"})


def test_fact_loss_covers_the_statement_only(tiny_text_model_path):
    """A fact is plain chat (no protocol system prompt); the loss mask covers the assistant statement, not the
    question; a demonstration's mask covers its assistant turns only."""
    from pipeline.models import load_processor
    from pipeline.rollout.protocols import get_protocol
    from trainer.sft import encode_demo, encode_fact

    tok = load_processor(str(tiny_text_model_path))
    tok = getattr(tok, "tokenizer", tok)
    ids, labels = encode_fact(tok, "What do you know about the capital of Peru?", "The capital of Peru is Lima.")
    learned = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    assert "The capital of Peru is Lima." in learned and "Peru?" not in learned
    assert "search" not in tok.decode(ids)  # no protocol prompt around a fact
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "<reason>r</reason><answer>A</answer>"}]
    ids, labels = encode_demo(tok, get_protocol("mmsearch_r1"), msgs, "closed_book")
    learned = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    assert learned.startswith("<reason>r</reason><answer>A</answer>") and "Q?" not in learned


def test_disabled_bootstrap_points_at_the_base_model(tiny_text_model_path, tmp_path):
    from pipeline.models import resolve_model

    params = build(BootstrapParams, {"enabled": False, "base_model": "tiny:text", "out_dir": str(tmp_path / "b")})
    assert bootstrap(params, lambda: pytest.fail("no tools when disabled")) == {"enabled": False, "model": "tiny:text"}
    assert sorted(p.name for p in (tmp_path / "b" / "model").iterdir()) == ["model_ref.json"]
    assert resolve_model(str(tmp_path / "b" / "model")) == str(tiny_text_model_path)


def test_bootstrap_refuses_the_tool_calls_protocol_and_train_cold_start_follows_train(tmp_path):
    from pipeline.config import ParamsError
    from trainer.config import TrainParams

    with pytest.raises(ParamsError, match="mmsearch_r1 tags"):
        build(BootstrapParams, {"protocol": "tool_calls"})
    assert build(BootstrapParams, {"protocol": "tool_calls", "enabled": False}).protocol == "tool_calls"
    train = build(TrainParams, {"protocol": "tool_calls", "output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="mmsearch_r1 tags"):  # the training's rollout settings win
        cold_start_policy(train, BootstrapParams(), lambda: pytest.fail("checked before any work"))


def test_balance_by_need_repeats_the_rare_needs_up_to_the_common_one():
    from collections import Counter

    from trainer.cold_start import balance_by_need

    demos = [{"kind": "none", "i": i} for i in range(8)] + [{"kind": "image", "i": i} for i in range(5)] + \
        [{"kind": "mixed", "i": i} for i in range(2)]
    out = balance_by_need(demos, seed=0)
    assert out[:len(demos)] == demos and Counter(d["kind"] for d in out) == {"none": 8, "image": 8, "mixed": 8}
    assert Counter(d["i"] for d in out if d["kind"] == "mixed") == {0: 4, 1: 4}  # whole copies first
    assert balance_by_need(demos, seed=0) == out and balance_by_need([], 0) == []


def test_select_trainable_finds_a_vlm_decoder_and_refuses_a_model_without_one():
    """A VLM keeps its decoder under `model.language_model` (Qwen2.5-VL): train_layers=1 trains the top text layer
    and the text norm only (the vision tower and lower layers stay frozen); a model with no decoder layers where they
    are looked for raises instead of training every weight; 0 keeps everything trainable."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from trainer.sft import select_trainable

    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=128, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]))
    vlm = Qwen2_5_VLForConditionalGeneration(cfg)
    params = select_trainable(vlm, 1)
    trainable = {n for n, p in vlm.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.language_model.layers.2.", "model.language_model.norm."))
                             for n in trainable), sorted(trainable)[:5]
    assert any(n.startswith("model.language_model.norm.") for n in trainable)
    assert len(params) == len(trainable)
    assert len(select_trainable(Qwen2_5_VLForConditionalGeneration(cfg), 0)) == len(list(vlm.parameters()))
    with pytest.raises(ValueError, match="train_layers=2.*no decoder layers"):
        select_trainable(torch.nn.Sequential(torch.nn.Linear(4, 4)), 2)


def test_over_search_makes_known_items_search_under_tools_only(world):
    """The over-searching policy start: a seeded share of the known items searches under `tools` (and only there);
    0 is the labeler's demonstrations unchanged."""
    from pipeline.bootstrap import build_demonstrations
    from pipeline.rollout.protocols import get_protocol

    proto = get_protocol("mmsearch_r1")
    tools = _tools(world)()
    known = {it["id"]: True for it in world.items}
    searched = lambda demos: {(d["item_id"], d["condition"]) for d in demos  # noqa: E731
                              if any("<text_search>" in m["content"] for m in d["messages"] if m["role"] == "assistant")}
    plain, plain_counts = build_demonstrations(world.items, proto, tools, known, with_image=False)
    assert not searched(plain) and "tools/none_searched" not in plain_counts
    every, counts = build_demonstrations(world.items, proto, tools, known, with_image=False, over_search=1.0)
    assert searched(every) == {(it["id"], "tools") for it in world.items} and counts["tools/none_searched"] == 8
    assert len(every) == len(plain)  # the same demonstrations, the tools ones searching first
    for d in every:
        if d["condition"] == "tools":  # the search brought the fact, which the answer then quotes
            item = next(it for it in world.items if it["id"] == d["item_id"])
            assert d["messages"][-1]["content"].endswith(f"<answer> {item['answer']}</answer>")
            assert "The results say:" in d["messages"][-1]["content"] and d["messages"][-2]["role"] != "assistant"
    half, _ = build_demonstrations(world.items, proto, tools, known, with_image=False, over_search=0.5)
    again, _ = build_demonstrations(world.items, proto, tools, known, with_image=False, over_search=0.5)
    assert searched(half) == searched(again) and 0 < len(searched(half)) < 8 and searched(half) < searched(every)
    other_seed, _ = build_demonstrations(world.items, proto, tools, known, with_image=False, over_search=0.5, seed=1)
    assert searched(other_seed) != searched(half)


def test_train_cold_start_overrides_are_checked_and_a_finished_cold_start_is_reused(world, tiny_text_model_path,
                                                                                     tmp_path):
    from pipeline.config import ParamsError
    from trainer.config import TrainParams

    with pytest.raises(ParamsError, match="set cold_start to true"):
        build(TrainParams, {"cold_start_overrides": {"over_search": 1.0}})
    typo = build(TrainParams, {"cold_start": True, "cold_start_overrides": {"over_serch": 1.0}})
    with pytest.raises(ValueError, match="did you mean 'train.cold_start_overrides.over_search'"):
        cold_start_policy(typo, BootstrapParams(), lambda: pytest.fail("checked before any work"))
    boot = build(BootstrapParams, {"items": str(world.train_file), "holdout": 0.0,
                                   "cold_start": {"steps": 1, "batch_tokens": 512, "train_layers": 0}})
    train = build(TrainParams, {"model": str(tiny_text_model_path), "output_dir": str(tmp_path), "search_k": 2,
                                "cold_start": True, "cold_start_overrides": {"over_search": 1.0, "cold_start": {"steps": 2}}})
    calls = []

    def tools():
        calls.append(1)
        return _tools(world)()

    model = cold_start_policy(train, boot, tools, log=None)
    metrics = json.loads((tmp_path / "cold_start" / "metrics.json").read_text())
    assert "tools/none_searched" not in metrics["demonstrations"]  # the flags' items need image search: none known
    # the override merged into the bootstrap section: steps from it, batch_tokens kept from the section
    assert metrics["cold_start"]["steps"] == 2 and len(calls) == 1
    key = json.loads((tmp_path / "cold_start" / "key.json").read_text())
    assert key["settings"]["over_search"] == 1.0 and key["settings"]["cold_start"]["batch_tokens"] == 512
    assert cold_start_policy(train, boot, tools, log=None) == model and len(calls) == 1  # reused: no work
    other = build(TrainParams, {**{"model": str(tiny_text_model_path), "output_dir": str(tmp_path), "search_k": 2,
                                   "cold_start": True},
                                "cold_start_overrides": {"over_search": 0.5, "cold_start": {"steps": 2}}})
    cold_start_policy(other, boot, tools, log=None)
    assert len(calls) == 2 and json.loads((tmp_path / "cold_start" / "key.json").read_text())["settings"][
        "over_search"] == 0.5


def test_train_cold_start_searches_through_a_copy_of_the_shared_cache(world, monkeypatch, tmp_path):
    """The shared search cache is a dependency of the train stage and the ones after it: the cold start's new
    searches (the over-searching demonstrations' text searches) go to a copy under the output folder."""
    from pipeline.rollout.protocols import TEXT_SEARCH
    from stages.train import cold_start_tools
    from trainer.config import TrainParams

    monkeypatch.chdir(world.root)
    shared = world.root / "data" / "cache" / "search" / "cache.sqlite"
    before = shared.read_bytes()
    tools = cold_start_tools(build(TrainParams, {"output_dir": str(tmp_path / "train")}), world.search)
    tools.run_many([(TEXT_SEARCH, "a query nobody made before", {})], k=2)
    assert tools.metrics()["misses"] == 1 and shared.read_bytes() == before
    assert (tmp_path / "train" / "cold_start_search" / "search_cache.sqlite").stat().st_size > 0
