#!/usr/bin/env bash
# sam on an MLX 4-bit folder against mlx-lm itself, end to end on this CPU:
# the test model's GGUF becomes a Hugging Face folder (transformers), the real
# `mlx_lm convert -q` makes the 4-bit folder, sam loads it kept quantized
# (logits, greedy continuations) and trains a LoRA adapter on it, and mlx-lm
# compares: its own forward on the folder, its greedy tokens, and
# `mlx_lm.load(folder, adapter_path=…)` with sam's adapter.
#
#   scripts/check-mlx-quantized.sh [WORK_DIR]     (default /tmp/sam-mlx-quant-check)
#   BITS=8 GROUP=32 scripts/check-mlx-quantized.sh   (other widths; default 4 and 64)
#
# Needs $PEERS_PYTHON (torch + transformers, default /tmp/peers/bin/python)
# and $MLX_PYTHON (mlx[cpu] + mlx-lm, default /tmp/mlx/bin/python):
# scripts/setup-peers.sh makes both. Nothing is downloaded. Not part of
# scripts/test.sh; its result is recorded in docs/mlx-quantized-check.md.
# Exits 0 when every comparison is within 1e-3 (see
# crates/sam-trainer/scripts/check_mlx_quantized.py), non-zero otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS="${PEERS_PYTHON:-/tmp/peers/bin/python}"
MLX="${MLX_PYTHON:-/tmp/mlx/bin/python}"
WORK="${1:-/tmp/sam-mlx-quant-check}"
BITS="${BITS:-4}"
GROUP="${GROUP:-64}"
MODEL="$(scripts/fetch-test-model.sh)"
rm -rf "$WORK"
mkdir -p "$WORK"
step() { printf '\n== %s\n' "$*"; }

step "1. the test model as a Hugging Face folder (transformers dequantizes the GGUF to f32)"
"$PEERS" crates/sam-trainer/scripts/check_mlx_adapter.py --hf-from-gguf "$MODEL" "$WORK/hf"

step "2. mlx_lm convert -q --q-bits $BITS --q-group-size $GROUP"
"$MLX" -m mlx_lm convert --hf-path "$WORK/hf" --mlx-path "$WORK/mlx" -q --q-bits "$BITS" \
    --q-group-size "$GROUP" --dtype float32
ls -l "$WORK/mlx"

step "3. sam on the folder, kept quantized: logits, greedy tokens, a LoRA trained on it"
cargo run --quiet -p sam-trainer --example mlx_quant_export -- "$WORK/mlx" "$WORK/sam"

step "4. mlx-lm on the same folder, alone and with sam's adapter"
"$MLX" crates/sam-trainer/scripts/check_mlx_quantized.py "$WORK/mlx" "$WORK/sam"
