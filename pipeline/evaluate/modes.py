"""The three evaluation modes, all played by the shared rollout loop (`pipeline.rollout.loop.run_rollouts`) with the
shared protocol and search tools:

- `direct`: no tools; the protocol's direct-answer prompt (the probe's `closed_book` condition).
- `on_demand`: image + text search offered; the model decides (the probe's `tools` condition).
- `rag`: the paper's fixed RAG workflow: image search on the item image, then one text search, then the model
  answers; search ratio 100% by construction. The loop is not changed for it: the two first assistant turns are
  *forced*. `RagWorkflowEngine` wraps the engine and, for a conversation at turn 1 or 2, returns the protocol's own
  text of the workflow action instead of generating (no tokens are counted for it); from turn 3 on it generates.
  The loop then parses, executes (through the same cache), records and judges those turns exactly like model turns.
  The text query is the question, or the top image-search title followed by the question
  (`rag.text_query`); `RagProtocol` (a thin wrapper of the protocol) remembers, per tool message it renders,
  the question and the result titles so the engine wrapper can build that query. The workflow runs under fixed
  limits: 3 turns, 1 image search (first turn), 1 text search; the text search's result asks for the answer
  (the protocol's last-turn follow-up).

`run_mode` returns evaluation rollout rows: ROLLOUT_FEATURES plus `dataset` and `label`, with `condition` = the mode
and `model` = the model's name from params. Reads and writes nothing (the search cache is the tools' business).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Sequence

import datasets

from pipeline.config import param
from pipeline.rollout.engines import GenOut
from pipeline.rollout.protocols import IMAGE_SEARCH, TEXT_SEARCH, Limits, Protocol, get_protocol
from pipeline.schema import ROLLOUT_FEATURES

MODES = ("direct", "rag", "on_demand")
# Loop condition of each mode (the protocol maps `direct` to no tools and `on_demand` to image + text search).
MODE_CONDITION = {"direct": "direct", "rag": "on_demand", "on_demand": "on_demand"}
RAG_LIMITS = Limits(max_turns=3, max_image_search=1, image_search_first_turn_only=True, max_text_search=1)
# The forced turns' reasons read like the model's own (a small model continues whatever pattern it is shown: with
# "Fixed retrieval workflow, step 1/2: ..." it wrote "step 3: search with the image" instead of answering).
RAG_REASONS = {
    IMAGE_SEARCH: "I search with the image first.",
    TEXT_SEARCH: "Now I look the question up.",
}

EVAL_ROLLOUT_FEATURES = datasets.Features(
    {
        **ROLLOUT_FEATURES,
        "dataset": datasets.Value("string"),  # evaluation dataset name (metrics key)
        "label": datasets.Value("string"),  # the item's search-necessity label ("" = unlabelled)
    }
)


@dataclasses.dataclass
class RagParams:
    text_query: Literal["question", "title_question"] = param(
        "title_question",
        help="query of the workflow's text search: question (the question as is) or title_question (the top "
        "image-search title, then the question; the question alone when the image search found nothing)",
    )


class RagProtocol:
    """Delegates everything to `protocol`; remembers, for each tool message it renders, the question and the titles
    of the result (looked up by the message object the loop appends to the conversation)."""

    def __init__(self, protocol: Protocol):
        self._inner = protocol
        self.notes: dict[int, tuple[dict, str, list[str]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def tool_result_message(self, result: Any, question: str, turn: int, last_turn: bool, *args: Any,
                            **kwargs: Any) -> dict:
        # the workflow's text search is its last search: its result asks for the answer now, as the paper's does
        last_turn = last_turn or kwargs.get("tool") == TEXT_SEARCH
        msg = self._inner.tool_result_message(result, question, turn, last_turn, *args, **kwargs)
        titles = [h.title for h in getattr(result, "hits", None) or []] if not getattr(result, "error", "") else []
        self.notes[id(msg)] = (msg, question, titles)  # the message is kept so its id stays unique
        return msg

    def note_for(self, message: Mapping[str, Any]) -> tuple[str, list[str]]:
        entry = self.notes.get(id(message))
        if entry is None or entry[0] is not message:
            raise RuntimeError("rag workflow: the conversation does not end with a tool message rendered by this "
                               "protocol; the rollout loop must append the message tool_result_message returns")
        return entry[1], entry[2]


def forced_text(protocol: Protocol, kind: str, query: str = "") -> str:
    """The protocol's text of a workflow action (what a model would write): a turn the scorer accepts as exactly
    `kind` and that the protocol's parser reads back as the same call."""
    call = {"type": "function", "function": {"name": protocol.tool_names[kind],
                                              "arguments": {"query": query} if kind == TEXT_SEARCH else {}}}
    body = protocol.tool_call_to_text(call)
    # the tag protocol needs a reason, written as the demonstrations write a turn: `</reason>` then the action, no
    # newline (with "</reason>\n<search>" in the forced turns the labeler ended its own answer turn after "</reason>\n"
    # in 66 of 129 RAG rollouts: it had never seen "\n<answer>")
    for text in (body, f"<reason>{RAG_REASONS[kind]}</reason>{body}"):
        parsed = protocol.parse_call(text)
        if (protocol.score([text]).kinds == [kind] and parsed is not None and parsed.kind == kind
                and (kind != TEXT_SEARCH or parsed.query.strip() == query.strip())):
            return text
    raise ValueError(f"protocol {protocol.name!r}: cannot write a {kind} turn that parses back "
                     f"(query {query!r}); the rag workflow needs tool_call_to_text to invert parse_call")


