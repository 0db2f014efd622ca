#!/bin/sh
# Installs the Debian packages kiln drives (run as root on Debian bookworm). Idempotent.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (or with sudo)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q

# qemu-system-x86 and qemu-utils must come from the same release: a qemu-utils from
# backports breaks qemu-system-common, so both are pinned to qemu-system-x86's candidate.
qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
if [ -z "$qemu_version" ] || [ "$qemu_version" = "(none)" ]; then
    echo "install-deps: qemu-system-x86 is not available from apt" >&2
    exit 1
fi

apt-get install -y -q --no-install-recommends --allow-downgrades \
    mmdebstrap debian-archive-keyring ca-certificates \
    e2fsprogs dosfstools mtools erofs-utils \
    grub-common grub-pc-bin grub-efi-amd64-bin ovmf \
    "qemu-system-x86=$qemu_version" "qemu-utils=$qemu_version" \
    gdisk libcap2-bin kmod xz-utils pigz gcc libc6-dev \
    make binutils bc bison flex perl libelf-dev libssl-dev minisign strace shellcheck

# Debian's kernel source (138 MB), for recipes/source-kernel.toml and the slow kernel test
# that KILN_KERNEL_TESTS=1 turns on; the toolchain to build it is in the list above.
if [ "${KILN_KERNEL_TESTS:-0}" = 1 ] || [ "${KILN_KERNEL_SOURCE:-0}" = 1 ]; then
    apt-get install -y -q --no-install-recommends linux-source-6.1
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo is not installed; kiln needs a Rust toolchain (rustup, Rust 1.87 or later)" >&2
    exit 1
fi
