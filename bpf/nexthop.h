/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* nexthop.h: the way to a node, from bpf_fib_lookup, cached per CPU.
 *
 * A FIB lookup costs more than the rest of an established flow's path, so
 * its answer is kept per backend for NH_CACHE_TTL_JIFFIES and re-asked
 * when the backend's address changes. The kernel's neighbour table must
 * know the next hop (health checks keep it warm); forwarding must be
 * enabled on the ingress device, as bpf_fib_lookup requires. */
#ifndef ATOLL_NEXTHOP_H
#define ATOLL_NEXTHOP_H

#include "parse.h"

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

/* next_hop returns the way to backend be_id. copy says the caller holds a
 * flow cache copy of the current generation (see track()): the backend's
 * address cannot have changed since the copy was made, so an unexpired
 * cache entry needs no address check. */
static __always_inline struct nh_entry *next_hop(struct xdp_md *ctx, const struct backend *be, __u32 be_id,
						 int copy)
{
	struct bpf_fib_lookup fib = {};
	struct nh_entry *nh;
	__u64 now = bpf_jiffies64();
	int rc;

	nh = bpf_map_lookup_elem(&nh_cache, &be_id);
	if (!nh) {
		count(STAT_DROP_FIB);
		return NULL;
	}
	if (nh->expires > now && (copy || (nh->family == be->family && addr_eq(nh->addr, be->addr))))
		return nh;

	fib.family = be->family;
	fib.ifindex = ctx->ingress_ifindex;
	if (be->family == FAMILY_V4)
		__builtin_memcpy(&fib.ipv4_dst, be->addr, 4);
	else
		__builtin_memcpy(fib.ipv6_dst, be->addr, 16);

	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		count(STAT_DROP_NO_NEIGH);
		return NULL;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		count(STAT_DROP_FIB);
		return NULL;
	}

	/* On a gateway route the lookup replaces the destination with the
	 * gateway's address: the node is on-link only if it is unchanged. */
	if (be->family == FAMILY_V4)
		nh->onlink = fib.ipv4_dst == *(const __u32 *)be->addr;
	else
		nh->onlink = addr_eq((const __u8 *)fib.ipv6_dst, be->addr);
	__builtin_memcpy(nh->dmac, fib.dmac, 6);
	__builtin_memcpy(nh->smac, fib.smac, 6);
	__builtin_memcpy(nh->addr, be->addr, 16);
	nh->family = be->family;
	nh->ifindex = fib.ifindex;
	nh->mtu = fib.mtu_result;
	nh->expires = now + NH_CACHE_TTL_JIFFIES;
	return nh;
}

#endif
