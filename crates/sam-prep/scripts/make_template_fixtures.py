#!/usr/bin/env python3
"""Make the chat-template fixtures that sam-prep and sam-models test against.

Run once (the outputs are committed), with transformers installed:

    python crates/sam-prep/scripts/make_template_fixtures.py [GGUF_PATH]

GGUF_PATH defaults to $SAM_TEST_MODEL, else ~/.cache/sam/models/SmolLM2-135M-Instruct.Q4_1.gguf
(fetched by scripts/fetch-test-model.sh). Nothing is downloaded from a model hub.

Writes:
- crates/sam-prep/tests/fixtures/smollm2_chat.json: conversations rendered by
  `apply_chat_template` of the GGUF tokenizer (SmolLM2's own template), text and token ids.
- crates/sam-prep/tests/fixtures/qwen2.5/render.json: the Qwen2.5 template
  (qwen2.5/chat_template.jinja, written from its public text) rendered by
  transformers for several conversations, with and without tools.
- crates/sam-models/tests/fixtures/smollm2_tokenizer.json: plain texts and their ids.
"""
import json
import os
import sys
from pathlib import Path

import transformers
from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent
PREP_FIX = HERE.parent / "tests" / "fixtures"
MODELS_FIX = HERE.parent.parent / "sam-models" / "tests" / "fixtures"

gguf = Path(
    sys.argv[1]
    if len(sys.argv) > 1
    else os.environ.get("SAM_TEST_MODEL")
    or Path.home() / ".cache/sam/models/SmolLM2-135M-Instruct.Q4_1.gguf"
)
tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)

U = "user"
A = "assistant"
S = "system"


def m(role, content):
    return {"role": role, "content": content}


CHATS = [
    ("single_turn_no_system", [m(U, "What does `git rebase -i` do?"), m(A, "It rewrites a series of commits interactively.")], False),
    ("single_turn_with_system", [m(S, "You are SAM, a terse coding assistant."), m(U, "Name a sorting algorithm."), m(A, "Merge sort.")], False),
    ("multi_turn", [
        m(S, "You are SAM."),
        m(U, "Explain fn parse_12(x: &str) -> Result<u32, Error>"),
        m(A, "It parses x as a u32 and returns Error on failure."),
        m(U, "And for \"  42 \"?"),
        m(A, "Leading and trailing spaces make it fail:\n\n```rust\nassert!(parse_12(\"  42 \").is_err());\n```"),
        m(U, "Thanks!"),
        m(A, "You're welcome."),
    ], False),
    ("generation_prompt", [m(U, "Write a haiku about Rust's borrow checker.")], True),
    ("generation_prompt_multi_turn", [
        m(S, "Answer in French."),
        m(U, "Hello"),
        m(A, "Bonjour !"),
        m(U, "How are you?"),
    ], True),
    ("unicode_and_whitespace", [
        m(U, "naïve café — 東京 😀\ttabs\n\n\nand   spaces, 3.14159 and 1,000,000"),
        m(A, "  Leading spaces, trailing newline\n"),
    ], False),
]

cases = []
for name, msgs, gen in CHATS:
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=True)["input_ids"]
    cases.append({"name": name, "messages": msgs, "add_generation_prompt": gen, "text": text, "ids": list(ids)})

PREP_FIX.mkdir(parents=True, exist_ok=True)
meta = {
    "made_by": "crates/sam-prep/scripts/make_template_fixtures.py",
    "transformers": transformers.__version__,
    "model": gguf.name,
}
(PREP_FIX / "smollm2_chat.json").write_text(
    json.dumps({**meta, "cases": cases}, ensure_ascii=False, indent=1) + "\n"
)

TEXTS = [
    "Hello world",
    " Hello world",
    "fn main() {\n    println!(\"hi\");\n}\n",
    "12345 + 678 = 13023",
    "naïve café — 東京 😀",
    "<|im_start|>user\nhi<|im_end|>\n",
    "   \t\n\n  x  ",
    "don't won't I'll we've",
]
(MODELS_FIX).mkdir(parents=True, exist_ok=True)
(MODELS_FIX / "smollm2_tokenizer.json").write_text(
    json.dumps(
        {
            **meta,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "pad_token": tok.pad_token,
            "unk_token": tok.unk_token,
            "vocab_size": len(tok),
            "cases": [{"text": t, "ids": tok.encode(t, add_special_tokens=False)} for t in TEXTS],
        },
        ensure_ascii=False,
        indent=1,
    )
    + "\n"
)

