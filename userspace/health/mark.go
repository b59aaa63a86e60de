//go:build linux

package health

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// MarkDialer dials with SO_MARK set to Mark (needs CAP_NET_ADMIN), so a
// policy route or a BPF program can steer the check, e.g. through the VIP
// to one node. It is a comparable value: Monitor.Set sees two MarkDialers
// with the same Mark as the same Dialer and keeps the target's state.
type MarkDialer struct {
	Mark uint32
}

// DialContext implements Dialer.
func (d MarkDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(d.Mark))
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set SO_MARK %#x: %w", d.Mark, serr)
		}
		return nil
	}}
	return nd.DialContext(ctx, network, addr)
}
