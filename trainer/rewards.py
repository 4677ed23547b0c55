"""The paper's reward (MMSearch-R1, Eq. 1) as TRL reward functions, on the one scorer (`pipeline.rollout.score`).

    reward = (1 - a) * score + a * format          a = format_weight (paper: 0.1)
    score  = acc x (1 - search_penalty) when the answer is correct and the trajectory searched (paper: 0.1),
             acc x (1 - search_penalty) ** search_count with `penalty_per_call`; otherwise acc

`acc` is the judged correctness of the scorer's answer (pipeline/judge.py: the paper's EM against the answer and its
aliases, SubEM, F1 or an LLM judge); `format` and the search count are the scorer's, under `format_rule` (paper: the
released scorer's four sequences; limits: any sequence the protocol limits allow). With the defaults every value
equals the paper's released `compute_score` on the same turns.

The scorer reads the model's own turn texts. From TRL they are cut out of `completion_ids` (the exact tokens the
model wrote, special tokens removed, as the paper decodes them); when the ids do not split into one segment per
assistant message, the parsed messages are rendered back (`protocol.turn_text`).

The efficiency term is a switch, `efficiency` (see `EFFICIENCY`): `paper` is Eq. 1 above as one reward function;
`gdpo` and `among_correct` replace the `paper` entry of `reward_functions` by three components, each its own TRL reward
function (logged by TRL as rewards/<name>/mean): accuracy_reward (acc), format_reward (format) and efficiency_reward,
weighted (1 - a), a and (1 - a) x search_penalty (or `efficiency_weight`). With c = search_cost(n) (1 when the
rollout searched; with `penalty_per_call` (1 - (1 - p) ** n) / p, so that 1 - p x c = (1 - p) ** n):
  gdpo           efficiency = -acc x c for a correct answer (acc > 0.99, the scorer's rule), else 0; the weighted sum
                 is exactly Eq. 1, but TRL aggregates with multi_objective_aggregation="normalize_then_sum" (GDPO:
                 each component normalised within its group before the weighted sum), so the penalty keeps its own
                 unit-variance signal instead of being swamped by the accuracy differences of the group.
  among_correct  efficiency = mean(c over the correct rollouts of the group) - c for a correct rollout, 0 for an
                 incorrect one (Metis/HDPO: efficiency is compared among correct answers only). A group is the
                 rollouts of one item (dataset column `id`) within a reward call; a group with no or one correct
                 rollout gets 0 everywhere. The term sums to 0 over a group, so it never moves correct answers as a
                 whole against incorrect ones; TRL's default sum_then_normalize aggregation.

Reads: completions as TRL passes them, `completion_ids`, the dataset columns `answer` and `aliases`, and the
per-rollout environments (their call records get `delivered`: TRL drops a tool result that does not fit in
max_completion_length after the call ran). Writes nothing; logs components through TRL's `log_metric` /
`log_extra` (reward/accuracy, reward/format, reward/search_penalty, reward/efficiency, search/ratio,
search/<tool>_calls, ...).
"""
from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from pipeline.config import param
from pipeline.judge import JudgeParams, make_judge
from pipeline.rollout.environment import mark_delivered
from pipeline.rollout.score import IMAGE_SEARCH, RULES, TEXT_SEARCH, TrajectoryScore, reward

# train.efficiency -> the GRPOConfig.multi_objective_aggregation it trains with (None: TRL's default)
EFFICIENCY: dict[str, str | None] = {"paper": None, "gdpo": "normalize_then_sum", "among_correct": None}
CORRECT = 0.99  # the scorer's rule (pipeline/rollout/score.py reward): the penalty only touches acc > 0.99

# the tool turn TRL splices in after a model turn: a user turn, then the next assistant header
_TOOL_TURN = re.compile(r"(?:<\|im_end\|>)?\s*<\|im_start\|>user\n.*?<\|im_end\|>\s*<\|im_start\|>assistant\n", re.S)


