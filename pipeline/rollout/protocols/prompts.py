"""Prompt texts of both protocols, in our own words, carrying the instructions of the MMSearch-R1 paper.

The paper's policy reasons first, then picks one action per turn: answer, image search (only in the first turn),
or text search; search results come back in a user turn inside <information>, followed by the question and an
instruction (on the last allowed turn: answer now). The direct-answer baseline answers from its own knowledge.

Two styles (`rollout.prompt`): `full` spells the protocol out for a model that meets it for the first time (a capable
VLM with no cold start); `short` only names the actions, for a labeler that was taught the protocol by the
bootstrap's demonstrations (the demo's SmolLM2), and costs a quarter of the prompt tokens in every probe turn.
"""
from __future__ import annotations

from pipeline.rollout.protocols.base import IMAGE_SEARCH, TEXT_SEARCH, Limits

NO_IMAGE_NOTE = (
    "The image itself is not shown to you. An image search is the only way to find out what it shows."
)
SHORT_NO_IMAGE_NOTE = "You cannot see the image; image search can."


def _short_actions(tools: tuple[str, ...], limits: Limits) -> str:
    acts = ["<answer>a few words</answer>"]
    if IMAGE_SEARCH in tools:
        acts.append("<search><img></search> to search with the image" +
                    (" (turn 1 only)" if limits.image_search_first_turn_only else ""))
    if TEXT_SEARCH in tools:
        acts.append("<text_search>query</text_search> to look a fact up")
    return ", or ".join(acts)


def _times(n: int) -> str:
    return "once" if n == 1 else f"at most {n} times"


def tag_instructions(tools: tuple[str, ...], limits: Limits, with_image: bool, style: str = "full") -> str:
    """User-turn instructions of the tag protocol for the tools a condition offers (none = direct answer)."""
    if style == "short":
        note = "" if with_image else SHORT_NO_IMAGE_NOTE + " "
        if not tools:
            return note + "Answer from what you know: <reason>why</reason><answer>a few words</answer>."
        return (note + "Each turn: <reason>why</reason>, then " + _short_actions(tools, limits)
                + ". Search only when needed.")
    lines = []
    if not with_image:
        lines.append(NO_IMAGE_NOTE)
    if not tools:
        lines += [
            "Answer the question about the image from your own knowledge; no search is available.",
            "First think inside <reason> </reason>, then give your final answer, a few words only, inside "
            "<answer> </answer>.",
        ]
        return "\n".join(lines)
    lines += [
        "Answer the question about the image. Look closely at what the image shows (objects, places, people, "
        "flags, logos, written text) and decide whether you know enough to answer with confidence.",
        "In every turn, first think inside <reason> </reason>, then end the turn with exactly one of these:",
        "- <answer>your answer</answer> when you can answer now (a few words only);",
    ]
    if IMAGE_SEARCH in tools:
        when = "only in your first turn" if limits.image_search_first_turn_only else "whenever needed"
        lines.append(
            f"- <search><img></search> to search the web with this image and get matching pages with titles and "
            f"thumbnails, when you cannot tell what the image shows ({when}, {_times(limits.max_image_search)});"
        )
    if TEXT_SEARCH in tools:
        lines.append(
            "- <text_search>a short query</text_search> to search the web for a fact you do not know "
            f"({_times(limits.max_text_search)});"
        )
    lines.append(
        "Search results come back inside <information> </information>. Search only when your own knowledge is not "
        f"enough: every search costs. You have at most {limits.max_turns} turns."
    )
    return "\n".join(lines)


def tag_followup(tools_left: tuple[str, ...], last_turn: bool, style: str = "full") -> str:
    """Instruction after a search result (tag protocol)."""
    if style == "short":
        if last_turn or not tools_left:
            return "Last turn: <reason>why</reason><answer>a few words</answer>."
        return "<reason>why</reason>, then <answer>a few words</answer>" + (
            ", or <text_search>query</text_search>." if TEXT_SEARCH in tools_left else ".")
    if last_turn or not tools_left:
        return ("This is your last turn: no more searches. Think inside <reason> </reason>, then give your final "
                "answer inside <answer> </answer>.")
    options = ["answer inside <answer> </answer>"]
    if TEXT_SEARCH in tools_left:
        options.append("if a fact is still missing, search the web with <text_search>query</text_search>")
    return ("Use these results together with the image. Think inside <reason> </reason>, then either "
            + ", or ".join(options) + ".")


def tool_system_prompt(tools: tuple[str, ...], limits: Limits, with_image: bool, style: str = "full") -> str:
    """System turn of the native tool-calling protocol."""
    if style == "short":
        note = "" if with_image else SHORT_NO_IMAGE_NOTE + " "
        return note + ("Call a search function only when needed. " if tools else "") + \
            "Answer inside <answer> </answer>."
    parts = ["You answer questions about images."]
    if not with_image:
        parts.append(NO_IMAGE_NOTE)
    if tools:
        rules = []
        if IMAGE_SEARCH in tools:
            first = " and only in your first turn" if limits.image_search_first_turn_only else ""
            rules.append(f"image_search {_times(limits.max_image_search)}{first}")
        if TEXT_SEARCH in tools:
            rules.append(f"text_search {_times(limits.max_text_search)}")
        parts.append(
            "If your own knowledge is not enough, call a search function (one call per turn; "
            + "; ".join(rules) + f"; at most {limits.max_turns} turns). Search only when needed: every search costs."
        )
    else:
        parts.append("Answer from your own knowledge; no search is available.")
    parts.append("Give your final answer, a few words only, inside <answer> </answer>.")
    return " ".join(parts)


def tool_followup(tools_left: tuple[str, ...], last_turn: bool, style: str = "full") -> str:
    if last_turn or not tools_left:
        return ("Last turn: answer inside <answer> </answer>." if style == "short" else
                "This is your last turn: no more searches. Give your final answer inside <answer> </answer>.")
    return ("Answer inside <answer> </answer>, or call text_search." if style == "short" else
            "Use these results. Answer inside <answer> </answer>, or call text_search if a fact is still missing.")
