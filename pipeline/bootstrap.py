"""Bootstrap of the labeler: what the base model knows, and demonstrations built with the real search tools.

The paper labels with a model already trained in the search environment. A small base model that does not follow
the protocol (the packaged SmolLM2-135M-Instruct never does) is first taught it on a bootstrap split that shares no
entity with the probed items, so it cannot memorise their answers:

- `closed_book_known(model, items)`: which items the *base* model answers correctly without search (plain chat,
  greedy; the base model does not know the protocol, so it is asked in its own format).
- `build_demonstrations(items, protocol, tools, known)`: per item, a closed-book demonstration (reason + answer)
  and a tools demonstration: answer directly where the base model knew the answer; otherwise image search (what
  does the image show), then, when the question asks a fact about it, a text search about the recognised entity,
  using the REAL tool results (rendered exactly as the probe renders them), and the gold answer.

The supervised cold start on these demonstrations is `trainer/sft.py`; `trainer/cold_start.py` puts the two together
for the bootstrap stage and the train stage's optional cold start. Reads the model folder and the search tools
(through their cache); writes nothing.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

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


__all__ = ["FACT_QUERY", "build_demonstrations", "closed_book_known"]
