#!/usr/bin/env bash
# Prepares the kernel matrix (tests/kernel_matrix.rs): QEMU, Debian 12's own
# kernels 6.1 and 6.12, a static busybox, static test targets, the static
# (musl) coresnap, and one initramfs per kernel. Everything fetched or built
# lands in $VMLAB_DIR (default target/vmlab); a second run reuses it.
#
#   tests/vm/setup.sh            (as root, from anywhere)
#
# Changes to the machine, only when missing: qemu-system-x86 from
# bookworm-backports (through a private APT_CONFIG under $VMLAB_DIR/apt;
# /etc/apt is not touched), musl-tools, gcc, libc6-dev, xz-utils, zstd, and
# rustup's x86_64-unknown-linux-musl target. The kernels and busybox are
# downloaded with `apt-get download` and unpacked, never installed.
# Delete $VMLAB_DIR to fetch the newest kernels again. CORESNAP_VM_NO_BUILD=1
# uses the static coresnap already built (when iterating on the guest side).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB=${VMLAB_DIR:-$REPO/target/vmlab}
MUSL_TARGET=x86_64-unknown-linux-musl
CORESNAP_MUSL=$REPO/target/$MUSL_TARGET/release/coresnap
# Kernel series of the matrix: "series meta-package" (the meta-package's
# linux-image-* dependency is the kernel that is downloaded).
KERNELS=("6.1 linux-image-amd64" "6.12 linux-image-6.12-amd64")
# Modules the guest needs for its 9p share, in load order after their
# dependencies (added automatically); the ones built in are not found and
# skipped.
MODULES="virtio_pci 9pnet_virtio 9p"
TARGETS="regs threads memory sparse crasher busy"

t0=$(date +%s)
step() { echo "vm-setup [$(($(date +%s) - t0)) s] $*"; }
die() { echo "vm-setup: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and the tests ptrace)"
mkdir -p "$LAB"/{debs,bin,apt}
export DEBIAN_FRONTEND=noninteractive

# ------------------------------------------------------------ apt, privately
# bookworm, its updates, security and backports, with lists and cache of our
# own. The image's qemu-utils comes from bookworm-backports and Breaks
# bookworm's qemu-system-common 7.2, so QEMU comes from backports too.
APT_CONF=$LAB/apt/apt.conf
private_apt_ready=0
private_apt() {
    if [ $private_apt_ready = 0 ]; then
        mkdir -p "$LAB"/apt/{lists/partial,cache/archives/partial,sources}
        cat >"$LAB/apt/sources/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        cat >"$APT_CONF" <<EOF
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$LAB/apt/sources";
Dir::State::Lists "$LAB/apt/lists";
Dir::Cache "$LAB/apt/cache";
APT::Sandbox::User "root";
EOF
        if ! ls "$LAB"/apt/lists/*_Packages* >/dev/null 2>&1; then
            step "apt-get update (private lists in $LAB/apt)"
            APT_CONFIG=$APT_CONF apt-get update -qq || die "apt-get update failed: is deb.debian.org reachable?"
        fi
        private_apt_ready=1
    fi
    APT_CONFIG=$APT_CONF "$@"
}

# ------------------------------------------------------------ host tools
if ! command -v qemu-system-x86_64 >/dev/null; then
    step "installing qemu-system-x86 from bookworm-backports"
    private_apt apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null ||
        die "could not install qemu-system-x86 (see apt's message above)"
fi
missing=()
command -v musl-gcc >/dev/null || missing+=(musl-tools)
command -v gcc >/dev/null || missing+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
command -v xz >/dev/null || missing+=(xz-utils)
command -v zstd >/dev/null || missing+=(zstd)
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    private_apt apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "could not install ${missing[*]}"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx $MUSL_TARGET; then
    step "rustup target add $MUSL_TARGET"
    rustup target add $MUSL_TARGET || die "rustup target add $MUSL_TARGET failed"
fi

# ------------------------------------------------------------ downloads
# One line per kernel in kernels.txt: "series package"; resolved once.
if [ ! -s "$LAB/kernels.txt" ]; then
    : >"$LAB/kernels.txt.tmp"
    for k in "${KERNELS[@]}"; do
        read -r series meta <<<"$k"
        pkg=$(private_apt apt-cache depends "$meta" | awk '/Depends: linux-image-/ {print $2; exit}')
        [ -n "$pkg" ] || die "cannot resolve $meta to a linux-image package"
        echo "$series $pkg" >>"$LAB/kernels.txt.tmp"
    done
    mv "$LAB/kernels.txt.tmp" "$LAB/kernels.txt"
fi
download() { # package
    if ! ls "$LAB/debs/${1}_"*.deb >/dev/null 2>&1; then
        step "apt-get download $1"
        (cd "$LAB/debs" && private_apt apt-get download -q "$1") || die "apt-get download $1 failed"
    fi
}
download busybox-static
while read -r series pkg; do download "$pkg"; done <"$LAB/kernels.txt"

# ------------------------------------------------------------ unpack
if [ ! -x "$LAB/busybox/bin/busybox" ]; then
    rm -rf "$LAB/busybox.tmp"
    dpkg-deb -x "$LAB"/debs/busybox-static_*.deb "$LAB/busybox.tmp"
    mv "$LAB/busybox.tmp" "$LAB/busybox"
fi
BUSYBOX=$LAB/busybox/bin/busybox

# x86 bzImage -> the ELF vmlinux inside it, which QEMU boots through its PVH
# note (no firmware, no decompression in the guest: half the boot time
# under TCG). 6.1 packs it with xz, 6.12 with zstd.
extract_vmlinux() { # bzImage out
    local magic tool off
    for magic_tool in '\xfd7zXZ\x00:xz -dc' '\x28\xb5\x2f\xfd:zstd -qdc'; do
        magic=${magic_tool%%:*}
        tool=${magic_tool#*:}
        for off in $(LC_ALL=C grep -aobP "$magic" "$1" | cut -d: -f1); do
            tail -c +$((off + 1)) "$1" | $tool >"$2.tmp" 2>/dev/null || true
            if [ "$(head -c4 "$2.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
                mv "$2.tmp" "$2"
                return 0
            fi
        done
    done
    rm -f "$2.tmp"
    die "no ELF vmlinux found inside $1"
}
while read -r series pkg; do
    kdir=$LAB/kernel-$series
    if [ ! -f "$kdir/vmlinux" ]; then
        step "unpacking $pkg"
        rm -rf "$kdir"
        mkdir -p "$kdir"
        dpkg-deb -x "$LAB"/debs/"${pkg}"_*.deb "$kdir/root"
        ls "$kdir/root/lib/modules" >"$kdir/release"
        extract_vmlinux "$kdir/root/boot/vmlinuz-$(cat "$kdir/release")" "$kdir/vmlinux"
    fi
done <"$LAB/kernels.txt"

# ------------------------------------------------------------ binaries
# The targets as the host tests build them, but static: the guest has no libc.
for t in $TARGETS; do
    src=$REPO/testdata/$t.c
    if [ ! -x "$LAB/bin/$t" ] || [ "$src" -nt "$LAB/bin/$t" ]; then
        step "gcc -static $t.c"
        gcc -g -O0 -fno-omit-frame-pointer -pthread -Wall -static -o "$LAB/bin/$t.tmp" "$src"
        mv "$LAB/bin/$t.tmp" "$LAB/bin/$t"
    fi
done
if [ ! -x "$LAB/bin/pagemap-scan-probe" ] || [ "$HERE/pagemap-scan-probe.c" -nt "$LAB/bin/pagemap-scan-probe" ]; then
    gcc -O2 -Wall -static -o "$LAB/bin/pagemap-scan-probe" "$HERE/pagemap-scan-probe.c"
fi
if [ "${CORESNAP_VM_NO_BUILD:-0}" = 1 ] && [ -x "$CORESNAP_MUSL" ]; then
    step "using the static coresnap already built (CORESNAP_VM_NO_BUILD=1)"
else
    step "cargo build --release --target $MUSL_TARGET"
    (cd "$REPO" && cargo build --quiet --release --target $MUSL_TARGET) || die "the static build of coresnap failed"
fi
file_type=$(file -b "$CORESNAP_MUSL" 2>/dev/null || true)
case $file_type in
    *static*) ;;
    "") ;; # no file(1): the guest has no libc, so a dynamic binary fails there loudly
    *) die "$CORESNAP_MUSL is not static: $file_type" ;;
esac

# ------------------------------------------------------------ initramfs
# busybox as /bin/busybox and /init, the guest script, the binaries, the
# modules with their dependencies first. Rebuilt every run (about a second):
# coresnap changes between runs.
make_initramfs() { # series
    local kdir=$LAB/kernel-$1 root release moddir
    release=$(cat "$kdir/release")
    moddir=$kdir/root/lib/modules/$release/kernel
    root=$(mktemp -d "$LAB/.initramfs.XXXXXX")
    mkdir -p "$root"/{bin,proc,sys,dev,tmp,out,lib/modules}
    cp "$BUSYBOX" "$root/bin/busybox"
    cp "$HERE/init.sh" "$root/init"
    cp "$HERE/guest.sh" "$root/guest.sh"
    chmod 755 "$root/init"
    cp "$CORESNAP_MUSL" "$root/bin/coresnap"
    for t in $TARGETS pagemap-scan-probe; do cp "$LAB/bin/$t" "$root/bin/$t"; done
    : >"$root/lib/modules/order"
    declare -A seen=()
    add_module() { # name
        local name=$1 file deps dep
        [ -z "${seen[$name]:-}" ] || return 0
        seen[$name]=1
        file=$(find "$moddir" \( -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" \
            -o -name "${name//_/-}.ko" -o -name "${name//_/-}.ko.xz" \) | head -1)
        [ -n "$file" ] || return 0 # built into this kernel
        case $file in
            *.xz) xz -dc "$file" ;;
            *.zst) zstd -qdc "$file" ;;
            *) cat "$file" ;;
        esac >"$root/lib/modules/$name.ko"
        deps=$(tr '\0' '\n' <"$root/lib/modules/$name.ko" | sed -n 's/^depends=//p' | head -1 | tr ',' ' ')
        for dep in $deps; do add_module "$dep"; done
        echo "$name" >>"$root/lib/modules/order"
    }
    for m in $MODULES; do add_module "$m"; done
    (cd "$root" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -1 >"$LAB/initramfs-$1.cpio.gz.tmp"
    mv "$LAB/initramfs-$1.cpio.gz.tmp" "$LAB/initramfs-$1.cpio.gz"
    step "initramfs-$1: $(stat -c %s "$LAB/initramfs-$1.cpio.gz") bytes, modules: $(tr '\n' ' ' <"$root/lib/modules/order")"
    rm -rf "$root"
}
while read -r series pkg; do make_initramfs "$series"; done <"$LAB/kernels.txt"

# For the test: what to boot.
while read -r series pkg; do
    echo "$series $(cat "$LAB/kernel-$series/release") $LAB/kernel-$series/vmlinux $LAB/initramfs-$series.cpio.gz"
done <"$LAB/kernels.txt" >"$LAB/matrix.txt"
sha256sum "$CORESNAP_MUSL" | cut -d' ' -f1 >"$LAB/coresnap.sha256"
step "ready: $LAB/matrix.txt"
