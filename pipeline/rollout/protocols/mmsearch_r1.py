"""The MMSearch-R1 tag protocol: `<reason>..</reason>` then exactly one of `<search><img></search>`,
`<text_search>query</text_search>` or `<answer>..</answer>`; results come back as a user turn
`Searched results: <information>..</information>` + the question + a follow-up instruction.

For TRL's native tool loop the tags map to tools through the response template: `<search><img></search>` ->
`search(query="")` (the declarative parser can only name a tool after its tag and gives every tag the same
argument shape, so the image tool is `search` and ignores `query`), `<text_search>q</text_search>` ->
`text_search(query="q")`. Reads and writes nothing.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from pipeline.rollout.protocols import prompts
from pipeline.rollout.protocols.base import (
    ANSWER, IMAGE_SEARCH, INVALID, TEXT_SEARCH, Action, Limits, Protocol, condition_tools, image_bytes,
)
from pipeline.rollout.protocols.environment import make_environment
from pipeline.rollout.protocols.templates import MMSEARCH_R1_RESPONSE_TEMPLATE, MMSEARCH_R1_TEMPLATE

_REASON = re.compile(r"<reason>(.*?)</reason>", re.S)
_ACTIONS = re.compile(r"<answer>(?P<answer>.*?)</answer>|<text_search>(?P<query>.*?)</text_search>|"
                      r"<search>(?P<img>.*?)</search>", re.S)
_IMG_BODY = re.compile(r"\s*<img>\s*")


class MMSearchR1Protocol(Protocol):
    name = "mmsearch_r1"
    chat_template = MMSEARCH_R1_TEMPLATE
    response_template = MMSEARCH_R1_RESPONSE_TEMPLATE
    tool_names = {IMAGE_SEARCH: "search", TEXT_SEARCH: "text_search"}
    stop_strings = ["</answer>", "</search>", "</text_search>"]

    def __init__(self, limits: Limits | None = None, require_reason: bool = True):
        super().__init__(limits)
        self.require_reason = require_reason

    def initial_messages(self, item: Mapping[str, Any], condition: str = "tools", with_image: bool = True,
                         embed_image: bool = True) -> list[dict]:
        """One user turn: [image block] + instructions + the question. `embed_image=False` leaves an empty
        `{"type": "image"}` placeholder (TRL fills it from the dataset's `image`/`images` column)."""
        tools = condition_tools(condition)
        text = prompts.tag_instructions(tools, self.limits, with_image) + f"\n\nQuestion: {item['question']}"
        content: list[dict] = []
        if with_image:
            content.append({"type": "image", "image": image_bytes(item.get("image"))} if embed_image
                           else {"type": "image"})
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def parse_turn(self, text: str) -> Action:
        raw = text
        text = self.strip_eos(text)
        reason_m = _REASON.search(text)
        reason = reason_m.group(1).strip() if reason_m else ""
        if self.require_reason:
            if reason_m is None:
                err = "unclosed <reason>" if "<reason>" in text else "missing <reason>...</reason> before the action"
                return Action(INVALID, raw=raw, error=err)
            if not reason:
                return Action(INVALID, raw=raw, error="empty <reason>")
        rest = text[reason_m.end():] if reason_m else text
        found = list(_ACTIONS.finditer(rest))
        if not found:
            for tag in ("answer", "text_search", "search"):
                if f"<{tag}>" in rest:
                    return Action(INVALID, reason=reason, raw=raw, error=f"unclosed <{tag}>")
            return Action(INVALID, reason=reason, raw=raw, error="no <answer>, <search> or <text_search> action")
        if len(found) > 1:
            return Action(INVALID, reason=reason, raw=raw, error=f"{len(found)} actions in one turn (exactly one allowed)")
        m = found[0]
        if m.group("answer") is not None:
            answer = m.group("answer").strip()
            if not answer:
                return Action(INVALID, reason=reason, raw=raw, error="empty <answer>")
            return Action(ANSWER, answer=answer, reason=reason, raw=raw)
        if m.group("query") is not None:
            query = m.group("query").strip()
            if not query:
                return Action(INVALID, reason=reason, raw=raw, error="empty <text_search> query")
            return Action(TEXT_SEARCH, query=query, reason=reason, raw=raw)
        if not _IMG_BODY.fullmatch(m.group("img")):
            return Action(INVALID, reason=reason, raw=raw, error="<search> must contain only <img>")
        return Action(IMAGE_SEARCH, reason=reason, raw=raw)

    def followup_text(self, question: str, tools_left: tuple[str, ...], last_turn: bool) -> str:
        """After the result blocks (inside <information>); the chat template renders the tool message as the
        paper's user turn."""
        return f"Question: {question}\n" + prompts.tag_followup(tools_left, last_turn)

    def tool_call_to_text(self, call: Mapping[str, Any]) -> str:
        f = call.get("function", call)
        name, args = f.get("name"), f.get("arguments") or {}
        if name in ("search", "image_search"):
            return "<search><img></search>"
        if name == "text_search":
            q = args.get("query", "") if isinstance(args, Mapping) else str(args)
            return f"<text_search>{q}</text_search>"
        return f"<{name}>{args}</{name}>"

    def make_environment_class(self, tools: Any, limits: Limits | None = None, with_images: bool = True,
                               condition: str = "tools") -> type:
        proto = self if limits is None else MMSearchR1Protocol(limits, self.require_reason)

        def search(self, query: str = "") -> list:
            """Search the web with the question's image (reverse image search) and return the matching pages:
            titles, snippets and thumbnails.

            Args:
                query: Ignored; the image of the question is what is searched.
            """
            return self._call(IMAGE_SEARCH, "")

        def text_search(self, query: str) -> list:
            """Search the web for a text query and return the most relevant passages.

            Args:
                query: What to search for, a few words.
            """
            return self._call(TEXT_SEARCH, query)

        return make_environment(proto, tools, condition, with_images, {"search": search, "text_search": text_search})
