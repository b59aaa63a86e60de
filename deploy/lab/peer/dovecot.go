//go:build linux

// Package peer starts real mail-platform daemons — Dovecot today; slapd and
// Postfix follow — as private, throwaway instances for atoll's tests and
// its lab. Each instance lives in a directory the caller owns, reads no
// system configuration (/etc/dovecot is never touched), runs in the
// foreground as a child we own (its PID, its process group), and is gone,
// with every process it forked, when Stop or Kill returns.
//
// Everything here needs root: Dovecot drops privileges to its system users.
package peer

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DovecotPorts are the TCP ports of an instance, one per listener. In
// DovecotOptions, 0 picks a free port (only for loopback listen addresses)
// and -1 disables the listener; in Dovecot.Ports every entry is resolved
// (a port, or -1).
type DovecotPorts struct {
	IMAP, IMAPS, POP3, POP3S, LMTP int
	// LMTPS is LMTP over implicit TLS. No standard port exists; the listener
	// is there so health checks can exercise implicit TLS for LMTP too.
	LMTPS int
}

// DovecotOptions describe an instance.
type DovecotOptions struct {
	// Dir holds everything of the instance: dovecot.conf, state, log,
	// users, certificate, maildirs (and base_dir when its path is short
	// enough for unix sockets). Required; the caller owns it (t.TempDir()).
	// StartDovecot adds o+x to Dir and to ancestors it owns under
	// os.TempDir() that lack it: mail processes run as the `dovecot` user
	// and must traverse the path (t.TempDir()'s directories are 0700).
	// A Dir reused from a stopped instance keeps its mail and certificate.
	Dir string
	// Name appears in the greeting ("atoll-test <Name> ready"), is the
	// hostname in LMTP replies and the certificate's DNS name, so tests can
	// tell nodes apart. Letters, digits, '-' and '.'; default "dovecot".
	Name string
	// Listen are the addresses to listen on; default 127.0.0.1.
	Listen []netip.Addr
	// Ports: 0 = a free port (only when every Listen address is loopback),
	// -1 = listener disabled. Without TLS, IMAPS, POP3S and LMTPS are
	// always disabled.
	Ports DovecotPorts
	// Users maps user names to plain-text passwords (passwd-file, scheme
	// PLAIN). Names: letters, digits and ".-_@+"; passwords must not hold
	// ':' or line breaks.
	Users map[string]string
	// TLS generates a self-signed certificate (ECDSA P-256, SAN = Name and
	// the Listen addresses) and enables STARTTLS/STLS and the implicit-TLS
	// listeners.
	TLS bool
	// Command builds the command that starts a process; nil means
	// exec.Command. Tests in a network namespace pass a wrapper around
	// `ip netns exec NAME` (which execs, so the PID stays dovecot's).
	// StartDovecot sets Setpgid and Pdeathsig on the command it gets.
	Command func(name string, args ...string) *exec.Cmd
	// AuthPenalty keeps Dovecot's per-IP authentication penalty (after a
	// failed login, the next one from the same IP waits 2 s, then 4, 8,
	// up to 15 s). Off by default: every test client shares one address.
	AuthPenalty bool
	// Dial reaches the listeners for the readiness check; nil means a
	// net.Dialer. With a Command that enters a namespace, pass the
	// namespace's DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// HAProxy adds listeners that expect a PROXY protocol header (the
	// login proxy's connections when an island passes the client's
	// address that way). Zero ports: none.
	HAProxy DovecotHAProxy
	// LoginTrusted are networks whose IMAP ID x-originating-ip Dovecot
	// believes (login_trusted_networks): the proxy's addresses.
	LoginTrusted []netip.Prefix
	// MailDir is where the users' maildirs live (MailDir/<user>/Maildir);
	// "" means Dir/mail. Instances given the same MailDir share their
	// mailboxes, as the nodes of one island share their storage (the lab's
	// stand-in for an island's MySQL pair). Same path rules as Dir.
	MailDir string
}

