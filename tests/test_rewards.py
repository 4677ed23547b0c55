"""The paper's reward (Eq. 1) on hand-built TRL completions: every value of the paper's table, the per-call option,
unexecuted final tool calls, both protocols, turn texts cut from TRL's completion ids, and the logged components.
(The scorer itself is checked against the released scorer in test_score.py.)"""
import dataclasses
from collections import defaultdict

import pytest

from pipeline.config import ParamsError, build
from pipeline.judge import JudgeParams
from pipeline.rollout.protocols import Limits, get_protocol
from pipeline.rollout.score import reward
from trainer.rewards import REGISTRY, RewardParams, completion_turns, resolve, reward_functions

GOLD = "Paris"


def call(name, query=""):
    """A tool call as TRL parses it (the native image_search takes no argument)."""
    return {"type": "function", "function": {"name": name, "arguments": {} if name == "image_search" else {"query": query}}}


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
    assert reward(1.0, 0, True, format_weight=0.2, search_penalty=0.5) == pytest.approx(1.0)
    assert reward(0.0, 2, False, format_weight=0.2, search_penalty=0.5) == 0.0


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
    assert _reward(tag, tt, RewardParams(format_rule="limits")) == pytest.approx(0.91)  # 2 text searches allowed


def test_limits_decide_the_format_only_under_the_limits_rule(tag):
    three_text = [turn(R, call("text_search", "a")), tool("text_search"), turn(R, call("text_search", "b")),
                  tool("text_search"), turn(R, call("text_search", "c")), tool("text_search"),
                  turn(f"{R}<answer>Paris</answer>")]
    traj = tag.score(completion_turns(three_text, tag))
    assert not traj.format_ok and traj.search_count == 3
    assert _reward(tag, three_text) == pytest.approx(0.81)
    loose = get_protocol("mmsearch_r1", Limits(max_turns=4, max_text_search=3))
    assert loose.score(completion_turns(three_text, loose), "limits").format_ok
    assert not loose.score(completion_turns(three_text, loose), "paper").format_ok
    assert _reward(loose, three_text, RewardParams(format_rule="limits")) == pytest.approx(0.91)
    # the paper's rule reads the text only (the rollout enforced the limits); the limits rule checks them
    img = [turn(R, call("search")), tool("search"), turn(f"{R}<answer>Paris</answer>")]
    no_img = get_protocol("mmsearch_r1", Limits(max_image_search=0))
    assert _reward(no_img, img) == pytest.approx(0.91)
    assert _reward(no_img, img, RewardParams(format_rule="limits")) == pytest.approx(0.81)
    assert _reward(tag, img, condition="text_only") == pytest.approx(0.91)
    assert _reward(tag, img, RewardParams(format_rule="limits"), condition="text_only") == pytest.approx(0.81)


