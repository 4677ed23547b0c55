"""Rollout protocols: the tool call of hand-written turns as TRL's parser reads it (malformed ones included), the
tool step's limits and refusals, rendering round trips, TRL's template checks and response parsing, and the TRL
environment class."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from pipeline.rollout.environment import environment_class, mark_delivered
from pipeline.rollout.protocols import IMAGE_SEARCH, TEXT_SEARCH, Limits, ToolCall, get_protocol, messages_with_pil
from pipeline.rollout.step import refusal
from pipeline.rollout.protocols.prompts import NO_IMAGE_NOTE
from pipeline.search.types import SearchHit, SearchResult


def _png(color=(200, 20, 20), size=(60, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


ITEM = {"question": "Which country's flag is this?", "answer": "Denmark", "aliases": ["Kingdom of Denmark"],
        "image": _png()}


class TableTools:
    """A search backend over a fixed table, same call shapes as pipeline.search.SearchTools."""

    def __init__(self):
        self.calls = []

    def image_search(self, image: bytes, k=None) -> SearchResult:
        self.calls.append(("image_search", len(image)))
        hits = [SearchHit("Flag of Denmark", "https://example.org/dk", "", _png((200, 0, 0))),
                SearchHit("Dannebrog", "https://example.org/dannebrog", "", _png((210, 10, 10)))]
        return SearchResult("image_search", "image sha256=x", hits, cache_key="img-key")

    def text_search(self, query: str, k=None) -> SearchResult:
        self.calls.append(("text_search", query))
        if query == "fail":
            return SearchResult("text_search", query, [], error="backend down", cache_key="t-fail")
        return SearchResult("text_search", query, [SearchHit("Denmark", "https://example.org/denmark",
                                                             "Denmark is a Nordic country.")], cache_key="t-key")

    def run_many(self, calls, k=None):
        return [self.image_search(v, k) if tool == "image_search" else self.text_search(v, k) for tool, v, *_ in calls]


@pytest.fixture(scope="module")
def tag():
    return get_protocol("mmsearch_r1")


@pytest.fixture(scope="module")
def native():
    return get_protocol("tool_calls")


@pytest.fixture(scope="module")
def text_tok(tiny_text_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_text_model_path)


# --------------------------------------------------------------------------------------------------- tool calls
@pytest.mark.parametrize("text, call", [
    ("<reason>Red with a white cross: Denmark.</reason><answer>Denmark</answer>", None),
    ("<reason>I am not sure what flag this is.</reason><search><img></search>", ToolCall(IMAGE_SEARCH, "")),
    ("<reason>r</reason><search> <img> </search><|im_end|>", ToolCall(IMAGE_SEARCH, "")),
    ("<reason>Need the capital.</reason><text_search>capital of Denmark</text_search>",
     ToolCall(TEXT_SEARCH, "capital of Denmark")),
    ("<text_search>no reason first</text_search>", ToolCall(TEXT_SEARCH, "no reason first")),  # runs; the scorer
    ("<reason>r</reason><search>flag of denmark</search>", None),                            # marks it invalid
    ("<reason>r</reason><text_search>capital of", None),                                     # cut: no call
    ("<reason>r</reason><answer>x</answer><search><img></search>", None),                    # after a done action
    ("<reason>r</reason><text_search>a</text_search><text_search>b</text_search>", ToolCall(TEXT_SEARCH, "a")),
    ("", None),
])
def test_tag_parse_call(tag, text, call):
    got = tag.parse_call(text)
    assert (got if got is None else ToolCall(got.kind, got.query.strip())) == call


@pytest.mark.parametrize("text, call", [
    ('<tool_call>\n{"name": "image_search", "arguments": {}}\n</tool_call>', ToolCall(IMAGE_SEARCH, "")),
    ('Let me look it up.\n<tool_call>\n{"name": "text_search", "arguments": {"query": "Danish capital"}}\n</tool_call>',
     ToolCall(TEXT_SEARCH, "Danish capital")),
    ("It is Denmark. <answer>Denmark</answer>", None),
    ('<tool_call>\n{"name": "image_search"\n</tool_call>', None),  # bad JSON: TRL keeps it as plain text
    ('<tool_call>{"name": "web_browse", "arguments": {}}</tool_call>', ToolCall("web_browse", "")),
])
def test_tool_calls_parse_call(native, text, call):
    assert native.parse_call(text) == call


# --------------------------------------------------------------------------------------------------- limits
def test_limits_paper_rules(tag):
    lim, s = tag.limits, tag.new_state("tools")
    assert refusal(lim, s, IMAGE_SEARCH, "", True) == ""
    s.record(IMAGE_SEARCH, executed=True)
    assert "first turn" in refusal(lim, s, IMAGE_SEARCH, "", True)          # turn 2
    assert refusal(lim, s, TEXT_SEARCH, "q", True) == ""
    s.record(TEXT_SEARCH, executed=True)
    assert "last turn" in refusal(lim, s, TEXT_SEARCH, "q", True)           # turn 3 of 3: answer now
    assert "Unknown tool" in refusal(lim, tag.new_state("tools"), "web_browse", "", True)


def test_limits_budgets_and_conditions():
    proto = get_protocol("mmsearch_r1", Limits(max_turns=5, max_image_search=1, image_search_first_turn_only=False,
                                               max_text_search=2))
    lim, s = proto.limits, proto.new_state("tools")
    for _ in range(2):
        s.record(TEXT_SEARCH, executed=True)
    assert "limit of 2" in refusal(lim, s, TEXT_SEARCH, "q", True)
    assert refusal(lim, s, IMAGE_SEARCH, "", True) == ""  # turn 3 allowed when not first-turn-only
    assert "no image" in refusal(lim, s, IMAGE_SEARCH, "", False)
    s.record(IMAGE_SEARCH, executed=True)
    assert "limit of 1" in refusal(lim, s, IMAGE_SEARCH, "", True)
    assert "not available" in refusal(lim, proto.new_state("closed_book"), IMAGE_SEARCH, "", True)
    assert "not available" in refusal(lim, proto.new_state("image_only"), TEXT_SEARCH, "q", True)
    assert "non-empty" in refusal(lim, proto.new_state("text_only"), TEXT_SEARCH, " ", True)
    with pytest.raises(ValueError, match="condition"):
        proto.new_state("rag_everything")


# --------------------------------------------------------------------------------------------------- prompts
def test_initial_messages_per_condition(tag, native):
    msgs = tag.initial_messages(ITEM, "tools", with_image=True)
    (user,) = msgs
    assert user["role"] == "user" and user["content"][0] == {"type": "image", "image": ITEM["image"]}
    text = user["content"][-1]["text"]
    assert "<reason>" in text and "<search><img></search>" in text and "<text_search>" in text
    assert text.endswith("Question: " + ITEM["question"])
    closed = tag.initial_messages(ITEM, "closed_book")[0]["content"][-1]["text"]
    assert "<answer>" in closed and "<search>" not in closed and "<text_search>" not in closed
    img_only = tag.initial_messages(ITEM, "image_only")[0]["content"][-1]["text"]
    assert "<search><img></search>" in img_only and "<text_search>" not in img_only
    blind = tag.initial_messages(ITEM, "tools", with_image=False)[0]["content"]
    assert len(blind) == 1 and NO_IMAGE_NOTE in blind[0]["text"]
    assert tag.initial_messages(ITEM, "tools", embed_image=False)[0]["content"][0] == {"type": "image"}
    sys_msg, user = native.initial_messages(ITEM, "tools")
    assert sys_msg["role"] == "system" and "<answer>" in sys_msg["content"]
    assert user["content"][-1]["text"] == ITEM["question"]


# --------------------------------------------------------------------------------------------------- rendering
def test_tag_render_round_trip(tag, text_tok):
    tools = TableTools()
    msgs = tag.initial_messages(ITEM, "tools", with_image=False)
    turn1 = "<reason>I cannot see the image.</reason><search><img></search>"
    msgs.append(tag.assistant_message(turn1 + "<|im_end|>"))
    res1 = tools.image_search(ITEM["image"])
    msgs.append(tag.tool_result_message(res1, ITEM["question"], turn=1, last_turn=False, with_images=False))
    turn2 = "<reason>The results say Denmark.</reason><text_search>Denmark flag name</text_search>"
    msgs.append(tag.assistant_message(turn2))
    res2 = tools.text_search("Denmark flag name")
    msgs.append(tag.tool_result_message(res2, ITEM["question"], turn=2, last_turn=True, with_images=False))
    text = tag.render(text_tok, msgs)
    # every assistant turn comes back verbatim, so parsing the rendered history gives the same actions
    assert "<|im_start|>assistant\n" + turn1 + "<|im_end|>\n" in text
    assert "<|im_start|>assistant\n" + turn2 + "<|im_end|>\n" in text
    assert "<|im_start|>user\nSearched results: <information>[Image Search Results]" in text
    assert "1. title: Flag of Denmark\nurl: https://example.org/dk\n" in text
    assert ("</information>\nQuestion: Which country's flag is this?\nUse these results together with the image."
            in text)
    assert "[Text Search Results]" in text and "Denmark is a Nordic country." in text
    assert text.count("This is your last turn") == 1
    assert text.endswith("<answer> </answer>.<|im_end|>\n<|im_start|>assistant\n")
    assert [tag.parse_call(t).kind for t in tag.turns_from_messages(msgs)] == [IMAGE_SEARCH, TEXT_SEARCH]
    assert tag.score(tag.turns_from_messages(msgs)).kinds == [IMAGE_SEARCH, TEXT_SEARCH]
    # prefix preserving on the real conversation: each longer history extends the shorter rendering
    for k in range(1, len(msgs)):
        assert tag.render(text_tok, msgs[: k + 1], add_generation_prompt=False).startswith(
            tag.render(text_tok, msgs[:k], add_generation_prompt=False))


def test_tag_error_result_rendered_inside_information(tag, text_tok):
    res = TableTools().text_search("fail")
    msg = tag.tool_result_message(res, "Q?", turn=1, last_turn=False)
    refusal = tag.tool_result_message("Image search is not allowed here.", "Q?", turn=2, last_turn=True)
    text = tag.render(text_tok, [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "x"}, msg,
                                 {"role": "assistant", "content": "y"}, refusal])
    assert "<information>[Text Search Results] There is an error encountered" in text
    assert "<information>Image search is not allowed here.</information>\nQuestion: Q?\nThis is your last turn" in text


def test_native_render_lists_tools_only_with_tools(native, text_tok):
    msgs = native.initial_messages(ITEM, "tools", with_image=False)
    text = native.render(text_tok, msgs, "tools")
    assert "<tools>" in text and '"name": "image_search"' in text and '"name": "text_search"' in text
    assert text.index('"name": "image_search"') < text.index('"name": "text_search"')
    assert "<tools>" not in native.render(text_tok, native.initial_messages(ITEM, "closed_book"), "closed_book")
    only = native.render(text_tok, native.initial_messages(ITEM, "text_only"), "text_only")
    assert '"name": "text_search"' in only and "image_search" not in only.split("<tools>")[1]


def test_native_tool_schemas_match_environment_methods(native):
    from transformers.utils import get_json_schema

    env = environment_class(native, TableTools())()
    assert native.tools_for("tools") == [get_json_schema(env.image_search), get_json_schema(env.text_search)]
    assert native.tools_for("closed_book") is None


# --------------------------------------------------------------------------------------------------- TRL
@pytest.mark.parametrize("name", ["mmsearch_r1", "tool_calls"])
def test_trl_accepts_templates(name, tiny_text_model_path, tiny_vlm_path):
    from trl.chat_template_utils import is_chat_template_prefix_preserving, supports_tool_calling

    from pipeline.models import load_processor

    proto = get_protocol(name)
    for path in (tiny_text_model_path, tiny_vlm_path):
        tok = proto.prepare_tokenizer(load_processor(path))
        assert supports_tool_calling(tok), (name, path)
        assert is_chat_template_prefix_preserving(tok), (name, path)
        inner = getattr(tok, "tokenizer", tok)
        assert inner.response_template == proto.response_template and inner.chat_template == proto.chat_template


def _trl_parse(proto, tok, completion: str) -> dict:
    from trl.chat_template_utils import parse_response

    prefix = tok.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True, tokenize=False)
    return parse_response(tok, tok(completion + "<|im_end|>")["input_ids"], prefix=tok(prefix)["input_ids"])


@pytest.mark.parametrize("completion, calls, kind", [
    ("<reason>r</reason><text_search>capital of Denmark</text_search>",
     [("text_search", {"query": "capital of Denmark"})], "text_search"),
    ("<reason>r</reason><search><img></search>", [("search", {"query": ""})], "image_search"),
    ("<reason>r</reason><answer>Denmark</answer>", [], "answer"),
    ("<reason>r</reason><search>junk</search>", [], "invalid"),
    ("<reason>r</reason><text_search>cut by the length limit", [], "invalid"),
    # only the first action runs (TRL executes what the response template parses); the turn is still invalid
    ("<reason>r</reason><text_search>a</text_search><text_search>b</text_search>", [("text_search", {"query": "a"})],
     "invalid"),
    ("<reason>r</reason><answer>x</answer><search><img></search>", [], "invalid"),
])
def test_trl_parses_tag_turns(tag, text_tok, completion, calls, kind):
    """TRL's own parse of the tokenized turn gives the calls our loop's `parse_call` gives; the scorer judges the
    model's text."""
    tok = tag.prepare_tokenizer(text_tok.__class__.from_pretrained(text_tok.name_or_path))
    parsed = _trl_parse(tag, tok, completion)
    got = [(c["function"]["name"], c["function"]["arguments"]) for c in parsed.get("tool_calls") or []]
    assert got == calls
    ours = tag.parse_call(completion)
    assert ([(tag.tool_names[ours.kind], {"query": ours.query})] if ours else []) == calls
    assert tag.score([completion]).kinds == [kind]


