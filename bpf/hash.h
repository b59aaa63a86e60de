/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* hash.h: the flow hash and the small tables' indexes. maps/hash.go
 * mirrors them bit for bit so Go can predict every choice. */
#ifndef ATOLL_HASH_H
#define ATOLL_HASH_H

#include <linux/types.h>
#include "types.h"

static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

/* top_bits spreads a 32-bit fold over its top `bits` bits (Fibonacci
 * hashing): the index of a small table (the VIP filter, the flow cache).
 * maps/hash.go's topBits mirrors it. */
static __always_inline __u32 top_bits(__u32 x, int bits)
{
	return (x * 0x9E3779B1u) >> (32 - bits);
}

/* fh_step absorbs one 64-bit word: multiply by an odd constant (a
 * bijection), then fold the high half into the low so the next multiply
 * carries every bit upward again. */
static __always_inline __u64 fh_step(__u64 h, __u64 w)
{
	h = (h ^ w) * 0x9E3779B97F4A7C15ull;
	return h ^ (h >> 32);
}

/* flow_hash hashes a flow key's five 64-bit words in two independent
 * chains (even and odd words: each half of an address), joined by
 * MurmurHash3's 64-bit finalizer, and returns the top 32 bits. The chains
 * are three and two multiplies deep where lookup3 (jhash) is some sixty
 * dependent operations: a SYN is placed ≈ 25 ns sooner. */
static __always_inline __u32 flow_hash(const struct flow_key *key, __u32 seed)
{
	const __u64 *w = (const __u64 *)key;
	__u64 a = fh_step(seed, w[0]), b = fh_step(~(__u64)seed, w[1]);

	a = fh_step(a, w[2]);
	b = fh_step(b, w[3]);
	a = fh_step(a, w[4]) ^ b;
	a ^= a >> 33;
	a *= 0xff51afd7ed558ccdull;
	a ^= a >> 33;
	a *= 0xc4ceb9fe1a85ec53ull;
	a ^= a >> 33;
	return a >> 32;
}

/* ring_index maps a flow hash onto a ring of `size` entries (Lemire's
 * multiply-shift: the hash's top bits pick the slot; no division). */
static __always_inline __u32 ring_index(__u32 hash, __u32 size)
{
	return ((__u64)hash * size) >> 32;
}

#endif
