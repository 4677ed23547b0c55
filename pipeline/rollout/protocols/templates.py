"""Jinja chat templates of the two protocols (ChatML-style turns: `<|im_start|>role\\n ... <|im_end|>\\n`).

Both render message content given as a string or as content blocks (`{"type": "text", "text"}`, `{"type": "image",
...}`); an image block becomes the Qwen-VL slot `<|vision_start|><|image_pad|><|vision_end|>`, which a Qwen2-VL
processor expands and a text-only tokenizer simply tokenizes as text (text-only prompts carry no image blocks).
Both are prefix-preserving (earlier turns render the same whatever follows), which TRL's multi-turn loop needs.
"""
from __future__ import annotations

_BLOCKS = r"""
{%- macro render_blocks(content) -%}
{%- if content is none -%}
{%- elif content is string -%}{{- content -}}
{%- else -%}
{%- for b in content -%}
{%- if b is string -%}{{- b -}}
{%- elif b.type in ['image', 'image_url', 'image_pil'] -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
{%- elif b.text is defined and b.text is not none -%}{{- b.text -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
"""

# The paper's tag protocol. An assistant message is its content followed by its tool calls rendered back as tags
# (TRL hands parsed turns back this way); unknown tool names get a generic `<name>{json}</name>` so TRL's
# `supports_tool_calling` check sees name, argument and value. A run of tool messages renders as one user turn:
# `Searched results: <information>RESULT</information>\n` then, when the tool content is a list of two or more
# blocks, its last block (question + follow-up instruction) after the information block.
MMSEARCH_R1_TEMPLATE = _BLOCKS + r"""
{%- macro render_tool(content) -%}
{{- 'Searched results: <information>' -}}
{%- if content is string -%}{{- content -}}{{- '</information>' -}}
{%- elif content | length > 1 -%}{{- render_blocks(content[:-1]) -}}{{- '</information>\n' -}}{{- render_blocks(content[-1:]) -}}
{%- else -%}{{- render_blocks(content) -}}{{- '</information>' -}}
{%- endif -%}
{%- endmacro -%}
{%- for message in messages -%}
{%- if message.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user\n' -}}{%- endif -%}
{{- render_tool(message.content) -}}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\n' -}}{%- endif -%}
{%- elif message.role == 'assistant' -%}
{{- '<|im_start|>assistant\n' -}}{{- render_blocks(message.content) -}}
{%- for tc in (message.tool_calls or []) -%}
{%- set f = tc.function if tc.function is defined else tc -%}
{%- set args = f.arguments if f.arguments is defined and f.arguments is not none else {} -%}
{%- if f.name in ['search', 'image_search'] -%}{{- '<search><img></search>' -}}
{%- elif f.name == 'text_search' -%}{{- '<text_search>' -}}{{- (args.query if args is mapping else args) | string -}}{{- '</text_search>' -}}
{%- else -%}{{- '<' + f.name + '>' -}}{{- args | tojson -}}{{- '</' + f.name + '>' -}}
{%- endif -%}
{%- endfor -%}
{{- '<|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>' + message.role + '\n' -}}{{- render_blocks(message.content) -}}{{- '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""

# Native tool calling, Qwen2.5 layout (tools listed in the system turn as JSON inside <tools></tools>, calls as
# `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, results as `<tool_response>` in a user turn),
# extended to content blocks so a VLM processor can use it and tool results can carry images.
TOOL_CALLS_TEMPLATE = _BLOCKS + r"""
{%- if tools -%}
{{- '<|im_start|>system\n' -}}
{%- if messages[0].role == 'system' -%}{{- render_blocks(messages[0].content) -}}{%- else -%}{{- 'You are a helpful assistant.' -}}{%- endif -%}
{{- '\n\n# Tools\n\nYou may call a function to help you answer. The functions are described inside <tools></tools>:\n<tools>' -}}
{%- for tool in tools -%}{{- '\n' -}}{{- tool | tojson -}}{%- endfor -%}
{{- '\n</tools>\n\nTo call a function, write a JSON object with its name and arguments inside <tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' -}}
{%- elif messages[0].role == 'system' -%}
{{- '<|im_start|>system\n' -}}{{- render_blocks(messages[0].content) -}}{{- '<|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'system' and loop.first -%}
{%- elif message.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
{{- '\n<tool_response>\n' -}}{{- render_blocks(message.content) -}}{{- '\n</tool_response>' -}}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\n' -}}{%- endif -%}
{%- elif message.role == 'assistant' -%}
{{- '<|im_start|>assistant\n' -}}{{- render_blocks(message.content) -}}
{%- set ns = namespace(first=(render_blocks(message.content) | length == 0)) -%}
{%- for tc in (message.tool_calls or []) -%}
{%- set f = tc.function if tc.function is defined else tc -%}
{%- if not ns.first -%}{{- '\n' -}}{%- endif -%}{%- set ns.first = false -%}
{{- '<tool_call>\n{"name": "' -}}{{- f.name -}}{{- '", "arguments": ' -}}
{%- if f.arguments is string -%}{{- f.arguments -}}{%- else -%}{{- (f.arguments if f.arguments is defined and f.arguments is not none else {}) | tojson -}}{%- endif -%}
{{- '}\n</tool_call>' -}}
{%- endfor -%}
{{- '<|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>' + message.role + '\n' -}}{{- render_blocks(message.content) -}}{{- '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""

_IM_END = r"<\|im_end\|>\s*"

# A complete action already written earlier in the same turn: later tags are not executed (the paper stops
# generation at the first action's closing tag, so only the first action can run). `regex` allows the
# variable-length lookbehind.
_DONE_TAG = r"(?:</answer>|</text_search>|<search>\s*<img>\s*</search>)"

MMSEARCH_R1_RESPONSE_TEMPLATE: dict = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            # The lookaheads keep an unclosed tag (e.g. cut by the length limit) and `<search>junk</search>` as
            # plain content instead of swallowing the rest of the turn.
            "open_pattern": (
                rf"(?<!{_DONE_TAG}.*)"
                r"(?:<(?P<name>text_search)>(?=.*?</text_search>)|<(?P<name>search)>\s*<img>\s*(?=</search>))"
            ),
            "close_pattern": r"</(?:text_search|search)>\s*",
            "content": "text",
            "transform": [{"type": "function", "function": {"name": "{name}", "arguments": {"query": "{content}"}}}],
        },
        # Text before and after the executed tag is kept (concatenated), not overwritten.
        "content": {"close_pattern": _IM_END, "content": "text", "repeats": True, "join": ""},
    },
}

TOOL_CALLS_RESPONSE_TEMPLATE: dict = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open_pattern": r"(?<!(?:</tool_call>|</answer>).*)<tool_call>(?=.*?</tool_call>)",
            "close_pattern": r"</tool_call>\s*",
            "content": "json",
            "transform": [{"type": "function", "function": "{content}"}],
        },
        "content": {"close_pattern": _IM_END, "content": "text", "repeats": True, "join": ""},
    },
}
