"""The paper's reward (Eq. 1) on hand-built TRL completions: every value of the paper's table, the per-call option,
unexecuted final tool calls, both protocols, and the logged components."""
import dataclasses
from collections import defaultdict

import pytest

from pipeline.config import ParamsError, build
from pipeline.judge import JudgeParams
from pipeline.rollout.protocols import Limits, get_protocol
from trainer.rewards import REGISTRY, RewardParams, analyse, paper_reward, resolve, reward_functions

GOLD = "Paris"


def call(name, query=""):
    return {"type": "function", "function": {"name": name, "arguments": {"query": query}}}


def turn(text, *calls):
    msg = {"role": "assistant", "content": text}
    if calls:
        msg["tool_calls"] = list(calls)
    return msg


def tool(name, text="Searched results: 1. Paris, capital of France"):
    return {"role": "tool", "name": name, "content": [{"type": "text", "text": text}, {"type": "text", "text": "Q?"}]}


R = "<reason>thinking</reason>"

# (case, completion, expected reward) for the tag protocol, as TRL hands completions to reward functions
TAG_CASES = [
    ("answer, correct", [turn(f"{R}<answer>Paris</answer>")], 1.0),
    ("image -> answer, correct", [turn(R, call("search")), tool("search"), turn(f"{R}<answer>paris</answer>")], 0.91),
    ("text -> answer, correct", [turn(R, call("text_search", "capital of France")), tool("text_search"),
                                 turn(f"{R}<answer>Paris.</answer>")], 0.91),
    ("image -> text -> answer, correct", [turn(R, call("search")), tool("search"),
                                          turn(R, call("text_search", "capital")), tool("text_search"),
                                          turn(f"{R}<answer>The Paris</answer>")], 0.91),
    ("answer, wrong", [turn(f"{R}<answer>Lyon</answer>")], 0.1),
    ("image -> answer, wrong", [turn(R, call("search")), tool("search"), turn(f"{R}<answer>Lyon</answer>")], 0.1),
    ("answer without <reason>, correct", [turn("<answer>Paris</answer>")], 0.9),
    ("text -> image (not allowed after turn 1) -> answer, correct",
     [turn(R, call("text_search", "flag")), tool("text_search"), turn(R, call("search")), tool("search"),
      turn(f"{R}<answer>Paris</answer>")], 0.81),
    ("answer without <reason>, wrong", [turn("<answer>Lyon</answer>")], 0.0),
    ("no answer tag at all", [turn("I think it is Paris")], 0.0),
    ("last turn still holds a tool call (unexecuted)",
     [turn(R, call("search")), tool("search"), turn(R, call("text_search", "a")), tool("text_search"),
      turn(R, call("text_search", "b"))], 0.0),
    ("completion cut after a tool result", [turn(R, call("search")), tool("search")], 0.0),
]


@pytest.fixture(scope="module")
def tag():
    return get_protocol("mmsearch_r1", Limits())


def _reward(protocol, completion, params=None, answer=GOLD, aliases=(), condition="tools"):
    fn = resolve("paper", params or RewardParams(), protocol, condition)
    return fn(prompts=[[]], completions=[completion], completion_ids=[[]], answer=[answer], aliases=[list(aliases)])[0]


@pytest.mark.parametrize("case, completion, expected", TAG_CASES, ids=[c[0] for c in TAG_CASES])
def test_paper_table_tag_protocol(tag, case, completion, expected):
    assert _reward(tag, completion) == pytest.approx(expected)


def test_table_values_are_exactly_the_papers(tag):
    got = sorted({round(_reward(tag, c), 6) for _, c, _ in TAG_CASES})
    assert got == [0.0, 0.1, 0.81, 0.9, 0.91, 1.0]


def test_penalty_per_call(tag):
    per_call = RewardParams(penalty_per_call=True)
    two = [turn(R, call("search")), tool("search"), turn(R, call("text_search", "x")), tool("text_search"),
           turn(f"{R}<answer>Paris</answer>")]
    one = [turn(R, call("search")), tool("search"), turn(f"{R}<answer>Paris</answer>")]
    assert _reward(tag, two, per_call) == pytest.approx(0.9 * 0.9 ** 2 + 0.1)  # 0.829
    assert _reward(tag, one, per_call) == pytest.approx(0.91)
    assert _reward(tag, two) == pytest.approx(0.91)  # once per rollout by default
    # wrong answers are not penalised further, whatever the number of calls
    wrong = [turn(R, call("search")), tool("search"), turn(R, call("text_search", "x")), tool("text_search"),
             turn(f"{R}<answer>Rome</answer>")]
    assert _reward(tag, wrong, per_call) == pytest.approx(0.1)


