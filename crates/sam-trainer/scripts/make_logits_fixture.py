"""Make the logit-parity fixtures for sam-trainer's model tests.

Run once (the outputs are committed); needs torch, transformers, gguf:

    python crates/sam-trainer/scripts/make_logits_fixture.py [GGUF]

GGUF defaults to $SAM_TEST_MODEL, else ~/.cache/sam/models/SmolLM2-135M-Instruct.Q4_1.gguf.

Writes under crates/sam-trainer/tests/fixtures/:
- smollm2_logits.json: for a few chat prompts, the token ids and, at every
  position, Hugging Face transformers' f32 logits summarised as argmax,
  logsumexp over the whole vocabulary, the top-16 (id, value) pairs and the
  values at every 251st vocabulary id. The test compares sam's logits with all
  of these, so a wrong row anywhere in the vocabulary moves the logsumexp.
- tiny_qwen2/: a tiny randomly initialised Qwen2 model (q/k/v biases set to
  random values, separate lm_head, rope_theta 10000) as an HF folder
  (config.json + model.safetensors), and tiny_qwen2_logits.json with its full
  logits for two token sequences.
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
STRIDE = 251
TOPK = 16


def summarise(logits):
    """logits: [T, V] float32 -> list of per-position summaries."""
    out = []
    for row in logits:
        top = torch.topk(row, TOPK)
        out.append({
            "argmax": int(torch.argmax(row)),
            "logsumexp": float(torch.logsumexp(row.double(), 0)),
            "top_ids": [int(i) for i in top.indices],
            "top_values": [round(float(v), 5) for v in top.values],
            "strided": [round(float(v), 5) for v in row[::STRIDE]],
        })
    return out


def smollm(gguf_path):
    d, f = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "You are a terse coding assistant."},
         {"role": "user", "content": "Write a Rust function that adds two numbers."}],
    ]
    cases = []
    for conv in conversations:
        ids = tok.apply_chat_template(conv, add_generation_prompt=True)
        if hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        cases.append([int(i) for i in ids])
    # A plain-text prompt too, not starting with a special token.
    cases.append([int(i) for i in tok("fn main() { println!(\"hello\"); }")["input_ids"]])
    prompts = []
    with torch.no_grad():
        for ids in cases:
            logits = model(torch.tensor([ids])).logits[0].float()
            prompts.append({"input_ids": ids, "positions": summarise(logits)})
    out = {"model": f, "stride": STRIDE, "vocab_size": int(model.config.vocab_size),
           "transformers_dtype": "float32", "prompts": prompts}
    with open(os.path.join(FIX, "smollm2_logits.json"), "w") as fh:
        json.dump(out, fh)
    print("smollm2: wrote", len(prompts), "prompts, lengths", [len(c) for c in cases])


def tiny_qwen2():
    torch.manual_seed(1234)
    cfg = Qwen2Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )
    model = Qwen2ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.5)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.08)
    d = os.path.join(FIX, "tiny_qwen2")
    model.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(7)
    seqs = [torch.randint(0, 256, (11,), generator=g).tolist(), torch.randint(0, 256, (5,), generator=g).tolist()]
    prompts = []
    with torch.no_grad():
        for ids in seqs:
            logits = model(torch.tensor([ids])).logits[0].float()
            prompts.append({"input_ids": ids, "logits": [[round(float(v), 6) for v in row] for row in logits]})
    with open(os.path.join(FIX, "tiny_qwen2_logits.json"), "w") as fh:
        json.dump({"prompts": prompts}, fh)
    print("tiny_qwen2: wrote", d)


if __name__ == "__main__":
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "SAM_TEST_MODEL", os.path.expanduser("~/.cache/sam/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    os.makedirs(FIX, exist_ok=True)
    tiny_qwen2()
    smollm(gguf_path)
