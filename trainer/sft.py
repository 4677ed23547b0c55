"""Supervised cold start: fine-tune a model on protocol demonstrations, loss on assistant tokens only.

- `encode_demo(tokenizer, protocol, messages)`: input ids and labels (-100 except on the assistant turns).
- `encode_fact(tokenizer, question, statement)`: the same for one plain-chat fact (knowledge taught, not protocol).
- `cold_start(model_path, demos, output_dir, ..., facts=...)`: TRL's `SFTTrainer` on the tokenised examples (TRL's
  `assistant_masks` column: assistant-only loss; best-fit-decreasing packing, padding-free; bf16 autocast only where
  the device computes bf16 natively; the top `train_layers` decoder layers trained, the rest frozen, to fit a CPU
  budget); writes an HF model folder whose tokenizer carries the protocol's chat and response templates. The
  bootstrap stage and the train stage's optional cold start call it through `trainer/cold_start.py`.

Supports: text-only causal LMs (SmolLM2, Qwen2.5 text) with chat templates that are prefix-preserving. Does not
support: images in the demonstrations (a VLM is taught on text turns only: image parts are dropped), LoRA, several
processes (the bootstrap trains on the main process).

Reads the model folder; writes only `output_dir`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.config import param


@dataclasses.dataclass
class ColdStartParams:
    """Supervised cold start on demonstrations (assistant tokens only)."""

    steps: int = param(40, help="optimizer steps")
    lr: float = param(2e-4, help="peak learning rate (linear warm-up over 10% of the steps, then cosine decay)")
    batch_tokens: int = param(2048, help="tokens per optimizer step (sequences packed into a batch up to this)")
    max_seq_len: int = param(1024, help="demonstrations longer than this (tokens) are dropped")
    train_layers: int = param(10, help="train only the top N decoder layers (+ final norm); 0 = all parameters")
    weight_decay: float = param(0.0, help="AdamW weight decay")
    seed: int = param(0, help="shuffling and initialisation seed")
    threads: int = param(0, help="torch threads (0 = leave torch's default)")
    precision: str = param("auto", help="auto: bf16 autocast where the device computes bf16 natively (AVX512_BF16 / "
                           "AMX CPUs, bf16 GPUs), else fp32; or bf16 | fp32")

    def validate(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.batch_tokens < 64 or self.max_seq_len < 32:
            raise ValueError("steps >= 1, lr > 0, batch_tokens >= 64, max_seq_len >= 32")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation with an assistant-only mask
# ---------------------------------------------------------------------------------------------------------------
def encode_demo(tokenizer: Any, protocol: Any, messages: Sequence[dict], condition: str = "tools") -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: labels are -100 except on the assistant turns' tokens (their
    text and the closing `<|im_end|>`). Relies on the template being prefix-preserving."""
    from pipeline.rollout.engines import split_images

    msgs, _ = split_images(messages, keep_images=False)
    full = protocol.render(tokenizer, msgs, condition, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = len(protocol.render(tokenizer, msgs[:i], condition, add_generation_prompt=True))
        end = len(protocol.render(tokenizer, msgs[:i + 1], condition, add_generation_prompt=False))
        if full[:end] != protocol.render(tokenizer, msgs[:i + 1], condition, add_generation_prompt=False):
            raise ValueError("chat template is not prefix-preserving; cannot mask assistant turns")
        spans.append((start, end))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [t if any(s <= a and b <= e and b > a for s, e in spans) else -100 for t, (a, b) in zip(ids, offsets)]
    return ids, labels


# ---------------------------------------------------------------------------------------------------------------
# Cold start (TRL SFTTrainer)
# ---------------------------------------------------------------------------------------------------------------
def encode_fact(tokenizer: Any, question: str, statement: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one plain-chat exchange (no protocol, no system prompt of ours) that states a fact:
    the known slice of the world is taught as knowledge, not as an answer to a probe question."""
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": statement}]
    prompt = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("chat template is not prefix-preserving; cannot mask the fact's question")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [t if a >= len(prompt) else -100 for t, (a, _) in zip(enc["input_ids"], enc["offset_mapping"])]


def cold_start(model_path: str | Path, demos: Sequence[Mapping[str, Any]], output_dir: str | Path, steps: int | None = None,
               protocol: Any = None, params: ColdStartParams | None = None, log=print,
               facts: Sequence[Mapping[str, str]] = ()) -> dict:
    """Fine-tune `model_path` with TRL's `SFTTrainer` on `demos` (each with "messages" and optional "condition") and
    `facts` ({"question", "statement"}: knowledge taught in plain chat) for `steps` optimizer steps.

    The examples go in tokenised, with TRL's `assistant_masks` column (loss on assistant tokens only), packed
    best-fit-decreasing into rows of `max_seq_len` tokens (padding-free), `batch_tokens // max_seq_len` rows per step;
    bf16 autocast where the device computes bf16 natively (`precision` auto, pipeline/hardware.py). Saves an HF folder
    to `output_dir` (tokenizer with the protocol's chat and response templates). Returns metrics (steps, tokens,
    seconds, first/last loss, demos used/dropped, facts, precision)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from pipeline.hardware import training_bf16
    from pipeline.models import load_processor
    from pipeline.rollout.protocols import get_protocol
    from trainer.config import no_gpu

    params = params or ColdStartParams()
    steps = steps or params.steps
    protocol = protocol or get_protocol("mmsearch_r1")
    if params.threads:
        torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    tok = load_processor(str(model_path))
    tok = getattr(tok, "tokenizer", tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    encoded, dropped, n_facts = [], 0, 0
    examples = [(False, encode_demo(tok, protocol, d["messages"], d.get("condition", "tools"))) for d in demos] + \
        [(True, encode_fact(tok, f["question"], f["statement"])) for f in facts]
    for is_fact, (ids, labels) in examples:
        if len(ids) > params.max_seq_len or all(x == -100 for x in labels):
            dropped += 1
            continue
        encoded.append((ids, [int(x != -100) for x in labels]))
        n_facts += is_fact
    if not encoded:
        raise ValueError("no demonstration fits max_seq_len; raise bootstrap.cold_start.max_seq_len")
    train = datasets.Dataset.from_dict({"input_ids": [e[0] for e in encoded], "assistant_masks": [e[1] for e in encoded]})
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    select_trainable(model, params.train_layers)
    bf16 = training_bf16(params.precision)
    out = Path(output_dir)
    cfg = SFTConfig(
        output_dir=str(out / "_trainer"), max_steps=steps, learning_rate=params.lr, lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 10), weight_decay=params.weight_decay, max_grad_norm=1.0, seed=params.seed,
        per_device_train_batch_size=max(1, params.batch_tokens // params.max_seq_len), max_length=params.max_seq_len,
        packing=True, packing_strategy="bfd", shuffle_dataset=True, bf16=bf16, use_cpu=no_gpu(),
        gradient_checkpointing=False,  # TRL's default recomputes every layer: 25% slower, and memory is no issue here
        logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0,
        disable_tqdm=True)  # the Progress callback logs a line every 10 steps instead of a dict per step
    t0 = [0.0]

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            t0[0] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if log and logs and "loss" in logs and (state.global_step % 10 == 1 or state.global_step == steps):
                rate = float(logs.get("num_tokens", 0)) / max(time.perf_counter() - t0[0], 1e-9)
                log(f"cold start step {state.global_step}/{steps} loss {float(logs['loss']):.4f} ({rate:.0f} tok/s)")

    trainer = SFTTrainer(model=model, args=cfg, train_dataset=train, processing_class=tok, callbacks=[Progress()])
    start = time.perf_counter()
    with _score_labelled_positions_only():
        trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model = trainer.model.to(torch.bfloat16)
    model.save_pretrained(out)
    protocol.prepare_tokenizer(tok)
    tok.save_pretrained(out)
    shutil.rmtree(out / "_trainer", ignore_errors=True)
    n_tokens = int(float(next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), 0)))
    return {"steps": steps, "demos_used": len(encoded) - n_facts, "facts_used": n_facts, "dropped": dropped,
            "train_tokens": n_tokens,
            "precision": "bf16" if bf16 else "fp32", "seconds": round(seconds, 2),
            "tokens_per_s": round(n_tokens / seconds, 1) if seconds else 0.0,
            "loss_first": round(sum(losses[:5]) / len(losses[:5]), 4) if losses else None,
            "loss_last": round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else None}


@contextlib.contextmanager
def _score_labelled_positions_only():
    """TRL's fused LM head scores only the positions with a label on Triton devices and every position elsewhere
    (against Neuron recompilations). On a CPU that projects the 49k-token vocabulary for the prompt and tool-result
    tokens too (85% of a demonstration) and made a step 3x slower; CPUs do not recompile, so compact there too."""
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def select_trainable(model: Any, train_layers: int) -> list:
    """Freeze all but the top `train_layers` decoder layers and the final norm (0, or more than the model has: all
    stay trainable); returns the trainable parameters. The decoder is found where causal LMs keep it (`model.layers`)
    and where VLMs do (`model.language_model.layers`, `language_model.model.layers`); a model with neither raises
    instead of silently training every weight."""
    stack = _decoder_stack(model) if train_layers else None
    if train_layers and stack is None:
        raise ValueError(f"train_layers={train_layers}: {type(model).__name__} has no decoder layers where they are "
                         "looked for (model.layers, model.language_model.layers, language_model.model.layers); "
                         "set train_layers: 0 (all weights) or use LoRA")
    if not train_layers or train_layers >= len(stack.layers):
        return [p for p in model.parameters() if p.requires_grad]
    for p in model.parameters():
        p.requires_grad_(False)
    keep = list(stack.layers[len(stack.layers) - train_layers:])
    norm = getattr(stack, "norm", None)
    params = [p for layer in keep for p in layer.parameters()] + (list(norm.parameters()) if norm is not None else [])
    for p in params:
        p.requires_grad_(True)
    return params


def _decoder_stack(model: Any):
    """The module holding the decoder's `layers` (and final `norm`): a causal LM's `model`, or a VLM's language model."""
    from torch import nn

    inner = getattr(model, "model", None)
    for candidate in (inner, getattr(inner, "language_model", None),
                      getattr(getattr(model, "language_model", None), "model", None)):
        if candidate is not None and isinstance(getattr(candidate, "layers", None), nn.ModuleList):
            return candidate
    return None


__all__ = ["ColdStartParams", "cold_start", "encode_demo", "encode_fact", "select_trainable"]
