package proxy

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/atoll-lb/atoll/userspace/directory"
)

// NodeInfo is one node of an island as the control plane sees it.
type NodeInfo struct {
	Name    string
	Addr    netip.AddrPort
	Healthy bool
}

// IslandSettings say how the proxy talks to an island's nodes.
type IslandSettings struct {
	ClientAddr string      // ClientAddr*
	NodeTLS    string      // NodeTLS*
	TLSConfig  *tls.Config // toward the nodes (CA, server name)
}

// NodeSource is the control plane's view the core routes with.
type NodeSource interface {
	// Nodes lists the nodes of island for service (its protocol and
	// port), with their health.
	Nodes(service, island string) []NodeInfo
	// Island returns how to reach island's nodes; false if unknown.
	Island(island string) (IslandSettings, bool)
}

// Observer sees what the proxy does (metrics). Methods must be cheap.
type Observer interface {
	Login(protocol, result string) // result: ok, failed, unknown_user, bad_name, unavailable, no_node, error
	Lookup(d time.Duration, res directory.Result, err error)
	Session(protocol string, delta int)
	Relayed(protocol string, up, down int64)
	DialFailed(node string)
	Throttled(client netip.Addr)
}

type nopObserver struct{}

func (nopObserver) Login(string, string)                          {}
func (nopObserver) Lookup(time.Duration, directory.Result, error) {}
func (nopObserver) Session(string, int)                           {}
func (nopObserver) Relayed(string, int64, int64)                  {}
func (nopObserver) DialFailed(string)                             {}
func (nopObserver) Throttled(netip.Addr)                          {}

// Options configure a Core.
type Options struct {
	Directory directory.Directory
	Names     directory.Names
	Nodes     NodeSource
	// ServerTLS is offered to clients (STARTTLS/STLS, implicit-TLS
	// listeners); nil: no TLS.
	ServerTLS *tls.Config
	// RequireTLS refuses logins before TLS (IMAP LOGINDISABLED).
	RequireTLS bool
	Limits     Limits
	// MaxConnsPerSource caps concurrent connections from one client
	// address (default 50; -1: no cap).
	MaxConnsPerSource int
	// Throttle: failed logins per client address.
	Throttle ThrottleSettings
	// SourceAddrs are local addresses to dial nodes from, in turn: one
	// address gives about 64k connections to one node.
	SourceAddrs []netip.Addr
	DialTimeout time.Duration // default 5s
	// Hostname appears in greetings.
	Hostname string
	Observer Observer
	Log      *slog.Logger
	// OnLogin, if set, hears of every successful login (learned affinity).
	OnLogin func(client netip.Addr, island string)
}

// Core is the shared state of every proxy session.
type Core struct {
	opts     Options
	limits   Limits
	throttle *throttle
	obs      Observer
	log      *slog.Logger
	srcNext  atomic.Uint64

	mu      sync.Mutex
	sources map[netip.Addr]int // open connections per client address
	caps    map[string]recordedCaps
}

type recordedCaps struct {
	caps []string
	at   time.Time
}

// capsMaxAge forgets what a node announced after a day: a node removed
// from an island stops restricting its list.
const capsMaxAge = 24 * time.Hour

