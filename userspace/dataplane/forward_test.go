package dataplane_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/netns"
)

// topo is deploy/lab's topology with echo servers on the nodes: a client,
// an LB host running balancer.c natively on its veth, two nodes holding
// the VIPs on lo and running decap.c, all on one bridge.
type topo struct {
	*lab.Lab
}

const servicePort = 143

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// newTopo builds the topology. lbMTU is the MTU of the LB's link (the
// client's is always 1500): 1600 leaves room for the tunnel header.
func newTopo(t *testing.T, lbMTU int) *topo {
	t.Helper()
	requireRoot(t)
	l, err := lab.New(lab.Config{Prefix: "atl-fwd", LBMTU: lbMTU, ConntrackSize: 1 << 16})
	mustDo(t, err)
	t.Cleanup(func() { l.Close() })
	for _, n := range l.Nodes {
		for _, network := range []string{"tcp4", "tcp6"} {
			ln, err := n.NS.Listen(network, fmt.Sprintf(":%d", servicePort))
			mustDo(t, err)
			t.Cleanup(func() { ln.Close() })
			go serveEcho(ln, n.Name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), lab.DefaultTimeout)
	defer cancel()
	mustDo(t, l.WarmNeighbours(ctx, servicePort))
	return &topo{l}
}

// serveEcho greets each connection with the node's name, then echoes.
func serveEcho(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
			io.Copy(c, c)
		}()
	}
}

// configure installs one service over both nodes and returns the ring.
func (tp *topo) configure(t *testing.T, svc maps.Service, nodesV6 bool) []uint32 {
	t.Helper()
	table, err := tp.Configure(svc, nodesV6)
	mustDo(t, err)
	return table
}

// session dials the VIP from the client, checks the greeting names the
// predicted node and that `size` random bytes come back intact.
func (tp *topo) session(ctx context.Context, vip netip.AddrPort, table []uint32, size int) (string, error) {
	c, err := tp.Client.DialContext(ctx, "tcp", vip.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	id, _ := maps.PickFromTable(table, maps.NewFlowKey(netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), vip), tp.Balancer.HashSeed)
	r := bufio.NewReader(c)
	greet, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("greeting: %w", err)
	}
	fields := strings.Fields(greet)
	if len(fields) != 2 {
		return "", fmt.Errorf("bad greeting %q", greet)
	}
	if want := tp.NodeByID(id).Name; fields[0] != want {
		return "", fmt.Errorf("from %v: served by %s, Go predicts %s", local, fields[0], want)
	}
	// The node sees the client's own address (no NAT, no proxy).
	if seen := netip.MustParseAddrPort(fields[1]); seen.Addr().Unmap() != local.Addr().Unmap() || seen.Port() != local.Port() {
		return "", fmt.Errorf("node saw %v, client is %v", seen, local)
	}
	msg := make([]byte, size)
	rand.Read(msg)
	errc := make(chan error, 1)
	go func() { _, err := c.Write(msg); errc <- err }()
	got := make([]byte, size)
	if _, err := io.ReadFull(r, got); err != nil {
		return "", fmt.Errorf("echo: %w", err)
	}
	if err := <-errc; err != nil {
		return "", err
	}
	if !bytes.Equal(got, msg) {
		return "", fmt.Errorf("echo differs")
	}
	return fields[0], nil
}

