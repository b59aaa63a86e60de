/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: Internet checksums of headers built in XDP. */
#ifndef ATOLL_CSUM_H
#define ATOLL_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* ipv4_csum computes the checksum of an option-less IPv4 header whose
 * check field is zero. */
static __always_inline __u16 ipv4_csum(const struct iphdr *iph)
{
	const __u16 *p = (const __u16 *)iph;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*iph) >> 1); i++)
		sum += p[i];
	return csum_fold(sum);
}

#endif
