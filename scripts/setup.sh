#!/usr/bin/env bash
# One idempotent setup step for ploop-verify on Debian 12 (run as root).
#
# Installs: Debian packages (QEMU, busybox, e2fsprogs, pahole, ...), the pinned Rust
# toolchains with rust-src and the musl target, bpf-linker linked against the nightly's own
# LLVM, and the Debian guest kernels (6.1 from bookworm, 6.12 from bookworm-backports) with
# their headers.  Everything downloaded is cached under target/ploop, so a second run only
# checks and takes seconds.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build="$root/target/ploop"
cache="$build/cache"
mkdir -p "$cache/debs" "$build/kernels" "$build/tools"

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs Debian packages and guest kernels"
command -v apt-get >/dev/null || die "this script expects Debian 12 (apt-get not found)"

# The toolchain versions live in rust-toolchain.toml (host side) and ebpf-toolchain (nightly
# for the eBPF target); nothing here repeats them.
host_toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
ebpf_toolchain=$(tr -d ' \n' < ebpf-toolchain)
[ -n "$host_toolchain" ] && [ -n "$ebpf_toolchain" ] || die "cannot read the pinned toolchains"

# --- Debian packages -----------------------------------------------------------------------
# bookworm-backports carries the 6.12 guest kernel (bdev_freeze/bdev_thaw).  The mirror is the
# one this machine already uses for bookworm, so no host name is invented here.
bpo=/etc/apt/sources.list.d/ploop-verify-backports.sources
if [ ! -e "$bpo" ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=$(awk '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) if($i=="bookworm"){print u; exit}}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '$1=="deb" && $3=="bookworm"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$uri" ] || die "no bookworm apt source found to derive bookworm-backports from"
  say "adding bookworm-backports ($uri)"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" > "$bpo"
  rm -f "$cache/apt-updated"
fi

pkgs=(qemu-system-x86 busybox-static e2fsprogs cpio xz-utils zstd pahole kmod gcc make
      bc bison flex libelf-dev libssl-dev dwarves patch time util-linux)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
# apt lists are refreshed at most once a day by this script; kernel resolution needs them.
if [ ! -e "$cache/apt-updated" ] || [ -n "$(find "$cache/apt-updated" -mmin +1440)" ] || [ ${#missing[@]} -gt 0 ]; then
  say "apt-get update"
  apt-get update -q >/dev/null
  touch "$cache/apt-updated"
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Rust toolchains -----------------------------------------------------------------------
command -v rustup >/dev/null || die "rustup is not installed; install it first (https://rustup.rs)"
rustup toolchain list | grep -q "^$host_toolchain" ||
  { say "installing Rust $host_toolchain"; rustup toolchain install "$host_toolchain" --profile minimal -c clippy,rustfmt; }
rustup target list --toolchain "$host_toolchain" --installed | grep -q x86_64-unknown-linux-musl ||
  rustup target add --toolchain "$host_toolchain" x86_64-unknown-linux-musl
rustup toolchain list | grep -q "^$ebpf_toolchain" ||
  { say "installing Rust $ebpf_toolchain (eBPF target)"; rustup toolchain install "$ebpf_toolchain" --profile minimal; }
rustup component list --toolchain "$ebpf_toolchain" --installed | grep -q '^rust-src' ||
  rustup component add --toolchain "$ebpf_toolchain" rust-src

# --- bpf-linker against the nightly's own LLVM ---------------------------------------------
sysroot=$(rustc +"$ebpf_toolchain" --print sysroot)
libllvm=$(cd "$sysroot/lib" && ls libLLVM.so.* 2>/dev/null | head -n1)
[ -n "$libllvm" ] || die "no libLLVM.so.* in $sysroot/lib"
llvm_major=$(rustc +"$ebpf_toolchain" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
prefix="$build/tools/llvm-$llvm_major"
mkdir -p "$prefix/lib"
ln -sfn "$sysroot/lib/$libllvm" "$prefix/lib/libLLVM.so"
ln -sfn "$sysroot/lib/$libllvm" "$prefix/lib/$libllvm"
bpf_linker_version=0.13.0
if ! bpf-linker --version 2>/dev/null | grep -q "$bpf_linker_version" || ! ldd "$(command -v bpf-linker)" | grep -q "$prefix"; then
  say "building bpf-linker $bpf_linker_version for LLVM $llvm_major (about a minute)"
  LLVM_PREFIX="$prefix" cargo +"$ebpf_toolchain" install bpf-linker --version "$bpf_linker_version" \
    --locked --force --no-default-features --features "llvm-$llvm_major"
fi

# --- Guest kernels ---------------------------------------------------------------------------
# Resolve the current ABI names from the archive: linux-image-amd64 depends on the versioned
# image (6.1 from bookworm/security; 6.12 from bookworm-backports).
resolve() { # $1 = apt target release or "" ; prints linux-image-<release>
  local t=()
  [ -n "$1" ] && t=(-t "$1")
  apt-cache "${t[@]}" depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1
}
fetch_kernel() { # $1 = target release ("" for the default)
  local img rel dir kbuild common
  img=$(resolve "$1"); [ -n "$img" ] || die "cannot resolve linux-image-amd64 ${1:+in $1}"
  rel=${img#linux-image-}
  dir="$build/kernels/$rel"
  if [ -e "$dir/.complete" ]; then say "kernel $rel: cached"; return; fi
  common=$(apt-cache depends "linux-headers-$rel" | sed -n 's/.*Depends: \(linux-headers-.*-common\)$/\1/p' | head -n1)
  kbuild=$(apt-cache depends "linux-headers-$rel" | sed -n 's/.*Depends: \(linux-kbuild-.*\)$/\1/p' | head -n1)
  say "kernel $rel: downloading $img linux-headers-$rel $common $kbuild"
  (cd "$cache/debs" && apt-get download -q -o APT::Sandbox::User=root "$img" "linux-headers-$rel" "$common" "$kbuild" >/dev/null)
  rm -rf "$dir"; mkdir -p "$dir/root"
  for deb in "$cache/debs/${img}_"*.deb "$cache/debs/linux-headers-${rel}_"*.deb \
             "$cache/debs/${common}_"*.deb "$cache/debs/${kbuild}_"*.deb; do
    dpkg-deb -x "$deb" "$dir/root"
  done
  # The -amd64 headers include the -common tree by its installed absolute path; point them
  # at the unpacked copy so out-of-tree modules build without installing anything.
  local hdr="$dir/root/usr/src/linux-headers-$rel"
  sed -i "s|/usr/src/$common|$dir/root/usr/src/$common|g" "$hdr/Makefile"
  for l in scripts tools; do
    [ -L "$hdr/$l" ] && ln -sfn "$dir/root/usr/lib/$kbuild/$l" "$hdr/$l"
  done
  ln -sfn "root/boot/vmlinuz-$rel" "$dir/vmlinuz"
  ln -sfn "root/lib/modules/$rel" "$dir/modules"
  ln -sfn "root/usr/src/linux-headers-$rel" "$dir/headers"
  echo "$img" > "$dir/.complete"
  say "kernel $rel: ready in ${dir#$root/}"
}
fetch_kernel ""
fetch_kernel bookworm-backports

say "done. Next: cargo xtask demo   (see README.md)"
