"""PyTorch + PEFT LoRA step on a Qwen2.5-Coder-1.5B-shaped model (random f32 weights from a
Qwen2Config), rank 8 on q_proj/v_proj, alpha 16, batch 1, sequence 512, AdamW, loss on every
position: the peer of `step_bench qwen2.5-coder-1.5b-random 512 3 8 f32 ...` (docs/benchmarks.md).
Run it with the peers' venv (scripts/setup-peers.sh), never in CI:

    /tmp/peers/bin/python scripts/peft_lora_bench_1p5b.py [ckpt] [layers=N]

ckpt: gradient checkpointing on; layers=N: adapters on the last N layers only (PEFT's
layers_to_transform; sam's --layers N). Prints one JSON line."""
import json, resource, sys, time, torch
from transformers import Qwen2Config, AutoModelForCausalLM
from peft import LoraConfig, get_peft_model

torch.manual_seed(0)
args = sys.argv[1:]
ck = "ckpt" in args
last = next((int(a.split("=", 1)[1]) for a in args if a.startswith("layers=")), None)
cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6)
t0 = time.time()
m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
load = time.time() - t0
extra = {} if last is None else {"layers_to_transform": list(range(28 - last, 28)), "layers_pattern": "layers"}
m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, **extra))
m.train()
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
if ck:
    m.gradient_checkpointing_enable()
    m.enable_input_require_grads()
ids = torch.randint(0, 151936, (1, 512))
ts = []
for i in range(3):
    t = time.time()
    out = m(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()
    opt.zero_grad()
    ts.append(time.time() - t)
print(json.dumps({"peer": "pytorch+peft", "model": "qwen2.5-1.5b-shape f32", "ckpt": ck, "lora_layers": last or "all",
                  "threads": torch.get_num_threads(), "load_s": round(load, 2), "steps_s": [round(x, 2) for x in ts],
                  "tokens_per_s": round(512 / min(ts[1:]), 1),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
