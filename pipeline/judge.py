"""Answer judging: SQuAD-normalised exact match against the answer and its aliases (the paper's training reward),
SubEM, token F1, and an optional LLM judge over an OpenAI-compatible chat endpoint.

The LLM judge follows the paper's evaluation: the judge model sees the question, the gold answer(s) and the
prediction, and replies with a Yes/No verdict and a reason. It is called over HTTP (`{base_url}/chat/completions`)
with a timeout and retries; the API key is read from the environment variable named in the params and never
appears in messages, logs or results. Reads/writes nothing else.
"""
from __future__ import annotations

import collections
import json
import os
import re
import string
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from pipeline.config import param

METHODS = ("em", "subem", "f1", "llm")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and the articles a/an/the, collapse whitespace."""
    s = str(s or "").lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(golds: str | Iterable[str]) -> list[str]:
    if isinstance(golds, str):
        golds = [golds]
    return [g for g in (str(x) for x in golds if x is not None) if normalize_answer(g)]


def _strings(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [g for g in golds if isinstance(g, str)]


def exact_match(pred: str, golds: str | Iterable[str]) -> bool:
    """The paper's EM: the normalised prediction equals one normalised gold answer (non-string golds are skipped)."""
    p = normalize_answer(pred)
    return any(p == normalize_answer(g) for g in _strings(golds))


def sub_em(pred: str, golds: str | Iterable[str]) -> bool:
    """The paper's SubEM: a normalised gold answer is a substring of the normalised prediction ("india" counts in
    "indian", as in the released scorer)."""
    p = normalize_answer(pred)
    return any(normalize_answer(g) in p for g in _strings(golds))


