"""The per-rollout search environment TRL's GRPOTrainer drives (`environment_factory=`), built per protocol.

`make_environment(protocol, tools, condition, with_images)` returns a class whose instances hold one rollout's
state: the item's image (image search always searches the item image, whether or not the policy sees it), the
question, the search budgets and turn rules of `protocol.limits`. Every public method except `reset` is a tool for
TRL; the method names are the protocol's tool names (`search` / `text_search` for the tag protocol,
`image_search` / `text_search` for native tool calls). A refused call returns the refusal text as the tool result,
so the model sees it inside the result block, as in the paper. Calls go through `tools` (a
`pipeline.search.SearchTools`, or anything with `image_search(image: bytes)` and `text_search(query: str)` that
return SearchResult-like objects). Reads and writes nothing itself; the search cache is the tools' business.
No `get_reward` is defined on purpose: TRL would add it as a reward, and rewards belong to the trainer.
"""
from __future__ import annotations

from typing import Any

from pipeline.rollout.protocols.base import (
    IMAGE_SEARCH, TEXT_SEARCH, Action, Protocol, RolloutState, blocks_with_pil, image_bytes,
)


class SearchEnvironment:
    """Base class; the protocol-specific subclass adds the tool methods. Attributes after `reset`: `question`,
    `image` (bytes or None), `state` (RolloutState), `calls` (one dict per tool call: tool, query, cache_key,
    error, n_results, refused)."""

    _protocol: Protocol
    _tools: Any
    _with_images: bool = True
    _condition: str = "tools"

    def __init__(self) -> None:
        self.question = ""
        self.image: bytes | None = None
        self.state: RolloutState = self._protocol.new_state(self._condition)
        self.calls: list[dict] = []
        self.row: dict = {}

    def reset(self, **row: Any) -> None:
        """Start a rollout for one dataset row (TRL passes every column). Uses `question` and `image` (or the
        first of `images`)."""
        self.row = row
        self.question = str(row.get("question") or "")
        image = row.get("image")
        if image is None and row.get("images"):
            image = row["images"][0]
        self.image = image_bytes(image) if image is not None else None
        self.state = self._protocol.new_state(self._condition)
        self.calls = []
        return None

    def _call(self, kind: str, query: str) -> list[dict]:
        proto = self._protocol
        action = Action(kind, query=query if kind == TEXT_SEARCH else "")
        turn = self.state.turn
        refusal = proto.check_action(self.state, action)
        if not refusal and kind == IMAGE_SEARCH and self.image is None:
            refusal = "Image search is not possible: this question has no image."
        record = {"tool": kind, "query": action.query, "cache_key": "", "error": "", "n_results": 0,
                  "refused": bool(refusal), "turn": turn}
        if refusal:
            result: Any = refusal
            record["error"] = refusal
        else:
            try:
                result = (self._tools.image_search(self.image) if kind == IMAGE_SEARCH
                          else self._tools.text_search(action.query))
                record.update(cache_key=getattr(result, "cache_key", ""), error=getattr(result, "error", "") or "",
                              n_results=len(getattr(result, "hits", []) or []))
            except Exception as exc:  # a broken backend must not kill the training step
                result = f"Search failed: {type(exc).__name__}: {exc}"
                record["error"] = result
        self.calls.append(record)
        self.state.record(action, executed=not refusal)
        last = self.state.turn >= proto.limits.max_turns
        msg = proto.tool_result_message(result, self.question, turn, last, with_images=self._with_images,
                                        condition=self._condition)
        content = msg["content"]
        return blocks_with_pil(content) if isinstance(content, list) else content


def make_environment(protocol: Protocol, tools: Any, condition: str = "tools", with_images: bool = True,
                     methods: dict[str, Any] | None = None) -> type:
    """A SearchEnvironment subclass bound to `protocol` and `tools`, with the tool `methods` (name -> function)."""
    attrs: dict[str, Any] = {"_protocol": protocol, "_tools": tools, "_with_images": with_images,
                             "_condition": condition}
    attrs.update(methods or {})
    name = "".join(p.title() for p in protocol.name.split("_")) + "Environment"
    return type(name, (SearchEnvironment,), attrs)
