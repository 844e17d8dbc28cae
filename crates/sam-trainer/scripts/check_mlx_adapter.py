"""Check that a sam-written mlx-layout adapter loads in mlx-lm and gives the
same logits as sam.

    cargo run --release -p sam-trainer --example peft_export -- GGUF /tmp/sam-mlx mlx
    PEERS_PYTHON crates/sam-trainer/scripts/check_mlx_adapter.py --hf-from-gguf GGUF /tmp/smollm2-hf
    MLX_PYTHON crates/sam-trainer/scripts/check_mlx_adapter.py /tmp/smollm2-hf /tmp/sam-mlx

mlx-lm reads Hugging Face folders, not GGUF files, so the second command
(run with a Python that has torch and transformers) dequantises the GGUF base
with transformers to f32 and saves it, with its tokenizer, as a folder.
The third (run with a Python that has mlx and mlx-lm) loads that folder with
`mlx_lm.load`, once alone and once with `adapter_path=ADAPTER`, and compares
its logits with sam's (`sam_logits.json`, written by the example): max abs
diff and argmax agreement at every position, with and without the adapter.
Exits non-zero when the max abs diff is 1e-2 or more, an argmax differs, the
adapter does not move the logits, or mlx-lm did not put every LoRA pair of
the file on a layer.
"""
import json
import os
import sys


def hf_from_gguf(gguf, out):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers dequantises this file into plain f32 layers but keeps its
    # GGUF quantizer attached, and then refuses `save_pretrained`; the
    # weights are dense, so write them and the config directly.
    state = dict(model.state_dict())
    assert all(t.dtype == torch.float32 for t in state.values()), "not a dense f32 model"
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    os.makedirs(out, exist_ok=True)
    save_file({k: t.contiguous() for k, t in state.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(out)
    # transformers 5 writes RoPE's base only as `rope_parameters.rope_theta`;
    # mlx-lm's llama reads a top-level `rope_theta` and otherwise assumes
    # 10000 (SmolLM2 uses 100000), so write it where mlx-lm looks too.
    path = os.path.join(out, "config.json")
    cfg = json.load(open(path))
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" not in cfg and "rope_theta" in rope:
        assert rope.get("rope_type", "default") == "default", f"RoPE scaling {rope} not carried over"
        cfg["rope_theta"] = rope["rope_theta"]
        json.dump(cfg, open(path, "w"), indent=2)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    print("wrote", out)


def check(hf_dir, adapter):
    import mlx.core as mx
    import numpy as np
    from importlib.metadata import version
    from mlx.utils import tree_flatten
    from mlx_lm import load

    sam = json.load(open(os.path.join(adapter, "sam_logits.json")))
    ids = mx.array([sam["input_ids"]])
    print(json.dumps({"mlx": version("mlx"), "mlx_lm": version("mlx-lm")}))

    base, _ = load(hf_dir)
    dtypes = sorted({str(p.dtype) for _, p in tree_flatten(base.parameters())})
    base_logits = np.array(base(ids)[0].astype(mx.float32))
    model, _ = load(hf_dir, adapter_path=adapter)
    mlx_logits = np.array(model(ids)[0].astype(mx.float32))

    # mlx-lm only complains about tensors it has no place for; a LoRA layer
    # the file does not fill would keep its zero B silently, so count both.
    in_file = {k.rsplit(".", 1)[0] for k in mx.load(os.path.join(adapter, "adapters.safetensors"))}
    on_model = {k.rsplit(".", 1)[0] for k, _ in tree_flatten(model.parameters()) if k.endswith(".lora_a")}
    print(json.dumps({"base_dtypes": dtypes, "lora_modules_in_file": len(in_file),
                      "lora_modules_in_model": len(on_model), "same_modules": in_file == on_model}))
    ok = in_file == on_model

    for name, ref, ours in [("base", base_logits, sam["base_logits"]), ("adapter", mlx_logits, sam["logits"])]:
        ours = np.array(ours, dtype=np.float32)
        diff = float(np.abs(ref - ours).max())
        same = bool((ref.argmax(-1) == ours.argmax(-1)).all())
        print(json.dumps({"variant": name, "max_abs_diff": diff, "argmax_equal_all_positions": same,
                          "positions": int(ids.shape[1])}))
        ok &= diff < 1e-2 and same
    effect = float(np.abs(mlx_logits - base_logits).max())
    print(json.dumps({"adapter_effect_max_abs": effect}))
    ok &= effect > 1e-2
    print("mlx-lm check:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--hf-from-gguf":
        hf_from_gguf(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3:
        check(sys.argv[1], sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
