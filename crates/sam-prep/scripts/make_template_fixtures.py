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
- crates/sam-prep/tests/fixtures/families.json: the chat templates of many model families
  (tests/fixtures/templates/*.jinja, sources in tests/fixtures/templates/SOURCES.md), each put
  into the GGUF tokenizer with that family's special tokens added, rendered by
  `apply_chat_template` over multi-turn conversations with and without a system message:
  token ids, the assistant mask for templates with `{% generation %}` markers, and the
  template's own error message where it raises. `strftime_now` is fixed at FIXED_NOW.
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

# ---------------------------------------------------------------------------------------------
# Model families: real templates, tool-free conversations, ids and assistant masks.

import re
import tempfile
from datetime import datetime, timezone

import transformers.utils.chat_template_utils as ctu

# Templates that call strftime_now (Llama 3.2, Granite, gpt-oss, SmolLM3) see this instant, here
# and in the Rust test (ChatTemplate::set_now), so that the fixture does not depend on the day.
FIXED_NOW = 1736942400  # 2025-01-15T12:00:00Z


class _FixedDatetime(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.fromtimestamp(FIXED_NOW, tz or timezone.utc).replace(tzinfo=None)


ctu.datetime = _FixedDatetime

TEMPLATES = PREP_FIX / "templates"
MARKERS = re.compile(r"\{%-?\s*generation\s*-?%\}")

LLAMA3 = dict(bos="<|begin_of_text|>", eos="<|eot_id|>", added=["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>"])
MISTRAL = dict(bos="<s>", eos="</s>", added=["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"])
GEMMA = dict(bos="<bos>", eos="<eos>", added=["<start_of_turn>", "<end_of_turn>"])
PHI3 = dict(bos="<s>", eos="<|endoftext|>", added=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"])
QWEN = dict(eos="<|im_end|>", added=["<tool_call>", "</tool_call>"])
QWEN3 = dict(eos="<|im_end|>", added=["<tool_call>", "</tool_call>", "<think>", "</think>"])
DEEPSEEK = dict(bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", added=["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"])
COHERE = dict(bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>", added=["<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>"])
COHERE2 = dict(COHERE, added=COHERE["added"] + ["<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_THINKING|>", "<|END_THINKING|>", "<|START_ACTION|>", "<|END_ACTION|>"])
GPTOSS = dict(bos="<|startoftext|>", eos="<|return|>", added=["<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|call|>", "<|constrain|>"])
GRANITE = dict(bos="<|end_of_text|>", eos="<|end_of_text|>", added=["<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"])
LFM2 = dict(bos="<|startoftext|>", eos="<|im_end|>", added=["<|tool_list_start|>", "<|tool_list_end|>", "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>"])
LFM25 = dict(LFM2, added=LFM2["added"] + ["<think>", "</think>"])
# GLM closes no turn with a token of its own: generation stops at the next role token.
GLM = dict(eos="<|endoftext|>", added=["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<think>", "</think>"], stops=["<|endoftext|>", "<|user|>", "<|observation|>"])
SMOLLM3 = dict(eos="<|im_end|>", added=["<think>", "</think>"])

# (name, template file, format sam should name, the family's special tokens). "plain": the
# test model's tokenizer unchanged, as when a user drops a template into its folder.
FAMILIES = [
    ("llama2", "llama2.jinja", "llama-2", dict(bos="<s>", eos="</s>", added=[])),
    ("llama3", "llama3.jinja", "llama-3", LLAMA3),
    ("llama3_training", "llama3_training.jinja", "llama-3", LLAMA3),
    ("llama3_1", "llama3_1.jinja", "llama-3", LLAMA3),
    ("llama3_2", "llama3_2.jinja", "llama-3", LLAMA3),
    ("mistral", "mistral.jinja", "mistral", MISTRAL),
    ("mistral_training", "mistral_training.jinja", "mistral", MISTRAL),
    ("gemma", "gemma.jinja", "gemma", GEMMA),
    ("gemma_training", "gemma_training.jinja", "gemma", GEMMA),
    ("gemma3", "gemma3.jinja", "gemma", GEMMA),
    ("gemma3_training", "gemma3_training.jinja", "gemma", GEMMA),
    ("phi3", "phi3.jinja", "phi-3", PHI3),
    ("phi3_training", "phi3_training.jinja", "phi-3", PHI3),
    ("phi3_5", "phi3_5.jinja", "phi-3", PHI3),
    ("phi3_5_plain", "phi3_5.jinja", "phi-3", "plain"),
    ("phi3_5_training", "phi3_5_training.jinja", "phi-3", PHI3),
    ("qwen2_5", "qwen2_5.jinja", "chatml", QWEN),
    ("qwen2_5_training", "qwen2_5_training.jinja", "chatml", QWEN),
    ("qwen3", "qwen3.jinja", "chatml", QWEN3),
    ("qwen3_training", "qwen3_training.jinja", "chatml", QWEN3),
    ("deepseekv3", "deepseekv3.jinja", "deepseek", DEEPSEEK),
    ("deepseekv3_training", "deepseekv3_training.jinja", "deepseek", DEEPSEEK),
    ("cohere", "cohere.jinja", "command-r", COHERE),
    ("cohere_training", "cohere_training.jinja", "command-r", COHERE),
    ("cohere2", "cohere2.jinja", "command-r", COHERE2),
    ("cohere2_training", "cohere2_training.jinja", "command-r", COHERE2),
    ("gptoss", "gptoss.jinja", "gpt-oss", GPTOSS),
    ("gptoss_training", "gptoss_training.jinja", "gpt-oss", GPTOSS),
    ("smollm2", None, "chatml", "plain"),
    ("smollm3", "smollm3.jinja", "chatml", SMOLLM3),
    ("granite3_3", "granite3_3.jinja", "granite", GRANITE),
    ("lfm2", "lfm2.jinja", "chatml", LFM2),
    ("lfm2_training", "lfm2_training.jinja", "chatml", LFM2),
    ("lfm2_5", "lfm2_2_5.jinja", "chatml", LFM25),
    ("glm4moe", "glm4moe.jinja", "glm", GLM),
    ("glm4moe_training", "glm4moe_training.jinja", "glm", GLM),
]

SYS_PROMPT = "You are SAM, a terse coding assistant."
Q1, A1 = "What does `git rebase -i` do?", "It rewrites a series of commits interactively."
Q2, A2 = "And `git rebase --onto`?", "It moves a range of commits onto another base:\n\n```sh\ngit rebase --onto main feature~3 feature\n```"
Q3, A3 = "Thanks!", "You're welcome."
CONVERSATIONS = [
    ("single_turn", [m(U, Q1), m(A, A1)], False),
    ("single_turn_system", [m(S, SYS_PROMPT), m(U, Q1), m(A, A1)], False),
    ("multi_turn", [m(U, Q1), m(A, A1), m(U, Q2), m(A, A2), m(U, Q3), m(A, A3)], False),
    ("multi_turn_system", [m(S, SYS_PROMPT), m(U, Q1), m(A, A1), m(U, Q2), m(A, A2)], False),
    ("multi_turn_empty_system", [m(S, ""), m(U, Q1), m(A, A1), m(U, Q2), m(A, A2)], False),
    ("whitespace_and_unicode", [
        m(U, "naïve café — 東京 😀\ttabs\n\n and   spaces"),
        m(A, "  Leading spaces, trailing newline\n"),
        m(U, "Again?"),
        m(A, "\nYes.\n\n"),
    ], False),
    ("reasoning_in_content", [
        m(U, "Is 91 prime?"),
        m(A, "<think>\n91 = 7 * 13.\n</think>\n\nNo: 91 = 7 × 13."),
        m(U, "And 97?"),
        m(A, "<think>\nNo divisor up to 9.\n</think>\n\nYes, 97 is prime."),
    ], False),
    ("mentions_special_tokens", [
        m(U, "Which token ends a ChatML turn?"),
        m(A, "`<|im_end|>` ends it; Llama 3 uses `<|eot_id|>` and Mistral `</s>`."),
    ], False),
    ("roles_not_alternating", [m(U, "First question."), m(U, "Second question."), m(A, "One answer.")], False),
    ("generation_prompt", [m(S, SYS_PROMPT), m(U, Q1), m(A, A1), m(U, Q2)], True),
]

with tempfile.TemporaryDirectory() as base_dir:
    tok.save_pretrained(base_dir)
    families = []
    sources = {}
    for name, file, fmt, spec in FAMILIES:
        ftok = AutoTokenizer.from_pretrained(base_dir)
        template = (TEMPLATES / file).read_text() if file else tok.chat_template
        tokens = None
        if spec != "plain":
            special = {k: spec[k] for k in ("bos", "eos") if k in spec}
            ftok.add_special_tokens(
                {f"{k}_token": v for k, v in special.items()} | {"additional_special_tokens": spec["added"]}
            )
        added = sorted((i, t.content) for i, t in ftok.added_tokens_decoder.items() if i >= len(tok))
        tokens = {
            "bos": ftok.bos_token,
            "eos": ftok.eos_token,
            "unk": ftok.unk_token,
            "pad": ftok.pad_token,
            "added": [t for _, t in added],
            "added_ids": [i for i, _ in added],
            # generation_config.json's eos_token_id, where the model stops on more than eos.
            "stops": spec.get("stops", []) if spec != "plain" else [],
        }
        markers = bool(MARKERS.search(template))
        cases = []
        for cname, msgs, gen in CONVERSATIONS:
            case = {"name": cname, "messages": msgs, "add_generation_prompt": gen}
            try:
                out = ftok.apply_chat_template(
                    msgs,
                    chat_template=template,
                    tokenize=True,
                    return_dict=True,
                    add_generation_prompt=gen,
                    return_assistant_tokens_mask=markers and not gen,
                )
            except Exception as e:  # the template's own error (raise_exception) or a render failure
                case["error"] = str(e)
                case["error_kind"] = "raised" if isinstance(e, ctu.jinja2.exceptions.TemplateError) and type(e).__name__ == "TemplateError" else type(e).__name__
                cases.append(case)
                continue
            case["ids"] = list(out["input_ids"])
            if markers and not gen:
                mask = out["assistant_masks"]
                runs, start = [], None
                for i, bit in enumerate(list(mask) + [0]):
                    if bit and start is None:
                        start = i
                    elif not bit and start is not None:
                        runs.append([start, i])
                        start = None
                case["mask_runs"] = runs
            cases.append(case)
        families.append({"name": name, "template": file, "format": fmt, "markers": markers, "tokens": tokens, "cases": cases})

out_text = json.dumps({**meta, "now": FIXED_NOW, "families": families}, ensure_ascii=False, indent=1)
# One line per id list and mask: the fixture stays readable and small.
out_text = re.sub(r"\[\n\s+(-?\d+(?:,\n\s+-?\d+)*)\n\s+\]", lambda mm: "[" + re.sub(r",\n\s+", ", ", mm.group(1)) + "]", out_text)
out_text = re.sub(r"\[\n\s+(\[\d+, \d+\](?:,\n\s+\[\d+, \d+\])*)\n\s+\]", lambda mm: "[" + re.sub(r",\n\s+", ", ", mm.group(1)) + "]", out_text)
(PREP_FIX / "families.json").write_text(out_text + "\n")
n_cases = sum(len(f["cases"]) for f in families)
n_err = sum(1 for f in families for c in f["cases"] if "error" in c)
print(f"wrote {len(families)} template families, {n_cases} conversations ({n_err} the template refuses)")