// DovecotHAProxy are PROXY-protocol listeners of an instance.
type DovecotHAProxy struct {
	IMAP, POP3 int // ports; 0 = no such listener
	// Trusted are the networks allowed to send the header
	// (haproxy_trusted_networks), e.g. the LB hosts.
	Trusted []netip.Prefix
}

// Dovecot is a running instance.
type Dovecot struct {
	Opts    DovecotOptions // as started, defaults filled in
	Ports   DovecotPorts   // resolved ports, -1 = disabled
	CertPEM []byte         // the self-signed certificate (TLS only)
	PID     int            // the master process (leader of its process group)
	Config  string         // path of dovecot.conf

	proc     *Process
	logPath  string
	baseDir  string
	ownsBase bool // baseDir is a private temp dir to remove on Stop
}

// Greeting is the text every greeting of the instance carries.
func (d *Dovecot) Greeting() string { return greeting(d.Opts.Name) }

func greeting(name string) string { return "atoll-test " + name + " ready" }

// Addr is "listen:port" (brackets for IPv6).
func (d *Dovecot) Addr(listen netip.Addr, port int) string {
	return netip.AddrPortFrom(listen, uint16(port)).String()
}

// CertPool holds the instance's certificate, for a client's RootCAs.
func (d *Dovecot) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(d.CertPEM)
	return p
}

// Log returns the instance's log (Dovecot's log_path, and the master's
// stderr, which goes to the same file).
func (d *Dovecot) Log() string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

// Stop sends SIGTERM to the master, waits for it (SIGKILL after 5 s),
// kills whatever of its process group is left, and reaps it. Idempotent.
// It reports a master that had exited on its own with an error.
func (d *Dovecot) Stop() error {
	err := d.proc.Stop(5*time.Second, false)
	d.cleanup()
	if err != nil {
		return fmt.Errorf("dovecot %s (pid %d): %w", d.Opts.Name, d.PID, err)
	}
	return nil
}

// Kill is a crash: SIGKILL to the master, then to the rest of its process
// group (login processes keep the listening sockets open until they notice
// the master is gone, which a "node crashed" test must not wait for).
// The process is reaped; Stop afterwards is a no-op.
func (d *Dovecot) Kill() error {
	err := d.proc.Stop(0, true)
	d.cleanup()
	if err != nil {
		return fmt.Errorf("dovecot %s (pid %d): %w", d.Opts.Name, d.PID, err)
	}
	return nil
}

// Running reports whether the master process has not exited.
func (d *Dovecot) Running() bool { return d.proc.Running() }

func (d *Dovecot) cleanup() {
	if d.ownsBase {
		os.RemoveAll(d.baseDir)
	}
}

// dovecotUsers are the users Dovecot runs its processes as. As root:
// Debian's system users (logins as dovenull, internal processes and mail
// as dovecot). Otherwise everything runs as the current user (rootless).
type dovecotUsers struct {
	rootless                bool
	loginUser, internalUser string
	internalGroup           string // rootless only
	mailUID, mailGID        int    // owner of the maildirs
}

func lookupDovecotUsers() (dovecotUsers, error) {
	if os.Geteuid() != 0 {
		me, err := user.Current()
		if err != nil {
			return dovecotUsers{}, err
		}
		g, err := user.LookupGroupId(me.Gid)
		if err != nil {
			return dovecotUsers{}, err
		}
		u := dovecotUsers{rootless: true, loginUser: me.Username, internalUser: me.Username, internalGroup: g.Name}
		u.mailUID, _ = strconv.Atoi(me.Uid)
		u.mailGID, _ = strconv.Atoi(me.Gid)
		return u, nil
	}
	u := dovecotUsers{loginUser: "dovenull", internalUser: "dovecot"}
	if _, err := user.Lookup(u.loginUser); err != nil {
		return u, fmt.Errorf("system user %s: %w (is dovecot-core installed? deploy/install-deps.sh)", u.loginUser, err)
	}
	mu, err := user.Lookup(u.internalUser)
	if err != nil {
		return u, fmt.Errorf("system user %s: %w (is dovecot-core installed? deploy/install-deps.sh)", u.internalUser, err)
	}
	u.mailUID, _ = strconv.Atoi(mu.Uid)
	u.mailGID, _ = strconv.Atoi(mu.Gid)
	return u, nil
}

