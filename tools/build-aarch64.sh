#!/usr/bin/env bash
# Cross-builds the aarch64 `dgx-music` binary (DGX Spark / GB10, Graviton, Ampere, Raspberry Pi 5)
# on an x86_64 Linux machine, stripped, into $CARGO_TARGET_DIR/dist/, and checks the artifact.
#
#   tools/build-aarch64.sh [cpu]          the CPU build (NEON kernels)
#   tools/build-aarch64.sh cuda [CAP]     the CUDA build; CAP as in tools/build-cuda.sh: 121 (default,
#                                         native GB10, sm_121f) or 80 (compute_80 PTX the driver JITs)
#
# Installs what is missing (tools/aarch64-env.sh: rustup's aarch64 target, Debian's
# gcc/g++-aarch64-linux-gnu; for CUDA, tools/cuda-toolchain.sh --target aarch64: the x86_64 nvcc and
# the sbsa (aarch64) CUDA 13.0 libraries from PyPI). The checks: `file` says aarch64, the dynamic
# section names only libraries a Spark has and no x86_64 path, and for CUDA the embedded PTX and
# the cubins (cuobjdump) are for the compute capability asked for.
# Environment knobs: CARGO_TARGET_DIR (default <repo>/target-aarch64), DGX_CUDA_HOME (toolchain
# dir of the aarch64 CUDA root; default ~/.local/share/dgx-music/cuda-13.0-aarch64), NICE (default 10).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIND="${1:-cpu}"
CAP=""
case "$KIND" in
  cpu) [ "$#" -le 1 ] || { echo "build-aarch64: 'cpu' takes no CAP" >&2; exit 2; } ;;
  cuda)
    CAP="${2:-121}"
    case "$CAP" in
      ''|*[!0-9]*) echo "build-aarch64: CAP must be a number like 80 or 121 (major*10+minor), not '$CAP'" >&2; exit 2 ;;
    esac
    [ "$CAP" -ge 53 ] || { echo "build-aarch64: compute capability $CAP is below 5.3, which candle's f16 kernels need" >&2; exit 2; } ;;
  *) echo "usage: tools/build-aarch64.sh [cpu | cuda [CAP]]" >&2; exit 2 ;;
esac

# shellcheck source=tools/aarch64-env.sh
. "$REPO/tools/aarch64-env.sh"
aarch64_setup
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target-aarch64}"

features=()
if [ "$KIND" = cuda ]; then
  TOOLCHAIN="${DGX_CUDA_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/dgx-music/cuda-13.0-aarch64}"
  [ -f "$TOOLCHAIN/env.sh" ] || "$REPO/tools/cuda-toolchain.sh" --target aarch64 "$TOOLCHAIN"
  # shellcheck source=/dev/null
  . "$TOOLCHAIN/env.sh"
  export CUDA_COMPUTE_CAP="$CAP"
  features=(--features cuda)
fi

start=$(date +%s)
nice -n "${NICE:-10}" cargo build --release --locked --target "$AARCH64_TARGET" "${features[@]}" -p dgx-music \
  --manifest-path "$REPO/Cargo.toml"
built="$CARGO_TARGET_DIR/$AARCH64_TARGET/release/dgx-music"

DIST="$CARGO_TARGET_DIR/dist"
mkdir -p "$DIST"
if [ "$KIND" = cuda ]; then OUT_BIN="$DIST/dgx-music-cuda-sm$CAP-aarch64"; else OUT_BIN="$DIST/dgx-music-cpu-aarch64"; fi
cp "$built" "$OUT_BIN"
aarch64-linux-gnu-strip "$OUT_BIN"
echo "build-aarch64: $OUT_BIN ($(du -h "$OUT_BIN" | cut -f1), built in $(( $(date +%s) - start )) s)"

# The checks.
fail() { echo "build-aarch64: CHECK FAILED: $*" >&2; exit 1; }
file -b "$OUT_BIN" | grep -q 'ARM aarch64' || fail "file says: $(file -b "$OUT_BIN")"
echo "check: $(file -b "$OUT_BIN" | cut -d, -f1-2)"
dynamic="$(aarch64-linux-gnu-readelf -d -l "$OUT_BIN")"
grep -q 'Requesting program interpreter: /lib/ld-linux-aarch64.so.1' <<<"$dynamic" \
  || fail "the program interpreter is not /lib/ld-linux-aarch64.so.1"
if grep -E 'x86[-_]64|/home/|/root/|site-packages|/usr/lib/x86' <<<"$dynamic"; then
  fail "the dynamic section names a path of this build machine (above)"
fi
needed="$(sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' <<<"$dynamic" | sort | tr '\n' ' ')"
echo "check: needs $needed(no RPATH/RUNPATH, no x86_64 path)"
allowed='^(libc|libm|libgcc_s|libdl|libpthread|librt|ld-linux-aarch64|libstdc\+\+|libcuda|libnvrtc|libcurand|libcublas|libcublasLt|libcudart)\.so'
for lib in $needed; do
  grep -Eq "$allowed" <<<"$lib" || fail "unexpected library $lib"
done
if [ "$KIND" = cuda ]; then
  for lib in libcuda.so.1 libcublas.so.13 libcudart.so.13; do
    grep -q "$lib" <<<"$needed" || fail "a CUDA build must link $lib"
  done
  # candle embeds its kernels (and ours) as PTX text; `.target` says what each was compiled for.
  targets="$(strings -n 8 "$OUT_BIN" | sed -n 's/^\.target[[:space:]]\+\([a-z_0-9]*\).*/\1/p' | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
  # What candle's kernel build (cudaforge) makes of CAP: above 120 a family target, 90 to 120
  # architecture-specific, below 90 plain.
  if [ "$CAP" -gt 120 ]; then want="sm_${CAP}f"; elif [ "$CAP" -ge 90 ]; then want="sm_${CAP}a"; else want="sm_$CAP"; fi
  echo "check: embedded PTX modules by target:$targets"
  [ -n "$targets" ] || fail "no PTX found in the binary"
  others="$(strings -n 8 "$OUT_BIN" | sed -n 's/^\.target[[:space:]]\+\([a-z_0-9]*\).*/\1/p' | sort -u | grep -vx "$want" || true)"
  [ -z "$others" ] || fail "PTX for $others, expected only $want"
  # libmoe.a's kernels are cubins (machine code), listed by cuobjdump.
  command -v cuobjdump >/dev/null \
    || fail "no cuobjdump in $TOOLCHAIN: remove $TOOLCHAIN/env.sh and run this again (tools/cuda-toolchain.sh installs it)"
  listing="$(cuobjdump --list-elf "$OUT_BIN")" || fail "cuobjdump cannot read $OUT_BIN"
  cubins="$(grep -o 'sm_[0-9]*[af]*' <<<"$listing" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
  echo "check: cubins by architecture (cuobjdump):${cubins:- none}"
  others="$(grep -o 'sm_[0-9]*[af]*' <<<"$listing" | sort -u | grep -vxE "sm_${CAP}[af]?" || true)"
  [ -z "$others" ] || fail "cubins for $others, expected only sm_$CAP"
fi
echo "build-aarch64: checks passed"
