#!/usr/bin/env bash
# The Rust tests built for aarch64 (the DGX Spark's CPU) and run under qemu-user on this x86_64
# machine: the engine's unit and parity tests (the NEON kernels against the portable loops, every
# component and end to end against transformers' fixtures) and the binary's unit and CLI tests (the
# CLI on the fixture checkpoints, sample by sample against transformers). Left out: the HTTP
# service's tests (crates/server and crates/dgx-music/tests/serve), which start servers, time
# requests and kill processes at ~70x emulation slowdown, and hold no architecture-specific code
# (the bundled SQLite is cross-compiled here all the same). Emulated speed says nothing about a
# real Arm CPU: nothing here is timed. The tests are built in the release profile, as the shipped
# binary is (assertions stay, debug assertions and overflow checks do not): it shares the
# dependencies' build with `tools/build-aarch64.sh cpu` and runs several times faster under qemu
# than the test profile's opt-level 1.
#
# Installs what is missing (tools/aarch64-env.sh: rustup's aarch64 target, Debian's
# gcc/g++-aarch64-linux-gnu and qemu-user; apt as root or through sudo). Extra arguments go to
# `cargo test` (e.g. `-- --test-threads=1`).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

# shellcheck source=tools/aarch64-env.sh
. tools/aarch64-env.sh
AARCH64_NEED_QEMU=1 aarch64_setup
# The CLI tests start the binary themselves; binfmt_misc is rarely there in containers, so they
# go through qemu explicitly.
export DGX_MUSIC_TEST_RUNNER="$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER"

start=$(date +%s)
cargo test --release --locked --target "$AARCH64_TARGET" -p musicgen -p dgx-music --lib --bins --test engine --test gpu \
  --test cli_generate "$@"
echo "test-aarch64: passed in $(( $(date +%s) - start )) s"