qwen_template = (PREP_FIX / "qwen2.5" / "chat_template.jinja").read_text()
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather in a city, in <units> & more",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Zürich"},
                    "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "now", "description": "Current time", "parameters": {"type": "object", "properties": {}}}},
]
TOOL_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "units": "celsius", "days": 2, "detailed": True, "ratio": 0.5, "none": None}}}],
}
QWEN = [
    ("default_system", [m(U, "Hi"), m(A, "Hello! How can I help?")], None, False),
    ("own_system", [m(S, "You are SAM."), m(U, "Hi")], None, True),
    ("multi_turn", [m(U, "a"), m(A, "b"), m(U, "c"), m(A, "d")], None, False),
    ("tools_default_system", [m(U, "Weather in Zürich?")], TOOLS, True),
    ("tools_own_system", [m(S, "You are SAM."), m(U, "Weather in Zürich?")], TOOLS, True),
    ("tool_calls_and_responses", [
        m(U, "Weather in Zürich, and the time?"),
        TOOL_CALL,
        m("tool", "{\"temp\": 3}"),
        m("tool", "12:00"),
        m(A, "3 °C at noon."),
    ], TOOLS, False),
    ("second_system_mid_chat", [m(U, "x"), m(S, "Be brief."), m(U, "y")], None, True),
]
qcases = []
for name, msgs, tools, gen in QWEN:
    text = tok.apply_chat_template(msgs, chat_template=qwen_template, tools=tools, tokenize=False, add_generation_prompt=gen)
    qcases.append({"name": name, "messages": msgs, "tools": tools, "add_generation_prompt": gen, "text": text})
(PREP_FIX / "qwen2.5" / "render.json").write_text(
    json.dumps({**meta, "template": "qwen2.5/chat_template.jinja", "cases": qcases}, ensure_ascii=False, indent=1) + "\n"
)
# Jinja features seen in real chat templates, each rendered by transformers: parity checks for
# minijinja + pycompat beyond the two full templates above.
FEATURES = {
    "llama3_like": "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}",
    "gemma_like": "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}",
    "mistral_like": "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}",
    "python_methods": "{% for m in messages %}{{ m.role.upper() }}:{{ m.content.strip().split(' ') | join('_') }}|{{ m.content.startswith('Hi') }}|{{ m.content.replace('a', 'A') }}|{{ m.content.lstrip().rstrip('!') }}|{{ m['content'].title() }}\n{% endfor %}",
    "namespace_and_reverse": "{%- set ns = namespace(last_user=-1, n=0) %}{%- for m in messages[::-1] %}{%- if ns.last_user < 0 and m.role == 'user' %}{%- set ns.last_user = (messages|length - 1) - loop.index0 %}{%- endif %}{%- set ns.n = ns.n + 1 %}{%- endfor %}last user {{ ns.last_user }} of {{ ns.n }}{{ '\\n' }}{%- for m in messages %}{{ loop.index }}{{ '.' if not loop.last else '!' }}{% endfor %}",
    "tests_and_filters": "{% for m in messages %}{{ m.content is string }} {{ m.missing is defined }} {{ m.get('role') }} {{ m.content | length }} {{ (m.content ~ '') | lower }} {{ m.missing | default('none') }}{% if 'a' in m.content %} has-a{% endif %}\n{% endfor %}{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | list | tojson }}",
    "tojson_forms": "{{ tools | tojson }}\n{{ tools | tojson(indent=4) }}\n{{ tools[0] | tojson(sort_keys=true) }}\n{% for k, v in tools[0].items() %}{{ k }}={{ v | tojson }};{% endfor %}",
    "whitespace_control": "{% for m in messages %}\n  {% if m.role == 'user' %}\n    U: {{ m.content }}\n  {%- else %}\n    A: {{ m.content }}\n  {% endif %}\n{% endfor %}\n{%+ if add_generation_prompt %}  A:{% endif %}\n",
    "generation_markers": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<end>{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}",
}
FEATURE_CHAT = [m(U, "Hi there, Alice!"), m(A, "  Hello a b c  "), m(U, "What's up?"), m(A, "Not a lot!")]
FEATURE_TOOLS = [{"name": "f", "description": "Does <x> & y", "parameters": {"b": 1, "a": [1.5, 2, None, True], "é": "ü"}}]
fcases = []
for name, tpl in FEATURES.items():
    msgs = FEATURE_CHAT
    text = tok.apply_chat_template(msgs, chat_template=tpl, tools=FEATURE_TOOLS if "tools" in tpl else None, tokenize=False, add_generation_prompt=True)
    fcases.append({"name": name, "template": tpl, "messages": msgs, "tools": FEATURE_TOOLS if "tools" in tpl else None, "add_generation_prompt": True, "text": text})
(PREP_FIX / "jinja_features.json").write_text(json.dumps({**meta, "cases": fcases}, ensure_ascii=False, indent=1) + "\n")

print(f"wrote {len(cases)} SmolLM2 chats, {len(TEXTS)} tokenizer texts, {len(qcases)} Qwen2.5 renderings")
