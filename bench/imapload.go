package main

// The tools of the login proxy benchmark (proxy.go): a minimal IMAP
// client and load generator, a fake IMAP node, an LMTP delivery, the
// `atoll run` child process, a metrics scrape and the process memory
// reader.

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// imapClient is just enough IMAP to log in, select, fetch a whole
// message and log out.
type imapClient struct {
	conn net.Conn
	r    *bufio.Reader
	seq  int
	lit  []byte // scratch for literals, allocated on first use
}

// dialIMAP connects to t (worker w's address of it) and reads the
// greeting; bufSize is the read buffer (small for the thousands of idle
// sessions of the memory test).
func dialIMAP(t target, w int, timeout time.Duration, bufSize int) (*imapClient, error) {
	c, err := t.dial(w, timeout)
	if err != nil {
		return nil, err
	}
	ic := &imapClient{conn: c, r: bufio.NewReaderSize(c, bufSize)}
	c.SetDeadline(time.Now().Add(timeout))
	g, err := ic.line()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(g, "* OK") {
		c.Close()
		return nil, fmt.Errorf("greeting %q", g)
	}
	return ic, nil
}

func (ic *imapClient) line() (string, error) {
	l, err := ic.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(l, "\r\n"), nil
}

// literalSize is N of a line ending in {N} (or {N+}).
func literalSize(line string) (int64, bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSuffix(line[i+1:len(line)-1], "+"), 10, 64)
	return n, err == nil && n >= 0
}

// discard reads and drops n bytes (a literal): reads larger than the
// buffer go straight from the socket into the scratch buffer.
func (ic *imapClient) discard(n int64) error {
	if ic.lit == nil {
		ic.lit = make([]byte, 1<<20)
	}
	for n > 0 {
		m, err := ic.r.Read(ic.lit[:min(int64(len(ic.lit)), n)])
		n -= int64(m)
		if err != nil {
			return err
		}
	}
	return nil
}

// command sends one command and reads up to its tagged answer, which
// must be OK; it returns the bytes of the literals in the answers.
func (ic *imapClient) command(cmd string) (literals int64, err error) {
	ic.seq++
	tag := "b" + strconv.Itoa(ic.seq)
	if _, err := io.WriteString(ic.conn, tag+" "+cmd+"\r\n"); err != nil {
		return 0, err
	}
	for {
		l, err := ic.line()
		if err != nil {
			return literals, err
		}
		for {
			n, ok := literalSize(l)
			if !ok {
				break
			}
			if err := ic.discard(n); err != nil {
				return literals, err
			}
			literals += n
			if l, err = ic.line(); err != nil {
				return literals, err
			}
		}
		if rest, ok := strings.CutPrefix(l, tag+" "); ok {
			if !strings.HasPrefix(rest, "OK") {
				return literals, fmt.Errorf("%s: %s", strings.Fields(cmd)[0], rest)
			}
			return literals, nil
		}
	}
}

func imapQuote(s string) string { return `"` + s + `"` }

func (ic *imapClient) login(user, pw string) error {
	_, err := ic.command("LOGIN " + imapQuote(user) + " " + imapQuote(pw))
	return err
}

// logout says LOGOUT and waits for the server to close first, as a
// polite client does (the server's side keeps the TIME_WAIT).
func (ic *imapClient) logout() error {
	defer ic.conn.Close()
	if _, err := ic.command("LOGOUT"); err != nil {
		return err
	}
	io.Copy(io.Discard, ic.r)
	return nil
}

// benchUser is an IMAP account.
type benchUser struct{ name, password string }

// loginCycle is one client (worker w): connect, greeting, LOGIN, LOGOUT.
func loginCycle(t target, w int, u benchUser) error {
	ic, err := dialIMAP(t, w, 10*time.Second, 4096)
	if err != nil {
		return err
	}
	if err := ic.login(u.name, u.password); err != nil {
		ic.conn.Close()
		return err
	}
	return ic.logout()
}

// loginLoad is the outcome of one login measurement.
type loginLoad struct {
	ok, errors int
	elapsed    time.Duration
	firstErr   error
}

func (l loginLoad) perSecond() float64 { return float64(l.ok) / l.elapsed.Seconds() }

