"""The one scorer equals the paper's released scorer: named edge cases, then thousands of generated trajectories
(valid and malformed) against a reference reading of `compute_score` written here, independently of the scorer.
Also the tool-calls protocol's own turn format and the `limits` rule."""
from __future__ import annotations

import random
import re
import string

import pytest

from pipeline.judge import judge
from pipeline.rollout.protocols import Limits
from pipeline.rollout.score import reward, score_turns


# ---------------------------------------------------------------------------------------------------------------
# reference: the released scorer's control flow, read line by line (mmsearch_r1_score.py), kept apart from ours
# ---------------------------------------------------------------------------------------------------------------
def _ref_norm(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _ref_direct(r):
    if not re.match(r"^<reason>.*</reason>.*<answer>.*</answer>$", r, re.DOTALL):
        return False
    if r.count("<reason>") != 1 or r.count("</reason>") != 1:
        return False
    if r.count("<answer>") != 1 or r.count("</answer>") != 1:
        return False
    return "<search><img></search>" not in r and "<text_search>" not in r and "</text_search>" not in r


def _ref_image(r):
    if not re.match(r"^<reason>.*</reason>.*<search><img></search>$", r, re.DOTALL):
        return False
    if r.count("<reason>") != 1 or r.count("</reason>") != 1 or r.count("<search><img></search>") != 1:
        return False
    return not ("<answer>" in r or "</answer>" in r or "<text_search>" in r or "</text_search>" in r)


def _ref_text(r):
    if not re.match(r"^<reason>.*</reason>.*<text_search>.*</text_search>$", r, re.DOTALL):
        return False
    if r.count("<reason>") != 1 or r.count("</reason>") != 1:
        return False
    if r.count("<text_search>") != 1 or r.count("</text_search>") != 1:
        return False
    return not ("<answer>" in r or "</answer>" in r or "<search><img></search>" in r)


def _ref_searched(r):
    return "<search><img></search>" in r or ("<text_search>" in r and "</text_search>" in r)


def ref_compute_score(responses, golds, search_penalty=0.1, format_penalty=0.1, per_call=False, mode="EM"):
    n = len(responses)
    found = list(re.finditer(r"<answer>(.*?)</answer>", responses[-1], re.DOTALL))
    answer = found[-1].group(1).strip() if found else None
    score = 0
    if answer is not None:
        p = _ref_norm(answer)
        if mode == "EM" and any(_ref_norm(g) == p for g in golds):
            score = 1
        elif mode == "SubEM" and any(_ref_norm(g) in p for g in golds):
            score = 1
    rs = [r.strip() for r in responses]
    fmt, count = 0, 0
    if n == 1:
        count += _ref_searched(rs[0])
        fmt = int(_ref_direct(rs[0]))
    elif n == 2:
        count += _ref_searched(rs[0])
        fmt = int((_ref_image(rs[0]) or _ref_text(rs[0])) and _ref_direct(rs[1]))
    elif n == 3:
        count += _ref_searched(rs[0]) + _ref_searched(rs[1])
        fmt = int(_ref_image(rs[0]) and _ref_text(rs[1]) and _ref_direct(rs[2]))
    else:
        raise ValueError(n)
    if count > 0 and score > 0.99:
        for _ in range(count if per_call else 1):
            score *= 1 - search_penalty
    return (1 - format_penalty) * score + format_penalty * fmt


def ours(responses, golds, search_penalty=0.1, format_penalty=0.1, per_call=False, mode="em"):
    s = score_turns(responses, "mmsearch_r1", "paper")
    acc = 0.0 if s.answer is None else float(judge(s.answer, golds[0], golds[1:], method=mode).correct)
    return reward(acc, s.search_count, s.format_ok, format_weight=format_penalty, search_penalty=search_penalty,
                  per_call=per_call)


# ---------------------------------------------------------------------------------------------------------------
# named cases
# ---------------------------------------------------------------------------------------------------------------
R = "<reason>I know it.</reason>"
IMG = "<reason>I must see the image.</reason><search><img></search>"
TXT = "<reason>I need a fact.</reason><text_search>capital of Peru</text_search>"
ANS = "<reason>Found it.</reason><answer>Lima</answer>"

NAMED = [
    ("direct correct", [f"{R}<answer>Lima</answer>"], 1.0),
    ("direct wrong", [f"{R}<answer>Quito</answer>"], 0.1),
    ("image then answer", [IMG, ANS], 0.91),
    ("text then answer", [TXT, ANS], 0.91),
    ("image, text, answer", [IMG, TXT, ANS], 0.91),
    ("searched and wrong", [IMG, "<reason>r</reason><answer>Quito</answer>"], 0.1),
    # (a) a search inside a malformed turn still counts as a search: correct answer after it earns 0.9 * 0.9
    ("unclosed reason before image search", ["<reason>hmm <search><img></search>", ANS], 0.81),
    ("no reason before text search", ["<text_search>capital of Peru</text_search>", ANS], 0.81),
    # (b) stray text: before <reason>, after </answer>, after a search tag, doubled reason pairs
    ("text before reason", [f"Sure. {R}<answer>Lima</answer>"], 0.9),
    ("text after answer", [f"{R}<answer>Lima</answer> done"], 0.9),
    ("text after image search", [IMG + " ok", ANS], 0.81),
    ("two reason pairs", [f"{R}{R}<answer>Lima</answer>"], 0.9),
    # text between </reason> and the action is allowed by the released pattern
    ("text between reason and answer", [f"{R} so: <answer>Lima</answer>"], 1.0),
    # (c) an empty answer is a valid format (and a wrong answer)
    ("empty answer", [f"{R}<answer></answer>"], 0.1),
    ("answer read from a malformed last turn", [IMG, "<answer>Lima</answer>"], 0.81),
    ("last answer of the last turn counts", [f"{R}<answer>Quito</answer><answer>Lima</answer>"], 0.9),
    ("answer only in an earlier turn", [f"{R}<answer>Lima</answer>", TXT], 0.0),
    ("search and answer in one turn", [f"{R}<search><img></search><answer>Lima</answer>"], 0.81),
    ("text then image is not a sequence", [TXT, IMG, ANS], 0.81),
    ("two text searches", [TXT, TXT, ANS], 0.81),
    ("search in the last of two turns is not counted", [TXT, f"{ANS}<search><img></search>"], 0.81),
    ("unclosed text search is not a search", ["<reason>r</reason><text_search>peru", ANS], 0.9),
    ("image tag with spaces is not an image search", ["<reason>r</reason><search> <img> </search>", ANS], 0.9),
    ("surrounding whitespace is stripped", [f"\n  {R}<answer>Lima</answer>  \n"], 1.0),
]


@pytest.mark.parametrize("case, turns, expected", NAMED, ids=[c[0] for c in NAMED])
def test_named_cases_equal_the_released_scorer(case, turns, expected):
    golds = ["Lima", "Ciudad de los Reyes"]
    assert ref_compute_score(turns, golds) == pytest.approx(expected)
    assert ours(turns, golds) == pytest.approx(expected)


def test_more_than_three_turns_is_invalid_and_counts_every_search_but_the_last():
    s = score_turns([IMG, TXT, TXT, ANS], "mmsearch_r1")
    assert not s.format_ok and s.search_count == 3 and s.answer == "Lima"
    assert s.kinds == ["image_search", "text_search", "text_search", "answer"]


def test_degenerate_gold_matches_the_empty_answer_as_in_the_paper():
    assert ours([f"{R}<answer></answer>"], ["The"]) == pytest.approx(1.0)
    assert ref_compute_score([f"{R}<answer></answer>"], ["The"]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# property test: random trajectories
# ---------------------------------------------------------------------------------------------------------------
PIECES = ["<reason>", "</reason>", "<answer>", "</answer>", "<search>", "</search>", "<img>",
          "<search><img></search>", "<text_search>", "</text_search>", "Lima", "lima.", "the Lima", "Quito", " ",
          "\n", "so", "<reason>ok</reason>", "<answer>Lima</answer>", "<text_search>peru</text_search>", "Ciudad"]
GOOD = [ANS, IMG, TXT, f"{R}<answer>Quito</answer>", f"{R}<answer>the lima</answer>",
        "<reason>x</reason><answer></answer>"]


def _random_turn(rng: random.Random, well_formed: str | None = None) -> str:
    if well_formed is not None or rng.random() < 0.45:  # a well-formed turn, maybe damaged
        t = well_formed or rng.choice(GOOD)
        if rng.random() < 0.5:
            i = rng.randrange(len(t) + 1)
            t = t[:i] + rng.choice(PIECES) + t[i:]
        if rng.random() < 0.2:
            i, j = sorted(rng.randrange(len(t) + 1) for _ in range(2))
            t = t[:i] + t[j:]
        return rng.choice(["", " ", "\n"]) + t + rng.choice(["", " ", "\n"])
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 8)))


