"""The paper's reward (MMSearch-R1, Eq. 1) as TRL reward functions, with every constant in params.

    reward = (1 - a) * acc * penalty + a * format          a = format_weight (paper: 0.1)
    penalty = 1 - search_penalty  if the rollout searched (paper: 0.1), else 1
            = (1 - search_penalty) ** n_calls  with `penalty_per_call`

`acc` is the judged correctness of the final answer (pipeline/judge.py: EM after SQuAD normalisation against the
answer and its aliases, SubEM, F1 or an LLM judge). `format` is 1 when the turn sequence is one the paper allows
(answer; image -> answer; text -> answer; image -> text -> answer; each turn one action in the protocol's format,
within the protocol limits; option `format_sequences: limits` accepts every sequence the limits allow), else 0.
A rollout whose last turn still holds a tool call (TRL leaves the call of the last allowed turn unexecuted) has no
answer: acc = 0, format = 0.

Reads: completions as TRL passes them (message lists: assistant turns with `tool_calls`, `tool` results, ...) and
the dataset columns `answer` and `aliases`. Writes nothing; logs components through TRL's `log_metric` /
`log_extra` (reward/accuracy, reward/format, reward/search_penalty, search/<tool>_calls, search/ratio).
"""
from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from pipeline.config import param
from pipeline.judge import JudgeParams, make_judge

PAPER_SEQUENCES = (
    ("answer",),
    ("image_search", "answer"),
    ("text_search", "answer"),
    ("image_search", "text_search", "answer"),
)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# TRL turns an exception in a tool (e.g. unexpected arguments) into the tool message content str({"error": ...})
_TRL_TOOL_ERROR = re.compile(r"^\{['\"]error['\"]: ")


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
    format_sequences: Literal["paper", "limits"] = param(
        "paper",
        "valid turn sequences for the format score: paper = only answer, image>answer, text>answer, "
        "image>text>answer (each also within the protocol limits); limits = any sequence the protocol limits allow "
        "(with the default limits this adds text>text>answer)",
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
        if not self.reward_functions:
            raise ValueError("reward_functions: give at least one reward function (e.g. [paper])")
        self.judge.validate()
        if self.reward_weights and len(self.reward_weights) != len(self.reward_functions):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {len(self.reward_functions)} "
                             "reward_functions")


@dataclasses.dataclass
class Trajectory:
    """What a completion did, turn by turn, and whether the sequence is a valid one."""

    actions: list[str]  # per assistant turn: answer | image_search | text_search | invalid
    answer: str | None  # the final answer text, None when the rollout gave none
    n_image_search: int
    n_text_search: int
    format_ok: bool
    reason: str  # "" when format_ok, else why not

    @property
    def n_calls(self) -> int:
        return self.n_image_search + self.n_text_search


def _text(content: Any) -> str:
    """The text of a message content: a string, or the text blocks of a content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, Mapping) and b.get("type") == "text")


def lenient_answer(text: str) -> str | None:
    """The last `<answer>..</answer>` in a turn, even when the rest of the turn is malformed."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def analyse(completion: Sequence[Mapping[str, Any]] | str, protocol: Any, condition: str = "tools",
            sequences: str = "paper") -> Trajectory:
    """Turn sequence, final answer and format validity of one completion under `protocol` (its parser, limits and
    `sequence_ok`, the same rules the environment enforced during the rollout); `sequences="paper"` further
    restricts valid sequences to PAPER_SEQUENCES."""
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    completion = list(completion)
    actions = protocol.actions_from_messages(completion)
    kinds = [a.kind for a in actions]
    turns = [m for m in completion if m.get("role") == "assistant"]
    problems: list[str] = []
    answer: str | None = None
    if not turns:
        problems.append("no assistant turn")
    elif completion[-1].get("role") != "assistant":
        problems.append("completion ends with a tool result (the next turn was cut by the length limit)")
    elif turns[-1].get("tool_calls"):
        problems.append(f"turn {len(turns)}: tool call left unexecuted (no answer)")
    elif kinds[-1] == "answer":
        answer = (actions[-1].answer or "").strip()
    else:
        answer = lenient_answer(_text(turns[-1].get("content")))
        problems.append(f"turn {len(turns)}: final turn is {kinds[-1]!r}, not an answer in the protocol's format")
    if not problems and not protocol.sequence_ok(kinds, condition):
        problems.append(f"turn sequence {' > '.join(kinds)} is not allowed by the protocol limits")
    if not problems and sequences == "paper" and tuple(kinds) not in PAPER_SEQUENCES:
        problems.append(f"turn sequence {' > '.join(kinds)} is not one of the paper's valid sequences")
    for m in completion:
        if m.get("role") == "tool" and isinstance(m.get("content"), str) and _TRL_TOOL_ERROR.match(m["content"]):
            problems.append(f"tool call failed: {m['content'][:120]}")
    for t, msg in enumerate(turns, start=1):
        if len(msg.get("tool_calls") or []) > 1:
            problems.append(f"turn {t}: {len(msg['tool_calls'])} tool calls in one turn")
    # searches made: the tool calls of each turn by name (a turn with two calls counts both), else the parsed kind
    by_name = {v: k for k, v in getattr(protocol, "tool_names", {}).items()}
    n_image = n_text = 0
    for msg, kind in zip(turns, kinds):
        names = [((c.get("function") or c).get("name") or "") for c in msg.get("tool_calls") or []]
        found = [by_name.get(n, n) for n in names] if names else [kind]
        n_image += found.count("image_search")
        n_text += found.count("text_search")
    return Trajectory(kinds, answer, n_image, n_text, not problems, "; ".join(problems))


