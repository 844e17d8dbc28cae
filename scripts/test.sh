#!/usr/bin/env bash
# sam's whole test run: fetch the test model and Chromium, check formatting and lints, then
# build and run every test, doc test and example in the workspace.
#
#   scripts/test.sh
#
# This is the command the README gives and the one CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

SAM_TEST_MODEL="$(scripts/fetch-test-model.sh)"
export SAM_TEST_MODEL
echo "test model: $SAM_TEST_MODEL"

# The dashboard test drives headless Chromium (Debian's package).
SAM_CHROMIUM="$(scripts/setup-chromium.sh)"
export SAM_CHROMIUM
echo "chromium: $SAM_CHROMIUM"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

# The products' BLAS backend (sam-kernels' `blas` feature, the system's OpenBLAS): its
# products against naive sums, and the fused training path against the plain one on it.
scripts/setup-openblas.sh
cargo test --locked -p sam-kernels --features blas
cargo test --locked -p sam-trainer --features blas --lib fused_path_matches_plain_ops

# Every example in examples/ embeds one crate on its own; build and run each.
for dir in examples/*/; do
  name="example-$(basename "$dir")"
  echo "running $name"
  cargo run --locked --quiet -p "$name"
done
