"""The multi-turn rollout loop shared by the probe, the evaluator and the trainer's checks.

`run_rollouts(engine, protocol, tools, items, condition, samples, judge_cfg, ...)` plays `samples` rollouts per item
under one condition (`closed_book`: no tools; `tools`: image + text search; `image_only`; `text_only`):

- every live trajectory of the batch advances together, one engine call per turn (turn 1 asks for `samples`
  continuations of each item's prompt, later turns one continuation per live trajectory);
- each turn's tool calls run concurrently through the search cache (`tools.run_many`); an image search always
  searches the item's image, also for a text-only model, which never sees the image (saw_image=False);
- a turn that does not parse into a valid action, or whose search the limits refuse, is recorded: an invalid turn
  ends the rollout without an answer; a refused search returns the refusal text as the tool result (as TRL's
  environment does) and the rollout goes on; the last allowed turn must answer.

Returns one dict per rollout with the columns of `pipeline.schema.ROLLOUT_FEATURES`, ordered by item then sample:
full messages (image bytes replaced by `{"type": "image", "sha1": ...}`), actions, tool calls with their cache
keys, the final answer judged against answer + aliases, token counts, latency and errors.

Deterministic: engine calls are seeded from `seed` and the turn number, so the same batch gives the same rollouts.
Reads and writes nothing itself (the search cache is the tools' business).
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Mapping, Sequence

from pipeline.rollout.engines import Sampling, derive_seed
from pipeline.rollout.protocols import ANSWER, IMAGE_SEARCH, INVALID, TEXT_SEARCH, Action, condition_tools, image_bytes
from pipeline.schema import sha1_hex, to_json
from pipeline.search.types import ReplayMiss


@dataclasses.dataclass
class _Trajectory:
    item_index: int
    sample: int
    messages: list[dict]
    state: Any
    actions: list[Action] = dataclasses.field(default_factory=list)
    calls: list[dict] = dataclasses.field(default_factory=list)
    refusals: int = 0
    final_answer: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)
    done: bool = False
    truncated: bool = False


def messages_for_evidence(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Messages with every image payload replaced by `{"type": "image", "sha1": <hex>}` (JSON-able evidence)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            blocks = []
            for b in content:
                if isinstance(b, Mapping) and b.get("type") in ("image", "image_pil", "image_url"):
                    data = b.get("image")
                    try:
                        raw = image_bytes(data) if data is not None else None
                    except TypeError:
                        raw = None
                    blocks.append({"type": "image", "sha1": sha1_hex(raw) if raw else ""})
                else:
                    blocks.append(dict(b))
            content = blocks
        msg = {k: v for k, v in m.items() if k != "content"}
        msg["content"] = content
        out.append(msg)
    return out


def _item_meta(item: Mapping[str, Any]) -> dict:
    try:
        meta = json.loads(item.get("meta") or "{}")
    except (TypeError, json.JSONDecodeError):
        meta = {}
    return meta if isinstance(meta, dict) else {}


def default_judge(method: str = "em") -> Callable[..., Any]:
    from pipeline.judge import JudgeParams, make_judge

    return make_judge(JudgeParams(method=method))


def run_rollouts(engine: Any, protocol: Any, tools: Any, items: Sequence[Mapping[str, Any]], condition: str,
                 samples: int, judge_cfg: Any = None, *, sampling: Sampling | None = None,
                 with_image: bool | None = None, seed: int = 0, model_name: str = "",
                 sample_start: int = 0, item_samples: Sequence[int] | None = None,
                 search_k: int | None = None) -> list[dict]:
    """Play the rollouts of one batch; see the module docstring.

    Args:
        engine: a `pipeline.rollout.engines.Engine` (its `is_vlm` decides whether prompts carry the image).
        protocol: a Protocol from `pipeline.rollout.protocols.get_protocol`.
        tools: a `pipeline.search.SearchTools` (anything with `run_many`); may be None for closed_book.
        items: item dicts (ITEM_COLUMNS; `image` as bytes or a datasets image dict).
        condition: closed_book | tools | image_only | text_only.
        samples: rollouts per item (K).
        judge_cfg: a `JudgeParams`, a callable `(pred, answer, aliases, question) -> Verdict`, a method name, or None (em).
        sampling: temperature, top_p, max tokens per turn, stop at the action tag.
        with_image: show the item image to the model (default: when the engine is a VLM).
        seed: base seed; engine calls use derive_seed(seed, condition, sample_start, turn).
        sample_start: sample number of the first rollout per item (adaptive rounds continue numbering).
        item_samples: per item, how many rollouts to play (overrides `samples`; 0 skips the item).
        search_k: results per search call (None = the tools' own k_image / k_text).
    """
    sampling = sampling or Sampling()
    judge_fn = _make_judge(judge_cfg)
    judge_name = getattr(judge_cfg, "method", judge_cfg if isinstance(judge_cfg, str) else "em") or "em"
    see_image = engine.is_vlm if with_image is None else bool(with_image and engine.is_vlm)
    offered = condition_tools(condition)
    tool_schemas = protocol.tools_for(condition)
    counts = list(item_samples) if item_samples is not None else [samples] * len(items)
    if len(counts) != len(items):
        raise ValueError("item_samples must give one count per item")
    t0 = time.perf_counter()
    engine.begin_batch()

    # Turn 1: one prompt per item, `n` continuations each; items are grouped by their sample count so each
    # engine call has a single n (a fixed grouping keeps calls, and so results, deterministic).
    trajs: list[_Trajectory] = []
    firsts = [protocol.initial_messages(it, condition, with_image=see_image) for it in items]
    for n in sorted({c for c in counts if c > 0}):
        idx = [i for i, c in enumerate(counts) if c == n]
        outs = _generate(engine, [firsts[i] for i in idx], n, sampling,
                         derive_seed(seed, condition, sample_start, n, 1), tool_schemas)
        for i, per_item in zip(idx, outs):
            for j, g in enumerate(per_item):
                tr = _Trajectory(i, sample_start + j, list(firsts[i]), protocol.new_state(condition))
                _take_turn(protocol, tr, g)
                trajs.append(tr)
    trajs.sort(key=lambda t: (t.item_index, t.sample))
    _stamp(trajs, t0)

    turn = 1
    while True:
        live = [t for t in trajs if not t.done]
        if not live:
            break
        # Execute (or refuse) the pending search of every live trajectory, all calls of the turn at once.
        pending: list[tuple[_Trajectory, Action, str]] = []
        for tr in live:
            action = tr.actions[-1]
            refusal = protocol.check_action(tr.state, action)
            if not refusal and action.kind == IMAGE_SEARCH and image_bytes(items[tr.item_index].get("image")) is None:
                refusal = "Image search is not possible: this question has no image."
            pending.append((tr, action, refusal))
        calls = []
        for tr, action, refusal in pending:
            if not refusal:
                it = items[tr.item_index]
                value = image_bytes(it.get("image")) if action.kind == IMAGE_SEARCH else action.query
                calls.append((action.kind, value, _item_meta(it)))
        results: list[Any] = []
        if calls:
            if tools is None:
                raise ValueError(f"condition {condition!r} offers {offered} but no search tools were given")
            try:
                results = tools.run_many(calls, k=search_k) if search_k else tools.run_many(calls)
            except ReplayMiss:
                raise
            except Exception as exc:  # a broken backend fails these calls, not the whole batch
                results = [f"Search failed: {type(exc).__name__}: {exc}"] * len(calls)
        it_results = iter(results)
        next_convs = []
        for tr, action, refusal in pending:
            item = items[tr.item_index]
            record = {"tool": action.kind, "query": action.query, "turn": tr.state.turn, "cache_key": "",
                      "error": "", "n_results": 0, "refused": bool(refusal)}
            if refusal:
                result: Any = refusal
                record["error"] = refusal
                tr.refusals += 1
            else:
                result = next(it_results)
                if isinstance(result, str):
                    record["error"] = result
                    tr.errors.append(f"{action.kind}: {result}")
                else:
                    record.update(cache_key=result.cache_key, error=result.error or "", n_results=len(result.hits),
                                  titles=[h.title for h in result.hits][:10])
                    if action.kind == IMAGE_SEARCH:
                        record["query"] = result.query
                    if result.error:
                        tr.errors.append(f"{action.kind}: {result.error}")
            tr.calls.append(record)
            at_turn = tr.state.turn
            tr.state.record(action, executed=not refusal)
            last = tr.state.turn >= protocol.limits.max_turns
            tr.messages.append(protocol.tool_result_message(result, item["question"], at_turn, last,
                                                            with_images=engine.is_vlm, condition=condition))
            next_convs.append(tr.messages)
        turn += 1
        outs = _generate(engine, next_convs, 1, sampling, derive_seed(seed, condition, sample_start, "turn", turn),
                         tool_schemas)
        for (tr, _, _), per in zip(pending, outs):
            _take_turn(protocol, tr, per[0])
        _stamp(live, t0)

    rows = []
    for tr in trajs:
        item = items[tr.item_index]
        verdict = judge_fn(tr.final_answer, item["answer"], list(item.get("aliases") or []), item["question"]) \
            if tr.final_answer else None
        kinds = [a.kind for a in tr.actions]
        valid = (INVALID not in kinds and tr.refusals == 0 and not tr.truncated
                 and protocol.sequence_ok(kinds, condition))
        n_img = sum(1 for c in tr.calls if c["tool"] == IMAGE_SEARCH and not c["refused"])
        n_txt = sum(1 for c in tr.calls if c["tool"] == TEXT_SEARCH and not c["refused"])
        error = "; ".join(tr.errors)
        if not tr.final_answer and not error:
            last = tr.actions[-1] if tr.actions else None
            error = f"no answer: {last.error}" if last is not None and last.kind == INVALID else "no answer"
        rows.append({
            "rollout_id": f"{item['id']}/{condition}/{tr.sample}",
            "item_id": item["id"],
            "condition": condition,
            "sample": tr.sample,
            "model": model_name or getattr(engine, "model_path", ""),
            "protocol": protocol.name,
            "saw_image": bool(see_image and image_bytes(item.get("image")) is not None),
            "messages": to_json(messages_for_evidence(tr.messages)),
            "actions": kinds,
            "tool_calls": to_json(tr.calls),
            "n_image_search": n_img,
            "n_text_search": n_txt,
            "final_answer": tr.final_answer,
            "correct": bool(verdict.correct) if verdict is not None else False,
            "judge": judge_name,
            "valid_format": bool(valid),
            "prompt_tokens": tr.prompt_tokens,
            "completion_tokens": tr.completion_tokens,
            "latency_s": round(tr.latency_s, 3),
            "error": error,
        })
    return rows


def _make_judge(judge_cfg: Any) -> Callable[..., Any]:
    if callable(judge_cfg):
        return judge_cfg
    if judge_cfg is None or isinstance(judge_cfg, str):
        return default_judge(judge_cfg or "em")
    from pipeline.judge import make_judge

    return make_judge(judge_cfg)


def _generate(engine, convs, n, sampling, seed, tool_schemas):
    if not convs:
        return []
    return engine.generate(convs, n=n, sampling=sampling, seed=seed, tools=tool_schemas)


def _take_turn(protocol: Any, tr: _Trajectory, g: Any) -> None:
    """Record one generated assistant turn on a trajectory and decide whether the rollout ends."""
    tr.prompt_tokens += int(g.prompt_tokens)
    tr.completion_tokens += int(g.completion_tokens)
    action = protocol.parse_turn(g.text)
    if action.kind == INVALID and g.finish_reason == "length":
        tr.truncated = True
        action = Action(INVALID, raw=g.text, error=(action.error + "; " if action.error else "") + "cut by max_tokens")
    tr.actions.append(action)
    tr.messages.append(protocol.assistant_message(g.text, action))
    if action.kind == ANSWER:
        tr.final_answer = action.answer
        tr.done = True
    elif action.kind == INVALID:
        tr.done = True
    elif tr.state.turn >= protocol.limits.max_turns:
        # A search on the last allowed turn: refused by the limits; the rollout ends without an answer.
        tr.refusals += 1
        tr.calls.append({"tool": action.kind, "query": action.query, "turn": tr.state.turn, "cache_key": "",
                         "error": "search on the last turn", "n_results": 0, "refused": True})
        tr.state.record(action, executed=False)
        tr.done = True


def _stamp(trajs: Sequence[_Trajectory], t0: float) -> None:
    now = time.perf_counter() - t0
    for tr in trajs:
        tr.latency_s = now


__all__ = ["default_judge", "messages_for_evidence", "run_rollouts"]
