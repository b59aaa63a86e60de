/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* hash.h: the flow hash, Bob Jenkins' lookup3 as in the kernel's jhash.h.
 * maps/hash.go mirrors it bit for bit so Go can predict every choice. */
#ifndef ATOLL_HASH_H
#define ATOLL_HASH_H

#include <linux/types.h>
#include "types.h"

#define JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

#define __jhash_mix(a, b, c)            \
	{                               \
		a -= c;                 \
		a ^= rol32(c, 4);       \
		c += b;                 \
		b -= a;                 \
		b ^= rol32(a, 6);       \
		a += c;                 \
		c -= b;                 \
		c ^= rol32(b, 8);       \
		b += a;                 \
		a -= c;                 \
		a ^= rol32(c, 16);      \
		c += b;                 \
		b -= a;                 \
		b ^= rol32(a, 19);      \
		a += c;                 \
		c -= b;                 \
		c ^= rol32(b, 4);       \
		b += a;                 \
	}

#define __jhash_final(a, b, c)          \
	{                               \
		c ^= b;                 \
		c -= rol32(b, 14);      \
		a ^= c;                 \
		a -= rol32(c, 11);      \
		b ^= a;                 \
		b -= rol32(a, 25);      \
		c ^= b;                 \
		c -= rol32(b, 16);      \
		a ^= c;                 \
		a -= rol32(c, 4);       \
		b ^= a;                 \
		b -= rol32(a, 14);      \
		c ^= b;                 \
		c -= rol32(b, 24);      \
	}

/* top_bits spreads a 32-bit fold over its top `bits` bits (Fibonacci
 * hashing): the index of a small table (the VIP filter, the flow cache).
 * maps/hash.go's topBits mirrors it. */
static __always_inline __u32 top_bits(__u32 x, int bits)
{
	return (x * 0x9E3779B1u) >> (32 - bits);
}

/* flow_hash hashes the ten 32-bit words of a flow key (host byte order of
 * the raw bytes). */
static __always_inline __u32 flow_hash(const struct flow_key *key, __u32 seed)
{
	const __u32 *k = (const __u32 *)key;
	__u32 a, b, c;

	a = b = c = JHASH_INITVAL + (10 << 2) + seed;
	a += k[0];
	b += k[1];
	c += k[2];
	__jhash_mix(a, b, c);
	a += k[3];
	b += k[4];
	c += k[5];
	__jhash_mix(a, b, c);
	a += k[6];
	b += k[7];
	c += k[8];
	__jhash_mix(a, b, c);
	a += k[9];
	__jhash_final(a, b, c);
	return c;
}

#endif
