//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* decap.c: the node side of ipip forwarding. Strips the outer IPv4/IPv6
 * header of an IP-in-IP (proto 4) or IPv6-in-IP (proto 41) packet and
 * passes the inner packet, addressed to the VIP on lo, up the stack. The
 * node answers the client directly from the VIP (direct server return).
 *
 * On a node whose kernel has the ipip/ip6tnl modules, a tunnel device does
 * the same job (docs/architecture.md); this program is for kernels without
 * them and is a little cheaper. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "types.h"

#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct addr_key);
	__type(value, __u32);
} decap_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DECAP_STAT_MAX);
	__type(key, enum decap_stat);
	__type(value, __u64);
} decap_stats SEC(".maps");

/* When set, only packets whose outer source is in decap_sources (the LB
 * hosts) are decapsulated; others are passed untouched. */
volatile const __u8 filter_sources = 0;

static __always_inline int verdict(__u32 reason, int action)
{
	__u64 *v = bpf_map_lookup_elem(&decap_stats, &reason);

	if (v)
		*v += 1;
	return action;
}

static __always_inline int allowed(const void *src, __u8 family)
{
	struct addr_key k = {};

	if (!filter_sources)
		return 1;
	__builtin_memcpy(k.addr, src, family == FAMILY_V4 ? 4 : 16);
	k.family = family;
	return bpf_map_lookup_elem(&decap_sources, &k) != NULL;
}

/* strip removes `outer` bytes after an L2 header of `l2` bytes. */
static __always_inline int strip(struct xdp_md *ctx, __u32 l2, __u32 outer, __be16 inner_proto)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	__u8 *src = data, *dst;

	if (outer == 20)
		dst = data + 20;
	else if (outer == 40)
		dst = data + 40;
	else
		return verdict(DECAP_MALFORMED, XDP_DROP);
	if ((void *)(dst + 18) > end)
		return verdict(DECAP_MALFORMED, XDP_DROP);
	/* The outer header is at least 20 bytes, the L2 header at most 18: the
	 * regions do not overlap. Copy back to front is not needed. */
	if (l2 == 18) {
		__builtin_memcpy(dst, src, 16);
		__builtin_memcpy(dst + 16, &inner_proto, 2);
	} else {
		__builtin_memcpy(dst, src, 12);
		__builtin_memcpy(dst + 12, &inner_proto, 2);
	}
	if (bpf_xdp_adjust_head(ctx, outer))
		return verdict(DECAP_HEADROOM, XDP_DROP);
	return verdict(DECAP_OK, XDP_PASS);
}

SEC("xdp")
int xdp_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 l2 = sizeof(*eth);
	__be16 proto;

	if ((void *)(eth + 1) > end)
		return verdict(DECAP_PASS, XDP_PASS);
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
		if (data + 18 > end)
			return verdict(DECAP_PASS, XDP_PASS);
		proto = *(__be16 *)(data + 16);
		l2 = 18;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = data + l2;
		__u8 inner;

		if ((void *)(iph + 1) > end)
			return verdict(DECAP_PASS, XDP_PASS);
		inner = iph->protocol;
		if (inner != IPPROTO_IPIP_ && inner != IPPROTO_IPV6_)
			return verdict(DECAP_PASS, XDP_PASS);
		if (!allowed(&iph->saddr, FAMILY_V4))
			return verdict(DECAP_FOREIGN, XDP_PASS);
		/* atoll never sends options or fragments: the kernel may have
		 * them, not this fast path. */
		if (iph->ihl != 5 || (iph->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_)))
			return verdict(DECAP_MALFORMED, XDP_DROP);
		return strip(ctx, l2, 20, bpf_htons(inner == IPPROTO_IPIP_ ? ETH_P_IP : ETH_P_IPV6));
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l2;
		__u8 inner;

		if ((void *)(ip6 + 1) > end)
			return verdict(DECAP_PASS, XDP_PASS);
		inner = ip6->nexthdr;
		if (inner != IPPROTO_IPIP_ && inner != IPPROTO_IPV6_)
			return verdict(DECAP_PASS, XDP_PASS);
		if (!allowed(&ip6->saddr, FAMILY_V6))
			return verdict(DECAP_FOREIGN, XDP_PASS);
		return strip(ctx, l2, 40, bpf_htons(inner == IPPROTO_IPIP_ ? ETH_P_IP : ETH_P_IPV6));
	}
	return verdict(DECAP_PASS, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
