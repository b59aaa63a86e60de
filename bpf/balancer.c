//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* balancer.c: atoll's XDP load balancer. The steps live in lb.h; see
 * docs/architecture.md for the packet path. */
#include "lb.h"

SEC("xdp")
int xdp_balancer(struct xdp_md *ctx)
{
	return balance(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
