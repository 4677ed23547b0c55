"""The one tool step: refuse a call past the limits, execute the others through the search tools, record each call
with its cache key, and render the tool message the model sees next.

Used by the batched probe/evaluation loop (`pipeline.rollout.loop`, many rollouts' calls of one turn at once) and by
the environment TRL's GRPOTrainer drives (`pipeline.rollout.protocols.environment`, one call at a time), so both
refuse with the same texts, fail with the same texts and record the same call dicts:

    {"tool", "query", "turn", "cache_key", "error", "n_results", "refused", "titles"}

A refused call (over a budget, an image search after turn 1, no image to search, an empty query, a tool the
condition does not offer) is not executed; its refusal text is the tool result, inside the protocol's result block,
and the rollout goes on (as TRL does with a tool's text). A backend that raises fails the calls of that batch with
"Search failed: <error>" (also a tool result); a replay miss in `replay_only` mode is raised, never hidden.
Reads and writes nothing itself; the search cache is the tools' business.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

from pipeline.rollout.score import IMAGE_SEARCH, TEXT_SEARCH
from pipeline.search.types import ReplayMiss

NO_IMAGE = "Image search is not possible: this question has no image."


def refusal(limits: Any, state: Any, kind: str, query: str, has_image: bool) -> str:
    """"" when a `kind` call may run at `state.turn`, else the refusal text the model sees as the result."""
    label = "Image search" if kind == IMAGE_SEARCH else "Text search"
    if kind not in (IMAGE_SEARCH, TEXT_SEARCH):
        return f"Unknown tool {kind!r}: use image search or text search."
    if kind not in state.tools:
        return f"{label} is not available in this setting. Answer from what you know."
    if state.turn >= limits.max_turns:
        return f"{label} is not allowed: this was the last turn, so you must answer now."
    if kind == IMAGE_SEARCH:
        if limits.image_search_first_turn_only and state.turn != 1:
            return "Image search is not allowed here: it is only available in the first turn."
        if state.n_image_search >= limits.max_image_search:
            return f"Image search is not allowed: the limit of {limits.max_image_search} image search(es) is used up."
        if not has_image:
            return NO_IMAGE
    else:
        if state.n_text_search >= limits.max_text_search:
            return f"Text search is not allowed: the limit of {limits.max_text_search} text search(es) is used up."
        if not query.strip():
            return "Text search needs a non-empty query."
    return ""


@dataclasses.dataclass
class Request:
    """One tool call a rollout asked for: the rollout's state, the tool, its query (text search), and the item's
    image (searched by image search, whether or not the model sees it), question and meta (e.g. data_id)."""

    state: Any  # pipeline.rollout.protocols.RolloutState
    kind: str
    query: str = ""
    image: bytes | None = None
    question: str = ""
    meta: Mapping[str, Any] | None = None


@dataclasses.dataclass
class Outcome:
    """What the step gave back: the result (a SearchResult, or a refusal / failure text), the call record and the
    tool message for the conversation."""

    result: Any
    record: dict
    message: dict

    @property
    def executed(self) -> bool:
        return not self.record["refused"]


class ToolStep:
    """Run the calls of one turn for many rollouts (`run`) under `protocol.limits` and `condition`."""

    def __init__(self, protocol: Any, tools: Any, condition: str = "tools", *, k: int | None = None,
                 with_images: bool = True):
        self.protocol, self.tools, self.condition, self.k, self.with_images = protocol, tools, condition, k, with_images

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        refusals = [refusal(self.protocol.limits, r.state, r.kind, r.query, r.image is not None) for r in requests]
        calls = [(r.kind, r.image if r.kind == IMAGE_SEARCH else r.query.strip(), dict(r.meta or {}))
                 for r, ref in zip(requests, refusals) if not ref]
        results = iter(self._execute(calls))
        outcomes = []
        for r, ref in zip(requests, refusals):
            result = ref or next(results)
            turn = r.state.turn
            record = call_record(r.kind, r.query.strip(), turn, result, refused=bool(ref))
            r.state.record(r.kind, executed=not ref)
            last = r.state.turn >= self.protocol.limits.max_turns
            message = self.protocol.tool_result_message(result, r.question, turn, last, with_images=self.with_images,
                                                        condition=self.condition, tool=r.kind)
            outcomes.append(Outcome(result, record, message))
        return outcomes

    def _execute(self, calls: list[tuple]) -> list[Any]:
        if not calls:
            return []
        if self.tools is None:
            raise ValueError(f"condition {self.condition!r} offers search but no search tools were given")
        try:
            return self.tools.run_many(calls, k=self.k) if self.k else self.tools.run_many(calls)
        except ReplayMiss:
            raise
        except Exception as exc:  # a broken backend fails these calls, not the rollouts
            return [f"Search failed: {type(exc).__name__}: {exc}"] * len(calls)


def item_meta(value: Any) -> dict:
    """An item's `meta` (a JSON object string or a mapping) as a dict for the search backends; {} when absent."""
    if isinstance(value, Mapping):
        return dict(value)
    try:
        meta = json.loads(value or "{}")
    except (TypeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def call_record(kind: str, query: str, turn: int, result: Any, refused: bool = False) -> dict:
    """The JSON-able record of one call (see the module docstring)."""
    record = {"tool": kind, "query": query, "turn": turn, "cache_key": "", "error": "", "n_results": 0,
              "refused": refused, "titles": []}
    if isinstance(result, str):
        record["error"] = result
    else:
        hits = list(getattr(result, "hits", []) or [])
        record.update(cache_key=getattr(result, "cache_key", "") or "", error=getattr(result, "error", "") or "",
                      n_results=len(hits), titles=[h.title for h in hits][:10])
        if kind == IMAGE_SEARCH:
            record["query"] = getattr(result, "query", "") or ""
    return record


__all__ = ["NO_IMAGE", "Outcome", "Request", "ToolStep", "call_record", "item_meta", "refusal"]