// runLoginLoad runs login cycles against t from conc workers (worker
// w logs in as users[w % len(users)]) until maxN cycles were started or
// maxDur has passed, whichever comes first.
func runLoginLoad(t target, users []benchUser, conc, maxN int, maxDur time.Duration) loginLoad {
	var (
		next, ok, bad atomic.Int64
		once          sync.Once
		firstErr      error
	)
	start := time.Now()
	deadline := start.Add(maxDur)
	err := t.workers(conc, func(w int) {
		u := users[w%len(users)]
		for next.Add(1) <= int64(maxN) && time.Now().Before(deadline) {
			if err := loginCycle(t, w, u); err != nil {
				bad.Add(1)
				once.Do(func() { firstErr = err })
				continue
			}
			ok.Add(1)
		}
	})
	if err != nil {
		return loginLoad{errors: 1, elapsed: time.Since(start), firstErr: err}
	}
	return loginLoad{ok: int(ok.Load()), errors: int(bad.Load()), elapsed: time.Since(start), firstErr: firstErr}
}

// fetchRate logs in to t as u, selects INBOX and fetches message 1
// whole n times; it returns the literal bytes received and the time the
// fetches took.
func fetchRate(t target, u benchUser, n int) (bytes int64, took time.Duration, err error) {
	err = t.workers(1, func(int) { bytes, took, err = fetchOnce(t, u, n) })
	return bytes, took, err
}

func fetchOnce(t target, u benchUser, n int) (int64, time.Duration, error) {
	ic, err := dialIMAP(t, 0, 10*time.Second, 64<<10)
	if err != nil {
		return 0, 0, err
	}
	defer ic.conn.Close()
	if err := ic.login(u.name, u.password); err != nil {
		return 0, 0, err
	}
	if _, err := ic.command("SELECT INBOX"); err != nil {
		return 0, 0, err
	}
	ic.conn.SetDeadline(time.Now().Add(5 * time.Minute))
	var total int64
	start := time.Now()
	for range n {
		b, err := ic.command("FETCH 1 BODY[]")
		if err != nil {
			return 0, 0, err
		}
		if b == 0 {
			return 0, 0, errors.New("FETCH 1 BODY[] returned no literal")
		}
		total += b
	}
	elapsed := time.Since(start)
	ic.conn.SetDeadline(time.Now().Add(10 * time.Second))
	return total, elapsed, ic.logout()
}

// deliverLMTP delivers one message of about size bytes (76-character
// lines of base64) to rcpt.
func deliverLMTP(addr, rcpt string, size int) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	r := bufio.NewReader(c)
	reply := func(want string) error { return lmtpReply(r, want) }
	if err := reply("220"); err != nil {
		return err
	}
	for _, s := range []struct{ cmd, want string }{
		{"LHLO bench", "250"}, {"MAIL FROM:<bench@example.org>", "250"}, {"RCPT TO:<" + rcpt + ">", "250"}, {"DATA", "354"},
	} {
		if _, err := fmt.Fprintf(c, "%s\r\n", s.cmd); err != nil {
			return err
		}
		if err := reply(s.want); err != nil {
			return err
		}
	}
	w := bufio.NewWriterSize(c, 256<<10)
	fmt.Fprintf(w, "From: bench@example.org\r\nTo: %s\r\nSubject: atoll bench\r\nMessage-ID: <bench-%d@example.org>\r\n\r\n", rcpt, time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(1, 2))
	raw := make([]byte, 57)
	enc := make([]byte, 76)
	for n := 0; n < size; n += 78 {
		for i := range raw {
			raw[i] = byte(rng.Uint32())
		}
		base64.StdEncoding.Encode(enc, raw)
		w.Write(enc)
		w.WriteString("\r\n")
	}
	w.WriteString(".\r\n")
	if err := w.Flush(); err != nil {
		return err
	}
	if err := reply("250"); err != nil {
		return err
	}
	fmt.Fprintf(c, "QUIT\r\n")
	return nil
}

// fakeCaps are the fake node's capabilities.
const fakeCaps = "IMAP4rev1 AUTH=PLAIN SASL-IR LITERAL+ ID"

// fakeNode is an IMAP server that lets everyone in and then idles: the
// node of the memory test, where a real Dovecot could not hold thousands
// of imap processes. It answers CAPABILITY, ID, NOOP, LOGIN,
// AUTHENTICATE PLAIN and LOGOUT, and gives the health checks their
// greeting and LOGOUT.
type fakeNode struct {
	ln       net.Listener
	loggedIn atomic.Int64 // sessions logged in and still open
	mu       sync.Mutex
	conns    map[net.Conn]struct{} // nil once closed
	wg       sync.WaitGroup
}

func startFakeNode() (*fakeNode, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return newFakeNode(ln), nil
}

// newFakeNode serves IMAP on ln (which it owns from now on).
func newFakeNode(ln net.Listener) *fakeNode {
	f := &fakeNode{ln: ln, conns: map[net.Conn]struct{}{}}
	f.wg.Go(f.accept)
	return f
}

