/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* encap.h: IP-in-IP toward a node, any pairing of VIP and node family
 * (4in4, 6in6, 4in6, 6in4). The outer source is the LB's own address from
 * lb_config, never a synthetic one; the MACs come from bpf_fib_lookup. */
#ifndef ATOLL_ENCAP_H
#define ATOLL_ENCAP_H

#include "parse.h"
#include "csum.h"
#include "icmp.h"

#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41

/* flow_label gives the outer IPv6 header a per-flow label, so ECMP between
 * the LB and the node spreads flows: a fold of the client's address and
 * ports (maps.FlowLabel mirrors it). */
static __always_inline __u32 flow_label(const struct flow_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 l = w[0] ^ w[3] ^ w[8];

	l ^= l >> 12;
	return l & 0xfffff;
}

static __always_inline int write_l2(struct xdp_md *ctx, const struct packet *p, const struct nh_entry *nh,
				    __be16 vlan_tpid, __be16 vlan_tci, __be16 ethertype)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	struct ethhdr *eth = data;

	if ((void *)eth + 18 > end)
		return -1;
	put_macs(eth, nh->dmac);
	if (p->vlan) {
		struct vlan_hdr_ *vh = (void *)(eth + 1);

		eth->h_proto = vlan_tpid;
		vh->tci = vlan_tci;
		vh->proto = ethertype;
	} else {
		eth->h_proto = ethertype;
	}
	return 0;
}

static __always_inline int encap(struct xdp_md *ctx, const struct packet *p, const struct backend *be,
				 const struct nh_entry *nh)
{
	__u32 zero = 0, outer, l2 = p->vlan ? 18 : 14;
	struct lb_config *cfg;
	__be16 tpid = 0, tci = 0;
	void *data, *end;
	int inner_v4 = p->key.family == FAMILY_V4;
	__u8 tos, df;

	if (ip_tos_df(ctx, p, &tos, &df)) {
		count(STAT_DROP_MALFORMED);
		return XDP_DROP;
	}
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		goto no_source;
	outer = be->family == FAMILY_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	if (p->l3_len + outer > nh->mtu)
		return too_big(ctx, p, nh->mtu - outer, df);

	if (p->vlan) {
		struct ethhdr *eth = pkt_data(ctx);
		struct vlan_hdr_ *vh = (void *)(eth + 1);

		if ((void *)(vh + 1) > pkt_end(ctx))
			goto headroom;
		tpid = eth->h_proto;
		tci = vh->tci;
	}

	if (be->family == FAMILY_V4) {
		__u32 src = *(__u32 *)cfg->src4, w[5];
		struct iphdr *oh;

		if (!src)
			goto no_source;
		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(*oh)))
			goto headroom;
		if (write_l2(ctx, p, nh, tpid, tci, bpf_htons(ETH_P_IP)))
			goto headroom;
		data = pkt_data(ctx);
		end = pkt_end(ctx);
		oh = data + l2;
		if ((void *)(oh + 1) > end)
			goto headroom;
		/* The header as its five 32-bit words (little-endian host),
		 * summed for the checksum in registers: summed back from the
		 * packet, field by field stores would stall the loads on store
		 * forwarding (~12% of an ipip packet's time). Version 4, IHL 5,
		 * id 0. RFC 2003: DF is copied from an IPv4 inner packet; IPv6
		 * is never fragmented on the way. */
		w[0] = 0x45 | (__u32)tos << 8 | (__u32)bpf_htons(p->l3_len + sizeof(*oh)) << 16;
		w[1] = (!inner_v4 || df) ? (__u32)bpf_htons(IP_DF_) << 16 : 0;
		w[2] = OUTER_TTL | (__u32)(inner_v4 ? IPPROTO_IPIP_ : IPPROTO_IPV6_) << 8;
		w[3] = src;
		__builtin_memcpy(&w[4], be->addr, 4);
		w[2] |= (__u32)csum_fold((__u64)w[0] + w[1] + w[2] + w[3] + w[4]) << 16;
		__builtin_memcpy(oh, w, sizeof(w));
	} else {
		struct ipv6hdr *oh;
		__u32 label = flow_label(&p->key);
		const __u32 *s6 = (const __u32 *)cfg->src6;

		if (!(s6[0] | s6[1] | s6[2] | s6[3]))
			goto no_source;
		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(*oh)))
			goto headroom;
		if (write_l2(ctx, p, nh, tpid, tci, bpf_htons(ETH_P_IPV6)))
			goto headroom;
		data = pkt_data(ctx);
		end = pkt_end(ctx);
		oh = data + l2;
		if ((void *)(oh + 1) > end)
			goto headroom;
		/* The first eight bytes as two words: version, traffic class
		 * (the inner TOS) and flow label; payload length, next header
		 * and hop limit (little-endian host). */
		((__u32 *)oh)[0] = bpf_htonl(6 << 28 | (__u32)tos << 20 | label);
		((__u32 *)oh)[1] = (__u32)bpf_htons(p->l3_len) | (__u32)(inner_v4 ? IPPROTO_IPIP_ : IPPROTO_IPV6_) << 16 |
				   (__u32)OUTER_TTL << 24;
		__builtin_memcpy(&oh->saddr, cfg->src6, 16);
		__builtin_memcpy(&oh->daddr, be->addr, 16);
	}
	return CONTINUE;
no_source:
	count(STAT_DROP_NO_SOURCE);
	return XDP_DROP;
headroom:
	count(STAT_DROP_HEADROOM);
	return XDP_DROP;
}

#endif
