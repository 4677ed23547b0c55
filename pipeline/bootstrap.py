"""Bootstrap of the labeler: demonstrations built with the real search tools, then a short supervised cold start.

The paper labels with a model already trained in the search environment. A small base model that does not follow
the protocol (the packaged SmolLM2-135M-Instruct never does) is first taught it on a bootstrap split that shares no
entity with the probed items, so it cannot memorise their answers:

- `closed_book_known(model, items)`: which items the *base* model answers correctly without search (plain chat,
  greedy; the base model does not know the protocol, so it is asked in its own format).
- `build_demonstrations(items, protocol, tools, known)`: per item, a closed-book demonstration (reason + answer)
  and a tools demonstration: answer directly where the base model knew the answer; otherwise image search (what
  does the image show), then, when the question asks a fact about it, a text search about the recognised entity,
  using the REAL tool results (rendered exactly as the probe renders them), and the gold answer.
- `cold_start(model_path, demos, output_dir, steps, ...)`: a small torch loop with loss on assistant tokens only
  (the top `train_layers` decoder layers are trained, the rest frozen, to fit a CPU budget); writes an HF model
  folder whose tokenizer carries the protocol's chat and response templates. The GRPO stage's optional cold start
  calls the same function.

Reads the model folder and the search tools (through their cache); writes only `output_dir`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.config import param
from pipeline.images import image_bytes
from pipeline.rollout.protocols import IMAGE_SEARCH, TEXT_SEARCH

# What a text search asks about the recognised entity, per demo-world question kind; other kinds ask the
# question's own key words.
FACT_QUERY = {
    "flag_capital": "capital",
    "flag_currency": "currency",
    "flag_region": "region",
    "flag_population": "population",
    "flag_neighbours": "borders",
    "photo_fact": "",
}
STOPWORDS = set("a an the of is are was were what which who whom whose how many much in on at to for with this "
                "that these those shown image picture photo does do did country flag it its and or".split())


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
# Closed-book check of the base model
# ---------------------------------------------------------------------------------------------------------------
def closed_book_known(model_path: str, items: Sequence[Mapping[str, Any]], judge_fn, max_tokens: int = 16,
                      engine: Any = None) -> dict[str, bool]:
    """item id -> whether the base model answers correctly without search (greedy, its own chat template).

    A text-only model gets the question without the image. The answer is judged on the whole reply and on its first
    line (a base model answers in a sentence)."""
    from pipeline.rollout.engines import Sampling, make_engine

    engine = engine or make_engine("transformers", model_path, protocol=None)
    convs = []
    for it in items:
        text = f"Answer in a few words. {it['question']}"
        content: Any = text
        if engine.is_vlm and image_bytes(it.get("image")) is not None:
            content = [{"type": "image", "image": image_bytes(it["image"])}, {"type": "text", "text": text}]
        convs.append([{"role": "user", "content": content}])
    outs = engine.generate(convs, n=1, sampling=Sampling(temperature=0.0, max_tokens=max_tokens, stop_at_action=False))
    known = {}
    for it, (g,) in zip(items, outs):
        reply = g.text.strip()
        first = reply.splitlines()[0] if reply else ""
        golds = (it["answer"], list(it.get("aliases") or []))
        known[it["id"]] = bool(reply) and any(
            judge_fn(cand, golds[0], golds[1], it["question"]).correct for cand in {reply, first})
    return known


# ---------------------------------------------------------------------------------------------------------------
# Demonstrations
# ---------------------------------------------------------------------------------------------------------------
def _mentions(text: str, names: Sequence[str]) -> bool:
    from pipeline.judge import normalize_answer

    t = f" {normalize_answer(text)} "
    return any(n and f" {normalize_answer(n)} " in t for n in names)


def _fact_query(item: Mapping[str, Any], entity: str) -> str:
    topic = FACT_QUERY.get(item.get("category", ""))
    if topic is None or topic == "":
        words = [w for w in re.findall(r"[A-Za-z0-9']+", item["question"]) if w.lower() not in STOPWORDS]
        topic = " ".join(words[:4])
    return f"{entity} {topic}".strip()


def _result_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    return " ".join(f"{h.title} {h.snippet}" for h in result.hits)


def build_demonstrations(items: Sequence[Mapping[str, Any]], protocol: Any, tools: Any, known: Mapping[str, bool],
                         with_image: bool, see_image_results: bool | None = None,
                         conditions: Sequence[str] = ("tools", "closed_book"),
                         search_k: int | None = None) -> tuple[list[dict], dict]:
    """Demonstrations (dicts: item_id, condition, kind, messages) and counts by kind.

    The tag protocol's text is written here (mmsearch_r1); the tool results are the real ones, rendered by the
    protocol (`tool_result_message`), so training text equals what the probe will show the model."""
    if protocol.name != "mmsearch_r1":
        raise ValueError("demonstrations are written in the mmsearch_r1 tag format; use protocol mmsearch_r1")
    see_image_results = with_image if see_image_results is None else see_image_results
    lim = protocol.limits
    demos: list[dict] = []
    counts: dict[str, int] = {}

    def add(item, condition, kind, messages):
        demos.append({"item_id": item["id"], "condition": condition, "kind": kind, "messages": messages})
        counts[kind] = counts.get(kind, 0) + 1

    def turn(reason: str, action: str) -> dict:
        return {"role": "assistant", "content": f"<reason>{reason}</reason>{action}"}

    # Image search for every item first, all at once through the cache.
    need_img = [it for it in items if "tools" in conditions and not known.get(it["id"])
                and image_bytes(it.get("image")) is not None]
    img_results = dict(zip([it["id"] for it in need_img], tools.run_many(
        [(IMAGE_SEARCH, image_bytes(it["image"]), _meta(it)) for it in need_img], k=search_k))) if need_img else {}
    text_calls: list[tuple[Mapping, str, str]] = []
    for it in need_img:
        res = img_results[it["id"]]
        entity = it.get("entity") or ""
        titles = [h.title for h in getattr(res, "hits", [])]
        hit = next((t for t in titles if _mentions(t, [entity, it["answer"]])), "")
        if hit and it.get("category") != "flag_country" and lim.max_turns >= 3 and lim.max_text_search >= 1:
            text_calls.append((it, entity, _fact_query(it, entity)))
    txt_results = dict(zip([c[0]["id"] for c in text_calls], tools.run_many(
        [(TEXT_SEARCH, q) for _, _, q in text_calls], k=search_k))) if text_calls else {}
    queries = {c[0]["id"]: (c[1], c[2]) for c in text_calls}

    for it in items:
        gold = it["answer"]
        if "closed_book" in conditions:
            msgs = protocol.initial_messages(it, "closed_book", with_image=with_image)
            why = ("I answer from what I know." if with_image else
                   "I cannot see the image, so I answer from what I know.")
            add(it, "closed_book", "closed_book", msgs + [turn(why, f"<answer>{gold}</answer>")])
        if "tools" not in conditions:
            continue
        msgs = protocol.initial_messages(it, "tools", with_image=with_image)
        if known.get(it["id"]):
            add(it, "tools", "direct", msgs + [turn("I know this without searching.", f"<answer>{gold}</answer>")])
            continue
        if it["id"] not in img_results:
            continue
        why = ("I do not recognise what the image shows, so I search with the image." if with_image else
               "I cannot see the image, so I search with it to find out what it shows.")
        msgs = msgs + [turn(why, "<search><img></search>")]
        res = img_results[it["id"]]
        last = 2 >= lim.max_turns
        msgs.append(protocol.tool_result_message(res, it["question"], 1, last, with_images=see_image_results,
                                                 condition="tools"))
        entity = it.get("entity") or ""
        if it["id"] in txt_results:
            name, query = queries[it["id"]]
            msgs.append(turn(f"The image shows {name}. I search for the fact.", f"<text_search>{query}</text_search>"))
            tres = txt_results[it["id"]]
            msgs.append(protocol.tool_result_message(tres, it["question"], 2, True, with_images=see_image_results,
                                                     condition="tools"))
            if _mentions(_result_text(tres), [gold, *(it.get("aliases") or [])]):
                add(it, "tools", "image_text", msgs + [turn("The results give the answer.", f"<answer>{gold}</answer>")])
            else:
                add(it, "tools", "image_text_miss", msgs + [turn("The results do not say; my best guess.",
                                                                  f"<answer>{gold}</answer>")])
            continue
        titles = " ".join(h.title for h in getattr(res, "hits", []))
        if _mentions(titles, [entity, gold]):
            add(it, "tools", "image", msgs + [turn("The results show the answer.", f"<answer>{gold}</answer>")])
        else:
            add(it, "tools", "image_miss", msgs + [turn("The results do not show it; my best guess.",
                                                         f"<answer>{gold}</answer>")])
    return demos, counts


def _meta(item: Mapping[str, Any]) -> dict:
    try:
        meta = json.loads(item.get("meta") or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


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


__all__ = ["ColdStartParams", "FACT_QUERY", "build_demonstrations", "closed_book_known", "cold_start", "encode_demo"]