def test_property_thousands_of_trajectories_agree_with_the_released_scorer():
    rng = random.Random(0)
    disagreements, valid, searched = [], 0, 0
    for _ in range(6000):
        if rng.random() < 0.4:  # one of the paper's sequences, each turn maybe damaged
            seq = rng.choice([[], [IMG], [TXT], [IMG, TXT]]) + [rng.choice([ANS, GOOD[3], GOOD[4], GOOD[5]])]
            turns = [_random_turn(rng, t) if rng.random() < 0.3 else t for t in seq]
        else:
            turns = [_random_turn(rng) for _ in range(rng.randint(1, 3))]
        golds = rng.choice([["Lima"], ["Lima", "Ciudad de los Reyes"], ["Quito"], ["the"]])
        penalty = rng.choice([0.0, 0.1, 0.3])
        fmt = rng.choice([0.1, 0.2])
        per_call = rng.random() < 0.3
        mode = rng.choice(["EM", "SubEM"])
        expected = ref_compute_score(turns, golds, penalty, fmt, per_call, mode)
        got = ours(turns, golds, penalty, fmt, per_call, "em" if mode == "EM" else "subem")
        if abs(expected - got) > 1e-12:
            disagreements.append((turns, golds, expected, got))
        s = score_turns(turns, "mmsearch_r1")
        valid += s.format_ok
        searched += s.search_count > 0
    assert not disagreements, disagreements[:5]
    # the generator reaches both sides of every branch
    assert 500 < valid < 5500 and 500 < searched < 5500


