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

Reads: completions as TRL passes them, `completion_ids`, the dataset columns `answer` and `aliases`, and the
per-rollout environments (their call records get `delivered`: TRL drops a tool result that does not fit in
max_completion_length after the call ran). Writes nothing; logs components through TRL's `log_metric` /
`log_extra` (reward/accuracy, reward/format, reward/search_penalty, search/ratio, search/<tool>_calls, ...).
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
        if not self.reward_functions:
            raise ValueError("reward_functions: give at least one reward function (e.g. [paper])")
        self.judge.validate()
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


def _make(field: str, log: bool) -> Callable[..., Callable[..., list[float]]]:
    def factory(params: RewardParams, protocol: Any, condition: str = "tools",
                tokenizer: Any = None) -> Callable[..., list[float]]:
        scorer = Scorer(params, protocol, condition, tokenizer)

        def reward_fn(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
            if "answer" not in kwargs:
                raise KeyError("reward needs the dataset column 'answer' (and optionally 'aliases') in the train data")
            rows = scorer.score(completions, kwargs["answer"], kwargs.get("aliases"), kwargs.get("question"),
                                completion_ids)
            if log:
                _log(rows, completions, kwargs)
            return [r[field] for r in rows]

        reward_fn.__name__ = f"{field}_reward" if field != "reward" else "paper_reward"
        reward_fn.scorer = scorer  # type: ignore[attr-defined]
        return reward_fn

    return factory


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
    """(reward functions, weights) for `GRPOTrainer(reward_funcs=...)` / `GRPOConfig(reward_weights=...)`."""
    funcs = [resolve(name, params, protocol, condition, tokenizer) for name in params.reward_functions]
    weights = list(params.reward_weights) if params.reward_weights else [1.0] * len(funcs)
    return funcs, weights
