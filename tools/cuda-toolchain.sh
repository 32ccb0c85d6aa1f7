#!/usr/bin/env bash
# Reproducible CUDA 13.0 build toolchain from PyPI wheels: no GPU, no driver and no root needed.
#
#   tools/cuda-toolchain.sh [--target aarch64] [DIR]
#                         (default DIR: $DGX_CUDA_HOME, else ~/.local/share/dgx-music/cuda-13.0)
#
# Leaves DIR/venv (the wheels) and DIR/root, a CUDA root laid out the way candle's and cudarc's build
# scripts expect it, plus DIR/env.sh to source before `cargo build --features cuda`
# (tools/build-cuda.sh does that for you). Runs on x86_64 and aarch64 Linux alike: pip picks the wheel
# for the machine it runs on, and the stub below is compiled by the host's own C compiler.
#
# --target aarch64 (on an x86_64 host; tools/build-aarch64.sh uses it) makes a cross root: nvcc, its
# headers and nvvm stay the host's (PTX and cubins do not depend on the host), while lib/ holds the
# same versions' sbsa (aarch64) libraries, downloaded with `pip download --platform`, and the
# libcuda stub is compiled by aarch64-linux-gnu-gcc. env.sh then also points nvcc at the aarch64
# host compiler (NVCC_CCBIN) for candle's statically linked kernels.
#
# Why 13.0 exactly: cudarc 0.19 (candle 0.11) panics at build time on a CUDA version it does not know,
# and 13.0 is what the DGX Spark and the driver-580 machines ship; the PTX it emits is what those
# drivers can JIT.
set -euo pipefail

CUDA_VERSION="13.0.2"
TARGET=""
if [ "${1:-}" = --target ]; then
  TARGET="${2:-}"
  [ "$TARGET" = aarch64 ] || { echo "cuda-toolchain: --target takes aarch64 (the only cross target), not '$TARGET'" >&2; exit 2; }
  [ "$(uname -m)" = x86_64 ] || { echo "cuda-toolchain: --target aarch64 is for x86_64 hosts; on aarch64 run it without --target" >&2; exit 2; }
  shift 2
fi
DIR="${1:-${DGX_CUDA_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/dgx-music/cuda-13.0${TARGET:+-$TARGET}}}"
PYTHON="${PYTHON:-python3}"
if [ -n "$TARGET" ]; then CC="${CC_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-gcc}"; else CC="${CC:-cc}"; fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64|Linux-aarch64) ;;
  *) echo "cuda-toolchain: unsupported platform $(uname -s)-$(uname -m); NVIDIA publishes the CUDA wheels for Linux x86_64 and aarch64 only" >&2; exit 1 ;;
esac
command -v "$PYTHON" >/dev/null || { echo "cuda-toolchain: $PYTHON not found; install Python 3.9+ or set PYTHON=" >&2; exit 1; }
command -v "$CC" >/dev/null || { echo "cuda-toolchain: no C compiler ($CC); install gcc (apt install build-essential) or set CC=" >&2; exit 1; }

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
VENV="$DIR/venv"
ROOT="$DIR/root"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl,crt,nvvm]==$CUDA_VERSION"
# cuobjdump, to inspect what a build embeds (tools/build-aarch64.sh's check). NVIDIA publishes it as a
# wheel only from 13.2 on; it reads binaries of any older CUDA, and nothing is built with it.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "nvidia-cuda-cuobjdump==13.2.86"

CU="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
for d in bin include lib nvvm; do
  [ -d "$CU/$d" ] || { echo "cuda-toolchain: the wheels left no $CU/$d; the cuda-toolkit $CUDA_VERSION layout changed" >&2; exit 1; }
done

# The libraries linked into the binary: the host's, or for a cross root the aarch64 wheels of the
# very versions pip installed above, unpacked (no Python on the host can import them).
LIB="$CU/lib"
if [ -n "$TARGET" ]; then
  WHEELS="$DIR/$TARGET-wheels"
  pins="$("$VENV/bin/python" -c 'import importlib.metadata as m
