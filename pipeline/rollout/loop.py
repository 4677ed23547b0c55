"""The multi-turn rollout loop shared by the probe, the evaluator and the trainer's checks.

`run_rollouts(engine, protocol, tools, items, condition, samples, judge_cfg, ...)` plays `samples` rollouts per item
under one condition (`closed_book`: no tools; `tools`: image + text search; `image_only`; `text_only`):

- every live trajectory of the batch advances together, one engine call per turn (turn 1 asks for `samples`
  continuations of each item's prompt, later turns one continuation per live trajectory);
- a turn's tool call is read exactly as TRL reads it (`protocol.parse_call`, the response template); a turn without
  one ends the rollout, and so does a call on the last allowed turn (left unexecuted, as TRL does);
- the calls of a turn run together through the one tool step (`pipeline.rollout.step.ToolStep`): refused past the
  limits (the refusal is the result the model sees, and the rollout goes on), executed through the search cache
  otherwise; an image search always searches the item's image, also for a text-only model, which never sees it
  (saw_image=False);
- the finished trajectory is scored by the one scorer (`protocol.score`, the paper's rule by default): its turn
  kinds, final answer, format validity and search count; the answer is judged against answer + aliases.

Returns one dict per rollout with the columns of `pipeline.schema.ROLLOUT_FEATURES`, ordered by item then sample:
full messages (image bytes replaced by `{"type": "image", "sha1": ...}`), turn kinds, tool calls with their cache
keys, the scorer's answer, format and search count, the verdict, token counts, latency and errors.

Deterministic: engine calls are seeded from `seed` and the turn number, so the same batch gives the same rollouts.
Reads and writes nothing itself (the search cache is the tools' business).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

from pipeline.rollout.engines import Sampling, derive_seed
from pipeline.images import image_bytes
from pipeline.rollout.protocols import IMAGE_SEARCH, TEXT_SEARCH, condition_tools
from pipeline.rollout.step import Request, ToolStep, item_meta
from pipeline.schema import sha1_hex, to_json


@dataclasses.dataclass
class _Trajectory:
    item_index: int
    sample: int
    messages: list[dict]
    state: Any
    turns: list[str] = dataclasses.field(default_factory=list)
    call: Any = None  # the ToolCall of the last turn, when it asked for one
    calls: list[dict] = dataclasses.field(default_factory=list)
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


def default_judge(method: str = "em") -> Callable[..., Any]:
    from pipeline.judge import JudgeParams, make_judge

    return make_judge(JudgeParams(method=method))


def run_rollouts(engine: Any, protocol: Any, tools: Any, items: Sequence[Mapping[str, Any]], condition: str,
                 samples: int, judge_cfg: Any = None, *, sampling: Sampling | None = None,
                 with_image: bool | None = None, seed: int = 0, model_name: str = "",
                 sample_start: int = 0, item_samples: Sequence[int] | None = None,
                 search_k: int | None = None, format_rule: str = "paper") -> list[dict]:
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
        format_rule: the scorer's format rule (paper | limits, see `pipeline.rollout.score`).
    """
    sampling = sampling or Sampling()
    judge_fn = _make_judge(judge_cfg)
    judge_name = getattr(judge_cfg, "method", judge_cfg if isinstance(judge_cfg, str) else "em") or "em"
    see_image = engine.is_vlm if with_image is None else bool(with_image and engine.is_vlm)
    condition_tools(condition)  # rejects an unknown condition early
    tool_schemas = protocol.tools_for(condition)
    step = ToolStep(protocol, tools, condition, k=search_k, with_images=engine.is_vlm)
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
        requests = []
        for tr in live:
            item = items[tr.item_index]
            requests.append(Request(tr.state, tr.call.kind, tr.call.query, image_bytes(item.get("image")),
                                    item["question"], item_meta(item.get("meta"))))
        for tr, outcome in zip(live, step.run(requests)):
            tr.calls.append(outcome.record)
            if isinstance(outcome.result, str) and outcome.record["error"].startswith("Search failed"):
                tr.errors.append(f"{tr.call.kind}: {outcome.result}")
            elif not isinstance(outcome.result, str) and outcome.result.error:
                tr.errors.append(f"{tr.call.kind}: {outcome.result.error}")
            tr.messages.append(outcome.message)
        turn += 1
        outs = _generate(engine, [tr.messages for tr in live], 1, sampling,
                         derive_seed(seed, condition, sample_start, "turn", turn), tool_schemas)
        for tr, per in zip(live, outs):
            _take_turn(protocol, tr, per[0])
        _stamp(live, t0)

    rows = []
    for tr in trajs:
        item = items[tr.item_index]
        score = protocol.score(tr.turns, format_rule, condition)
        verdict = (judge_fn(score.answer, item["answer"], list(item.get("aliases") or []), item["question"])
                   if score.answer is not None else None)
        executed = [c for c in tr.calls if not c["refused"]]
        error = "; ".join(tr.errors)
        if score.answer is None and not error:
            error = "no answer" + (" (last turn cut by max_tokens)" if tr.truncated else "")
        rows.append({
            "rollout_id": f"{item['id']}/{condition}/{tr.sample}",
            "item_id": item["id"],
            "condition": condition,
            "sample": tr.sample,
            "model": model_name or getattr(engine, "model_path", ""),
            "protocol": protocol.name,
            "saw_image": bool(see_image and image_bytes(item.get("image")) is not None),
            "messages": to_json(messages_for_evidence(tr.messages)),
            "actions": score.kinds,
            "tool_calls": to_json(tr.calls),
            "n_image_search": sum(1 for c in executed if c["tool"] == IMAGE_SEARCH),
            "n_text_search": sum(1 for c in executed if c["tool"] == TEXT_SEARCH),
            "search_count": score.search_count,
            "final_answer": score.answer or "",
            "correct": bool(verdict.correct) if verdict is not None else False,
            "judge": judge_name,
            "valid_format": score.format_ok,
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
    """Record one generated turn; the rollout goes on only when the turn asks for a tool before the last turn."""
    tr.prompt_tokens += int(g.prompt_tokens)
    tr.completion_tokens += int(g.completion_tokens)
    text = protocol.strip_eos(g.text)
    tr.turns.append(text)
    tr.messages.append(protocol.assistant_message(text))
    tr.truncated = g.finish_reason == "length"
    tr.call = protocol.parse_call(text)
    # no call: the answer turn (or a malformed one); a call on the last allowed turn is left unexecuted, as in TRL
    tr.done = tr.call is None or tr.state.turn >= protocol.limits.max_turns


def _stamp(trajs: Sequence[_Trajectory], t0: float) -> None:
    now = time.perf_counter() - t0
    for tr in trajs:
        tr.latency_s = now


__all__ = ["default_judge", "messages_for_evidence", "run_rollouts"]
