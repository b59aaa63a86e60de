/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* types.h: the structs stored in BPF maps. bpf2go generates their Go
 * mirrors (-type); addresses are 16 bytes in network order, IPv4 in the
 * first four, so one struct serves both families. */
#ifndef ATOLL_TYPES_H
#define ATOLL_TYPES_H

#include <linux/types.h>

/* services key: a VIP, its port and protocol. */
struct svc_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 family;
};

/* services value. The ring of (id, island) is rings[id * MAX_ISLANDS + island]. */
struct service {
	__u32 id;
	__u32 island;
	__u8 fwd;   /* FWD_* */
	__u8 route; /* ROUTE_* */
	__u16 flags;
};

/* svc_table's inner array value: one service and its key (family 0:
 * no service; SVC_SLOT_SHARED: ask the services hash). */
struct svc_slot {
	struct svc_key key;
	struct service svc;
};

/* service_state value, indexed by service id: what an established flow
 * needs of its service without the services hash lookup. The writer bumps
 * gen whenever the service changes or goes; a conntrack entry made under
 * another generation takes the full path again. gen 0: no service. */
struct svc_state {
	__u32 gen;
	__u8 fwd;
	__u8 route;
	__u16 flags;
};

/* An address without port: the vip_addrs key (so that fragments and
 * malformed packets aimed at a VIP can be told from other traffic) and
 * the decap_sources key. */
struct addr_key {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

/* backends value, indexed by backend id. A backend is one (service, node)
 * pair: its counters are that pair's, and readers add them up into the
 * service's (the data plane never reads service). */
struct backend {
	__u8 addr[16];
	__u8 family;
	__u8 state;    /* BE_* */
	__u16 service; /* the service id the pair belongs to */
	__u32 island;
};

/* The client's 5-tuple as it reaches the VIP: the conntrack6 key, and for
 * both families the input of the Maglev flow hash (its ten 32-bit words). */
struct flow_key {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
} __attribute__((aligned(8))); /* read in 64-bit words: see key_addr4 */

/* vip_filter value: bit vip_filter_bit(a) is set for every VIP address a
 * (and, by collision, for a few others, which then take the full path). */
struct vip_bits {
	__u64 bits[VIP_FILTER_BITS / 64];
};

/* conntrack4 key: an IPv4 flow in 16 bytes rather than flow_key's 40,
 * which makes the per-packet lookup of an established IPv4 flow about a
 * third cheaper (jhash over 4 words instead of 10). */
struct flow4_key {
	__be32 src;
	__be32 dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
} __attribute__((aligned(8)));

/* conntrack4/conntrack6 value. */
struct ct_entry {
	__u32 backend;
	__u16 service; /* service id */
	__u16 flags;   /* CT_F_* */
	__u32 gen;     /* the service's generation when the entry was written */
	__u32 pad;
	__u64 created_ns;
};

/* flow_cache value (per CPU, direct-mapped by fc_slot): a copy of a
 * conntrack entry's forwarding fields, so that a packet of a busy flow
 * costs an inlined array read instead of a conntrack hash lookup. */
struct fc_entry {
	struct flow_key key; /* all zero: empty (no real key has family 0) */
	__u32 backend;
	__u16 service;
	__u16 flags; /* the entry's CT_F_* (low byte) and its service's FWD_* (high byte) */
	__u32 gen;   /* flow_cache_gen when copied */
	__u32 stamp; /* low 32 bits of jiffies when copied from conntrack */
	__u8 dmac[6];  /* an l2dsr flow's next hop, from nh_cache when copied */
	__u8 smac[6];
	__u32 ifindex; /* and its port */
};

/* nh_cache value (per CPU, indexed by backend id): what bpf_fib_lookup
 * said about the way to a node, and for which address. */
struct nh_entry {
	__u64 expires; /* jiffies */
	__u8 addr[16];
	__u8 dmac[6]; /* dmac, smac: 12 bytes read as two words (put_macs) */
	__u8 smac[6];
	__u8 family;
	__u8 onlink; /* the node itself is the next hop */
	__u16 mtu;
	__u32 ifindex;
};

/* config value (one entry): the LB's own addresses, the outer source
 * of ipip packets. A zero address disables ipip toward that family. */
struct lb_config {
	__u8 src4[4];
	__u8 src6[16];
	__u32 flags;
};

/* hc_targets value, indexed by backend id: where hc.c steers a health
 * check marked with that id, and how. */
struct hc_target {
	__u8 addr[16];
	__u8 family; /* 0: no target */
	__u8 fwd;    /* FWD_* */
	__u16 pad;
};

/* affinity4 / affinity6 keys: a client prefix. */
struct lpm4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* affinity value: new front-door flows from the prefix go straight to
 * this island's ring. A learned entry expires (expires_ns, CLOCK_MONOTONIC
 * coarse; a static one has 0) and keeps the new flows whose flow hash has
 * no bit of probe_mask set going through the proxy, which so still sees
 * some logins from the address and notices one into another island. */
struct affinity {
	__u32 island;
	__u16 flags;      /* AFF_F_* */
	__u16 probe_mask; /* 0: no probing; 7: one new flow in 8 to the proxy */
	__u64 expires_ns;
};

/* names key: a control-plane name ("s:imap-a/4", "b:imap-a/4/node-a1",
 * "i:a"). The data plane never reads the names map; it is pinned with the
 * others so a restarted daemon gives every object the id it had. */
struct name_key {
	__u8 name[128];
};

/* Traffic counters of a backend (per CPU, in backend_traffic) or of
 * backends since removed (retired_traffic). A forwarded packet is counted
 * once, here; service totals and the fwd_established outcome are sums the
 * reader makes (maps.ReadTraffic). */
struct counters {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;   /* packets counted as fwd_new, fwd_rescheduled or fwd_affinity */
	__u64 established; /* packets counted as fwd_established */
};

#endif
