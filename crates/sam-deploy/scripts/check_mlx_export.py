"""Check that an adapter exported by `sam deploy export --format mlx`
(`Registry::export`) loads in the real mlx-lm and gives the same logits as
sam within 1e-3.

    cargo run --release -p sam-deploy --example mlx_export -- GGUF /tmp/sam-deploy-mlx
    /tmp/peers/bin/python crates/sam-trainer/scripts/check_mlx_adapter.py --hf-from-gguf GGUF /tmp/smollm2-hf
    /tmp/mlx/bin/python crates/sam-deploy/scripts/check_mlx_export.py /tmp/smollm2-hf /tmp/sam-deploy-mlx/export

mlx-lm reads Hugging Face folders, not GGUF files: the second command (the
trainer's check script, run with a Python that has torch and transformers)
writes the test model as one. The check loads that folder with
`mlx_lm.load`, alone and with `adapter_path=EXPORT`, and compares its
logits at every position with sam's (`sam_logits.json`, written by the
example with the adapter as the registry holds it). Exits non-zero when the
export lacks `adapters.safetensors` or `adapter_config.json`, the max abs
diff is 1e-3 or more, an argmax differs, the adapter does not move the
logits, or mlx-lm did not put every LoRA pair of the file on a layer.
"""
import json
import os
import sys

TOLERANCE = 1e-3


def main(hf_dir, export):
    import mlx.core as mx
    import numpy as np
    from importlib.metadata import version
    from mlx.utils import tree_flatten
    from mlx_lm import load

    files = sorted(f for f in os.listdir(export) if not f.startswith("."))
    layout = {"adapters.safetensors", "adapter_config.json"}
    print(json.dumps({"mlx": version("mlx"), "mlx_lm": version("mlx-lm"), "files": files}))
    ok = layout <= set(files)

    sam = json.load(open(os.path.join(export, "sam_logits.json")))
    ids = mx.array([sam["input_ids"]])
    base, _ = load(hf_dir)
    base_logits = np.array(base(ids)[0].astype(mx.float32))
    model, _ = load(hf_dir, adapter_path=export)
    mlx_logits = np.array(model(ids)[0].astype(mx.float32))

    in_file = {k.rsplit(".", 1)[0] for k in mx.load(os.path.join(export, "adapters.safetensors"))}
    on_model = {k.rsplit(".", 1)[0] for k, _ in tree_flatten(model.parameters()) if k.endswith(".lora_a")}
    print(json.dumps({"version": sam.get("version"), "lora_modules_in_file": len(in_file),
                      "lora_modules_in_model": len(on_model), "same_modules": in_file == on_model}))
    ok &= in_file == on_model

    for name, ref, ours in [("base", base_logits, sam["base_logits"]), ("adapter", mlx_logits, sam["logits"])]:
        ours = np.array(ours, dtype=np.float32)
        diff = float(np.abs(ref - ours).max())
        same = bool((ref.argmax(-1) == ours.argmax(-1)).all())
        print(json.dumps({"variant": name, "max_abs_diff": diff, "argmax_equal_all_positions": same,
                          "positions": int(ids.shape[1])}))
        ok &= diff < TOLERANCE and same
    effect = float(np.abs(mlx_logits - base_logits).max())
    print(json.dumps({"adapter_effect_max_abs": effect}))
    ok &= effect > 1e-2
    print("mlx-lm export check:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
