"""Supervised cold start: fine-tune a model on protocol demonstrations, loss on assistant tokens only.

- `encode_demo(tokenizer, protocol, messages)`: input ids and labels (-100 except on the assistant turns).
- `cold_start(model_path, demos, output_dir, ...)`: a small torch loop (the top `train_layers` decoder layers are
  trained, the rest frozen, to fit a CPU budget); writes an HF model folder whose tokenizer carries the protocol's
  chat and response templates. The bootstrap stage and the train stage's optional cold start call it through
  `trainer/cold_start.py`.

Reads the model folder; writes only `output_dir`.
"""
from __future__ import annotations

import dataclasses
import math
import random
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

    def validate(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.batch_tokens < 64 or self.max_seq_len < 32:
            raise ValueError("steps >= 1, lr > 0, batch_tokens >= 64, max_seq_len >= 32")


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
# Cold start
# ---------------------------------------------------------------------------------------------------------------
def cold_start(model_path: str | Path, demos: Sequence[Mapping[str, Any]], output_dir: str | Path, steps: int | None = None,
               protocol: Any = None, params: ColdStartParams | None = None, log=print) -> dict:
    """Fine-tune `model_path` on `demos` (each with "messages" and optional "condition") for `steps` optimizer steps
    with loss on assistant tokens only; save an HF folder to `output_dir` (tokenizer with the protocol's chat and
    response templates). Returns metrics (steps, tokens, seconds, first/last loss, demos used/dropped)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.models import load_processor
    from pipeline.rollout.protocols import get_protocol

    params = params or ColdStartParams()
    steps = steps or params.steps
    protocol = protocol or get_protocol("mmsearch_r1")
    if params.threads:
        torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    tok = load_processor(str(model_path))
    tok = getattr(tok, "tokenizer", tok)
    encoded, dropped = [], 0
    for d in demos:
        ids, labels = encode_demo(tok, protocol, d["messages"], d.get("condition", "tools"))
        if len(ids) > params.max_seq_len or all(x == -100 for x in labels):
            dropped += 1
            continue
        encoded.append((ids, labels))
    if not encoded:
        raise ValueError("no demonstration fits max_seq_len; raise bootstrap.cold_start.max_seq_len")
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    model.train()
    trainable = _select_trainable(model, params.train_layers)
    opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    rng = random.Random(params.seed)
    order: list[int] = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    losses, tokens, t0 = [], 0, time.perf_counter()
    for step in range(steps):
        batch: list[tuple[list[int], list[int]]] = []
        while True:
            if not order:
                order = list(range(len(encoded)))
                rng.shuffle(order)
            cand = encoded[order[-1]]
            width = max([len(b[0]) for b in batch] + [len(cand[0])])
            if batch and width * (len(batch) + 1) > params.batch_tokens:
                break
            batch.append(cand)
            order.pop()
        width = max(len(b[0]) for b in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        lab = torch.full((len(batch), width), -100, dtype=torch.long)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (a, b) in enumerate(batch):
            ids[i, :len(a)] = torch.tensor(a)
            lab[i, :len(b)] = torch.tensor(b)
            att[i, :len(a)] = 1
        loss = _assistant_loss(model, ids, att, lab)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        tokens += int(att.sum())
        if log and (step % 10 == 0 or step == steps - 1):
            log(f"cold start step {step + 1}/{steps} loss {losses[-1]:.4f} "
                f"({tokens / (time.perf_counter() - t0):.0f} tok/s)")
    seconds = time.perf_counter() - t0
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    protocol.prepare_tokenizer(tok)
    tok.save_pretrained(out)
    return {"steps": steps, "demos_used": len(encoded), "demos_dropped": dropped, "train_tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
            "loss_first": round(sum(losses[:5]) / len(losses[:5]), 4),
            "loss_last": round(sum(losses[-5:]) / len(losses[-5:]), 4)}


def _select_trainable(model: Any, train_layers: int) -> list:
    layers = _decoder_layers(model)
    if not train_layers or layers is None or train_layers >= len(layers):
        return [p for p in model.parameters() if p.requires_grad]
    for p in model.parameters():
        p.requires_grad_(False)
    keep = list(layers[len(layers) - train_layers:])
    norm = getattr(getattr(model, "model", model), "norm", None)
    params = [p for layer in keep for p in layer.parameters()] + (list(norm.parameters()) if norm is not None else [])
    for p in params:
        p.requires_grad_(True)
    return params


def _decoder_layers(model: Any):
    inner = getattr(model, "model", None)
    return getattr(inner, "layers", None)


def _assistant_loss(model: Any, ids, att, lab):
    """Cross-entropy on labelled positions only; the LM head runs just on those (most tokens are prompt)."""
    import torch

    hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state
    target = lab[:, 1:]
    pos = target != -100
    h = hidden[:, :-1][pos]
    logits = model.lm_head(h).float()
    return torch.nn.functional.cross_entropy(logits, target[pos])


__all__ = ["ColdStartParams", "cold_start", "encode_demo"]
