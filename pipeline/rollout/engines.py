"""Generation engines for the rollout loop: `vllm` (offline `vllm.LLM`) and `transformers` (batched `generate`).

Both take chat message lists, render them with the protocol's chat template (the same Jinja text TRL and the
evaluator use), pass images as multimodal inputs when the model is a vision-language model, and return, per
conversation, `n` sampled continuations with their token counts:

    engine = make_engine("vllm", model_path, protocol=proto, seed=0)
    outs = engine.generate([messages, ...], n=4, sampling=Sampling(max_tokens=96), seed=17)
    outs[i][j].text, outs[i][j].prompt_tokens, outs[i][j].completion_tokens

Determinism. A call with `seed=` is reproducible for the same batch of prompts: on vLLM-CPU per-request seeds crash
the engine ("CPU Generator does not use offset"), so the engine runs in-process and the global torch generator the
sampler draws from is re-seeded before the call (`seed_mode="engine"`); on CUDA each request gets its own seed derived
from `seed` and its position (`seed_mode="request"`). `begin_batch()` empties vLLM's prefix cache so a batch's result
never depends on what ran before it (a resumed run then reproduces an uninterrupted one).

A text-only model never receives image blocks (they are dropped before rendering; the loop also builds its prompts
without the image and records saw_image=False). Reads the model folder; writes nothing.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import param

ENGINE_KINDS = ("vllm", "transformers")


@dataclasses.dataclass
class Sampling:
    """Sampling settings of one generate call."""

    temperature: float = param(1.0, help="sampling temperature (0 = greedy)")
    top_p: float = param(1.0, help="nucleus sampling mass")
    max_tokens: int = param(96, help="most new tokens per assistant turn")
    stop_at_action: bool = param(True, help="stop a turn at the closing tag of its action (the paper's stop strings)")

    def validate(self) -> None:
        if self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("max_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")


@dataclasses.dataclass
class EngineParams:
    """How the labeler/policy model is served (shared by probe, bootstrap checks, evaluate)."""

    kind: str = param("vllm", help="vllm (offline vllm.LLM; vllm-cpu on a CPU machine) | transformers (batched generate)")
    dtype: str = param("machine", help="weights dtype: machine (chosen for this device by pipeline/hardware.py: "
                       "bfloat16 on CUDA or AMX CPUs, float32 on other CPUs) | bfloat16 | float16 | float32 | auto "
                       "(the model config's)")
    max_model_len: int = param(4096, help="vllm: longest prompt + completion in tokens")
    gpu_memory_utilization: float = param(0.85, help="vllm on CUDA: share of GPU memory to use")
    tensor_parallel_size: int = param(1, help="vllm: GPUs per engine")
    kv_cache_gib: int = param(1, help="vllm-cpu: KV cache size in GiB (sets VLLM_CPU_KVCACHE_SPACE); size it to hold a whole batch's conversations, or vLLM evicts cached prefixes and recomputes them")
    enforce_eager: bool = param(True, help="vllm: no CUDA graphs / torch.compile (faster start-up); false works on CPU too: about 60 s to compile once, then 15-20% faster")
    enable_prefix_caching: bool = param(True, help="vllm: reuse the KV cache of shared prompt prefixes")
    block_size: int = param(0, help="vllm: tokens per KV-cache block, the prefix cache's unit (0 = vLLM's default: 128 on CPU, 16 on CUDA)")
    seed_mode: str = param("auto", help="auto | engine (re-seed the in-process sampler per call; CPU) | request (per-request seeds; CUDA)")
    max_batch: int = param(32, help="transformers: conversations per generate call")

    def resolved_dtype(self) -> str:
        """The dtype name to load weights in, `machine` resolved for this device."""
        from pipeline.hardware import inference_dtype

        return inference_dtype("auto") if self.dtype == "machine" else self.dtype

    def validate(self) -> None:
        if self.dtype not in ("machine", "auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype {self.dtype!r} is not one of machine, auto, bfloat16, float16, float32")
        if self.kind not in ENGINE_KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {ENGINE_KINDS}")
        if self.seed_mode not in ("auto", "engine", "request"):
            raise ValueError(f"seed_mode {self.seed_mode!r} is not one of auto, engine, request")
        if self.block_size < 0 or self.kv_cache_gib < 1:
            raise ValueError("block_size must be >= 0 (0 = vLLM's default; a multiple of 32 on CPU) and "
                             "kv_cache_gib >= 1")


@dataclasses.dataclass
class GenOut:
    """One sampled continuation: text (stop string included, EOS not), token counts, why it stopped.

    `cached_prompt_tokens`: prompt tokens vLLM took from its prefix cache instead of computing (0 elsewhere)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = ""
    cached_prompt_tokens: int = 0


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts (stable across runs and machines)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def split_images(messages: Sequence[dict], keep_images: bool) -> tuple[list[dict], list[Any]]:
    """Messages ready for the chat template plus the images in rendering order (as PIL images).

    Image blocks carry bytes / datasets dicts / PIL under "image"; the template only needs the block's type.
    With `keep_images=False` image blocks are dropped (text-only model)."""
    from pipeline.rollout.protocols import to_pil

    images: list[Any] = []
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            blocks = []
            for b in content:
                if isinstance(b, dict) and b.get("type") in ("image", "image_pil", "image_url"):
                    if not keep_images:
                        continue
                    images.append(to_pil(b.get("image") if b.get("image") is not None else b.get("image_pil")))
                    blocks.append({"type": "image"})
                else:
                    blocks.append(b)
            m = {**m, "content": blocks}
        out.append(m)
    return out, images