def test_constants_come_from_params(tag):
    p = RewardParams(format_weight=0.2, search_penalty=0.5)
    one = [turn(R, call("search")), tool("search"), turn(f"{R}<answer>Paris</answer>")]
    assert _reward(tag, one, p) == pytest.approx(0.8 * 0.5 + 0.2)
    assert paper_reward(1.0, 0, True, p) == pytest.approx(1.0)
    assert paper_reward(0.0, 0, False, p) == 0.0


def test_aliases_and_judges(tag):
    c = [turn(f"{R}<answer>City of Light</answer>")]
    assert _reward(tag, c) == pytest.approx(0.1)
    assert _reward(tag, c, aliases=["city of light"]) == pytest.approx(1.0)
    sub = [turn(f"{R}<answer>it is Paris, France</answer>")]
    assert _reward(tag, sub) == pytest.approx(0.1)  # EM (the paper's training reward) is strict
    assert _reward(tag, sub, RewardParams(judge=JudgeParams(method="subem"))) == pytest.approx(1.0)


def test_paper_sequences_or_limits(tag):
    tt = [turn(R, call("text_search", "a")), tool("text_search"), turn(R, call("text_search", "b")),
          tool("text_search"), turn(f"{R}<answer>Paris</answer>")]
    assert _reward(tag, tt) == pytest.approx(0.81)  # not one of the paper's four sequences
    assert _reward(tag, tt, RewardParams(format_sequences="limits")) == pytest.approx(0.91)  # 2 text searches allowed


def test_limits_decide_the_format(tag):
    three_text = [turn(R, call("text_search", "a")), tool("text_search"), turn(R, call("text_search", "b")),
                  tool("text_search"), turn(R, call("text_search", "c")), tool("text_search"),
                  turn(f"{R}<answer>Paris</answer>")]
    traj = analyse(three_text, tag)
    assert not traj.format_ok and traj.n_text_search == 3
    assert _reward(tag, three_text) == pytest.approx(0.81)
    loose = get_protocol("mmsearch_r1", Limits(max_turns=4, max_text_search=3))
    assert analyse(three_text, loose, sequences="limits").format_ok
    assert not analyse(three_text, loose, sequences="paper").format_ok
    assert _reward(loose, three_text, RewardParams(format_sequences="limits")) == pytest.approx(0.91)
    # the paper's sequences still obey the limits: no image search when the limit is 0
    no_img = get_protocol("mmsearch_r1", Limits(max_image_search=0))
    assert _reward(no_img, [turn(R, call("search")), tool("search"), turn(f"{R}<answer>Paris</answer>")]) == pytest.approx(0.81)
    # image search when the condition offers only text search
    img = [turn(R, call("search")), tool("search"), turn(f"{R}<answer>Paris</answer>")]
    assert not analyse(img, tag, "text_only").format_ok
    assert _reward(tag, img, condition="text_only") == pytest.approx(0.81)


def test_tool_calls_protocol_table():
    tc = get_protocol("tool_calls", Limits())
    cases = [
        ([turn("<answer>Paris</answer>")], 1.0),
        ([turn("Paris")], 1.0),  # the tool-calling protocol accepts a bare reply as the answer
        ([turn("", call("image_search")), tool("image_search"), turn("<answer>Paris</answer>")], 0.91),
        ([turn("", call("image_search")), tool("image_search"), turn("", call("text_search", "capital")),
          tool("text_search"), turn("<answer>Paris</answer>")], 0.91),
        ([turn("<answer>Rome</answer>")], 0.1),
        ([turn("", call("text_search", "q")), tool("text_search"), turn("", call("image_search")), tool("image_search"),
          turn("<answer>Paris</answer>")], 0.81),
        ([turn("<answer>Paris</answer> <answer>Paris</answer>")], 1.0),
        ([turn("", call("image_search"), call("text_search", "x")), tool("image_search"), tool("text_search"),
          turn("<answer>Paris</answer>")], 0.81),  # two calls in one turn: format 0
        ([turn("", call("image_search")), tool("image_search"), turn("", call("text_search", "x")),
          tool("text_search"), turn("", call("text_search", "y"))], 0.0),
        # the tool raised (TRL returns its error as the result): the call counts, the format does not
        ([turn("", call("image_search", "flag")),
          {"role": "tool", "name": "image_search", "content": "{'error': \"image_search() got an unexpected keyword argument 'query'\"}"},
          turn("<answer>Paris</answer>")], 0.81),
    ]
    for completion, expected in cases:
        assert _reward(tc, completion) == pytest.approx(expected), completion