@dataclasses.dataclass
class RewardParams:
    """Which reward functions, and the constants of the paper's Eq. 1. Its fields sit directly in the `train:` section
    (`TrainParams` extends it), flat like TRL's GRPOConfig: `dvc exp run -S train.search_penalty=0.0`."""

    reward_functions: list[str] = param(
        ["paper"],
        "reward functions summed by GRPO: names from trainer.rewards.REGISTRY (paper = Eq. 1; accuracy; format) or "
        "dotted paths 'package.module:function' to a function with TRL's signature f(prompts, completions, "
        "completion_ids, **kwargs)",
    )
    reward_weights: list[float] = param([], "one weight per reward function (empty = all 1.0)")
    format_weight: float = param(0.1, "a in Eq. 1: weight of the format score (paper: 0.1)")
    search_penalty: float = param(
        0.1, "penalty on the accuracy of a correct answer that used search: acc x (1 - search_penalty) (paper: 0.1)"
    )
    penalty_per_call: bool = param(
        False, "apply the search penalty once per tool call, acc x (1 - search_penalty) ** n_calls, instead of once"
    )
    efficiency: Literal["paper", "gdpo", "among_correct"] = param(
        "paper",
        "how search efficiency enters the reward: paper = Eq. 1's fixed penalty (one reward function); gdpo = "
        "accuracy, format and search-penalty components normalised each on its own (TRL multi_objective_aggregation"
        "=normalize_then_sum); among_correct = an efficiency bonus relative to the group's correct rollouts only "
        "(Metis/HDPO). gdpo and among_correct replace the 'paper' entry of reward_functions by the three components "
        "(trainer/rewards.py)",
    )
    efficiency_weight: float | None = param(
        None, "weight of the efficiency component under efficiency gdpo or among_correct (null = (1 - a) x "
        "search_penalty, so that the raw weighted sum is Eq. 1). Under gdpo every component is normalised to unit "
        "variance first, so null weighs the penalty at (1 - a) p / (1 - a) = 1/10 of accuracy: a correct direct "
        "answer among searched ones gets about a sixth of the paper's advantage (bench/RESULTS.md, round 5); a larger "
        "weight (below accuracy's 1 - a, or the penalty outweighs being right) strengthens it",
    )
    format_rule: Literal["paper", "limits"] = param(
        "paper",
        "the scorer's format rule (pipeline/rollout/score.py): paper = the released scorer (answer, image>answer, "
        "text>answer, image>text>answer, each turn in its exact format); limits = any searches-then-answer sequence "
        "the protocol limits allow (with the default limits this adds text>text>answer)",
    )
    judge: JudgeParams = param(
        factory=JudgeParams,
        help="answer matching (pipeline/judge.py): method em (the paper's training reward), subem, f1 (acc = token "
        "F1) or llm (OpenAI-compatible judge; needs judge.llm.base_url and judge.llm.model)",
    )

    def validate(self) -> None:
        if not 0.0 <= self.format_weight <= 1.0:
            raise ValueError(f"format_weight must be in [0, 1], got {self.format_weight}")
        if not 0.0 <= self.search_penalty <= 1.0:
            raise ValueError(f"search_penalty must be in [0, 1], got {self.search_penalty}")
        if self.format_rule not in RULES:
            raise ValueError(f"format_rule must be one of {RULES}, got {self.format_rule!r}")
        if self.efficiency_weight is not None and not 0.0 <= self.efficiency_weight < 1.0 - self.format_weight:
            raise ValueError(f"efficiency_weight must be in [0, 1 - format_weight = {1.0 - self.format_weight:g}) "
                             f"(at or above accuracy's weight a searched right answer scores no better than a wrong "
                             f"direct one), or null for (1 - a) x search_penalty; got {self.efficiency_weight}")
        if self.efficiency_weight is not None and self.efficiency == "paper":
            raise ValueError("efficiency_weight weighs the efficiency component of efficiency gdpo or among_correct; "
                             "with efficiency: paper the penalty is search_penalty (set efficiency, or leave "
                             "efficiency_weight null)")
        if not self.reward_functions:
            raise ValueError("reward_functions: give at least one reward function (e.g. [paper])")
        self.judge.validate()
        if self.efficiency not in EFFICIENCY:
            raise ValueError(f"efficiency must be one of {sorted(EFFICIENCY)}, got {self.efficiency!r}")
        if self.efficiency != "paper" and "paper" not in self.reward_functions:
            raise ValueError(f"efficiency={self.efficiency} splits the 'paper' reward function into components, but "
                             "reward_functions has no 'paper' entry; add it or set efficiency: paper")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_functions):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {len(self.reward_functions)} "
                             "reward_functions")


