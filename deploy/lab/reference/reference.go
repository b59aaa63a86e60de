//go:build linux

// Package reference runs atoll's reference deployment in network
// namespaces: the upscaled HA architecture of the seed paper, with real
// daemons.
//
//	client (192.0.2.10) ─┐
//	mta: smtp-left .41,  │       one bridge, 198.51.100.0/24, 2001:db8:1::/64
//	     smtp-right .42 ─┤
//	lb-left  .1 ─────────┤  atoll run (XDP + login proxy), keepalived: VRRP
//	lb-right .2 ─────────┤  moves .3 (the VIPs' next hop) between them
//	ldap .30 (slapd) ────┤
//	dbmail-left-a .11, dbmail-right-a .12 (island a, VIP .11 on lo)
//	dbmail-left-b .13, dbmail-right-b .14 (island b, VIP .12 on lo)
//
// VIPs: 203.0.113.10 (front door: IMAP, POP3, LMTP through the login
// proxy; held on lo by both LB hosts), 203.0.113.11 (island a) and
// 203.0.113.12 (island b) — IMAP, POP3 and LMTP straight to the island's
// nodes by the XDP data plane (ipip, direct server return); IPv6 likewise
// under 2001:db8:f::/64. The nodes of an island share one maildir (the
// lab's stand-in for the island's MySQL pair). Both LB hosts run atoll
// with the same config (but their own source address), so Maglev sends a
// flow to the same node whichever holds the VIPs.
package reference

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/api"
	"github.com/atoll-lb/atoll/userspace/netns"
)

// Addresses of the services.
var (
	FrontV4 = netip.MustParseAddr("203.0.113.10")
	FrontV6 = netip.MustParseAddr("2001:db8:f::10")
	// IslandVIPs are each island's VIPs (v4, v6).
	IslandVIPs = map[string][2]netip.Addr{
		"a": {netip.MustParseAddr("203.0.113.11"), netip.MustParseAddr("2001:db8:f::11")},
		"b": {netip.MustParseAddr("203.0.113.12"), netip.MustParseAddr("2001:db8:f::12")},
	}
)

// MTAPath is where the MTAs deliver by LMTP.
type MTAPath string

const (
	// MTAFront delivers every message to the front-door LMTP VIP: atoll's
	// LMTP router looks each recipient's island up (the default).
	MTAFront MTAPath = "front"
	// MTAIsland is the SWITCH for a build of atoll without the LMTP
	// router: each MTA delivers to island a's LMTP VIP (XDP, routing
	// island), so only island a's users receive mail that way.
	MTAIsland MTAPath = "island"
)

// HA is how the two LB hosts share the VIPs.
type HA string

const (
	// HAVRRP is active/standby: keepalived (VRRP) on the LB hosts moves
	// the VIPs' next hop (FloatV4/FloatV6) to the live one.
	HAVRRP HA = "vrrp"
	// HABGP is scale-out: bird2 on both LB hosts announces the VIP
	// prefixes by BGP to bird2 on a router host (RouterV4/RouterV6),
	// which installs both as equal-cost next hops and spreads flows over
	// them by their L4 hash.
	HABGP HA = "bgp"
)

// User is a mail user of the lab.
type User struct {
	Name     string // the login and the address: alice@example.org
	UID      string // the LDAP uid
	Password string
	Island   string
}

// Users are the lab's users: two per island.
var Users = []User{
	{"alice@example.org", "alice", "alice-pw", "a"},
	{"bob@example.org", "bob", "bob-pw", "b"},
	{"carol@example.org", "carol", "carol-pw", "a"},
	{"dave@example.org", "dave", "dave-pw", "b"},
}

// UserOf returns the first user of an island.
func UserOf(island string) User {
	for _, u := range Users {
		if u.Island == island {
			return u
		}
	}
	return User{}
}

