#!/usr/bin/env bash
# atoll-bgp-guard.sh: announce the VIPs (bird-lb.conf) only while atoll
# answers. Run it as a service next to bird on each LB host; it checks every
# second and flips the static protocols that carry the VIP routes.
set -uo pipefail
socket=${ATOLL_SOCKET:-/run/atoll/atoll.sock}
state=
while sleep 1; do
	if timeout 2 atoll status -socket "$socket" >/dev/null 2>&1; then want=enable; else want=disable; fi
	if [[ $want != "$state" ]]; then
		birdc "$want" vips4 >/dev/null && birdc "$want" vips6 >/dev/null && state=$want
		logger -t atoll-bgp-guard "VIP announcement: $want"
	fi
done
