//go:build linux

package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// The service account every instance has: it may read ou=people (and
// nothing may be read anonymously), so a client that finds users proves
// its bind works.
const (
	// SlapdServiceRDN is prepended to the suffix: cn=atoll,<suffix>.
	SlapdServiceRDN = "cn=atoll"
	// SlapdServicePassword is the service account's password.
	SlapdServicePassword = "atoll-secret"
	// SlapdIslandAttr is the island attribute of the private schema.
	SlapdIslandAttr = "mailIsland"
)

// slapdSchema defines the island attribute and the auxiliary class that
// carries it. The OID arc 1.3.6.1.4.1.99999 is a PLACEHOLDER (not a
// registered private enterprise number): fine for throwaway test
// directories, never for a production schema, which needs its own arc.
const slapdSchema = `# atoll test schema (deploy/lab/peer). OID arc 1.3.6.1.4.1.99999 is a placeholder.
attributetype ( 1.3.6.1.4.1.99999.1.1 NAME 'mailIsland'
	DESC 'atoll: the island (group of mail nodes) holding the mailbox'
	EQUALITY caseIgnoreMatch
	SUBSTR caseIgnoreSubstringsMatch
	SYNTAX 1.3.6.1.4.1.1466.115.121.1.15
	SINGLE-VALUE )

objectclass ( 1.3.6.1.4.1.99999.2.1 NAME 'atollMailUser'
	DESC 'atoll: a mail user placed on an island'
	SUP top AUXILIARY
	MAY mailIsland )
`

// SlapdOptions describe a private OpenLDAP instance.
type SlapdOptions struct {
	// Dir holds everything of the instance: slapd.conf, the schema, the
	// database (Dir/db), the certificate (Dir/tls) and the log. Required;
	// the caller owns it. A Dir reused from a stopped instance keeps its
	// data and certificate.
	Dir string
	// Listen are the ldap:// listeners; port 0 picks a free port (only for
	// loopback addresses). Default 127.0.0.1:0.
	Listen []netip.AddrPort
	// LDAPS are optional ldaps:// listeners, same rules. Every instance has
	// a self-signed certificate (ECDSA P-256, SAN = "localhost" and every
	// listen address) so StartTLS works on the ldap:// listeners too.
	LDAPS []netip.AddrPort
	// Suffix of the database; default "dc=example,dc=org". Its first RDN
	// must be dc=, o= or ou= (the entry is created on first start).
	Suffix string
	// RootDN (default "cn=admin,<suffix>") and its plain-text RootPW
	// (default "secret"): the manager, who bypasses every ACL.
	RootDN string
	RootPW string
	// Users are created (or updated) under ou=people,<suffix> at start.
	Users []LDAPUser
	// LogLevel is slapd's -d level: "" means "none" (startup errors only,
	// still in the foreground); "stats" logs every connection and
	// operation (with the filters clients sent) to Slapd.Log.
	LogLevel string
	// Command builds the command that starts slapd; nil means
	// exec.Command. Tests in a network namespace pass a wrapper around
	// `ip netns exec NAME` (which execs, so the PID stays slapd's).
	Command func(name string, args ...string) *exec.Cmd
	// Dial reaches the listeners (readiness, loading users); nil means a
	// net.Dialer. With a Command that enters a namespace, pass the
	// namespace's DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// LDAPUser is a mail user: uid=<UID>,ou=people,<suffix>, objectClasses
// inetOrgPerson and atollMailUser, cn = sn = UID. Empty Mail, Password or
// Island leave the attribute out (tests of incomplete entries).
type LDAPUser struct {
	UID, Mail, Password, Island string
}

// Slapd is a private slapd instance.
type Slapd struct {
	Opts      SlapdOptions // as started: defaults filled in, ports resolved
	URLs      []string     // ldap://host:port, one per Listen
	LDAPSURLs []string     // ldaps://host:port, one per LDAPS
	CertPEM   []byte       // the self-signed certificate (also its own CA)
	PID       int          // slapd's PID (leader of its process group); 0 before the first start
	Config    string       // path of slapd.conf

	mu      sync.Mutex // serialises Start, Stop, Kill
	proc    *Process
	own     atomic.Int64 // searches this helper made since the last start (probes, monitor reads)
	logPath string
	bin     string
}

// ServiceDN is the read-only service account, cn=atoll,<suffix>; its
// password is SlapdServicePassword.
func (s *Slapd) ServiceDN() string { return SlapdServiceRDN + "," + s.Opts.Suffix }

// PeopleDN is ou=people,<suffix>, where users live.
func (s *Slapd) PeopleDN() string { return "ou=people," + s.Opts.Suffix }

// UserDN is the DN of the user with this uid.
func (s *Slapd) UserDN(uid string) string { return "uid=" + ldap.EscapeDN(uid) + "," + s.PeopleDN() }

// CertPool holds the instance's certificate, for a client's RootCAs.
func (s *Slapd) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(s.CertPEM)
	return p
}

