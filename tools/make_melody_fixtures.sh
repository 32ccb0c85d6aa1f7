#!/usr/bin/env bash
# Rebuild the tiny musicgen-melody fixtures with transformers 4.48 (the last release whose melody
# generation uses the melody), then re-save tiny-melody with transformers 5.x for the 5.x dialect.
# Run tools/make_fixtures.sh first: the melody checkpoints reuse tiny-mono's and tiny-stereo's T5,
# EnCodec and tokenizer.
# Usage: tools/make_melody_fixtures.sh [OUT_DIR] [make_melody_fixtures.py options, e.g. --seeds-from DIR]
#   venvs: $MELODY_VENV (default .venv/melody) from tools/requirements-melody.txt, and
#          $FIXTURES_VENV (default .venv/fixtures) from tools/requirements-fixtures.txt; both git-ignored.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/crates/musicgen/tests/fixtures}"
shift || true
melody_venv="${MELODY_VENV:-$root/.venv/melody}"
fixtures_venv="${FIXTURES_VENV:-$root/.venv/fixtures}"
for pair in "$melody_venv:requirements-melody.txt" "$fixtures_venv:requirements-fixtures.txt"; do
    venv="${pair%%:*}"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "$root/tools/${pair#*:}"
done
"$melody_venv/bin/python" "$root/tools/make_melody_fixtures.py" --out "$out" "$@"
"$fixtures_venv/bin/python" "$root/tools/resave_melody_v5.py" "$out"