def test_tool_calls_protocol_table():
    tc = get_protocol("tool_calls", Limits())
    cases = [
        ([turn("<answer>Paris</answer>")], 1.0),
        ([turn("Paris")], 0.0),  # the answer must be tagged, as in the tag protocol
        ([turn("", call("image_search")), tool("image_search"), turn("<answer>Paris</answer>")], 0.91),
        ([turn("", call("image_search")), tool("image_search"), turn("", call("text_search", "capital")),
          tool("text_search"), turn("<answer>Paris</answer>")], 0.91),
        ([turn("<answer>Rome</answer>")], 0.1),
        ([turn("", call("text_search", "q")), tool("text_search"), turn("", call("image_search")), tool("image_search"),
          turn("<answer>Paris</answer>")], 0.81),
        ([turn("<answer>Paris</answer> <answer>Paris</answer>")], 0.9),  # two answer tags: format 0
        ([turn("", call("image_search"), call("text_search", "x")), tool("image_search"), tool("text_search"),
          turn("<answer>Paris</answer>")], 0.81),  # two calls in one turn: format 0
        ([turn("", call("image_search")), tool("image_search"), turn("", call("text_search", "x")),
          tool("text_search"), turn("", call("text_search", "y"))], 0.0),
        # an argument the tool does not take (TRL returns its error as the result): a search, but not well formed
        ([turn("", {"type": "function", "function": {"name": "image_search", "arguments": {"query": "flag"}}}),
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
    funcs, weights = reward_functions(RewardParams(reward_functions=["accuracy", "format", "trainer.rewards:turns_from_ids"],
                                                   reward_weights=[1.0, 0.5, 0.0]), tag, "tools")
    assert weights == [1.0, 0.5, 0.0] and funcs[2].__name__ == "turns_from_ids"
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


def test_turns_come_from_the_completion_ids_when_they_split(tag, tiny_text_model_path):
    """The scorer reads what the model wrote: cut out of TRL's completion ids at the spliced tool turns. The parsed
    messages lose text after a tool tag; the ids keep it, so the format is judged on the real turn."""
    from transformers import AutoTokenizer

    tok = tag.prepare_tokenizer(AutoTokenizer.from_pretrained(tiny_text_model_path))
    t1, t2 = "<reason>r</reason><search><img></search> extra words", f"{R}<answer>Paris</answer>"
    completion = [turn("<reason>r</reason> extra words", call("search")), tool("search"), turn(t2)]
    suffix = tag.render(tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": t1},
                              completion[1]], add_generation_prompt=True)
    suffix = suffix[suffix.index(t1) + len(t1):]
    ids = tok(t1 + suffix + t2 + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert completion_turns(completion, tag, ids, tok) == [t1, t2]
    fn = resolve("paper", RewardParams(), tag, "tools", tok)
    got = fn(prompts=[[]], completions=[completion], completion_ids=[ids], answer=[GOLD], aliases=[[]])[0]
    assert got == pytest.approx(0.81)  # text after the search tag: a search, not a valid image-search turn
    # rendered back from the messages the tag would sit at the end: the same completion would look valid
    assert _reward(tag, completion) == pytest.approx(0.91)
    # ids that do not split into one segment per assistant message fall back to the messages
    assert completion_turns(completion, tag, ids[:5], tok) == tag.turns_from_messages(completion)


# --- the efficiency switch (train.efficiency): hand-built groups, values from the definitions in trainer/rewards.py ---
C0 = [turn(f"{R}<answer>Paris</answer>")]                                   # correct, no search
C1 = TAG_CASES[1][1]                                                         # correct, 1 search (image)
C2 = TAG_CASES[3][1]                                                         # correct, 2 searches (image, text)
W0 = TAG_CASES[4][1]                                                         # wrong, no search
W1 = TAG_CASES[5][1]                                                         # wrong, 1 search


def _components(protocol, completions, ids, **params):
    """The three component values and their weights for one batch, with what they logged."""
    metrics = defaultdict(list)
    funcs, weights = reward_functions(RewardParams(**params), protocol, "tools")
    n = len(completions)
    kw = dict(prompts=[[]] * n, completions=completions, completion_ids=[[]] * n, answer=[GOLD] * n,
              aliases=[[]] * n, id=ids, log_metric=lambda k, v: metrics[k].append(v))
    return [f(**kw) for f in funcs], weights, funcs, metrics


def test_efficiency_paper_is_the_default_single_reward(tag):
    funcs, weights = reward_functions(RewardParams(), tag, "tools")
    assert [f.__name__ for f in funcs] == ["paper_reward"] and weights == [1.0]


def test_efficiency_gdpo_components_sum_to_eq1(tag):
    group = [C0, C1, C2, W0]
    (acc, fmt, eff), weights, funcs, metrics = _components(tag, group, ["a"] * 4, efficiency="gdpo")
    assert [f.__name__ for f in funcs] == ["accuracy_reward", "format_reward", "efficiency_reward"]
    assert weights == pytest.approx([0.9, 0.1, 0.09])                        # (1 - a), a, (1 - a) p
    assert acc == [1.0, 1.0, 1.0, 0.0] and fmt == [1.0] * 4
    assert eff == [0.0, -1.0, -1.0, 0.0]                                     # once per searching correct rollout
    total = [sum(w * v for w, v in zip(weights, vals)) for vals in zip(acc, fmt, eff)]
    assert total == pytest.approx([1.0, 0.91, 0.91, 0.1])                    # the paper's table values
    assert funcs[0].scorer is funcs[2].scorer                                # one scorer: the batch is judged once
    assert metrics["reward/efficiency"] == [pytest.approx(-0.5)]
    assert metrics["reward/accuracy"] == [pytest.approx(0.75)]               # logged once, by the accuracy component
    # per call: cost (1 - 0.9 ** 2) / 0.1 = 1.9 for two calls, so 0.9 + 0.1 - 0.09 * 1.9 = 0.829 = 0.9 * 0.81 + 0.1
    (acc, fmt, eff), weights, _, _ = _components(tag, group, ["a"] * 4, efficiency="gdpo", penalty_per_call=True)
    assert eff == pytest.approx([0.0, -1.0, -1.9, 0.0])
    assert sum(w * v for w, v in zip(weights, (acc[2], fmt[2], eff[2]))) == pytest.approx(0.829)


def test_efficiency_weight_sets_the_component_weight_and_is_checked(tag):
    """efficiency_weight replaces (1 - a) p for the efficiency component only; at or above accuracy's weight a searched
    right answer would score no better than a wrong direct one under gdpo, so it is refused with the bound named."""
    _, weights, _, _ = _components(tag, [C0, C1, C2, W0], ["a"] * 4, efficiency="gdpo", efficiency_weight=0.45)
    assert weights == pytest.approx([0.9, 0.1, 0.45])
    _, weights, _, _ = _components(tag, [C0, C1, C2, W0], ["a"] * 4, efficiency="among_correct", efficiency_weight=0.0)
    assert weights == pytest.approx([0.9, 0.1, 0.0])
    for bad in (0.9, -0.1):
        with pytest.raises(ValueError, match=r"efficiency_weight must be in \[0, 1 - format_weight = 0.9\)"):
            RewardParams(efficiency="gdpo", efficiency_weight=bad).validate()
    with pytest.raises(ValueError, match="efficiency_weight weighs the efficiency component"):
        RewardParams(efficiency_weight=0.3).validate()                   # paper: nothing to weigh


def test_efficiency_among_correct_on_groups(tag):
    # group a: three correct (costs 0, 1, 1; mean 2/3) and one wrong; b: no correct; c: a single correct rollout
    batch = [C0, C1, C2, W1, W0, W1, W0, W1, W0, C1, W1, W0]
    ids = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    (acc, fmt, eff), weights, _, metrics = _components(tag, batch, ids, efficiency="among_correct")
    assert eff == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0] + [0.0] * 4 + [0.0] * 4)
    assert metrics["reward/efficiency"] == [pytest.approx(0.0)]              # sums to 0 within every group
    total = [sum(w * v for w, v in zip(weights, vals)) for vals in zip(acc, fmt, eff)]
    assert total[:4] == pytest.approx([0.9 + 0.1 + 0.06, 0.9 + 0.1 - 0.03, 0.9 + 0.1 - 0.03, 0.1])
    assert total[9] == pytest.approx(1.0)                                    # the lone correct one: no penalty
    # groups are the item ids, not positions: the same rollouts shuffled give the same values per rollout
    order = [11, 3, 0, 7, 9, 1, 4, 2, 10, 5, 8, 6]
    (_, _, eff2), _, _, _ = _components(tag, [batch[i] for i in order], [ids[i] for i in order],
                                        efficiency="among_correct")
    assert eff2 == pytest.approx([eff[i] for i in order])
    # per call: costs 0, 1, 1.9 (mean 2.9 / 3)
    (_, _, eff3), _, _, _ = _components(tag, batch[:4], ids[:4], efficiency="among_correct", penalty_per_call=True)
    assert eff3 == pytest.approx([2.9 / 3, 2.9 / 3 - 1, 2.9 / 3 - 1.9, 0.0])


def test_efficiency_switch_is_checked(tag):
    with pytest.raises(ParamsError, match=r"efficiency: 'gdp' is not one of \['paper', 'gdpo', 'among_correct'\]"):
        build(RewardParams, {"efficiency": "gdp"})
    with pytest.raises(ParamsError, match="efficiency=gdpo splits the 'paper' reward function"):
        build(RewardParams, {"efficiency": "gdpo", "reward_functions": ["accuracy"]})
    # other reward functions stay next to the components; the paper entry's weight is spread over them
    funcs, weights = reward_functions(RewardParams(efficiency="gdpo", reward_functions=["paper", "format"],
                                                   reward_weights=[2.0, 0.5]), tag)
    assert [f.__name__ for f in funcs] == ["accuracy_reward", "format_reward", "efficiency_reward", "format_reward"]
    assert weights == pytest.approx([1.8, 0.2, 0.18, 0.5])
