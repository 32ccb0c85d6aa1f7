#!/usr/bin/env bash
# Rebuild the tiny MusicGen fixtures under crates/musicgen/tests/fixtures with pinned transformers.
# Usage: tools/make_fixtures.sh [OUT_DIR]   (venv in $FIXTURES_VENV, default .venv/fixtures, git-ignored)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${FIXTURES_VENV:-$root/.venv/fixtures}"
out="${1:-$root/crates/musicgen/tests/fixtures}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet -r "$root/tools/requirements-fixtures.txt"
exec "$venv/bin/python" "$root/tools/make_fixtures.py" --out "$out"
