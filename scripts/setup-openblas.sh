#!/usr/bin/env bash
# Make sure the system BLAS that sam-kernels' `blas` feature links is there:
# OpenBLAS (`libopenblas.so`) on Linux, Accelerate (always there) on macOS.
#
#   scripts/setup-openblas.sh
#
# Installs Debian's `libopenblas-dev` with apt-get when the library is not
# found (needs root, as in CI).
set -euo pipefail

if [[ "$(uname -s)" == Darwin ]]; then
  exit 0
fi

found() {
  ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so ' && return 0
  compgen -G '/usr/lib/*/libopenblas.so' >/dev/null || compgen -G '/usr/lib/libopenblas.so' >/dev/null
}

if found; then
  exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
  echo "setup-openblas: libopenblas.so not found and not root: run 'sudo apt-get install -y libopenblas-dev'" >&2
  exit 1
fi

echo "setup-openblas: installing libopenblas-dev with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends libopenblas-dev >&2; then
  apt-get update >&2
  apt-get install -y --no-install-recommends libopenblas-dev >&2
fi
found || { echo "setup-openblas: libopenblas.so still not found after apt-get" >&2; exit 1; }
