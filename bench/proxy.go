package main

// The login proxy's speed and memory, on loopback, against a real
// `atoll run` process (built from this tree, `dataplane: {mode: none}`,
// a static directory, one island of one node, one IMAP login service):
//
//   - logins per second through the proxy and straight to the node (a
//     private Dovecot), C concurrent clients doing connect, greeting,
//     LOGIN, LOGOUT; the ratio is per run, both measured in that run;
//   - bytes per second of a large FETCH relayed after login, through the
//     proxy and straight to Dovecot;
//   - memory per idle logged-in session: thousands of sessions through a
//     second `atoll run` whose node is a fake IMAP server in this process,
//     the atoll process's memory read from /proc before and after.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/deploy/lab/peer"
)

// Spread is a median with its min–max and every run.
type Spread struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Runs   []float64 `json:"runs"`
}

func spread(v []float64) Spread {
	if len(v) == 0 {
		return Spread{}
	}
	return Spread{Median: median(v), Min: slices.Min(v), Max: slices.Max(v), Runs: v}
}

// ProxyResult is the "Login proxy" section.
type ProxyResult struct {
	Setup  ProxySetup  `json:"setup"`
	Logins ProxyLogins `json:"logins"`
	// FakeLogins: the same with the fake node of the memory test.
	FakeLogins ProxyLogins `json:"logins_fake_node"`
	Relay      ProxyRelay  `json:"relay"`
	Memory     ProxyMemory `json:"memory"`
}

// ProxySetup says what ran.
type ProxySetup struct {
	Proxy   string `json:"proxy"`   // how atoll ran
	Dovecot string `json:"dovecot"` // `dovecot --version`
	Node    string `json:"node"`    // where the nodes listened
	Runs    int    `json:"runs"`
	NoFile  uint64 `json:"nofile"` // RLIMIT_NOFILE of this process and atoll
}

