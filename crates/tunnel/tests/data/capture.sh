#!/bin/sh
# Regenerates the golden netlink captures in this directory.
#
# Each capture is the RTM_NEWLINK request that iproute2 sends for one
# `ip link add ...` command, recorded with
#
#     unshare -n strace -f -e trace=sendmsg -e write=3 -xx -s 4096 ip link add ...
#
# `unshare -n` runs `ip` in a fresh, empty network namespace, so the host is
# never touched. `-e write=3` makes strace print a full hex dump of the bytes
# written to the netlink socket (fd 3) below its decoded view; the tests parse
# that hex dump. On a kernel without CONFIG_GENEVE the geneve commands fail
# with "Unknown device type" after the request was sent, which is all we need.
# Needs root, strace and iproute2. Recorded with iproute2-6.1.0 (Debian 12).
set -u
cd "$(dirname "$0")"
cap() {
    out=$1; shift
    {
        echo "# command: ip $*"
        echo "# iproute2: $(ip -V)"
        unshare -n strace -f -e trace=sendmsg -e write=3 -xx -s 4096 ip "$@" 2>&1
    } > "$out"
}
cap geneve-v4.strace        link add gnv4 type geneve id 1000 remote 10.244.0.2 dstport 6081
cap geneve-v6.strace        link add gnv6 type geneve id 1001 remote fd00::2 dstport 6082
cap geneve-ttl.strace       link add gnttl type geneve id 42 remote 10.0.0.1 ttl 64 dstport 6081
cap geneve-inherit.strace   link add gninh type geneve id 43 remote 10.0.0.1 ttl inherit dstport 7000
cap geneve-csum.strace      link add gncsum type geneve id 7 remote fd00::2 dstport 6081 udpcsum udp6zerocsumtx udp6zerocsumrx
cap geneve-nocsum.strace    link add istioin type geneve id 1000 remote 10.244.0.5 dstport 6081 noudpcsum noudp6zerocsumtx udp6zerocsumrx
cap vxlan-v4.strace         link add vx4 type vxlan id 1000 remote 10.244.0.2 dstport 6081
cap vxlan-local.strace      link add vxl type vxlan id 1001 remote 10.0.0.2 local 10.0.0.1 dstport 4789 ttl 64
cap vxlan-v6.strace         link add vx6 type vxlan id 5 remote fd00::2 local fd00::1 dstport 4789 udp6zerocsumtx udp6zerocsumrx
cap vxlan-csum.strace       link add vxc type vxlan id 6 remote 10.0.0.2 dstport 4790 ttl inherit udpcsum
