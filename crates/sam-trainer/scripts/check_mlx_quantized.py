"""Check sam on an mlx quantized folder against mlx-lm itself.

    scripts/check-mlx-quantized.sh      (all four steps, one command), or:

    PEERS_PYTHON crates/sam-trainer/scripts/check_mlx_adapter.py --hf-from-gguf GGUF /tmp/smollm2-hf
    MLX_PYTHON -m mlx_lm convert --hf-path /tmp/smollm2-hf --mlx-path /tmp/smollm2-mlx4 -q --q-bits 4 --dtype float32
    cargo run -p sam-trainer --example mlx_quant_export -- /tmp/smollm2-mlx4 /tmp/sam-mlx4
    MLX_PYTHON crates/sam-trainer/scripts/check_mlx_quantized.py /tmp/smollm2-mlx4 /tmp/sam-mlx4

The example loads the folder in sam (kept quantized), writes its logits and
greedy continuations for fixed prompts, trains a LoRA adapter on that same
folder through a sam Job and writes it in mlx-lm's layout with its logits
(`sam_logits.json`). This script loads the folder with `mlx_lm.load` (its
layers stay `QuantizedLinear`), once alone and once with `adapter_path=`,
and compares: max abs difference of the logits and of the softmax
probabilities at every position, argmax agreement, and greedy
continuations token for token. Exits non-zero when a logit or probability
differs by 1e-3 or more, an argmax or a greedy token differs, the adapter
does not move the logits, or mlx-lm did not put every LoRA pair of the file
on a quantized layer.
"""
import json
import os
import sys


def softmax(x):
    import numpy as np
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def greedy(model, ids, n):
    import mlx.core as mx
    out = []
    seq = list(ids)
    for _ in range(n):
        logits = model(mx.array([seq]))[0, -1]
        t = int(mx.argmax(logits).item())
        out.append(t)
        seq.append(t)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    folder, out = sys.argv[1], sys.argv[2]
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from importlib.metadata import version
    from mlx.utils import tree_flatten
    from mlx_lm import load

    sam = json.load(open(os.path.join(out, "sam_logits.json")))
    cfg = json.load(open(os.path.join(folder, "config.json")))
    print(json.dumps({"mlx": version("mlx"), "mlx_lm": version("mlx-lm"), "quantization": cfg.get("quantization")}))

    base, _ = load(folder)
    quantized = sum(isinstance(m, nn.QuantizedLinear) for _, m in base.named_modules())
    print(json.dumps({"quantized_linear_layers": quantized,
                      "quantized_embedding": any(isinstance(m, nn.QuantizedEmbedding) for _, m in base.named_modules())}))
    ok = quantized > 0

    def compare(name, model, refs):
        nonlocal ok
        worst_logit = worst_prob = 0.0
        same = True
        for ids, ref in zip(sam["prompts"], refs):
            mine = np.array(model(mx.array([ids]))[0].astype(mx.float32))
            ours = np.array(ref, dtype=np.float32)
            worst_logit = max(worst_logit, float(np.abs(mine - ours).max()))
            worst_prob = max(worst_prob, float(np.abs(softmax(mine) - softmax(ours)).max()))
            same &= bool((mine.argmax(-1) == ours.argmax(-1)).all())
        print(json.dumps({"variant": name, "max_abs_logit_diff": worst_logit, "max_abs_prob_diff": worst_prob,
                          "argmax_equal_all_positions": same,
                          "positions": sum(len(p) for p in sam["prompts"])}))
        ok &= worst_logit < 1e-3 and worst_prob < 1e-3 and same

    compare("base", base, sam["base_logits"])
    agree = []
    for ids, theirs in zip(sam["prompts"], sam["generations"]):
        mine = greedy(base, ids, len(theirs))
        agree.append(mine == theirs)
        if mine != theirs:
            print(json.dumps({"prompt": ids, "mlx": mine, "sam": theirs}))
    print(json.dumps({"greedy_generations_equal": agree, "tokens_each": len(sam["generations"][0])}))
    ok &= all(agree)

    model, _ = load(folder, adapter_path=out)
    in_file = {k.rsplit(".", 1)[0] for k in mx.load(os.path.join(out, "adapters.safetensors"))}
    on_model = {k.rsplit(".", 1)[0] for k, _ in tree_flatten(model.parameters()) if k.endswith(".lora_a")}
    wrapped = {n for n, m in model.named_modules() if hasattr(m, "lora_a") and isinstance(m.linear, nn.QuantizedLinear)}
    print(json.dumps({"lora_modules_in_file": len(in_file), "lora_modules_in_model": len(on_model),
                      "same_modules": in_file == on_model, "on_quantized_layers": len(wrapped)}))
    ok &= in_file == on_model and len(wrapped) == len(on_model)
    compare("adapter", model, sam["adapter_logits"])
    effect = max(float(np.abs(np.array(a, dtype=np.float32) - np.array(b, dtype=np.float32)).max())
                 for a, b in zip(sam["adapter_logits"], sam["base_logits"]))
    print(json.dumps({"adapter_effect_max_abs": effect, "sam_final_train_loss": sam.get("final_train_loss")}))
    ok &= effect > 1e-2
    print("mlx quantized check:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
