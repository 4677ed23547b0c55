"""Shared pieces of the training tests: a small real search world (flag corpora -> local indexes -> items -> a
search cache filled the way probe fills it) and tiny models warmed up on protocol demonstrations so that GRPO
rollouts contain tool calls. Not a test module (no tests here); imported by tests/test_train*.py and, by dotted
path, by the subprocesses those tests start.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

FLAGS = ("France", "Italy", "Japan", "Brazil", "Canada", "Germany", "India", "Mexico")
QUESTION = "Which country does this flag belong to?"


@dataclasses.dataclass
class World:
    root: Path
    train_file: Path
    search: object  # SearchParams (cache path relative to root)
    items: list


def build_world(root: Path) -> World:
    """data/corpora (8 flags + 8 passages), data/index via the index stage, data/balance/train.parquet (8 items),
    and a search cache holding every item's image search plus one text search per item (cache_first)."""
    import datasets

    from pipeline.config import build
    from pipeline.schema import make_item_id, sha1_hex, write_items
    from pipeline.search import SearchParams, SearchTools
    from packaged_corpora import flag_arrays, png_bytes
    from stages.index import Params, run

    arrays = flag_arrays()
    corpora = root / "data" / "corpora"
    corpora.mkdir(parents=True, exist_ok=True)
    images, passages, items = [], [], []
    for country in FLAGS:
        png = png_bytes(arrays[country])
        url = "https://en.wikipedia.org/wiki/Flag_of_" + country
        images.append({"image_id": f"flag:{country}", "title": f"Flag of {country}", "url": url, "entity": country,
                       "license": "MIT", "image": {"bytes": png, "path": None}})
        passages.append({"passage_id": f"p:{country}", "title": country, "text": f"{country} is a country with a flag.",
                         "url": "https://en.wikipedia.org/wiki/" + country, "entity": country, "license": "MIT"})
        sha = sha1_hex(png)
        items.append({"id": make_item_id("test", QUESTION, country, sha), "image": {"bytes": png, "path": None},
                      "image_sha1": sha, "question": f"{QUESTION} ({country[:2]})", "answer": country,
                      "aliases": [], "source": "test", "category": "flag_country", "license": "MIT",
                      "entity": country, "meta": "{}"})
    sfeat = datasets.Features({k: datasets.Value("string") for k in ("passage_id", "title", "text", "url", "entity", "license")})
    ifeat = datasets.Features({**{k: datasets.Value("string") for k in ("image_id", "title", "url", "entity", "license")},
                               "image": datasets.Image()})
    datasets.Dataset.from_list(passages, features=sfeat).to_parquet(str(corpora / "passages.parquet"))
    datasets.Dataset.from_list(images, features=ifeat).to_parquet(str(corpora / "images.parquet"))
    assert run(Params(corpora_dir=str(corpora), out_dir=str(root / "data" / "index"), threads=1), None) == 0

    train_file = root / "data" / "balance" / "train.parquet"
    write_items(items, train_file)
    import pyarrow.parquet as pq

    table = pq.read_table(train_file)
    table = table.append_column("label", __import__("pyarrow").array(["image_search_required"] * len(items)))
    pq.write_table(table, train_file)

    search = build(SearchParams, {"cache": {"path": "data/cache/search/cache.sqlite", "mode": "cache_first"},
                                  "k_image": 2, "k_text": 1, "local": {"threads": 1}})
    tools = SearchTools.from_params(search, root)
    for it in items:  # what probe leaves in the cache; training replays it
        tools.image_search(it["image"]["bytes"])
        tools.text_search(it["entity"])
    tools.close()
    return World(root, train_file, search, items)


# ---------------------------------------------------------------------------------------------------------------
# protocol warm-up of random tiny models
# ---------------------------------------------------------------------------------------------------------------
def _demos(world: World, protocol_name: str, with_image: bool) -> list[list[dict]]:
    """Conversations image_search -> answer (and text_search -> answer) rendered with the real tool results."""
    from pipeline.rollout.protocols import get_protocol
    from pipeline.rollout.protocols.base import blocks_with_pil
    from pipeline.search import SearchTools

    proto = get_protocol(protocol_name)
    tools = SearchTools.from_params(world.search, world.root)
    image_tool = proto.tool_names["image_search"]
    convs = []
    for it in world.items:
        for kind in ("image_search", "text_search"):
            msgs = proto.initial_messages(it, "tools", with_image=with_image)
            if with_image:
                msgs = [{**m, "content": blocks_with_pil(m["content"]) if isinstance(m["content"], list) else m["content"]}
                        for m in msgs]
            if kind == "image_search":
                result = tools.image_search(it["image"]["bytes"])
                call = {"name": image_tool, "arguments": {"query": ""} if image_tool == "search" else {}}
            else:
                result = tools.text_search(it["entity"])
                call = {"name": "text_search", "arguments": {"query": it["entity"]}}
            reason = "<reason>I need to search.</reason>" if protocol_name == "mmsearch_r1" else ""
            answer = (f"<reason>The results show it.</reason><answer>{it['answer']}</answer>"
                      if protocol_name == "mmsearch_r1" else f"<answer>{it['answer']}</answer>")
            tool_msg = proto.tool_result_message(result, it["question"], 1, False, with_images=with_image)
            if with_image:
                tool_msg = {**tool_msg, "content": blocks_with_pil(tool_msg["content"])}
            convs.append((proto, msgs + [{"role": "assistant", "content": reason, "tool_calls": [{"type": "function", "function": call}]},
                                          tool_msg, {"role": "assistant", "content": answer}]))
    tools.close()
    return convs