def search_factor(n_calls: int, params: RewardParams) -> float:
    """The multiplier on accuracy: 1 without search, (1 - p) with, or (1 - p) ** n_calls per call."""
    if n_calls <= 0:
        return 1.0
    if params.penalty_per_call:
        return (1.0 - params.search_penalty) ** n_calls
    return 1.0 - params.search_penalty


def paper_reward(acc: float, n_calls: int, format_ok: bool, params: RewardParams) -> float:
    """Eq. 1: (1 - a) * acc * penalty + a * format."""
    a = params.format_weight
    return (1.0 - a) * acc * search_factor(n_calls, params) + a * float(format_ok)


def _aliases(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


class Scorer:
    """Analyses and judges a batch once; the reward functions below read its results."""

    def __init__(self, params: RewardParams, protocol: Any, condition: str = "tools"):
        self.params, self.protocol, self.condition = params, protocol, condition
        self._judge = None

    def accuracy(self, answer: str | None, gold: str, aliases: Iterable[str], question: str = "") -> float:
        if answer is None or not answer.strip():
            return 0.0
        if self._judge is None:
            self._judge = make_judge(self.params.judge)
        verdict = self._judge(answer, gold, list(aliases), question)
        return float(verdict.score) if self.params.judge.method == "f1" else float(bool(verdict.correct))

    def score(self, completions: Sequence[Any], answers: Sequence[str], aliases: Sequence[Any] | None = None,
              questions: Sequence[str] | None = None) -> list[dict]:
        aliases = aliases if aliases is not None else [[]] * len(completions)
        questions = questions if questions is not None else [""] * len(completions)
        rows = []
        for completion, gold, al, q in zip(completions, answers, aliases, questions, strict=True):
            traj = analyse(completion, self.protocol, self.condition, self.params.format_sequences)
            acc = self.accuracy(traj.answer, gold, _aliases(al), str(q or ""))
            rows.append(
                {
                    "trajectory": traj,
                    "accuracy": acc,
                    "format": float(traj.format_ok),
                    "reward": paper_reward(acc, traj.n_calls, traj.format_ok, self.params),
                    "penalty": (1.0 - self.params.format_weight) * acc * (1.0 - search_factor(traj.n_calls, self.params)),
                }
            )
        return rows


def _log(rows: list[dict], kwargs: Mapping[str, Any]) -> None:
    """Components as scalar metrics (averaged per logging step by TRL) and per-completion table columns."""
    log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
    n = max(len(rows), 1)
    if log_metric is not None:
        trajs = [r["trajectory"] for r in rows]
        log_metric("reward/accuracy", sum(r["accuracy"] for r in rows) / n)
        log_metric("reward/format", sum(r["format"] for r in rows) / n)
        log_metric("reward/search_penalty", sum(r["penalty"] for r in rows) / n)
        log_metric("search/image_search_calls", sum(t.n_image_search for t in trajs) / n)
        log_metric("search/text_search_calls", sum(t.n_text_search for t in trajs) / n)
        log_metric("search/ratio", sum(t.n_calls > 0 for t in trajs) / n)
        log_metric("search/no_answer", sum(t.answer is None for t in trajs) / n)
    if log_extra is not None:
        log_extra("answer", [r["trajectory"].answer or "" for r in rows])
        log_extra("actions", [" > ".join(r["trajectory"].actions) for r in rows])
        log_extra("accuracy", [r["accuracy"] for r in rows])
        log_extra("format", [r["format"] for r in rows])


def _make(field: str, log: bool) -> Callable[..., Callable[..., list[float]]]:
    def factory(params: RewardParams, protocol: Any, condition: str = "tools") -> Callable[..., list[float]]:
        scorer = Scorer(params, protocol, condition)

        def reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
            if "answer" not in kwargs:
                raise KeyError("reward needs the dataset column 'answer' (and optionally 'aliases') in the train data")
            rows = scorer.score(completions, kwargs["answer"], kwargs.get("aliases"), kwargs.get("question"))
            if log:
                _log(rows, kwargs)
            return [r[field] for r in rows]

        reward.__name__ = f"{field}_reward" if field != "reward" else "paper_reward"
        reward.scorer = scorer  # type: ignore[attr-defined]
        return reward

    return factory


# name -> factory(params, protocol, condition) returning a TRL reward function
REGISTRY: dict[str, Callable[..., Callable[..., list[float]]]] = {
    "paper": _make("reward", log=True),
    "accuracy": _make("accuracy", log=False),
    "format": _make("format", log=False),
}


def resolve(name: str, params: RewardParams, protocol: Any, condition: str = "tools") -> Callable[..., list[float]]:
    """A reward function by registry name or dotted path ('pkg.mod:fn' or 'pkg.mod.fn')."""
    if name in REGISTRY:
        return REGISTRY[name](params, protocol, condition)
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


def reward_functions(params: RewardParams, protocol: Any, condition: str = "tools") -> tuple[list, list[float]]:
    """(reward functions, weights) for `GRPOTrainer(reward_funcs=...)` / `GRPOConfig(reward_weights=...)`."""
    funcs = [resolve(name, params, protocol, condition) for name in params.reward_functions]
    weights = list(params.reward_weights) if params.reward_weights else [1.0] * len(funcs)
    return funcs, weights
