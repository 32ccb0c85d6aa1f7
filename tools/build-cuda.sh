#!/usr/bin/env bash
# Builds the CUDA `dgx-music` binary, stripped, into target-cuda/dist/.
#
#   tools/build-cuda.sh [CAP] [--tests]
#
# --tests also builds the GPU integration tests (crates/musicgen/tests/gpu.rs) into one executable
# beside the binary, for machines that have a GPU but no Rust (run it from the repository root).
#
# CAP is the compute capability candle's kernels are compiled for (CUDA_COMPUTE_CAP), as major*10+minor:
#   80  (default) plain compute_80 PTX: runs on every card of compute 8.0 or newer (A100, RTX 30/40,
#       H100/H200, Blackwell, GB10/DGX Spark), the driver compiling the PTX for its card at first load.
#   90  H100/H200 only: candle turns 90 into sm_90a, code no other architecture can run or JIT.
#   121 GB10 / DGX Spark (built on the Spark itself, aarch64): candle turns it into sm_121f.
# Any card older than CAP cannot run the binary: `dgx-music validate` says which CAP a card needs.
#
# The toolchain comes from tools/cuda-toolchain.sh (installed on first use) unless CUDA_ROOT points
# at an existing CUDA 13.0 (e.g. /usr/local/cuda on a DGX Spark). Environment knobs:
#   CARGO_TARGET_DIR (default: <repo>/target-cuda), DGX_CUDA_HOME (toolchain dir), NICE (default 10).
set -euo pipefail

CAP="${CUDA_COMPUTE_CAP:-80}"
TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) TESTS=1 ;;
    *) CAP="$arg" ;;
  esac
done
case "$CAP" in
  ''|*[!0-9]*) echo "build-cuda: CAP must be a number like 80, 90 or 121 (major*10+minor), not '$CAP'" >&2; exit 2 ;;
esac
if [ "$CAP" -lt 53 ]; then
  echo "build-cuda: compute capability $CAP is below 5.3, which candle's f16 kernels need" >&2; exit 2
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target-cuda}"

if [ -z "${CUDA_ROOT:-}" ]; then
  TOOLCHAIN="${DGX_CUDA_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/dgx-music/cuda-13.0}"
  [ -f "$TOOLCHAIN/env.sh" ] || "$REPO/tools/cuda-toolchain.sh" "$TOOLCHAIN"
  # shellcheck source=/dev/null
  . "$TOOLCHAIN/env.sh"
else
  export PATH="$CUDA_ROOT/bin:$PATH"
fi
command -v nvcc >/dev/null || { echo "build-cuda: no nvcc under CUDA_ROOT=$CUDA_ROOT/bin" >&2; exit 1; }

export CUDA_COMPUTE_CAP="$CAP"
nice -n "${NICE:-10}" cargo build --release --locked --features cuda -p dgx-music --manifest-path "$REPO/Cargo.toml"

DIST="$CARGO_TARGET_DIR/dist"
mkdir -p "$DIST"
OUT_BIN="$DIST/dgx-music-cuda-sm$CAP-$(uname -m)"
cp "$CARGO_TARGET_DIR/release/dgx-music" "$OUT_BIN"
strip "$OUT_BIN" 2>/dev/null || true
echo "build-cuda: $OUT_BIN ($(du -h "$OUT_BIN" | cut -f1), kernels for compute capability $CAP)"

if [ "$TESTS" = 1 ]; then
  exe="$(nice -n "${NICE:-10}" cargo test --release --locked --features cuda -p musicgen --test gpu --no-run \
          --message-format=json --manifest-path "$REPO/Cargo.toml" \
        | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)"
  [ -n "$exe" ] || { echo "build-cuda: the GPU tests did not build" >&2; exit 1; }
  OUT_TESTS="$DIST/gpu-tests-sm$CAP-$(uname -m)"
  cp "$exe" "$OUT_TESTS"
  strip "$OUT_TESTS" 2>/dev/null || true
  echo "build-cuda: $OUT_TESTS (run it from the repository root: it reads crates/musicgen/tests/fixtures)"
fi