// Options shape a reference lab.
type Options struct {
	// Dir holds every instance's files (configs, logs, mail, queues).
	// Required; under os.TempDir() (the mail processes must traverse it).
	Dir string
	// Atoll is the atoll binary the LB hosts run. Required.
	Atoll string
	// Prefix starts every namespace name; default "atoll".
	Prefix string
	// PinBase is the bpffs directory under which each LB host pins its
	// state (PinBase/lb-left, PinBase/lb-right); default
	// /sys/fs/bpf/atoll-lab.
	PinBase string
	// MTAPath: MTAFront (default) or MTAIsland.
	MTAPath MTAPath
	// HA is how the LB hosts share the VIPs: HAVRRP (default) or HABGP.
	HA HA
	// NoSeed skips the welcome messages delivered at start.
	NoSeed bool
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// Record, when set, is called with the state every time it grows
	// (namespaces, processes, pins), so a crashed run can be cleaned up.
	Record func(State) error
}

// LB is one LB host: its namespace, atoll daemon and keepalived.
type LB struct {
	*lab.LBHost
	Config   string // atoll.yaml
	Socket   string // admin API socket (atoll status -socket …)
	Pin      string // bpffs pin path
	Log      string // atoll's log
	VRRPLog  string // keepalived's log
	VRRPConf string
	Priority int
	API      *api.Client
	BirdLog  string // bird's log (HABGP)
	BirdSock string // birdc -s …
	atoll    *proc
	vrrp     *proc
	atollBin string
	dir      string
}

// Env is a running reference lab. Close removes all of it.
type Env struct {
	Opts    Options
	Lab     *lab.Lab
	Slapd   *peer.Slapd
	Dovecot map[string]*peer.Dovecot // by node name
	// RouterBirdSock is the router's birdc socket (HABGP).
	RouterBirdSock string
	// MTAs are smtp-left and smtp-right (Postfix), on the MTA host.
	MTAs []*peer.Postfix
	LBs  []*LB

	mu      sync.Mutex
	state   State
	closers []func() error
	dovOpts map[string]peer.DovecotOptions
}

// NodeName follows the seed paper: dbmail-left-a, dbmail-right-a, …
func NodeName(island string, i int) string {
	side := "left"
	if i == 1 {
		side = "right"
	}
	return fmt.Sprintf("dbmail-%s-%s", side, island)
}

