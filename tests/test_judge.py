"""Answer judging: SQuAD normalisation, EM/SubEM/F1 edge cases, and the LLM judge against a loopback endpoint."""
from __future__ import annotations

import time

import pytest

from pipeline.judge import (JudgeError, JudgeParams, LLMJudgeParams, exact_match, f1, judge, make_judge,
                            normalize_answer, parse_verdict, sub_em)


def test_normalize_answer_squad_rules():
    assert normalize_answer("  The  Eiffel-Tower! ") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("") == ""
    assert normalize_answer(None) == ""  # type: ignore[arg-type]


@pytest.mark.parametrize("pred, golds, expected", [
    ("Paris", ["paris"], True),
    ("the Paris.", ["Paris"], True),
    ("Paris, France", ["Paris"], False),           # EM is exact after normalisation
    ("Lutetia", ["Paris", "Lutetia"], True),       # aliases count
    ("", ["Paris"], False),
    ("", [""], True),                              # the paper's em_check: "" == "" (degenerate gold)
    ("The", ["a"], True),                          # both normalise to "" (as the released scorer)
    ("Paris", ["Paris", None], True),              # non-string golds are skipped, not errors
    ("Paris", [], False),
])
def test_exact_match(pred, golds, expected):
    assert exact_match(pred, golds) is expected


def test_sub_em_is_the_papers_substring_rule():
    assert sub_em("I think it is Paris, France.", ["paris"])
    assert sub_em("Indian rupee", ["India"])        # substring, as the released scorer's subem_check
    assert sub_em("New York City", ["new york"])
    assert not sub_em("", ["x"])
    assert not sub_em("Lyon", ["Paris", "Marseille"])


def test_f1_partial_and_best_alias():
    assert f1("Paris", ["Paris"]) == 1.0
    assert f1("Paris France", ["Paris"]) == pytest.approx(2 / 3)
    assert f1("Berlin", ["Paris"]) == 0.0
    assert f1("united states dollar", ["US dollar", "United States dollar"]) == 1.0
    assert f1("", ["Paris"]) == 0.0


def test_judge_methods_and_verdicts():
    assert judge("paris", "Paris", ["Lutetia"]).correct
    v = judge("Paris France", "Paris", method="f1")
    assert v.method == "f1" and v.score == pytest.approx(2 / 3) and v.correct
    assert not judge("Paris France", "Paris", method="f1", params=JudgeParams(method="f1", f1_threshold=0.8)).correct
    assert judge("it is paris", "Paris", method="subem").correct
    with pytest.raises(ValueError):
        judge("x", "y", method="bleu")


@pytest.mark.parametrize("reply, verdict", [
    ("Judgement: Yes\nReason: same city.", True),
    ("**Judgement:** No\nReason: wrong country", False),
    ("judgment: yes. reason: ok", True),
    ("Yes, the answer matches.", True),
    ("No. Reason: it names a different person", False),
    ("I cannot decide.", None),
    ("", None),
])
def test_parse_verdict(reply, verdict):
    got, reason = parse_verdict(reply)
    assert got is verdict
    if verdict is not None and "reason" in reply.lower():
        assert reason


