/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parse.h: turn a frame into a struct packet, or decide its fate.
 *
 * The rules (docs/architecture.md, "Packet rules"):
 *  - Ethernet with at most one 802.1Q/802.1ad tag; anything but IPv4/IPv6
 *    passes untouched.
 *  - IPv4 with or without options; IPv6 with TCP or ICMPv6 as the first
 *    next header. Extension headers are not walked: such a packet aimed at
 *    a VIP address is dropped and counted, any other passes.
 *  - IPv4 fragments aimed at a VIP address are dropped and counted (TCP
 *    with path-MTU discovery never fragments); others pass.
 *  - A malformed or truncated header aimed at a VIP address is dropped and
 *    counted; one that cannot be told to be aimed at a VIP passes and is
 *    counted. Nothing half-parsed is ever forwarded.
 */
#ifndef ATOLL_PARSE_H
#define ATOLL_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/icmpv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "types.h"
#include "maps.h"

/* Returned by a step that has not decided the packet's fate. */
#define CONTINUE -1
/* Returned when the packet was turned into an answer to its sender (an
 * ICMP error) that leaves by XDP_TX. */
#define REPLIED -2

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_ 0x2000
#define IP_DF_ 0x4000
#define IP_OFFSET_ 0x1FFF
#define TCP_FLAG_SYN_ 0x02
#define TCP_FLAG_ACK_ 0x10

/* What kind of packet is being steered. */
#define PKT_TCP 1      /* a TCP segment to a VIP:port */
#define PKT_ICMP_PTB 2 /* an ICMP too-big about a VIP flow; key is that flow */

/* linux/icmp.h drags in libc's socket headers; this is all we need. */
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 unused;
	__be16 mtu; /* next-hop MTU of "fragmentation needed" */
};

struct vlan_hdr_ {
	__be16 tci;
	__be16 proto;
};

struct packet {
	struct flow_key key; /* client -> VIP 5-tuple */
	__u32 l3_off;        /* (outer) IP header offset: 14 or 18 */
	__u32 l4_off;        /* L4 header offset */
	__u32 l3_len;        /* IP packet length, header included */
	__u32 pkt_len;       /* frame length as received */
	__u8 kind;           /* PKT_* */
	__u8 vlan;           /* one tag present */
	__u8 tcp_flags;
};

/* is_syn says whether the packet opens a TCP connection (SYN without ACK). */
static __always_inline int is_syn(const struct packet *p)
{
	return p->kind == PKT_TCP && (p->tcp_flags & (TCP_FLAG_SYN_ | TCP_FLAG_ACK_)) == TCP_FLAG_SYN_;
}

