/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp.h: answer a packet that would not fit its tunnel with an ICMP
 * "fragmentation needed" (IPv4, DF set) or ICMPv6 "packet too big", sent
 * from the VIP back to the client, as a router on the path would. The
 * client's TCP lowers its MSS and resends; nothing is fragmented. */
#ifndef ATOLL_ICMP_H
#define ATOLL_ICMP_H

#include "parse.h"
#include "csum.h"

/* swap_l2 moves the L2 header `shift` bytes toward the front (after
 * bpf_xdp_adjust_head(-shift)) with source and destination MACs swapped. */
static __always_inline int swap_l2(struct xdp_md *ctx, __u32 shift, int vlan)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	__u8 *dst = data, *src;

	/* shift is 28 or 48, larger than any L2 header: no overlap. */
	if (shift == 28)
		src = data + 28;
	else
		src = data + 48;
	if ((void *)(src + 18) > end)
		return -1;
	__builtin_memcpy(dst, src + 6, 6);
	__builtin_memcpy(dst + 6, src, 6);
	__builtin_memcpy(dst + 12, src + 12, 2);
	if (vlan)
		__builtin_memcpy(dst + 14, src + 14, 4);
	return 0;
}

static __always_inline int icmp4_too_big(struct xdp_md *ctx, const struct packet *p, __u32 mtu)
{
	__u32 l2 = p->vlan ? 18 : 14;
	__u32 ihl = (p->l4_off - p->l3_off) & 0x3f;
	__u32 quoted = ihl + 8;
	__u32 new_len = l2 + sizeof(struct iphdr) + sizeof(struct icmphdr) + quoted;
	void *data, *end;
	struct iphdr *iph;
	struct icmphdr *ic;
	__u16 *w;
	__u64 sum = 0;
	int i;

	if (bpf_xdp_adjust_head(ctx, -28))
		goto headroom;
	if (swap_l2(ctx, 28, p->vlan))
		goto headroom;
	data = pkt_data(ctx);
	end = pkt_end(ctx);
	if (bpf_xdp_adjust_tail(ctx, (int)new_len - (int)(end - data)))
		goto headroom;

	data = pkt_data(ctx);
	end = pkt_end(ctx);
	iph = data + (p->vlan ? 18 : 14);
	ic = (void *)(iph + 1);
	if ((void *)(ic + 1) > end)
		goto headroom;

	iph->version = 4;
	iph->ihl = 5;
	iph->tos = 0;
	iph->tot_len = bpf_htons(sizeof(*iph) + sizeof(*ic) + quoted);
	iph->id = 0;
	iph->frag_off = 0;
	iph->ttl = OUTER_TTL;
	iph->protocol = IPPROTO_ICMP;
	iph->check = 0;
	__builtin_memcpy(&iph->saddr, p->key.dst, 4);
	__builtin_memcpy(&iph->daddr, p->key.src, 4);
	iph->check = ipv4_csum(iph);

	ic->type = ICMP_DEST_UNREACH;
	ic->code = ICMP_FRAG_NEEDED;
	ic->checksum = 0;
	ic->unused = 0;
	ic->mtu = bpf_htons(mtu);

	/* ICMP header and the quoted IP header + 8 bytes: at most 76 bytes. */
	w = (__u16 *)ic;
	for (i = 0; i < 38; i++) {
		if ((__u32)i * 2 >= sizeof(*ic) + quoted)
			break;
		if ((void *)(w + i + 1) > end)
			break;
		sum += w[i];
	}
	ic->checksum = csum_fold(sum);
	count(STAT_ICMP_PTB_SENT);
	return REPLIED;
headroom:
	count(STAT_DROP_HEADROOM);
	return XDP_DROP;
}

#define ICMP6_QUOTED (sizeof(struct ipv6hdr) + 8)

static __always_inline int icmp6_too_big(struct xdp_md *ctx, const struct packet *p, __u32 mtu)
{
	__u32 l2 = p->vlan ? 18 : 14;
	__u32 new_len = l2 + sizeof(struct ipv6hdr) + sizeof(struct icmp6hdr) + ICMP6_QUOTED;
	__u32 plen = sizeof(struct icmp6hdr) + ICMP6_QUOTED;
	void *data, *end;
	struct ipv6hdr *ip6;
	struct icmp6hdr *ic;
	__u16 *w;
	__u64 sum = 0;
	int i;

	if (bpf_xdp_adjust_head(ctx, -48))
		goto headroom;
	if (swap_l2(ctx, 48, p->vlan))
		goto headroom;
	data = pkt_data(ctx);
	end = pkt_end(ctx);
	if (bpf_xdp_adjust_tail(ctx, (int)new_len - (int)(end - data)))
		goto headroom;

	data = pkt_data(ctx);
	end = pkt_end(ctx);
	ip6 = data + (p->vlan ? 18 : 14);
	ic = (void *)(ip6 + 1);
	if ((void *)ic + sizeof(*ic) + ICMP6_QUOTED > end)
		goto headroom;

	__builtin_memset(ip6, 0, 4);
	ip6->version = 6;
	ip6->payload_len = bpf_htons(plen);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = OUTER_TTL;
	__builtin_memcpy(&ip6->saddr, p->key.dst, 16);
	__builtin_memcpy(&ip6->daddr, p->key.src, 16);

	ic->icmp6_type = ICMPV6_PKT_TOOBIG;
	ic->icmp6_code = 0;
	ic->icmp6_cksum = 0;
	ic->icmp6_mtu = bpf_htonl(mtu);

	/* Pseudo-header: addresses, upper-layer length, next header. */
	sum = bpf_htons(plen) + bpf_htons(IPPROTO_ICMPV6);
	w = (__u16 *)&ip6->saddr;
#pragma unroll
	for (i = 0; i < 16; i++)
		sum += w[i];
	w = (__u16 *)ic;
#pragma unroll
	for (i = 0; i < (int)(sizeof(*ic) + ICMP6_QUOTED) / 2; i++)
		sum += w[i];
	ic->icmp6_cksum = csum_fold(sum);
	count(STAT_ICMP_PTB_SENT);
	return REPLIED;
headroom:
	count(STAT_DROP_HEADROOM);
	return XDP_DROP;
}

/* too_big answers a client packet that exceeds `room`, the bytes left for
 * it inside the tunnel. */
static __always_inline int too_big(struct xdp_md *ctx, const struct packet *p, __u32 room, __u8 df)
{
	if (p->kind != PKT_TCP)
		goto drop;
	if (p->key.family == FAMILY_V4) {
		if (!df || room < 68)
			goto drop;
		return icmp4_too_big(ctx, p, room);
	}
	if (room < IPV6_MIN_MTU)
		goto drop;
	return icmp6_too_big(ctx, p, room);
drop:
	count(STAT_DROP_TOO_BIG);
	return XDP_DROP;
}

#endif