def _chat(content: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def _params(url: str, **kw) -> JudgeParams:
    llm = LLMJudgeParams(base_url=url + "/v1", model="judge-model", backoff_s=0.01, timeout_s=2.0, **kw)
    return JudgeParams(method="llm", llm=llm)


def test_llm_judge_sends_question_gold_prediction_and_key(loopback_server, monkeypatch):
    monkeypatch.setenv("MMSC_TEST_JUDGE_KEY", "sk-test-secret")
    url = loopback_server(lambda req: (200, _chat("Judgement: Yes\nReason: both name Paris.")))
    v = make_judge(_params(url, api_key_env="MMSC_TEST_JUDGE_KEY"))("Paris", "Paris", ["Lutetia"], "Capital?")
    assert v.correct and v.score == 1.0 and v.method == "llm" and "Paris" in v.reason
    (req,) = loopback_server.requests[url]
    assert req.method == "POST" and req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test-secret"
    body = req.json()
    assert body["model"] == "judge-model" and body["temperature"] == 0
    user = body["messages"][-1]["content"]
    assert "Capital?" in user and "Paris | Lutetia" in user and "Model answer: Paris" in user


def test_llm_judge_no_verdict(loopback_server):
    url = loopback_server(lambda req: (200, _chat("Judgement: No\nReason: Berlin is not Paris.")))
    v = judge("Berlin", "Paris", method="llm", question="Capital?", params=_params(url))
    assert not v.correct and v.score == 0.0 and "Berlin" in v.reason
    assert "authorization" not in loopback_server.requests[url][0].headers  # no key configured


def test_llm_judge_retries_500_then_succeeds(loopback_server):
    calls = []

    def handler(req):
        calls.append(1)
        return (500, "overloaded") if len(calls) < 3 else (200, _chat("Judgement: Yes\nReason: ok"))

    url = loopback_server(handler)
    assert judge("Paris", "Paris", method="llm", params=_params(url)).correct
    assert len(calls) == 3


def test_llm_judge_retries_malformed_reply(loopback_server):
    replies = iter([(200, "not json"), (200, {"choices": []}), (200, _chat("Maybe?")), (200, _chat("Judgement: No"))])
    url = loopback_server(lambda req: next(replies))
    v = judge("Rome", "Paris", method="llm", params=_params(url))
    assert not v.correct and len(loopback_server.requests[url]) == 4


def test_llm_judge_timeout_then_success(loopback_server):
    calls = []

    def handler(req):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.0)
        return 200, _chat("Judgement: Yes\nReason: ok")

    url = loopback_server(handler)
    params = _params(url)
    params.llm.timeout_s = 0.3
    assert judge("Paris", "Paris", method="llm", params=params).correct
    assert len(calls) == 2


def test_llm_judge_gives_up_without_leaking_key(loopback_server, monkeypatch):
    monkeypatch.setenv("MMSC_TEST_JUDGE_KEY", "sk-very-secret")
    url = loopback_server(lambda req: (503, "down; auth was " + req.headers.get("authorization", "")))
    with pytest.raises(JudgeError) as err:
        judge("Paris", "Paris", method="llm", params=_params(url, api_key_env="MMSC_TEST_JUDGE_KEY", max_retries=2))
    assert "3 attempts" in str(err.value) and "sk-very-secret" not in str(err.value)
    url4 = loopback_server(lambda req: (401, {"error": "bad key " + req.headers.get("authorization", "")}))
    with pytest.raises(JudgeError) as err:
        judge("Paris", "Paris", method="llm", params=_params(url4, api_key_env="MMSC_TEST_JUDGE_KEY"))
    assert "401" in str(err.value) and "sk-very-secret" not in str(err.value)
    assert len(loopback_server.requests[url4]) == 1  # a 4xx is not retried


def test_llm_judge_missing_key_env_is_a_clear_error(loopback_server, monkeypatch):
    monkeypatch.delenv("MMSC_TEST_JUDGE_KEY", raising=False)
    url = loopback_server(lambda req: (200, _chat("Judgement: Yes")))
    with pytest.raises(JudgeError, match="MMSC_TEST_JUDGE_KEY"):
        judge("Paris", "Paris", method="llm", params=_params(url, api_key_env="MMSC_TEST_JUDGE_KEY"))
    assert loopback_server.requests[url] == []


def test_llm_judge_empty_prediction_is_wrong_without_a_call(loopback_server):
    url = loopback_server(lambda req: (200, _chat("Judgement: Yes")))
    v = judge("  ", "Paris", method="llm", params=_params(url))
    assert not v.correct and loopback_server.requests[url] == []


def test_judge_params_validation():
    from pipeline.config import ParamsError, build

    with pytest.raises(ParamsError, match="method"):
        build(JudgeParams, {"method": "bleu"})
    with pytest.raises(ParamsError, match="base_url"):
        build(JudgeParams, {"method": "llm"})
