//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bench.c: programs for BPF_PROG_RUN benchmarks only, never attached.
 *
 * xdp_baseline is the yardstick: parse Ethernet + IP + TCP, swap MACs,
 * XDP_TX. xdp_bench_plain is xdp_balancer, for the paths that leave the
 * packet as a next run can take it. xdp_bench runs the real balance() and
 * then undoes what it did, because with repeat > 1 the kernel does not
 * restore the packet between runs: an encapsulated packet has its outer
 * header removed and its L2 header rewritten, and for the new-flow
 * benchmark each run gets a new client port/address so that every run
 * misses conntrack. Both undo steps are switched by constants and cost a
 * few ns; the report says so. */
#include "lb.h"

/* Undo the encapsulation after each run. */
volatile const __u8 bench_restore = 0;
/* Give each run a new flow (client port, then address). */
volatile const __u8 bench_new_flows = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_seq SEC(".maps");

SEC("xdp")
int xdp_baseline(struct xdp_md *ctx)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	struct ethhdr *eth = data;
	__u8 mac[6];
	struct tcphdr *th;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > end || iph->protocol != IPPROTO_TCP)
			return XDP_PASS;
		th = (void *)iph + iph->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return XDP_PASS;
		th = (void *)(ip6 + 1);
	} else {
		return XDP_PASS;
	}
	if ((void *)(th + 1) > end || th->dest == 0)
		return XDP_PASS;
	__builtin_memcpy(mac, eth->h_dest, 6);
	__builtin_memcpy(eth->h_dest, eth->h_source, 6);
	__builtin_memcpy(eth->h_source, mac, 6);
	return XDP_TX;
}

/* Bench packets are untagged, without IPv4 options. */
static __always_inline void new_flow(struct xdp_md *ctx)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	struct ethhdr *eth = data;
	__u32 zero = 0, *seq;
	struct tcphdr *th;
	__u8 *addr_lo;

	seq = bpf_map_lookup_elem(&bench_seq, &zero);
	if (!seq || (void *)(eth + 1) > end)
		return;
	*seq += 1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		th = (void *)(iph + 1);
		addr_lo = (__u8 *)&iph->saddr + 2;
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		th = (void *)(ip6 + 1);
		addr_lo = (__u8 *)&ip6->saddr + 14;
	}
	if ((void *)(th + 1) > end)
		return;
	th->source = bpf_htons(*seq & 0xffff);
	addr_lo[0] = *seq >> 24;
	addr_lo[1] = *seq >> 16;
}

SEC("xdp")
int xdp_bench_plain(struct xdp_md *ctx)
{
	return balance(ctx);
}

SEC("xdp")
int xdp_bench(struct xdp_md *ctx)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	const __u8 restore = bench_restore;
	__u32 len = end - data;
	__u64 l2_0 = 0;
	__u32 l2_1 = 0;
	__u16 l2_2 = 0;
	int rc;

	/* Only the undo step needs the copy: the verifier knows the constant
	 * and drops it from the other wrappers, which so cost nothing but
	 * balance() itself. The 14 bytes are copied in three words (a byte
	 * copy would be 28 loads and stores per run, counted against ipip). */
	if (restore) {
		if (data + 14 > end)
			return XDP_ABORTED;
		l2_0 = *(__u64 *)data;
		l2_1 = *(__u32 *)(data + 8);
		l2_2 = *(__u16 *)(data + 12);
	}

	rc = balance(ctx);

	if (restore) {
		int grown;

		data = pkt_data(ctx);
		end = pkt_end(ctx);
		grown = (int)(end - data) - (int)len;
		if (grown > 0 && bpf_xdp_adjust_head(ctx, grown))
			return XDP_ABORTED;
		data = pkt_data(ctx);
		end = pkt_end(ctx);
		if (data + 14 > end)
			return XDP_ABORTED;
		*(__u64 *)data = l2_0;
		*(__u32 *)(data + 8) = l2_1;
		*(__u16 *)(data + 12) = l2_2;
	}
	if (bench_new_flows)
		new_flow(ctx);
	return rc;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