def f1(pred: str, golds: str | Iterable[str]) -> float:
    """Best SQuAD token F1 of the prediction against the golds (0.0 when there is nothing to compare)."""
    p_tokens = normalize_answer(pred).split()
    best = 0.0
    for g in _golds(golds):
        g_tokens = normalize_answer(g).split()
        common = collections.Counter(p_tokens) & collections.Counter(g_tokens)
        same = sum(common.values())
        if same == 0:
            continue
        precision, recall = same / len(p_tokens), same / len(g_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


@dataclass
class Verdict:
    correct: bool
    score: float
    method: str
    reason: str = ""


@dataclass
class LLMJudgeParams:
    base_url: str = param("", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    model: str = param("", help="judge model name sent to the endpoint (the paper used GPT-4o)")
    api_key_env: str = param("", help="name of the environment variable holding the API key ('' = no key, e.g. a local server)")
    timeout_s: float = param(30.0, help="HTTP timeout per request in seconds")
    max_retries: int = param(3, help="retries after a failed request, a 5xx/429 reply or an unparseable verdict")
    backoff_s: float = param(1.0, help="first retry delay in seconds (doubles each retry)")
    max_tokens: int = param(256, help="max tokens of the judge's reply")

    def validate(self) -> None:
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0:
            raise ValueError("timeout_s must be > 0, max_retries and backoff_s >= 0")


@dataclass
class JudgeParams:
    method: str = param("em", help="em (the paper's reward) | subem | f1 | llm")
    f1_threshold: float = param(0.5, help="method f1: a prediction counts as correct at F1 >= this")
    llm: LLMJudgeParams = param(factory=LLMJudgeParams, help="method llm: the judge endpoint")

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {METHODS}")
        if self.method == "llm" and not (self.llm.base_url and self.llm.model):
            raise ValueError("method llm needs llm.base_url and llm.model")


# The paper's judging rules, in our words.
JUDGE_SYSTEM = (
    "You check whether a model's answer to a visual question is correct, given the question and the ground-truth "
    "answer. Rules: judge the question, the ground truth and the answer together. A more specific form of the "
    "ground truth is correct. Extra details are fine as long as none of them is wrong. An answer that contradicts, "
    "changes or leaves out an essential part of the ground truth is wrong. Numbers must be right, whatever the "
    "units. For names, first and last name must be right; a correct extra middle name is fine. For yes/no "
    "questions the answer must say the same yes or no. When several ground-truth answers are given, any one of them "
    "counts. Any incorrect information makes the answer wrong.\n"
    "Reply in exactly this format:\nJudgement: Yes or No\nReason: one sentence"
)


def judge_prompt(question: str, golds: Sequence[str], pred: str) -> str:
    gold = golds[0] if len(golds) == 1 else " | ".join(golds)
    return f"Question: {question}\nGround-truth answer: {gold}\nModel answer: {pred}"


_VERDICT = re.compile(r"(?:judge?ment|verdict|answer|correct)\W{0,5}\s*\**\s*(yes|no)\b", re.I)
_LEADING = re.compile(r"^\W*(yes|no)\b", re.I)
_REASON = re.compile(r"reason\W{0,5}\s*(.+)", re.I | re.S)


def parse_verdict(text: str) -> tuple[bool | None, str]:
    """(True/False, reason) from a judge reply like 'Judgement: Yes\\nReason: ...'; (None, text) if unparseable."""
    text = (text or "").strip()
    m = _VERDICT.search(text) or _LEADING.search(text)
    if not m:
        return None, text[:300]
    r = _REASON.search(text[m.end():]) or _REASON.search(text)
    reason = r.group(1).strip() if r else text[m.end():].strip(" .:\n")
    return m.group(1).lower() == "yes", reason[:500]


class JudgeError(RuntimeError):
    """The LLM judge could not be reached or never gave a verdict; the message carries no secret."""


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def llm_judge(pred: str, golds: str | Sequence[str], question: str, params: LLMJudgeParams) -> Verdict:
    """Ask the judge endpoint; retries on connection errors, timeouts, 429/5xx and unparseable replies.
    Raises JudgeError after the last retry."""
    import requests

    golds = _golds(golds) or [str(golds if isinstance(golds, str) else "")]
    key = ""
    if params.api_key_env:
        key = os.environ.get(params.api_key_env, "")
        if not key:
            raise JudgeError(f"LLM judge: environment variable {params.api_key_env} is empty; export the API key "
                             "there (or set judge.llm.api_key_env='' for an endpoint without a key)")
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {"model": params.model, "temperature": 0, "max_tokens": params.max_tokens,
            "messages": [{"role": "system", "content": JUDGE_SYSTEM},
                         {"role": "user", "content": judge_prompt(question, golds, pred)}]}
    url = params.base_url.rstrip("/") + "/chat/completions"
    last = ""
    for attempt in range(params.max_retries + 1):
        if attempt:
            time.sleep(params.backoff_s * 2 ** (attempt - 1))
        try:
            resp = requests.post(url, headers=headers, data=json.dumps(body), timeout=params.timeout_s)
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}: {exc}"
            continue
        if resp.status_code == 429 or resp.status_code >= 500:
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            continue
        if resp.status_code != 200:  # 4xx other than 429 will not get better by retrying
            raise JudgeError(_scrub(f"LLM judge at {url}: HTTP {resp.status_code}: {resp.text[:300]}", key))
        try:
            text = resp.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            last = f"malformed response body: {resp.text[:200]}"
            continue
        verdict, reason = parse_verdict(text)
        if verdict is None:
            last = f"no Yes/No verdict in reply: {text[:200]}"
            continue
        return Verdict(verdict, 1.0 if verdict else 0.0, "llm", reason)
    raise JudgeError(_scrub(f"LLM judge at {url} failed after {params.max_retries + 1} attempts; last: {last}", key))


def judge(pred: str, answer: str, aliases: Iterable[str] = (), method: str = "em", question: str = "",
          params: JudgeParams | None = None) -> Verdict:
    """Judge `pred` against `answer` + `aliases` with `method` (em | subem | f1 | llm)."""
    params = params or JudgeParams(method=method)
    golds = [answer, *list(aliases or [])]
    if method == "em":
        ok = exact_match(pred, golds)
        return Verdict(ok, float(ok), "em")
    if method == "subem":
        ok = sub_em(pred, golds)
        return Verdict(ok, float(ok), "subem")
    if method == "f1":
        score = f1(pred, golds)
        return Verdict(score >= params.f1_threshold, score, "f1")
    if method == "llm":
        if not normalize_answer(pred):
            return Verdict(False, 0.0, "llm", "empty prediction")
        return llm_judge(pred, _golds(golds), question, params.llm)
    raise ValueError(f"judge method {method!r} is not one of {METHODS}")


def make_judge(params: JudgeParams):
    """A `(pred, answer, aliases, question) -> Verdict` callable bound to `params`."""
    params.validate()

    def _judge(pred: str, answer: str, aliases: Iterable[str] = (), question: str = "") -> Verdict:
        return judge(pred, answer, aliases, params.method, question, params)

    return _judge


__all__ = ["JudgeError", "JudgeParams", "LLMJudgeParams", "METHODS", "Verdict", "exact_match", "f1", "judge",
           "llm_judge", "make_judge", "normalize_answer", "parse_verdict", "sub_em"]
