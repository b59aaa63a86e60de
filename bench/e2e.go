package main

// End to end, in network namespaces, on one topology (deploy/lab): a
// client host, an LB host and two mail-store nodes on one bridge. Every
// contender runs on the LB host in turn against the same two nodes:
//
//   - direct: the client connects to the nodes' own addresses (no LB);
//   - atoll XDP, l2dsr and ipip: `atoll run` (built from this tree) with
//     its balancer attached natively to the LB's veth, one island service
//     per mode, the nodes answering the client directly (DSR);
//   - atoll front door, affinity hit: the login service, from a client
//     address in static affinity, so XDP sends it straight to the island's
//     ring (issue 6);
//   - atoll proxy: the same login service from another client address:
//     XDP passes it to the local stack and atoll's login proxy routes it;
//   - HAProxy in TCP mode, Perdition, nginx's mail proxy: Debian's
//     packages, each on its own address of the LB host.
//
// First with real Dovecot on the nodes (logins, a large FETCH), then with
// a fake IMAP node on each (answers at once: logins, CPU, and the memory
// of idle sessions, which real Dovecot cannot hold by the thousand here).

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/api"
	"github.com/atoll-lb/atoll/userspace/netns"
)

// Addresses of the end-to-end topology beyond deploy/lab's own.
var (
	e2eVIPDSR    = lab.VIP4 // 203.0.113.10: island service, l2dsr
	e2eVIPIPIP   = netip.MustParseAddr("203.0.113.11")
	e2eFront     = netip.MustParseAddr("203.0.113.20") // login service
	e2eHAProxy   = netip.MustParseAddr("203.0.113.21")
	e2ePerdition = netip.MustParseAddr("203.0.113.22")
	e2eNginx     = netip.MustParseAddr("203.0.113.23")
	// e2eAffinity is in static affinity (island a); e2eOther is not.
	e2eAffinity = lab.ClientV4.Addr() // 192.0.2.10
	e2eOther    = netip.MustParseAddr("192.0.2.11")
)

const imapPort = 143

// E2EResult is the "End to end" section.
type E2EResult struct {
	Setup  E2ESetup    `json:"setup"`
	Phases []E2EPhase  `json:"phases"`
	Memory []E2EMemory `json:"memory"`
	Goals  []Goal      `json:"goals"`
	Ratios []NamedRate `json:"ratios"` // other same-run ratios (issue 6)
}

// E2ESetup says what ran.
type E2ESetup struct {
	Dovecot   string   `json:"dovecot"`
	HAProxy   string   `json:"haproxy"`
	Perdition string   `json:"perdition"`
	Nginx     string   `json:"nginx"`
	Nodes     []string `json:"nodes"`
	Runs      int      `json:"runs"`
	MemRuns   int      `json:"memory_runs"`
	NoFile    uint64   `json:"nofile"`
}

// E2EPhase is one node kind's login and fetch figures.
type E2EPhase struct {
	Key         string   `json:"key"` // dovecot, fake
	Node        string   `json:"node"`
	Concurrency int      `json:"concurrency"`
	MaxLogins   int      `json:"max_logins_per_measurement"`
	MaxSeconds  float64  `json:"max_seconds_per_measurement"`
	FetchBytes  int64    `json:"fetch_bytes,omitempty"`
	Fetches     int      `json:"fetches_per_run,omitempty"`
	Rows        []E2ERow `json:"rows"`
}

