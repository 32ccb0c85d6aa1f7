#!/usr/bin/env bash
# Browser tests of the page served by `dgx-music serve` (tests/browser/page.test.mjs).
#
# Installs what they need when missing (Debian's chromium and chromium-driver, playwright-core from the
# npm lock file), builds the binary, and runs the tests against it with the tiny fixture model on CPU.
# Screenshots land in $SCREENSHOT_DIR (default: target/browser-screenshots).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}
if ! installed chromium || ! installed chromium-driver; then
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
fi

command -v node >/dev/null || { echo "node (>= 20) and npm are needed: apt-get install -y nodejs npm" >&2; exit 1; }
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

cargo build -p dgx-music
target_dir="$(cargo metadata --format-version 1 --no-deps | node -e \
  'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"

export DGX_MUSIC_BIN="$target_dir/debug/dgx-music"
export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$root/target/browser-screenshots}"
mkdir -p "$SCREENSHOT_DIR"
npm test --prefix tests/browser
echo "screenshots: $SCREENSHOT_DIR"