// TLSConfig trusts the instance's certificate, for the name "localhost"
// (which the certificate carries besides every listen address).
func (s *Slapd) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.CertPool(), ServerName: "localhost"}
}

// Log returns slapd's output (its -d log).
func (s *Slapd) Log() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

// Running reports whether slapd is running.
func (s *Slapd) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && s.proc.Running()
}

// StartSlapd writes a private configuration under o.Dir, starts
// `slapd -d LEVEL -f DIR/slapd.conf -h URLS` in the foreground (any -d
// keeps it from forking), waits, bounded by ctx, until every listener
// answers an anonymous root-DSE search, then creates the suffix,
// ou=people, the service account and o.Users (as the root DN, with
// go-ldap). On error nothing is left running.
func StartSlapd(ctx context.Context, o SlapdOptions) (*Slapd, error) {
	if err := fillSlapdDefaults(&o); err != nil {
		return nil, err
	}
	bin, err := Binary("slapd")
	if err != nil {
		return nil, err
	}
	s := &Slapd{Opts: o, Config: filepath.Join(o.Dir, "slapd.conf"), logPath: filepath.Join(o.Dir, "slapd.log"), bin: bin}
	if err := s.prepareDir(); err != nil {
		return nil, fmt.Errorf("peer: slapd: %w", err)
	}
	requested := slices.Concat(o.Listen, o.LDAPS)
	const attempts = 3
	for attempt := 1; ; attempt++ {
		auto, err := s.resolvePorts(requested)
		if err != nil {
			return nil, fmt.Errorf("peer: slapd: %w", err)
		}
		if err := os.WriteFile(s.Config, []byte(s.config()), 0o600); err != nil {
			return nil, fmt.Errorf("peer: slapd: %w", err)
		}
		err = s.Start(ctx)
		if err == nil {
			break
		}
		// A port picked free may have been taken before slapd bound it.
		if auto && attempt < attempts && strings.Contains(s.Log(), "Address already in use") && ctx.Err() == nil {
			continue
		}
		return nil, err
	}
	if err := s.bootstrap(ctx); err != nil {
		serr := s.Stop()
		return nil, errors.Join(fmt.Errorf("peer: slapd: load entries: %w", err), serr)
	}
	return s, nil
}