# ---------------------------------------------------------------------------------------------------------------
# the tool-calls protocol and the limits rule
# ---------------------------------------------------------------------------------------------------------------
CALL_IMG = '<tool_call>\n{"name": "image_search", "arguments": {}}\n</tool_call>'
CALL_TXT = '<think>need a fact</think><tool_call>\n{"name": "text_search", "arguments": {"query": "peru"}}\n</tool_call>'


@pytest.mark.parametrize("turns, kinds, ok, count", [
    (["<answer>Lima</answer>"], ["answer"], True, 0),
    (["I think <answer>Lima</answer>"], ["answer"], True, 0),
    ([CALL_IMG, "<answer>Lima</answer>"], ["image_search", "answer"], True, 1),
    ([CALL_IMG, CALL_TXT, "<answer>Lima</answer>"], ["image_search", "text_search", "answer"], True, 2),
    (["Lima"], ["invalid"], False, 0),  # the answer must be tagged
    ([CALL_IMG + " ok", "<answer>Lima</answer>"], ["invalid", "answer"], False, 1),
    (['<tool_call>{"name": "web"}</tool_call>', "<answer>Lima</answer>"], ["invalid", "answer"], False, 1),
    (['<tool_call>{bad json</tool_call>', "<answer>Lima</answer>"], ["invalid", "answer"], False, 1),
    ([CALL_IMG + CALL_IMG, "<answer>Lima</answer>"], ["invalid", "answer"], False, 1),
])
def test_tool_calls_turn_format(turns, kinds, ok, count):
    s = score_turns(turns, "tool_calls")
    assert (s.kinds, s.format_ok, s.search_count) == (kinds, ok, count)


def test_limits_rule_accepts_what_the_limits_allow():
    limits = Limits()
    paper = score_turns([TXT, TXT, ANS], "mmsearch_r1", "paper", limits)
    lim = score_turns([TXT, TXT, ANS], "mmsearch_r1", "limits", limits)
    assert not paper.format_ok and lim.format_ok and lim.search_count == 2
    assert not score_turns([TXT, IMG, ANS], "mmsearch_r1", "limits", limits).format_ok  # image only in turn 1
    assert not score_turns([IMG, IMG, ANS], "mmsearch_r1", "limits", Limits(max_image_search=1,
                                                                          image_search_first_turn_only=False)).format_ok
    assert score_turns([TXT, TXT, TXT, ANS], "mmsearch_r1", "limits",
                       Limits(max_turns=4, max_text_search=3)).format_ok
    with pytest.raises(ValueError, match="unknown format rule"):
        score_turns([ANS], "mmsearch_r1", "strict")
