"""`RolloutParams`: the shared `rollout:` section of params.yaml, how one rollout is played and judged.

Bootstrap, probe, train and evaluate extend it, so "search-required" means the same thing in the labels as in
training and evaluation: `pipeline.config.load_section` fills these fields from `rollout:` and then applies what a
stage's own section sets (only where that stage truly differs). How many rollouts per item (K) is each stage's own
`samples`. Reads/writes nothing.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from pipeline.config import param
from pipeline.judge import JudgeParams
from pipeline.rollout.protocols import Limits


@dataclasses.dataclass
class RolloutParams:
    SHARED_SECTION: ClassVar[str] = "rollout"

    protocol: Literal["mmsearch_r1", "tool_calls"] = param(
        "mmsearch_r1", help="mmsearch_r1 (the paper's tags) | tool_calls (the chat template's native tool calling)")
    limits: Limits = param(factory=Limits, help="per-rollout limits (the paper: 3 turns, 1 image search in turn 1, "
                           "2 text searches); evaluate's rag mode always runs image search, text search, answer")
    prompt: Literal["full", "short"] = param(
        "full", help="prompt style (pipeline/rollout/protocols/prompts.py): full spells the protocol out (a model "
        "that meets it for the first time); short names the actions only (a labeler the bootstrap taught the protocol)")
    search_k: int = param(0, help="results per search call (0 = search.k_image / search.k_text); one value for "
                          "every stage, so the cache serves every stage the results probe cached")
    judge: JudgeParams = param(factory=JudgeParams, help="answer judge: em with aliases (the paper's reward), "
                               "subem, f1 or llm (an OpenAI-compatible judge: judge.llm.base_url and judge.llm.model)")
    format_rule: Literal["paper", "limits"] = param(
        "paper", help="the one scorer's format rule (pipeline/rollout/score.py), for the probe evidence, the labels, "
        "the GRPO reward and evaluation alike: paper = the released scorer (answer, image>answer, text>answer, "
        "image>text>answer, each turn in its exact format); limits = any searches-then-answer sequence the limits "
        "and the condition's tools allow")

    def validate(self) -> None:
        if self.search_k < 0:
            raise ValueError(f"search_k must be >= 0, got {self.search_k}")
        if self.format_rule not in ("paper", "limits"):
            raise ValueError(f"format_rule must be paper or limits, got {self.format_rule!r}")

    def make_protocol(self):
        """The protocol object every stage plays: `get_protocol(protocol, limits)`."""
        from pipeline.rollout.protocols import get_protocol

        return get_protocol(self.protocol, self.limits, self.prompt)
