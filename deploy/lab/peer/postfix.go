//go:build linux

package peer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/smtp"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// PostfixOptions describe a private Postfix instance: an MTA that accepts
// mail for any domain from MyNetworks and relays all of it over LMTP to
// one destination (in the lab, atoll's LMTP router VIP).
type PostfixOptions struct {
	// Dir holds everything of the instance: etc/ (main.cf, master.cf: the
	// config_directory), queue/ (queue_directory), data/
	// (data_directory) and maillog. Required; the caller owns it
	// (t.TempDir()). A Dir reused from a stopped instance keeps its queue.
	// StartPostfix adds o+x to Dir and to ancestors it owns under
	// os.TempDir() that lack it, so the postfix user can reach the tree.
	Dir string
	// Listen is the SMTP listener. Port 0 picks a free port (only for
	// loopback addresses); default 127.0.0.1:0. It is also
	// inet_interfaces, so a single non-loopback address is the source
	// address of Postfix's outgoing LMTP connections too.
	Listen netip.AddrPort
	// Hostname is myhostname (greeting, LHLO name, Received headers);
	// default "mta.example.org".
	Hostname string
	// Relay is the LMTP destination of all mail, in Postfix's syntax:
	// "inet:203.0.113.20:24", "inet:[2001:db8::20]:24" or
	// "unix:/path/to/socket"; "203.0.113.20:24" means inet:. Required.
	Relay string
	// MyNetworks may relay (smtpd_relay_restrictions = permit_mynetworks,
	// reject_unauth_destination); default the Listen address (/32 or
	// /128) and 127.0.0.0/8.
	MyNetworks []netip.Prefix
	// RetryDelay is queue_run_delay and minimal_backoff_time
	// (maximal_backoff_time is twice it): how soon deferred mail is
	// retried on its own. Default 1 s; whole seconds. Tests of Flush set
	// it long (time.Hour) so that only Flush retries.
	RetryDelay time.Duration
	// Command builds every command run for the instance (postfix check,
	// the master daemon, postqueue); nil means exec.Command. Tests in a
	// network namespace pass a wrapper around `ip netns exec NAME` (which
	// execs, so the PID stays the master's): Postfix refuses an
	// inet_interfaces address that is not configured where it runs.
	Command func(name string, args ...string) *exec.Cmd
	// Dial reaches the listener (readiness, Send); nil means a
	// net.Dialer. With a Command that enters a namespace, pass the
	// namespace's DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Postfix is a running private Postfix instance.
type Postfix struct {
	Opts      PostfixOptions // as started: defaults filled in, port resolved
	Addr      netip.AddrPort // the SMTP listener
	PID       int            // the master daemon (leader of its session and process group); 0 before the first start
	ConfigDir string         // Dir/etc: main.cf, master.cf (postfix -c, postqueue -c)

	mu      sync.Mutex // serialises Start, Stop, Kill
	proc    *Process
	logPath string
	bins    postfixBins
}

type postfixBins struct{ postfix, postqueue, master string }

// Log returns the maillog (maillog_file: every Postfix program of the
// instance logs there through its postlog service, no syslog needed).
func (p *Postfix) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

// Running reports whether the master daemon is running.
func (p *Postfix) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.proc != nil && p.proc.Running()
}

// StartPostfix writes a private configuration under o.Dir, runs
// `postfix -c DIR/etc check` (which creates the queue directories with the
// ownership Postfix wants and validates the configuration), starts the
// master daemon in the foreground and waits, bounded by ctx, until the
// SMTP listener greets with "220 <Hostname>". On error nothing is left
// running.
//
// The master daemon is started directly (`master -c DIR/etc`) rather than
// with `postfix start-fg`: unless its PID is 1, start-fg runs the master
// as a child of postfix-script, and the master then calls setsid(2) and
// leaves the caller's process group, so its PID would not be ours. Run
// as the leader of a new session, its own setsid fails harmlessly
// (Postfix accepts being a session leader already) and the master's PID,
// session and process group are the ones we started.
func StartPostfix(ctx context.Context, o PostfixOptions) (*Postfix, error) {
	if err := fillPostfixDefaults(&o); err != nil {
		return nil, err
	}
	bins, err := findPostfix()
	if err != nil {
		return nil, err
	}
	uid, gid, err := postfixIDs()
	if err != nil {
		return nil, err
	}
	p := &Postfix{Opts: o, ConfigDir: filepath.Join(o.Dir, "etc"), logPath: filepath.Join(o.Dir, "maillog"), bins: bins}
	for _, d := range []string{o.Dir, p.ConfigDir, filepath.Join(o.Dir, "queue")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("peer: postfix: %w", err)
		}
	}
	if err := makeTraversable(o.Dir, uid, gid); err != nil {
		return nil, fmt.Errorf("peer: postfix: %w", err)
	}
	requested := o.Listen
	const attempts = 3
	for attempt := 1; ; attempt++ {
		auto := false
		p.Addr = requested
		if requested.Port() == 0 {
			port, err := freePort([]netip.Addr{requested.Addr()}, nil)
			if err != nil {
				return nil, fmt.Errorf("peer: postfix: pick a port on %v: %w", requested.Addr(), err)
			}
			p.Addr, auto = netip.AddrPortFrom(requested.Addr(), uint16(port)), true
		}
		p.Opts.Listen = p.Addr
		if err := p.writeConfig(); err != nil {
			return nil, fmt.Errorf("peer: postfix: %w", err)
		}
		err := p.Start(ctx)
		if err == nil {
			return p, nil
		}
		// A port picked free may have been taken before the master bound it.
		if auto && attempt < attempts && errors.Is(err, errPortInUse) && ctx.Err() == nil {
			continue
		}
		return nil, err
	}
}

var errPortInUse = errors.New("the SMTP port is in use by another process")

// Postfix's main.cf expands $name in values and splits lists on spaces
// and commas: keep paths free of those.
const postfixBadPathChars = " \t\r\n\"'#$,=\\{}()"