def turns_from_ids(ids: Sequence[int], tokenizer: Any) -> list[str]:
    """The model's turn texts in a TRL completion's token ids: split at the spliced tool turns, special tokens
    removed (the paper decodes each turn with `skip_special_tokens=True`)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    specials = sorted(set(getattr(tokenizer, "all_special_tokens", []) or []), key=len, reverse=True)
    turns = []
    for part in _TOOL_TURN.split(text):
        for tok in specials:
            part = part.replace(tok, "")
        turns.append(part)
    return turns


def completion_turns(completion: Sequence[Mapping[str, Any]] | str, protocol: Any, ids: Sequence[int] | None = None,
                     tokenizer: Any = None) -> list[str]:
    """Turn texts of one completion: from its ids when they split into one segment per assistant message, else
    the messages rendered back."""
    if isinstance(completion, str):
        return [completion]
    messages = protocol.turns_from_messages(completion)
    if ids is not None and len(ids) and tokenizer is not None:
        turns = turns_from_ids(ids, tokenizer)
        if len(turns) == len(messages) or (len(turns) == len(messages) + 1 and not turns[-1].strip()):
            return turns[: len(messages)]
    return messages


def _aliases(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


class Scorer:
    """Scores and judges a batch once; the reward functions below read its results."""

    def __init__(self, params: RewardParams, protocol: Any, condition: str = "tools", tokenizer: Any = None):
        self.params, self.protocol, self.condition, self.tokenizer = params, protocol, condition, tokenizer
        self._judge = None
        self._last: tuple[str, list[dict]] | None = None  # components of one batch score it once

    def accuracy(self, answer: str | None, gold: str, aliases: Iterable[str], question: str = "") -> float:
        """1/0 (the judge's verdict; F1 gives its score) for the scorer's answer; no answer scores 0."""
        if answer is None:
            return 0.0
        if self._judge is None:
            self._judge = make_judge(self.params.judge)
        verdict = self._judge(answer, gold, list(aliases), question)
        return float(verdict.score) if self.params.judge.method == "f1" else float(bool(verdict.correct))

    def score(self, completions: Sequence[Any], answers: Sequence[str], aliases: Sequence[Any] | None = None,
              questions: Sequence[str] | None = None, completion_ids: Sequence[Any] | None = None) -> list[dict]:
        """One row per completion (trajectory, turns, accuracy, format, reward, penalty); the last batch is kept,
        so the component reward functions of one TRL call judge it once."""
        key = repr((completions, answers, aliases, questions, completion_ids))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        rows = self._score(completions, answers, aliases, questions, completion_ids)
        self._last = (key, rows)
        return rows

    def _score(self, completions: Sequence[Any], answers: Sequence[str], aliases: Sequence[Any] | None = None,
               questions: Sequence[str] | None = None, completion_ids: Sequence[Any] | None = None) -> list[dict]:
        n = len(completions)
        aliases = aliases if aliases is not None else [[]] * n
        questions = questions if questions is not None else [""] * n
        ids = completion_ids if completion_ids is not None else [None] * n
        p = self.params
        rows = []
        for completion, gold, al, q, cids in zip(completions, answers, aliases, questions, ids, strict=True):
            turns = completion_turns(completion, self.protocol, cids, self.tokenizer)
            traj = self.protocol.score(turns, p.format_rule, self.condition)
            acc = self.accuracy(traj.answer, gold, _aliases(al), str(q or ""))
            value = reward(acc, traj.search_count, traj.format_ok, format_weight=p.format_weight,
                           search_penalty=p.search_penalty, per_call=p.penalty_per_call)
            unpenalised = reward(acc, 0, traj.format_ok, format_weight=p.format_weight)
            rows.append({"trajectory": traj, "turns": turns, "accuracy": acc, "format": float(traj.format_ok),
                         "reward": value, "penalty": unpenalised - value})
        return rows


def _log(rows: list[dict], completions: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Components as scalar metrics (averaged per logging step by TRL) and per-completion table columns; marks
    which environment calls reached their completion."""
    log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
    envs = kwargs.get("environments") or [None] * len(rows)
    records = [mark_delivered(env, c) if not isinstance(c, str) else [] for env, c in zip(envs, completions)]
    n = max(len(rows), 1)
    trajs: list[TrajectoryScore] = [r["trajectory"] for r in rows]
    if log_metric is not None:
        log_metric("reward/accuracy", sum(r["accuracy"] for r in rows) / n)
        log_metric("reward/format", sum(r["format"] for r in rows) / n)
        log_metric("reward/search_penalty", sum(r["penalty"] for r in rows) / n)
        log_metric("search/ratio", sum(t.search_count > 0 for t in trajs) / n)
        log_metric("search/count", sum(t.search_count for t in trajs) / n)
        log_metric("search/no_answer", sum(t.answer is None for t in trajs) / n)
        if any(env is not None for env in envs):
            for tool in (IMAGE_SEARCH, TEXT_SEARCH):
                log_metric(f"search/{tool}_calls", sum(
                    sum(1 for c in rec if c["tool"] == tool and not c["refused"] and c.get("delivered")) for rec in records) / n)
            log_metric("search/dropped_results", sum(sum(not c.get("delivered") for c in rec) for rec in records) / n)
        else:
            for tool in (IMAGE_SEARCH, TEXT_SEARCH):
                log_metric(f"search/{tool}_calls", sum(t.kinds[:-1].count(tool) for t in trajs) / n)
    if log_extra is not None:
        log_extra("answer", [t.answer or "" for t in trajs])
        log_extra("actions", [" > ".join(t.kinds) for t in trajs])
        log_extra("accuracy", [r["accuracy"] for r in rows])
        log_extra("format", [r["format"] for r in rows])


def _scored(scorer: Scorer, completions: Sequence[Any], completion_ids: Any, kwargs: Mapping[str, Any],
            log: bool) -> list[dict]:
    """The scorer's rows for one TRL reward call (logged when `log`); the dataset must carry `answer`."""
    if "answer" not in kwargs:
        raise KeyError("reward needs the dataset column 'answer' (and optionally 'aliases') in the train data")
    rows = scorer.score(completions, kwargs["answer"], kwargs.get("aliases"), kwargs.get("question"), completion_ids)
    if log:
        _log(rows, completions, kwargs)
    return rows


def _make(field: str, log: bool) -> Callable[..., Callable[..., list[float]]]:
    def factory(params: RewardParams, protocol: Any, condition: str = "tools",
                tokenizer: Any = None) -> Callable[..., list[float]]:
        scorer = Scorer(params, protocol, condition, tokenizer)

        def reward_fn(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
            return [r[field] for r in _scored(scorer, completions, completion_ids, kwargs, log)]

        reward_fn.__name__ = f"{field}_reward" if field != "reward" else "paper_reward"
        reward_fn.scorer = scorer  # type: ignore[attr-defined]
        return reward_fn

    return factory


def search_cost(search_count: int, penalty: float, per_call: bool = False) -> float:
    """The searches Eq. 1 charges for, in units of the penalty p: 1 when the rollout searched (0 when not); with
    `per_call`, (1 - (1 - p) ** n) / p (n when p = 0), so that 1 - p x cost is always the paper's `search_factor`."""
    if search_count <= 0:
        return 0.0
    if not per_call:
        return 1.0
    return float(search_count) if penalty == 0 else (1.0 - (1.0 - penalty) ** search_count) / penalty


def gdpo_efficiency(rows: Sequence[Mapping[str, Any]], params: RewardParams) -> list[float]:
    """-acc x search_cost for a correct rollout (acc > 0.99), 0 otherwise: Eq. 1's penalty as its own component."""
    p = params
    return [-r["accuracy"] * search_cost(r["trajectory"].search_count, p.search_penalty, p.penalty_per_call)
            if r["accuracy"] > CORRECT else 0.0 for r in rows]


def among_correct_efficiency(rows: Sequence[Mapping[str, Any]], groups: Sequence[Any], params: RewardParams) -> list[float]:
    """mean(search_cost over the correct rollouts of the group) - search_cost for a correct rollout, 0 for an
    incorrect one; `groups` holds each rollout's group key (the item id)."""
    p = params
    costs = [search_cost(r["trajectory"].search_count, p.search_penalty, p.penalty_per_call) for r in rows]
    correct = [r["accuracy"] > CORRECT for r in rows]
    members: dict[Any, list[float]] = {}
    for g, c, ok in zip(groups, costs, correct, strict=True):
        if ok:
            members.setdefault(g, []).append(c)
    return [sum(members[g]) / len(members[g]) - c if ok else 0.0 for g, c, ok in zip(groups, costs, correct)]


def _component(name: str, scorer: Scorer, log: bool) -> Callable[..., list[float]]:
    """One component (accuracy, format or efficiency) of the `efficiency` switch, on a scorer shared by all three."""

    def reward_fn(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        rows = _scored(scorer, completions, completion_ids, kwargs, log)
        if name != "efficiency":
            return [r[name] for r in rows]
        if scorer.params.efficiency == "gdpo":
            values = gdpo_efficiency(rows, scorer.params)
        else:
            if "id" not in kwargs:
                raise KeyError("efficiency=among_correct groups rollouts by the dataset column 'id'")
            values = among_correct_efficiency(rows, kwargs["id"], scorer.params)
        if kwargs.get("log_metric") is not None:
            kwargs["log_metric"]("reward/efficiency", sum(values) / max(len(values), 1))
        return values

    reward_fn.__name__ = f"{name}_reward"
    reward_fn.scorer = scorer  # type: ignore[attr-defined]
    return reward_fn


def efficiency_components(params: RewardParams, protocol: Any, condition: str = "tools",
                          tokenizer: Any = None) -> tuple[list, list[float]]:
    """(accuracy, format, efficiency reward functions, their weights (1 - a, a, (1 - a) x p, or efficiency_weight
    when set)) for `efficiency` gdpo or among_correct; with the default weights their raw weighted sum under gdpo is
    Eq. 1."""
    scorer = Scorer(params, protocol, condition, tokenizer)
    a, p = params.format_weight, params.search_penalty
    funcs = [_component("accuracy", scorer, log=True), _component("format", scorer, log=False),
             _component("efficiency", scorer, log=False)]
    w = (1.0 - a) * p if params.efficiency_weight is None else params.efficiency_weight
    return funcs, [1.0 - a, a, w]


# name -> factory(params, protocol, condition, tokenizer) returning a TRL reward function
REGISTRY: dict[str, Callable[..., Callable[..., list[float]]]] = {
    "paper": _make("reward", log=True),
    "accuracy": _make("accuracy", log=False),
    "format": _make("format", log=False),
}


def resolve(name: str, params: RewardParams, protocol: Any, condition: str = "tools",
            tokenizer: Any = None) -> Callable[..., list[float]]:
    """A reward function by registry name or dotted path ('pkg.mod:fn' or 'pkg.mod.fn')."""
    if name in REGISTRY:
        return REGISTRY[name](params, protocol, condition, tokenizer)
    if "." not in name and ":" not in name:
        raise ValueError(f"unknown reward function {name!r}; use one of {sorted(REGISTRY)} or a dotted path 'pkg.mod:fn'")
    module, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"reward function {name!r} cannot be imported: {exc}") from None
    if not callable(fn):
        raise ValueError(f"reward function {name!r} is not callable")
    return fn


def reward_functions(params: RewardParams, protocol: Any, condition: str = "tools",
                     tokenizer: Any = None) -> tuple[list, list[float]]:
    """(reward functions, weights) for `GRPOTrainer(reward_funcs=...)` / `GRPOConfig(reward_weights=...)`; under
    `efficiency` gdpo or among_correct the 'paper' entry becomes its three components, its weight spread over them."""
    given = list(params.reward_weights) if params.reward_weights else [1.0] * len(params.reward_functions)
    funcs, weights = [], []
    for name, weight in zip(params.reward_functions, given, strict=True):
        if name == "paper" and params.efficiency != "paper":
            parts, part_weights = efficiency_components(params, protocol, condition, tokenizer)
            funcs += parts
            weights += [weight * w for w in part_weights]
        else:
            funcs.append(resolve(name, params, protocol, condition, tokenizer))
            weights.append(weight)
    return funcs, weights
