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

# QEMU comes from bookworm-backports, all of it, on every machine.  The machines this runs on
# come with qemu-utils 10 from bookworm-backports preinstalled, and that qemu-utils Breaks
# qemu-system-common < 8.0: bookworm's QEMU 7.2 cannot be installed beside it, and apt's
# only way out would be to remove qemu-utils.  Naming the suite for each QEMU package keeps
# the set consistent, whether the machine has QEMU 10, 7.2 from an earlier run, or none.
qemu_suite=bookworm-backports
qemu_pkgs=(qemu-system-x86 qemu-system-common qemu-system-data qemu-utils seabios)
# rpm: `rpm -qp`/rpm2cpio inspect what `cargo xtask dist` packs; file: says a binary is
# static; python3-venv: the venv of the reports' validators (below).
pkgs=(busybox-static e2fsprogs cpio xz-utils zstd pahole kmod gcc make
      bc bison flex libelf-dev libssl-dev dwarves patch time util-linux
      rpm file python3-venv
      librsvg2-bin   # rsvg-convert: the reports test renders timeline.svg as a viewer would
      # The real ploop client (OpenVZ's tools 1.15, before the 2020 sync-fd change) that the
      # live tests, the demo and the bench run in guests on the model driver; parted and
      # e2fsprogs are the helpers libploop runs (xtask/src/client.rs copies them in).
      ploop libploop1 parted)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
missing=()
for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
# QEMU older than 8 is bookworm's: replace the whole set with the backports one.
qemu_version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
if ! installed qemu-system-x86 || ! dpkg --compare-versions "$qemu_version" ge 1:8.0; then
  for p in "${qemu_pkgs[@]}"; do missing+=("$p/$qemu_suite"); done
fi
# apt lists are refreshed at most once a day by this script; kernel resolution needs them.
if [ ! -e "$cache/apt-updated" ] || [ -n "$(find "$cache/apt-updated" -mmin +1440)" ] || [ ${#missing[@]} -gt 0 ]; then
  say "apt-get update"
  apt-get update -q >/dev/null
  touch "$cache/apt-updated"
fi

# Resolves the whole set at once before touching anything.  apt's own refusal ("generated
# breaks") names neither the culprit nor a way out; this does both, and never lets apt
# resolve a conflict by removing packages the machine came with.
apt_preflight() {
  local out rc=0 removed blockers names p held
  out=$(LC_ALL=C apt-get install --simulate --no-install-recommends "$@" 2>&1) || rc=$?
  removed=$(printf '%s\n' "$out" | sed -n 's/^Remv \([^ ]*\) .*/\1/p' | tr '\n' ' ')
  if [ "$rc" = 0 ] && [ -z "$removed" ]; then return 0; fi
  printf 'setup: error: apt cannot install the packages ploop-verify needs as this machine stands.\n' >&2
  if [ -n "$removed" ]; then
    printf '  apt would remove installed packages to do it: %s\n' "$removed" >&2
    names=$removed
  else
    # The block after "have unmet dependencies:" is apt's own account: " pkg : Breaks: other ..."
    blockers=$(printf '%s\n' "$out" | sed -n '/unmet dependencies:/,/^E:/p' | sed '1d;/^E:/d')
    printf '%s\n' "$blockers" | sed 's/^ */  /' >&2
    names=$(printf '%s\n' "$blockers" | sed -n 's/^ *\([^ ]*\) : .*/\1/p'
            printf '%s\n' "$blockers" | sed -n 's/.*\(Breaks\|Depends\|Conflicts\): \([^ ]*\).*/\2/p')
    names=$(printf '%s\n' "$names" | sed '/^$/d' | sort -u | tr '\n' ' ')
    [ -n "$blockers" ] || printf '%s\n' "$out" | grep '^E:' | sed 's/^/  /' >&2
  fi
  printf '  installed and candidate versions of the packages involved:\n' >&2
  for p in $names; do
    printf '    %-24s installed %-36s candidate %s\n' "$p" \
      "$(installed "$p" && dpkg-query -W -f='${Version}' "$p" || echo none)" \
      "$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: //p')" >&2
  done
  held=$(apt-mark showhold 2>/dev/null | tr '\n' ' ')
  [ -z "$held" ] || printf '  held packages (apt-mark unhold them, or install by hand): %s\n' "$held" >&2
  cat >&2 <<EOM
  What to do: ploop-verify takes QEMU (${qemu_pkgs[*]}) from $qemu_suite only.
  Bring the packages named above to one suite, e.g.
    apt-get install -t $qemu_suite ${qemu_pkgs[*]}
  or remove the ones you do not need, then run this script again.  Nothing was installed.
EOM
  exit 1
}

if [ ${#missing[@]} -gt 0 ]; then
  apt_preflight "${missing[@]}"
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
  LLVM_PREFIX="$prefix" cargo +"$ebpf_toolchain" install --quiet bpf-linker --version "$bpf_linker_version" \
    --locked --force --no-default-features --features "llvm-$llvm_major"
fi

# --- Packagers for `cargo xtask dist`, and cargo-fuzz --------------------------------------
# Pinned, built with the host toolchain from their lock files. Checked by version, so a second
# run builds nothing.
cargo_tool() { # $1 crate, $2 version, $3 the binary's --version output to expect
  if ! "$1" --version 2>/dev/null | grep -qF "$3"; then
    say "building $1 $2 (about a minute)"
    cargo +"$host_toolchain" install --quiet --locked "$1" --version "$2"
  fi
}
cargo_tool cargo-deb 3.8.0 "3.8.0"
cargo_tool cargo-generate-rpm 0.21.1 "0.21.1"
# The image reader's coverage-guided fuzzing (tests/fuzz.rs) runs with the pinned nightly.
cargo_tool cargo-fuzz 0.13.2 "0.13.2"

# --- The reports' consumers: KCIDB's validator and junitparser ------------------------------
# A venv of pinned packages from PyPI (scripts/requirements-ci.txt); reinstalled only when that
# list changes (its copy in the venv says what is installed).
venv="$build/venv"
req="$root/scripts/requirements-ci.txt"
if ! cmp -s "$req" "$venv/requirements-ci.txt" || ! "$venv/bin/python" -c 'import kcidb_io, junitparser' 2>/dev/null; then
  say "creating the validators' venv ($venv)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req"
  "$venv/bin/python" -c 'import kcidb_io, junitparser'
  cp "$req" "$venv/requirements-ci.txt"
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
