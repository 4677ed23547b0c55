"""Rollout protocols: how a turn is rendered and parsed, shared by the probe, the trainer and the evaluator.

`get_protocol(name, limits)` returns a Protocol (`mmsearch_r1`: the paper's tags; `tool_calls`: native tool
calling). See `base.Protocol` for the methods. Reads and writes nothing.
"""
from __future__ import annotations

from pipeline.rollout.protocols.base import (
    ANSWER, CONDITION_TOOLS, IMAGE_SEARCH, INVALID, SEARCH_KINDS, TEXT_SEARCH, VISION_PLACEHOLDER, Limits,
    Protocol, RolloutState, ToolCall, blocks_with_pil, condition_tools, messages_with_pil, text_of, to_pil,
)
from pipeline.rollout.protocols.mmsearch_r1 import MMSearchR1Protocol
from pipeline.rollout.protocols.tool_calls import ToolCallsProtocol

PROTOCOLS = {"mmsearch_r1": MMSearchR1Protocol, "tool_calls": ToolCallsProtocol}


def get_protocol(name: str, limits: Limits | None = None, prompt: str = "full") -> Protocol:
    """The protocol `name` with `limits` (paper defaults when None) and prompt style (full | short)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; use one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name](limits, prompt)


__all__ = [
    "ANSWER", "CONDITION_TOOLS", "IMAGE_SEARCH", "INVALID", "Limits", "MMSearchR1Protocol", "PROTOCOLS",
    "Protocol", "RolloutState", "SEARCH_KINDS", "TEXT_SEARCH", "ToolCall", "ToolCallsProtocol",
    "VISION_PLACEHOLDER", "blocks_with_pil", "condition_tools", "get_protocol", "messages_with_pil",
    "text_of", "to_pil",
]
