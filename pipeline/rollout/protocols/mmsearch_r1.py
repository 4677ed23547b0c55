"""The MMSearch-R1 tag protocol: `<reason>..</reason>` then exactly one of `<search><img></search>`,
`<text_search>query</text_search>` or `<answer>..</answer>`; results come back as a user turn
`Searched results: <information>..</information>` + the question + a follow-up instruction.

Which tool a turn calls is read by the response template (`Protocol.parse_call`, the parser TRL uses); whether the
turn was well formed is the scorer's business (`pipeline.rollout.score.TagGrammar`, the paper's rule).

For TRL's native tool loop the tags map to tools through the response template: `<search><img></search>` ->
`search(query="")` (the declarative parser can only name a tool after its tag and gives every tag the same
argument shape, so the image tool is `search` and ignores `query`), `<text_search>q</text_search>` ->
`text_search(query="q")`. Reads and writes nothing.
"""
from __future__ import annotations

from typing import Any, Mapping

from pipeline.rollout.protocols import prompts
from pipeline.images import image_bytes
from pipeline.rollout.protocols.base import IMAGE_SEARCH, TEXT_SEARCH, Protocol, condition_tools
from pipeline.rollout.protocols.templates import MMSEARCH_R1_RESPONSE_TEMPLATE, MMSEARCH_R1_TEMPLATE

class MMSearchR1Protocol(Protocol):
    name = "mmsearch_r1"
    chat_template = MMSEARCH_R1_TEMPLATE
    response_template = MMSEARCH_R1_RESPONSE_TEMPLATE
    tool_names = {IMAGE_SEARCH: "search", TEXT_SEARCH: "text_search"}
    stop_strings = ["</answer>", "</search>", "</text_search>"]

    def initial_messages(self, item: Mapping[str, Any], condition: str = "tools", with_image: bool = True,
                         embed_image: bool = True) -> list[dict]:
        """One user turn: [image block] + instructions + the question. `embed_image=False` leaves an empty
        `{"type": "image"}` placeholder (TRL fills it from the dataset's `image`/`images` column)."""
        tools = condition_tools(condition)
        text = prompts.tag_instructions(tools, self.limits, with_image, self.prompt) + f"\n\nQuestion: {item['question']}"
        content: list[dict] = []
        if with_image:
            content.append({"type": "image", "image": image_bytes(item.get("image"))} if embed_image
                           else {"type": "image"})
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def followup_text(self, question: str, tools_left: tuple[str, ...], last_turn: bool) -> str:
        """After the result blocks (inside <information>); the chat template renders the tool message as the
        paper's user turn."""
        return f"Question: {question}\n" + prompts.tag_followup(tools_left, last_turn, self.prompt)

    def tool_call_to_text(self, call: Mapping[str, Any]) -> str:
        f = call.get("function", call)
        name, args = f.get("name"), f.get("arguments") or {}
        if name in ("search", "image_search"):
            return "<search><img></search>"
        if name == "text_search":
            q = args.get("query", "") if isinstance(args, Mapping) else str(args)
            return f"<text_search>{q}</text_search>"
        return f"<{name}>{args}</{name}>"
