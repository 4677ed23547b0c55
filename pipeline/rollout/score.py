"""The one scorer: turn sequence, final answer, format validity, search count and reward of one trajectory.

A trajectory is the list of the model's turn texts, as the model wrote them (special tokens such as `<|im_end|>`
removed, as the paper decodes with `skip_special_tokens=True`). The probe evidence, the labels, the GRPO reward and
the evaluation all score trajectories here, so "valid", "searched" and "correct" mean the same thing everywhere.

Rule `paper` (default) reproduces the released scorer of MMSearch-R1
(`mmsearch_r1/utils/reward_score_mm/mmsearch_r1_score.py`, read for understanding; this is our own code):
- each turn is stripped; the answer is the last `<answer>(.*?)</answer>` of the *last* turn, stripped (it counts for
  accuracy even when the format is invalid; `<answer></answer>` gives the empty answer "");
- format: exactly one of the four sequences, each turn matching its whole-turn pattern
  1 turn:  direct answer;  2 turns: image search or text search, then direct answer;
  3 turns: image search, then text search, then direct answer;  any other count: invalid;
- search count: turn 1 when the trajectory has one turn, else every turn but the last, each counting once when it
  contains a search tag anywhere (so a malformed turn that holds a search still counts);
- reward = (1 - a) * score + a * format, where score is 1 for a correct answer, times (1 - p) (or (1 - p) ** count
  with `penalty_per_call`) when the search count is positive; only correct answers (score > 0.99) are penalised.
The paper raises on more than three turns; here such a trajectory is invalid and its searches (all but the last
turn) count, which is the same rule continued.

Rule `limits` keeps the strict per-turn patterns but accepts any sequence of searches then one answer that the
protocol limits and the condition's tools allow (e.g. text > text > answer with the default limits). The paper's
rule looks at the text only: it knows neither limits nor conditions (the rollout enforced those).

Each protocol writes the three actions its own way (`TurnGrammar`): the tag protocol as the paper does; native tool
calls as `<tool_call>{"name": ..., "arguments": ...}</tool_call>` at the end of a search turn and
`<answer>..</answer>` at the end of the answer turn. Reads and writes nothing.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

RULES = ("paper", "limits")
ANSWER, IMAGE_SEARCH, TEXT_SEARCH, INVALID = "answer", "image_search", "text_search", "invalid"
PAPER_SEQUENCES = ((ANSWER,), (IMAGE_SEARCH, ANSWER), (TEXT_SEARCH, ANSWER), (IMAGE_SEARCH, TEXT_SEARCH, ANSWER))
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


class TurnGrammar:
    """Whole-turn patterns of one protocol: `direct`, `image`, `text` (is this turn exactly that action?),
    `has_search` (does the turn hold a search anywhere?) and `answer` (the last answer of a turn)."""

    name = ""

    def direct(self, turn: str) -> bool:
        raise NotImplementedError

    def image(self, turn: str) -> bool:
        raise NotImplementedError

    def text(self, turn: str) -> bool:
        raise NotImplementedError

    def has_search(self, turn: str) -> bool:
        raise NotImplementedError

    def answer(self, turn: str) -> str | None:
        found = list(_ANSWER.finditer(turn))
        return found[-1].group(1).strip() if found else None

    def kind(self, turn: str) -> str:
        """The action a stripped turn is, exactly, or `invalid`."""
        if self.direct(turn):
            return ANSWER
        if self.image(turn):
            return IMAGE_SEARCH
        if self.text(turn):
            return TEXT_SEARCH
        return INVALID


class TagGrammar(TurnGrammar):
    """The paper's tags: `<reason>..</reason>` then `<answer>..</answer>`, `<search><img></search>` or
    `<text_search>..</text_search>` closing the turn; one reason pair, one action, no tag of another action."""

    name = "mmsearch_r1"
    _DIRECT = re.compile(r"^<reason>.*</reason>.*<answer>.*</answer>$", re.S)
    _IMAGE = re.compile(r"^<reason>.*</reason>.*<search><img></search>$", re.S)
    _TEXT = re.compile(r"^<reason>.*</reason>.*<text_search>.*</text_search>$", re.S)
    IMG_TAG = "<search><img></search>"

    @staticmethod
    def _one_reason(t: str) -> bool:
        return t.count("<reason>") == 1 and t.count("</reason>") == 1

    def direct(self, t: str) -> bool:
        return (bool(self._DIRECT.match(t)) and self._one_reason(t)
                and t.count("<answer>") == 1 and t.count("</answer>") == 1
                and self.IMG_TAG not in t and "<text_search>" not in t and "</text_search>" not in t)

    def image(self, t: str) -> bool:
        return (bool(self._IMAGE.match(t)) and self._one_reason(t) and t.count(self.IMG_TAG) == 1
                and "<answer>" not in t and "</answer>" not in t
                and "<text_search>" not in t and "</text_search>" not in t)

    def text(self, t: str) -> bool:
        return (bool(self._TEXT.match(t)) and self._one_reason(t)
                and t.count("<text_search>") == 1 and t.count("</text_search>") == 1
                and "<answer>" not in t and "</answer>" not in t and self.IMG_TAG not in t)

    def has_search(self, t: str) -> bool:
        return self.IMG_TAG in t or ("<text_search>" in t and "</text_search>" in t)


class ToolCallGrammar(TurnGrammar):
    """Native tool calls: a search turn ends with exactly one `<tool_call>{json}</tool_call>` naming `image_search`
    or `text_search` (free text, e.g. `<think>..</think>`, may come before it); the answer turn ends with exactly
    one `<answer>..</answer>` and holds no tool call."""

    name = "tool_calls"
    _DIRECT = re.compile(r"^.*<answer>.*</answer>$", re.S)
    _CALL_END = re.compile(r"<tool_call>(.*)</tool_call>$", re.S)

    def _call_name(self, t: str) -> str | None:
        if t.count("<tool_call>") != 1 or t.count("</tool_call>") != 1 or "<answer>" in t or "</answer>" in t:
            return None
        m = self._CALL_END.search(t)
        if m is None:
            return None
        try:
            call = json.loads(m.group(1))
        except json.JSONDecodeError:
            return None
        if not isinstance(call, dict):
            return None
        name, args = call.get("name"), call.get("arguments", {})
        # a well-formed call is one the tool accepts: image_search takes no argument, text_search one string query
        if name == IMAGE_SEARCH and args in ({}, None):
            return name
        if name == TEXT_SEARCH and isinstance(args, dict) and set(args) == {"query"} and isinstance(args["query"], str):
            return name
        return None

    def direct(self, t: str) -> bool:
        return (bool(self._DIRECT.match(t)) and t.count("<answer>") == 1 and t.count("</answer>") == 1
                and "<tool_call>" not in t and "</tool_call>" not in t)

    def image(self, t: str) -> bool:
        return self._call_name(t) == IMAGE_SEARCH

    def text(self, t: str) -> bool:
        return self._call_name(t) == TEXT_SEARCH

    def has_search(self, t: str) -> bool:
        return "<tool_call>" in t and "</tool_call>" in t


GRAMMARS: dict[str, TurnGrammar] = {"mmsearch_r1": TagGrammar(), "tool_calls": ToolCallGrammar()}


@dataclasses.dataclass
class TrajectoryScore:
    """What one trajectory did under the rule (`answer` is None when the last turn has no answer tag)."""

    kinds: list[str]
    answer: str | None
    format_ok: bool
    search_count: int
    reason: str = ""  # why the format is invalid ("" when valid)


def _sequence_in_limits(kinds: Sequence[str], limits: Any, tools: Sequence[str]) -> str:
    """"" when the searches-then-answer sequence is one the limits (and the offered `tools`) allow, else why not."""
    if len(kinds) > limits.max_turns:
        return f"{len(kinds)} turns > max_turns {limits.max_turns}"
    images = texts = 0
    for turn, kind in enumerate(kinds[:-1], start=1):
        if kind in (IMAGE_SEARCH, TEXT_SEARCH) and kind not in tools:
            return f"turn {turn}: {kind} is not offered"
        if kind == IMAGE_SEARCH:
            images += 1
            if limits.image_search_first_turn_only and turn != 1:
                return f"image search in turn {turn} (only the first turn may)"
        elif kind == TEXT_SEARCH:
            texts += 1
        else:
            return f"turn {turn} is {kind}, not a search"
    if images > limits.max_image_search or texts > limits.max_text_search:
        return f"{images} image / {texts} text searches exceed the limits"
    return ""


def score_turns(turns: Sequence[str], grammar: TurnGrammar | str = "mmsearch_r1", rule: str = "paper",
                limits: Any = None, tools: Sequence[str] = (IMAGE_SEARCH, TEXT_SEARCH)) -> TrajectoryScore:
    """Score one trajectory (the model's turn texts, in order) under `rule` (see the module docstring);
    `limits` (a `Limits`) and the offered `tools` are read by rule `limits` only (the paper's rule knows neither)."""
    if rule not in RULES:
        raise ValueError(f"unknown format rule {rule!r}; use one of {RULES}")
    g = GRAMMARS[grammar] if isinstance(grammar, str) else grammar
    turns = [t.strip() for t in turns]
    n = len(turns)
    if n == 0:
        return TrajectoryScore([], None, False, 0, "no model turn")
    kinds = [g.kind(t) for t in turns]
    counted = turns[:1] if n == 1 else turns[:-1]
    search_count = sum(1 for t in counted if g.has_search(t))
    answer = g.answer(turns[-1])
    if rule == "paper":
        ok = tuple(kinds) in PAPER_SEQUENCES
        why = "" if ok else f"turn sequence {' > '.join(kinds)} is not one of the paper's four"
    else:
        why = (f"turn sequence {' > '.join(kinds)} does not end in an answer" if kinds[-1] != ANSWER
               else _sequence_in_limits(kinds, limits, tools))
        ok = not why
    return TrajectoryScore(kinds, answer, ok, search_count, why)


def search_factor(search_count: int, penalty: float, per_call: bool = False) -> float:
    """The multiplier on a correct answer's score: 1 without search, (1 - p), or (1 - p) ** count per call."""
    if search_count <= 0:
        return 1.0
    return (1.0 - penalty) ** search_count if per_call else 1.0 - penalty


def reward(acc: float, search_count: int, format_ok: bool, *, format_weight: float = 0.1,
           search_penalty: float = 0.1, per_call: bool = False) -> float:
    """Eq. 1 as the paper's scorer computes it: (1 - a) * score + a * format; the search penalty only touches a
    correct answer (score > 0.99)."""
    score = acc * search_factor(search_count, search_penalty, per_call) if acc > 0.99 else acc
    return (1.0 - format_weight) * score + format_weight * float(format_ok)


__all__ = [
    "ANSWER", "GRAMMARS", "IMAGE_SEARCH", "INVALID", "PAPER_SEQUENCES", "RULES", "TEXT_SEARCH", "TagGrammar",
    "ToolCallGrammar", "TrajectoryScore", "TurnGrammar", "reward", "score_turns",
    "search_factor",
]