@pytest.mark.parametrize("completion, calls, kind", [
    ('<tool_call>\n{"name": "text_search", "arguments": {"query": "krone"}}\n</tool_call>',
     [("text_search", {"query": "krone"})], "text_search"),
    ('<tool_call>\n{"name": "image_search", "arguments": {}}\n</tool_call>', [("image_search", {})], "image_search"),
    ("<answer>Denmark</answer>", [], "answer"),
    ('<tool_call>\n{"name": "image_search"\n</tool_call>', [], "invalid"),  # bad JSON: TRL keeps it as plain text
])
def test_trl_parses_native_turns(native, text_tok, completion, calls, kind):
    tok = native.prepare_tokenizer(text_tok.__class__.from_pretrained(text_tok.name_or_path))
    parsed = _trl_parse(native, tok, completion)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in parsed.get("tool_calls") or []] == calls
    assert (native.parse_call(completion) is not None) == bool(calls)
    assert native.score([native.turn_text(parsed)]).kinds == [kind]


def test_tool_turn_is_self_contained_for_trl_splicing(tag, text_tok):
    """TRL renders tool results after a dummy conversation and splices the token difference after the real
    completion; the protocol's tool turn must not depend on earlier messages."""
    tok = tag.prepare_tokenizer(text_tok.__class__.from_pretrained(text_tok.name_or_path))
    env = environment_class(tag, TableTools(), with_images=False)()
    env.reset(**ITEM)
    content = env.text_search(query="Denmark")
    tool_msg = [{"role": "tool", "name": "text_search", "content": content}]
    dummy = [{"role": "user", "content": "dummy"},
             {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                 "name": "text_search", "arguments": {}}}]}]
    prefix = tok.apply_chat_template(dummy, tokenize=True, return_dict=False)
    prefix = prefix[: max(i for i, t in enumerate(prefix) if t == tok.eos_token_id) + 1]
    full = tok.apply_chat_template(dummy + tool_msg, tokenize=True, return_dict=False, add_generation_prompt=True)
    assert full[: len(prefix)] == prefix
    suffix = tok.decode(full[len(prefix):])
    assert suffix.startswith("\n<|im_start|>user\nSearched results: <information>[Text Search Results]")
    assert f"</information>\nQuestion: {ITEM['question']}\n" in suffix
    assert suffix.endswith("<|im_end|>\n<|im_start|>assistant\n")


