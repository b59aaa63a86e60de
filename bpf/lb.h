/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* lb.h: the balancer's steps after parsing: service, conntrack, Maglev,
 * forward. balancer.c and bench.c both build on balance(). */
#ifndef ATOLL_LB_H
#define ATOLL_LB_H

#include "parse.h"
#include "hash.h"
#include "nexthop.h"
#include "encap.h"

/* lookup_service finds the packet's service. Its key is written in the
 * words the kernel's jhash reads (see flow4_of): the flow key's
 * destination, then its last word shifted past the source port, which
 * gives port, protocol and family in svc_key's order. */
_Static_assert(__builtin_offsetof(struct flow_key, dst) == 16 && __builtin_offsetof(struct flow_key, dport) == 34 &&
		       __builtin_offsetof(struct flow_key, family) == 37 && __builtin_offsetof(struct svc_key, port) == 16 &&
		       __builtin_offsetof(struct svc_key, family) == 19 && sizeof(struct svc_key) == 20,
	       "lookup_service copies flow_key words into svc_key");

_Static_assert(sizeof(struct svc_slot) == 32 && __builtin_offsetof(struct svc_slot, svc) == 20,
	       "svc_slot: a key's five words, then the service");

/* svc_slot_of is the services table slot of a key (maps.SvcSlot mirrors
 * it): the address words and the port's word turned half over, so
 * services on one VIP spread by port. */
static __always_inline __u32 svc_slot_of(const struct svc_key *k)
{
	const __u32 *w = (const __u32 *)k;

	return top_bits(w[0] ^ w[1] ^ w[2] ^ w[3] ^ rol32(w[4], 16), SVC_TABLE_LOG2);
}

/* lookup_service finds the packet's service: in the services table, or
 * in the hash for a slot two services share (or before a table exists). */
static __always_inline struct service *lookup_service(const struct packet *p)
{
	struct svc_key k __attribute__((aligned(8)));
	const __u64 *w = (const __u64 *)&p->key;
	__u32 zero = 0, slot;
	struct svc_slot *s;
	void *table;

	((__u64 *)&k)[0] = w[2];
	((__u64 *)&k)[1] = w[3];
	((__u32 *)&k)[4] = w[4] >> 16;
	table = bpf_map_lookup_elem(&svc_table, &zero);
	if (table) {
		slot = svc_slot_of(&k);
		s = bpf_map_lookup_elem(table, &slot);
		if (!s)
			return NULL;
		if (((__u64 *)s)[0] == ((__u64 *)&k)[0] && ((__u64 *)s)[1] == ((__u64 *)&k)[1] &&
		    ((__u32 *)s)[4] == ((__u32 *)&k)[4])
			return &s->svc;
		if (s->key.family != SVC_SLOT_SHARED)
			return NULL;
	}
	return bpf_map_lookup_elem(&services, &k);
}

/* flow4_of writes the IPv4 key in the two 64-bit words the kernel's hash
 * and memcmp read it in: a load spanning two narrower stores cannot be
 * forwarded from the CPU's store buffer and waits for them to reach the
 * cache (field by field, this cost an established IPv4 packet ~3.5 ns). */
static __always_inline void flow4_of(const struct flow_key *k, struct flow4_key *k4)
{
	__u64 *w = (__u64 *)k4;

	w[0] = (__u64)*(const __u32 *)k->src | (__u64)*(const __u32 *)k->dst << 32;
	w[1] = (__u64)k->sport | (__u64)k->dport << 16 | (__u64)k->proto << 32;
}

/* ct_lookup looks the packet's flow up in its family's conntrack. The
 * barrier keeps clang from merging the two lookups into one call site:
 * the verifier only inlines a lookup whose call site sees one map;
 * otherwise every packet pays an indirect call into the helper. */
static __always_inline struct ct_entry *ct_lookup(const struct packet *p)
{
	struct ct_entry *ct;

	if (p->key.family == FAMILY_V4) {
		struct flow4_key k4 = {};

		flow4_of(&p->key, &k4);
		ct = bpf_map_lookup_elem(&conntrack4, &k4);
		asm volatile("" : "+r"(ct));
		return ct;
	}
	return bpf_map_lookup_elem(&conntrack6, &p->key);
}

static __always_inline void ct_insert(const struct packet *p, const struct ct_entry *e)
{
	if (p->key.family == FAMILY_V4) {
		struct flow4_key k4 = {};

		flow4_of(&p->key, &k4);
		bpf_map_update_elem(&conntrack4, &k4, e, BPF_ANY);
		return;
	}
	bpf_map_update_elem(&conntrack6, &p->key, e, BPF_ANY);
}