print(" ".join(p + "==" + m.version(p) for p in ["nvidia-cuda-runtime", "nvidia-cublas", "nvidia-curand", "nvidia-cuda-nvrtc"]))')"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 --dest "$WHEELS" $pins
  rm -rf "$DIR/$TARGET-unpacked"
  for w in "$WHEELS"/*.whl; do
    "$VENV/bin/python" -m zipfile -e "$w" "$DIR/$TARGET-unpacked"
  done
  LIB="$DIR/$TARGET-unpacked/nvidia/cu13/lib"
  [ -d "$LIB" ] || { echo "cuda-toolchain: the $TARGET wheels ($pins) left no nvidia/cu13/lib" >&2; exit 1; }
  file -L "$LIB/libcudart.so.13" | grep -q 'ARM aarch64' || { echo "cuda-toolchain: $LIB/libcudart.so.13 is not aarch64" >&2; exit 1; }
fi

# The CUDA root: the wheels' folders under the names a system install uses.
rm -rf "$ROOT"
mkdir -p "$ROOT/lib/stubs"
for d in bin include nvvm; do ln -s "$CU/$d" "$ROOT/$d"; done
# lib must be a real folder: the unversioned links and the stub may not be written into the venv.
for f in "$LIB"/*; do ln -s "$f" "$ROOT/lib/$(basename "$f")"; done
ln -s lib "$ROOT/lib64"

# The linker wants libX.so; the wheels ship only libX.so.<major>.
for lib in cudart nvrtc curand cublas cublasLt; do
  real="$(cd "$ROOT/lib" && ls "lib$lib.so."* 2>/dev/null | sort | head -n1 || true)"
  [ -n "$real" ] || { echo "cuda-toolchain: lib$lib.so.* missing from $LIB" >&2; exit 1; }
  ln -sf "$real" "$ROOT/lib/lib$lib.so"
done

# libcuda.so is the driver's library, which the wheels do not ship. The link only needs a library
# named libcuda.so.1 that defines every cu* symbol; at run time the real driver's libcuda.so.1 is
# loaded instead. The symbol list comes from the wheel's own cuda.h after the preprocessor has
# applied its _v2/_ptds renames, so it always matches the headers cudarc was generated from.
STUB_SRC="$DIR/libcuda-stub.c"
"$CC" -E -P -I "$ROOT/include" -x c - <<<'#include <cuda.h>' \
  | tr -s ' \t\n' ' ' | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u \
  | awk 'BEGIN { print "/* Link-time stand-in for the NVIDIA driver library; never loaded at run time. */" }
         { printf "int %s(void) { return 999; }\n", $1 }' > "$STUB_SRC"
n_syms="$(grep -c '^int cu' "$STUB_SRC")"
[ "$n_syms" -gt 300 ] || { echo "cuda-toolchain: only $n_syms driver symbols found in cuda.h; expected several hundred" >&2; exit 1; }
"$CC" -shared -fPIC -nostdlib -Wl,-soname,libcuda.so.1 -o "$ROOT/lib/stubs/libcuda.so" "$STUB_SRC"
ln -sf stubs/libcuda.so "$ROOT/lib/libcuda.so"

cat > "$DIR/env.sh" <<ENV
# Source this before \`cargo build --features cuda\`.
export CUDA_ROOT="$ROOT"
export CUDA_PATH="$ROOT"
export CUDA_HOME="$ROOT"
export PATH="$ROOT/bin:\$PATH"
export LIBRARY_PATH="$ROOT/lib:$ROOT/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
ENV
if [ -n "$TARGET" ]; then
  # Host code of candle's static kernels (libmoe.a) for aarch64; PTX is the same either way.
  echo "export NVCC_CCBIN=${CXX_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-g++}" >> "$DIR/env.sh"
fi

"$ROOT/bin/nvcc" --version | tail -n 2
echo "cuda-toolchain: CUDA $CUDA_VERSION${TARGET:+ (libraries for $TARGET)} ready in $DIR ($n_syms driver symbols stubbed); source $DIR/env.sh"