# --------------------------------------------------------------------------------------------------- environment
def test_environment_enforces_limits_and_records_calls(tag):
    tools = TableTools()
    Env = environment_class(tag, tools, with_images=True)
    assert {"search", "text_search", "reset"} <= set(dir(Env)) and not hasattr(Env, "get_reward")
    env = Env()
    env.reset(question=ITEM["question"], image={"bytes": ITEM["image"], "path": None}, answer="Denmark")
    out = env.search(query="")
    images = [b for b in out if b["type"] == "image"]
    assert len(images) == 2 and all(isinstance(b["image"], Image.Image) for b in images)
    assert out[-1]["text"].startswith("Question: " + ITEM["question"])
    again = env.search()
    assert "first turn" in again[0]["text"]                    # turn 2: refused, shown as the result
    third = env.text_search(query="Denmark")                   # turn 3 is the last: refused
    assert "last turn" in third[0]["text"]
    assert tools.calls == [("image_search", len(ITEM["image"]))]
    assert [(c["tool"], c["refused"], c["turn"]) for c in env.calls] == [
        (IMAGE_SEARCH, False, 1), (IMAGE_SEARCH, True, 2), (TEXT_SEARCH, True, 3)]
    assert env.calls[0]["cache_key"] == "img-key" and env.calls[0]["n_results"] == 2
    env.reset(question="Q2", images=[ITEM["image"]])            # pooled instance: state starts over
    assert env.calls == [] and env.state.turn == 1
    first = env.text_search(query="fail")
    assert "There is an error encountered" in first[0]["text"] and env.calls[0]["error"] == "backend down"
    assert "Question: Q2" in first[-1]["text"]


