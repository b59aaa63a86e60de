package dataplane_test

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/dataplane"
)

// markedGreeting dials vip from the LB namespace with a socket mark and
// returns the first line the far end sends.
func markedGreeting(t *testing.T, tp *topo, vip netip.AddrPort, mark uint32) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var (
		line string
		err  error
	)
	mustDo(t, tp.LB.Do(func() error {
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)) })
			if err != nil {
				return err
			}
			return serr
		}}
		c, derr := d.DialContext(ctx, "tcp", vip.String())
		if derr != nil {
			err = derr
			return nil
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		return nil
	}))
	return line, err
}

// TestHealthSteer: a check marked for a backend reaches exactly that node
// through the VIP, in l2dsr and ipip; a node without the VIP on lo fails
// it although its own address still answers.
func TestHealthSteer(t *testing.T) {
	tp := newTopo(t, 1600)
	hc, err := dataplane.LoadHealthSteer(0)
	mustDo(t, err)
	t.Cleanup(func() { hc.Close() })
	mustDo(t, hc.SetSources(lab.LBV4.Addr(), lab.LBV6.Addr()))
	mustDo(t, tp.LB.Do(func() error {
		l, err := hc.Attach(tp.LBIfindex)
		if err == nil {
			t.Cleanup(func() { l.Close() })
		}
		return err
	}))
	routing := &dataplane.HCRouting{Handle: tp.LB.Handle(), Ifindex: tp.LBIfindex, MarkBase: hc.MarkBase, Table: dataplane.DefaultHCTable}
	mustDo(t, routing.Setup())
	mustDo(t, routing.SetVIPs([]netip.Addr{lab.VIP4, lab.VIP6}))

	for _, tc := range []struct {
		name    string
		fwd     maps.ForwardMode
		vip     netip.Addr
		nodesV6 bool
	}{
		{"l2dsr v4", maps.ForwardL2DSR, lab.VIP4, false},
		{"l2dsr v6", maps.ForwardL2DSR, lab.VIP6, true},
		{"ipip 4in4", maps.ForwardIPIP, lab.VIP4, false},
		{"ipip 6in6", maps.ForwardIPIP, lab.VIP6, true},
		{"ipip 4in6", maps.ForwardIPIP, lab.VIP4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, n := range tp.Nodes {
				addr := n.V4
				if tc.nodesV6 {
					addr = n.V6
				}
				id := uint32(100 + i)
				mustDo(t, hc.SetTarget(id, addr, tc.fwd))
				greet, err := markedGreeting(t, tp, netip.AddrPortFrom(tc.vip, servicePort), hc.Mark(id))
				if err != nil {
					t.Fatalf("check steered to %s: %v", n.Name, err)
				}
				if !strings.HasPrefix(greet, n.Name+" ") {
					t.Fatalf("check steered to %s was answered by %q", n.Name, greet)
				}
				// The node saw the LB's own address (of the VIP's family).
				lb := lab.LBV4.Addr()
				if tc.vip.Is6() {
					lb = lab.LBV6.Addr()
				}
				if !strings.Contains(greet, lb.String()) {
					t.Fatalf("node greeted %q, want it to see the LB's address %v", greet, lb)
				}
			}
		})
	}

	t.Run("node without the VIP fails", func(t *testing.T) {
		n := tp.Nodes[0]
		mustDo(t, hc.SetTarget(200, n.V4, maps.ForwardIPIP))
		if _, err := markedGreeting(t, tp, netip.AddrPortFrom(lab.VIP4, servicePort), hc.Mark(200)); err != nil {
			t.Fatalf("before removing the VIP: %v", err)
		}
		h := n.NS.Handle()
		lo, err := h.LinkByName("lo")
		mustDo(t, err)
		addr, err := netlinkAddr(netip.PrefixFrom(lab.VIP4, 32))
		mustDo(t, err)
		mustDo(t, h.AddrDel(lo, addr))
		t.Cleanup(func() { h.AddrAdd(lo, addr) })
		if greet, err := markedGreeting(t, tp, netip.AddrPortFrom(lab.VIP4, servicePort), hc.Mark(200)); err == nil {
			t.Fatalf("check through the VIP passed without the VIP on the node: %q", greet)
		}
		// Its own address still answers.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := tp.LB.WaitTCP(ctx, netip.AddrPortFrom(n.V4, servicePort).String()); err != nil {
			t.Fatalf("the node's own address stopped answering: %v", err)
		}
	})
	t.Run("unmarked traffic is untouched, unknown ids are dropped", func(t *testing.T) {
		st, err := hc.ReadStats()
		mustDo(t, err)
		if st[0] == 0 {
			t.Fatal("no unmarked packet passed hc.c")
		}
		if _, err := markedGreeting(t, tp, netip.AddrPortFrom(lab.VIP4, servicePort), hc.Mark(4000)); err == nil {
			t.Fatal("a check for an unknown id got through")
		}
		st2, _ := hc.ReadStats()
		if st2[2] <= st[2] {
			t.Fatal("hc_no_target not counted")
		}
	})
}
