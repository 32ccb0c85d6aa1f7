# DGX Music tasks; each mirrors a plain cargo command (`just --list` shows them all).
set positional-arguments

default:
    @just --list

# Generate music: just generate "ambient piano" --duration 8 -o piano.wav
generate *args:
    cargo run --release -p dgx-music -- generate "$@"

# HTTP API, job queue and web page
serve *args:
    cargo run --release -p dgx-music -- serve "$@"

# Every test of the workspace (GPU tests skip themselves without a GPU)
test *args:
    cargo test --workspace "$@"

# Speed on this machine: just bench --random-weights --model small --duration 16
bench *args:
    cargo run --release -p dgx-music -- bench "$@"

# Can this build use this machine's GPU? PASS or FAIL with the fixes
validate *args:
    cargo run --release -p dgx-music -- validate "$@"

# The CUDA 13.0 toolchain from PyPI wheels (no GPU or root needed)
cuda-toolchain *args:
    tools/cuda-toolchain.sh "$@"

# CUDA binary: 80 = PTX for every card of compute 8.0+ (GB10 too), 90 = H100/H200 only, 121 = GB10 native
build-cuda cap="80":
    tools/build-cuda.sh {{cap}}

# GPU tests with the CUDA build (they skip themselves, saying so, where no GPU is usable)
test-cuda cap="80":
    tools/build-cuda.sh {{cap}} --tests
    "${CARGO_TARGET_DIR:-target-cuda}/dist/gpu-tests-sm{{cap}}-$(uname -m)" --test-threads=1

# aarch64 (DGX Spark) from x86-64: just build-aarch64 cpu | just build-aarch64 cuda 121
build-aarch64 *args:
    tools/build-aarch64.sh "$@"

# The engine and CLI tests for aarch64 under qemu-user
test-aarch64 *args:
    tools/test-aarch64.sh "$@"

# Release archives for x86_64 and aarch64 (CPU, CUDA sm80, CUDA sm121)
release *args:
    tools/release.sh "$@"