// maxBaseDirLen keeps base_dir's unix sockets under sun_path's 108 bytes:
// the longest is base_dir + "/token-login/imap-urlauth" (25 bytes).
const maxBaseDirLen = 80

// StartDovecot writes a private configuration under o.Dir, starts
// `dovecot -F -c DIR/dovecot.conf` and waits, bounded by ctx, until every
// enabled listener accepts a TCP connection and the plaintext IMAP and POP3
// listeners send the instance's greeting (login processes hold the
// greeting back until the auth process answers, so this also proves auth
// is up). On error nothing is left running.
func StartDovecot(ctx context.Context, o DovecotOptions) (*Dovecot, error) {
	if err := fillDovecotDefaults(&o); err != nil {
		return nil, err
	}
	bin, err := Binary("dovecot")
	if err != nil {
		return nil, err
	}
	users, err := lookupDovecotUsers()
	if err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	d := &Dovecot{Opts: o, Config: filepath.Join(o.Dir, "dovecot.conf"), logPath: filepath.Join(o.Dir, "dovecot.log")}
	if err := d.prepareDir(users); err != nil {
		d.cleanup()
		return nil, fmt.Errorf("peer: dovecot %s: %w", o.Name, err)
	}
	const attempts = 3
	for attempt := 1; ; attempt++ {
		auto, err := d.resolvePorts()
		if err != nil {
			d.cleanup()
			return nil, fmt.Errorf("peer: dovecot %s: %w", o.Name, err)
		}
		err = d.start(ctx, bin, users)
		if err == nil {
			return d, nil
		}
		// A port picked free may have been taken before dovecot bound it.
		if auto && attempt < attempts && strings.Contains(d.Log(), "Address already in use") && ctx.Err() == nil {
			continue
		}
		d.cleanup()
		return nil, fmt.Errorf("peer: dovecot %s: %w\n--- log %s ---\n%s", o.Name, err, d.logPath, tail(d.Log(), 30))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var (
	// Characters Dovecot's config parser or its %-variables would
	// interpret in a path.
	badPathChars = " \t\r\n\"'#%<>\\{}$;,="
	userChars    = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@+"
	nameChars    = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-"
)

func onlyChars(s, set string) bool {
	for _, r := range s {
		if !strings.ContainsRune(set, r) {
			return false
		}
	}
	return true
}

func fillDovecotDefaults(o *DovecotOptions) error {
	if o.Dir == "" {
		return errors.New("peer: DovecotOptions.Dir is required")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	if strings.ContainsAny(dir, badPathChars) {
		return fmt.Errorf("peer: Dir %q holds a character Dovecot's config would interpret (one of %q)", dir, badPathChars)
	}
	o.Dir = dir
	if o.MailDir != "" {
		md, err := filepath.Abs(o.MailDir)
		if err != nil {
			return fmt.Errorf("peer: %w", err)
		}
		if strings.ContainsAny(md, badPathChars) {
			return fmt.Errorf("peer: MailDir %q holds a character Dovecot's config would interpret (one of %q)", md, badPathChars)
		}
		o.MailDir = md
	}
	if o.Name == "" {
		o.Name = "dovecot"
	}
	if len(o.Name) > 63 || !onlyChars(o.Name, nameChars) || strings.HasPrefix(o.Name, "-") || strings.HasPrefix(o.Name, ".") {
		return fmt.Errorf("peer: Name %q: use letters, digits, '-' and '.'", o.Name)
	}
	if len(o.Listen) == 0 {
		o.Listen = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	}
	o.Listen = slices.Clone(o.Listen)
	for i, a := range o.Listen {
		if !a.IsValid() || a.Zone() != "" || a.IsUnspecified() {
			return fmt.Errorf("peer: listen address %v: need a concrete address without zone", a)
		}
		o.Listen[i] = a.Unmap()
	}
	for u, p := range o.Users {
		if u == "" || !onlyChars(u, userChars) {
			return fmt.Errorf("peer: user name %q: use letters, digits and %q", u, ".-_@+")
		}
		if strings.ContainsAny(p, ":\r\n") {
			return fmt.Errorf("peer: password of %s holds ':' or a line break (passwd-file cannot store it)", u)
		}
	}
	if o.Command == nil {
		o.Command = exec.Command
	}
	if o.Dial == nil {
		var nd net.Dialer
		o.Dial = nd.DialContext
	}
	return nil
}

// prepareDir creates the directory layout, users file and certificate.
func (d *Dovecot) prepareDir(u dovecotUsers) error {
	o := d.Opts
	if err := os.MkdirAll(o.Dir, 0o711); err != nil {
		return err
	}
	if err := makeTraversable(o.Dir, u.mailUID, u.mailGID); err != nil {
		return err
	}
	for _, sub := range []string{"state", "tls"} {
		if err := os.MkdirAll(filepath.Join(o.Dir, sub), 0o700); err != nil {
			return err
		}
	}
	// Maildirs: Dir/mail/<user>/Maildir (or MailDir/<user>/Maildir),
	// owned by the mail user.
	mail := d.mailDir()
	if err := os.MkdirAll(mail, 0o750); err != nil {
		return err
	}
	if o.MailDir != "" {
		if err := makeTraversable(mail, u.mailUID, u.mailGID); err != nil {
			return err
		}
	}
	if err := u.chown(mail); err != nil {
		return err
	}
	for name := range o.Users {
		home := filepath.Join(mail, name)
		if err := os.MkdirAll(home, 0o700); err != nil {
			return err
		}
		if err := u.chown(home); err != nil {
			return err
		}
	}
	// passwd-file: read by the auth process.
	var b strings.Builder
	names := make([]string, 0, len(o.Users))
	for n := range o.Users {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "%s:{PLAIN}%s::::::\n", n, o.Users[n])
	}
	usersPath := filepath.Join(o.Dir, "users")
	if err := os.WriteFile(usersPath, []byte(b.String()), 0o640); err != nil {
		return err
	}
	if err := u.chown(usersPath); err != nil {
		return err
	}
	if o.TLS {
		c, _, _, err := loadOrMakeCert(filepath.Join(o.Dir, "tls"), o.Name, o.Listen)
		if err != nil {
			return err
		}
		d.CertPEM = c
	}
	// base_dir holds unix sockets: keep its path short.
	d.baseDir = filepath.Join(o.Dir, "run")
	if len(d.baseDir) > maxBaseDirLen {
		bd, err := os.MkdirTemp("", "atl-dc-")
		if err != nil {
			return err
		}
		d.baseDir, d.ownsBase = bd, true
	}
	// A master.pid left by a killed instance makes dovecot refuse to start
	// if its PID has since been reused by any process.
	if err := os.Remove(filepath.Join(d.baseDir, "master.pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// mailDir is the directory holding the users' homes.
func (d *Dovecot) mailDir() string {
	if d.Opts.MailDir != "" {
		return d.Opts.MailDir
	}
	return filepath.Join(d.Opts.Dir, "mail")
}

// makeTraversable lets uid/gid reach dir: it adds o+x to dir and to every
// ancestor that uid/gid cannot search, provided we own it and it lies
// under os.TempDir(); otherwise it says which directory is in the way.
func makeTraversable(dir string, uid, gid int) error {
	tmp, _ := filepath.Abs(os.TempDir())
	for p := dir; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !searchable(st, uid, gid) {
			owned := ownedByMe(st)
			under := p == dir || strings.HasPrefix(p, tmp+string(filepath.Separator))
			if !owned || !under {
				return fmt.Errorf("the mail user (uid %d) cannot traverse %s (mode %v): choose a Dir it can reach", uid, p, st.Mode().Perm())
			}
			keep := st.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
			if err := os.Chmod(p, keep|0o001); err != nil {
				return err
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// start writes the configuration for the resolved ports, starts the
// master and waits for readiness; on error the process is stopped.
func (d *Dovecot) start(ctx context.Context, bin string, u dovecotUsers) error {
	if err := os.WriteFile(d.Config, []byte(d.config(u)), 0o644); err != nil {
		return err
	}
	logf, err := os.OpenFile(d.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	// -F: foreground, no fork, no setsid; the PID we get is the master.
	cmd := d.Opts.Command(bin, "-F", "-c", d.Config)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := StartProcess(cmd)
	if err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	d.proc, d.PID = p, p.pid
	if err := d.waitReady(ctx); err != nil {
		if serr := p.Stop(5*time.Second, false); serr != nil && p.signaled {
			err = errors.Join(err, serr)
		}
		return err
	}
	return nil
}

type listener struct {
	name       string // config name: imap, imaps, pop3, pop3s, lmtp, lmtps
	port       *int
	tls        bool
	plainGreet string // plaintext greeting prefix to wait for ("" = TCP only)
}

func (d *Dovecot) listeners() []listener {
	p := &d.Ports
	return []listener{
		{"imap", &p.IMAP, false, "* OK"},
		{"imaps", &p.IMAPS, true, ""},
		{"pop3", &p.POP3, false, "+OK"},
		{"pop3s", &p.POP3S, true, ""},
		{"lmtp", &p.LMTP, false, ""},
		{"lmtps", &p.LMTPS, true, ""},
	}
}

// resolvePorts fills d.Ports from the options, picking free ports for 0.
// It reports whether any port was picked.
func (d *Dovecot) resolvePorts() (auto bool, err error) {
	d.Ports = d.Opts.Ports
	loopback := true
	for _, a := range d.Opts.Listen {
		loopback = loopback && a.IsLoopback()
	}
	var taken []int
	enabled := 0
	for _, l := range d.listeners() {
		switch {
		case l.tls && !d.Opts.TLS:
			*l.port = -1
		case *l.port < -1 || *l.port > 65535:
			return false, fmt.Errorf("port %d for %s out of range", *l.port, l.name)
		case *l.port == 0:
			if !loopback {
				return false, fmt.Errorf("port 0 for %s: free ports can only be picked for loopback listen addresses", l.name)
			}
			port, err := freePort(d.Opts.Listen, taken)
			if err != nil {
				return false, fmt.Errorf("pick a port for %s: %w", l.name, err)
			}
			*l.port, auto = port, true
		}
		if *l.port > 0 {
			taken = append(taken, *l.port)
			enabled++
		}
	}
	if enabled == 0 {
		return false, errors.New("every listener is disabled")
	}
	return auto, nil
}

// freePort finds a TCP port free on every address, not in taken.
func freePort(addrs []netip.Addr, taken []int) (int, error) {
	for try := 0; try < 50; try++ {
		l, err := net.Listen("tcp", netip.AddrPortFrom(addrs[0], 0).String())
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		ok := !slices.Contains(taken, port)
		var more []net.Listener
		for _, a := range addrs[1:] {
			if !ok {
				break
			}
			m, err := net.Listen("tcp", netip.AddrPortFrom(a, uint16(port)).String())
			if err != nil {
				ok = false
				break
			}
			more = append(more, m)
		}
		l.Close()
		for _, m := range more {
			m.Close()
		}
		if ok {
			return port, nil
		}
	}
	return 0, errors.New("no port free on every listen address")
}

// config renders dovecot.conf. Traps it avoids:
//   - first_valid_uid defaults to 500: the mail user (Debian's `dovecot`,
//     a system uid) would be refused ("Mail access for users with UID 103
//     not permitted"), so it is lowered to that uid.
//   - imap-login and pop3-login have compiled-in listeners on 143/993 and
//     110/995: every listener is declared here, port 0 where disabled, so
//     no instance ever grabs a well-known port.
//   - an implicit-TLS listener with ssl = no is a fatal config error, so
//     they are disabled without TLS.
//   - unix sockets live in base_dir and the longest path must fit in 108
//     bytes (maxBaseDirLen).
//   - after a failed login, the auth process delays the next one from the
//     same IP (anvil's auth penalty, 2 s doubling to 15 s): it is disabled
//     (anvil-auth-penalty listener with mode 0) unless AuthPenalty.
//   - auth_failure_delay (2 s by default) would slow tests of bad logins;
//     imap-login still delays a second attempt on the same connection by
//     about 5 s × attempts (hard-coded): test bad logins on a fresh one.
//   - a client that sends a command before the greeting, while the auth
//     process is still starting, gets "* OK Waiting for authentication
//     process to respond.." (or "+OK …") first, then the greeting: read
//     the greeting before writing (waitReady reads past such lines).
//   - rootless: listeners owned by group `dovecot` fail to chown
//     (default_internal_group), and anvil and the login processes chroot
//     (chroot =), which needs root.
func (d *Dovecot) config(u dovecotUsers) string {
	o := d.Opts
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# Written by atoll deploy/lab/peer for instance %s; regenerated on every start.", o.Name)
	w("base_dir = %s", d.baseDir)
	w("state_dir = %s", filepath.Join(o.Dir, "state"))
	w("instance_name = atoll-%s", o.Name)
	w("log_path = %s", d.logPath)
	w("log_timestamp = \"%%Y-%%m-%%d %%H:%%M:%%S \"")
	var protos []string
	if d.Ports.IMAP > 0 || d.Ports.IMAPS > 0 {
		protos = append(protos, "imap")
	}
	if d.Ports.POP3 > 0 || d.Ports.POP3S > 0 {
		protos = append(protos, "pop3")
	}
	if d.Ports.LMTP > 0 || d.Ports.LMTPS > 0 {
		protos = append(protos, "lmtp")
	}
	w("protocols = %s", strings.Join(protos, " "))
	addrs := make([]string, len(o.Listen))
	for i, a := range o.Listen {
		addrs[i] = a.String()
	}
	w("listen = %s", strings.Join(addrs, ", "))
	w("hostname = %s", o.Name)
	w("login_greeting = %s", greeting(o.Name))
	w("verbose_proctitle = yes")
	w("default_login_user = %s", u.loginUser)
	w("default_internal_user = %s", u.internalUser)
	if u.rootless {
		w("default_internal_group = %s", u.internalGroup)
	}
	w("first_valid_uid = %d", u.mailUID)
	w("first_valid_gid = %d", u.mailGID)
	w("login_trusted_networks =%s", prefixList(o.LoginTrusted))
	w("haproxy_trusted_networks =%s", prefixList(o.HAProxy.Trusted))
	w("auth_mechanisms = plain login")
	w("disable_plaintext_auth = no")
	w("auth_verbose = yes")
	w("auth_failure_delay = 0")
	w("mail_location = maildir:~/Maildir")
	// Tests and benchmarks open many sessions of one user from one address
	// (the proxy's): the default of 10 per user and IP would refuse them.
	w("protocol imap {")
	w("  mail_max_userip_connections = 10000")
	w("}")
	w("protocol pop3 {")
	w("  mail_max_userip_connections = 10000")
	w("}")
	if o.TLS {
		w("ssl = yes")
		w("ssl_cert = <%s", filepath.Join(o.Dir, "tls", "cert.pem"))
		w("ssl_key = <%s", filepath.Join(o.Dir, "tls", "key.pem"))
	} else {
		w("ssl = no")
	}
	w("passdb {\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%%u %s\n}", filepath.Join(o.Dir, "users"))
	w("userdb {\n  driver = static\n  args = uid=%d gid=%d home=%s/%%u\n}", u.mailUID, u.mailGID, d.mailDir())
	w("service anvil {")
	if !o.AuthPenalty {
		// No socket, no penalty: auth treats a missing one as "disabled".
		w("  unix_listener anvil-auth-penalty {\n    mode = 0\n  }")
	}
	if u.rootless {
		// chroot needs root; anvil and the login processes chroot by default.
		w("  chroot =")
	}
	w("}")
	if u.rootless {
		w("service imap-urlauth-login {\n  chroot =\n}")
	}
	ls := d.listeners()
	svc := map[string]string{"imap": "imap-login", "imaps": "imap-login", "pop3": "pop3-login", "pop3s": "pop3-login", "lmtp": "lmtp", "lmtps": "lmtp"}
	for _, s := range []string{"imap-login", "pop3-login", "lmtp"} {
		w("service %s {", s)
		if u.rootless && s != "lmtp" {
			w("  chroot =")
		}
		if s != "lmtp" {
			// High-performance login mode: a few long-lived login
			// processes instead of one forked per connection. Health
			// checks and benchmarks open many connections; forking per
			// connection delays greetings by hundreds of ms on a loaded
			// 2-core machine.
			w("  service_count = 0")
			w("  process_min_avail = 2")
			w("  vsz_limit = 1G")
		}
		for _, l := range ls {
			if svc[l.name] != s {
				continue
			}
			port := max(*l.port, 0)
			if l.tls && port > 0 {
				w("  inet_listener %s {\n    port = %d\n    ssl = yes\n  }", l.name, port)
			} else {
				w("  inet_listener %s {\n    port = %d\n  }", l.name, port)
			}
		}
		if port := map[string]int{"imap-login": o.HAProxy.IMAP, "pop3-login": o.HAProxy.POP3}[s]; port > 0 {
			w("  inet_listener %s-haproxy {\n    port = %d\n    haproxy = yes\n  }", strings.TrimSuffix(s, "-login"), port)
		}
		w("}")
	}
	return b.String()
}

// waitReady polls every enabled listener until it accepts a connection and
// the plaintext IMAP/POP3 ones greet with the instance's greeting.
func (d *Dovecot) waitReady(ctx context.Context) error {
	for _, a := range d.Opts.Listen {
		for _, l := range d.listeners() {
			if *l.port <= 0 {
				continue
			}
			addr := d.Addr(a, *l.port)
			probe := func(ctx context.Context) error { return d.probeTCP(ctx, addr) }
			if l.plainGreet != "" {
				probe = func(ctx context.Context) error { return d.probeGreeting(ctx, addr, l.plainGreet) }
			}
			if err := d.poll(ctx, probe); err != nil {
				return fmt.Errorf("%s listener %s not ready: %w", l.name, addr, err)
			}
		}
	}
	return nil
}

// poll runs probe with exponential backoff (5 ms .. 200 ms) until it
// succeeds, ctx ends or the master exits.
func (d *Dovecot) poll(ctx context.Context, probe func(context.Context) error) error {
	backoff := 5 * time.Millisecond
	for {
		if !d.proc.Running() {
			return errors.New("dovecot exited during startup")
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := probe(pctx)
		cancel()
		if err == nil {
			return nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), err)
		case <-d.proc.exited:
			t.Stop()
			return errors.New("dovecot exited during startup")
		case <-t.C:
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

func (d *Dovecot) probeTCP(ctx context.Context, addr string) error {
	c, err := d.Opts.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// probeGreeting reads lines until one starts with prefix and carries the
// instance's greeting.
func (d *Dovecot) probeGreeting(ctx context.Context, addr, prefix string) error {
	c, err := d.Opts.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	r := bufio.NewReader(io.LimitReader(c, 64<<10))
	want := d.Greeting()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("read greeting: %w", err)
		}
		if !strings.HasPrefix(line, prefix) {
			return fmt.Errorf("unexpected greeting %q", strings.TrimSpace(line))
		}
		if strings.Contains(line, want) {
			return nil
		}
	}
}

// chown gives a path to the mail user (as root; rootless, we own it).
func (u dovecotUsers) chown(path string) error {
	if u.rootless {
		return nil
	}
	return os.Chown(path, u.mailUID, u.mailGID)
}

// searchable reports whether uid/gid may search (traverse) the directory.
func searchable(st os.FileInfo, uid, gid int) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	perm := st.Mode().Perm()
	switch {
	case int(sys.Uid) == uid:
		return perm&0o100 != 0
	case int(sys.Gid) == gid:
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

// ownedByMe reports whether this process owns the file.
func ownedByMe(st os.FileInfo) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && int(sys.Uid) == os.Geteuid()
}

// prefixList renders networks for a Dovecot setting (" a b", or "").
func prefixList(ps []netip.Prefix) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(" " + p.Masked().String())
	}
	return b.String()
}