static __always_inline void *pkt_data(struct xdp_md *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *pkt_end(struct xdp_md *ctx)
{
	return (void *)(long)ctx->data_end;
}

/* ip_tos_df reads the (outer) IP header's TOS or traffic class, and for
 * IPv4 its DF bit. Only an encapsulation or an ICMP error needs them, so
 * parse() leaves them in the packet rather than copy them for every one.
 * -1 if the header is not there (parse() found it, so never). */
static __always_inline int ip_tos_df(struct xdp_md *ctx, const struct packet *p, __u8 *tos, __u8 *df)
{
	__u8 *h = pkt_data(ctx) + (p->l3_off & 0x1f);

	if ((void *)(h + 8) > pkt_end(ctx))
		return -1;
	if (p->key.family == FAMILY_V4) {
		*tos = h[1];
		*df = !!(h[6] & (IP_DF_ >> 8));
	} else {
		*tos = (h[0] & 0x0f) << 4 | h[1] >> 4;
		*df = 0;
	}
	return 0;
}

/* put_macs writes a frame's destination and source MACs from the 12
 * bytes at macs (a struct's dmac, then smac, 8-byte aligned): as two
 * words, where a copy of two 6-byte arrays is 24 byte loads and stores
 * (the packet is not known to be aligned; x86 does not mind). */
static __always_inline void put_macs(struct ethhdr *eth, const __u8 *macs)
{
	*(__u64 *)eth = *(const __u64 *)macs;
	*(__u32 *)((__u8 *)eth + 8) = *(const __u32 *)(macs + 8);
}

_Static_assert(__builtin_offsetof(struct nh_entry, dmac) % 8 == 0 &&
		       __builtin_offsetof(struct nh_entry, smac) == __builtin_offsetof(struct nh_entry, dmac) + 6 &&
		       __builtin_offsetof(struct fc_entry, dmac) % 8 == 0 &&
		       __builtin_offsetof(struct fc_entry, smac) == __builtin_offsetof(struct fc_entry, dmac) + 6,
	       "put_macs reads dmac and smac as two aligned words");

/* The flow key is written in the 64-bit words it is read in (the flow
 * cache's compare, the kernel's hash and memcmp): a load spanning two
 * narrower stores cannot be forwarded from the CPU's store buffer and
 * waits for both to reach the cache, a stall on every packet. */
static __always_inline void key_addr4(__u8 *dst, const __be32 *a)
{
	((__u64 *)dst)[0] = *a;
	((__u64 *)dst)[1] = 0;
}

/* The address is read in 32-bit words (an IPv6 header is 4-byte aligned
 * in its type): through a void pointer clang would load it byte by byte. */
static __always_inline void key_addr6(__u8 *dst, const struct in6_addr *a)
{
	const __u32 *w = a->in6_u.u6_addr32;

	((__u64 *)dst)[0] = w[0] | (__u64)w[1] << 32;
	((__u64 *)dst)[1] = w[2] | (__u64)w[3] << 32;
}

/* key_ports writes the key's last word: ports, protocol (TCP) and family. */
static __always_inline void key_ports(struct flow_key *k, __be16 sport, __be16 dport)
{
	*(__u64 *)&k->sport = (__u64)sport | (__u64)dport << 16 | (__u64)IPPROTO_TCP << 32 | (__u64)k->family << 40;
}

static __always_inline int is_vip_addr(const __u8 *addr, __u8 family)
{
	struct addr_key k = {};

	__builtin_memcpy(k.addr, addr, sizeof(k.addr));
	k.family = family;
	return bpf_map_lookup_elem(&vip_addrs, &k) != NULL;
}

/* aimed_at_vip drops and counts `reason` if the packet's destination is a
 * VIP address, and passes it (counted as malformed or as `pass`) if not. */
static __always_inline int aimed_at_vip(const struct packet *p, __u32 reason, __u32 pass)
{
	if (is_vip_addr(p->key.dst, p->key.family)) {
		count(reason);
		return XDP_DROP;
	}
	count(pass);
	return XDP_PASS;
}

static __always_inline int malformed(const struct packet *p)
{
	return aimed_at_vip(p, STAT_DROP_MALFORMED, STAT_PASS_MALFORMED);
}

static __always_inline int parse_tcp(struct xdp_md *ctx, struct packet *p)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	__u32 off = p->l4_off & 0xff;
	struct tcphdr *th = data + off;
	__u8 flags;

	if ((void *)(th + 1) > end || off + sizeof(*th) > p->l3_off + p->l3_len)
		return malformed(p);
	if (th->doff < 5)
		return malformed(p);
	p->kind = PKT_TCP;
	key_ports(&p->key, th->source, th->dest);
	/* Opaque to clang, so a later test of the flags reads the copy rather
	 * than the packet through a pointer the verifier no longer bounds. */
	flags = ((__u8 *)th)[13];
	asm volatile("" : "+r"(flags));
	p->tcp_flags = flags;
	return CONTINUE;
}

/* The quoted header of an ICMP error is the node's reply, VIP -> client;
 * the flow it belongs to is the reverse. */
static __always_inline int parse_icmp4(struct xdp_md *ctx, struct packet *p)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	__u32 off = p->l4_off & 0xff;
	struct icmphdr *ic = data + off;
	struct iphdr *in;
	struct tcphdr *th;
	__u32 ihl;

	if ((void *)(ic + 1) > end)
		return malformed(p);
	if (ic->type != ICMP_DEST_UNREACH || ic->code != ICMP_FRAG_NEEDED) {
		count(STAT_PASS_NON_VIP);
		return XDP_PASS;
	}
	in = (void *)(ic + 1);
	if ((void *)(in + 1) > end)
		return malformed(p);
	ihl = (in->ihl & 0xf) * 4;
	if (in->version != 4 || ihl < sizeof(*in) || in->protocol != IPPROTO_TCP)
		return malformed(p);
	th = (void *)in + ihl;
	if ((void *)th + 4 > end)
		return malformed(p);
	p->kind = PKT_ICMP_PTB;
	key_addr4(p->key.src, &in->daddr);
	key_addr4(p->key.dst, &in->saddr);
	key_ports(&p->key, th->dest, th->source);
	return CONTINUE;
}

