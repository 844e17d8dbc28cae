"""Check that a sam-written PEFT adapter loads in Hugging Face PEFT and gives
the same logits as sam.

    cargo run --release -p sam-trainer --example peft_export -- GGUF /tmp/sam-peft
    python crates/sam-trainer/scripts/check_peft_adapter.py GGUF /tmp/sam-peft

Loads the GGUF base with transformers (f32), applies the adapter with
`PeftModel.from_pretrained`, and compares its logits with sam's
(`sam_logits.json`, written by the example): max abs diff and argmax
agreement at every position, with and without the adapter. Exits non-zero
when the max abs diff is 1e-2 or more or an argmax differs.
"""
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    gguf, adapter = sys.argv[1], sys.argv[2]
    sam = json.load(open(os.path.join(adapter, "sam_logits.json")))
    ids = torch.tensor([sam["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf), gguf_file=os.path.basename(gguf), torch_dtype=torch.float32)
    base.eval()
    with torch.no_grad():
        base_logits = base(ids).logits[0]
    model = PeftModel.from_pretrained(base, adapter)
    model.eval()
    with torch.no_grad():
        peft_logits = model(ids).logits[0]
    ok = True
    for name, ref, ours in [("base", base_logits, sam["base_logits"]), ("adapter", peft_logits, sam["logits"])]:
        ours = torch.tensor(ours)
        diff = (ref - ours).abs().max().item()
        same = bool((ref.argmax(-1) == ours.argmax(-1)).all())
        print(json.dumps({"variant": name, "max_abs_diff": diff, "argmax_equal_all_positions": same,
                          "positions": int(ids.shape[1])}))
        ok &= diff < 1e-2 and same
    effect = (peft_logits - base_logits).abs().max().item()
    print(json.dumps({"adapter_effect_max_abs": effect}))
    ok &= effect > 1e-2
    print("PEFT check:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
