"""Native tool calling (Qwen2.5 layout): tools `image_search()` and `text_search(query)` listed in the system turn,
calls as `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, results in a `<tool_response>` user
turn, the final answer inside `<answer>..</answer>`. Which tool a turn calls is read by the response template
(`Protocol.parse_call`, as TRL reads it); well-formedness is the scorer's (`pipeline.rollout.score.ToolCallGrammar`).

The tool schemas passed to the template come from the environment's own methods, so the probe's prompts and
TRL's (which builds schemas from the same methods) are byte-identical. Reads and writes nothing.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from pipeline.rollout.protocols import prompts
from pipeline.images import image_bytes
from pipeline.rollout.protocols.base import IMAGE_SEARCH, TEXT_SEARCH, Protocol, condition_tools
from pipeline.rollout.protocols.tool_methods import TOOL_METHODS
from pipeline.rollout.protocols.templates import TOOL_CALLS_RESPONSE_TEMPLATE, TOOL_CALLS_TEMPLATE

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
        return [get_json_schema(TOOL_METHODS[n]) for n in names] or None

    def initial_messages(self, item: Mapping[str, Any], condition: str = "tools", with_image: bool = True,
                         embed_image: bool = True) -> list[dict]:
        tools = condition_tools(condition)
        content: list[dict] = []
        if with_image:
            content.append({"type": "image", "image": image_bytes(item.get("image"))} if embed_image
                           else {"type": "image"})
        content.append({"type": "text", "text": str(item["question"])})
        return [{"role": "system", "content": prompts.tool_system_prompt(tools, self.limits, with_image, self.prompt)},
                {"role": "user", "content": content}]

    def followup_text(self, question: str, tools_left: tuple[str, ...], last_turn: bool) -> str:
        return f"\nQuestion: {question}\n" + prompts.tool_followup(tools_left, last_turn, self.prompt)

    def tool_call_to_text(self, call: Mapping[str, Any]) -> str:
        f = call.get("function", call)
        args = f.get("arguments")
        args_text = args if isinstance(args, str) else json.dumps(args if args is not None else {}, ensure_ascii=False)
        return f'<tool_call>\n{{"name": "{f.get("name")}", "arguments": {args_text}}}\n</tool_call>'