func fillSlapdDefaults(o *SlapdOptions) error {
	if o.Dir == "" {
		return errors.New("peer: SlapdOptions.Dir is required")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	// slapd.conf takes unquoted paths; keep them free of what its parser
	// would split on or interpret.
	if strings.ContainsAny(dir, " \t\r\n\"'#\\") {
		return fmt.Errorf("peer: Dir %q holds a character slapd.conf would interpret", dir)
	}
	o.Dir = dir
	if o.Suffix == "" {
		o.Suffix = "dc=example,dc=org"
	}
	dn, err := ldap.ParseDN(o.Suffix)
	if err != nil || len(dn.RDNs) == 0 {
		return fmt.Errorf("peer: Suffix %q is not a DN", o.Suffix)
	}
	switch strings.ToLower(dn.RDNs[0].Attributes[0].Type) {
	case "dc", "o", "ou":
	default:
		return fmt.Errorf("peer: Suffix %q: its first RDN must be dc=, o= or ou=", o.Suffix)
	}
	if o.RootDN == "" {
		o.RootDN = "cn=admin," + o.Suffix
	}
	if o.RootPW == "" {
		o.RootPW = "secret"
	}
	if strings.ContainsAny(o.Suffix+o.RootDN+o.RootPW, "\"\r\n") {
		return errors.New("peer: Suffix, RootDN and RootPW must not hold '\"' or line breaks")
	}
	if len(o.Listen) == 0 {
		o.Listen = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}
	}
	o.Listen, o.LDAPS = slices.Clone(o.Listen), slices.Clone(o.LDAPS)
	for _, l := range [][]netip.AddrPort{o.Listen, o.LDAPS} {
		for i, ap := range l {
			a := ap.Addr()
			if !a.IsValid() || a.Zone() != "" || a.IsUnspecified() {
				return fmt.Errorf("peer: listen address %v: need a concrete address without zone", ap)
			}
			if ap.Port() == 0 && !a.IsLoopback() {
				return fmt.Errorf("peer: listen address %v: free ports can only be picked for loopback addresses", ap)
			}
			l[i] = netip.AddrPortFrom(a.Unmap(), ap.Port())
		}
	}
	for _, u := range o.Users {
		if err := checkLDAPUser(u); err != nil {
			return err
		}
	}
	switch o.LogLevel {
	case "":
		o.LogLevel = "none"
	case "none", "stats", "any", "acl", "filter", "config", "trace", "conns":
	default:
		if _, err := strconv.Atoi(o.LogLevel); err != nil {
			return fmt.Errorf("peer: LogLevel %q: a slapd -d level (none, stats, acl, … or a number)", o.LogLevel)
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

func checkLDAPUser(u LDAPUser) error {
	if u.UID == "" {
		return errors.New("peer: LDAPUser with an empty UID")
	}
	for _, v := range []string{u.UID, u.Mail, u.Password, u.Island} {
		if strings.ContainsRune(v, 0) {
			return fmt.Errorf("peer: LDAPUser %q: NUL in a value", u.UID)
		}
	}
	return nil
}

// prepareDir creates the layout, the schema file and the certificate.
func (s *Slapd) prepareDir() error {
	o := s.Opts
	for _, d := range []string{o.Dir, filepath.Join(o.Dir, "db"), filepath.Join(o.Dir, "tls")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(o.Dir, "atoll.schema"), []byte(slapdSchema), 0o644); err != nil {
		return err
	}
	var addrs []netip.Addr
	for _, ap := range slices.Concat(o.Listen, o.LDAPS) {
		if !slices.Contains(addrs, ap.Addr()) {
			addrs = append(addrs, ap.Addr())
		}
	}
	c, _, _, err := loadOrMakeCert(filepath.Join(o.Dir, "tls"), "localhost", addrs)
	if err != nil {
		return err
	}
	s.CertPEM = c
	return nil
}

// resolvePorts fills Opts.Listen/LDAPS from requested (port 0 = a free
// port) and the URLs. It reports whether any port was picked.
func (s *Slapd) resolvePorts(requested []netip.AddrPort) (auto bool, err error) {
	var taken []int
	for _, ap := range requested {
		if ap.Port() != 0 {
			taken = append(taken, int(ap.Port()))
		}
	}
	resolved := make([]netip.AddrPort, len(requested))
	for i, ap := range requested {
		if ap.Port() == 0 {
			p, err := freePort([]netip.Addr{ap.Addr()}, taken)
			if err != nil {
				return false, fmt.Errorf("pick a port on %v: %w", ap.Addr(), err)
			}
			taken = append(taken, p)
			ap, auto = netip.AddrPortFrom(ap.Addr(), uint16(p)), true
		}
		resolved[i] = ap
	}
	n := len(s.Opts.Listen)
	s.Opts.Listen, s.Opts.LDAPS = resolved[:n:n], resolved[n:]
	s.URLs, s.LDAPSURLs = nil, nil
	for _, ap := range s.Opts.Listen {
		s.URLs = append(s.URLs, "ldap://"+ap.String())
	}
	for _, ap := range s.Opts.LDAPS {
		s.LDAPSURLs = append(s.LDAPSURLs, "ldaps://"+ap.String())
	}
	return auto, nil
}

// config renders slapd.conf. Notes:
//   - the root DN bypasses every ACL; the service account reads
//     everything but passwords; anonymous may only bind (auth on the
//     entry and userPassword, which a simple bind needs) and read the
//     root DSE (the global default, used by the readiness probe);
//   - the monitor database (built into slapd 2.5) is readable by the root
//     DN: Searches counts search operations from it;
//   - TLS is always configured (StartTLS on ldap://, and ldaps://).
func (s *Slapd) config() string {
	o := s.Opts
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# Written by atoll deploy/lab/peer; regenerated on every start.")
	for _, sc := range []string{"core", "cosine", "inetorgperson"} {
		w("include /etc/ldap/schema/%s.schema", sc)
	}
	w("include %s", filepath.Join(o.Dir, "atoll.schema"))
	w("pidfile %s", filepath.Join(o.Dir, "slapd.pid"))
	w("argsfile %s", filepath.Join(o.Dir, "slapd.args"))
	w("modulepath /usr/lib/ldap")
	w("moduleload back_mdb")
	w("TLSCertificateFile %s", filepath.Join(o.Dir, "tls", "cert.pem"))
	w("TLSCertificateKeyFile %s", filepath.Join(o.Dir, "tls", "key.pem"))
	w("")
	w("database mdb")
	w("maxsize 33554432") // 32 MiB: plenty for tests, sparse on disk
	w("suffix %q", o.Suffix)
	w("rootdn %q", o.RootDN)
	w("rootpw %q", o.RootPW)
	w("directory %s", filepath.Join(o.Dir, "db"))
	w("index objectClass,uid,mail eq")
	svc := SlapdServiceRDN + "," + o.Suffix
	w("access to attrs=userPassword\n\tby self write\n\tby anonymous auth\n\tby * none")
	w("access to *\n\tby dn.exact=%q read\n\tby anonymous auth\n\tby * none", svc)
	w("")
	w("database monitor")
	w("access to *\n\tby dn.exact=%q read\n\tby * none", o.RootDN)
	return b.String()
}

// Start starts slapd again after Stop or Kill: same Dir, same ports, same
// data. It waits like StartSlapd; on error nothing is left running.
func (s *Slapd) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil && s.proc.Running() {
		return fmt.Errorf("peer: slapd (pid %d) is already running", s.PID)
	}
	if s.proc != nil {
		_ = s.proc.Stop(0, true) // exited on its own: reap it
	}
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("peer: slapd: %w", err)
	}
	defer logf.Close()
	urls := strings.Join(slices.Concat(s.URLs, s.LDAPSURLs), " ")
	cmd := s.Opts.Command(s.bin, "-d", s.Opts.LogLevel, "-f", s.Config, "-h", urls)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := StartProcess(cmd)
	if err != nil {
		return fmt.Errorf("peer: start %s: %w", s.bin, err)
	}
	s.proc, s.PID = p, p.pid
	s.own.Store(0)
	if err := s.waitReady(ctx); err != nil {
		if serr := p.Stop(5*time.Second, false); serr != nil && p.signaled {
			err = errors.Join(err, serr)
		}
		return fmt.Errorf("peer: slapd: %w\n--- log %s ---\n%s", err, s.logPath, tail(s.Log(), 30))
	}
	return nil
}

// Stop sends SIGTERM (slapd closes its database cleanly), waits up to 5 s
// (then SIGKILL), kills whatever is left of its process group and reaps
// it. Idempotent. It reports a slapd that had exited on its own.
func (s *Slapd) Stop() error { return s.halt(false) }

// Kill is a crash: SIGKILL, no clean shutdown (back_mdb is crash-safe).
// Idempotent; Stop afterwards is a no-op.
func (s *Slapd) Kill() error { return s.halt(true) }

func (s *Slapd) halt(hard bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	if err := s.proc.Stop(5*time.Second, hard); err != nil {
		return fmt.Errorf("peer: slapd (pid %d): %w", s.PID, err)
	}
	return nil
}

// waitReady polls every listener until it answers an anonymous search of
// the root DSE.
func (s *Slapd) waitReady(ctx context.Context) error {
	for _, u := range slices.Concat(s.URLs, s.LDAPSURLs) {
		if err := s.poll(ctx, func(ctx context.Context) error { return s.probe(ctx, u) }); err != nil {
			return fmt.Errorf("%s not ready: %w", u, err)
		}
	}
	return nil
}

// poll runs probe with exponential backoff (5 ms .. 200 ms) until it
// succeeds, ctx ends or slapd exits.
func (s *Slapd) poll(ctx context.Context, probe func(context.Context) error) error {
	p := s.proc
	backoff := 5 * time.Millisecond
	for {
		if !p.Running() {
			return errors.New("slapd exited during startup")
		}
		// The probe ends when slapd exits: what answers may be whoever
		// else holds the port.
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		go func() {
			select {
			case <-p.exited:
				cancel()
			case <-pctx.Done():
			}
		}()
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
		case <-p.exited:
			t.Stop()
			return errors.New("slapd exited during startup")
		case <-t.C:
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

func (s *Slapd) probe(ctx context.Context, u string) error {
	c, err := s.Conn(ctx, u, "", "")
	if err != nil {
		return err
	}
	defer c.Close()
	s.own.Add(1)
	_, err = c.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"namingContexts"}, nil))
	return err
}