// NewCore builds a core.
func NewCore(o Options) *Core {
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MaxConnsPerSource == 0 {
		o.MaxConnsPerSource = 50
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.Hostname == "" {
		o.Hostname = "atoll"
	}
	return &Core{
		opts: o, limits: o.Limits.withDefaults(), throttle: newThrottle(o.Throttle), obs: o.Observer, log: o.Log,
		sources: map[netip.Addr]int{}, caps: map[string]recordedCaps{},
	}
}

// Limits are the pre-login limits.
func (c *Core) Limits() Limits { return c.limits }

// ServerTLS is the TLS config offered to clients (nil: none).
func (c *Core) ServerTLS() *tls.Config { return c.opts.ServerTLS }

// RequireTLS says whether logins need TLS first.
func (c *Core) RequireTLS() bool { return c.opts.RequireTLS }

// Hostname is the name in greetings.
func (c *Core) Hostname() string { return c.opts.Hostname }

// Observer returns the metrics hooks.
func (c *Core) Observer() Observer { return c.obs }

// Route finds where user's login goes for service: the island from the
// directory, then the island's healthy nodes ordered by a rendezvous hash
// of the user name — one user keeps landing on one node while it is
// healthy, and moves to the next one when it is not.
func (c *Core) Route(ctx context.Context, service, user string) (*Route, error) {
	lookup, nodeUser, err := c.opts.Names.Normalize(user)
	if err != nil {
		c.padUnknown(ctx)
		return nil, fmt.Errorf("%w: %v", ErrBadName, err)
	}
	start := time.Now()
	res, err := c.opts.Directory.Lookup(ctx, lookup)
	c.obs.Lookup(time.Since(start), res, err)
	if err != nil {
		if errors.Is(err, ErrUnknownUser) {
			c.padUnknown(ctx)
		}
		return nil, err
	}
	set, ok := c.opts.Nodes.Island(res.Island)
	if !ok {
		c.log.Warn("proxy: directory names an island that is not configured", "user", lookup, "island", res.Island)
		return nil, fmt.Errorf("%w: island %q is not configured", ErrNoNode, res.Island)
	}
	r := &Route{User: lookup, NodeUser: nodeUser, Island: res.Island, ClientAddr: set.ClientAddr, NodeTLS: set.NodeTLS, TLSConfig: set.TLSConfig, Stale: res.Stale}
	type scored struct {
		n     NodeInfo
		score uint64
	}
	var cands []scored
	for _, n := range c.opts.Nodes.Nodes(service, res.Island) {
		if n.Healthy {
			cands = append(cands, scored{n, rendezvous(lookup, n.Name)})
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("%w %q", ErrNoNode, res.Island)
	}
	slices.SortFunc(cands, func(a, b scored) int { return cmp.Compare(b.score, a.score) })
	for _, s := range cands {
		r.Nodes = append(r.Nodes, Node{Name: s.n.Name, Addr: s.n.Addr})
	}
	return r, nil
}

// padUnknown makes "no such user" take about as long as a wrong password
// (a round trip to a node), so answer times do not tell who exists.
func (c *Core) padUnknown(ctx context.Context) {
	d := 100*time.Millisecond + time.Duration(rand.Int64N(int64(200*time.Millisecond)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// rendezvous is the highest-random-weight score of (user, node).
func rendezvous(user, node string) uint64 {
	h := sha256.New()
	h.Write([]byte(user))
	h.Write([]byte{0})
	h.Write([]byte(node))
	var sum [32]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// keepAlive is the TCP keep-alive of both sides of a session: a dead
// client or node is noticed in minutes even under IMAP IDLE. Interval and
// count stay the system's (75 s × 9): two setsockopt calls per socket
// instead of four, which showed up in a profile of short sessions.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: time.Minute, Interval: -1, Count: -1}

// ListenKeepAlive gives a listening socket the sessions' keep-alive
// (SO_KEEPALIVE, TCP_KEEPIDLE of keepAlive.Idle). Linux copies both to
// every socket the listener accepts, so a listener made with it and
// net.ListenConfig{KeepAlive: -1} accepts without any keep-alive call of
// Go's: two setsockopt per session fewer (TestListenKeepAliveInherited).
func ListenKeepAlive(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1); err != nil {
		return fmt.Errorf("proxy: listener SO_KEEPALIVE: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(keepAlive.Idle/time.Second)); err != nil {
		return fmt.Errorf("proxy: listener TCP_KEEPIDLE: %w", err)
	}
	return nil
}

// Dial connects to a node for a session from client: from the next
// source address, with the PROXY v2 header when the island wants the
// client's address that way, and TLS when the island's nodes speak
// implicit TLS. STARTTLS toward the node is the handler's job.
func (c *Core) Dial(ctx context.Context, r *Route, n Node, client, vip netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Timeout: c.opts.DialTimeout, KeepAliveConfig: keepAlive}
	if src := c.source(n.Addr.Addr()); src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	conn, err := d.DialContext(ctx, "tcp", n.Addr.String())
	if err != nil {
		c.obs.DialFailed(n.Name)
		return nil, fmt.Errorf("proxy: dial %s (%v): %w", n.Name, n.Addr, err)
	}
	// The header and a TLS handshake get the dial timeout too: a node
	// that accepts and then stalls must not hold the login.
	conn.SetDeadline(time.Now().Add(c.opts.DialTimeout))
	defer conn.SetDeadline(time.Time{})
	if r.ClientAddr == ClientAddrProxy {
		hdr := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(client), net.TCPAddrFromAddrPort(vip))
		if _, err := hdr.WriteTo(conn); err != nil {
			conn.Close()
			c.obs.DialFailed(n.Name)
			return nil, fmt.Errorf("proxy: PROXY header to %s: %w", n.Name, err)
		}
	}
	if r.NodeTLS == NodeTLSImplicit {
		tc := tls.Client(conn, c.nodeTLS(r, n))
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			c.obs.DialFailed(n.Name)
			return nil, fmt.Errorf("proxy: TLS to %s: %w", n.Name, err)
		}
		return tc, nil
	}
	return conn, nil
}

// NodeTLS returns the TLS config to use toward node n (STARTTLS).
func (c *Core) NodeTLS(r *Route, n Node) *tls.Config { return c.nodeTLS(r, n) }

func (c *Core) nodeTLS(r *Route, n Node) *tls.Config {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if r.TLSConfig != nil {
		tc = r.TLSConfig.Clone()
	}
	if tc.ServerName == "" {
		tc.ServerName = n.Name
	}
	return tc
}

// source picks the next local address of the node's family.
func (c *Core) source(dst netip.Addr) netip.Addr {
	var fam []netip.Addr
	for _, a := range c.opts.SourceAddrs {
		if a.Is4() == dst.Is4() {
			fam = append(fam, a)
		}
	}
	if len(fam) == 0 {
		return netip.Addr{}
	}
	return fam[c.srcNext.Add(1)%uint64(len(fam))]
}

// LoginResult records the outcome of a login attempt (metrics).
func (c *Core) LoginResult(protocol, result string) { c.obs.Login(protocol, result) }

// LoginFailed records a failed login from client and returns how long
// to wait before answering it: nothing below the threshold, then a delay
// that doubles with each further failure, up to the maximum. Other
// clients are not slowed. Delayed failures are logged with the address:
// DBMail nodes never see it, atoll is the only place to stop guessing.
func (c *Core) LoginFailed(client netip.Addr, user string) time.Duration {
	d := c.throttle.fail(client, time.Now())
	if d > 0 {
		c.obs.Throttled(client)
		c.log.Warn("proxy: failed logins from one address, answers delayed", "client", client, "user", user, "delay", d)
	}
	return d
}

// LoginSucceeded records a successful login of client into r's island:
// it feeds learned affinity (Options.OnLogin). It clears no throttle: a
// correct password does not forgive guessing.
func (c *Core) LoginSucceeded(client netip.Addr, r *Route) {
	if c.opts.OnLogin != nil && r != nil {
		c.opts.OnLogin(client, r.Island)
	}
}

// RecordCaps remembers the capabilities a node announced after login;
// IslandCaps returns those every recorded node of island offers.
func (c *Core) RecordCaps(island, node string, caps []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.caps[island+"/"+node] = recordedCaps{caps: slices.Clone(caps), at: time.Now()}
}

// IslandCaps returns the capabilities common to every node of island
// whose capabilities were recorded in the last day, in the order of the
// first node by name, or nil if none was.
func (c *Core) IslandCaps(island string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var keys []string
	for k, rc := range c.caps {
		if strings.HasPrefix(k, island+"/") && time.Since(rc.at) < capsMaxAge {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out []string
	for i, k := range keys {
		caps := c.caps[k].caps
		if i == 0 {
			out = slices.Clone(caps)
			continue
		}
		out = slices.DeleteFunc(out, func(c string) bool { return !slices.Contains(caps, c) })
	}
	return out
}

// acquire counts a connection from client; false when over the cap.
func (c *Core) acquire(client netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opts.MaxConnsPerSource > 0 && c.sources[client] >= c.opts.MaxConnsPerSource {
		return false
	}
	c.sources[client]++
	return true
}

func (c *Core) release(client netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sources[client]--; c.sources[client] <= 0 {
		delete(c.sources, client)
	}
}