func (f *fakeNode) addr() netip.AddrPort { return f.ln.Addr().(*net.TCPAddr).AddrPort() }

func (f *fakeNode) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like
			continue
		}
		f.mu.Lock()
		if f.conns == nil {
			f.mu.Unlock()
			c.Close()
			return
		}
		f.conns[c] = struct{}{}
		f.mu.Unlock()
		f.wg.Go(func() { f.serve(c) })
	}
}

// close stops the listener, closes every connection and waits.
func (f *fakeNode) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

// readCommand reads a command line with its literals (answering
// synchronizing ones with a continuation).
func readCommand(r *bufio.Reader, w io.Writer) (string, error) {
	var cmd strings.Builder
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		l = strings.TrimRight(l, "\r\n")
		cmd.WriteString(l)
		n, ok := literalSize(l)
		if !ok {
			return cmd.String(), nil
		}
		if !strings.HasSuffix(l, "+}") {
			if _, err := io.WriteString(w, "+ OK\r\n"); err != nil {
				return "", err
			}
		}
		if _, err := io.CopyN(&cmd, r, n); err != nil {
			return "", err
		}
	}
}

func (f *fakeNode) serve(c net.Conn) {
	logged := false
	defer func() {
		if logged {
			f.loggedIn.Add(-1)
		}
		c.Close()
		f.mu.Lock()
		if f.conns != nil {
			delete(f.conns, c)
		}
		f.mu.Unlock()
	}()
	r := bufio.NewReaderSize(c, 1024)
	if _, err := io.WriteString(c, "* OK [CAPABILITY "+fakeCaps+"] fake ready\r\n"); err != nil {
		return
	}
	for {
		line, err := readCommand(r, c)
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(line, " ")
		verb, args, _ := strings.Cut(rest, " ")
		var out string
		switch strings.ToUpper(verb) {
		case "CAPABILITY":
			out = "* CAPABILITY " + fakeCaps + "\r\n" + tag + " OK CAPABILITY completed.\r\n"
		case "ID":
			out = "* ID NIL\r\n" + tag + " OK ID completed.\r\n"
		case "NOOP":
			out = tag + " OK NOOP completed.\r\n"
		case "AUTHENTICATE":
			if !strings.Contains(args, " ") { // no initial response
				if _, err := io.WriteString(c, "+ \r\n"); err != nil {
					return
				}
				resp, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if strings.TrimSpace(resp) == "*" {
					out = tag + " BAD Authentication cancelled.\r\n"
					break
				}
			}
			fallthrough
		case "LOGIN":
			out = tag + " OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
			if !logged {
				logged = true
				f.loggedIn.Add(1)
			}
		case "LOGOUT":
			io.WriteString(c, "* BYE Logging out\r\n"+tag+" OK LOGOUT completed.\r\n")
			return
		default:
			out = tag + " BAD Unknown command.\r\n"
		}
		if _, err := io.WriteString(c, out); err != nil {
			return
		}
	}
}

// atollProc is a running `atoll run` child.
type atollProc struct {
	*childProc
	socket  string
	metrics string // host:port of its Prometheus endpoint
}

// atollConfig is a proxy-only config: the static directory maps every
// user to island a, whose only node is node; one IMAP login service
// listens on vip.
func atollConfig(dir, name string, metrics, vip, node netip.AddrPort) (cfgPath, socket string, err error) {
	mapPath := filepath.Join(dir, name+".map")
	if err := os.WriteFile(mapPath, []byte("# every user lives on island a\n* a\n"), 0o644); err != nil {
		return "", "", err
	}
	socket = filepath.Join(dir, name+".sock")
	cfg := fmt.Sprintf(`# written by atoll's benchmark suite
dataplane: {mode: none}
health: {interval: 1s, timeout: 900ms, jitter: 100ms, rise: 2, fall: 3}
metrics: {listen: "%s"}
api: {socket: %s}
proxy:
  hostname: bench.atoll
  max_connections_per_source: -1
directory:
  static: %s
islands:
  - name: a
    nodes:
      - name: node-a
        addresses: [%s]
        ports: {imap: %d}
services:
  - {name: imap, vips: [%s], port: %d, protocol: imap, forwarding: ipip, routing: login}
`, metrics, socket, mapPath, node.Addr(), node.Port(), vip.Addr(), vip.Port())
	cfgPath = filepath.Join(dir, name+".yaml")
	return cfgPath, socket, os.WriteFile(cfgPath, []byte(cfg), 0o644)
}