// sniffReplies captures, in the client namespace, the source MACs of
// frames from the service port until stop is closed.
func sniffReplies(t *testing.T, ns *netns.NS, stop <-chan struct{}) <-chan map[string]int {
	t.Helper()
	var fd int
	mustDo(t, ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		idx, err := ns.LinkIndex("eth0")
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: idx})
	}))
	tv := unix.Timeval{Usec: 100000}
	mustDo(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
	out := make(chan map[string]int, 1)
	go func() {
		defer unix.Close(fd)
		seen := map[string]int{}
		buf := make([]byte, 2048)
		for {
			select {
			case <-stop:
				out <- seen
				return
			default:
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			if sport, ok := tcpSourcePort(buf[:n]); ok && sport == servicePort {
				seen[net.HardwareAddr(buf[6:12]).String()]++
			}
		}
	}()
	return out
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func tcpSourcePort(f []byte) (uint16, bool) {
	if len(f) < 14 {
		return 0, false
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		if len(f) < 34 || f[23] != 6 {
			return 0, false
		}
		off := 14 + int(f[14]&0xf)*4
		if len(f) < off+2 {
			return 0, false
		}
		return binary.BigEndian.Uint16(f[off:]), true
	case 0x86dd:
		if len(f) < 56 || f[20] != 6 {
			return 0, false
		}
		return binary.BigEndian.Uint16(f[54:]), true
	}
	return 0, false
}

// TestForwardRealTCP: many real connections through the balancer in every
// forwarding mode and family pairing reach the node Go predicts, get their
// bytes back intact, spread over both nodes, and are answered directly by
// the nodes.
func TestForwardRealTCP(t *testing.T) {
	tp := newTopo(t, 1600)
	const conns = 100
	for i, tc := range []struct {
		name    string
		fwd     maps.ForwardMode
		vip     netip.Addr
		nodesV6 bool
	}{
		{"l2dsr v4", maps.ForwardL2DSR, vip4, false},
		{"l2dsr v6", maps.ForwardL2DSR, vip6, true},
		{"ipip 4in4", maps.ForwardIPIP, vip4, false},
		{"ipip 6in6", maps.ForwardIPIP, vip6, true},
		{"ipip 4in6", maps.ForwardIPIP, vip4, true},
		{"ipip 6in4", maps.ForwardIPIP, vip6, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := maps.Service{VIP: tc.vip, Port: servicePort, ID: uint32(10 + i), Forward: tc.fwd, Route: maps.RouteIsland}
			table := tp.configure(t, svc, tc.nodesV6)
			t.Cleanup(func() { tp.Balancer.Maps.DeleteService(tc.vip, servicePort) })
			decapBefore := tp.decapOK(t)

			stop := make(chan struct{})
			sniffed := sniffReplies(t, tp.Client, stop)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var (
				mu     sync.Mutex
				byNode = map[string]int{}
				wg     sync.WaitGroup
				errs   = make(chan error, conns)
				sem    = make(chan struct{}, 16)
			)
			for c := 0; c < conns; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					node, err := tp.session(ctx, netip.AddrPortFrom(tc.vip, servicePort), table, 8192)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					byNode[node]++
					mu.Unlock()
				}()
			}
			wg.Wait()
			close(stop)
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			t.Logf("%d connections by node: %v", conns, byNode)
			for _, n := range tp.Nodes {
				if byNode[n.Name] == 0 {
					t.Fatalf("node %s got no connection: %v", n.Name, byNode)
				}
			}
			// Direct server return: replies come from the nodes' MACs, never
			// from the LB's.
			macs := <-sniffed
			if macs[tp.LBMAC.String()] != 0 {
				t.Fatalf("%d reply frames came through the LB", macs[tp.LBMAC.String()])
			}
			fromNodes := 0
			for _, n := range tp.Nodes {
				fromNodes += macs[n.MAC.String()]
			}
			if fromNodes == 0 {
				t.Fatalf("no reply frames from the nodes seen: %v", macs)
			}
			st, err := tp.Balancer.Maps.ReadStats()
			mustDo(t, err)
			if st[maps.StatFwdNew] == 0 {
				t.Fatal("no new flow counted")
			}
			if tc.fwd == maps.ForwardIPIP && tp.decapOK(t) <= decapBefore {
				t.Fatal("nodes decapsulated nothing")
			}
		})
	}
}

// decapOK sums the decapsulated packets of every node.
func (tp *topo) decapOK(t *testing.T) uint64 {
	var sum uint64
	for _, n := range tp.Nodes {
		st, err := n.Decap.ReadStats()
		mustDo(t, err)
		sum += st[maps.DecapOK]
	}
	return sum
}

// TestPathMTUThroughTunnel: with a 1500-byte LB link the tunnel header does
// not fit a full-size client segment; the balancer answers with ICMP
// "fragmentation needed" / "packet too big" from the VIP, the client's TCP
// lowers its segment size, and the bytes still arrive.
func TestPathMTUThroughTunnel(t *testing.T) {
	tp := newTopo(t, 1500)
	for i, tc := range []struct {
		name    string
		vip     netip.Addr
		nodesV6 bool
	}{
		{"4in4", vip4, false},
		{"6in6", vip6, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := maps.Service{VIP: tc.vip, Port: servicePort, ID: uint32(20 + i), Forward: maps.ForwardIPIP, Route: maps.RouteIsland}
			table := tp.configure(t, svc, tc.nodesV6)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for c := 0; c < 5; c++ {
				if _, err := tp.session(ctx, netip.AddrPortFrom(tc.vip, servicePort), table, 256<<10); err != nil {
					t.Fatal(err)
				}
			}
			st, err := tp.Balancer.Maps.ReadStats()
			mustDo(t, err)
			if st[maps.StatICMPPTBSent] == 0 {
				t.Fatal("no ICMP too-big was sent, so the test proved nothing")
			}
			t.Logf("ICMP too-big sent: %d", st[maps.StatICMPPTBSent])
		})
	}
}