/* usable says whether a conntrack entry may keep using a backend. */
static __always_inline int usable(const struct backend *be)
{
	return be && (be->state == BE_UP || be->state == BE_DRAINING);
}

/* ring_pick returns the backend a ring gives this flow, or NULL when
 * there is no ring or its pick is not UP (nor DRAINING, if draining_ok:
 * a flow that began on a node being drained stays there). */
static __always_inline struct backend *ring_pick(void *ring, const struct packet *p, __u32 *be_id, int draining_ok)
{
	__u32 k = RING_SIZE_SLOT, idx, *size, *id;
	struct backend *be;

	if (!ring)
		return NULL;
	size = bpf_map_lookup_elem(ring, &k);
	if (!size || *size == 0)
		return NULL;
	idx = ring_index(flow_hash(&p->key, hash_seed), *size) + 1;
	id = bpf_map_lookup_elem(ring, &idx);
	if (!id)
		return NULL;
	*be_id = *id;
	be = bpf_map_lookup_elem(&backends, id);
	if (draining_ok ? !usable(be) : !be || be->state != BE_UP)
		return NULL;
	return be;
}

/* ring_slot is the rings index of (service, island), or MAX_RINGS. */
static __always_inline __u32 ring_slot(const struct service *svc, __u32 island)
{
	if (svc->id >= MAX_SERVICES || island >= MAX_ISLANDS)
		return MAX_RINGS;
	return svc->id * MAX_ISLANDS + island;
}

/* maglev_pick returns the backend the (service, island) ring gives this
 * flow, or NULL when there is no ring or no live node in it. */
static __always_inline struct backend *maglev_pick(const struct packet *p, const struct service *svc, __u32 island,
						   __u32 *be_id)
{
	__u32 slot = ring_slot(svc, island);

	return ring_pick(bpf_map_lookup_elem(&rings, &slot), p, be_id, 0);
}

/* ring_recent says whether the slot's ring changed less than
 * maps.RingGrace ago. The first packet to find the deadline past clears
 * it (unless the control plane has just set a new one), so later ones
 * skip the clock. */
static __always_inline int ring_recent(__u32 slot)
{
	__u64 *until = bpf_map_lookup_elem(&ring_grace, &slot), t;

	if (!until || !(t = *until))
		return 0;
	if (bpf_ktime_get_coarse_ns() < t)
		return 1;
	__sync_val_compare_and_swap(until, t, 0);
	return 0;
}

/* out_port picks the frame's way out toward ifindex: a tagged frame
 * leaves tagged, on the port it came in on. */
