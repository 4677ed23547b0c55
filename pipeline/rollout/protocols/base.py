"""What every rollout protocol shares: limits, the tool call of a turn, per-rollout state and the Protocol interface.

A protocol is data (prompts, a Jinja chat template, a declarative `response_template` for
`tokenizer.parse_response`) plus one small class. The probe loop, the GRPO trainer (TRL's native tool loop over
`pipeline.rollout.environment`) and the evaluator all use the same object: a turn is rendered the same way, its
tool call is read by the same parser (`parse_call`, TRL's) and the trajectory is scored by the same scorer
(`score`, `pipeline.rollout.score`). Nothing here reads or writes files.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pipeline.config import param
from pipeline.images import image_bytes
from pipeline.rollout.score import ANSWER, IMAGE_SEARCH, INVALID, TEXT_SEARCH, TrajectoryScore, score_turns

SEARCH_KINDS = (IMAGE_SEARCH, TEXT_SEARCH)

# Tools each probe/evaluation condition offers. `direct` / `on_demand` are the evaluator's names for the same thing.
CONDITION_TOOLS: dict[str, tuple[str, ...]] = {
    "closed_book": (),
    "direct": (),
    "tools": (IMAGE_SEARCH, TEXT_SEARCH),
    "on_demand": (IMAGE_SEARCH, TEXT_SEARCH),
    "image_only": (IMAGE_SEARCH,),
    "text_only": (TEXT_SEARCH,),
}

VISION_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"  # Qwen-VL image slot in rendered text
PROMPT_STYLES = ("full", "short")  # system-prompt variants (prompts.py): the full paper-style text, or a short one


@dataclass
class Limits:
    """Per-rollout limits (paper defaults). `max_turns` counts assistant turns, the answering turn included."""

    max_turns: int = param(3, help="most assistant turns per rollout (the paper: 3)")
    max_image_search: int = param(1, help="most image searches per rollout (the paper: 1)")
    image_search_first_turn_only: bool = param(True, help="image search only in the first turn (the paper: true)")
    max_text_search: int = param(2, help="most text searches per rollout (the paper: 2)")

    def validate(self) -> None:
        if self.max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        if self.max_image_search < 0 or self.max_text_search < 0:
            raise ValueError("search budgets must be >= 0")


@dataclass(frozen=True)
class ToolCall:
    """The tool call a model turn asks for, as TRL's parser reads it: `kind` (image_search | text_search, or the
    unknown tool name the model wrote) and the text query."""

    kind: str
    query: str = ""


@dataclass
class RolloutState:
    """Counters of one rollout. `turn` is the 1-based number of the assistant turn being judged."""

    tools: tuple[str, ...] = (IMAGE_SEARCH, TEXT_SEARCH)
    turn: int = 1
    n_image_search: int = 0
    n_text_search: int = 0
    actions: list[str] = field(default_factory=list)

    def record(self, kind: str, executed: bool) -> None:
        """Account for a `kind` call at the current turn and move to the next turn."""
        self.actions.append(kind)
        if executed and kind == IMAGE_SEARCH:
            self.n_image_search += 1
        elif executed and kind == TEXT_SEARCH:
            self.n_text_search += 1
        self.turn += 1


def condition_tools(condition: str) -> tuple[str, ...]:
    if condition not in CONDITION_TOOLS:
        raise ValueError(f"unknown condition {condition!r}; use one of {sorted(CONDITION_TOOLS)}")
    return CONDITION_TOOLS[condition]


def to_pil(image: Any):
    """A PIL RGB image from bytes / datasets dict / PIL (what processors and TRL's VLM path need)."""
    from PIL import Image

    if hasattr(image, "save") and hasattr(image, "mode"):
        return image if image.mode == "RGB" else image.convert("RGB")
    data = image_bytes(image)
    if data is None:
        raise ValueError("no image data")
    return Image.open(io.BytesIO(data)).convert("RGB")


def blocks_with_pil(blocks: list[dict]) -> list[dict]:
    """Copy of content blocks with every image payload turned into a PIL image (TRL's VLM path needs PIL)."""
    out = []
    for b in blocks:
        if b.get("type") == "image" and b.get("image") is not None:
            out.append({"type": "image", "image": to_pil(b["image"])})
        else:
            out.append(dict(b))
    return out


def messages_with_pil(messages: list[dict]) -> list[dict]:
    """Copy of chat messages with every image payload (bytes / datasets dict) as PIL, for processors that load
    images themselves (transformers `apply_chat_template`, TRL). String contents are kept."""
    return [{**m, "content": blocks_with_pil(m["content"])} if isinstance(m.get("content"), list) else dict(m)
            for m in messages]


def text_of(content: Any) -> str:
    """Plain text of message content (a string or content blocks); images are skipped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, Mapping) and b.get("type", "text") == "text")


class Protocol:
    """Interface shared by all protocols; subclasses fill in the class attributes and the abstract methods.

    Attributes: `name`; `chat_template` (Jinja, ChatML-style `<|im_start|>role ... <|im_end|>`); `response_template`
    (transformers `parse_response` spec: turns a model turn into content + tool_calls); `tool_names` (action kind ->
    tool function name as the model calls it); `stop_strings` (optional generation stops for engines that want the
    paper's stop-at-the-action behaviour; None = stop at EOS only).
    """

    name: str = ""
    chat_template: str = ""
    response_template: dict = {}
    tool_names: dict[str, str] = {}
    stop_strings: list[str] | None = None
    eos_text = "<|im_end|>"

    def __init__(self, limits: Limits | None = None, prompt: str = "full"):
        if prompt not in PROMPT_STYLES:
            raise ValueError(f"prompt style {prompt!r} is not one of {PROMPT_STYLES}")
        self.limits = limits or Limits()
        self.limits.validate()
        self.prompt = prompt

    # ----------------------------------------------------------------- state and limits
    def new_state(self, condition: str = "tools") -> RolloutState:
        return RolloutState(tools=condition_tools(condition))

    # ----------------------------------------------------------------- rendering
    def initial_messages(self, item: Mapping[str, Any], condition: str = "tools", with_image: bool = True,
                         embed_image: bool = True) -> list[dict]:
        raise NotImplementedError

    def parse_call(self, text: str) -> ToolCall | None:
        """The tool call of one model turn exactly as TRL's GRPOTrainer reads it (transformers' `parse_response`
        with this protocol's response template; TRL falls back to plain text when parsing fails), or None when the
        turn calls no tool (it is then the rollout's last turn)."""
        from transformers.utils.chat_parsing import parse_response

        spec = self.response_template
        try:
            msg = parse_response(self.strip_eos(text) + self.eos_text, spec, prefix=spec.get("start_anchor", ""))
        except (ValueError, TypeError):
            return None
        for call in (msg or {}).get("tool_calls") or []:
            f = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(f, Mapping) or not f.get("name"):
                return None
            args = f.get("arguments") or {}
            query = args.get("query", "") if isinstance(args, Mapping) else ""
            kinds = {name: kind for kind, name in self.tool_names.items()}
            return ToolCall(kinds.get(f["name"], str(f["name"])), query if isinstance(query, str) else str(query))
        return None

    def tool_result_message(self, result: Any, question: str, turn: int, last_turn: bool,
                            with_images: bool = True, condition: str = "tools", tool: str = "") -> dict:
        """A `tool` message: the result blocks, then one text block with the question and the protocol's follow-up
        instruction (which names the tools still allowed after this turn)."""
        from pipeline.rollout.protocols.rendering import result_blocks

        tools_left = tuple(t for t in condition_tools(condition)
                           if not (t == IMAGE_SEARCH and self.limits.image_search_first_turn_only))
        kind = tool or getattr(result, "tool", "") or TEXT_SEARCH
        return {"role": "tool", "name": self.tool_names.get(kind, kind),
                "content": result_blocks(result, with_images)
                + [{"type": "text", "text": self.followup_text(question, tools_left, last_turn)}]}

    def followup_text(self, question: str, tools_left: tuple[str, ...], last_turn: bool) -> str:
        """The text after a tool result: the question again and what the model may do next."""
        raise NotImplementedError

    def assistant_message(self, text: str) -> dict:
        """The assistant turn as it goes back into the conversation: the raw text, so re-rendering reproduces
        exactly what the model wrote (prefix caching and evidence fidelity)."""
        return {"role": "assistant", "content": self.strip_eos(text)}

    def strip_eos(self, text: str) -> str:
        text = text.rstrip()
        return text[: -len(self.eos_text)].rstrip() if text.endswith(self.eos_text) else text

    def tools_for(self, condition: str = "tools") -> list[dict] | None:
        """JSON tool schemas passed to `apply_chat_template(tools=...)` for a condition (None = no tools block)."""
        return None

    def tool_call_to_text(self, call: Mapping[str, Any]) -> str:
        """The text the model wrote for one parsed tool call (inverse of the response template)."""
        raise NotImplementedError

    def turn_text(self, message: Mapping[str, Any]) -> str:
        """The model's text of an assistant message, raw or parsed by `tokenizer.parse_response` (content + tool
        calls rendered back), the fallback when a completion's own token ids are not at hand."""
        text = text_of(message.get("content")).strip()
        for call in message.get("tool_calls") or []:
            text += self.tool_call_to_text(call)
        return text

    def score(self, turns: list[str], rule: str = "paper", condition: str = "tools") -> TrajectoryScore:
        """The one scorer (`pipeline.rollout.score`) over this protocol's turn format, limits and the condition's
        tools."""
        return score_turns(turns, self.name, rule, self.limits, condition_tools(condition))

    def turns_from_messages(self, messages: Iterable[Mapping[str, Any]]) -> list[str]:
        """The model's turn texts of a message list (TRL completion or evidence), for `pipeline.rollout.score`."""
        return [self.turn_text(m) for m in messages if m.get("role") == "assistant"]

    # ----------------------------------------------------------------- tokenizers and TRL
    def prepare_tokenizer(self, tok: Any) -> Any:
        """Set this protocol's chat template (and response template on the tokenizer) on a tokenizer or processor,
        so transformers, vLLM's chat path (given the same tokenizer folder or template) and TRL render the same
        text. Returns the same object."""
        inner = getattr(tok, "tokenizer", None)
        tok.chat_template = self.chat_template
        target = inner if inner is not None else tok
        target.chat_template = self.chat_template
        target.response_template = dataclasses_copy(self.response_template)
        return tok

    def render(self, tok: Any, messages: list[dict], condition: str = "tools", add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` under this protocol (the template is passed explicitly, so `tok` may
        carry any template)."""
        return tok.apply_chat_template(messages, tools=self.tools_for(condition), chat_template=self.chat_template,
                                       add_generation_prompt=add_generation_prompt, tokenize=False)


def dataclasses_copy(obj: Any) -> Any:
    """Deep copy of a JSON-like dict (so a tokenizer never shares the protocol's template dict)."""
    import copy

    return copy.deepcopy(obj)


__all__ = [
    "ANSWER", "CONDITION_TOOLS", "IMAGE_SEARCH", "INVALID", "Limits", "Protocol", "RolloutState",
    "SEARCH_KINDS", "TEXT_SEARCH", "ToolCall", "VISION_PLACEHOLDER", "blocks_with_pil", "condition_tools",
    "messages_with_pil",
    "text_of", "to_pil",
]
