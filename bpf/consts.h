/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* consts.h: every constant shared by the XDP programs and mirrored in Go
 * (maps/consts.go). Change one side, change the other; the Go tests check
 * the sizes of the structs against the BTF of the compiled object. */
#ifndef ATOLL_CONSTS_H
#define ATOLL_CONSTS_H

/* Table sizes. Rings are indexed by service * MAX_ISLANDS + island. */
#define MAX_SERVICES 256
#define MAX_ISLANDS 64
#define MAX_RINGS (MAX_SERVICES * MAX_ISLANDS)
/* retired_traffic's entry for every removed backend, after the services'. */
#define RETIRED_ALL MAX_SERVICES
#define MAX_BACKENDS 4096
#define MAX_VIP_ADDRS (MAX_SERVICES * 2)
/* The VIP filter: one bit per hash of a destination address, so traffic
 * for other addresses passes after one array read (maps/vipfilter.go). */
#define VIP_FILTER_LOG2 12
#define VIP_FILTER_BITS (1 << VIP_FILTER_LOG2)

/* The services table: a direct-mapped copy of the services hash, read
 * with two inlined array lookups instead of a hash lookup (maps/svctable.go
 * builds it). A slot two services share holds the key family
 * SVC_SLOT_SHARED: its services are looked up in the hash. */
#define SVC_TABLE_LOG2 12
#define SVC_TABLE_SIZE (1 << SVC_TABLE_LOG2)
#define SVC_SLOT_SHARED 0xff

/* Defaults the Go loader may override through the MapSpec. */
#define CT_SIZE_DEFAULT 65536
#define RING_SIZE_DEFAULT 65537

/* Ring slot 0 holds the ring's size; slots 1..size hold backend ids. The
 * size travels with the ring, so swapping a ring of another size is one
 * atomic map update too. */
#define RING_SIZE_SLOT 0

/* Next-hop MACs found by bpf_fib_lookup are cached per CPU and backend for
 * this many jiffies: 0.1 s at HZ=1000, 0.4 s at 250, 1 s at 100, so a
 * neighbour change reaches the data plane within a second. Jiffies, not
 * nanoseconds: the verifier inlines bpf_jiffies64 into one load, where
 * bpf_ktime_get_coarse_ns is a call costing ~2 ns on every forwarded
 * packet; a refresh every 0.1 s per backend and CPU costs nothing. */
#define NH_CACHE_TTL_JIFFIES 100

/* The flow cache: FLOW_CACHE_SIZE entries per CPU (72 bytes each), in
 * front of conntrack. An entry is trusted for FLOW_CACHE_TTL_JIFFIES (16 ms
 * at HZ=1000, 64 ms at 250, 160 ms at 100); then conntrack is asked again,
 * which keeps a busy flow's conntrack entry recently used for the LRU. */
#define FLOW_CACHE_LOG2 12
#define FLOW_CACHE_SIZE (1 << FLOW_CACHE_LOG2)
#define FLOW_CACHE_TTL_JIFFIES 16

/* Address families, as in the kernel (AF_INET, AF_INET6). */
#define FAMILY_V4 2
#define FAMILY_V6 10

/* Forwarding modes (service.fwd). */
#define FWD_L2DSR 1
#define FWD_IPIP 2

/* Routing modes (service.route). */
#define ROUTE_ISLAND 1 /* island fixed by the VIP: Maglev ring of service.island */
#define ROUTE_LOGIN 2  /* front door: island known only after login (proxy) */

/* Backend states (backend.state). 0 is an unused slot. */
#define BE_UP 1
#define BE_DRAINING 2 /* keeps its flows, gets no new ones */
#define BE_DOWN 3     /* its flows are re-placed */

/* Client prefixes with an island affinity, per family (LPM tries). */
#define MAX_AFFINITY 65536

/* Affinity entry flags. */
#define AFF_F_LEARNED 1 /* installed by the proxy from consistent logins */

/* Conntrack entry flags. */
#define CT_F_LOCAL 1 /* the flow belongs to the local stack (the proxy) */

/* Outer header defaults for ipip. */
#define OUTER_TTL 64

