#!/usr/bin/env bash
# Prep throughput, sam vs Python (transformers' tokenizer + chat template), on
# the same rows, side by side in one run.
#
#   scripts/bench-prep.sh [ROWS] [PYTHON]
#
# ROWS defaults to 5000. PYTHON is an interpreter with transformers and gguf
# installed (default: $SAM_PEER_PYTHON, else python3). The Python side is the
# peer script python_prep_bench.py ($SAM_PEER_PREP_SCRIPT, default
# /work/shared/peers/python_prep_bench.py; it is not part of the repository).
# The model is sam's test model (scripts/fetch-test-model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

rows="${1:-5000}"
py="${2:-${SAM_PEER_PYTHON:-python3}}"
model="${SAM_TEST_MODEL:-$(scripts/fetch-test-model.sh)}"
peer="${SAM_PEER_PREP_SCRIPT:-/work/shared/peers/python_prep_bench.py}"

cargo build --release -q -p sam-prep --example prep_bench
bin=target/release/examples/prep_bench

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
sam1="$("$bin" "$model" "$rows" 1)"
samn="$("$bin" "$model" "$rows" "$(nproc)")"
pyr="$("$py" "$peer" "$(dirname "$model")" "$(basename "$model")" "$rows" 2>/dev/null | tail -1)"
echo "$sam1"
echo "$samn"
echo "$pyr"
python3 - "$sam1" "$samn" "$pyr" <<'PY'
import json, sys
s1, sn, p = (json.loads(a) for a in sys.argv[1:])
print(f"{'':28} {'examples/s':>12} {'tokens/s':>12} {'ratio':>7}")
for r in (p, s1, sn):
    print(f"{r['peer']:28} {r['examples_per_s']:>12.1f} {r['tokens_per_s']:>12.1f} {r['examples_per_s'] / p['examples_per_s']:>6.1f}x")
# Same work check: the Python side prints no token total, so compare rates.
py_tokens = p["tokens_per_s"] * p["seconds"]
if abs(py_tokens - s1["tokens"]) > 0.01 * s1["tokens"]:
    print(f"warning: token totals differ: sam {s1['tokens']}, python ~{py_tokens:.0f}")
else:
    print(f"same tokens on both sides: {s1['tokens']} (python ~{py_tokens:.0f})")
PY