// Conn connects to one of the instance's URLs (through Opts.Dial; ldaps
// trusts the instance's certificate) and binds as bindDN unless it is
// empty (anonymous). The connection is for short use: it is closed when
// ctx ends, and every request times out with ctx's deadline (10 s without
// one). The caller closes it.
func (s *Slapd) Conn(ctx context.Context, rawURL, bindDN, password string) (*ldap.Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "ldap" && u.Scheme != "ldaps" {
		return nil, fmt.Errorf("URL %s: want ldap:// or ldaps://", rawURL)
	}
	raw, err := s.Opts.Dial(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	conn := raw
	if u.Scheme == "ldaps" {
		tc := tls.Client(raw, s.TLSConfig())
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		conn = tc
	}
	c := ldap.NewConn(conn, u.Scheme == "ldaps")
	c.Start()
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	c.SetTimeout(timeout)
	context.AfterFunc(ctx, func() { raw.Close() })
	if bindDN != "" {
		if err := c.Bind(bindDN, password); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// rootConn is Conn to the first URL as the root DN.
func (s *Slapd) rootConn(ctx context.Context) (*ldap.Conn, error) {
	return s.Conn(ctx, s.firstURL(), s.Opts.RootDN, s.Opts.RootPW)
}

func (s *Slapd) firstURL() string {
	if len(s.URLs) > 0 {
		return s.URLs[0]
	}
	return s.LDAPSURLs[0]
}

// bootstrap creates the suffix, ou=people, the service account (each
// unless present) and the users.
func (s *Slapd) bootstrap(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := s.rootConn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	dn, _ := ldap.ParseDN(s.Opts.Suffix)
	first := dn.RDNs[0].Attributes[0]
	base := ldap.NewAddRequest(s.Opts.Suffix, nil)
	switch strings.ToLower(first.Type) {
	case "dc":
		base.Attribute("objectClass", []string{"top", "dcObject", "organization"})
		base.Attribute("dc", []string{first.Value})
		base.Attribute("o", []string{first.Value})
	case "o":
		base.Attribute("objectClass", []string{"top", "organization"})
		base.Attribute("o", []string{first.Value})
	case "ou":
		base.Attribute("objectClass", []string{"top", "organizationalUnit"})
		base.Attribute("ou", []string{first.Value})
	}
	people := ldap.NewAddRequest(s.PeopleDN(), nil)
	people.Attribute("objectClass", []string{"top", "organizationalUnit"})
	people.Attribute("ou", []string{"people"})
	svc := ldap.NewAddRequest(s.ServiceDN(), nil)
	svc.Attribute("objectClass", []string{"top", "organizationalRole", "simpleSecurityObject"})
	svc.Attribute("cn", []string{strings.TrimPrefix(SlapdServiceRDN, "cn=")})
	svc.Attribute("userPassword", []string{SlapdServicePassword})
	svc.Attribute("description", []string{"atoll directory lookups: reads ou=people"})
	for _, r := range []*ldap.AddRequest{base, people, svc} {
		if err := c.Add(r); err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) {
			return fmt.Errorf("add %s: %w", r.DN, err)
		}
	}
	for _, u := range s.Opts.Users {
		if err := s.putUser(c, u); err != nil {
			return err
		}
	}
	return nil
}

// AddUser creates the user, or replaces the attributes of an existing
// one with the same UID (an empty Mail, Password or Island removes it).
func (s *Slapd) AddUser(ctx context.Context, u LDAPUser) error {
	if err := checkLDAPUser(u); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := s.rootConn(ctx)
	if err != nil {
		return fmt.Errorf("peer: slapd: %w", err)
	}
	defer c.Close()
	if err := s.putUser(c, u); err != nil {
		return fmt.Errorf("peer: slapd: %w", err)
	}
	return nil
}

// DeleteUser removes the user with this uid.
func (s *Slapd) DeleteUser(ctx context.Context, uid string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := s.rootConn(ctx)
	if err != nil {
		return fmt.Errorf("peer: slapd: %w", err)
	}
	defer c.Close()
	if err := c.Del(ldap.NewDelRequest(s.UserDN(uid), nil)); err != nil {
		return fmt.Errorf("peer: slapd: delete %s: %w", uid, err)
	}
	return nil
}

func (s *Slapd) putUser(c *ldap.Conn, u LDAPUser) error {
	dn := s.UserDN(u.UID)
	attrs := []struct {
		name string
		val  string
	}{{"mail", u.Mail}, {"userPassword", u.Password}, {SlapdIslandAttr, u.Island}}
	add := ldap.NewAddRequest(dn, nil)
	add.Attribute("objectClass", []string{"top", "person", "organizationalPerson", "inetOrgPerson", "atollMailUser"})
	add.Attribute("uid", []string{u.UID})
	add.Attribute("cn", []string{u.UID})
	add.Attribute("sn", []string{u.UID})
	for _, a := range attrs {
		if a.val != "" {
			add.Attribute(a.name, []string{a.val})
		}
	}
	err := c.Add(add)
	if err == nil {
		return nil
	}
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) {
		return fmt.Errorf("add %s: %w", dn, err)
	}
	mod := ldap.NewModifyRequest(dn, nil)
	for _, a := range attrs {
		if a.val != "" {
			mod.Replace(a.name, []string{a.val})
		} else {
			mod.Replace(a.name, nil) // replace with nothing: delete if present
		}
	}
	if err := c.Modify(mod); err != nil {
		return fmt.Errorf("update %s: %w", dn, err)
	}
	return nil
}

// Searches returns how many search operations clients started since
// slapd last started, read from its monitor database (cn=Search,
// cn=Operations,cn=Monitor: monitorOpInitiated, which counts a search as
// soon as it arrives, so every search a client has had an answer to is
// in) as the root DN. The searches of this helper itself (readiness
// probes, these monitor reads) are subtracted; searches over Conn count.
func (s *Slapd) Searches(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := s.rootConn(ctx)
	if err != nil {
		return 0, fmt.Errorf("peer: slapd: %w", err)
	}
	defer c.Close()
	own := s.own.Add(1)
	res, err := c.Search(ldap.NewSearchRequest("cn=Search,cn=Operations,cn=Monitor", ldap.ScopeBaseObject,
		ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"monitorOpInitiated"}, nil))
	if err != nil {
		return 0, fmt.Errorf("peer: slapd: read the monitor: %w", err)
	}
	if len(res.Entries) != 1 {
		return 0, fmt.Errorf("peer: slapd: monitor: %d entries", len(res.Entries))
	}
	n, err := strconv.ParseInt(res.Entries[0].GetAttributeValue("monitorOpInitiated"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("peer: slapd: monitor: %w", err)
	}
	return n - own, nil
}
