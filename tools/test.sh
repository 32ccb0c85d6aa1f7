#!/usr/bin/env bash
# The project's whole test suite, as CI runs it (`.ci/run` calls this script).
# Rust unit and integration tests (engine parity against the committed transformers fixtures,
# CLI, server), then the checks that need outside tools, each installed by its own script.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked
