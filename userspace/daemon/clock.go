package daemon

import "golang.org/x/sys/unix"

type unixTimespec = unix.Timespec

// clockGettime reads CLOCK_MONOTONIC_COARSE, the clock behind
// bpf_ktime_get_coarse_ns.
func clockGettime(ts *unix.Timespec) {
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, ts)
}
