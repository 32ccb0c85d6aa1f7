# Sourced by tools/build-aarch64.sh and tools/test-aarch64.sh: makes this x86_64 Linux machine build
# (and, under qemu-user, run) aarch64-unknown-linux-gnu binaries, installing what is missing.
#   - rustup's aarch64-unknown-linux-gnu standard library;
#   - Debian's gcc/g++-aarch64-linux-gnu: the linker and the C/C++ compiler for bundled C (SQLite,
#     onig, LAME, libvorbis, the CUDA link stub), with the aarch64 glibc under /usr/aarch64-linux-gnu;
#   - Debian's qemu-user (qemu-aarch64), the test runner (only when AARCH64_NEED_QEMU=1).
# apt runs as root, or through sudo when not root.
AARCH64_TARGET=aarch64-unknown-linux-gnu

aarch64_as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

aarch64_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

aarch64_setup() {
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    Linux-aarch64) echo "aarch64: this machine is aarch64 already; build natively (cargo build --release)" >&2; return 1 ;;
    *) echo "aarch64: cross builds are set up for Linux x86_64 hosts only, not $(uname -s)-$(uname -m)" >&2; return 1 ;;
  esac
  local packages=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)
  [ "${AARCH64_NEED_QEMU:-0}" = 1 ] && packages+=(qemu-user)
  local missing=()
  for p in "${packages[@]}"; do aarch64_installed "$p" || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || { echo "aarch64: needs Debian/Ubuntu packages ${missing[*]} (no apt-get here)" >&2; return 1; }
    aarch64_as_root apt-get update
    aarch64_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  rustup target list --installed | grep -qx "$AARCH64_TARGET" || rustup target add "$AARCH64_TARGET"

  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
  export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
  export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
  # mp3lame-sys runs LAME's own ./configure, which needs --host to cross-compile (the crate warns
  # "Cross-compilation may not be supported" and passes none without this).
  export MP3LAME_SYS_OVERRIDE_HOST=aarch64-linux-gnu
  # Tests and build scripts' probes run the aarch64 executables through qemu with the cross glibc.
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
  export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
}