// ProxyLogins: connect, greeting, LOGIN, LOGOUT per second.
type ProxyLogins struct {
	Concurrency int     `json:"concurrency"`
	Users       int     `json:"users"`
	MaxLogins   int     `json:"max_logins_per_measurement"`
	MaxSeconds  float64 `json:"max_seconds_per_measurement"`
	Proxy       Spread  `json:"proxy_logins_per_s"`
	Direct      Spread  `json:"direct_logins_per_s"`
	Ratio       Spread  `json:"ratio"` // proxy / direct, per run
	OK          int     `json:"logins_ok"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
}

// ProxyRelay: MiB/s of FETCH 1 BODY[] of one large message.
type ProxyRelay struct {
	MessageBytes  int64  `json:"message_bytes"` // the FETCH literal
	FetchesPerRun int    `json:"fetches_per_run"`
	Proxy         Spread `json:"proxy_mib_per_s"`
	Direct        Spread `json:"direct_mib_per_s"`
	Ratio         Spread `json:"ratio"` // proxy / direct, per run
}

// ProxyMemory: the atoll process's memory per idle logged-in session.
type ProxyMemory struct {
	Sessions     int         `json:"sessions"`
	Asked        int         `json:"sessions_asked"`
	Why          string      `json:"why_fewer,omitempty"` // when Sessions < Asked
	RSS          Spread      `json:"rss_kib_per_session"`
	PrivateDirty Spread      `json:"private_dirty_kib_per_session"`
	Anonymous    Spread      `json:"anonymous_kib_per_session"`
	FDs          Spread      `json:"fds_per_session"`
	GoalKiB      float64     `json:"goal_kib_per_session"` // on RSS
	Met          bool        `json:"met"`
	Runs         []MemoryRun `json:"runs"`
}

// MemoryRun is one fresh atoll process before and after the sessions.
type MemoryRun struct {
	Before       procMem `json:"before"`
	After        procMem `json:"after"`
	LoginSeconds float64 `json:"login_seconds"` // to log every session in
}

// proxyParams size the section.
type proxyParams struct {
	runs        int
	concurrency int
	maxLogins   int
	maxTime     time.Duration
	msgSize     int
	fetches     int
	sessions    int
	nofile      uint64 // RLIMIT_NOFILE for atoll
}

const (
	// proxyNoFile is the RLIMIT_NOFILE asked for this process and atoll.
	proxyNoFile = 131072
	// fdsPerSession is what atoll holds per idle relayed session: the two
	// sockets and, for each direction, the pipe (two descriptors) Go's
	// splice keeps while it waits for data.
	fdsPerSession = 6
	memoryGoalKiB = 16
)

// proxyVIP is the login service's address: another loopback address,
// since the node holds 127.0.0.1 and a VIP may not be a node's address.
var proxyVIP = netip.MustParseAddr("127.0.0.2")

func runProxy(quick bool, runs int, progress func(string)) (*ProxyResult, error) {
	p := proxyParams{runs: runs, concurrency: 16, maxLogins: 20000, maxTime: 10 * time.Second, msgSize: 20 << 20, fetches: 5, sessions: 10000}
	if quick {
		p.maxLogins, p.maxTime, p.fetches, p.sessions = 4000, 4*time.Second, 2, 2000
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the login proxy benchmark needs root (Dovecot runs its processes as its system users)")
	}
	nofile, err := raiseNofile(proxyNoFile)
	if err != nil {
		return nil, fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
	}
	p.nofile = nofile
	asked := p.sessions
	var why string
	if fit := (int(nofile) - 1000) / fdsPerSession / 500 * 500; fit < p.sessions {
		p.sessions = fit
		why = fmt.Sprintf("%d asked, but RLIMIT_NOFILE cannot go above %d here (raising the hard limit needs CAP_SYS_RESOURCE, which this process lacks), and atoll holds %d descriptors per idle session (2 sockets, 2 splice pipes)",
			asked, nofile, fdsPerSession)
		if p.sessions < 500 {
			return nil, fmt.Errorf("RLIMIT_NOFILE %d is too low for the memory test", nofile)
		}
	}
	tmp, err := os.MkdirTemp("", "atoll-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	progress("proxy: building atoll")
	bin, err := lab.BuildAtoll(tmp)
	if err != nil {
		return nil, err
	}
	res := &ProxyResult{Setup: ProxySetup{
		Proxy: "`atoll run` built from this tree, `dataplane: {mode: none}`, static directory (`* a`), one island of one node, " +
			"login service imap on " + proxyVIP.String() + " (log level info, to a file)",
		Node: "127.0.0.1", Runs: runs, NoFile: nofile,
	}}
	res.Memory.Asked, res.Memory.Why = asked, why
	if out, err := exec.Command("dovecot", "--version").Output(); err == nil {
		res.Setup.Dovecot = strings.TrimSpace(string(out))
	}
	if err := benchDovecot(res, p, bin, tmp, progress); err != nil {
		return nil, err
	}
	if err := benchFakeLogins(res, p, bin, tmp, progress); err != nil {
		return nil, err
	}
	if err := benchMemory(res, p, bin, tmp, progress); err != nil {
		return nil, err
	}
	return res, nil
}

// benchDovecot measures logins/s and relayed MiB/s through one atoll and
// straight to one Dovecot.
func benchDovecot(res *ProxyResult, p proxyParams, bin, tmp string, progress func(string)) error {
	progress("proxy: starting Dovecot")
	users := make([]benchUser, p.concurrency)
	pw := map[string]string{}
	for i := range users {
		users[i] = benchUser{fmt.Sprintf("bench%02d", i), fmt.Sprintf("pw-bench%02d", i)}
		pw[users[i].name] = users[i].password
	}
	big := benchUser{"big", "pw-big"}
	pw[big.name] = big.password
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := peer.StartDovecot(ctx, peer.DovecotOptions{
		Dir: filepath.Join(tmp, "dovecot"), Name: "bench", Listen: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Ports: peer.DovecotPorts{IMAP: 0, LMTP: 0, POP3: -1, IMAPS: -1, POP3S: -1, LMTPS: -1},
		Users: pw,
	})
	if err != nil {
		return err
	}
	defer d.Stop()
	direct := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(d.Ports.IMAP))

	progress(fmt.Sprintf("proxy: delivering a %d MiB message by LMTP", p.msgSize>>20))
	if err := deliverLMTP(d.Addr(netip.MustParseAddr("127.0.0.1"), d.Ports.LMTP), big.name, p.msgSize); err != nil {
		return fmt.Errorf("LMTP delivery: %w", err)
	}

	progress("proxy: starting atoll run")
	vip, err := freePort(proxyVIP)
	if err != nil {
		return err
	}
	met, err := freePort(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		return err
	}
	cfg, sock, err := atollConfig(tmp, "dovecot", met, vip, direct)
	if err != nil {
		return err
	}
	a, err := startAtoll(bin, tmp, "dovecot", cfg, sock, met, p.nofile)
	if err != nil {
		return err
	}
	defer a.stop()

	// Warm up both ways: Dovecot's login and auth processes, the
	// directory, the page cache and Dovecot's index of the big message.
	for _, addr := range []netip.AddrPort{direct, vip} {
		if l := runLoginLoad(loopTarget(addr), users, p.concurrency, 200, 10*time.Second); l.errors > 0 {
			return fmt.Errorf("warm-up logins to %v: %d failed: %v", addr, l.errors, l.firstErr)
		}
		if _, _, err := fetchRate(loopTarget(addr), big, 1); err != nil {
			return fmt.Errorf("warm-up fetch from %v: %w", addr, err)
		}
	}

	if err := measureLogins(&res.Logins, a, vip, direct, users, p, "proxy logins (Dovecot)", progress); err != nil {
		return err
	}

	rl := &res.Relay
	rl.FetchesPerRun = p.fetches
	var prx, dir, ratio []float64
	for i := range p.runs {
		progress(fmt.Sprintf("proxy relay run %d/%d", i+1, p.runs))
		var rate [2]float64
		for _, j := range order(i) {
			addr := []netip.AddrPort{vip, direct}[j]
			n, el, err := fetchRate(loopTarget(addr), big, p.fetches)
			if err != nil {
				return fmt.Errorf("fetch from %v: %w", addr, err)
			}
			rl.MessageBytes = n / int64(p.fetches)
			rate[j] = float64(n) / (1 << 20) / el.Seconds()
		}
		prx, dir, ratio = append(prx, rate[0]), append(dir, rate[1]), append(ratio, rate[0]/rate[1])
	}
	rl.Proxy, rl.Direct, rl.Ratio = spread(prx), spread(dir), spread(ratio)
	a.stop()
	return d.Stop()
}

// order is which target goes first in run i: the proxy (0) on even runs.
func order(i int) []int {
	if i%2 == 0 {
		return []int{0, 1}
	}
	return []int{1, 0}
}

// measureLogins fills lg with logins/s through atoll a (listening on
// vip) and straight to the node at direct, p.runs times, and checks that
// atoll counted the logins made through it.
func measureLogins(lg *ProxyLogins, a *atollProc, vip, direct netip.AddrPort, users []benchUser, p proxyParams, label string, progress func(string)) error {
	lg.Concurrency, lg.Users, lg.MaxLogins, lg.MaxSeconds = p.concurrency, len(users), p.maxLogins, p.maxTime.Seconds()
	text, err := a.scrape()
	if err != nil {
		return err
	}
	before := metricSum(text, "atoll_proxy_logins_total", `result="ok"`)
	var prx, dir, ratio []float64
	proxied := 0
	for i := range p.runs {
		progress(fmt.Sprintf("%s run %d/%d", label, i+1, p.runs))
		var got [2]loginLoad
		// Alternate which goes first, so neither always runs on a
		// warmer (or more tired) machine.
		for _, j := range order(i) {
			addr := []netip.AddrPort{vip, direct}[j]
			got[j] = runLoginLoad(loopTarget(addr), users, p.concurrency, p.maxLogins, p.maxTime)
			lg.OK += got[j].ok
			lg.Errors += got[j].errors
			if got[j].firstErr != nil && lg.FirstError == "" {
				lg.FirstError = got[j].firstErr.Error()
			}
			if got[j].ok == 0 || got[j].errors*100 > got[j].ok {
				return fmt.Errorf("logins to %v: %d ok, %d failed: %v\n%s", addr, got[j].ok, got[j].errors, got[j].firstErr, a.logTail())
			}
		}
		proxied += got[0].ok
		prx = append(prx, got[0].perSecond())
		dir = append(dir, got[1].perSecond())
		ratio = append(ratio, got[0].perSecond()/got[1].perSecond())
	}
	lg.Proxy, lg.Direct, lg.Ratio = spread(prx), spread(dir), spread(ratio)
	if text, err = a.scrape(); err != nil {
		return err
	}
	if n := metricSum(text, "atoll_proxy_logins_total", `result="ok"`) - before; n != float64(proxied) {
		return fmt.Errorf("atoll counted %v logins, the clients made %d through it", n, proxied)
	}
	return nil
}

// benchFakeLogins measures logins/s through atoll and straight to a fake
// node, which answers at once: atoll's own ceiling, which Dovecot's
// (one imap process forked per login) hides.
func benchFakeLogins(res *ProxyResult, p proxyParams, bin, tmp string, progress func(string)) error {
	progress("proxy: starting atoll run with a fake node")
	node, err := startFakeNode()
	if err != nil {
		return err
	}
	defer node.close()
	vip, err := freePort(proxyVIP)
	if err != nil {
		return err
	}
	met, err := freePort(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		return err
	}
	cfg, sock, err := atollConfig(tmp, "fake", met, vip, node.addr())
	if err != nil {
		return err
	}
	a, err := startAtoll(bin, tmp, "fake", cfg, sock, met, p.nofile)
	if err != nil {
		return err
	}
	defer a.stop()
	users := make([]benchUser, p.concurrency)
	for i := range users {
		users[i] = benchUser{fmt.Sprintf("user%02d", i), "pw"}
	}
	for _, addr := range []netip.AddrPort{node.addr(), vip} {
		if l := runLoginLoad(loopTarget(addr), users, p.concurrency, 500, 10*time.Second); l.errors > 0 {
			return fmt.Errorf("warm-up logins to %v: %d failed: %v", addr, l.errors, l.firstErr)
		}
	}
	if err := measureLogins(&res.FakeLogins, a, vip, node.addr(), users, p, "proxy logins (fake node)", progress); err != nil {
		return err
	}
	a.stop()
	return nil
}

// benchMemory measures the memory of a fresh atoll per run before and
// after p.sessions idle logged-in sessions.
func benchMemory(res *ProxyResult, p proxyParams, bin, tmp string, progress func(string)) error {
	m := &res.Memory
	m.Sessions, m.GoalKiB = p.sessions, memoryGoalKiB
	var rss, pd, anon, fds []float64
	for i := range p.runs {
		progress(fmt.Sprintf("proxy memory %d sessions run %d/%d", p.sessions, i+1, p.runs))
		r, err := memoryRun(p, bin, tmp, fmt.Sprintf("mem%d", i))
		if err != nil {
			return err
		}
		m.Runs = append(m.Runs, r)
		n := float64(p.sessions)
		rss = append(rss, float64(r.After.RSSKiB-r.Before.RSSKiB)/n)
		pd = append(pd, float64(r.After.PrivateDirtyKiB-r.Before.PrivateDirtyKiB)/n)
		anon = append(anon, float64(r.After.AnonymousKiB-r.Before.AnonymousKiB)/n)
		fds = append(fds, float64(r.After.FDs-r.Before.FDs)/n)
	}
	m.RSS, m.PrivateDirty, m.Anonymous, m.FDs = spread(rss), spread(pd), spread(anon), spread(fds)
	m.Met = m.RSS.Median < m.GoalKiB
	return nil
}

func memoryRun(p proxyParams, bin, tmp, name string) (MemoryRun, error) {
	var r MemoryRun
	node, err := startFakeNode()
	if err != nil {
		return r, err
	}
	defer node.close()
	vip, err := freePort(proxyVIP)
	if err != nil {
		return r, err
	}
	met, err := freePort(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		return r, err
	}
	cfg, sock, err := atollConfig(tmp, name, met, vip, node.addr())
	if err != nil {
		return r, err
	}
	a, err := startAtoll(bin, tmp, name, cfg, sock, met, p.nofile)
	if err != nil {
		return r, err
	}
	defer a.stop()

	// A few logins first, so one-time work (first lookups, first dials)
	// is not counted per session.
	if l := runLoginLoad(loopTarget(vip), []benchUser{{"warm", "pw"}}, 4, 40, 10*time.Second); l.errors > 0 {
		return r, fmt.Errorf("warm-up logins: %v", l.firstErr)
	}
	time.Sleep(500 * time.Millisecond)
	if r.Before, err = readProcMem(a.PID()); err != nil {
		return r, err
	}

	sessions := make([]*imapClient, p.sessions)
	defer func() {
		for _, s := range sessions {
			if s != nil {
				s.conn.Close()
			}
		}
	}()
	var (
		next     atomic.Int64
		once     sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	for range 64 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(sessions) {
					return
				}
				ic, err := dialIMAP(loopTarget(vip), 0, 30*time.Second, 512)
				if err == nil {
					if err = ic.login(fmt.Sprintf("user%05d", i), "pw"); err != nil {
						ic.conn.Close()
					}
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					next.Store(int64(len(sessions))) // stop the others
					return
				}
				ic.conn.SetDeadline(time.Time{})
				sessions[i] = ic
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return r, fmt.Errorf("opening %d sessions: %w\n%s", p.sessions, firstErr, a.logTail())
	}
	r.LoginSeconds = time.Since(start).Seconds()
	// Every session logged in at the node and counted open by atoll.
	deadline := time.Now().Add(30 * time.Second)
	for {
		text, err := a.scrape()
		open := metricSum(text, "atoll_proxy_sessions", `protocol="imap"`)
		if err == nil && node.loggedIn.Load() == int64(p.sessions) && open == float64(p.sessions) {
			break
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("after 30s: %d sessions logged in at the node, atoll counts %v open (want %d; scrape: %v)",
				node.loggedIn.Load(), open, p.sessions, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	if r.After, err = readProcMem(a.PID()); err != nil {
		return r, err
	}
	for i, s := range sessions {
		s.conn.Close()
		sessions[i] = nil
	}
	// Let the sessions end before SIGTERM (bounded; stop cuts the rest).
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if text, err := a.scrape(); err == nil && metricSum(text, "atoll_proxy_sessions", `protocol="imap"`) == 0 {
			break
		}
	}
	a.stop()
	return r, nil
}

func proxyMarkdown(p *ProxyResult) string {
	var b strings.Builder
	s := p.Setup
	b.WriteString("## Login proxy (loopback)\n\n")
	fmt.Fprintf(&b, "The proxy is a real `atoll run` process: %s. Everything runs on this host over loopback: the clients are Go code in the bench process, the proxy listens on %s, the nodes on %s. Each figure is the median of %d runs (min–max beside it); a ratio is proxy ÷ direct, both measured in the same run (which goes first alternates), and its median is the median of the per-run ratios. RLIMIT_NOFILE %d for the bench and atoll.\n\n",
		s.Proxy, proxyVIP, s.Node, s.Runs, s.NoFile)
	l := p.Logins
	fmt.Fprintf(&b, "### Logins per second\n\nNodes: a private Dovecot %s (`peer.StartDovecot`, passwd-file, maildir, high-performance login mode), then the fake node of the memory test behind its own `atoll run`. %d concurrent clients, each its own user, each doing connect → greeting → `LOGIN` → `LOGOUT` (waiting for the server to close) in a loop, at most %d logins or %.0f s per measurement. Through the proxy, atoll looks the user up, dials the node and replays the login as `AUTHENTICATE PLAIN`; nodes, atoll and the clients share the CPUs.\n\n",
		s.Dovecot, l.Concurrency, l.MaxLogins, l.MaxSeconds)
	b.WriteString("| node | through the proxy | min–max | direct | min–max | ratio proxy ÷ direct | min–max | logins ok | failed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, row := range []struct {
		name string
		l    ProxyLogins
	}{{"Dovecot", p.Logins}, {"fake node", p.FakeLogins}} {
		l := row.l
		fmt.Fprintf(&b, "| %s | %.0f | %.0f–%.0f | %.0f | %.0f–%.0f | %.2f× | %.2f–%.2f× | %d | %d |\n", row.name,
			l.Proxy.Median, l.Proxy.Min, l.Proxy.Max, l.Direct.Median, l.Direct.Min, l.Direct.Max, l.Ratio.Median, l.Ratio.Min, l.Ratio.Max, l.OK, l.Errors)
	}
	b.WriteString("\n")
	for _, l := range []ProxyLogins{p.Logins, p.FakeLogins} {
		if l.FirstError != "" {
			fmt.Fprintf(&b, "First failed login: `%s`.\n\n", l.FirstError)
			break
		}
	}
	b.WriteString("Dovecot forks an imap process for every login, one after the other, which bounds its rate whichever way the client comes; the fake node (below) answers at once, so its row shows what atoll itself costs per login — there the clients, the fake node and atoll share the CPUs.\n\n")
	r := p.Relay
	fmt.Fprintf(&b, "### Bytes relayed after login\n\nOne message delivered by LMTP to a Dovecot user; per run, one session each way logs in, selects INBOX and sends `FETCH 1 BODY[]` %d times in a row (%.1f MiB literal each); the rate is literal bytes over the time of the fetches. Through the proxy the bytes pass atoll's relay (splice between the two TCP sockets).\n\n",
		r.FetchesPerRun, float64(r.MessageBytes)/(1<<20))
	b.WriteString("| path | MiB/s | min–max |\n|---|---:|---:|\n")
	fmt.Fprintf(&b, "| through the proxy | %.0f | %.0f–%.0f |\n", r.Proxy.Median, r.Proxy.Min, r.Proxy.Max)
	fmt.Fprintf(&b, "| direct to Dovecot | %.0f | %.0f–%.0f |\n", r.Direct.Median, r.Direct.Min, r.Direct.Max)
	fmt.Fprintf(&b, "| ratio proxy ÷ direct | %.2f× | %.2f–%.2f× |\n\n", r.Ratio.Median, r.Ratio.Min, r.Ratio.Max)
	m := p.Memory
	fmt.Fprintf(&b, "### Memory per idle logged-in session\n\nA Dovecot cannot hold this many imap processes here, so the node is a fake IMAP server in the bench process (greeting with capabilities, CAPABILITY, ID, LOGIN/AUTHENTICATE PLAIN → OK, LOGOUT, otherwise idle), the only node of the island of a second `atoll run` (fresh per run, its health checks — greeting, `LOGOUT` — passing). Per run: a few logins to warm up, then atoll's memory is read from `/proc/PID/status` (VmRSS) and `/proc/PID/smaps_rollup` (Private_Dirty, Anonymous); %d plain-TCP sessions log in through it (64 at a time) and stay idle; once the node has every one logged in and atoll's `atoll_proxy_sessions` says %d, and 2 s later, memory is read again. Per session = (after − before) ÷ %d. Kernel memory (socket buffers, splice pipes) is not in these figures.\n\n",
		m.Sessions, m.Sessions, m.Sessions)
	if m.Why != "" {
		fmt.Fprintf(&b, "**%d sessions, not %d**: %s.\n\n", m.Sessions, m.Asked, m.Why)
	}
	mark := "met"
	if !m.Met {
		mark = "**missed**"
	}
	b.WriteString("| per session | median | min–max | goal | |\n|---|---:|---:|---:|---|\n")
	fmt.Fprintf(&b, "| VmRSS | %.1f KiB | %.1f–%.1f | < %.0f KiB | %s |\n", m.RSS.Median, m.RSS.Min, m.RSS.Max, m.GoalKiB, mark)
	fmt.Fprintf(&b, "| Private_Dirty | %.1f KiB | %.1f–%.1f | | |\n", m.PrivateDirty.Median, m.PrivateDirty.Min, m.PrivateDirty.Max)
	fmt.Fprintf(&b, "| Anonymous | %.1f KiB | %.1f–%.1f | | |\n", m.Anonymous.Median, m.Anonymous.Min, m.Anonymous.Max)
	fmt.Fprintf(&b, "| file descriptors | %.2f | %.2f–%.2f | | |\n\n", m.FDs.Median, m.FDs.Min, m.FDs.Max)
	var login []float64
	for _, r := range m.Runs {
		login = append(login, r.LoginSeconds)
	}
	if len(m.Runs) > 0 {
		r0 := m.Runs[len(m.Runs)/2]
		fmt.Fprintf(&b, "Logging the %d sessions in took %.1f s (median). A sample run: VmRSS %d → %d KiB, Private_Dirty %d → %d KiB, %d → %d file descriptors, %d → %d threads.\n",
			m.Sessions, median(login), r0.Before.RSSKiB, r0.After.RSSKiB, r0.Before.PrivateDirtyKiB, r0.After.PrivateDirtyKiB, r0.Before.FDs, r0.After.FDs, r0.Before.Threads, r0.After.Threads)
	}
	return b.String()
}
