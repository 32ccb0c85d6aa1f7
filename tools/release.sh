#!/usr/bin/env bash
# Release archives, one per machine kind a user downloads for:
#
#   tools/release.sh [FLAVOUR...]     (default: all five)
#
#   x86_64-cpu           any x86-64 Linux, no GPU (AVX2 kernels where the CPU has them)
#   x86_64-cuda-sm80     x86-64 with an NVIDIA GPU of compute 8.0 or newer (compute_80 PTX)
#   aarch64-cpu          any aarch64 Linux, no GPU (NEON kernels)
#   aarch64-cuda-sm80    aarch64 with a GPU of compute 8.0 or newer (GH200, GB10 through the PTX JIT)
#   aarch64-cuda-sm121   the DGX Spark's GB10, native (sm_121f)
#
# Each is dgx-music-<version>-<flavour>.tar.gz holding one folder of the same name: the stripped
# binary `dgx-music`, README.md, LICENSE, THIRD-PARTY.md (the bundled C libraries' licences: LAME is
# LGPL), SHA256SUMS of those, and in the aarch64 CUDA ones the
# DGX Spark Dockerfile (docker/spark/Dockerfile). RELEASE_DIR (default <repo>/target/release-archives)
# also gets SHA256SUMS over the archives. Archives are reproducible: sorted, owner 0, times and
# gzip header from the last commit.
#
# The builds are tools/build-cuda.sh and tools/build-aarch64.sh (which install their toolchains) and
# `cargo build --release` for x86_64-cpu, each with its usual target directory unless CARGO_TARGET_DIR
# is set. Every binary's architecture is checked with `file`; the CPU ones are run (`--version`,
# the aarch64 one under qemu) and must print the version being released.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

all=(x86_64-cpu x86_64-cuda-sm80 aarch64-cpu aarch64-cuda-sm80 aarch64-cuda-sm121)
flavours=("$@")
[ "${#flavours[@]}" -gt 0 ] || flavours=("${all[@]}")
for f in "${flavours[@]}"; do
  [[ " ${all[*]} " == *" $f "* ]] || { echo "release: unknown flavour '$f'; one of: ${all[*]}" >&2; exit 2; }
done

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
[ -n "$version" ] || { echo "release: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
[ -f LICENSE ] || { echo "release: LICENSE is missing" >&2; exit 1; }
out="${RELEASE_DIR:-$REPO/target/release-archives}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
epoch="$(git log -1 --format=%ct 2>/dev/null || date +%s)"

# The binary for one flavour: built, then its path printed (everything else to stderr).
build() {
  local dir
  case "$1" in
    x86_64-cpu)
      dir="${CARGO_TARGET_DIR:-$REPO/target}"
      CARGO_TARGET_DIR="$dir" nice -n "${NICE:-10}" cargo build --release --locked -p dgx-music >&2
      echo "$dir/release/dgx-music" ;;
    x86_64-cuda-sm80)
      tools/build-cuda.sh 80 >&2
      echo "${CARGO_TARGET_DIR:-$REPO/target-cuda}/dist/dgx-music-cuda-sm80-x86_64" ;;
    aarch64-cpu)
      tools/build-aarch64.sh cpu >&2
      echo "${CARGO_TARGET_DIR:-$REPO/target-aarch64}/dist/dgx-music-cpu-aarch64" ;;
    aarch64-cuda-sm*)
      tools/build-aarch64.sh cuda "${1#aarch64-cuda-sm}" >&2
      echo "${CARGO_TARGET_DIR:-$REPO/target-aarch64}/dist/dgx-music-cuda-${1#aarch64-cuda-}-aarch64" ;;
  esac
}

for flavour in "${flavours[@]}"; do
  echo "release: building $flavour" >&2
  bin="$(build "$flavour")"
  arch="${flavour%%-*}"
  want="$([ "$arch" = x86_64 ] && echo 'x86-64' || echo 'ARM aarch64')"
  file -b "$bin" | grep -q "$want" || { echo "release: $bin is not $want: $(file -b "$bin")" >&2; exit 1; }
  if [[ "$flavour" == *-cpu ]]; then
    runner=()
    if [ "$arch" = aarch64 ] && [ "$(uname -m)" != aarch64 ]; then
      # shellcheck source=tools/aarch64-env.sh
      . tools/aarch64-env.sh
      AARCH64_NEED_QEMU=1 aarch64_setup
      runner=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
    fi
    said="$("${runner[@]}" "$bin" --version)"
    [ "$said" = "dgx-music $version" ] || { echo "release: $bin says '$said', not 'dgx-music $version'" >&2; exit 1; }
  fi

  name="dgx-music-$version-$flavour"
  stage="$(mktemp -d)"
  mkdir "$stage/$name"
  install -m 0755 "$bin" "$stage/$name/dgx-music"
  install -m 0644 README.md LICENSE THIRD-PARTY.md "$stage/$name/"
  if [[ "$flavour" == aarch64-cuda-* ]]; then install -m 0644 docker/spark/Dockerfile "$stage/$name/"; fi
  (cd "$stage/$name" && sha256sum -- * > SHA256SUMS)
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -C "$stage" -cf - "$name" \
    | gzip -n -9 > "$out/$name.tar.gz"
  rm -rf "$stage"
  echo "release: $out/$name.tar.gz ($(du -h "$out/$name.tar.gz" | cut -f1))"
done
(cd "$out" && sha256sum -- dgx-music-"$version"-*.tar.gz > SHA256SUMS)
echo "release: archives and SHA256SUMS in $out"
