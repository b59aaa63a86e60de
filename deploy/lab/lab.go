// Package lab builds atoll's test and demo topologies in network
// namespaces: a client, a load-balancer host running the balancer natively
// on its veth, and mail-store nodes holding the VIPs on lo (and running
// decap.c), all on one bridge, addressed from the documentation ranges.
// Replies go from the nodes straight to the client (direct server return).
//
// With Config.LBHosts = 2 and Config.MTA it is the reference topology's
// network (package deploy/lab/reference starts the daemons on it): two LB
// hosts, lb-left and lb-right, behind a floating next-hop address that
// keepalived moves between them, and an MTA host.
package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/dataplane"
	"github.com/atoll-lb/atoll/userspace/netns"
)

// Addresses of the topology. Clients live in 192.0.2.0/24, LB hosts and
// nodes in 198.51.100.0/24, VIPs in 203.0.113.0/24; IPv6 in 2001:db8::/32.
var (
	ClientV4 = netip.MustParsePrefix("192.0.2.10/24")
	ClientV6 = netip.MustParsePrefix("2001:db8:c::10/64")
	LBV4     = netip.MustParsePrefix("198.51.100.1/24")
	LBV6     = netip.MustParsePrefix("2001:db8:1::1/64")
	VIP4     = netip.MustParseAddr("203.0.113.10")
	VIP6     = netip.MustParseAddr("2001:db8:f::10")

	clientNet4 = netip.MustParsePrefix("192.0.2.0/24")
	clientNet6 = netip.MustParsePrefix("2001:db8:c::/64")
	serverNet4 = netip.MustParsePrefix("198.51.100.0/24")
	serverNet6 = netip.MustParsePrefix("2001:db8:1::/64")
	vipNet4    = netip.MustParsePrefix("203.0.113.0/24")
	vipNet6    = netip.MustParsePrefix("2001:db8:f::/64")
)

// Config shapes a topology.
type Config struct {
	// Prefix starts every namespace name ("atl" if empty).
	Prefix string
	// Nodes is the number of nodes per island (default 2): node-a1,
	// node-a2, … in island a, node-b1, … in island b.
	Nodes int
	// Islands is the number of islands (default 1): a, b, c, …
	Islands int
	// Servers adds a host for directory servers (slapd) on the server
	// segment: ServerV4 / ServerV6.
	Servers bool
	// LBMTU is the MTU of the LB host's link; the default 1600 leaves room
	// for the tunnel header. The client's link is always 1500.
	LBMTU int
	// ConntrackSize of the balancer (0: the object's default).
	ConntrackSize uint32
	// NoBalancer leaves the LB host without a balancer: `atoll run` will
	// load and attach its own.
	NoBalancer bool
	// LBHosts is the number of LB hosts: 1 (default) or 2. The first is
	// Lab.LB (LBV4/LBV6); the second, lb-right, is LBRightV4/LBRightV6 and
	// never gets a balancer from the lab (run `atoll run` there). With two,
	// the client (and MTA) hosts route the VIPs via FloatV4/FloatV6, the
	// address the LB hosts' VRRP instance (keepalived) moves between them;
	// nothing answers there until one of them holds it. Both LB hosts'
	// addresses are accepted by every node's decap.
	LBHosts int
	// VIPGateway4 and VIPGateway6, when valid, replace the client's and
	// the MTA's next hop toward the VIPs (e.g. a router host's address).
	VIPGateway4, VIPGateway6 netip.Addr
	// MTA adds the MTA host (MTALeftV4, MTARightV4, MTALeftV6, MTARightV6
	// on one interface: two MTA instances, smtp-left and smtp-right). It
	// routes the VIPs like the client.
	MTA bool
	// NodeName names node i (from 0) of an island; default "node-<island><i+1>".
	NodeName func(island string, i int) string
	// NodeVIPs are the VIPs the nodes of an island hold on lo; default
	// VIP4 and VIP6 for every island.
	NodeVIPs func(island string) []netip.Addr
	// Router adds a router host (RouterV4, RouterV6) on the segment, with
	// forwarding on, L4 multipath hashing and no ICMP redirects (it sends
	// packets back out the interface they came in on). It is the VIPs'
	// next hop unless VIPGateway4 says otherwise: the BGP example, where
	// both LB hosts announce the VIPs to it and it spreads flows over
	// them by ECMP.
	Router bool
}