// E2ERow is one contender in one phase. CPU figures are seconds per
// 1,000 sessions.
type E2ERow struct {
	Key        string `json:"key"`
	Name       string `json:"name"`
	Logins     Spread `json:"sessions_per_s"`
	VsDirect   Spread `json:"ratio_to_direct"`
	CPUProcess Spread `json:"cpu_process_s_per_1000"`
	CPUXDP     Spread `json:"cpu_xdp_s_per_1000"`
	CPUTotal   Spread `json:"cpu_lb_s_per_1000"`
	Softirq    Spread `json:"softirq_box_s_per_1000"`
	Fetch      Spread `json:"fetch_mib_per_s"`
	FetchRatio Spread `json:"fetch_ratio_to_direct"`
	OK         int    `json:"sessions_ok"`
	Errors     int    `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
}

// E2EMemory is the LB host's memory per 1,000 idle logged-in sessions.
type E2EMemory struct {
	Key         string `json:"key"`
	Name        string `json:"name"`
	Sessions    int    `json:"sessions"`
	PssKiB      Spread `json:"pss_kib_per_1000"`
	RSSKiB      Spread `json:"rss_kib_per_1000"`
	ProcsBefore int    `json:"processes_before"`
	ProcsAfter  int    `json:"processes_after"`
}

// Goal is one of issue 8's goals, checked on the median of same-run
// ratios.
type Goal struct {
	Phase string  `json:"phase"`
	What  string  `json:"what"`
	Want  float64 `json:"want"` // the ratio must be ≥ Want (≤ for memory)
	Less  bool    `json:"at_most,omitempty"`
	Ratio Spread  `json:"ratio"`
	Met   bool    `json:"met"`
}

// NamedRate is a same-run ratio without a goal.
type NamedRate struct {
	Phase string `json:"phase"`
	What  string `json:"what"`
	Ratio Spread `json:"ratio"`
}

// contender is one way from the client to the nodes.
type contender struct {
	key, name string
	t         target
	pgid      func() int // the LB-host process group it runs as; nil: none
	memory    bool       // measured in the memory test
}

// e2eParams size the section.
type e2eParams struct {
	runs, memRuns int
	concurrency   int
	maxLogins     int
	maxTime       time.Duration
	fetchSize     int
	fetches       int
	sessions      int
	warmup        int // sessions per contender before measuring
}

// e2eEnv is the running topology.
type e2eEnv struct {
	p       e2eParams
	lab     *lab.Lab
	dir     string
	bin     string
	pin     string
	dovecot []*peer.Dovecot
	fakes   []*fakeNode
	atoll   *childProc
	socket  string
	others  map[string]*childProc // haproxy, perdition, nginx
	authSrv *http.Server
	xdp     *ebpf.Program // the balancer attached to the LB's eth0
	stats   io.Closer     // BPF run-time statistics on
	users   []benchUser
	big     benchUser
	cs      []*contender
}

func runE2E(quick bool, runs int, progress func(string)) (_ *E2EResult, err error) {
	p := e2eParams{runs: runs, memRuns: 3, concurrency: 16, maxLogins: 20000, maxTime: 5 * time.Second,
		fetchSize: 20 << 20, fetches: 3, sessions: 1000, warmup: 100}
	if quick {
		p.memRuns, p.maxTime, p.fetches, p.warmup = 1, 1500*time.Millisecond, 1, 32
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the end-to-end benchmark needs root (namespaces, XDP, Dovecot)")
	}
	for _, bin := range []string{"dovecot", "haproxy", "perdition.imap4", "nginx"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s is not installed: run deploy/install-deps.sh (make deps)", bin)
		}
	}
	nofile, err := raiseNofile(proxyNoFile)
	if err != nil {
		return nil, err
	}
	res := &E2EResult{Setup: E2ESetup{Runs: p.runs, MemRuns: p.memRuns, NoFile: nofile}}
	res.Setup.Dovecot = versionOf("dovecot", "--version")
	res.Setup.HAProxy = versionOf("haproxy", "-v")
	res.Setup.Perdition = versionOf("perdition.imap4", "-h")
	res.Setup.Nginx = versionOf("nginx", "-v")

	e := &e2eEnv{p: p, others: map[string]*childProc{}}
	defer atInterrupt(e.close)()
	defer e.close()
	defer holdOnError(&err, e)
	progress("e2e: building the topology")
	if err := e.setup(); err != nil {
		return nil, err
	}
	for _, n := range e.lab.Nodes {
		res.Setup.Nodes = append(res.Setup.Nodes, fmt.Sprintf("%s %v", n.Name, n.V4))
	}

	ph, err := e.phase("dovecot", "Dovecot "+res.Setup.Dovecot, true, progress)
	if err != nil {
		return nil, err
	}
	res.Phases = append(res.Phases, ph)

	progress("e2e: swapping Dovecot for fake nodes")
	if err := e.swapToFake(); err != nil {
		return nil, err
	}
	ph, err = e.phase("fake", "fake IMAP node (answers at once)", false, progress)
	if err != nil {
		return nil, err
	}
	res.Phases = append(res.Phases, ph)

	for _, c := range e.cs {
		if !c.memory {
			continue
		}
		m, err := e.memory(c, progress)
		if err != nil {
			return nil, fmt.Errorf("memory %s: %w", c.name, err)
		}
		res.Memory = append(res.Memory, m)
	}
	res.goals()
	return res, nil
}

// holdOnError keeps a failed topology up for inspection for up to ten
// minutes when ATOLL_BENCH_HOLD is set (debugging the suite).
func holdOnError(err *error, e *e2eEnv) {
	if *err == nil || os.Getenv("ATOLL_BENCH_HOLD") == "" {
		return
	}
	var names []string
	if e.lab != nil {
		names = e.lab.Namespaces()
	}
	fmt.Fprintf(os.Stderr, "bench: holding the failed topology for 10 minutes (namespaces %v, dir %s): %v\n", names, e.dir, *err)
	time.Sleep(10 * time.Minute)
}

// versionOf runs bin with args and returns the first line of its output
// that names a version (Perdition has no --version: its -h has one).
func versionOf(bin string, args ...string) string {
	out, _ := exec.Command(bin, args...).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, l := range lines {
		if strings.Contains(strings.ToLower(l), "version") {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(lines[0])
}

func (e *e2eEnv) close() {
	for _, c := range e.others {
		c.stop(5 * time.Second)
	}
	if e.atoll != nil {
		e.atoll.stop(15 * time.Second)
	}
	if e.pin != "" && e.bin != "" {
		exec.Command(e.bin, "reset", "-yes", "-pin", e.pin).Run()
	}
	if e.authSrv != nil {
		e.authSrv.Close()
	}
	for _, f := range e.fakes {
		f.close()
	}
	for _, d := range e.dovecot {
		d.Stop()
	}
	if e.xdp != nil {
		e.xdp.Close()
	}
	if e.stats != nil {
		e.stats.Close()
	}
	if e.lab != nil {
		e.lab.Close()
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

func nsPath(n *netns.NS) string { return filepath.Join(netns.RunDir, n.Name) }

// setup builds the lab, starts Dovecot on the nodes, atoll, HAProxy,
// Perdition and nginx on the LB host, and checks one login through each.
func (e *e2eEnv) setup() error {
	var err error
	if e.dir, err = os.MkdirTemp("", "atoll-bench-e2e-"); err != nil {
		return err
	}
	if e.bin, err = lab.BuildAtoll(e.dir); err != nil {
		return err
	}
	if e.lab, err = lab.New(lab.Config{Prefix: "atl-bn", Islands: 1, Nodes: 2, NoBalancer: true}); err != nil {
		return err
	}
	l := e.lab
	if err := l.Client.AddAddr("eth0", netip.PrefixFrom(e2eOther, 24)); err != nil {
		return err
	}
	for _, a := range []netip.Addr{e2eFront, e2eHAProxy, e2ePerdition, e2eNginx} {
		if err := l.LB.AddAddr("lo", netip.PrefixFrom(a, 32)); err != nil {
			return err
		}
	}
	for _, n := range l.Nodes {
		for _, a := range []netip.Addr{e2eVIPIPIP, e2eFront} {
			if err := n.NS.AddAddr("lo", netip.PrefixFrom(a, 32)); err != nil {
				return err
			}
		}
	}

	// Dovecot on every node, every user on both (XDP and HAProxy place
	// connections, not users), and the big message for FETCH.
	pw := map[string]string{}
	for i := range e.p.concurrency {
		u := benchUser{fmt.Sprintf("bench%02d", i), fmt.Sprintf("pw-bench%02d", i)}
		e.users = append(e.users, u)
		pw[u.name] = u.password
	}
	e.big = benchUser{"big", "pw-big"}
	pw[e.big.name] = e.big.password
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, n := range l.Nodes {
		d, err := peer.StartDovecot(ctx, peer.DovecotOptions{
			Dir: filepath.Join(e.dir, "dovecot-"+n.Name), Name: n.Name,
			Listen: []netip.Addr{n.V4, e2eVIPDSR, e2eVIPIPIP, e2eFront},
			Ports:  peer.DovecotPorts{IMAP: imapPort, LMTP: 24, POP3: -1, IMAPS: -1, POP3S: -1, LMTPS: -1},
			Users:  pw,
			Command: func(name string, args ...string) *exec.Cmd {
				return n.NS.Command(context.Background(), name, args...)
			},
			Dial: n.NS.DialContext,
		})
		if err != nil {
			return err
		}
		e.dovecot = append(e.dovecot, d)
		lmtp := netip.AddrPortFrom(n.V4, 24).String()
		var derr error
		if err := (target{nsPath: nsPath(n.NS)}).workers(1, func(int) { derr = deliverLMTP(lmtp, e.big.name, e.p.fetchSize) }); err != nil {
			return err
		}
		if derr != nil {
			return fmt.Errorf("LMTP delivery to %s: %w", n.Name, derr)
		}
	}

	if err := e.startAtoll(); err != nil {
		return err
	}
	if err := e.startHAProxy(); err != nil {
		return err
	}
	if err := e.startPerdition(); err != nil {
		return err
	}
	if err := e.startNginx(); err != nil {
		return err
	}

	client := nsPath(l.Client)
	var nodeAddrs []netip.AddrPort
	for _, n := range l.Nodes {
		nodeAddrs = append(nodeAddrs, netip.AddrPortFrom(n.V4, imapPort))
	}
	at := func(a netip.Addr, src netip.Addr) target {
		return target{addrs: []netip.AddrPort{netip.AddrPortFrom(a, imapPort)}, src: src, nsPath: client}
	}
	atollPG := func() int { return e.atoll.PID() }
	group := func(name string) func() int { return func() int { return e.others[name].PID() } }
	e.cs = []*contender{
		{key: "direct", name: "direct to the nodes", t: target{addrs: nodeAddrs, src: e2eOther, nsPath: client}},
		{key: "xdp-l2dsr", name: "atoll XDP l2dsr", t: at(e2eVIPDSR, e2eOther), pgid: atollPG, memory: true},
		{key: "xdp-ipip", name: "atoll XDP ipip", t: at(e2eVIPIPIP, e2eOther), pgid: atollPG, memory: true},
		{key: "affinity", name: "atoll front door, affinity hit (XDP)", t: at(e2eFront, e2eAffinity), pgid: atollPG},
		{key: "proxy", name: "atoll proxy", t: at(e2eFront, e2eOther), pgid: atollPG, memory: true},
		{key: "haproxy", name: "HAProxy (TCP mode)", t: at(e2eHAProxy, e2eOther), pgid: group("haproxy"), memory: true},
		{key: "perdition", name: "Perdition", t: at(e2ePerdition, e2eOther), pgid: group("perdition"), memory: true},
		{key: "nginx", name: "nginx mail proxy", t: at(e2eNginx, e2eOther), pgid: group("nginx"), memory: true},
	}
	return e.checkAll(e.users)
}

// checkAll logs in once through every contender (bounded retries: the
// nodes' health may be settling).
func (e *e2eEnv) checkAll(users []benchUser) error {
	for _, c := range e.cs {
		var err error
		for deadline := time.Now().Add(20 * time.Second); ; {
			l := runLoginLoad(c.t, users[:1], 1, 1, 10*time.Second)
			if l.ok == 1 {
				break
			}
			err = l.firstErr
			if time.Now().After(deadline) {
				return fmt.Errorf("no login through %s: %v\n%s", c.name, err, e.logsOf(c))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

func (e *e2eEnv) logsOf(c *contender) string {
	switch {
	case strings.HasPrefix(c.key, "xdp"), c.key == "proxy", c.key == "affinity":
		return e.atoll.logTail()
	case e.others[c.key] != nil:
		return e.others[c.key].logTail()
	}
	return ""
}

// e2eConfigTmpl is atoll's config: two island services (one per
// forwarding mode) and the front door with static affinity for
// e2eAffinity.
const e2eConfigTmpl = `# written by atoll's benchmark suite
dataplane:
  interfaces: [eth0]
  pin_path: %[1]s
  conntrack_size: 262144
  source_v4: %[2]s
  source_v6: %[3]s
health: {interval: 1s, timeout: 900ms, jitter: 100ms, rise: 2, fall: 3}
metrics: {listen: "127.0.0.1:9742"}
api: {socket: %[4]s}
proxy:
  hostname: bench.atoll
  max_connections_per_source: -1
directory:
  static: %[5]s
islands:
  - name: a
    nodes:
      - {name: %[6]s, addresses: [%[7]s]}
      - {name: %[8]s, addresses: [%[9]s]}
services:
  - {name: imap-dsr, vips: [%[10]s], protocol: imap, forwarding: l2dsr, island: a}
  - {name: imap-ipip, vips: [%[11]s], protocol: imap, forwarding: ipip, island: a}
  - {name: imap-front, vips: [%[12]s], protocol: imap, forwarding: ipip, routing: login}
affinity:
  static:
    - {prefix: %[13]s/32, island: a}
`

func (e *e2eEnv) startAtoll() error {
	l := e.lab
	e.pin = "/sys/fs/bpf/atoll-bench-" + filepath.Base(e.dir)
	e.socket = filepath.Join(e.dir, "atoll.sock")
	mapPath := filepath.Join(e.dir, "islands.map")
	if err := os.WriteFile(mapPath, []byte("* a\n"), 0o644); err != nil {
		return err
	}
	cfg := fmt.Sprintf(e2eConfigTmpl, e.pin, lab.LBV4.Addr(), lab.LBV6.Addr(), e.socket, mapPath,
		l.Nodes[0].Name, l.Nodes[0].V4, l.Nodes[1].Name, l.Nodes[1].V4, e2eVIPDSR, e2eVIPIPIP, e2eFront, e2eAffinity)
	cfgPath := filepath.Join(e.dir, "atoll.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	// nsenter --net (not `ip netns exec`): atoll pins on the host's bpffs.
	cmd := l.LB.NetCommand(context.Background(), e.bin, "run", "-c", cfgPath)
	cmd.Cancel = nil
	var err error
	if e.atoll, err = startChild("atoll", cmd, filepath.Join(e.dir, "atoll.log")); err != nil {
		return err
	}
	lim := unix.Rlimit{Cur: proxyNoFile, Max: proxyNoFile}
	unix.Prlimit(e.atoll.PID(), unix.RLIMIT_NOFILE, &lim, nil) // best effort: it inherits ours
	if err := e.waitHealthy(30 * time.Second); err != nil {
		return err
	}
	// The balancer's program, for its run-time statistics.
	lk, err := l.LB.Handle().LinkByName("eth0")
	if err != nil {
		return err
	}
	if lk.Attrs().Xdp == nil || lk.Attrs().Xdp.ProgId == 0 {
		return errors.New("no XDP program on the LB's eth0 after atoll started")
	}
	if e.xdp, err = ebpf.NewProgramFromID(ebpf.ProgramID(lk.Attrs().Xdp.ProgId)); err != nil {
		return err
	}
	if e.stats, err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
		return fmt.Errorf("enable BPF run-time statistics: %w", err)
	}
	return nil
}

// waitHealthy waits until atoll's API answers and every node of every
// service is up in the data plane and in the health checks.
func (e *e2eEnv) waitHealthy(within time.Duration) error {
	c := api.NewClient(e.socket)
	deadline := time.Now().Add(within)
	var last string
	for {
		if !e.atoll.Running() {
			return fmt.Errorf("atoll exited:\n%s", e.atoll.logTail())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := c.Status(ctx)
		cancel()
		if err == nil {
			ok, n := true, 0
			for _, s := range st.Services {
				for _, nd := range s.Nodes {
					n++
					if nd.Health != "up" || nd.State != "up" {
						ok = false
						last = fmt.Sprintf("%s %s: state %s, health %s", s.Name, nd.Name, nd.State, nd.Health)
					}
				}
			}
			if ok && n >= 4 {
				return nil
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("atoll's nodes not all up within %v (%s):\n%s", within, last, e.atoll.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// xdpRuntime is the balancer's accumulated run time, in seconds.
func (e *e2eEnv) xdpRuntime() float64 {
	if e.xdp == nil {
		return 0
	}
	s, err := e.xdp.Stats()
	if err != nil {
		return 0
	}
	return s.Runtime.Seconds()
}

func (e *e2eEnv) startHAProxy() error {
	var servers strings.Builder
	for _, n := range e.lab.Nodes {
		fmt.Fprintf(&servers, "  server %s %s:%d\n", n.Name, n.V4, imapPort)
	}
	cfg := fmt.Sprintf(`# written by atoll's benchmark suite
global
  maxconn 8000
defaults
  mode tcp
  maxconn 8000
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend imap
  bind %s:%d
  default_backend nodes
backend nodes
  balance roundrobin
%s`, e2eHAProxy, imapPort, servers.String())
	path := filepath.Join(e.dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	return e.startOther("haproxy", e2eHAProxy, "haproxy", "-db", "-f", path)
}

func (e *e2eEnv) startPerdition() error {
	var nodes []string
	for _, n := range e.lab.Nodes {
		nodes = append(nodes, n.V4.String())
	}
	// Perdition forks a process per session and each needs a handful of
	// descriptors; it runs with the usual 1024, not the bench's raised
	// limit (a forking daemon may close every possible descriptor in
	// each child).
	return e.startOther("perdition", e2ePerdition, "prlimit", "--nofile=1024:1024", "perdition.imap4", "--no_daemon", "-f", "/dev/null",
		"-b", e2ePerdition.String(), "-l", fmt.Sprint(imapPort), "-s", strings.Join(nodes, ","), "-p", fmt.Sprint(imapPort),
		"-n", "--pid_file", filepath.Join(e.dir, "perdition.pid"))
}

// startNginx starts nginx's mail proxy with its auth_http server: a Go
// HTTP handler in this process, listening on the LB host's loopback,
// which sends each user to a node by a hash of the name (as atoll's
// proxy does; every node knows every user here).
func (e *e2eEnv) startNginx() error {
	ln, err := e.lab.LB.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	nodes := e.lab.Nodes
	e.authSrv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := nodes[crc32.ChecksumIEEE([]byte(r.Header.Get("Auth-User")))%uint32(len(nodes))]
		w.Header().Set("Auth-Status", "OK")
		w.Header().Set("Auth-Server", n.V4.String())
		w.Header().Set("Auth-Port", fmt.Sprint(imapPort))
	}), ReadHeaderTimeout: 10 * time.Second}
	go e.authSrv.Serve(ln)
	cfg := fmt.Sprintf(`# written by atoll's benchmark suite
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes 2;
worker_rlimit_nofile 19000;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 8192; }
mail {
  server_name bench.atoll;
  auth_http %[2]s/auth;
  imap_capabilities IMAP4rev1 LITERAL+ SASL-IR ID IDLE;
  proxy_pass_error_message on;
  server {
    listen %[3]s:%[4]d;
    protocol imap;
  }
}
`, e.dir, ln.Addr(), e2eNginx, imapPort)
	path := filepath.Join(e.dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	return e.startOther("nginx", e2eNginx, "nginx", "-p", e.dir+"/", "-c", path, "-e", "stderr", "-g", "daemon off;")
}

// startOther starts a contender on the LB host and waits for its port.
func (e *e2eEnv) startOther(key string, addr netip.Addr, name string, args ...string) error {
	cmd := e.lab.LB.Command(context.Background(), name, args...)
	cmd.Cancel = nil
	p, err := startChild(key, cmd, filepath.Join(e.dir, key+".log"))
	if err != nil {
		return err
	}
	e.others[key] = p
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := e.lab.LB.WaitTCP(ctx, netip.AddrPortFrom(addr, imapPort).String()); err != nil {
		return fmt.Errorf("%s: %w\n%s", key, err, p.logTail())
	}
	return nil
}

// swapToFake stops Dovecot and serves the fake IMAP node on every
// node's port 143 (all its addresses), then waits for atoll's checks.
func (e *e2eEnv) swapToFake() error {
	for _, d := range e.dovecot {
		if err := d.Stop(); err != nil {
			return err
		}
	}
	e.dovecot = nil
	for _, n := range e.lab.Nodes {
		ln, err := n.NS.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", imapPort))
		if err != nil {
			return err
		}
		e.fakes = append(e.fakes, newFakeNode(ln))
	}
	time.Sleep(2 * time.Second) // at least one check round on the new nodes
	if err := e.waitHealthy(30 * time.Second); err != nil {
		return err
	}
	users := make([]benchUser, e.p.concurrency)
	for i := range users {
		users[i] = benchUser{fmt.Sprintf("user%02d", i), "pw"}
	}
	e.users = users
	return e.checkAll(users)
}

// sample is the CPU counters around one measurement.
type sample struct{ proc, xdp, softirq float64 }

func (e *e2eEnv) sample(c *contender) sample {
	s := sample{xdp: e.xdpRuntime(), softirq: softirqSeconds()}
	if c.pgid != nil {
		s.proc = groupCPU(c.pgid())
	}
	return s
}

// phase measures sessions/s and CPU for every contender p.runs times
// (in a rotating order), and the FETCH rate when fetch is set.
func (e *e2eEnv) phase(key, node string, fetch bool, progress func(string)) (E2EPhase, error) {
	ph := E2EPhase{Key: key, Node: node, Concurrency: e.p.concurrency, MaxLogins: e.p.maxLogins, MaxSeconds: e.p.maxTime.Seconds()}
	// Warm up every path: login processes, caches, conntrack, neighbours.
	for _, c := range e.cs {
		progress(fmt.Sprintf("e2e %s: warming up %s", key, c.name))
		if l := runLoginLoad(c.t, e.users, e.p.concurrency, e.p.warmup, 10*time.Second); l.errors > 0 {
			return ph, fmt.Errorf("warm-up through %s: %d failed: %v\n%s", c.name, l.errors, l.firstErr, e.logsOf(c))
		}
	}
	n := len(e.cs)
	rates := make([][]float64, n)
	cpuP, cpuX, cpuT, soft := make([][]float64, n), make([][]float64, n), make([][]float64, n), make([][]float64, n)
	rows := make([]E2ERow, n)
	for run := range e.p.runs {
		for k := range n {
			i := (k + run) % n
			c := e.cs[i]
			progress(fmt.Sprintf("e2e %s logins %-10s run %d/%d", key, c.key, run+1, e.p.runs))
			before := e.sample(c)
			l := runLoginLoad(c.t, e.users, e.p.concurrency, e.p.maxLogins, e.p.maxTime)
			after := e.sample(c)
			r := &rows[i]
			r.OK += l.ok
			r.Errors += l.errors
			if l.firstErr != nil && r.FirstError == "" {
				r.FirstError = l.firstErr.Error()
			}
			if l.ok == 0 || l.errors*100 > l.ok {
				return ph, fmt.Errorf("logins through %s: %d ok, %d failed: %v\n%s", c.name, l.ok, l.errors, l.firstErr, e.logsOf(c))
			}
			per := 1000 / float64(l.ok)
			rates[i] = append(rates[i], l.perSecond())
			cpuP[i] = append(cpuP[i], (after.proc-before.proc)*per)
			cpuX[i] = append(cpuX[i], (after.xdp-before.xdp)*per)
			cpuT[i] = append(cpuT[i], (after.proc-before.proc+after.xdp-before.xdp)*per)
			soft[i] = append(soft[i], (after.softirq-before.softirq)*per)
		}
	}
	var fetchRates [][]float64
	if fetch {
		ph.Fetches = e.p.fetches
		fetchRates = make([][]float64, n)
		for run := range e.p.runs {
			for k := range n {
				i := (k + run) % n
				c := e.cs[i]
				progress(fmt.Sprintf("e2e %s fetch  %-10s run %d/%d", key, c.key, run+1, e.p.runs))
				b, took, err := fetchRate(c.t, e.big, e.p.fetches)
				if err != nil {
					return ph, fmt.Errorf("fetch through %s: %w\n%s", c.name, err, e.logsOf(c))
				}
				ph.FetchBytes = b / int64(e.p.fetches)
				fetchRates[i] = append(fetchRates[i], float64(b)/(1<<20)/took.Seconds())
			}
		}
	}
	for i, c := range e.cs {
		r := &rows[i]
		r.Key, r.Name = c.key, c.name
		r.Logins = spread(rates[i])
		r.VsDirect = ratioRuns(rates[i], rates[0])
		r.CPUProcess, r.CPUXDP, r.CPUTotal, r.Softirq = spread(cpuP[i]), spread(cpuX[i]), spread(cpuT[i]), spread(soft[i])
		if fetch {
			r.Fetch = spread(fetchRates[i])
			r.FetchRatio = ratioRuns(fetchRates[i], fetchRates[0])
		}
	}
	ph.Rows = rows
	return ph, nil
}

// ratioRuns is the spread of a[i]/b[i] (runs of the same index were
// measured in the same round).
func ratioRuns(a, b []float64) Spread {
	var r []float64
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			r = append(r, a[i]/b[i])
		}
	}
	return spread(r)
}

// memory opens p.sessions idle logged-in sessions through c (fake
// nodes), p.memRuns times, and reads the LB host process group's memory
// before and after.
func (e *e2eEnv) memory(c *contender, progress func(string)) (E2EMemory, error) {
	m := E2EMemory{Key: c.key, Name: c.name, Sessions: e.p.sessions}
	var pss, rss []float64
	// "Before" is read once, before the first run: a process keeps (and
	// reuses) the memory its first sessions grew it by, so a later
	// run's own before-and-after difference would be about nothing.
	// Every run then measures the whole growth with its sessions open.
	before := readGroupMem(c.pgid())
	for run := range e.p.memRuns {
		progress(fmt.Sprintf("e2e memory %-10s %d sessions run %d/%d", c.key, e.p.sessions, run+1, e.p.memRuns))
		sessions, err := e.openIdle(c)
		if err != nil {
			closeAll(sessions)
			return m, err
		}
		// Past atoll's parking delay (proxy.Limits.ParkAfter, 2 s): an
		// idle logged-in session is then parked, as in production.
		time.Sleep(3 * time.Second)
		after := readGroupMem(c.pgid())
		closeAll(sessions)
		// Let the sessions end everywhere before the next run (bounded).
		for deadline := time.Now().Add(20 * time.Second); e.fakeLoggedIn() > 0 && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond)
		k := 1000 / float64(e.p.sessions)
		pss = append(pss, float64(after.PssKiB-before.PssKiB)*k)
		rss = append(rss, float64(after.RSSKiB-before.RSSKiB)*k)
		m.ProcsBefore, m.ProcsAfter = before.Procs, after.Procs
	}
	m.PssKiB, m.RSSKiB = spread(pss), spread(rss)
	return m, nil
}

func (e *e2eEnv) fakeLoggedIn() int64 {
	var n int64
	for _, f := range e.fakes {
		n += f.loggedIn.Load()
	}
	return n
}

func closeAll(s []*imapClient) {
	for _, ic := range s {
		if ic != nil {
			ic.conn.Close()
		}
	}
}

// openIdle logs p.sessions sessions in through c (64 at a time) and
// waits until the fake nodes hold every one logged in.
func (e *e2eEnv) openIdle(c *contender) ([]*imapClient, error) {
	sessions := make([]*imapClient, e.p.sessions)
	var (
		next     atomic.Int64
		once     sync.Once
		firstErr error
	)
	err := c.t.workers(64, func(w int) {
		for {
			i := int(next.Add(1)) - 1
			if i >= len(sessions) {
				return
			}
			ic, err := dialIMAP(c.t, w, 30*time.Second, 512)
			if err == nil {
				if err = ic.login(fmt.Sprintf("user%05d", i), "pw"); err != nil {
					ic.conn.Close()
				}
			}
			if err != nil {
				once.Do(func() { firstErr = err })
				next.Store(int64(len(sessions)))
				return
			}
			ic.conn.SetDeadline(time.Time{})
			sessions[i] = ic
		}
	})
	if err == nil {
		err = firstErr
	}
	if err != nil {
		return sessions, fmt.Errorf("opening %d sessions through %s: %w\n%s", e.p.sessions, c.name, err, e.logsOf(c))
	}
	for deadline := time.Now().Add(30 * time.Second); e.fakeLoggedIn() < int64(e.p.sessions); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			return sessions, fmt.Errorf("after 30s the nodes hold %d of %d sessions through %s", e.fakeLoggedIn(), e.p.sessions, c.name)
		}
	}
	return sessions, nil
}

// goals checks issue 8's goals on the same-run ratios of each phase.
func (r *E2EResult) goals() {
	for _, ph := range r.Phases {
		row := map[string][]float64{}
		for _, x := range ph.Rows {
			row[x.Key] = x.Logins.Runs
		}
		add := func(what, a, b string, want float64) {
			s := ratioRuns(row[a], row[b])
			r.Goals = append(r.Goals, Goal{Phase: ph.Key, What: what, Want: want, Ratio: s, Met: s.Median >= want})
		}
		add("atoll XDP l2dsr ÷ direct, sessions/s", "xdp-l2dsr", "direct", 0.9)
		add("atoll XDP ipip ÷ direct, sessions/s", "xdp-ipip", "direct", 0.9)
		add("atoll XDP l2dsr ÷ HAProxy, sessions/s", "xdp-l2dsr", "haproxy", 2)
		add("atoll XDP ipip ÷ HAProxy, sessions/s", "xdp-ipip", "haproxy", 2)
		add("atoll proxy ÷ Perdition, logins/s", "proxy", "perdition", 3)
		add("atoll proxy ÷ nginx, logins/s", "proxy", "nginx", 1)
		for _, x := range [][2]string{{"affinity", "direct"}, {"affinity", "proxy"}, {"proxy", "direct"}} {
			r.Ratios = append(r.Ratios, NamedRate{Phase: ph.Key, What: fmt.Sprintf("%s ÷ %s, sessions/s", x[0], x[1]), Ratio: ratioRuns(row[x[0]], row[x[1]])})
		}
	}
	mem := map[string][]float64{}
	for _, m := range r.Memory {
		mem[m.Key] = m.PssKiB.Runs
	}
	if len(mem["proxy"]) > 0 && len(mem["perdition"]) > 0 {
		s := ratioRuns(mem["proxy"], mem["perdition"])
		r.Goals = append(r.Goals, Goal{Phase: "fake", What: "atoll proxy ÷ Perdition, memory (Pss) per idle session", Want: 0.1, Less: true, Ratio: s, Met: s.Median <= 0.1})
	}
}

// e2eMarkdown renders the section.
func e2eMarkdown(r *E2EResult) string {
	var b strings.Builder
	s := r.Setup
	b.WriteString("## End to end (namespaces)\n\n")
	fmt.Fprintf(&b, "One topology (`deploy/lab`): a client host (192.0.2.10 and .11), an LB host (198.51.100.1) and two nodes (%s) on one bridge, veth with native XDP. Every contender runs on the LB host against the same two nodes; the load generator is Go code in the bench process whose worker threads have entered the client's namespace. Contenders: %s; HAProxy %s; Perdition %s; nginx %s with libnginx-mod-mail (its auth_http answer comes from a Go handler in the bench process, routing by a hash of the user name, like atoll's proxy). atoll is `atoll run` built from this tree with its balancer attached to the LB's eth0; island services `imap-dsr` (l2dsr) and `imap-ipip`, and the front door `imap-front` (login routing, static affinity for 192.0.2.10/32). Each figure is the median of %d runs (min–max beside it); a ratio is taken per run between figures of the same round (the order of contenders rotates each round) and its median reported.\n\n",
		strings.Join(s.Nodes, ", "), "direct (no LB)", s.HAProxy, s.Perdition, s.Nginx, s.Runs)
	b.WriteString("CPU on the LB host per 1,000 sessions = the contender's processes (user + system of its whole process group from `/proc/PID/stat`, with reaped children's time, e.g. Perdition's forked sessions) + the run time of atoll's XDP program on the LB's NIC (kernel BPF statistics, `run_time_ns`), which every contender's packets cross (for HAProxy, Perdition and nginx it only passes them). \"softirq (box)\" is the whole machine's softirq time from `/proc/stat` per 1,000 sessions — client, LB and nodes share the kernel, so it is context, not the LB's alone; compare it with the direct row.\n\n")
	for _, ph := range r.Phases {
		fmt.Fprintf(&b, "### Sessions per second — %s\n\n", ph.Node)
		fmt.Fprintf(&b, "%d concurrent clients, each doing connect → greeting → `LOGIN` → `LOGOUT` (waiting for the server to close) in a loop, at most %d sessions or %.0f s per measurement.\n\n", ph.Concurrency, ph.MaxLogins, ph.MaxSeconds)
		b.WriteString("| contender | sessions/s | min–max | ÷ direct | min–max | LB CPU s/1000 | process | XDP | softirq (box) | failed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, x := range ph.Rows {
			fmt.Fprintf(&b, "| %s | %.0f | %.0f–%.0f | %.2f× | %.2f–%.2f | %.3f | %.3f | %.4f | %.3f | %d |\n", x.Name,
				x.Logins.Median, x.Logins.Min, x.Logins.Max, x.VsDirect.Median, x.VsDirect.Min, x.VsDirect.Max,
				x.CPUTotal.Median, x.CPUProcess.Median, x.CPUXDP.Median, x.Softirq.Median, x.Errors)
		}
		b.WriteString("\n")
		if ph.Fetches > 0 {
			fmt.Fprintf(&b, "**Large FETCH** (%s): per run, one session through each contender logs in as the user holding one %.1f MiB message, selects INBOX and sends `FETCH 1 BODY[]` %d times; the rate is literal bytes over the time of the fetches.\n\n", ph.Node, float64(ph.FetchBytes)/(1<<20), ph.Fetches)
			b.WriteString("| contender | MiB/s | min–max | ÷ direct | min–max |\n|---|---:|---:|---:|---:|\n")
			for _, x := range ph.Rows {
				fmt.Fprintf(&b, "| %s | %.0f | %.0f–%.0f | %.2f× | %.2f–%.2f |\n", x.Name, x.Fetch.Median, x.Fetch.Min, x.Fetch.Max, x.FetchRatio.Median, x.FetchRatio.Min, x.FetchRatio.Max)
			}
			b.WriteString("\n")
		}
	}
	if len(r.Memory) > 0 {
		fmt.Fprintf(&b, "### Memory per 1,000 idle sessions (LB host)\n\nFake nodes. The contender's process group is read once before the first run (`VmRSS` and `Pss` of `/proc/PID/smaps_rollup`, summed over its processes: \"before\"); per run (%d runs) %d sessions log in through it (64 at a time) and stay idle; once the nodes hold every one logged in, and 3 s later (past atoll's 2 s parking delay, when its idle relays are parked), it is read again. Per 1,000 = (after − before) × 1000 ÷ %d. Pss divides shared pages among the processes sharing them (fair to forking servers); RSS counts them in every process. Kernel memory (socket buffers) is not included. For the XDP rows the process is `atoll run`, which never sees those flows: their state is the conntrack LRU entries, preallocated when the map is created.\n\n",
			r.Setup.MemRuns, r.Memory[0].Sessions, r.Memory[0].Sessions)
		b.WriteString("| contender | Pss KiB / 1000 | min–max | RSS KiB / 1000 | min–max | processes before → after |\n|---|---:|---:|---:|---:|---:|\n")
		for _, m := range r.Memory {
			fmt.Fprintf(&b, "| %s | %.0f | %.0f–%.0f | %.0f | %.0f–%.0f | %d → %d |\n", m.Name, m.PssKiB.Median, m.PssKiB.Min, m.PssKiB.Max, m.RSSKiB.Median, m.RSSKiB.Min, m.RSSKiB.Max, m.ProcsBefore, m.ProcsAfter)
		}
		b.WriteString("\n")
	}
	b.WriteString("### Goals (issue 8)\n\n| phase | ratio | want | median | min–max | |\n|---|---|---:|---:|---:|---|\n")
	for _, g := range r.Goals {
		op := "≥"
		if g.Less {
			op = "≤"
		}
		mark := "met"
		if !g.Met {
			mark = "**missed**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s %.2g | %.2f | %.2f–%.2f | %s |\n", g.Phase, g.What, op, g.Want, g.Ratio.Median, g.Ratio.Min, g.Ratio.Max, mark)
	}
	b.WriteString("\n### Front door (issue 6)\n\nThe same login service, two client addresses: 192.0.2.10 is in static affinity, so XDP sends its SYN straight to the island's ring; 192.0.2.11 is not, so the flow is passed to atoll's proxy. Same-run ratios:\n\n| phase | ratio | median | min–max |\n|---|---|---:|---:|\n")
	for _, x := range r.Ratios {
		fmt.Fprintf(&b, "| %s | %s | %.2f | %.2f–%.2f |\n", x.Phase, x.What, x.Ratio.Median, x.Ratio.Min, x.Ratio.Max)
	}
	b.WriteString("\n")
	return b.String()
}