def test_delivered_calls_follow_the_tool_messages_trl_kept(tag):
    """TRL drops a tool result that would overflow max_completion_length after the call ran: that call is marked
    undelivered; TRL's own error results never reached the environment and are not counted."""
    env = environment_class(tag, TableTools(), with_images=False)()
    env.reset(question="Q", image=ITEM["image"])
    env.search()
    env.text_search(query="Denmark")
    kept = [{"role": "assistant", "content": "a"}, {"role": "tool", "content": "{'error': 'bad args'}"},
            {"role": "assistant", "content": "b"}, {"role": "tool", "content": [{"type": "text", "text": "r"}]},
            {"role": "assistant", "content": "c", "tool_calls": [{"function": {"name": "text_search"}}]}]
    records = mark_delivered(env, kept)
    assert [r["delivered"] for r in records] == [True, False]
    assert records[1]["error"].startswith("result dropped") and records[0]["error"] == ""


def test_environment_text_search_budget():
    proto = get_protocol("tool_calls", Limits(max_turns=4))
    tools = TableTools()
    env = environment_class(proto, tools, with_images=False)()
    env.reset(question="Q", image=ITEM["image"])
    assert "[Text Search Results]" in env.text_search("a")[0]["text"]
    assert "[Text Search Results]" in env.text_search("b")[0]["text"]
    assert "limit of 2" in env.text_search("c")[0]["text"]
    assert [q for t, q in tools.calls] == ["a", "b"]
    no_image = environment_class(proto, tools)()
    no_image.reset(question="Q")
    assert "no image" in no_image.image_search()[0]["text"]


def test_vlm_processor_renders_question_and_result_images(tag, tiny_vlm_path):
    from pipeline.models import load_processor

    proc = tag.prepare_tokenizer(load_processor(tiny_vlm_path))
    msgs = tag.initial_messages(ITEM, "tools", with_image=True)
    msgs.append(tag.assistant_message("<reason>r</reason><search><img></search>"))
    msgs.append(tag.tool_result_message(TableTools().image_search(ITEM["image"]), ITEM["question"], 1, False))
    out = proc.apply_chat_template(messages_with_pil(msgs), add_generation_prompt=True, tokenize=True,
                                   return_dict=True, return_tensors="pt")
    grid = out["image_grid_thw"]
    assert grid.shape[0] == 3                                  # the question image + two thumbnails
    n_pad = int((out["input_ids"][0] == proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_pad == int(grid.prod(dim=1).sum()) // 4           # 2x2 patch merge