def rag_query(question: str, titles: Sequence[str], how: str) -> str:
    """The workflow's text-search query (single line)."""
    question = " ".join(question.split())
    if how == "title_question" and titles and titles[0].strip():
        return f"{' '.join(titles[0].split())} {question}"
    return question


class RagWorkflowEngine:
    """Engine wrapper for the `rag` mode: assistant turns 1 and 2 of every conversation are the workflow's image
    search and text search (forced, 0 tokens, finish_reason "forced"); later turns are generated by `engine`."""

    def __init__(self, engine: Any, protocol: RagProtocol, text_query: str = "title_question"):
        self._engine, self._protocol, self._how = engine, protocol, text_query

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, conversations: Sequence[Sequence[dict]], n: int = 1, sampling: Any = None,
                 seed: int | None = None, tools: list[dict] | None = None) -> list[list[GenOut]]:
        out: list[list[GenOut] | None] = [None] * len(conversations)
        real = []
        for i, conv in enumerate(conversations):
            done = sum(1 for m in conv if m.get("role") == "assistant")
            if done == 0:
                text = forced_text(self._protocol, IMAGE_SEARCH)
            elif done == 1:
                question, titles = self._protocol.note_for(conv[-1])
                text = forced_text(self._protocol, TEXT_SEARCH, rag_query(question, titles, self._how))
            else:
                real.append(i)
                continue
            out[i] = [GenOut(text, 0, 0, "forced") for _ in range(n)]
        if real:
            gen = self._engine.generate([conversations[i] for i in real], n=n, sampling=sampling, seed=seed,
                                        tools=tools)
            for i, g in zip(real, gen):
                out[i] = g
        return out  # type: ignore[return-value]


def run_mode(engine: Any, protocol_name: str, limits: Limits, tools: Any, items: Sequence[Mapping[str, Any]],
             mode: str, *, samples: int, judge_cfg: Any, sampling: Any, seed: int, model_name: str, dataset: str,
             labels: Mapping[str, str | None], with_image: bool | None = None,
             rag: RagParams | None = None, format_rule: str = "paper", prompt: str = "full") -> list[dict]:
    """Play `samples` rollouts per item of one mode; returns EVAL_ROLLOUT_FEATURES rows (item order, then sample).

    rollout_id = "<model>/<mode>/<dataset>/<item_id>/<sample>", unique across the whole evaluation."""
    from pipeline.rollout.loop import run_rollouts

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use some of {', '.join(MODES)}")
    if mode == "rag":
        protocol: Any = RagProtocol(get_protocol(protocol_name, dataclasses.replace(RAG_LIMITS), prompt))
        engine = RagWorkflowEngine(engine, protocol, (rag or RagParams()).text_query)
    else:
        protocol = get_protocol(protocol_name, dataclasses.replace(limits), prompt)
    rows = run_rollouts(engine, protocol, None if mode == "direct" else tools, list(items), MODE_CONDITION[mode],
                        samples, judge_cfg, sampling=sampling, with_image=with_image, seed=seed,
                        model_name=model_name, format_rule=format_rule)
    out = []
    for r in rows:
        r = dict(r)
        r["condition"] = mode
        r["model"] = model_name
        r["rollout_id"] = f"{model_name}/{mode}/{dataset}/{r['item_id']}/{r['sample']}"
        r["dataset"] = dataset
        r["label"] = labels.get(r["item_id"]) or ""
        out.append(r)
    return out