class Engine:
    """Common part: tokenizer/processor, protocol template rendering, stop strings."""

    kind = ""

    def __init__(self, model_path: str | os.PathLike, protocol: Any = None, seed: int = 0,
                 params: EngineParams | None = None):
        from pipeline.models import load_processor, model_info

        self.model_path = str(model_path)
        self.params = params or EngineParams(kind=self.kind)
        self.protocol = protocol
        self.seed = seed
        self.is_vlm = bool(model_info(self.model_path)["is_vlm"])
        # Running totals over generate calls: prompt (once per conversation, whatever n), cached_prompt, completion.
        self.token_counts: collections.Counter = collections.Counter()
        self.processor = load_processor(self.model_path)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # ------------------------------------------------------------------ rendering
    def render(self, messages: Sequence[dict], tools: list[dict] | None = None) -> tuple[str, list[Any]]:
        """(prompt text, images) of one conversation with the generation prompt appended."""
        msgs, images = split_images(messages, keep_images=self.is_vlm)
        template = getattr(self.protocol, "chat_template", None) or None
        text = self.tokenizer.apply_chat_template(msgs, tools=tools, chat_template=template,
                                                  add_generation_prompt=True, tokenize=False)
        return text, images

    def stop_strings(self, sampling: Sampling) -> list[str]:
        stops = list(getattr(self.protocol, "stop_strings", None) or []) if sampling.stop_at_action else []
        return stops

    def begin_batch(self) -> None:
        """Forget state carried from earlier batches (vLLM: the prefix cache)."""

    def generate(self, conversations: Sequence[Sequence[dict]], n: int = 1, sampling: Sampling | None = None,
                 seed: int | None = None, tools: list[dict] | None = None) -> list[list[GenOut]]:
        raise NotImplementedError

    def _count(self, outs: list[list[GenOut]]) -> None:
        """Add one call's tokens to `token_counts`."""
        for samples in outs:
            if samples:
                self.token_counts["prompt"] += samples[0].prompt_tokens
                self.token_counts["cached_prompt"] += samples[0].cached_prompt_tokens
            self.token_counts["completion"] += sum(g.completion_tokens for g in samples)

    def close(self) -> None:
        """Release the model (tests share one engine per pytest run; stages exit anyway)."""


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text up to and including the earliest stop string."""
    best = -1
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best < 0 or i + len(s) < best):
            best = i + len(s)
    return (text[:best], True) if best >= 0 else (text, False)


class VLLMEngine(Engine):
    """Offline vLLM (`vllm.LLM`): batched, prefix caching, n samples per prompt, images as multi_modal_data."""

    kind = "vllm"

    def __init__(self, model_path, protocol=None, seed: int = 0, params: EngineParams | None = None):
        params = params or EngineParams(kind="vllm")
        self._on_cpu = not _cuda_available()
        mode = params.seed_mode if params.seed_mode != "auto" else ("engine" if self._on_cpu else "request")
        self.seed_mode = mode
        if self._on_cpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(params.kv_cache_gib)
        if mode == "engine":
            # The sampler must draw from this process's torch generator so that re-seeding it is effective.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        super().__init__(model_path, protocol, seed, params)
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=self.model_path, seed=seed, dtype=params.resolved_dtype(), max_model_len=params.max_model_len,
            enforce_eager=params.enforce_eager, enable_prefix_caching=params.enable_prefix_caching,
            tensor_parallel_size=params.tensor_parallel_size,
        )
        if params.block_size:
            kwargs["block_size"] = params.block_size
        if not self._on_cpu:
            kwargs["gpu_memory_utilization"] = params.gpu_memory_utilization
        if self.is_vlm:
            kwargs["limit_mm_per_prompt"] = {"image": 16}
        self.llm = LLM(**kwargs)

    def begin_batch(self) -> None:
        if self.params.enable_prefix_caching:
            self.llm.reset_prefix_cache()

    def generate(self, conversations, n=1, sampling=None, seed=None, tools=None):
        import torch
        from vllm import SamplingParams

        sampling = sampling or Sampling()
        if not conversations:
            return []
        stops = self.stop_strings(sampling)
        prompts, params_list = [], []
        for i, conv in enumerate(conversations):
            text, images = self.render(conv, tools)
            prompt: dict[str, Any] = {"prompt": text}
            if images:
                prompt["multi_modal_data"] = {"image": images}
            prompts.append(prompt)
            req_seed = derive_seed(seed, i) if (seed is not None and self.seed_mode == "request") else None
            params_list.append(SamplingParams(
                n=n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                stop=stops or None, include_stop_str_in_output=True, seed=req_seed, skip_special_tokens=True,
            ))
        if seed is not None and self.seed_mode == "engine":
            torch.manual_seed(seed)
        results = self.llm.generate(prompts, params_list, use_tqdm=False)
        out = []
        for r in results:
            n_prompt, n_cached = len(r.prompt_token_ids or []), int(getattr(r, "num_cached_tokens", 0) or 0)
            out.append([GenOut(c.text, n_prompt, len(c.token_ids), str(c.finish_reason or ""), n_cached)
                        for c in r.outputs])
        self._count(out)
        return out

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # best effort; the process exit cleans up anyway
                pass
            self.llm = None


class TransformersEngine(Engine):
    """transformers `generate` on batches of left-padded prompts; n samples by repeating each prompt."""

    kind = "transformers"

    def __init__(self, model_path, protocol=None, seed: int = 0, params: EngineParams | None = None,
                 model: Any = None):
        super().__init__(model_path, protocol, seed, params or EngineParams(kind="transformers"))
        import torch

        self.tokenizer.padding_side = "left"
        if model is None:
            dtype = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16,
                     "float32": torch.float32}[self.params.resolved_dtype()]
            if self.is_vlm:
                from transformers import AutoModelForImageTextToText as Auto
            else:
                from transformers import AutoModelForCausalLM as Auto
            model = Auto.from_pretrained(self.model_path, dtype=dtype)
        self.model = model.eval()
        gen_cfg = getattr(self.model, "generation_config", None)
        eos = {self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>",) if t in self.tokenizer.get_vocab()}
        if gen_cfg is not None and gen_cfg.eos_token_id is not None:
            eos |= set(gen_cfg.eos_token_id if isinstance(gen_cfg.eos_token_id, list) else [gen_cfg.eos_token_id])
        self.eos_ids = sorted(eos) or [self.tokenizer.eos_token_id]

    def _encode(self, texts: list[str], images: list[list[Any]]):
        if self.is_vlm:
            flat = [im for ims in images for im in ims]
            return self.processor(text=texts, images=flat or None, padding=True, return_tensors="pt")
        return self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)

    def generate(self, conversations, n=1, sampling=None, seed=None, tools=None):
        import torch

        sampling = sampling or Sampling()
        if not conversations:
            return []
        stops = self.stop_strings(sampling)
        rendered = [self.render(c, tools) for c in conversations]
        # One row per (conversation, sample), in order; n copies of a prompt are adjacent.
        rows = [(i, rendered[i]) for i in range(len(rendered)) for _ in range(n)]
        texts_out: list[GenOut] = []
        if seed is not None:
            torch.manual_seed(seed)
        step = max(1, self.params.max_batch)
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            enc = self._encode([r[1][0] for r in chunk], [r[1][1] for r in chunk])
            kwargs = dict(max_new_tokens=sampling.max_tokens, eos_token_id=self.eos_ids,
                          pad_token_id=self.tokenizer.pad_token_id)
            if sampling.temperature > 0:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            else:
                kwargs.update(do_sample=False)
            if stops:
                kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
            with torch.no_grad():
                gen = self.model.generate(**enc, **kwargs)
            width = enc["input_ids"].shape[1]
            mask = enc["attention_mask"]
            for k in range(len(chunk)):
                new = gen[k, width:].tolist()
                n_new = len(new)
                finish = "length"
                for j, t in enumerate(new):
                    if t in self.eos_ids or t == self.tokenizer.pad_token_id:
                        n_new, finish = j + (1 if t in self.eos_ids else 0), "stop"
                        break
                text = self.tokenizer.decode(new[:n_new], skip_special_tokens=True)
                text, stopped = _cut_at_stop(text, stops)
                if stopped:
                    finish = "stop"
                texts_out.append(GenOut(text, int(mask[k].sum()), n_new, finish))
        out = [texts_out[i * n:(i + 1) * n] for i in range(len(conversations))]
        self._count(out)
        return out

    def close(self) -> None:
        self.model = None


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def make_engine(kind: str = "vllm", model_path: str | os.PathLike = "", protocol: Any = None, seed: int = 0,
                params: EngineParams | None = None, **kwargs: Any) -> Engine:
    """An engine of `kind` ("vllm" | "transformers") over the local model folder `model_path`."""
    if not model_path or not Path(model_path).exists():
        raise FileNotFoundError(f"model folder {str(model_path)!r} not found; resolve the spec with "
                                "pipeline.models.resolve_model first")
    params = dataclasses.replace(params, kind=kind) if params else EngineParams(kind=kind)
    params.validate()
    if kind == "vllm":
        return VLLMEngine(model_path, protocol, seed, params)
    if kind == "transformers":
        return TransformersEngine(model_path, protocol, seed, params, **kwargs)
    raise ValueError(f"engine kind {kind!r} is not one of {ENGINE_KINDS}")


__all__ = ["ENGINE_KINDS", "Engine", "EngineParams", "GenOut", "Sampling", "TransformersEngine", "VLLMEngine",
           "derive_seed", "make_engine", "split_images"]
