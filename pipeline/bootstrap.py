"""Bootstrap of the labeler: demonstrations of when to search and when not to, built with the real search tools.

The paper labels with a model already trained in the search environment. A small base model that does not follow
the protocol (the packaged SmolLM2-135M-Instruct never does) is first taught it on a bootstrap split that shares no
entity with the probed items, so it cannot memorise their answers.

What an item needs decides what its demonstrations do (`need_of`): the demo world's answer key
(`meta.expected_need`) when the item has one; otherwise what the base model answers without search
(`closed_book_known`, greedy, in its own chat format) and, for the rest, image search then a text search about the
recognised entity. `build_demonstrations(items, protocol, tools, known, conditions)` writes, per item and per probed
condition whose tools are enough for its need, one demonstration with the REAL tool results (rendered exactly as the
probe renders them):
  none   answer directly (every condition: the labeler knows it, so it never searches)
  image  image search, then answer (image_only, tools)
  text   text search for the fact about the named entity, then answer (text_only, tools)
  mixed  image search, then a text search about the entity the results name, then answer (tools)
so the labeler learns the behaviour the label rule tests: answer what it knows, search for what it does not, and use
the cheapest search that suffices. A demonstration whose search did not bring the answer is left out (counted).
`over_search` (0 for the labeler) makes a seeded share of the known items search anyway under `tools` (a text search
for the fact, then the answer): a policy start that searches what it knows, as an agent trained only to use its tools
does, so that GRPO's search penalty has something to remove (the claim experiment; the labels stay the labeler's).

The supervised cold start on these demonstrations is `trainer/sft.py`; `trainer/cold_start.py` puts the two together
for the bootstrap stage and the train stage's optional cold start. Reads the model folder and the search tools
(through their cache); writes nothing.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from pipeline.images import image_bytes
from pipeline.rollout.engines import derive_seed
from pipeline.rollout.protocols import IMAGE_SEARCH, TEXT_SEARCH

# What a text search asks about the entity, per demo-world question kind; other kinds ask the question's key words.
FACT_QUERY = {
    "named_capital": "capital of",
    "named_currency": "currency of",
    "named_region": "region of",
    "flag_capital": "capital of",
    "flag_currency": "currency of",
    "flag_region": "region of",
    "photo_fact": "",
}
# The demonstrations' reasons recall before they act: what the labeler knows is said as a sentence (and the answer
# repeats its end), what it does not know is said so, and what a search brought is quoted from the result; a small
# model copies a phrase it has just written far more reliably than it picks one out of a result.
FACT_OF = {"named_capital": "capital", "flag_capital": "capital", "named_region": "region", "flag_region": "region",
           "named_currency": "currency", "flag_currency": "currency"}
KNOWN = {"capital": "The capital of {e} is {a}.", "region": "{e} is in {a}.",
         "currency": "The currency code of {e} is {a}."}
UNKNOWN = {"capital": "The capital of {e} is not known to me.", "region": "Where {e} is is not known to me.",
           "currency": "The currency code of {e} is not known to me."}
# Which needs each condition's tools can meet.
CAN_MEET = {"closed_book": ("none",), "direct": ("none",), "image_only": ("none", "image"),
            "text_only": ("none", "text"), "tools": ("none", "image", "text", "mixed"),
            "on_demand": ("none", "image", "text", "mixed")}
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
    if not topic:
        words = [w for w in re.findall(r"[A-Za-z0-9']+", item["question"]) if w.lower() not in STOPWORDS]
        return f"{entity} {' '.join(words[:4])}".strip()
    return f"{topic} {entity}".strip()


def need_of(item: Mapping[str, Any], known: Mapping[str, bool]) -> str:
    """none | image | text | mixed | visual: the item's answer key, else none when the base model knew it, image for
    an identity question (the answer is the entity) and mixed for a fact about what the image shows."""
    meta = _meta(item)
    if isinstance(meta.get("expected_need"), str) and meta["expected_need"]:
        return meta["expected_need"]
    if known.get(item["id"]):
        return "none"
    if image_bytes(item.get("image")) is None:
        return "text"
    return "image" if _mentions(str(item.get("entity") or ""), [item["answer"]]) else "mixed"


def _result_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    return " ".join(f"{h.title} {h.snippet}" for h in result.hits)


def build_demonstrations(items: Sequence[Mapping[str, Any]], protocol: Any, tools: Any, known: Mapping[str, bool],
                         with_image: bool, see_image_results: bool | None = None,
                         conditions: Sequence[str] = ("closed_book", "image_only", "text_only", "tools"),
                         search_k: int | None = None, over_search: float = 0.0,
                         seed: int = 0) -> tuple[list[dict], dict]:
    """Demonstrations (dicts: item_id, condition, kind, messages) and counts by `<condition>/<need>` (plus
    `skipped/<why>`, and `tools/none_searched` for the known items that search anyway, `over_search`); see the
    module docstring. The tag protocol's text is written here (mmsearch_r1)."""
    if protocol.name != "mmsearch_r1":
        raise ValueError("demonstrations are written in the mmsearch_r1 tag format; use protocol mmsearch_r1")
    see_image_results = with_image if see_image_results is None else see_image_results
    demos: list[dict] = []
    counts: dict[str, int] = {}

    def count(key: str) -> None:
        counts[key] = counts.get(key, 0) + 1

    def turn(reason: str, action: str) -> dict:
        return {"role": "assistant", "content": f"<reason>{reason}</reason>{action}"}

    # a visual item is answered from the pixels by a labeler that sees them; a text-only one cannot answer it
    needs = {it["id"]: ("none" if with_image else "visual") if need_of(it, known) == "visual" else need_of(it, known)
             for it in items}
    plans = [(it, c) for it in items for c in conditions if needs[it["id"]] in CAN_MEET.get(c, ())]
    # the searches, all at once through the cache: the item image, then the fact about the named or found entity
    want_img = [it for it in items if any(x is it for x, c in plans if needs[it["id"]] in ("image", "mixed"))
                and image_bytes(it.get("image")) is not None]
    img = dict(zip([it["id"] for it in want_img], tools.run_many(
        [(IMAGE_SEARCH, image_bytes(it["image"]), _meta(it)) for it in want_img], k=search_k))) if want_img else {}
    entity_of = {}
    for it in items:
        entity = str(it.get("entity") or "")
        if needs[it["id"]] == "text" or (it["id"] in img and _mentions(_titles(img[it["id"]]), [entity])):
            entity_of[it["id"]] = entity
    # the known items that search anyway under tools: a seeded share, by item id (stable when items are added)
    over = {it["id"] for it in items if needs[it["id"]] == "none" and "tools" in conditions and it.get("entity")
            and derive_seed(seed, "over_search", it["id"]) < over_search * 2 ** 31}
    for it in items:
        if it["id"] in over:
            entity_of[it["id"]] = str(it["entity"])
    want_txt = [it for it in items if (needs[it["id"]] in ("text", "mixed") or it["id"] in over)
                and it["id"] in entity_of]
    txt = dict(zip([it["id"] for it in want_txt], tools.run_many(
        [(TEXT_SEARCH, _fact_query(it, entity_of[it["id"]]), _meta(it)) for it in want_txt], k=search_k))) \
        if want_txt else {}

    for it, condition in plans:
        need, iid = needs[it["id"]], it["id"]
        golds = [it["answer"], *(it.get("aliases") or [])]
        msgs = protocol.initial_messages(it, condition, with_image=with_image)
        n_turn, seen = 1, ""
        searched_known = need == "none" and condition == "tools" and iid in over
        if searched_known:
            quote = _quote(_result_text(txt[iid]), golds) if iid in txt else ""
            if quote:
                msgs.append(turn("I check this with a search.", f"<text_search>{_fact_query(it, entity_of[iid])}"
                                                                 f"</text_search>"))
                msgs.append(protocol.tool_result_message(txt[iid], it["question"], n_turn,
                                                         n_turn + 1 >= protocol.limits.max_turns,
                                                         with_images=see_image_results, condition=condition))
                demos.append({"item_id": iid, "condition": condition, "kind": need,
                              "messages": msgs + [turn(f"The results say: {quote}", answer_tag(it["answer"]))]})
                count("tools/none_searched")
                continue
            count("skipped/over_search_missed")  # the search did not bring the answer: answered directly
        if need in ("image", "mixed"):
            if iid not in img or iid not in entity_of:  # the image search did not name the entity
                count("skipped/image_search_missed")
                continue
            why = "I cannot tell what the image shows, so I search with it." if with_image else \
                "I cannot see the image, so I search with it."
            msgs = msgs + [turn(why, "<search><img></search>")]
            msgs.append(protocol.tool_result_message(img[iid], it["question"], n_turn,
                                                     n_turn + 1 >= protocol.limits.max_turns,
                                                     with_images=see_image_results, condition=condition))
            n_turn += 1
            seen = f"The results show the flag of {entity_of[iid]}. " if it.get("category", "").startswith("flag_") \
                else f"The results show {entity_of[iid]}. "
        if need in ("text", "mixed"):
            quote = _quote(_result_text(txt[iid]), golds) if iid in txt else ""
            if not quote:
                count("skipped/text_search_missed")
                continue
            entity = entity_of[iid]
            msgs.append(turn(seen + _unknown(it, entity), f"<text_search>{_fact_query(it, entity)}</text_search>"))
            msgs.append(protocol.tool_result_message(txt[iid], it["question"], n_turn,
                                                     n_turn + 1 >= protocol.limits.max_turns,
                                                     with_images=see_image_results, condition=condition))
            why = f"The results say: {quote}"
        elif need == "image" and it.get("category") == "flag_country":
            why = seen.strip()
        else:  # none, or image then knowledge
            why = seen + _known(it, str(entity_of.get(iid) or it.get("entity") or ""))
        demos.append({"item_id": iid, "condition": condition, "kind": need,
                      "messages": msgs + [turn(why.strip(), answer_tag(it["answer"]))]})
        count(f"{condition}/{need}")
    return demos, counts