static __always_inline int out_port(struct xdp_md *ctx, const struct packet *p, __u32 ifindex)
{
	if (p->vlan || ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
}

/* l2_out sends the frame to a node on the link (l2dsr): its MACs
 * rewritten, the rest untouched. */
static __always_inline int l2_out(struct xdp_md *ctx, const struct packet *p, const __u8 *macs, __u32 ifindex)
{
	struct ethhdr *eth = pkt_data(ctx);

	if ((void *)(eth + 1) > pkt_end(ctx))
		return XDP_DROP;
	put_macs(eth, macs);
	return out_port(ctx, p, ifindex);
}

/* forward sends the packet to backend be_id by the service's mode; copy:
 * for a flow cache copy of the current generation (see next_hop). */
static __always_inline int forward(struct xdp_md *ctx, const struct packet *p, __u8 fwd, const struct backend *be,
				   __u32 be_id, int copy)
{
	struct nh_entry *nh;
	int rc;

	nh = next_hop(ctx, be, be_id, copy);
	if (!nh)
		return XDP_DROP;

	if (fwd == FWD_IPIP) {
		rc = encap(ctx, p, be, nh);
		if (rc != CONTINUE)
			return rc;
		return out_port(ctx, p, nh->ifindex);
	}
	if (!nh->onlink) {
		count(STAT_DROP_NOT_ONLINK);
		return XDP_DROP;
	}
	return l2_out(ctx, p, nh->dmac, nh->ifindex);
}

/* account counts a forwarding step's result and turns it into a verdict. */
static __always_inline int account(const struct packet *p, int rc, __u32 outcome, __u32 be_id)
{
	if (rc == REPLIED)
		return XDP_TX;
	if (rc == XDP_TX || rc == XDP_REDIRECT)
		count_forwarded(be_id, p->pkt_len, outcome);
	return rc;
}

/* established_outcome is the counter of a forwarded packet of a known
 * flow. */
static __always_inline __u32 established_outcome(const struct packet *p)
{
	return p->kind == PKT_ICMP_PTB ? STAT_ICMP_PTB_FORWARDED : STAT_FWD_ESTABLISHED;
}

/* established forwards a packet of a flow conntrack knows, without the
 * services lookup. From a conntrack entry, while its service is unchanged
 * (same generation) and its node usable; *fwd gets the service's
 * forwarding mode, for fc_fill. From a flow cache copy of the current
 * flow cache generation (*fwd its mode), without those checks: nothing
 * they read has changed since the copy was made.
 * Otherwise the packet takes the full path (CONTINUE). */
static __always_inline int established(struct xdp_md *ctx, const struct packet *p, __u32 sid, __u32 be_id,
				       __u32 flags, __u32 gen, int copy, __u8 *fwd)
{
	struct svc_state *st;
	struct backend *be;

	if (flags & CT_F_LOCAL) {
		count(STAT_PASS_LOCAL);
		return XDP_PASS;
	}
	be = bpf_map_lookup_elem(&backends, &be_id);
	if (!be)
		return CONTINUE;
	if (!copy) {
		st = bpf_map_lookup_elem(&service_state, &sid);
		if (!st || st->gen != gen || !usable(be))
			return CONTINUE;
		*fwd = st->fwd;
	}
	return account(p, forward(ctx, p, *fwd, be, be_id, copy), established_outcome(p), be_id);
}

/* affinity_island finds the island of the client's longest matching
 * prefix, if any (an expired learned entry counts as none). A learned
 * entry sends the flows its probe_mask picks to the proxy (*probe). */
static __always_inline int affinity_island(const struct packet *p, __u32 *island, int *probe)
{
	struct affinity *a;

	if (p->key.family == FAMILY_V4) {
		struct lpm4_key k = {.prefixlen = 32};

		__builtin_memcpy(k.addr, p->key.src, 4);
		a = bpf_map_lookup_elem(&affinity4, &k);
	} else {
		struct lpm6_key k = {.prefixlen = 128};

		__builtin_memcpy(k.addr, p->key.src, 16);
		a = bpf_map_lookup_elem(&affinity6, &k);
	}
	if (!a)
		return 0;
	if (a->expires_ns && a->expires_ns < bpf_ktime_get_coarse_ns())
		return 0;
	*island = a->island;
	*probe = a->probe_mask && !(flow_hash(&p->key, hash_seed) & a->probe_mask);
	return 1;
}

/* local_socket says whether the local stack has a connection (or a
 * handshake in progress) for this packet; a listener alone does not
 * count. */
static __always_inline int local_socket(struct xdp_md *ctx, const struct packet *p)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	int local;

	if (p->key.family == FAMILY_V4) {
		__builtin_memcpy(&t.ipv4.saddr, p->key.src, 4);
		__builtin_memcpy(&t.ipv4.daddr, p->key.dst, 4);
		t.ipv4.sport = p->key.sport;
		t.ipv4.dport = p->key.dport;
		sk = bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->key.src, 16);
		__builtin_memcpy(t.ipv6.daddr, p->key.dst, 16);
		t.ipv6.sport = p->key.sport;
		t.ipv6.dport = p->key.dport;
		sk = bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return 0;
	local = sk->state != BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	return local;
}

/* login_miss places a front-door flow that conntrack cannot. A packet of a
 * flow the local stack owns stays local (an LRU eviction never moves a
 * proxied session). A client prefix with an island affinity goes straight
 * to that island's ring, like an island service; anything else is handed
 * to the local proxy and remembered as LOCAL, so it never changes sides. */