func fillPostfixDefaults(o *PostfixOptions) error {
	if o.Dir == "" {
		return errors.New("peer: PostfixOptions.Dir is required")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	if strings.ContainsAny(dir, postfixBadPathChars) {
		return fmt.Errorf("peer: Dir %q holds a character main.cf would interpret (one of %q)", dir, postfixBadPathChars)
	}
	o.Dir = dir
	if !o.Listen.IsValid() {
		o.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	}
	a := o.Listen.Addr().Unmap()
	if a.Zone() != "" || a.IsUnspecified() {
		return fmt.Errorf("peer: listen address %v: need a concrete address without zone", o.Listen)
	}
	if o.Listen.Port() == 0 && !a.IsLoopback() {
		return fmt.Errorf("peer: listen address %v: free ports can only be picked for loopback addresses", o.Listen)
	}
	o.Listen = netip.AddrPortFrom(a, o.Listen.Port())
	if o.Hostname == "" {
		o.Hostname = "mta.example.org"
	}
	if len(o.Hostname) > 253 || !onlyChars(o.Hostname, nameChars) || strings.HasPrefix(o.Hostname, "-") || strings.HasPrefix(o.Hostname, ".") {
		return fmt.Errorf("peer: Hostname %q: use letters, digits, '-' and '.'", o.Hostname)
	}
	relay, err := normalizeRelay(o.Relay)
	if err != nil {
		return err
	}
	o.Relay = relay
	if len(o.MyNetworks) == 0 {
		o.MyNetworks = []netip.Prefix{netip.PrefixFrom(a, a.BitLen()), netip.MustParsePrefix("127.0.0.0/8")}
	}
	o.MyNetworks = slices.Clone(o.MyNetworks)
	for i, n := range o.MyNetworks {
		if !n.IsValid() || n.Addr().Zone() != "" {
			return fmt.Errorf("peer: MyNetworks: %v is not a network", n)
		}
		o.MyNetworks[i] = n.Masked()
	}
	switch {
	case o.RetryDelay == 0:
		o.RetryDelay = time.Second
	case o.RetryDelay < time.Second:
		return fmt.Errorf("peer: RetryDelay %v: at least 1s (Postfix counts in seconds)", o.RetryDelay)
	}
	o.RetryDelay = o.RetryDelay.Truncate(time.Second)
	if o.Command == nil {
		o.Command = exec.Command
	}
	if o.Dial == nil {
		var nd net.Dialer
		o.Dial = nd.DialContext
	}
	return nil
}

// normalizeRelay checks an LMTP destination and returns it in Postfix's
// syntax: inet:HOST:PORT (IPv6 in brackets) or unix:PATH.
func normalizeRelay(r string) (string, error) {
	if r == "" {
		return "", errors.New("peer: PostfixOptions.Relay is required (the LMTP destination, e.g. inet:203.0.113.20:24)")
	}
	if strings.ContainsAny(r, " \t\r\n,$=#\"'\\{}()") {
		return "", fmt.Errorf("peer: Relay %q holds a character main.cf would interpret", r)
	}
	if path, ok := strings.CutPrefix(r, "unix:"); ok {
		if !filepath.IsAbs(path) {
			return "", fmt.Errorf("peer: Relay %q: a unix socket needs an absolute path", r)
		}
		return r, nil
	}
	hp := strings.TrimPrefix(r, "inet:")
	if ap, err := netip.ParseAddrPort(hp); err == nil {
		if ap.Port() == 0 || ap.Addr().Zone() != "" || ap.Addr().IsUnspecified() {
			return "", fmt.Errorf("peer: Relay %q: need a concrete address and a port", r)
		}
		return "inet:" + netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String(), nil
	}
	host, port, err := net.SplitHostPort(hp)
	if err != nil || host == "" || !onlyChars(host, nameChars) {
		return "", fmt.Errorf("peer: Relay %q: want inet:HOST:PORT or unix:/PATH", r)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("peer: Relay %q: bad port", r)
	}
	return "inet:" + hp, nil
}

// relayAddr is the relay's IP address when it is an inet destination
// with an address literal.
func relayAddr(relay string) (netip.Addr, bool) {
	hp, ok := strings.CutPrefix(relay, "inet:")
	if !ok {
		return netip.Addr{}, false
	}
	ap, err := netip.ParseAddrPort(hp)
	return ap.Addr(), err == nil
}

func findPostfix() (postfixBins, error) {
	var b postfixBins
	var err error
	if b.postfix, err = Binary("postfix"); err != nil {
		return b, err
	}
	if b.postqueue, err = Binary("postqueue"); err != nil {
		return b, err
	}
	// The master lives in daemon_directory (compiled in; Debian:
	// /usr/lib/postfix/sbin). postconf sits next to postfix.
	out, err := exec.Command(filepath.Join(filepath.Dir(b.postfix), "postconf"), "-d", "-h", "daemon_directory").Output()
	dd := strings.TrimSpace(string(out))
	if err != nil || dd == "" {
		dd = "/usr/lib/postfix/sbin"
	}
	b.master = filepath.Join(dd, "master")
	if _, err := os.Stat(b.master); err != nil {
		return b, fmt.Errorf("peer: postfix master daemon: %w", err)
	}
	return b, nil
}

// postfixIDs are the uid and gid of mail_owner (postfix), and they check
// that setgid_group (postdrop) exists: the Debian package creates both.
func postfixIDs() (uid, gid int, err error) {
	if os.Geteuid() != 0 {
		return 0, 0, errors.New("peer: postfix needs root (its master daemon refuses to run otherwise)")
	}
	u, err := user.Lookup("postfix")
	if err != nil {
		return 0, 0, fmt.Errorf("peer: system user postfix: %w (is postfix installed? deploy/install-deps.sh)", err)
	}
	if _, err := user.LookupGroup("postdrop"); err != nil {
		return 0, 0, fmt.Errorf("peer: system group postdrop: %w (is postfix installed? deploy/install-deps.sh)", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}

// postfixNet renders an address or network for main.cf (IPv6 in
// brackets, as mynetworks requires).
func postfixNet(p netip.Prefix, single bool) string {
	a := p.Addr().String()
	if p.Addr().Is6() {
		a = "[" + a + "]"
	}
	if single {
		return a
	}
	return a + "/" + strconv.Itoa(p.Bits())
}

// writeConfig renders main.cf and master.cf for the resolved address.
// Traps it avoids (Postfix 3.7, Debian 12):
//   - maillog_file must match maillog_file_prefixes (default /var,
//     /dev/stdout) or every Postfix command dies with a fatal error that,
//     without syslog, nobody sees: the prefix list is set to Dir.
//   - the queue and data directories are not inside config_directory:
//     `postfix check` warns about every file there not owned by root.
//   - chroot is "n" for every service: Debian's master.cf chroots most
//     of them into the queue directory, which then needs copies of
//     /etc/resolv.conf, /etc/services, … under queue/etc.
//   - smtpd_peername_lookup = no: a reverse DNS lookup of every client,
//     which in a namespace without a resolver only adds delays.
//   - mydestination, alias_maps, local_recipient_maps are empty: nothing
//     is local, every domain goes to default_transport (the LMTP relay);
//     relay_domains is empty, so only MyNetworks may relay.
func (p *Postfix) writeConfig() error {
	o := p.Opts
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# Written by atoll deploy/lab/peer; regenerated on every start.")
	w("compatibility_level = 3.6")
	w("queue_directory = %s", filepath.Join(o.Dir, "queue"))
	w("data_directory = %s", filepath.Join(o.Dir, "data"))
	w("mail_owner = postfix")
	w("setgid_group = postdrop")
	w("maillog_file = %s", p.logPath)
	w("maillog_file_prefixes = %s", o.Dir)
	w("myhostname = %s", o.Hostname)
	w("myorigin = $myhostname")
	w("mydestination =")
	w("relay_domains =")
	w("local_recipient_maps =")
	w("alias_maps =")
	w("alias_database =")
	la := o.Listen.Addr()
	w("inet_interfaces = %s", postfixNet(netip.PrefixFrom(la, la.BitLen()), true))
	v4, v6 := la.Is4(), la.Is6()
	if ra, ok := relayAddr(o.Relay); ok {
		v4, v6 = v4 || ra.Is4(), v6 || ra.Is6()
	}
	switch {
	case v4 && v6:
		w("inet_protocols = all")
	case v6:
		w("inet_protocols = ipv6")
	default:
		w("inet_protocols = ipv4")
	}
	nets := make([]string, len(o.MyNetworks))
	for i, n := range o.MyNetworks {
		nets[i] = postfixNet(n, false)
	}
	w("mynetworks = %s", strings.Join(nets, " "))
	w("smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination")
	w("smtpd_peername_lookup = no")
	w("default_transport = lmtp:%s", o.Relay)
	w("relay_transport = lmtp:%s", o.Relay)
	w("lmtp_host_lookup = native")
	secs := int(o.RetryDelay / time.Second)
	w("queue_run_delay = %ds", secs)
	w("minimal_backoff_time = %ds", secs)
	w("maximal_backoff_time = %ds", 2*secs)
	w("smtputf8_enable = no")
	w("biff = no")
	w("append_dot_mydomain = no")
	w("readme_directory = no")
	if err := os.WriteFile(filepath.Join(p.ConfigDir, "main.cf"), []byte(b.String()), 0o644); err != nil {
		return err
	}

	b.Reset()
	w("# Written by atoll deploy/lab/peer; regenerated on every start.")
	w("# service   type       private unpriv chroot wakeup maxproc command")
	listen := postfixNet(netip.PrefixFrom(la, la.BitLen()), true) + ":" + strconv.Itoa(int(o.Listen.Port()))
	for _, s := range [][]string{
		{listen, "inet", "n", "-", "n", "-", "-", "smtpd"},
		{"pickup", "unix", "n", "-", "n", "60", "1", "pickup"},
		{"cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"},
		{"qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"},
		{"rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"},
		{"bounce", "unix", "-", "-", "n", "-", "0", "bounce"},
		{"defer", "unix", "-", "-", "n", "-", "0", "bounce"},
		{"trace", "unix", "-", "-", "n", "-", "0", "bounce"},
		{"verify", "unix", "-", "-", "n", "-", "1", "verify"},
		{"flush", "unix", "n", "-", "n", "1000?", "0", "flush"},
		{"proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"},
		{"proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"},
		{"smtp", "unix", "-", "-", "n", "-", "-", "smtp"},
		{"relay", "unix", "-", "-", "n", "-", "-", "smtp"},
		{"showq", "unix", "n", "-", "n", "-", "-", "showq"},
		{"error", "unix", "-", "-", "n", "-", "-", "error"},
		{"retry", "unix", "-", "-", "n", "-", "-", "error"},
		{"discard", "unix", "-", "-", "n", "-", "-", "discard"},
		{"lmtp", "unix", "-", "-", "n", "-", "-", "lmtp"},
		{"anvil", "unix", "-", "-", "n", "-", "1", "anvil"},
		{"scache", "unix", "-", "-", "n", "-", "1", "scache"},
		{"postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"},
	} {
		w("%-11s %-10s %-7s %-6s %-6s %-6s %-7s %s", s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
	}
	return os.WriteFile(filepath.Join(p.ConfigDir, "master.cf"), []byte(b.String()), 0o644)
}

// Start starts the instance again after Stop or Kill: same Dir, same
// address, same queue (mail deferred before the stop is retried). It
// checks and waits like StartPostfix; on error nothing is left running.
func (p *Postfix) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil && p.proc.Running() {
		return fmt.Errorf("peer: postfix (pid %d) is already running", p.PID)
	}
	if p.proc != nil {
		_ = p.proc.Stop(0, true) // exited on its own: reap it
	}
	logf, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("peer: postfix: %w", err)
	}
	defer logf.Close()
	if err := p.check(ctx, logf); err != nil {
		return fmt.Errorf("peer: postfix: %w\n--- log %s ---\n%s", err, p.logPath, tail(p.Log(), 30))
	}
	cmd := p.Opts.Command(p.bins.master, "-c", p.ConfigDir)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf // the master points them to /dev/null; this catches what runs before it
	proc, err := startSessionLeader(cmd)
	if err != nil {
		return fmt.Errorf("peer: postfix: start %s: %w", p.bins.master, err)
	}
	p.proc, p.PID = proc, proc.pid
	if err := p.waitReady(ctx); err != nil {
		exited := !proc.Running()
		if serr := proc.Stop(5*time.Second, false); serr != nil && proc.signaled {
			err = errors.Join(err, serr)
		}
		if exited {
			// The master's fatal errors before its postlog service runs
			// (a bind failure, say) go to syslog only: diagnose the
			// common one here.
			err = fmt.Errorf("%w (Postfix logs startup errors of the master daemon only to syslog)", err)
			if p.portAnswers() {
				err = fmt.Errorf("%w: %w", errPortInUse, err)
			}
		}
		return fmt.Errorf("peer: postfix %v: %w\n--- log %s ---\n%s", p.Addr, err, p.logPath, tail(p.Log(), 30))
	}
	return nil
}

// check runs `postfix -c DIR/etc check`. It creates the queue and data
// directories with the owners and modes Postfix wants (postfix:postdrop
// for maildrop and public, …) and fails on a bad configuration. Fatal
// errors that happen before it has read maillog_file reach only syslog
// (or a terminal): on failure, check runs it again under script(1), whose
// pseudo-terminal makes Postfix print them, and returns what it said.
func (p *Postfix) check(ctx context.Context, logf *os.File) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err := p.run(ctx, logf, logf, p.bins.postfix, "-c", p.ConfigDir, "check")
	if err == nil {
		return nil
	}
	err = fmt.Errorf("postfix check: %w", err)
	if ctx.Err() != nil {
		return err
	}
	script, lerr := exec.LookPath("script")
	if lerr != nil {
		return err
	}
	dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
	defer dcancel()
	var out bytes.Buffer
	line := fmt.Sprintf("'%s' -c '%s' check", p.bins.postfix, p.ConfigDir)
	_ = p.run(dctx, &out, &out, script, "-qec", line, "/dev/null")
	if said := strings.TrimSpace(strings.ReplaceAll(out.String(), "\r", "")); said != "" {
		err = fmt.Errorf("%w: %s", err, said)
	}
	return err
}

// run runs a short-lived command through Opts.Command in its own process
// group, bounded by ctx (the whole group is killed when ctx ends).
func (p *Postfix) run(ctx context.Context, stdout, stderr io.Writer, name string, args ...string) error {
	cmd := p.Opts.Command(name, args...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = stdout, stderr
	proc, err := StartProcess(cmd)
	if err != nil {
		return err
	}
	select {
	case <-proc.exited:
	case <-ctx.Done():
		_ = proc.Stop(0, true)
		return ctx.Err()
	}
	return proc.Stop(0, false) // reaps it; reports a failed exit
}

// startSessionLeader is startProcess for the Postfix master: it starts
// cmd as the leader of a new session (hence of a new process group with
// the same id), because the master calls setsid(2) and tolerates its
// failure only when it already leads its session. SIGKILL if the
// starting thread dies, as for every process here.
func startSessionLeader(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	cmd.SysProcAttr.Setpgid = false // setpgid on a session leader fails
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	proc := &Process{cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go proc.watch()
	return proc, nil
}

// Stop sends SIGTERM to the master (which terminates its children), waits
// up to 5 s (then SIGKILL), kills whatever is left of its process group
// and reaps it. The queue stays. Idempotent. It reports a master that
// had exited on its own.
func (p *Postfix) Stop() error { return p.halt(false) }

// Kill is a crash: SIGKILL to the master, then to the rest of its group.
// Mail already accepted stays in the queue. Stop afterwards is a no-op.
func (p *Postfix) Kill() error { return p.halt(true) }

func (p *Postfix) halt(hard bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return nil
	}
	if err := p.proc.Stop(5*time.Second, hard); err != nil {
		return fmt.Errorf("peer: postfix (pid %d): %w", p.PID, err)
	}
	return nil
}

// waitReady polls the listener until it greets with "220 <Hostname>".
func (p *Postfix) waitReady(ctx context.Context) error {
	proc := p.proc
	backoff := 5 * time.Millisecond
	for {
		if !proc.Running() {
			return errors.New("the master daemon exited during startup")
		}
		// The probe ends when the master exits: what answers may be
		// whoever else holds the port.
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		go func() {
			select {
			case <-proc.exited:
				cancel()
			case <-pctx.Done():
			}
		}()
		err := p.probe(pctx)
		cancel()
		if err == nil {
			return nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("SMTP listener %v not ready: %w (last attempt: %v)", p.Addr, ctx.Err(), err)
		case <-proc.exited:
			t.Stop()
			return errors.New("the master daemon exited during startup")
		case <-t.C:
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

// probe reads the greeting and says QUIT (so smtpd logs no lost
// connection).
func (p *Postfix) probe(ctx context.Context) error {
	c, err := p.Opts.Dial(ctx, "tcp", p.Addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	r := bufio.NewReader(io.LimitReader(c, 64<<10))
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if !strings.HasPrefix(line, "220 "+p.Opts.Hostname+" ") {
		return fmt.Errorf("unexpected greeting %q", strings.TrimSpace(line))
	}
	if _, err := io.WriteString(c, "QUIT\r\n"); err == nil {
		r.ReadString('\n')
	}
	return nil
}

// portAnswers reports whether something accepts connections on the
// listen address (after our master died: someone else holds the port).
func (p *Postfix) portAnswers() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := p.Opts.Dial(ctx, "tcp", p.Addr.String())
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Queue returns `postqueue -c DIR/etc -p`: the queue listing (queue ID,
// size, arrival, sender; for a deferred message the reason in
// parentheses and the recipients still to deliver). "Mail queue is
// empty" when it is. With the master stopped, postqueue reads the queue
// directly (its warning is not part of the result).
func (p *Postfix) Queue(ctx context.Context) (string, error) {
	return p.postqueue(ctx, "-p")
}

// Flush runs `postqueue -c DIR/etc -f`: deliver all queued mail now,
// deferred mail included, whatever its retry time. It returns once the
// request is made, not when the mail is delivered (WaitDelivered).
func (p *Postfix) Flush(ctx context.Context) error {
	_, err := p.postqueue(ctx, "-f")
	return err
}

func (p *Postfix) postqueue(ctx context.Context, flag string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	if err := p.run(ctx, &out, &errb, p.bins.postqueue, "-c", p.ConfigDir, flag); err != nil {
		return out.String(), fmt.Errorf("peer: postfix: postqueue %s: %w: %s", flag, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Send submits a message over SMTP (through Opts.Dial) from from to every
// address in to and returns the queue ID Postfix gave it ("250 2.0.0 Ok:
// queued as ID"). msg is the message as written (headers, blank line,
// body); bare "\n" line ends are sent as CRLF and leading dots doubled.
func (p *Postfix) Send(ctx context.Context, from string, to []string, msg []byte) (string, error) {
	if len(to) == 0 {
		return "", errors.New("peer: postfix: Send without recipients")
	}
	conn, err := p.Opts.Dial(ctx, "tcp", p.Addr.String())
	if err != nil {
		return "", fmt.Errorf("peer: postfix: %w", err)
	}
	defer conn.Close()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	c, err := smtp.NewClient(conn, p.Opts.Hostname)
	if err != nil {
		return "", fmt.Errorf("peer: postfix: greeting: %w", err)
	}
	defer c.Close()
	if err := c.Hello("atoll-test"); err != nil {
		return "", fmt.Errorf("peer: postfix: EHLO: %w", err)
	}
	if err := c.Mail(from); err != nil {
		return "", fmt.Errorf("peer: postfix: MAIL FROM:<%s>: %w", from, err)
	}
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			return "", fmt.Errorf("peer: postfix: RCPT TO:<%s>: %w", r, err)
		}
	}
	// DATA by hand: net/smtp's Data drops the final reply, which carries
	// the queue ID.
	id, err := c.Text.Cmd("DATA")
	if err != nil {
		return "", fmt.Errorf("peer: postfix: DATA: %w", err)
	}
	c.Text.StartResponse(id)
	_, _, err = c.Text.ReadResponse(354)
	c.Text.EndResponse(id)
	if err != nil {
		return "", fmt.Errorf("peer: postfix: DATA: %w", err)
	}
	dw := c.Text.DotWriter()
	if _, err := dw.Write(msg); err != nil {
		return "", fmt.Errorf("peer: postfix: message: %w", err)
	}
	if err := dw.Close(); err != nil {
		return "", fmt.Errorf("peer: postfix: message: %w", err)
	}
	_, text, err := c.Text.ReadResponse(250)
	if err != nil {
		return "", fmt.Errorf("peer: postfix: end of data: %w", err)
	}
	_, qid, ok := strings.Cut(text, "queued as ")
	qid = strings.TrimSpace(qid)
	if !ok || qid == "" {
		return "", fmt.Errorf("peer: postfix: end of data: no queue ID in %q", text)
	}
	_ = c.Quit()
	return qid, nil
}

// PostfixDelivery is one delivery attempt of one recipient, from a
// maillog line like "QUEUEID: to=<rcpt>, relay=…, delay=…, delays=…,
// dsn=2.0.0, status=sent (250 2.0.0 … Saved)".
type PostfixDelivery struct {
	QueueID string
	To      string
	Relay   string // "127.0.0.1[127.0.0.1]:24", or "none" when no connection was made
	DSN     string // "2.0.0", "4.4.1", …
	Status  string // sent, deferred, bounced, expired, …
	Reply   string // the text in parentheses: the server's reply or Postfix's reason
}

// maillog is what the maillog says about messages.
type maillog struct {
	deliveries []PostfixDelivery
	msgIDs     map[string][]string // Message-ID (no brackets) → queue IDs
	removed    map[string]bool     // queue ID → qmgr logged "removed" (done with it)
}

// parseMaillog reads lines "Mon DD HH:MM:SS host postfix/PROG[PID]: TEXT".
func parseMaillog(s string) maillog {
	m := maillog{msgIDs: map[string][]string{}, removed: map[string]bool{}}
	for line := range strings.Lines(s) {
		line = strings.TrimRight(line, "\r\n")
		i := strings.Index(line, " postfix/")
		if i < 0 {
			continue
		}
		_, msg, ok := strings.Cut(line[i:], "]: ")
		if !ok {
			continue
		}
		qid, rest, ok := strings.Cut(msg, ": ")
		if !ok || qid == "" || !onlyChars(qid, queueIDChars) {
			continue
		}
		switch {
		case rest == "removed":
			m.removed[qid] = true
		case strings.HasPrefix(rest, "message-id="):
			id := strings.Trim(strings.TrimPrefix(rest, "message-id="), "<>")
			m.msgIDs[id] = append(m.msgIDs[id], qid)
		case strings.HasPrefix(rest, "to=<"):
			if d, ok := parseDelivery(qid, rest); ok {
				m.deliveries = append(m.deliveries, d)
			}
		}
	}
	return m
}

const queueIDChars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// parseDelivery parses "to=<a>, [orig_to=<b>, ]relay=…, …, dsn=…,
// status=WORD[ (reply)]".
func parseDelivery(qid, s string) (PostfixDelivery, bool) {
	d := PostfixDelivery{QueueID: qid}
	end := strings.Index(s, ">, ")
	if end < 0 {
		return d, false
	}
	d.To = s[len("to=<"):end]
	st := strings.LastIndex(s, ", status=")
	if st < 0 {
		return d, false
	}
	status := s[st+len(", status="):]
	d.Status, d.Reply, _ = strings.Cut(status, " ")
	d.Reply = strings.TrimSuffix(strings.TrimPrefix(d.Reply, "("), ")")
	for f := range strings.SplitSeq(s[end+len(">, "):st], ", ") {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "relay":
			d.Relay = v
		case "dsn":
			d.DSN = v
		}
	}
	return d, true
}

// Deliveries returns every delivery attempt the maillog records, oldest
// first.
func (p *Postfix) Deliveries() []PostfixDelivery { return parseMaillog(p.Log()).deliveries }

// queueIDs resolves id: a queue ID, or a Message-ID (with or without
// angle brackets; anything holding '@') that the cleanup daemon logged.
func (m maillog) queueIDs(id string) []string {
	if strings.Contains(id, "@") {
		return m.msgIDs[strings.Trim(id, "<>")]
	}
	return []string{id}
}

// WaitDelivered waits until Postfix is done with the message id (a queue
// ID as Send returns, or a Message-ID) and every recipient's last
// delivery attempt has status=sent. It fails at once when Postfix gave up
// on a recipient (bounced, expired), and when ctx ends, with the last
// status of every recipient.
func (p *Postfix) WaitDelivered(ctx context.Context, id string) error {
	var last string
	for {
		m := parseMaillog(p.Log())
		qids := m.queueIDs(id)
		done, failed := len(qids) > 0, false
		var st []string
		for _, q := range qids {
			lastOf := map[string]PostfixDelivery{}
			var order []string
			for _, d := range m.deliveries {
				if d.QueueID != q {
					continue
				}
				if _, seen := lastOf[d.To]; !seen {
					order = append(order, d.To)
				}
				lastOf[d.To] = d
			}
			for _, to := range order {
				d := lastOf[to]
				st = append(st, fmt.Sprintf("%s: <%s> %s (%s)", q, to, d.Status, d.Reply))
				failed = failed || (m.removed[q] && d.Status != "sent")
			}
			done = done && m.removed[q] && len(order) > 0
		}
		last = strings.Join(st, "; ")
		if failed {
			return fmt.Errorf("peer: postfix: message %s not delivered: %s", id, last)
		}
		if done {
			return nil
		}
		if last == "" {
			last = "no delivery attempt logged"
			if len(qids) == 0 {
				last = "not in the maillog"
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("peer: postfix: message %s: %w (%s)", id, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitStatus waits for a delivery attempt with this status ("sent",
// "deferred", "bounced", …) for message id (queue ID or Message-ID; ""
// = any) and recipient rcpt ("" = any; case-insensitive) and returns the
// first such one in the maillog.
func (p *Postfix) WaitStatus(ctx context.Context, id, rcpt, status string) (PostfixDelivery, error) {
	for {
		m := parseMaillog(p.Log())
		var qids []string
		if id != "" {
			qids = m.queueIDs(id)
		}
		for _, d := range m.deliveries {
			if (id == "" || slices.Contains(qids, d.QueueID)) && (rcpt == "" || strings.EqualFold(d.To, rcpt)) && d.Status == status {
				return d, nil
			}
		}
		select {
		case <-ctx.Done():
			return PostfixDelivery{}, fmt.Errorf("peer: postfix: no status=%s for message %q recipient %q: %w", status, id, rcpt, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
