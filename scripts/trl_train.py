"""Train a LoRA adapter with Hugging Face TRL on a folder that
`sam export --format trl` wrote: SFT on DIR/sft, then DPO on DIR/dpo (when it
has training pairs) continuing the same adapter. Writes a PEFT adapter
(adapter_config.json + adapter_model.safetensors) that `sam deploy register`
takes back.

    python scripts/trl_train.py MODEL_DIR TRL_DIR OUT_DIR [options]

MODEL_DIR is a Hugging Face folder of the base model (for the GGUF test
model, `crates/sam-trainer/scripts/check_mlx_adapter.py --hf-from-gguf`
makes one). The same script runs on one CPU and, unchanged, on many GPUs:

    accelerate launch --multi_gpu --num_processes 8 scripts/trl_train.py \
        MODEL_DIR TRL_DIR OUT_DIR --bf16 --batch-size 8 --sft-steps 2000 --dpo-steps 500

Only the rows of the `train` split are trained on; `valid` is TRL's
evaluation set; `test` is left alone for sam's gate. The DPO phase starts
from the SFT adapter and is measured against it, as sam's own sft+dpo runs
are: TRL, handed a PEFT model, keeps a frozen copy of its adapter as the
reference (no second model in memory). A JSON line per phase (steps, first and last loss, seconds) is
printed and written to OUT_DIR/trl_log.json.
"""
import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("trl_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--sft-steps", type=int, default=16)
    ap.add_argument("--dpo-steps", type=int, default=4)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--dpo-lr", type=float, default=5e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--bf16", action="store_true", help="train in bfloat16 (GPUs)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    manifest = json.load(open(os.path.join(a.trl_dir, "manifest.json")))
    assert manifest.get("format") == "trl", f"{a.trl_dir} is not a `sam export --format trl` folder"
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    dtype = torch.bfloat16 if a.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=dtype)
    # sam's own training configuration: rank 8, alpha 16 on q, k, v and o.
    lora = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    common = dict(per_device_train_batch_size=a.batch_size, logging_steps=1, save_strategy="no",
                  report_to="none", seed=a.seed, bf16=a.bf16, max_length=a.max_length,
                  lr_scheduler_type="constant")
    log = {"trl_dir": a.trl_dir, "model_dir": a.model_dir, "phases": []}

    def phase(name, trainer):
        t0 = time.time()
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        rec = {"phase": name, "steps": trainer.state.global_step, "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "seconds": round(time.time() - t0, 1),
               "train_rows": len(trainer.train_dataset)}
        if trainer.is_world_process_zero():
            print(json.dumps(rec), flush=True)
        log["phases"].append(rec)
        return trainer.model

    sft = load_dataset("json", data_dir=os.path.join(a.trl_dir, "sft"))
    print(json.dumps({"sft_splits": {k: len(v) for k, v in sft.items()}}), flush=True)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=os.path.join(a.out_dir, "sft-work"), max_steps=a.sft_steps,
                       learning_rate=a.sft_lr, **common),
        train_dataset=sft["train"],
        processing_class=tok,
        peft_config=lora,
    )
    model = phase("sft", trainer)

    dpo_dir = os.path.join(a.trl_dir, "dpo")
    if a.dpo_steps > 0 and os.path.isfile(os.path.join(dpo_dir, "train.jsonl")):
        pairs = load_dataset("json", data_dir=dpo_dir)
        print(json.dumps({"dpo_splits": {k: len(v) for k, v in pairs.items()}}), flush=True)
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(output_dir=os.path.join(a.out_dir, "dpo-work"), max_steps=a.dpo_steps,
                           learning_rate=a.dpo_lr, beta=a.beta, **common),
            train_dataset=pairs["train"],
            processing_class=tok,
        )
        model = phase("dpo", trainer)

    trainer.save_model(a.out_dir)
    if trainer.is_world_process_zero():
        json.dump(log, open(os.path.join(a.out_dir, "trl_log.json"), "w"), indent=2)
        print("wrote", a.out_dir, sorted(os.listdir(a.out_dir)), flush=True)


if __name__ == "__main__":
    main()