def warm_up(model_path: str, world: World, out: Path, steps: int = 60, lr: float = 3e-3) -> str:
    """A few supervised steps on demonstrations of both protocols, so that rollouts of the random tiny model
    contain tool calls and answers (a stand-in for the cold start; the policy learns nothing true)."""
    import torch

    from pipeline.models import load_processor, model_info
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    is_vlm = model_info(model_path)["is_vlm"]
    proc = load_processor(model_path)
    tok = getattr(proc, "tokenizer", proc)
    cls = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    torch.manual_seed(0)
    model = cls.from_pretrained(model_path, dtype=torch.float32)
    convs = _demos(world, "mmsearch_r1", is_vlm) + _demos(world, "tool_calls", is_vlm)
    encoded = []
    for proto, conv in convs:
        kwargs = dict(tools=proto.tools_for("tools"), chat_template=proto.chat_template, tokenize=True,
                      return_dict=True, return_tensors="pt")
        enc = proc.apply_chat_template(conv, **kwargs)
        encoded.append({k: v for k, v in enc.items() if k != "token_type_ids"})
    head = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for enc in encoded:  # loss on the assistant turns only (their <|im_end|> included)
        ids = enc["input_ids"][0].tolist()
        labels = [-100] * len(ids)
        i = 0
        while i < len(ids):
            if ids[i:i + len(head)] == head:
                j = i + len(head)
                while j < len(ids):
                    labels[j] = ids[j]
                    if ids[j] == end:
                        break
                    j += 1
                i = j
            i += 1
        enc["labels"] = torch.tensor([labels])
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(0)
    model.train()
    for _ in range(steps):
        batch = encoded[rng.randrange(len(encoded))]
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    proc.save_pretrained(out)
    if tok is not proc:
        tok.save_pretrained(out)
    (out / "warm_up.json").write_text(json.dumps({"steps": steps, "final_loss": float(loss.detach())}))
    return str(out)


# ---------------------------------------------------------------------------------------------------------------
# a zero-weight reward function that records what each rollout saw (for the mix-up checks, also across processes)
# ---------------------------------------------------------------------------------------------------------------
def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text") or "" for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def record_reward(prompts, completions, completion_ids=None, **kwargs):
    """Appends one JSON line per rollout to $TRAIN_RECORD.<rank>.jsonl; returns 0.0 for each (give it weight 0)."""
    import os

    rank = os.environ.get("RANK", "0")
    envs = kwargs.get("environments") or [None] * len(completions)
    path = os.environ.get("TRAIN_RECORD")
    rows = []
    from pipeline.rollout.environment import mark_delivered

    for i, (prompt, completion, env) in enumerate(zip(prompts, completions, envs)):
        # tool results; TRL's own error results (the tool raised, e.g. on arguments it does not take) never reached
        # the environment
        tool_msgs = [m for m in completion if m.get("role") == "tool" and not _text(m.get("content")).startswith("{'error'")]
        executed_calls = len(tool_msgs)
        mark_delivered(env, completion)
        rows.append({
            "rank": rank, "id": kwargs["id"][i], "question": kwargs["question"][i], "answer": kwargs["answer"][i],
            "prompt_text": "\n".join(_text(m.get("content")) for m in prompt),
            "env_question": getattr(env, "question", None),
            "env_calls": getattr(env, "calls", None),
            "tool_texts": [_text(m.get("content")) for m in tool_msgs],
            "tool_images": [sum(1 for b in (m.get("content") or []) if isinstance(b, dict) and b.get("type") == "image")
                            for m in tool_msgs],
            "executed_calls": executed_calls,
            "last_role": completion[-1].get("role") if completion else "",
            "last_has_call": bool(completion and completion[-1].get("tool_calls")),
        })
    if path:
        with open(f"{path}.{rank}.jsonl", "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, default=str) + "\n")
    record_reward.rows.extend(rows)
    return [0.0] * len(completions)


record_reward.rows = []
