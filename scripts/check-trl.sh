#!/usr/bin/env bash
# The way past one machine, end to end on this CPU: sam collects and cleans,
# `sam export --format trl` writes the dataset folder, the real Hugging Face
# TRL trains a LoRA adapter on it (a few SFT and DPO steps), and sam takes
# the PEFT adapter TRL wrote back: `sam deploy register`, then the same gate
# as its own adapters, on the held-out test split TRL never saw.
#
#   scripts/check-trl.sh [WORK_DIR]        (default /tmp/sam-trl-check)
#   SFT_STEPS=16 DPO_STEPS=4 scripts/check-trl.sh   (more steps; defaults 6 and 2)
#
# Needs a Python with torch, transformers, peft, trl and datasets
# ($PEERS_PYTHON, default /tmp/peers/bin/python: scripts/setup-peers.sh makes
# it). Not part of scripts/test.sh; its result is recorded in docs/scale.md.
# Exits 0 when TRL trained, the adapter registered and the gate gave its
# verdict (printed; a refusal is a verdict too), non-zero otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PEERS_PYTHON:-/tmp/peers/bin/python}"
WORK="${1:-/tmp/sam-trl-check}"
MODEL="$(scripts/fetch-test-model.sh)"
rm -rf "$WORK"
mkdir -p "$WORK"
export SAM_HOME="$WORK/home"

cargo build --quiet -p sam-cli
SAM="$PWD/target/debug/sam"
step() { printf '\n== %s\n' "$*"; }

step "1. collect this repository and the sample captures; validate; dedup"
"$SAM" collect git .
"$SAM" collect docs .
"$SAM" collect code crates
# The sample captures shipped with sam, one `sam capture KIND` per kind.
"$PY" - "$WORK" <<'EOF'
import collections, json, sys
by = collections.defaultdict(list)
for line in open("crates/sam-scheduler/assets/sample-captures.jsonl"):
    row = json.loads(line)
    by[row.pop("type")].append(json.dumps(row))
for kind, rows in by.items():
    open(f"{sys.argv[1]}/captures-{kind}.jsonl", "w").write("\n".join(rows) + "\n")
EOF
for f in "$WORK"/captures-*.jsonl; do
  kind="$(basename "$f" .jsonl)"
  "$SAM" capture "${kind#captures-}" < "$f"
done
"$SAM" validate
"$SAM" dedup --near --remove

step "2. sam export --format trl"
"$SAM" export --format trl --out "$WORK/trl"

step "3. a Hugging Face folder of the test model (TRL reads no GGUF)"
"$PY" crates/sam-trainer/scripts/check_mlx_adapter.py --hf-from-gguf "$MODEL" "$WORK/hf"

step "4. TRL: SFT, then DPO, LoRA rank 8 on q/k/v/o"
"$PY" scripts/trl_train.py "$WORK/hf" "$WORK/trl" "$WORK/adapter" \
  --sft-steps "${SFT_STEPS:-6}" --dpo-steps "${DPO_STEPS:-2}"

step "5. the held-out split: sam prep of the same folder (same ids, same split)"
"$SAM" prep --model "$MODEL" --from "$WORK/trl/sft" --from "$WORK/trl/dpo" \
  --out "$WORK/held-out" --max-seq-len 256

step "6. sam deploy register (PEFT folder from TRL) and the gate against production"
version="$("$SAM" deploy register "$WORK/adapter" --model "$MODEL" --data "$WORK/held-out" --tag trainer=trl)"
echo "registered $version"
# `promote` runs the gate first and moves production only when it passes
# (exit 1 and nothing moved when it refuses).
if "$SAM" deploy promote "$version" --reason "trained by TRL"; then
  echo "production adapter: $("$SAM" deploy which)"
  echo "TRL check: PASS (registered, gated, promoted)"
else
  echo "TRL check: the gate refused $version (its reasons above); production unchanged"
  "$SAM" deploy status
fi
