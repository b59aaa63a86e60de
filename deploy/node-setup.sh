#!/usr/bin/env bash
# node-setup.sh: prepare a mail-store node (Dovecot, DBMail, …) to sit
# behind atoll. Run as root on each node; idempotent. See
# docs/operations.md, "Node-side setup".
#
#   deploy/node-setup.sh -i eth0 -v 203.0.113.11 -v 2001:db8:f::11 \
#       -l 198.51.100.1 -l 198.51.100.2 [-m decap|tunnel|l2dsr] [-n]
#
#   -i IFACE   the interface atoll's packets arrive on
#   -v VIP     a VIP this node serves (repeat): put on lo, never ARPed for
#   -l LB      an LB host's own address (repeat): the only accepted tunnel
#              sources (atoll's dataplane.source_v4/source_v6)
#   -m MODE    decap (default): XDP decapsulation with `atoll decap`
#                (kernels without ipip/ip6tnl, or for speed);
#              tunnel: the kernel's ipip/ip6tnl devices in external mode;
#              l2dsr: no tunnel (the node shares the LB's L2 segment)
#   -n         print what would be done, change nothing
set -euo pipefail

iface= mode=decap dry=
vips=() lbs=()
while getopts "i:v:l:m:nh" o; do
	case $o in
	i) iface=$OPTARG ;;
	v) vips+=("$OPTARG") ;;
	l) lbs+=("$OPTARG") ;;
	m) mode=$OPTARG ;;
	n) dry=1 ;;
	*) sed -n '2,19p' "$0"; exit 2 ;;
	esac
done
[[ -n $iface && ${#vips[@]} -gt 0 ]] || { sed -n '2,19p' "$0"; exit 2; }
[[ $mode == decap || $mode == tunnel || $mode == l2dsr ]] || { echo "node-setup: -m decap, tunnel or l2dsr" >&2; exit 2; }
[[ $mode == l2dsr || ${#lbs[@]} -gt 0 ]] || { echo "node-setup: -l LB is needed for $mode" >&2; exit 2; }

run() {
	echo "+ $*"
	[[ -n $dry ]] || "$@"
}

# 1. The VIPs on lo, so the node's services accept and answer them, and
#    replies leave from the VIP straight to the client (direct server
#    return). /32 and /128: lo must not claim the whole prefix.
for v in "${vips[@]}"; do
	if [[ $v == *:* ]]; then p=$v/128; else p=$v/32; fi
	if ! ip addr show dev lo | grep -qw "$p"; then
		run ip addr add "$p" dev lo
	fi
done

# 2. Never answer ARP for the VIPs (only the LB host, or the router, may
#    attract them), and never use them as the source of ARP requests.
run sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
run sysctl -qw "net.ipv4.conf.$iface.arp_ignore=1" "net.ipv4.conf.$iface.arp_announce=2"

# 3. Reverse-path filtering: packets arrive with the client's source on
#    the tunnel (or on iface for l2dsr) while the route back to the client
#    may use another interface: loose mode (2) accepts them.
run sysctl -qw net.ipv4.conf.all.rp_filter=2 "net.ipv4.conf.$iface.rp_filter=2"

# 4. Decapsulation.
srcs=()
for l in "${lbs[@]}"; do srcs+=(-source "$l"); done
case $mode in
decap)
	# Pinned under /sys/fs/bpf/atoll/decap/IFACE: survives this script.
	# deploy/systemd/atoll-decap@.service does the same at boot.
	mountpoint -q /sys/fs/bpf || run mount -t bpf bpf /sys/fs/bpf
	run atoll decap -i "$iface" "${srcs[@]}"
	;;
tunnel)
	run modprobe ipip
	run modprobe ip6_tunnel
	ip link show ipip0 >/dev/null 2>&1 || run ip link add ipip0 type ipip external
	ip link show ip6tnl0 >/dev/null 2>&1 || run ip link add ip6tnl0 type ip6tnl mode any external
	run ip link set ipip0 up
	run ip link set ip6tnl0 up
	run sysctl -qw net.ipv4.conf.ipip0.rp_filter=0
	echo "node-setup: the kernel's tunnel devices accept IP-in-IP from anyone: filter protocol 4 and 41 to ${lbs[*]} in your firewall"
	;;
l2dsr) ;;
esac

# 5. MSS: encapsulation adds 20 (IPv4) / 40 (IPv6) bytes between LB and
#    node; if that segment cannot take a larger MTU, clamp the MSS of the
#    node's replies (or raise the MTU on the LB<->node links instead).
echo "node-setup: done. Check with: ip addr show dev lo; atoll decap -i $iface -stats (decap mode)"