static __always_inline int login_miss(struct xdp_md *ctx, const struct packet *p, const struct service *svc,
				      __u32 sid, __u32 gen, struct ct_entry *ct)
{
	int syn = is_syn(p);
	__u32 island, be_id = 0, handoff = STAT_PASS_HANDOFF;
	struct backend *be;
	int found, probe = 0;

	if (p->kind == PKT_TCP && !syn && local_socket(ctx, p)) {
		/* Remembered again, so the next packets skip the socket lookup. */
		struct ct_entry e = {
			.service = sid,
			.flags = CT_F_LOCAL,
			.gen = gen,
			.created_ns = bpf_ktime_get_coarse_ns(),
		};

		ct_insert(p, &e);
		count(STAT_PASS_LOCAL_SOCKET);
		return XDP_PASS;
	}
	found = affinity_island(p, &island, &probe);
	if (found && probe)
		handoff = STAT_PASS_PROBE;
	if (found && !probe) {
		be = maglev_pick(p, svc, island, &be_id);
		if (be) {
			if (p->kind == PKT_TCP) {
				struct ct_entry e = {
					.backend = be_id,
					.service = sid,
					.gen = gen,
					.created_ns = bpf_ktime_get_coarse_ns(),
				};

				if (ct)
					*ct = e;
				else
					ct_insert(p, &e);
			}
			return account(p, forward(ctx, p, svc->fwd, be, be_id, 0),
				       p->kind == PKT_ICMP_PTB ? STAT_ICMP_PTB_FORWARDED : STAT_FWD_AFFINITY, be_id);
		}
	}
	if (syn) {
		struct ct_entry e = {
			.service = sid,
			.flags = CT_F_LOCAL,
			.gen = gen,
			.created_ns = bpf_ktime_get_coarse_ns(),
		};

		ct_insert(p, &e);
	}
	count(handoff);
	return XDP_PASS;
}

/* vip_filter_bit hashes a destination address (flow_key layout: an IPv4
 * address in the first word, the rest zero) to its VIP filter bit: the
 * top bits of the XOR of its words. */
static __always_inline __u32 vip_filter_bit(const __u8 *addr)
{
	const __u32 *w = (const __u32 *)addr;

	return top_bits(w[0] ^ w[1] ^ w[2] ^ w[3], VIP_FILTER_LOG2);
}

/* maybe_vip says whether the destination may be a VIP address, with one
 * inlined array read: after a flow cache miss it lets the proxy's
 * node-side replies, health-check answers and the host's own traffic pass
 * without a conntrack or services lookup. (Only a VIP flow has a conntrack
 * entry; one left behind by a VIP since removed would pass anyway.) */
static __always_inline int maybe_vip(const struct packet *p)
{
	__u32 zero = 0, bit = vip_filter_bit(p->key.dst);
	struct vip_bits *f = bpf_map_lookup_elem(&vip_filter, &zero);

	if (!f)
		return 1;
	return (f->bits[(bit / 64) & (VIP_FILTER_BITS / 64 - 1)] >> (bit % 64)) & 1;
}

/* place steers a packet conntrack cannot: no entry, an entry from another
 * generation of its service, or one whose node is DOWN or gone. svc is
 * the packet's service when the caller has looked it up already. */
static __always_inline int place(struct xdp_md *ctx, const struct packet *p, struct service *svc,
				 struct ct_entry *ct)
{
	__u32 sid, gen, be_id = 0, outcome, slot;
	struct svc_state *st;
	struct backend *be;
	int recent;

	if (!svc)
		svc = lookup_service(p);
	if (!svc) {
		count(STAT_PASS_NON_VIP);
		return XDP_PASS;
	}
	sid = svc->id;
	st = bpf_map_lookup_elem(&service_state, &sid);
	if (!st) {
		count(STAT_DROP_NO_BACKEND);
		return XDP_DROP;
	}
	gen = st->gen;

	/* An entry written before the service changed keeps its node if that
	 * node is still usable and serves the service's island. */
	if (ct) {
		be_id = ct->backend;
		be = bpf_map_lookup_elem(&backends, &be_id);
		if (usable(be) && (svc->route == ROUTE_LOGIN || be->island == svc->island)) {
			ct->service = sid;
			ct->gen = gen;
			return account(p, forward(ctx, p, svc->fwd, be, be_id, 0),
				       established_outcome(p), be_id);
		}
	}

	if (svc->route == ROUTE_LOGIN)
		return login_miss(ctx, p, svc, sid, gen, ct);

