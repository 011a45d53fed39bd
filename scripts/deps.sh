#!/usr/bin/env bash
# Installs what building and testing Ambit needs on Debian 12, skipping what
# is already there. Run as root (the tests build network namespaces).
set -euo pipefail

packages=(
    iproute2      # ip: namespaces, links, rules, routes (tests and harness)
    nftables      # nft: the text backend of ambit-redirect and test checks
    iptables      # iptables-restore: the iptables backend
    ipset         # ipset: cross-checks of the netlink codec, benchmark baseline
    libnftnl-dev  # the optional in-process nftables backend (feature nftnl)
    libmnl-dev
    pkg-config
    strace        # captures of iproute2's netlink requests (tunnel golden tests)
    containernetworking-plugins  # bridge + host-local: the real CNI chain in cni-node tests
    make
    clang         # builds the eBPF capture programs (ambit-redirect feature ebpf)
    linux-libc-dev  # the kernel UAPI headers those programs include
)

if [ "$(id -u)" -ne 0 ]; then
    echo "deps: run as root: the tests create network namespaces" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi

if ! command -v cargo >/dev/null; then
    echo "deps: cargo not found; install a Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi
