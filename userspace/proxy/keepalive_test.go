package proxy

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func sockopt(t *testing.T, c net.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// TestListenKeepAliveInherited: a socket accepted by a listener made with
// ListenKeepAlive and KeepAlive: -1 (Go sets nothing) has the sessions'
// keep-alive, copied by the kernel from the listener; one accepted
// without it has none — the inheritance is what sets it.
func TestListenKeepAliveInherited(t *testing.T) {
	for _, tc := range []struct {
		name    string
		inherit bool
	}{{"listener keep-alive", true}, {"none", false}} {
		t.Run(tc.name, func(t *testing.T) {
			lc := net.ListenConfig{KeepAlive: -1, Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					if tc.inherit {
						serr = ListenKeepAlive(int(fd))
					}
				})
				if err != nil {
					return err
				}
				return serr
			}}
			ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			a, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			on := sockopt(t, a, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
			if tc.inherit != (on == 1) {
				t.Fatalf("accepted socket SO_KEEPALIVE = %d, want %v", on, tc.inherit)
			}
			if tc.inherit {
				if idle := sockopt(t, a, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); idle != int(keepAlive.Idle/time.Second) {
					t.Fatalf("accepted socket TCP_KEEPIDLE = %d s, want %v", idle, keepAlive.Idle)
				}
			}
		})
	}
}