	/* A SYN leaves no state (see process()): right after its ring changed,
	 * a flow's ACK may follow a SYN placed on the ring before. For a
	 * while after each change, SYNs are remembered, and an ACK that
	 * conntrack does not know goes where the previous ring sends it, if
	 * that node is UP or DRAINING: the flow began under that ring, or
	 * began unseen (another LB host, an eviction) and most likely under
	 * it too. */
	slot = ring_slot(svc, svc->island);
	recent = !ct && p->kind == PKT_TCP && ring_recent(slot);
	be = NULL;
	if (recent && !is_syn(p))
		be = ring_pick(bpf_map_lookup_elem(&rings_prev, &slot), p, &be_id, 1);
	if (!be)
		be = ring_pick(bpf_map_lookup_elem(&rings, &slot), p, &be_id, 0);
	if (!be) {
		count(STAT_DROP_NO_BACKEND);
		return XDP_DROP;
	}
	if (p->kind == PKT_ICMP_PTB) {
		/* ICMP errors follow flows; they never create one. */
		outcome = STAT_ICMP_PTB_FORWARDED;
	} else if (ct) {
		outcome = STAT_FWD_RESCHEDULED;
		ct->backend = be_id;
		ct->service = sid;
		ct->gen = gen;
		ct->flags = 0;
	} else if (is_syn(p) && !recent) {
		/* Remembered from the handshake's ACK on. */
		outcome = STAT_FWD_NEW;
	} else {
		struct ct_entry e = {
			.backend = be_id,
			.service = sid,
			.gen = gen,
			.created_ns = bpf_ktime_get_coarse_ns(),
		};

		outcome = is_syn(p) ? STAT_FWD_NEW : STAT_FWD_LEARNED;
		ct_insert(p, &e);
	}
	return account(p, forward(ctx, p, svc->fwd, be, be_id, 0), outcome, be_id);
}

/* fc_slot returns the flow cache entry a flow may occupy. The index is a
 * cheap fold of the key's words: flows that collide (by chance, or made
 * to by a client) only cost each other a conntrack lookup, never a wrong
 * node, so a strong hash would be wasted. */
static __always_inline struct fc_entry *fc_slot(const struct packet *p)
{
	const __u32 *w = (const __u32 *)&p->key;
	__u32 slot = top_bits(w[0] ^ w[1] ^ w[2] ^ w[3] ^ rol32(w[4] ^ w[5] ^ w[6] ^ w[7], 16) ^ w[8] ^ hash_seed,
			      FLOW_CACHE_LOG2);

	return bpf_map_lookup_elem(&flow_cache, &slot);
}

/* fc_hit says whether the entry is a fresh copy of this flow's conntrack
 * entry (track() then checks its generation). The key's words are
 * compared as parse() wrote them (see key_addr4). */
static __always_inline int fc_hit(const struct fc_entry *e, const struct packet *p, __u32 now)
{
	const __u64 *a = (const __u64 *)&e->key, *b = (const __u64 *)&p->key;
	__u64 diff = (a[0] ^ b[0]) | (a[2] ^ b[2]) | (a[4] ^ b[4]);

	/* An IPv4 key's words 1 and 3 are zero (key_addr4), and an entry is a
	 * copy of a key: an entry whose last word, the family's, matches an
	 * IPv4 packet's has them zero too. */
	if (p->key.family != FAMILY_V4)
		diff |= (a[1] ^ b[1]) | (a[3] ^ b[3]);
	return !diff && now - e->stamp < FLOW_CACHE_TTL_JIFFIES;
}

/* fc_fill copies a conntrack entry that established() just forwarded
 * with, with its service's forwarding mode, the next hop it used (for
 * l2dsr) and the generation read before conntrack was: a write to the
 * maps after that read makes the copy stale. The next hop's MACs are
 * copied as they are: a neighbour change reaches a flow within
 * NH_CACHE_TTL_JIFFIES + FLOW_CACHE_TTL_JIFFIES. */
static __always_inline void fc_fill(struct fc_entry *e, const struct packet *p, const struct ct_entry *ct,
				    __u8 fwd, __u32 gen, __u32 now)
{
	__u32 be_id = ct->backend;
	struct nh_entry *nh = bpf_map_lookup_elem(&nh_cache, &be_id);

	if (!nh)
		return;
	__builtin_memcpy(&e->key, &p->key, sizeof(e->key));
	e->backend = be_id;
	e->service = ct->service;
	e->flags = (ct->flags & 0xff) | fwd << 8;
	e->gen = gen;
	e->stamp = now;
	__builtin_memcpy(e->dmac, nh->dmac, 6);
	__builtin_memcpy(e->smac, nh->smac, 6);
	e->ifindex = nh->ifindex;
}

/* fc_generation reads the flow cache's generation: for a copy, after its
 * key matched (non-VIP packets never read it); for filling one, before
 * anything the copy is made from (the barrier keeps it there). */
static __always_inline __u32 fc_generation(void)
{
	__u32 zero = 0, *g = bpf_map_lookup_elem(&flow_cache_gen, &zero), gen = g ? *g : 0;

	asm volatile("" : "+r"(gen)::"memory");
	return gen;
}

