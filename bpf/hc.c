//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* hc.c: health checks through the forwarding path, at TC egress on the LB
 * host (as Katran's health-check encapsulation). The control plane opens
 * a check connection to a VIP:port with the socket mark HC_MARK_BASE |
 * backend id; this program sends every packet of it to that backend the
 * way the balancer forwards client packets (l2dsr: the node's MAC; ipip:
 * an outer header to the node, from the LB's address). The node answers
 * from the VIP straight to the LB's address. So a node whose VIP is
 * missing, or whose decapsulation is broken, fails its check even while
 * its own address answers. Packets without such a mark pass untouched. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "types.h"
#include "csum.h"

#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct hc_target);
} hc_targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} hc_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HC_STAT_MAX);
	__type(key, enum hc_stat);
	__type(value, __u64);
} hc_stats SEC(".maps");

/* The mark base; the loader may move it if the host uses these bits. */
volatile const __u32 hc_mark_base = HC_MARK_BASE_DEFAULT;

static __always_inline int verdict(__u32 reason, int action)
{
	__u64 *v = bpf_map_lookup_elem(&hc_stats, &reason);

	if (v)
		*v += 1;
	return action;
}

/* encap pushes an outer IPv4/IPv6 header toward the target. */
static __always_inline int encap(struct __sk_buff *skb, const struct hc_target *t)
{
	__u32 zero = 0;
	struct lb_config *cfg = bpf_map_lookup_elem(&hc_config, &zero);
	int inner_v4 = skb->protocol == bpf_htons(ETH_P_IP);
	__u32 inner_len = skb->len - ETH_HLEN;
	__be16 proto;

	if (!cfg)
		return -1;
	if (t->family == FAMILY_V4) {
		struct iphdr oh = {};

		if (!*(__u32 *)cfg->src4)
			return -1;
		if (bpf_skb_adjust_room(skb, sizeof(oh), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
			return -1;
		oh.version = 4;
		oh.ihl = 5;
		oh.tot_len = bpf_htons(inner_len + sizeof(oh));
		oh.frag_off = bpf_htons(0x4000);
		oh.ttl = OUTER_TTL;
		oh.protocol = inner_v4 ? IPPROTO_IPIP_ : IPPROTO_IPV6_;
		__builtin_memcpy(&oh.saddr, cfg->src4, 4);
		__builtin_memcpy(&oh.daddr, t->addr, 4);
		oh.check = ipv4_csum(&oh);
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &oh, sizeof(oh), 0))
			return -1;
		proto = bpf_htons(ETH_P_IP);
	} else {
		struct ipv6hdr oh = {};
		const __u32 *s6 = (const __u32 *)cfg->src6;

		if (!(s6[0] | s6[1] | s6[2] | s6[3]))
			return -1;
		if (bpf_skb_adjust_room(skb, sizeof(oh), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6))
			return -1;
		oh.version = 6;
		oh.payload_len = bpf_htons(inner_len);
		oh.nexthdr = inner_v4 ? IPPROTO_IPIP_ : IPPROTO_IPV6_;
		oh.hop_limit = OUTER_TTL;
		__builtin_memcpy(&oh.saddr, cfg->src6, 16);
		__builtin_memcpy(&oh.daddr, t->addr, 16);
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &oh, sizeof(oh), 0))
			return -1;
		proto = bpf_htons(ETH_P_IPV6);
	}
	return bpf_skb_store_bytes(skb, 12, &proto, sizeof(proto), 0) ? -1 : 0;
}

SEC("tc")
int hc_egress(struct __sk_buff *skb)
{
	struct bpf_fib_lookup fib = {};
	struct hc_target *t;
	__u32 id;

	if ((skb->mark & HC_MARK_MASK) != hc_mark_base)
		return verdict(HC_PASS, TC_ACT_OK);
	id = skb->mark & HC_MARK_ID_MASK;
	t = bpf_map_lookup_elem(&hc_targets, &id);
	if (!t || !t->family)
		return verdict(HC_NO_TARGET, TC_ACT_SHOT);
	if (skb->protocol != bpf_htons(ETH_P_IP) && skb->protocol != bpf_htons(ETH_P_IPV6))
		return verdict(HC_NO_TARGET, TC_ACT_SHOT);

	if (t->fwd == FWD_IPIP && encap(skb, t))
		return verdict(HC_ENCAP, TC_ACT_SHOT);

	fib.family = t->family;
	fib.ifindex = skb->ifindex;
	if (t->family == FAMILY_V4)
		__builtin_memcpy(&fib.ipv4_dst, t->addr, 4);
	else
		__builtin_memcpy(fib.ipv6_dst, t->addr, 16);
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT) != BPF_FIB_LKUP_RET_SUCCESS)
		return verdict(HC_FIB, TC_ACT_SHOT);
	if (bpf_skb_store_bytes(skb, 0, fib.dmac, 6, 0) || bpf_skb_store_bytes(skb, 6, fib.smac, 6, 0))
		return verdict(HC_ENCAP, TC_ACT_SHOT);
	/* Steered once: a redirect re-enters TC egress, which must not
	 * encapsulate again. */
	skb->mark = 0;
	verdict(HC_STEERED, 0);
	if (fib.ifindex == skb->ifindex)
		return TC_ACT_OK;
	return bpf_redirect(fib.ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
