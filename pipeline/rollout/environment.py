"""The per-rollout search environment TRL's GRPOTrainer drives (`environment_factory=`), built per protocol.

`environment_class(protocol, tools, condition, with_images)` returns a class whose instances hold one rollout's
state: the item's image (image search always searches the item image, whether or not the policy sees it), the
question, its meta and the search budgets of `protocol.limits`. Every public method except `reset` is a tool for
TRL; the method names are the protocol's tool names (`search` / `text_search` for the tag protocol,
`image_search` / `text_search` for native tool calls; methods in `protocols/tool_methods.py`). Each call goes through the one tool step
(`pipeline.rollout.step.ToolStep`), the same refusals, failure texts and call records as the probe loop.
Reads and writes nothing itself; the search cache is the tools' business.
No `get_reward` is defined on purpose: TRL would add it as a reward, and rewards belong to the trainer.

TRL may drop a tool result after the call ran: when the result would push the completion past
`max_completion_length`, it rolls the tool message back and the rollout ends on the assistant turn that asked.
`mark_delivered(env, completion)` reconciles the call records with the completion (`delivered` per call).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from pipeline.images import image_bytes
from pipeline.rollout.protocols.base import (
    TEXT_SEARCH, Protocol, RolloutState, blocks_with_pil, condition_tools,
)
from pipeline.rollout.protocols.tool_methods import TOOL_METHODS
from pipeline.rollout.step import Request, ToolStep, item_meta

SEARCH_IMAGE_COLUMN = "search_image"  # training rows: the item's original encoded image, searched by image search
DROPPED = "result dropped by the trainer: it did not fit in max_completion_length"


class SearchEnvironment:
    """Base class; the protocol-specific subclass adds the tool methods. Attributes after `reset`: `question`,
    `image` (bytes or None), `meta`, `state` (RolloutState), `calls` (one record per tool call, see
    `pipeline.rollout.step`)."""

    _protocol: Protocol
    _tools: Any
    _with_images: bool = True
    _condition: str = "tools"

    def __init__(self) -> None:

        self._step = ToolStep(self._protocol, self._tools, self._condition, with_images=self._with_images)
        self.question = ""
        self.image: bytes | None = None
        self.meta: dict = {}
        self.state: RolloutState = self._protocol.new_state(self._condition)
        self.calls: list[dict] = []
        self.row: dict = {}

    def reset(self, **row: Any) -> None:
        """Start a rollout for one dataset row (TRL passes every column). Uses `question`, the image to search
        (`search_image`: the original encoded bytes, so cache keys match the probe's; else `image` or the first of
        `images`) and `meta` (a JSON object string, e.g. with the paper's `data_id` for replayed image search)."""
        self.row = row
        self.question = str(row.get("question") or "")
        image = row.get(SEARCH_IMAGE_COLUMN)
        if image is None:
            image = row.get("image")
        if image is None and row.get("images"):
            image = row["images"][0]
        self.image = image_bytes(image) if image is not None else None
        self.meta = item_meta(row.get("meta"))
        self.state = self._protocol.new_state(self._condition)
        self.calls = []
        return None

    def _call(self, kind: str, query: str) -> list[dict]:
        request = Request(self.state, kind, query if kind == TEXT_SEARCH else "", self.image, self.question, self.meta)
        outcome = self._step.run([request])[0]
        self.calls.append(outcome.record)
        content = outcome.message["content"]
        return blocks_with_pil(content) if isinstance(content, list) else content


def mark_delivered(env: SearchEnvironment | None, completion: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Set `delivered` on each of `env.calls`: the first n calls reached the completion as tool messages (n = the
    tool messages TRL kept, its own error results excluded), later ones were dropped (see the module docstring).
    Returns the records."""
    if env is None:
        return []
    kept = sum(1 for m in completion if m.get("role") == "tool" and not _trl_error(m.get("content")))
    for i, record in enumerate(env.calls):
        record["delivered"] = i < kept
        if i >= kept and not record.get("error"):
            record["error"] = DROPPED
    return env.calls


def _trl_error(content: Any) -> bool:
    """TRL's own result for a call that never reached the environment (unknown tool, bad arguments)."""
    return isinstance(content, str) and content.startswith(("{'error'", '{"error"'))


def environment_class(protocol: Protocol, tools: Any, condition: str = "tools", with_images: bool = True) -> type:
    """A SearchEnvironment subclass bound to `protocol` and `tools`, with one method per tool the condition offers,
    named as the protocol's model calls it."""
    attrs: dict[str, Any] = {"_protocol": protocol, "_tools": tools, "_with_images": with_images,
                             "_condition": condition}
    for kind in condition_tools(condition):
        name = protocol.tool_names[kind]
        attrs[name] = TOOL_METHODS[name]
    class_name = "".join(p.title() for p in protocol.name.split("_")) + "Environment"
    return type(class_name, (SearchEnvironment,), attrs)