/* track: the flow cache, then conntrack, so an established flow costs
 * an array read (or one hash lookup); everything else then looks up
 * services. A copy of an older generation is ignored and conntrack
 * decides, as without a cache; the next packet copies the entry that
 * decision left.
 *
 * A SYN to an island service skips the flow cache and conntrack: Maglev
 * places it, and conntrack learns the flow from its first packet without
 * SYN (the handshake's ACK), placed on the same ring. So a SYN costs no
 * conntrack write, and a SYN flood neither fills conntrack nor evicts the
 * entries of established flows. (For a while after a ring changes, SYNs
 * are remembered and unknown ACKs follow the previous ring: see place().)
 * A front-door SYN takes the full path: its side, proxy or island, is
 * remembered from the first packet. */
static __always_inline int track(struct xdp_md *ctx, struct packet *p, struct service **svc, struct ct_entry **ct)
{
	__u32 now = bpf_jiffies64(), gen, sid, be_id, flags, ct_gen;
	struct fc_entry *fc;
	__u8 fwd = 0;
	int rc, copy;

	/* The SYN test sits between the slot's address and its read: a SYN
	 * skips the read (a likely cache miss for a new flow), and the
	 * established path keeps its order (ahead of fc_slot, the test cost
	 * every established ipip packet 2–3 ns in A/B runs). */
	fc = fc_slot(p);
	if (is_syn(p)) {
		if (!maybe_vip(p) || !(*svc = lookup_service(p))) {
			count(STAT_PASS_NON_VIP);
			return XDP_PASS;
		}
		if ((*svc)->route != ROUTE_LOGIN)
			return CONTINUE;
	}
	copy = fc && fc_hit(fc, p, now);
	/* A copy of an l2dsr flow (no flags) of the current generation holds
	 * all its segments need (an ICMP error about the flow, counted apart,
	 * takes established()). Tested first: the flags exclude LOCAL. */
	if (copy && fc->flags == FWD_L2DSR << 8 && p->kind == PKT_TCP && fc->gen == fc_generation())
		return account(p, l2_out(ctx, p, fc->dmac, fc->ifindex), STAT_FWD_ESTABLISHED, fc->backend);
	/* A LOCAL copy passes whatever the generation, as a LOCAL entry
	 * passes before established() checks anything. */
	if (copy && (fc->flags & CT_F_LOCAL)) {
		count(STAT_PASS_LOCAL);
		return XDP_PASS;
	}
	copy = copy && fc->gen == fc_generation();
	if (copy) {
		sid = fc->service;
		be_id = fc->backend;
		flags = fc->flags & 0xff;
		fwd = fc->flags >> 8;
		ct_gen = 0;
	} else {
		if (!maybe_vip(p)) {
			count(STAT_PASS_NON_VIP);
			return XDP_PASS;
		}
		gen = fc_generation();
		*ct = ct_lookup(p);
		if (!*ct)
			return CONTINUE;
		sid = (*ct)->service;
		be_id = (*ct)->backend;
		flags = (*ct)->flags;
		ct_gen = (*ct)->gen;
	}
	/* A copy always forwards: nothing established() checks has changed
	 * since it was made. */
	rc = established(ctx, p, sid, be_id, flags, ct_gen, copy, &fwd);
	/* Copied only once it forwarded (or passed): a copy never holds the
	 * next hop of a packet dropped for want of one. */
	if ((rc == XDP_TX || rc == XDP_REDIRECT || rc == XDP_PASS) && !copy && fc)
		fc_fill(fc, p, *ct, fwd, gen, now);
	return rc;
}

/* process: track, then place what tracking could not forward — from one
 * call site, so the program holds one copy of place() and its forwarding
 * steps. */
static __always_inline int process(struct xdp_md *ctx, struct packet *p)
{
	struct service *svc = NULL;
	struct ct_entry *ct = NULL;
	int rc;

	rc = track(ctx, p, &svc, &ct);
	if (rc != CONTINUE)
		return rc;
	return place(ctx, p, svc, ct);
}

static __always_inline int balance(struct xdp_md *ctx)
{
	struct packet p;
	int rc;

	/* parse() writes the key and offsets of every packet it keeps; these
	 * are the fields it writes only for some (zeroing all of p cost a
	 * store per word on every packet). */
	p.kind = 0;
	p.vlan = 0;
	p.tcp_flags = 0;

	rc = parse(ctx, &p);
	if (rc != CONTINUE)
		return rc;
	return process(ctx, &p);
}

#endif