// The second LB host, the floating next hop of the VIPs (VRRP), and the
// MTA host's addresses (one per MTA instance).
var (
	LBRightV4  = netip.MustParsePrefix("198.51.100.2/24")
	LBRightV6  = netip.MustParsePrefix("2001:db8:1::2/64")
	FloatV4    = netip.MustParsePrefix("198.51.100.3/24")
	FloatV6    = netip.MustParsePrefix("2001:db8:1::3/64")
	MTALeftV4  = netip.MustParsePrefix("198.51.100.41/24")
	MTARightV4 = netip.MustParsePrefix("198.51.100.42/24")
	MTALeftV6  = netip.MustParsePrefix("2001:db8:1::41/64")
	MTARightV6 = netip.MustParsePrefix("2001:db8:1::42/64")
	RouterV4   = netip.MustParsePrefix("198.51.100.4/24")
	RouterV6   = netip.MustParsePrefix("2001:db8:1::4/64")
)

// LBHost is one load-balancer host.
type LBHost struct {
	Name    string // lb-left, lb-right
	NS      *netns.NS
	V4, V6  netip.Prefix
	MAC     net.HardwareAddr
	Ifindex int
}

// ServerV4 and ServerV6 are the addresses of the servers host.
var (
	ServerV4 = netip.MustParsePrefix("198.51.100.30/24")
	ServerV6 = netip.MustParsePrefix("2001:db8:1::30/64")
)

// Node is one mail-store node.
type Node struct {
	Name   string
	Island string
	ID     uint32 // backend id
	NS     *netns.NS
	V4, V6 netip.Addr
	MAC    net.HardwareAddr
	Decap  *dataplane.Decap
}

// Lab is a running topology. Close removes all of it.
type Lab struct {
	Segment   *netns.Segment
	Client    *netns.NS
	LB        *netns.NS
	LBMAC     net.HardwareAddr
	LBIfindex int
	Balancer  *dataplane.Balancer
	Nodes     []*Node
	// Servers is the directory servers' host (Config.Servers), or nil.
	Servers *netns.NS
	// LBs are the LB hosts (LBs[0].NS == LB).
	LBs []*LBHost
	// MTA is the MTA host (Config.MTA), or nil.
	MTA *netns.NS
	// Router is the router host (Config.Router), or nil.
	Router *netns.NS

	closers []func() error
}

// Namespaces lists the names of every namespace the lab created.
func (l *Lab) Namespaces() []string {
	names := []string{}
	if l.Segment != nil {
		names = append(names, l.Segment.NS.Name)
	}
	for _, ns := range []*netns.NS{l.Client, l.Servers, l.MTA, l.Router} {
		if ns != nil {
			names = append(names, ns.Name)
		}
	}
	for _, lb := range l.LBs {
		names = append(names, lb.NS.Name)
	}
	for _, n := range l.Nodes {
		names = append(names, n.NS.Name)
	}
	return names
}

// Close tears everything down, last created first.
func (l *Lab) Close() error {
	var errs []error
	for i := len(l.closers) - 1; i >= 0; i-- {
		errs = append(errs, l.closers[i]())
	}
	l.closers = nil
	return errors.Join(errs...)
}

func (l *Lab) onClose(f func() error) { l.closers = append(l.closers, f) }

func (l *Lab) host(name string) (*netns.NS, error) {
	ns, err := netns.New(name)
	if err != nil {
		return nil, err
	}
	l.onClose(ns.Close)
	return ns, nil
}

func (l *Lab) attachXDP(ns *netns.NS, ifname string, attach func(int) (link.Link, error)) error {
	idx, err := ns.LinkIndex(ifname)
	if err != nil {
		return err
	}
	return ns.Do(func() error {
		lk, err := attach(idx)
		if err != nil {
			return err
		}
		l.onClose(lk.Close)
		return nil
	})
}

// New builds a topology; on error nothing is left behind.
func New(cfg Config) (_ *Lab, err error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "atl"
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 2
	}
	if cfg.Islands == 0 {
		cfg.Islands = 1
	}
	if cfg.Islands > 26 || cfg.Nodes*cfg.Islands > 18 {
		return nil, fmt.Errorf("lab: %d islands of %d nodes is more than the addressing allows", cfg.Islands, cfg.Nodes)
	}
	if cfg.LBMTU == 0 {
		cfg.LBMTU = 1600
	}
	switch cfg.LBHosts {
	case 0:
		cfg.LBHosts = 1
	case 1, 2:
	default:
		return nil, fmt.Errorf("lab: %d LB hosts: 1 or 2", cfg.LBHosts)
	}
	if cfg.NodeName == nil {
		cfg.NodeName = func(island string, i int) string { return fmt.Sprintf("node-%s%d", island, i+1) }
	}
	if cfg.NodeVIPs == nil {
		cfg.NodeVIPs = func(string) []netip.Addr { return []netip.Addr{VIP4, VIP6} }
	}
	if !cfg.VIPGateway4.IsValid() {
		switch {
		case cfg.Router:
			cfg.VIPGateway4, cfg.VIPGateway6 = RouterV4.Addr(), RouterV6.Addr()
		case cfg.LBHosts == 2:
			cfg.VIPGateway4, cfg.VIPGateway6 = FloatV4.Addr(), FloatV6.Addr()
		default:
			cfg.VIPGateway4, cfg.VIPGateway6 = LBV4.Addr(), LBV6.Addr()
		}
	}
	l := &Lab{}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("lab: %w", err), l.Close())
		}
	}()
	if l.Segment, err = netns.NewSegment(cfg.Prefix+"-seg", 1600); err != nil {
		return nil, err
	}
	l.onClose(l.Segment.Close)
	if err := l.newClient(cfg); err != nil {
		return nil, err
	}
	if err := l.newLB(cfg); err != nil {
		return nil, err
	}
	if cfg.LBHosts == 2 {
		if err := l.newLBHost(cfg, "lb-right", cfg.Prefix+"-lbr", LBRightV4, LBRightV6); err != nil {
			return nil, err
		}
	}
	for isl := range cfg.Islands {
		for i := range cfg.Nodes {
			if err := l.newNode(cfg, isl, i, len(l.Nodes)); err != nil {
				return nil, err
			}
		}
	}
	if cfg.MTA {
		if err := l.newMTA(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.Router {
		if err := l.newRouter(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.Servers {
		if l.Servers, err = l.host(cfg.Prefix + "-srv"); err != nil {
			return nil, err
		}
		if _, err := l.Segment.Attach(l.Servers, "eth0", 1600, ServerV4, ServerV6); err != nil {
			return nil, err
		}
		if err := l.Servers.DisableOffloads("eth0"); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// newClient: routes to the server segment on-link, to the VIPs via the LB
// (or the VIP gateway).
func (l *Lab) newClient(cfg Config) (err error) {
	if l.Client, err = l.host(cfg.Prefix + "-client"); err != nil {
		return err
	}
	c := l.Client
	if _, err := l.Segment.Attach(c, "eth0", 1500, ClientV4, ClientV6); err != nil {
		return err
	}
	// Offloads off: checksums must be complete before XDP_TX touches them.
	if err := c.DisableOffloads("eth0"); err != nil {
		return err
	}
	if cfg.Router {
		if err := noRedirects(c); err != nil {
			return err
		}
	}
	for _, r := range []struct {
		dst netip.Prefix
		gw  netip.Addr
	}{
		{serverNet4, netip.Addr{}}, {serverNet6, netip.Addr{}},
		{vipNet4, cfg.VIPGateway4}, {vipNet6, cfg.VIPGateway6},
	} {
		if err := c.AddRoute(r.dst, "eth0", r.gw); err != nil {
			return err
		}
	}
	return nil
}

// newRouter: a router on the segment that forwards back out the interface
// packets came in on, so it must not send ICMP redirects (and the hosts
// behind it must not follow any); flows are spread over equal-cost next
// hops by their L4 hash.
func (l *Lab) newRouter(cfg Config) (err error) {
	if l.Router, err = l.host(cfg.Prefix + "-rtr"); err != nil {
		return err
	}
	r := l.Router
	if _, err := l.Segment.Attach(r, "eth0", 1500, RouterV4, RouterV6); err != nil {
		return err
	}
	if err := r.DisableOffloads("eth0"); err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"net.ipv4.conf.all.forwarding", "1"}, {"net.ipv6.conf.all.forwarding", "1"},
		{"net.ipv4.conf.all.send_redirects", "0"}, {"net.ipv4.conf.eth0.send_redirects", "0"},
		{"net.ipv4.fib_multipath_hash_policy", "1"}, {"net.ipv6.fib_multipath_hash_policy", "1"},
	} {
		if err := r.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	for _, dst := range []netip.Prefix{clientNet4, clientNet6} {
		if err := r.AddRoute(dst, "eth0", netip.Addr{}); err != nil {
			return err
		}
	}
	return nil
}

// noRedirects makes a host ignore ICMP redirects (the router host sends
// packets back out the interface they came in on).
func noRedirects(ns *netns.NS) error {
	for _, k := range []string{"net.ipv4.conf.all.accept_redirects", "net.ipv4.conf.eth0.accept_redirects",
		"net.ipv6.conf.all.accept_redirects", "net.ipv6.conf.eth0.accept_redirects"} {
		if err := ns.Sysctl(k, "0"); err != nil {
			return err
		}
	}
	return nil
}

// newMTA: the MTA host, with one address per MTA instance; the client
// network on-link, the VIPs via the VIP gateway.
func (l *Lab) newMTA(cfg Config) (err error) {
	if l.MTA, err = l.host(cfg.Prefix + "-mta"); err != nil {
		return err
	}
	m := l.MTA
	if _, err := l.Segment.Attach(m, "eth0", 1500, MTALeftV4, MTALeftV6); err != nil {
		return err
	}
	for _, p := range []netip.Prefix{MTARightV4, MTARightV6} {
		if err := m.AddAddr("eth0", p); err != nil {
			return err
		}
	}
	if err := m.DisableOffloads("eth0"); err != nil {
		return err
	}
	if cfg.Router {
		if err := noRedirects(m); err != nil {
			return err
		}
	}
	for _, r := range []struct {
		dst netip.Prefix
		gw  netip.Addr
	}{
		{clientNet4, netip.Addr{}}, {clientNet6, netip.Addr{}},
		{vipNet4, cfg.VIPGateway4}, {vipNet6, cfg.VIPGateway6},
	} {
		if err := m.AddRoute(r.dst, "eth0", r.gw); err != nil {
			return err
		}
	}
	return nil
}

// newLB: the first LB host (lb-left), with the lab's balancer unless
// NoBalancer.
func (l *Lab) newLB(cfg Config) error {
	if err := l.newLBHost(cfg, "lb-left", cfg.Prefix+"-lb", LBV4, LBV6); err != nil {
		return err
	}
	lb := l.LBs[0]
	l.LB, l.LBMAC, l.LBIfindex = lb.NS, lb.MAC, lb.Ifindex
	if cfg.NoBalancer {
		return nil
	}
	var err error
	if l.Balancer, err = dataplane.LoadBalancer(dataplane.Options{ConntrackSize: cfg.ConntrackSize}); err != nil {
		return err
	}
	l.onClose(l.Balancer.Close)
	if err := l.Balancer.Maps.SetSources(LBV4.Addr(), LBV6.Addr()); err != nil {
		return err
	}
	return l.attachXDP(lb.NS, "eth0", func(i int) (link.Link, error) { return dataplane.AttachXDP(l.Balancer.Program, i) })
}

// newLBHost: forwarding on (bpf_fib_lookup needs it), no ARP answers for
// addresses on lo (the front-door VIP lives there), and an XDP_PASS
// program on the veth peer, without which XDP_TX on a veth drops frames.
func (l *Lab) newLBHost(cfg Config, name, nsName string, v4, v6 netip.Prefix) error {
	ns, err := l.host(nsName)
	if err != nil {
		return err
	}
	h := &LBHost{Name: name, NS: ns, V4: v4, V6: v6}
	peer, err := l.Segment.Attach(ns, "eth0", cfg.LBMTU, v4, v6)
	if err != nil {
		return err
	}
	if err := ns.DisableOffloads("eth0"); err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"net.ipv4.conf.all.forwarding", "1"}, {"net.ipv6.conf.all.forwarding", "1"},
		{"net.ipv4.conf.all.arp_ignore", "1"}, {"net.ipv4.conf.all.arp_announce", "2"},
	} {
		if err := ns.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	for _, dst := range []netip.Prefix{clientNet4, clientNet6} {
		if err := ns.AddRoute(dst, "eth0", netip.Addr{}); err != nil {
			return err
		}
	}
	if h.MAC, err = ns.LinkMAC("eth0"); err != nil {
		return err
	}
	if h.Ifindex, err = ns.LinkIndex("eth0"); err != nil {
		return err
	}
	pass, err := dataplane.NewPassProgram()
	if err != nil {
		return err
	}
	l.onClose(pass.Close)
	if err := l.attachXDP(l.Segment.NS, peer, func(i int) (link.Link, error) { return dataplane.AttachXDP(pass, i) }); err != nil {
		return err
	}
	l.LBs = append(l.LBs, h)
	return nil
}

// newNode: VIPs on lo, no ARP answers for them, routes to the clients
// on-link (replies bypass the LB), decap.c accepting the LB's tunnels.
func (l *Lab) newNode(cfg Config, island, i, global int) error {
	isl := string(rune('a' + island))
	n := &Node{
		Name:   cfg.NodeName(isl, i),
		Island: isl,
		ID:     uint32(global + 1),
		V4:     netip.AddrFrom4([4]byte{198, 51, 100, byte(11 + global)}),
		V6:     netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 15: byte(0x11 + global)}),
	}
	var err error
	if n.NS, err = l.host(fmt.Sprintf("%s-%s%d", cfg.Prefix, isl, i+1)); err != nil {
		return err
	}
	if _, err := l.Segment.Attach(n.NS, "eth0", 1600, netip.PrefixFrom(n.V4, 24), netip.PrefixFrom(n.V6, 64)); err != nil {
		return err
	}
	if err := n.NS.DisableOffloads("eth0"); err != nil {
		return err
	}
	for _, v := range cfg.NodeVIPs(isl) {
		if err := n.NS.AddAddr("lo", netip.PrefixFrom(v, v.BitLen())); err != nil {
			return err
		}
	}
	for _, kv := range [][2]string{{"net.ipv4.conf.all.arp_ignore", "1"}, {"net.ipv4.conf.all.arp_announce", "2"}} {
		if err := n.NS.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	for _, dst := range []netip.Prefix{clientNet4, clientNet6} {
		if err := n.NS.AddRoute(dst, "eth0", netip.Addr{}); err != nil {
			return err
		}
	}
	if n.MAC, err = n.NS.LinkMAC("eth0"); err != nil {
		return err
	}
	sources := []netip.Addr{LBV4.Addr(), LBV6.Addr()}
	if cfg.LBHosts == 2 {
		sources = append(sources, LBRightV4.Addr(), LBRightV6.Addr())
	}
	if n.Decap, err = dataplane.LoadDecap(sources); err != nil {
		return err
	}
	l.onClose(n.Decap.Close)
	if err := l.attachXDP(n.NS, "eth0", func(i int) (link.Link, error) { return dataplane.AttachXDP(n.Decap.Program, i) }); err != nil {
		return err
	}
	l.Nodes = append(l.Nodes, n)
	return nil
}

// WarmNeighbours makes the LB resolve every node's MAC (both families) by
// connecting to port on each node's own address, as health checks do in
// production: bpf_fib_lookup needs a resolved neighbour.
func (l *Lab) WarmNeighbours(ctx context.Context, port uint16) error {
	for _, n := range l.Nodes {
		for _, a := range []netip.Addr{n.V4, n.V6} {
			if err := l.LB.WaitTCP(ctx, netip.AddrPortFrom(a, port).String()); err != nil {
				return fmt.Errorf("lab: LB cannot reach %s at %v: %w", n.Name, a, err)
			}
		}
	}
	return nil
}

// Configure installs one island-routed service over every node (by their
// addresses of the given family) and returns its Maglev table.
func (l *Lab) Configure(svc maps.Service, nodesV6 bool) ([]uint32, error) {
	m := l.Balancer.Maps
	if err := m.PutService(svc); err != nil {
		return nil, err
	}
	var ring []maps.MaglevNode
	for _, n := range l.Nodes {
		a := n.V4
		if nodesV6 {
			a = n.V6
		}
		if err := m.PutBackend(maps.Backend{ID: n.ID, Addr: a, State: maps.StateUp, Island: svc.Island, Service: svc.ID}); err != nil {
			return nil, err
		}
		ring = append(ring, maps.MaglevNode{Name: n.Name, ID: n.ID, Weight: 1})
	}
	table, err := maps.BuildMaglev(ring, maps.DefaultRingSize)
	if err != nil {
		return nil, err
	}
	return table, m.SetRing(svc.ID, svc.Island, table)
}

// NodeByID returns the node with a backend id, or nil.
func (l *Lab) NodeByID(id uint32) *Node {
	for _, n := range l.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// DefaultTimeout bounds the lab's readiness waits.
const DefaultTimeout = 10 * time.Second