def answer_tag(answer: str) -> str:
    """`<answer> answer</answer>`. The space makes the answer the same tokens it has in running text (` Manila`, where
    `>Manila` splits into `Man` + `ila`): without it the labeler stated the right answer in its reason and miscopied it
    into the tag ("M Manila", "Trinpoli") in 69 of 448 rollouts on known items. The scorer strips the answer."""
    return f"<answer> {answer}</answer>"


def _known(item: Mapping[str, Any], entity: str) -> str:
    fact = FACT_OF.get(item.get("category", ""))
    return KNOWN[fact].format(e=entity, a=item["answer"]) if fact and entity else "I know this."


def _unknown(item: Mapping[str, Any], entity: str) -> str:
    fact = FACT_OF.get(item.get("category", ""))
    return UNKNOWN[fact].format(e=entity) if fact and entity else f"I do not know this about {entity}, so I look it up."


def _quote(text: str, golds: Sequence[str]) -> str:
    """The first sentence of a search result that holds a gold answer (as the result says it), or ""."""
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
        if _mentions(sentence, golds):
            return sentence.strip()
    return ""


def _titles(result: Any) -> str:
    return " ".join(h.title for h in getattr(result, "hits", []) or [])


def _meta(item: Mapping[str, Any]) -> dict:
    try:
        meta = json.loads(item.get("meta") or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


__all__ = ["FACT_QUERY", "build_demonstrations", "closed_book_known"]