// Start builds the lab and starts every daemon; it returns once mail can be
// delivered and read (the welcome messages are delivered, unless NoSeed).
// On error nothing is left behind.
func Start(ctx context.Context, o Options) (_ *Env, err error) {
	if o.Dir == "" || o.Atoll == "" {
		return nil, errors.New("reference: Options.Dir and Options.Atoll are required")
	}
	if o.Prefix == "" {
		o.Prefix = "atoll"
	}
	if o.PinBase == "" {
		o.PinBase = "/sys/fs/bpf/atoll-lab"
	}
	if o.MTAPath == "" {
		o.MTAPath = MTAFront
	}
	if o.HA == "" {
		o.HA = HAVRRP
	}
	if o.HA != HAVRRP && o.HA != HABGP {
		return nil, fmt.Errorf("reference: HA %q: vrrp or bgp", o.HA)
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	e := &Env{Opts: o, Dovecot: map[string]*peer.Dovecot{}, dovOpts: map[string]peer.DovecotOptions{}}
	e.state = State{PID: os.Getpid(), Dir: o.Dir}
	e.state.StartTime, _ = startTimeOf(os.Getpid())
	defer func() {
		if err != nil {
			err = errors.Join(err, e.Close())
		}
	}()
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("reference: %w", err)
	}
	if err := e.record(func(s *State) {}); err != nil {
		return nil, err
	}
	e.logf("building the namespaces (prefix %s) ...", o.Prefix)
	e.Lab, err = lab.New(lab.Config{
		Prefix: o.Prefix, Islands: 2, Nodes: 2, Servers: true, NoBalancer: true, LBHosts: 2, MTA: true, Router: o.HA == HABGP,
		NodeName: NodeName,
		NodeVIPs: func(island string) []netip.Addr { v := IslandVIPs[island]; return v[:] },
	})
	if err != nil {
		return nil, fmt.Errorf("reference: %w", err)
	}
	e.onClose(e.Lab.Close)
	if err := e.record(func(s *State) { s.Namespaces = e.Lab.Namespaces() }); err != nil {
		return nil, err
	}
	for _, lb := range e.Lab.LBs {
		// The front door's VIPs live on lo: the proxy answers there.
		for _, v := range []netip.Addr{FrontV4, FrontV6} {
			if err := lb.NS.AddAddr("lo", netip.PrefixFrom(v, v.BitLen())); err != nil {
				return nil, fmt.Errorf("reference: %w", err)
			}
		}
	}
	if err := e.startSlapd(ctx); err != nil {
		return nil, err
	}
	if err := e.startNodes(ctx); err != nil {
		return nil, err
	}
	if err := e.startLBs(ctx); err != nil {
		return nil, err
	}
	if err := e.startMTAs(ctx); err != nil {
		return nil, err
	}
	if o.HA == HABGP {
		if err := e.startBGP(ctx); err != nil {
			return nil, err
		}
	} else if err := e.startVRRP(ctx); err != nil {
		return nil, err
	}
	if !o.NoSeed {
		if err := e.seed(ctx); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func (e *Env) logf(format string, a ...any) { fmt.Fprintf(e.Opts.Log, format+"\n", a...) }

func (e *Env) onClose(f func() error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closers = append(e.closers, f)
}

// Close stops every daemon and removes the namespaces and pinned state,
// last started first. The files under Dir stay (the caller owns Dir).
func (e *Env) Close() error {
	e.mu.Lock()
	closers := e.closers
	e.closers = nil
	e.mu.Unlock()
	var errs []error
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// record updates the state and hands it to Options.Record.
func (e *Env) record(f func(*State)) error {
	e.mu.Lock()
	f(&e.state)
	st := e.state.clone()
	e.mu.Unlock()
	if e.Opts.Record == nil {
		return nil
	}
	if err := e.Opts.Record(st); err != nil {
		return fmt.Errorf("reference: record state: %w", err)
	}
	return nil
}

// State returns what a cleanup after a crash needs.
func (e *Env) State() State {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state.clone()
}

func (e *Env) recordGroup(name string, pid int) error {
	st, _ := startTimeOf(pid)
	return e.record(func(s *State) { s.Groups = append(s.Groups, Group{Name: name, PGID: pid, StartTime: st}) })
}

func (e *Env) startSlapd(ctx context.Context) error {
	e.logf("starting slapd on %s ...", lab.ServerV4.Addr())
	var users []peer.LDAPUser
	for _, u := range Users {
		users = append(users, peer.LDAPUser{UID: u.UID, Mail: u.Name, Password: u.Password, Island: u.Island})
	}
	srv := e.Lab.Servers
	s, err := peer.StartSlapd(ctx, peer.SlapdOptions{
		Dir:     filepath.Join(e.Opts.Dir, "slapd"),
		Listen:  []netip.AddrPort{netip.AddrPortFrom(lab.ServerV4.Addr(), 389), netip.AddrPortFrom(lab.ServerV6.Addr(), 389)},
		Users:   users,
		Command: func(name string, args ...string) *exec.Cmd { return srv.Command(context.Background(), name, args...) },
		Dial:    srv.DialContext,
	})
	if err != nil {
		return fmt.Errorf("reference: %w", err)
	}
	e.Slapd = s
	e.onClose(s.Stop)
	return e.recordGroup("slapd", s.PID)
}

// lbNets are the LB hosts' own addresses: the nodes trust them for IMAP ID.
func lbNets() []netip.Prefix {
	var ps []netip.Prefix
	for _, p := range []netip.Prefix{lab.LBV4, lab.LBV6, lab.LBRightV4, lab.LBRightV6} {
		ps = append(ps, netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
	}
	return ps
}

func (e *Env) startNodes(ctx context.Context) error {
	e.logf("starting Dovecot on %d nodes ...", len(e.Lab.Nodes))
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, n := range e.Lab.Nodes {
		mine := map[string]string{}
		for _, u := range Users {
			if u.Island == n.Island {
				mine[u.Name] = u.Password
			}
		}
		vips := IslandVIPs[n.Island]
		o := peer.DovecotOptions{
			Dir: filepath.Join(e.Opts.Dir, "dovecot-"+n.Name), Name: n.Name,
			MailDir: filepath.Join(e.Opts.Dir, "mail-"+n.Island),
			Listen:  []netip.Addr{n.V4, n.V6, vips[0], vips[1]},
			Ports:   peer.DovecotPorts{IMAP: 143, POP3: 110, LMTP: 24, IMAPS: -1, POP3S: -1, LMTPS: -1},
			Users:   mine,
			Command: func(name string, args ...string) *exec.Cmd {
				return n.NS.Command(context.Background(), name, args...)
			},
			Dial:         n.NS.DialContext,
			LoginTrusted: lbNets(),
		}
		e.dovOpts[n.Name] = o
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := peer.StartDovecot(ctx, o)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			e.Dovecot[n.Name] = d
		}()
	}
	wg.Wait()
	for _, n := range e.Lab.Nodes {
		if d := e.Dovecot[n.Name]; d != nil {
			e.onClose(func() error { return e.Dovecot[n.Name].Stop() })
			if err := e.recordGroup("dovecot "+n.Name, d.PID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reference: %w", err)
	}
	return nil
}

// StopNode crashes a node's Dovecot (SIGKILL): the node is down.
func (e *Env) StopNode(name string) error {
	d := e.Dovecot[name]
	if d == nil {
		return fmt.Errorf("reference: no node %q", name)
	}
	return d.Kill()
}

// StartNode starts a stopped node's Dovecot again (same mail, same config).
func (e *Env) StartNode(ctx context.Context, name string) error {
	o, ok := e.dovOpts[name]
	if !ok {
		return fmt.Errorf("reference: no node %q", name)
	}
	d, err := peer.StartDovecot(ctx, o)
	if err != nil {
		return fmt.Errorf("reference: restart %s: %w", name, err)
	}
	e.Dovecot[name] = d
	return e.recordGroup("dovecot "+name, d.PID)
}

// Node returns a node by name.
func (e *Env) Node(name string) *lab.Node {
	for _, n := range e.Lab.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

var atollCfg = template.Must(template.New("atoll").Parse(`# atoll.yaml of {{.LB}} in the reference lab (deploy/lab/reference).
# Both LB hosts run this same config but for their own addresses, pin path
# and socket: same nodes, names, weights and hash seed give the same Maglev
# choice on both, so flows survive a VRRP failover.
dataplane:
  mode: xdp
  interfaces: [eth0]
  pin_path: {{.Pin}}
  conntrack_size: 65536
  ring_size: 65537
  hash_seed: 0x61746f6c
  source_v4: {{.SrcV4}}
  source_v6: {{.SrcV6}}
health:
  interval: 1s
  timeout: 800ms
  jitter: 100ms
  rise: 2
  fall: 2
metrics:
  listen: 127.0.0.1:9742
api:
  socket: {{.Socket}}
proxy:
  hostname: mail.example.org
directory:
  ldap:
    urls: [{{.LDAP}}]
    bind_dn: "{{.BindDN}}"
    password_file: {{.PWFile}}
    base_dn: "{{.BaseDN}}"
    filter: "(|(uid=%u)(mail=%u))"
    attribute: mailIsland
    timeout: 1s
    cache: {positive_ttl: 30s, negative_ttl: 5s, stale_ttl: 1h}
islands:
{{- range .Islands}}
  - name: {{.Name}}
    proxy: {client_address: imap_id}
    nodes:
{{- range .Nodes}}
      - name: {{.Name}}
        addresses: [{{.V4}}, {{.V6}}]
{{- end}}
{{- end}}
services:
{{- range .Islands}}
  - {name: imap-{{.Name}}, vips: [{{.V4}}, {{.V6}}], protocol: imap, forwarding: ipip, routing: island, island: {{.Name}}}
  - {name: pop3-{{.Name}}, vips: [{{.V4}}, {{.V6}}], protocol: pop3, forwarding: ipip, routing: island, island: {{.Name}}}
  - {name: lmtp-{{.Name}}, vips: [{{.V4}}, {{.V6}}], protocol: lmtp, forwarding: ipip, routing: island, island: {{.Name}}}
{{- end}}
  - {name: imap, vips: [{{.FrontV4}}, {{.FrontV6}}], protocol: imap, forwarding: ipip, routing: login}
  - {name: pop3, vips: [{{.FrontV4}}, {{.FrontV6}}], protocol: pop3, forwarding: ipip, routing: login}
  - {name: lmtp, vips: [{{.FrontV4}}, {{.FrontV6}}], protocol: lmtp, forwarding: ipip, routing: login}
`))

type islandData struct {
	Name   string
	V4, V6 netip.Addr
	Nodes  []*lab.Node
}

func (e *Env) startLBs(ctx context.Context) error {
	pw := filepath.Join(e.Opts.Dir, "ldap.secret")
	if err := os.WriteFile(pw, []byte(peer.SlapdServicePassword+"\n"), 0o600); err != nil {
		return fmt.Errorf("reference: %w", err)
	}
	var islands []islandData
	for _, isl := range []string{"a", "b"} {
		d := islandData{Name: isl, V4: IslandVIPs[isl][0], V6: IslandVIPs[isl][1]}
		for _, n := range e.Lab.Nodes {
			if n.Island == isl {
				d.Nodes = append(d.Nodes, n)
			}
		}
		islands = append(islands, d)
	}
	for i, h := range e.Lab.LBs {
		dir := filepath.Join(e.Opts.Dir, h.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("reference: %w", err)
		}
		lb := &LB{
			LBHost: h, Config: filepath.Join(dir, "atoll.yaml"), Socket: filepath.Join(dir, "atoll.sock"),
			Pin: filepath.Join(e.Opts.PinBase, h.Name), Log: filepath.Join(dir, "atoll.log"),
			VRRPLog: filepath.Join(dir, "keepalived.log"), VRRPConf: filepath.Join(dir, "keepalived.conf"),
			Priority: 150 - 50*i, atollBin: e.Opts.Atoll, dir: dir,
		}
		lb.API = api.NewClient(lb.Socket)
		var b strings.Builder
		if err := atollCfg.Execute(&b, map[string]any{
			"LB": h.Name, "Pin": lb.Pin, "SrcV4": h.V4.Addr(), "SrcV6": h.V6.Addr(), "Socket": lb.Socket,
			"LDAP": e.Slapd.URLs[0], "BindDN": e.Slapd.ServiceDN(), "PWFile": pw, "BaseDN": e.Slapd.PeopleDN(),
			"Islands": islands, "FrontV4": FrontV4, "FrontV6": FrontV6,
		}); err != nil {
			return fmt.Errorf("reference: %w", err)
		}
		if err := os.WriteFile(lb.Config, []byte(b.String()), 0o644); err != nil {
			return fmt.Errorf("reference: %w", err)
		}
		e.LBs = append(e.LBs, lb)
		if err := e.record(func(s *State) { s.Pins = append(s.Pins, lb.Pin) }); err != nil {
			return err
		}
		e.onClose(func() error { return lb.reset() })
		if err := e.StartAtoll(lb); err != nil {
			return err
		}
	}
	e.logf("waiting for both atoll daemons to see every node up ...")
	for _, lb := range e.LBs {
		if err := lb.WaitReady(ctx); err != nil {
			return err
		}
	}
	return nil
}

// StartAtoll starts (or restarts) `atoll run` on an LB host. It enters the
// namespace with nsenter --net, not `ip netns exec`, so the pins land on
// the host's bpffs and outlive the process.
func (e *Env) StartAtoll(lb *LB) error {
	e.logf("starting atoll run on %s (%s) ...", lb.Name, lb.V4.Addr())
	cmd := lb.NS.NetCommand(context.Background(), lb.atollBin, "run", "-c", lb.Config)
	p, err := startProc("atoll "+lb.Name, cmd, lb.Log)
	if err != nil {
		return err
	}
	lb.atoll = p
	e.onClose(func() error { return p.stop(syscall.SIGTERM, 10*time.Second) })
	return e.recordGroup("atoll "+lb.Name, p.PID())
}

// KillAtoll is a crash of the daemon: SIGKILL (the pinned data plane keeps
// forwarding).
func (lb *LB) KillAtoll() error {
	if lb.atoll == nil {
		return nil
	}
	return lb.atoll.stop(syscall.SIGKILL, 0)
}

// reset removes the LB host's pinned state (detaches its balancer).
func (lb *LB) reset() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, lb.atollBin, "reset", "-yes", "-pin", lb.Pin).CombinedOutput()
	_ = os.Remove(filepath.Dir(lb.Pin)) // the pin base, once empty
	if err != nil {
		return fmt.Errorf("reference: atoll reset -pin %s: %w: %s", lb.Pin, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// WaitReady waits until the daemon answers and every node of every service
// passes its checks.
func (lb *LB) WaitReady(ctx context.Context) error {
	return lb.WaitStatus(ctx, "every node up", func(st api.Status) bool {
		if len(st.Services) == 0 {
			return false
		}
		for _, s := range st.Services {
			if len(s.Nodes) == 0 {
				return false
			}
			for _, n := range s.Nodes {
				if n.Health != "up" || (s.Routing == "island" && n.State != "up") {
					return false
				}
			}
		}
		return true
	})
}

// WaitStatus polls the daemon's status until ok says yes or ctx ends.
func (lb *LB) WaitStatus(ctx context.Context, what string, ok func(api.Status) bool) error {
	var last error
	for {
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := lb.API.Status(qctx)
		cancel()
		if err == nil && ok(st) {
			return nil
		}
		if err != nil {
			last = err
		}
		if lb.atoll != nil && !lb.atoll.Running() {
			return fmt.Errorf("reference: atoll on %s exited (see %s)", lb.Name, lb.Log)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("reference: %s: waiting for %s: %w (last error: %v; log %s)", lb.Name, what, ctx.Err(), last, lb.Log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// NodeState is the data-plane state of a node for an island service
// ("up", "draining", "down"), as the LB's daemon reports it.
func (lb *LB) NodeState(ctx context.Context, service, node string) (string, error) {
	st, err := lb.API.Status(ctx)
	if err != nil {
		return "", fmt.Errorf("reference: %s: %w", lb.Name, err)
	}
	for _, s := range st.Services {
		if s.Name != service {
			continue
		}
		for _, n := range s.Nodes {
			if n.Name == node {
				return n.State, nil
			}
		}
	}
	return "", fmt.Errorf("reference: %s: no node %s in service %s", lb.Name, node, service)
}

func (e *Env) startMTAs(ctx context.Context) error {
	relay := "inet:" + netip.AddrPortFrom(FrontV4, 24).String()
	if e.Opts.MTAPath == MTAIsland {
		relay = "inet:" + netip.AddrPortFrom(IslandVIPs["a"][0], 24).String()
	}
	mta := e.Lab.MTA
	for i, name := range []string{"smtp-left", "smtp-right"} {
		addr := []netip.Prefix{lab.MTALeftV4, lab.MTARightV4}[i].Addr()
		e.logf("starting Postfix %s on %s, delivering by LMTP to %s ...", name, addr, relay)
		p, err := peer.StartPostfix(ctx, peer.PostfixOptions{
			Dir:        filepath.Join(e.Opts.Dir, name),
			Listen:     netip.AddrPortFrom(addr, 25),
			Hostname:   name + ".example.org",
			Relay:      relay,
			MyNetworks: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("127.0.0.0/8")},
			Command:    func(n string, args ...string) *exec.Cmd { return mta.Command(context.Background(), n, args...) },
			Dial:       mta.DialContext,
		})
		if err != nil {
			return fmt.Errorf("reference: %w", err)
		}
		e.MTAs = append(e.MTAs, p)
		e.onClose(p.Stop)
		if err := e.recordGroup("postfix "+name, p.PID); err != nil {
			return err
		}
	}
	return nil
}

// vrrpConf is keepalived's config on an LB host: one VRRP instance (v3,
// unicast to the peer) holding the VIPs' next hop, .3 and ::3, on eth0.
// Both hosts start as BACKUP with nopreempt: the higher priority wins the
// first election, and a host that comes back does not take the VIPs back
// (every move costs the proxied sessions). The track script turns the
// instance to FAULT — and so hands the VIPs over — when atoll stops
// answering.
var vrrpConf = template.Must(template.New("vrrp").Parse(`# keepalived.conf of {{.Name}} (deploy/lab/reference)
global_defs {
  router_id {{.Name}}
  script_user root
  vrrp_version 3
  vrrp_garp_master_delay 1
  vrrp_garp_master_repeat 3
}
vrrp_script atoll_alive {
  script "{{.Atoll}} status -socket {{.Socket}}"
  interval 1
  timeout 2
  fall 2
  rise 1
}
vrrp_instance atoll_vips {
  state BACKUP
  nopreempt
  interface eth0
  virtual_router_id 51
  priority {{.Priority}}
  advert_int 0.5
  unicast_src_ip {{.Src}}
  unicast_peer {
    {{.Peer}}
  }
  virtual_ipaddress {
    {{.FloatV4}} dev eth0
  }
  virtual_ipaddress_excluded {
    {{.FloatV6}} dev eth0
  }
  track_script {
    atoll_alive
  }
}
`))

func (e *Env) startVRRP(ctx context.Context) error {
	for i, lb := range e.LBs {
		peerLB := e.LBs[1-i]
		var b strings.Builder
		if err := vrrpConf.Execute(&b, map[string]any{
			"Name": lb.Name, "Atoll": lb.atollBin, "Socket": lb.Socket, "Priority": lb.Priority,
			"Src": lb.V4.Addr(), "Peer": peerLB.V4.Addr(), "FloatV4": lab.FloatV4, "FloatV6": lab.FloatV6,
		}); err != nil {
			return fmt.Errorf("reference: %w", err)
		}
		if err := os.WriteFile(lb.VRRPConf, []byte(b.String()), 0o644); err != nil {
			return fmt.Errorf("reference: %w", err)
		}
		if err := e.StartVRRP(lb); err != nil {
			return err
		}
		// The first host is master before the second starts: with
		// nopreempt, a second host that happened to win the first
		// election (its keepalived up first on a loaded machine, or the
		// first host's health script slow once) would keep the VIPs.
		e.logf("waiting for VRRP: %s should hold %s ...", e.LBs[0].Name, lab.FloatV4.Addr())
		if err := e.WaitMaster(ctx, e.LBs[0]); err != nil {
			return err
		}
	}
	return nil
}

// StartVRRP starts keepalived (VRRP only) on an LB host.
func (e *Env) StartVRRP(lb *LB) error {
	cmd := lb.NS.Command(context.Background(), "keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
		"--vrrp", "--use-file", lb.VRRPConf,
		"--pid", filepath.Join(lb.dir, "keepalived.pid"), "--vrrp_pid", filepath.Join(lb.dir, "keepalived-vrrp.pid"))
	p, err := startProc("keepalived "+lb.Name, cmd, lb.VRRPLog)
	if err != nil {
		return err
	}
	lb.vrrp = p
	e.onClose(func() error { return p.stop(syscall.SIGTERM, 5*time.Second) })
	return e.recordGroup("keepalived "+lb.Name, p.PID())
}

// StopVRRP stops keepalived on an LB host (it releases the VIPs).
func (lb *LB) StopVRRP() error {
	if lb.vrrp == nil {
		return nil
	}
	return lb.vrrp.stop(syscall.SIGTERM, 5*time.Second)
}

// HoldsVIPs reports whether the LB host holds the floating next hop.
func (lb *LB) HoldsVIPs() (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := lb.NS.Exec(ctx, "ip", "-o", "addr", "show", "dev", "eth0")
	if err != nil {
		return false, err
	}
	return strings.Contains(string(out), " "+lab.FloatV4.String()+" "), nil
}

// WaitMaster waits until lb holds the floating next hop and no other LB
// host does.
func (e *Env) WaitMaster(ctx context.Context, lb *LB) error {
	for {
		ok := true
		for _, other := range e.LBs {
			holds, err := other.HoldsVIPs()
			if err != nil || holds != (other == lb) {
				ok = false
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("reference: %s never became the VRRP master: %w (see %s)", lb.Name, ctx.Err(), lb.VRRPLog)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Master returns the LB host holding the VIPs, or nil.
func (e *Env) Master() *LB {
	for _, lb := range e.LBs {
		if ok, _ := lb.HoldsVIPs(); ok {
			return lb
		}
	}
	return nil
}

// LinkDown takes an LB host off the network (its eth0 down): the host
// "fails" as a whole — VRRP adverts stop, nothing reaches its data plane
// or proxy.
func (lb *LB) LinkDown() error { return lb.setLink("down") }

// LinkUp brings an LB host back.
func (lb *LB) LinkUp() error { return lb.setLink("up") }

func (lb *LB) setLink(state string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := lb.NS.Exec(ctx, "ip", "link", "set", "dev", "eth0", state); err != nil {
		return fmt.Errorf("reference: %w", err)
	}
	return nil
}

// seed delivers a welcome message to every user through smtp-left and the
// LMTP path, and waits until every one is delivered.
func (e *Env) seed(ctx context.Context) error {
	e.logf("delivering a welcome message to every user through %s ...", e.MTAs[0].Opts.Hostname)
	var ids []string
	for _, u := range Users {
		if e.Opts.MTAPath == MTAIsland && u.Island != "a" {
			continue
		}
		id, err := e.Send(ctx, 0, u.Name, "Welcome to island "+u.Island, "Hello "+u.Name+", this mailbox lives on island "+u.Island+".")
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	for _, id := range ids {
		if err := e.MTAs[0].WaitDelivered(ctx, id); err != nil {
			return fmt.Errorf("reference: %w", err)
		}
	}
	return nil
}

// Send submits a message to one MTA (0: smtp-left, 1: smtp-right) and
// returns its queue ID.
func (e *Env) Send(ctx context.Context, mta int, to, subject, body string) (string, error) {
	msg := fmt.Sprintf("From: postmaster@example.org\nTo: %s\nSubject: %s\nMessage-ID: <%d.%s@lab.example.org>\n\n%s\n",
		to, subject, time.Now().UnixNano(), strings.ReplaceAll(to, "@", "."), body)
	id, err := e.MTAs[mta].Send(ctx, "postmaster@example.org", []string{to}, []byte(msg))
	if err != nil {
		return "", fmt.Errorf("reference: send to %s via %s: %w", to, e.MTAs[mta].Opts.Hostname, err)
	}
	return id, nil
}

// SendAny is an incoming relay with equal MX records: it tries smtp-left,
// then smtp-right, and returns the MTA that took the message and its
// queue ID.
func (e *Env) SendAny(ctx context.Context, to, subject, body string) (int, string, error) {
	var errs []error
	for i := range e.MTAs {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		id, err := e.Send(sctx, i, to, subject, body)
		cancel()
		if err == nil {
			return i, id, nil
		}
		errs = append(errs, err)
	}
	return -1, "", errors.Join(errs...)
}

// Namespaces maps the lab's roles to namespace names.
func (e *Env) Namespaces() map[string]*netns.NS {
	m := map[string]*netns.NS{"client": e.Lab.Client, "mta": e.Lab.MTA, "ldap": e.Lab.Servers}
	if e.Lab.Router != nil {
		m["router"] = e.Lab.Router
	}
	for _, lb := range e.LBs {
		m[lb.Name] = lb.NS
	}
	for _, n := range e.Lab.Nodes {
		m[n.Name] = n.NS
	}
	return m
}

// Roles lists Namespaces' keys in a stable order.
func (e *Env) Roles() []string {
	roles := []string{"client", "mta", "lb-left", "lb-right", "ldap"}
	for _, n := range e.Lab.Nodes {
		roles = append(roles, n.Name)
	}
	return slices.Clip(roles)
}