def test_components_are_logged(tag):
    metrics, extra = defaultdict(list), {}
    fn = resolve("paper", RewardParams(), tag, "tools")
    comps = [c for _, c, _ in TAG_CASES[:4]] + [TAG_CASES[4][1]]  # 4 correct (3 searched), 1 wrong
    out = fn(prompts=[[]] * 5, completions=comps, completion_ids=[[]] * 5, answer=[GOLD] * 5, aliases=[[]] * 5,
             log_metric=lambda k, v: metrics[k].append(v), log_extra=lambda k, v: extra.__setitem__(k, v))
    assert out == pytest.approx([1.0, 0.91, 0.91, 0.91, 0.1])
    assert metrics["reward/accuracy"] == [pytest.approx(0.8)]
    assert metrics["reward/format"] == [pytest.approx(1.0)]
    assert metrics["reward/search_penalty"] == [pytest.approx(3 * 0.09 / 5)]
    assert metrics["search/image_search_calls"] == [pytest.approx(2 / 5)]
    assert metrics["search/text_search_calls"] == [pytest.approx(2 / 5)]
    assert metrics["search/ratio"] == [pytest.approx(3 / 5)]
    assert extra["answer"] == ["Paris", "paris", "Paris.", "The Paris", "Lyon"]
    assert extra["actions"][3] == "image_search > text_search > answer"


def test_registry_dotted_paths_and_weights(tag):
    assert {"paper", "accuracy", "format"} <= set(REGISTRY)
    funcs, weights = reward_functions(RewardParams(reward_functions=["accuracy", "format", "trainer.rewards:lenient_answer"],
                                                   reward_weights=[1.0, 0.5, 0.0]), tag, "tools")
    assert weights == [1.0, 0.5, 0.0] and funcs[2].__name__ == "lenient_answer"
    c = [turn("<answer>Paris</answer>")]
    assert funcs[0](prompts=[[]], completions=[c], answer=[GOLD], aliases=[[]]) == [1.0]
    assert funcs[1](prompts=[[]], completions=[c], answer=[GOLD], aliases=[[]]) == [0.0]
    with pytest.raises(ValueError, match="unknown reward function 'papr'"):
        resolve("papr", RewardParams(), tag)
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve("trainer.rewards:nope", RewardParams(), tag)
    with pytest.raises(KeyError, match="answer"):
        funcs[0](prompts=[[]], completions=[c])


def test_params_are_checked():
    with pytest.raises(ParamsError, match="format_weight"):
        build(RewardParams, {"format_weight": 1.5})
    with pytest.raises(ParamsError, match="did you mean 'search_penalty'"):
        build(RewardParams, {"search_penalti": 0.2})
    from trainer.config import TrainParams

    # the reward settings are flat in the train section (dvc exp run -S train.search_penalty=0.0), and checked there
    assert build(TrainParams, {"search_penalty": 0.0}, prefix="train.").search_penalty == 0.0
    with pytest.raises(ParamsError, match="train: search_penalty must be in"):
        build(TrainParams, {"search_penalty": 1.5}, prefix="train.")
    with pytest.raises(ParamsError, match="'train.method'; did you mean 'train.judge.method'"):
        build(TrainParams, {"method": "em"}, prefix="train.")
    with pytest.raises(ParamsError, match="weights"):
        build(RewardParams, {"reward_functions": ["paper"], "reward_weights": [1.0, 2.0]})
    with pytest.raises(ParamsError, match="llm"):
        build(RewardParams, {"judge": {"method": "llm"}})
    assert dataclasses.asdict(build(RewardParams, {}))["format_weight"] == 0.1