// startAtoll runs `atoll run -c cfg` (log at the default level, info, to
// a file) in its own process group, with nofile file descriptors, and
// waits until its metrics answer and the proxy's health checks of the
// node have passed `rise` (2) times.
func startAtoll(bin, dir, name, cfg, socket string, metrics netip.AddrPort, nofile uint64) (*atollProc, error) {
	cp, err := startChild(name, exec.Command(bin, "run", "-c", cfg), filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	a := &atollProc{childProc: cp, socket: socket, metrics: metrics.String()}
	// Go raises its soft limit to the hard one at start; set both anyway.
	lim := unix.Rlimit{Cur: nofile, Max: nofile}
	if err := unix.Prlimit(a.PID(), unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		a.stop()
		return nil, fmt.Errorf("prlimit nofile on atoll: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		text, err := a.scrape()
		if err == nil {
			ok := metricSum(text, "atoll_health_checks_total", `node="node-a"`, `result="ok"`)
			if fail := metricSum(text, "atoll_health_checks_total", `node="node-a"`, `result="fail"`); fail > 0 {
				a.stop()
				return nil, fmt.Errorf("atoll's health check of the node failed:\n%s", a.logTail())
			}
			if ok >= 2 {
				return a, nil
			}
		}
		select {
		case <-a.Exited():
			return nil, fmt.Errorf("atoll exited during startup:\n%s", a.logTail())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.stop()
			return nil, fmt.Errorf("atoll's health checks did not pass within 30s (last scrape: %v):\n%s", err, a.logTail())
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stop ends atoll: SIGTERM, SIGKILL after 15 s. Idempotent.
func (a *atollProc) stop() { a.childProc.stop(15 * time.Second) }

var scrapeClient = &http.Client{Timeout: 5 * time.Second}

// scrape fetches atoll's metrics in the text format.
func (a *atollProc) scrape() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.metrics+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("metrics: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// metricSum adds up the samples of metric name whose labels contain
// every one of labels (`key="value"`).
func metricSum(text, name string, labels ...string) float64 {
	var sum float64
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		match := true
		for _, lb := range labels {
			if !strings.Contains(l[:i], lb) {
				match = false
			}
		}
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil && match {
			sum += v
		}
	}
	return sum
}

// procMem is a process's memory as the kernel accounts it, in KiB, and
// its open file descriptors.
type procMem struct {
	RSSKiB          int64 `json:"vm_rss_kib"`        // /proc/PID/status VmRSS
	PrivateDirtyKiB int64 `json:"private_dirty_kib"` // /proc/PID/smaps_rollup
	AnonymousKiB    int64 `json:"anonymous_kib"`     // /proc/PID/smaps_rollup
	FDs             int64 `json:"fds"`               // entries of /proc/PID/fd
	Threads         int64 `json:"threads"`           // /proc/PID/status Threads
}

func readProcMem(pid int) (procMem, error) {
	var m procMem
	dir := "/proc/" + strconv.Itoa(pid)
	field := func(text, key string) (int64, error) {
		for _, l := range strings.Split(text, "\n") {
			if rest, ok := strings.CutPrefix(l, key+":"); ok {
				f := strings.Fields(rest)
				if len(f) > 0 {
					return strconv.ParseInt(f[0], 10, 64)
				}
			}
		}
		return 0, fmt.Errorf("%s: no %s", dir, key)
	}
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return m, err
	}
	rollup, err := os.ReadFile(dir + "/smaps_rollup")
	if err != nil {
		return m, err
	}
	for _, f := range []struct {
		text, key string
		dst       *int64
	}{
		{string(status), "VmRSS", &m.RSSKiB}, {string(status), "Threads", &m.Threads},
		{string(rollup), "Private_Dirty", &m.PrivateDirtyKiB}, {string(rollup), "Anonymous", &m.AnonymousKiB},
	} {
		if *f.dst, err = field(f.text, f.key); err != nil {
			return m, err
		}
	}
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return m, err
	}
	m.FDs = int64(len(fds))
	return m, nil
}

// raiseNofile lifts this process's file descriptor limit (soft and
// hard) to n where it may (raising the hard limit needs
// CAP_SYS_RESOURCE), or else the soft limit to the hard one, and returns
// the limit in force; syscall.Setrlimit also makes children inherit it.
func raiseNofile(n uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= n && lim.Max >= n {
		return lim.Cur, nil
	}
	want := syscall.Rlimit{Cur: max(lim.Cur, n), Max: max(lim.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		return want.Cur, nil
	} else if !errors.Is(err, syscall.EPERM) {
		return 0, err
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}

// freePort returns a TCP port free on addr right now.
func freePort(addr netip.Addr) (netip.AddrPort, error) {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort(), nil
}