static __always_inline int parse_icmp6(struct xdp_md *ctx, struct packet *p)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	__u32 off = p->l4_off & 0xff;
	struct icmp6hdr *ic = data + off;
	struct ipv6hdr *in;
	struct tcphdr *th;

	if ((void *)(ic + 1) > end)
		return malformed(p);
	if (ic->icmp6_type != ICMPV6_PKT_TOOBIG || ic->icmp6_code != 0) {
		count(STAT_PASS_NON_VIP);
		return XDP_PASS;
	}
	in = (void *)(ic + 1);
	th = (void *)(in + 1);
	if ((void *)th + 4 > end)
		return malformed(p);
	if (in->version != 6 || in->nexthdr != IPPROTO_TCP)
		return malformed(p);
	p->kind = PKT_ICMP_PTB;
	key_addr6(p->key.src, &in->daddr);
	key_addr6(p->key.dst, &in->saddr);
	key_ports(&p->key, th->dest, th->source);
	return CONTINUE;
}

static __always_inline int parse_ipv4(struct xdp_md *ctx, struct packet *p)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	struct iphdr *iph = data + (p->l3_off & 0x1f);
	__u32 ihl, tot;

	if ((void *)(iph + 1) > end) {
		count(STAT_PASS_MALFORMED);
		return XDP_PASS;
	}
	p->key.family = FAMILY_V4;
	key_addr4(p->key.src, &iph->saddr);
	key_addr4(p->key.dst, &iph->daddr);

	ihl = (iph->ihl & 0xf) * 4;
	tot = bpf_ntohs(iph->tot_len);
	if (iph->version != 4 || ihl < sizeof(*iph) || tot < ihl || p->l3_off + tot > p->pkt_len)
		return malformed(p);
	if (iph->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_))
		return aimed_at_vip(p, STAT_DROP_FRAGMENT, STAT_PASS_NON_VIP);

	p->l4_off = p->l3_off + ihl;
	p->l3_len = tot;

	switch (iph->protocol) {
	case IPPROTO_TCP:
		return parse_tcp(ctx, p);
	case IPPROTO_ICMP:
		return parse_icmp4(ctx, p);
	default:
		count(STAT_PASS_NON_VIP);
		return XDP_PASS;
	}
}

static __always_inline int ipv6_is_exthdr(__u8 nh)
{
	switch (nh) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_FRAGMENT:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case IPPROTO_MH:
		return 1;
	}
	return 0;
}

static __always_inline int parse_ipv6(struct xdp_md *ctx, struct packet *p)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	struct ipv6hdr *ip6 = data + (p->l3_off & 0x1f);
	__u32 plen;

	if ((void *)(ip6 + 1) > end) {
		count(STAT_PASS_MALFORMED);
		return XDP_PASS;
	}
	p->key.family = FAMILY_V6;
	key_addr6(p->key.src, &ip6->saddr);
	key_addr6(p->key.dst, &ip6->daddr);

	plen = bpf_ntohs(ip6->payload_len);
	if (ip6->version != 6 || plen == 0 || p->l3_off + sizeof(*ip6) + plen > p->pkt_len)
		return malformed(p);

	p->l4_off = p->l3_off + sizeof(*ip6);
	p->l3_len = sizeof(*ip6) + plen;

	switch (ip6->nexthdr) {
	case IPPROTO_TCP:
		return parse_tcp(ctx, p);
	case IPPROTO_ICMPV6:
		return parse_icmp6(ctx, p);
	}
	if (ipv6_is_exthdr(ip6->nexthdr))
		return aimed_at_vip(p, STAT_DROP_IPV6_EXTHDR, STAT_PASS_NON_VIP);
	count(STAT_PASS_NON_VIP);
	return XDP_PASS;
}

/* parse fills p, or returns the verdict for a packet that is not ours. */
static __always_inline int parse(struct xdp_md *ctx, struct packet *p)
{
	void *data = pkt_data(ctx), *end = pkt_end(ctx);
	struct ethhdr *eth = data;
	__be16 proto;

	p->pkt_len = end - data;
	if ((void *)(eth + 1) > end) {
		count(STAT_PASS_NOT_IP);
		return XDP_PASS;
	}
	proto = eth->h_proto;
	p->l3_off = sizeof(*eth);
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
		struct vlan_hdr_ *vh = (void *)(eth + 1);

		if ((void *)(vh + 1) > end) {
			count(STAT_PASS_NOT_IP);
			return XDP_PASS;
		}
		proto = vh->proto;
		p->l3_off += sizeof(*vh);
		p->vlan = 1;
	}
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(ctx, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(ctx, p);
	count(STAT_PASS_NOT_IP);
	return XDP_PASS;
}

#endif
