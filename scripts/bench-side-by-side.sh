#!/usr/bin/env bash
# sam vs PyTorch + PEFT LoRA steps, side by side in one run, for docs/benchmarks.md.
#
#   scripts/bench-side-by-side.sh [ROUNDS] [PAIR ...]
#
# Runs each pair's two commands back to back (sam first, then the peer), ROUNDS times
# (default 2), and prints one markdown row per command: median step, tokens/s, peak RSS,
# and sam's ratio to the peer of the same round. Pairs (default: all):
#   kept     1.5B shape, f32, activations kept            vs PyTorch f32
#   default  1.5B shape, `sam train`'s own recompute choice vs PyTorch f32
#   ckpt     1.5B shape, every 2nd layer recomputed      vs PyTorch with gradient checkpointing
#   bf16     1.5B shape, bf16 weights and bf16 products   vs PyTorch f32
#   layers4  1.5B shape, LoRA on the last 4 layers only   vs PyTorch, the same layers
#   small    the 135M test model at sequence 512          vs PyTorch f32
#   q4       1.5B shape at 4 bits (mlx affine, kept quantized) vs bf16 weights, both at `sam train`'s
#            default recomputation (sam vs sam: issue 19's step and peak-memory targets)
#
# Needs an idle machine (only idle side-by-sides count), the peers' venv
# (scripts/setup-peers.sh; PEERS_PY overrides /tmp/peers/bin/python) and ~12 GB free memory:
# one 1.5B-sized process runs at a time. Never part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
shift || true
pairs=("$@")
[ ${#pairs[@]} -gt 0 ] || pairs=(kept default ckpt bf16 layers4 small q4)
py=${PEERS_PY:-/tmp/peers/bin/python}
model=$(scripts/fetch-test-model.sh)

cargo build -q --release -p sam-trainer --example step_bench
b=target/release/examples/step_bench
q=qwen2.5-coder-1.5b-random

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# flags: $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_tile)$' | xargs)"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| round | pair | side | median step s | tokens/s | peak RSS MB | sam / peer |"
echo "|---|---|---|---|---|---|---|"

# A command as a table cell: file names without folders, no placeholder variable.
label() { local w out=(); for w in "$@"; do [ "$w" = SAM_X=1 ] || out+=("${w##*/}"); done; echo "${out[*]}"; }

# Runs a command, prints the last JSON line it wrote to stdout.
json() { env "$@" 2>/dev/null | grep '^{' | tail -1; }

for r in $(seq 1 "$rounds"); do
  for p in "${pairs[@]}"; do
    case $p in
      kept) a=(SAM_X=1 "$b" $q 512 4 8 f32 nockpt); c=("$py" scripts/peft_lora_bench_1p5b.py) ;;
      default) a=(SAM_X=1 "$b" $q 512 4 8 f32 auto); c=("$py" scripts/peft_lora_bench_1p5b.py) ;;
      ckpt) a=(SAM_X=1 "$b" $q 512 4 8 f32 2); c=("$py" scripts/peft_lora_bench_1p5b.py ckpt) ;;
      bf16) a=(SAM_BF16_PRODUCTS=1 "$b" $q 512 4 8 bf16 nockpt); c=("$py" scripts/peft_lora_bench_1p5b.py) ;;
      layers4) a=(SAM_BENCH_LAYERS=4 "$b" $q 512 4 8 f32 nockpt); c=("$py" scripts/peft_lora_bench_1p5b.py layers=4) ;;
      small) a=(SAM_X=1 "$b" "$model" 512 5 8 f32 nockpt)
             c=("$py" /work/shared/peers/peft_lora_bench.py "$(dirname "$model")" "$(basename "$model")" 512 5 8) ;;
      q4) a=(SAM_X=1 "$b" $q 512 4 8 q4 auto); c=(SAM_X=1 "$b" $q 512 4 8 bf16 auto) ;;
      *) echo "unknown pair $p" >&2; exit 2 ;;
    esac
    ja=$(json "${a[@]}" || true)
    jc=$(json "${c[@]}" || true)
    row() {
      local side=$1 j=$2 ratio=$3
      if [ -z "$j" ]; then echo "| $r | $p | $side | failed | | | |"; return; fi
      local step tps rss
      step=$(jq -r '.median_step_s // ((.steps_s // [])[1:] | min) // "?"' <<<"$j")
      tps=$(jq -r '.tokens_per_s' <<<"$j")
      rss=$(jq -r '.peak_rss_mb' <<<"$j")
      echo "| $r | $p | $side | $step | $tps | $rss | $ratio |"
    }
    ratio=""
    if [ -n "$ja" ] && [ -n "$jc" ]; then
      ratio=$(jq -rn --argjson a "$ja" --argjson c "$jc" \
        '"\(($a.tokens_per_s / $c.tokens_per_s * 100 | round) / 100)× tokens/s, \(($a.peak_rss_mb / $c.peak_rss_mb * 100 | round) / 100)× RSS"')
    fi
    row "sam: $(label "${a[@]}")" "$ja" "$ratio"
    row "peer: $(label "${c[@]}")" "$jc" ""
  done
done
