#!/usr/bin/env bash
# Install the Python peers sam is checked against (interop checks and
# benchmarks, never a build or test dependency) into virtual environments
# outside the project:
#
#   scripts/setup-peers.sh            # both
#   scripts/setup-peers.sh peers      # torch, transformers, peft, trl, gguf, accelerate
#   scripts/setup-peers.sh mlx        # mlx (CPU) and mlx-lm
#
# Folders: $SAM_PEERS_VENV (default /tmp/peers) and $SAM_MLX_VENV (default
# /tmp/mlx). Idempotent: a venv that already imports its packages is kept.
# Prints each venv's python on standard output.
set -euo pipefail

peers="${SAM_PEERS_VENV:-/tmp/peers}"
mlx="${SAM_MLX_VENV:-/tmp/mlx}"
what="${1:-all}"

make_venv() { # DIR IMPORT-CHECK PACKAGES...
  local dir="$1" check="$2"; shift 2
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "$dir/bin/python"; return
  fi
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  "$dir/bin/python" -c "$check"
  echo "$dir/bin/python"
}

case "$what" in
  all|peers) make_venv "$peers" "import torch, transformers, peft, trl, gguf, accelerate" \
               torch transformers peft trl gguf accelerate ;;
esac
case "$what" in
  all|mlx) make_venv "$mlx" "import mlx.core, mlx_lm" "mlx[cpu]" mlx-lm ;;
esac
