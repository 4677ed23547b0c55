"""Native tool calling (Qwen2.5 layout): tools `image_search()` and `text_search(query)` listed in the system turn,
calls as `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, results in a `<tool_response>` user
turn, the final answer inside `<answer>..</answer>` (or, leniently, the whole reply when it has no tags).

The tool schemas passed to the template come from the environment's own methods, so the probe's prompts and
TRL's (which builds schemas from the same methods) are byte-identical. Reads and writes nothing.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from pipeline.rollout.protocols import prompts
from pipeline.rollout.protocols.base import (
    ANSWER, IMAGE_SEARCH, INVALID, TEXT_SEARCH, Action, Limits, Protocol, condition_tools, image_bytes,
)
from pipeline.rollout.protocols.environment import make_environment
from pipeline.rollout.protocols.templates import TOOL_CALLS_RESPONSE_TEMPLATE, TOOL_CALLS_TEMPLATE

_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_THINK = re.compile(r"<think>.*?</think>", re.S)


def image_search(self) -> list:
    """Search the web with the question's image (reverse image search) and return the matching pages: titles
    and thumbnails."""
    return self._call(IMAGE_SEARCH, "")


def text_search(self, query: str) -> list:
    """Search the web for a text query and return the most relevant passages.

    Args:
        query: What to search for, a few words.
    """
    return self._call(TEXT_SEARCH, query)


_METHODS = {IMAGE_SEARCH: image_search, TEXT_SEARCH: text_search}


class ToolCallsProtocol(Protocol):
    name = "tool_calls"
    chat_template = TOOL_CALLS_TEMPLATE
    response_template = TOOL_CALLS_RESPONSE_TEMPLATE
    tool_names = {IMAGE_SEARCH: "image_search", TEXT_SEARCH: "text_search"}
    stop_strings = None

    def tools_for(self, condition: str = "tools") -> list[dict] | None:
        """JSON schemas of the condition's tools, sorted by name (TRL's order), or None for no tools."""
        from transformers.utils import get_json_schema

        names = sorted(condition_tools(condition))
        return [get_json_schema(_METHODS[n]) for n in names] or None

    def initial_messages(self, item: Mapping[str, Any], condition: str = "tools", with_image: bool = True,
                         embed_image: bool = True) -> list[dict]:
        tools = condition_tools(condition)
        content: list[dict] = []
        if with_image:
            content.append({"type": "image", "image": image_bytes(item.get("image"))} if embed_image
                           else {"type": "image"})
        content.append({"type": "text", "text": str(item["question"])})
        return [{"role": "system", "content": prompts.tool_system_prompt(tools, self.limits, with_image)},
                {"role": "user", "content": content}]

    def parse_turn(self, text: str) -> Action:
        raw = text
        text = self.strip_eos(text)
        calls = list(_CALL.finditer(text))
        reason = _THINK.sub("", text[: calls[0].start()] if calls else text).strip()
        if len(calls) > 1:
            return Action(INVALID, reason=reason, raw=raw, error=f"{len(calls)} tool calls in one turn (one allowed)")
        if calls:
            try:
                call = json.loads(calls[0].group(1))
            except json.JSONDecodeError:
                return Action(INVALID, reason=reason, raw=raw, error="tool call is not valid JSON")
            if not isinstance(call, dict):
                return Action(INVALID, reason=reason, raw=raw, error="tool call is not a JSON object")
            name, args = call.get("name"), call.get("arguments") or {}
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    args = {}
            if name == "image_search":
                return Action(IMAGE_SEARCH, reason=reason, raw=raw)
            if name == "text_search":
                query = str(args.get("query", "")).strip() if isinstance(args, dict) else ""
                if not query:
                    return Action(INVALID, reason=reason, raw=raw, error="text_search without a query")
                return Action(TEXT_SEARCH, query=query, reason=reason, raw=raw)
            return Action(INVALID, reason=reason, raw=raw, error=f"unknown tool {name!r}")
        if "<tool_call>" in text:
            return Action(INVALID, reason=reason, raw=raw, error="unclosed <tool_call>")
        m = _ANSWER.search(text)
        if m:
            answer = m.group(1).strip()
            reason = _THINK.sub("", text[: m.start()]).strip()
        elif "<answer>" in text:
            return Action(INVALID, reason=reason, raw=raw, error="unclosed <answer>")
        else:
            answer, reason = _THINK.sub("", text).strip(), ""
        if not answer:
            return Action(INVALID, reason=reason, raw=raw, error="empty answer")
        return Action(ANSWER, answer=answer, reason=reason, raw=raw)

    def followup_text(self, question: str, tools_left: tuple[str, ...], last_turn: bool) -> str:
        return f"\nQuestion: {question}\n" + prompts.tool_followup(tools_left, last_turn)

    def tool_call_to_text(self, call: Mapping[str, Any]) -> str:
        f = call.get("function", call)
        args = f.get("arguments")
        args_text = args if isinstance(args, str) else json.dumps(args if args is not None else {}, ensure_ascii=False)
        return f'<tool_call>\n{{"name": "{f.get("name")}", "arguments": {args_text}}}\n</tool_call>'

    def make_environment_class(self, tools: Any, limits: Limits | None = None, with_images: bool = True,
                               condition: str = "tools") -> type:
        proto = self if limits is None else ToolCallsProtocol(limits)
        methods = {n: _METHODS[n] for n in condition_tools(condition)}
        return make_environment(proto, tools, condition, with_images, methods)
