/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maps.h: one map per concern. Sizes marked "loader" are overridden by
 * the Go loader from the config. */
#ifndef ATOLL_MAPS_H
#define ATOLL_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "types.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES * 2);
	__type(key, struct svc_key);
	__type(value, struct service);
} services SEC(".maps");

/* The services table (see SVC_TABLE_SIZE), swapped whole by the maps API
 * after each change to services: an array update is not atomic, a switch
 * of inner map is. One size, so no BPF_F_INNER_MAP: the verifier inlines
 * lookups in it. Its value is struct svc_slot, given by size: BTF holds
 * an inner map's value struct only as a forward declaration. */
struct svc_table_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SVC_TABLE_SIZE);
	__type(key, __u32);
	__uint(value_size, sizeof(struct svc_slot));
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct svc_table_inner);
} svc_table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct svc_state);
} service_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIP_ADDRS);
	__type(key, struct addr_key);
	__type(value, __u32); /* services on this address */
} vip_addrs SEC(".maps");

/* Rebuilt from vip_addrs by the maps API after every change to it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vip_bits);
} vip_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

/* A Maglev ring: slot RING_SIZE_SLOT holds its size, then the backend ids.
 * BPF_F_INNER_MAP lets rings of different sizes share the outer map. */
struct ring {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RING_SIZE_DEFAULT + 1);
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, __u32);
};

/* Rings are swapped whole: the writer fills a new inner map, then stores
 * it here with one update, so a packet sees the old ring or the new one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_RINGS);
	__type(key, __u32);
	__array(values, struct ring);
} rings SEC(".maps");

/* The ring each slot held before its last change, and until when
 * (CLOCK_MONOTONIC ns; 0: past) that change counts as recent. maps.SetRing
 * writes both before switching `rings`; see place() for their use. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_RINGS);
	__type(key, __u32);
	__array(values, struct ring);
} rings_prev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_RINGS);
	__type(key, __u32);
	__type(value, __u64);
} ring_grace SEC(".maps");

/* Connection tracking, one LRU per family (smaller IPv4 keys hash faster). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_SIZE_DEFAULT); /* loader */
	__type(key, struct flow4_key);
	__type(value, struct ct_entry);
} conntrack4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_SIZE_DEFAULT); /* loader */
	__type(key, struct flow_key);
	__type(value, struct ct_entry);
} conntrack6 SEC(".maps");

/* Island affinity of client prefixes, for the front door (ROUTE_LOGIN). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_AFFINITY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4_key);
	__type(value, struct affinity);
} affinity4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_AFFINITY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm6_key);
	__type(value, struct affinity);
} affinity6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct nh_entry);
} nh_cache SEC(".maps");

/* Per CPU: a NIC's receive hashing keeps a flow on one CPU, and no entry
 * is ever shared, so writing one costs no cache-line bouncing. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOW_CACHE_SIZE);
	__type(key, __u32);
	__type(value, struct fc_entry);
} flow_cache SEC(".maps");

/* The flow cache's generation: the maps API bumps it after every write
 * that can change where an established flow goes (a service, a backend,
 * a conntrack flush),
 * so a copy made before such a write is stale on every CPU at once. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} flow_cache_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, enum stat);
	__type(value, __u64);
} stats SEC(".maps");

/* Per CPU, indexed by backend id: a forwarded packet's one counter
 * update (one inlined array read, three increments). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct counters);
} backend_traffic SEC(".maps");

/* Written by the maps API only, never by the data plane: what removed
 * backends had counted, per service (index: service id) and in all
 * (RETIRED_ALL), so the sums readers make never go down. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SERVICES + 1);
	__type(key, __u32);
	__type(value, struct counters);
} retired_traffic SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS + MAX_SERVICES + MAX_ISLANDS);
	__type(key, struct name_key);
	__type(value, __u32);
} names SEC(".maps");

/* Seed of the flow hash. Two LB hosts must share it to pick the same node
 * for the same flow; a per-deployment secret keeps clients from aiming
 * their flows at one node. Set by the loader. */
volatile const __u32 hash_seed = 0x61746f6c; /* "atol" */

static __always_inline void count(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &reason);

	if (v)
		*v += 1;
}

/* count_forwarded counts a forwarded packet on its backend, and its
 * outcome in stats unless that is fwd_established (which the backend's
 * counters hold). */
static __always_inline void count_forwarded(__u32 be_id, __u32 len, __u32 outcome)
{
	struct counters *c;

	if (outcome != STAT_FWD_ESTABLISHED)
		count(outcome);
	c = bpf_map_lookup_elem(&backend_traffic, &be_id);
	if (!c)
		return;
	c->packets += 1;
	c->bytes += len;
	if (outcome == STAT_FWD_ESTABLISHED)
		c->established += 1;
	else if (outcome == STAT_FWD_NEW || outcome == STAT_FWD_RESCHEDULED || outcome == STAT_FWD_AFFINITY)
		c->new_flows += 1;
}

#endif