/* IPv6 minimum link MTU (RFC 8200): never advertise less in a PTB. */
#define IPV6_MIN_MTU 1280

/* Outcome counters (the stats map, one slot per reason). Mirrored in Go as
 * maps.Stat with the same names; keep the order. */
enum stat {
	STAT_PASS_NOT_IP = 0,    /* not IPv4/IPv6 (ARP, LLDP, ...) */
	STAT_PASS_NON_VIP,       /* IP but not TCP to a configured VIP:port */
	STAT_PASS_MALFORMED,     /* malformed, not aimed at a VIP address */
	STAT_PASS_LOCAL,         /* flow owned by the local stack (login mode) */
	STAT_DROP_MALFORMED,     /* malformed or truncated, aimed at a VIP address */
	STAT_DROP_FRAGMENT,      /* IPv4 fragment aimed at a VIP address */
	STAT_DROP_IPV6_EXTHDR,   /* IPv6 extension header aimed at a VIP address */
	STAT_DROP_NO_BACKEND,    /* the ring is missing or empty */
	STAT_DROP_FIB,           /* no route to the node */
	STAT_DROP_NO_NEIGH,      /* route found, neighbour unresolved */
	STAT_DROP_NOT_ONLINK,    /* l2dsr node behind a gateway */
	STAT_DROP_NO_SOURCE,     /* ipip without an LB source address of the node's family */
	STAT_DROP_TOO_BIG,       /* would exceed the MTU and no ICMP could be sent */
	STAT_DROP_HEADROOM,      /* adjust_head/adjust_tail failed */
	STAT_FWD_NEW,            /* new flow placed by Maglev */
	STAT_FWD_ESTABLISHED,    /* conntrack hit on an UP or DRAINING node (never written: summed from backend_traffic) */
	STAT_FWD_RESCHEDULED,    /* conntrack hit on a DOWN or removed node, re-placed */
	STAT_ICMP_PTB_FORWARDED, /* ICMP too-big about a VIP flow sent to its node */
	STAT_ICMP_PTB_SENT,      /* ICMP too-big sent back to a client */
	STAT_PASS_HANDOFF,       /* new front-door flow handed to the local proxy */
	STAT_PASS_LOCAL_SOCKET,  /* front-door flow unknown to conntrack, owned by a local socket */
	STAT_FWD_AFFINITY,       /* new front-door flow sent to an island by client affinity */
	STAT_PASS_PROBE,         /* new flow of a learned prefix kept on the proxy to verify it */
	STAT_FWD_LEARNED,        /* non-SYN packet unknown to conntrack (a handshake's ACK), placed by Maglev and remembered */
	STAT_MAX,
};

/* Outcome counters of decap.c (the decap_stats map). Mirrored in Go as
 * maps.DecapStat. */
enum decap_stat {
	DECAP_OK = 0,      /* outer header stripped, inner packet passed up */
	DECAP_PASS,        /* not an IP-in-IP packet: passed untouched */
	DECAP_FOREIGN,     /* outer source not an allowed LB: passed untouched */
	DECAP_MALFORMED,   /* truncated or fragmented tunnel packet: dropped */
	DECAP_HEADROOM,    /* adjust_head failed: dropped */
	DECAP_STAT_MAX,
};

/* Health checks through the forwarding path (hc.c): a check socket
 * carries the mark HC_MARK_BASE | backend id; hc.c steers its packets to
 * that backend exactly as the balancer would. */
#define HC_MARK_MASK 0xfffff000
#define HC_MARK_BASE_DEFAULT 0xa7000000
#define HC_MARK_ID_MASK 0x00000fff

/* Outcome counters of hc.c (the hc_stats map). Mirrored in Go as
 * maps.HCStat. */
enum hc_stat {
	HC_PASS = 0,    /* not a health-check packet: untouched */
	HC_STEERED,     /* sent to its backend */
	HC_NO_TARGET,   /* marked, but no target for that id: dropped */
	HC_FIB,         /* no route or neighbour for the node: dropped */
	HC_ENCAP,       /* could not make room for the outer header: dropped */
	HC_STAT_MAX,
};

#endif
