#!/usr/bin/env bash
# Make sure Debian's headless Chromium is installed (the dashboard's browser
# test drives it). Prints the browser's path on stdout.
#
#   scripts/setup-chromium.sh
#
# Installs `chromium` and `chromium-driver` with apt-get when no browser is
# found (needs root, as in CI); `$SAM_CHROMIUM` names another binary. The
# tests run it with: --headless --no-sandbox --disable-gpu --disable-quic
# --no-first-run --disable-background-networking --disable-component-update
# --disable-sync and a fresh --user-data-dir.
set -euo pipefail

find_browser() {
  if [[ -n "${SAM_CHROMIUM:-}" && -x "${SAM_CHROMIUM}" ]]; then
    echo "$SAM_CHROMIUM"
    return 0
  fi
  for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

if browser="$(find_browser)"; then
  echo "$browser"
  exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
  echo "setup-chromium: no chromium found and not root: run 'sudo apt-get install -y chromium chromium-driver'" >&2
  exit 1
fi

echo "setup-chromium: installing chromium and chromium-driver with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium chromium-driver >&2; then
  apt-get update >&2
  apt-get install -y --no-install-recommends chromium chromium-driver >&2
fi

browser="$(find_browser)" || { echo "setup-chromium: chromium still not found after apt-get" >&2; exit 1; }
"$browser" --version >&2
echo "$browser"
