package daemon_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/api"
)

// The front door: login services on their own VIP, which the LB holds
// locally (on lo) so the passed flows reach the proxy.
var frontVIP = netip.MustParseAddr("203.0.113.20")

// Users: each lives on one island; each island's Dovecot knows only its
// own users.
var proxyUsers = []struct {
	uid, island, password string
}{
	{"alice", "a", "alice-pw"},
	{"bob", "b", "bob-pw"},
	{"carol", "a", `pass w"ord \x`},
	{"dave", "b", "dave-pw"},
}

type proxyEnv struct {
	*env
	slapd    *peer.Slapd
	certFile string
}

var proxyCfgTmpl = template.Must(template.New("cfg").Parse(`# written by the proxy e2e test
dataplane:
{{- if .ModeNone}}
  mode: none
{{- else}}
  interfaces: [eth0]
  pin_path: {{.Pin}}
  conntrack_size: 65536
  source_v4: {{.SrcV4}}
  source_v6: {{.SrcV6}}
{{- end}}
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
  hostname: front.example.org
  tls:
    cert_file: {{.Cert}}
    key_file: {{.Key}}
  auth_throttle: {threshold: 3, window: 1m, base_delay: 500ms, max_delay: 2s}
directory:
  ldap:
    urls: [{{.LDAP}}]
    bind_dn: "{{.BindDN}}"
    password_file: {{.PWFile}}
    base_dn: "{{.BaseDN}}"
    filter: "(|(uid=%u)(mail=%u))"
    attribute: mailIsland
    timeout: 1s
    cache: {positive_ttl: 1s, negative_ttl: 1s, stale_ttl: 1h}
islands:
  - name: a
    proxy: {client_address: imap_id}
    nodes:
{{- range .A}}
      - name: {{.Name}}
        addresses: [{{.V4}}, {{.V6}}]
{{- end}}
  - name: b
    proxy: {client_address: proxy_protocol}
    nodes:
{{- range .B}}
      - name: {{.Name}}
        addresses: [{{.V4}}, {{.V6}}]
        ports: {imap: 10143, pop3: 10110}
{{- end}}
services:
  - {name: imap, vips: [{{.Front}}], protocol: imap, forwarding: ipip, routing: login}
  - {name: imaps, vips: [{{.Front}}], protocol: imaps, forwarding: ipip, routing: login}
  - {name: pop3, vips: [{{.Front}}], protocol: pop3, forwarding: ipip, routing: login}
  - {name: pop3s, vips: [{{.Front}}], protocol: pop3s, forwarding: ipip, routing: login}
{{- if .Handoff}}
affinity:
  static:
    - {prefix: 192.0.2.10/32, island: a}
  learn: {enabled: {{.Learn}}, logins: 2, ttl: 10m, bar: 10m, verify_one_in: 8}
{{- end}}
`))

// selfSigned writes a certificate for names to dir and returns its paths.
func selfSigned(t *testing.T, dir string, names ...string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	must(t, err)
	kb, err := x509.MarshalECPrivateKey(k)
	must(t, err)
	cert, key = filepath.Join(dir, "proxy.crt"), filepath.Join(dir, "proxy.key")
	must(t, os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	must(t, os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	return cert, key
}

// newProxyEnv: two islands of two Dovecot nodes, slapd on the servers
// host, `atoll run` with the login proxy on the front-door VIP (with the
// XDP data plane, or with `dataplane: {mode: none}`: a Perdition drop-in).
func newProxyEnv(t *testing.T, modeNone ...bool) *proxyEnv {
	return newProxyEnvOpts(t, proxyEnvOpts{modeNone: len(modeNone) > 0 && modeNone[0]})
}

type proxyEnvOpts struct {
	modeNone bool
	// handoff: the nodes hold the front-door VIP too (affinity flows reach
	// them directly), the client host has three addresses, and the config
	// has static affinity for 192.0.2.10.
	handoff bool
	// learn turns learned affinity on.
	learn bool
}

// Extra client addresses of the handoff tests.
var (
	clientNoAffinity = netip.MustParseAddr("192.0.2.11")
	clientLearner    = netip.MustParseAddr("192.0.2.12")
)

func newProxyEnvOpts(t *testing.T, opts proxyEnvOpts) *proxyEnv {
	t.Helper()
	requireRoot(t)
	l, err := lab.New(lab.Config{Prefix: "atl-px", Islands: 2, Nodes: 2, NoBalancer: true, Servers: true})
	must(t, err)
	t.Cleanup(func() { l.Close() })
	dir := t.TempDir()
	e := &proxyEnv{env: &env{t: t, lab: l, dir: dir, cfgPath: filepath.Join(dir, "atoll.yaml"), socket: filepath.Join(dir, "atoll.sock"),
		pin: "/sys/fs/bpf/atoll-px-" + filepath.Base(filepath.Dir(dir)), dovecot: map[string]*peer.Dovecot{}}}
	t.Cleanup(func() { exec.Command(atollBin, "reset", "-yes", "-pin", e.pin).Run() })

	// The LB holds the front-door VIP, so flows the data plane passes
	// reach the proxy.
	must(t, l.LB.AddAddr("lo", netip.PrefixFrom(frontVIP, 32)))
	if opts.handoff {
		for _, n := range l.Nodes {
			must(t, n.NS.AddAddr("lo", netip.PrefixFrom(frontVIP, 32)))
		}
		for _, a := range []netip.Addr{clientNoAffinity, clientLearner} {
			must(t, l.Client.AddAddr("eth0", netip.PrefixFrom(a, 24)))
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var users []peer.LDAPUser
	for _, u := range proxyUsers {
		users = append(users, peer.LDAPUser{UID: u.uid, Mail: u.uid + "@example.org", Password: u.password, Island: u.island})
	}
	e.slapd, err = peer.StartSlapd(ctx, peer.SlapdOptions{
		Dir: filepath.Join(dir, "slapd"), Listen: []netip.AddrPort{netip.AddrPortFrom(lab.ServerV4.Addr(), 389)}, Users: users,
		Command: func(name string, args ...string) *exec.Cmd {
			return l.Servers.Command(context.Background(), name, args...)
		},
		Dial: l.Servers.DialContext,
	})
	must(t, err)
	t.Cleanup(func() { e.slapd.Stop() })

	lbNets := []netip.Prefix{netip.PrefixFrom(lab.LBV4.Addr(), 32), netip.PrefixFrom(lab.LBV6.Addr(), 128)}
	for _, n := range l.Nodes {
		mine := map[string]string{}
		for _, u := range proxyUsers {
			if u.island == n.Island {
				mine[u.uid] = u.password
			}
		}
		listen := []netip.Addr{n.V4, n.V6}
		if opts.handoff {
			listen = append(listen, frontVIP)
		}
		o := peer.DovecotOptions{
			Dir: filepath.Join(dir, "dovecot-"+n.Name), Name: n.Name, Listen: listen,
			Ports: peer.DovecotPorts{IMAP: 143, POP3: 110, LMTP: 24, IMAPS: -1, POP3S: -1, LMTPS: -1},
			Users: mine, TLS: true,
			Command: func(name string, args ...string) *exec.Cmd { return n.NS.Command(context.Background(), name, args...) },
			Dial:    n.NS.DialContext,
			// Island a learns the client's address by IMAP ID, island b by
			// PROXY v2 on separate listeners.
			LoginTrusted: lbNets,
		}
		if n.Island == "b" {
			o.HAProxy = peer.DovecotHAProxy{IMAP: 10143, POP3: 10110, Trusted: lbNets}
		}
		d, err := peer.StartDovecot(ctx, o)
		must(t, err)
		t.Cleanup(func() { d.Stop() })
		e.dovecot[n.Name] = d
	}

	pw := filepath.Join(dir, "ldap.secret")
	must(t, os.WriteFile(pw, []byte(peer.SlapdServicePassword+"\n"), 0o600))
	e.certFile, _ = selfSigned(t, dir, "front.example.org")
	var a, b []*lab.Node
	for _, n := range l.Nodes {
		if n.Island == "a" {
			a = append(a, n)
		} else {
			b = append(b, n)
		}
	}
	f, err := os.Create(e.cfgPath)
	must(t, err)
	must(t, proxyCfgTmpl.Execute(f, map[string]any{
		"Pin": e.pin, "Socket": e.socket, "SrcV4": lab.LBV4.Addr(), "SrcV6": lab.LBV6.Addr(),
		"Cert": e.certFile, "Key": filepath.Join(dir, "proxy.key"),
		"LDAP": e.slapd.URLs[0], "BindDN": e.slapd.ServiceDN(), "PWFile": pw, "BaseDN": e.slapd.PeopleDN(),
		"A": a, "B": b, "Front": frontVIP, "ModeNone": opts.modeNone, "Handoff": opts.handoff, "Learn": opts.learn,
	}))
	f.Close()
	e.startDaemon()
	e.client = api.NewClient(e.socket)
	e.waitProxyNodesUp()
	return e
}

// waitProxyNodesUp waits until every login service's checks pass.
func (e *proxyEnv) waitProxyNodesUp() {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		mfs := e.scrape(e.t)
		up, total := 0.0, 0
		if mf, ok := mfs["atoll_health_checks_total"]; ok {
			for _, m := range mf.GetMetric() {
				total++
				for _, l := range m.GetLabel() {
					if l.GetName() == "result" && l.GetValue() == "ok" {
						up++
					}
				}
			}
		}
		// 4 login services × 4 nodes × 2 addresses.
		if total >= 32 && up >= 32 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("proxy checks never all passed (%v of %d)", up, total)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// deliver drops a message for user straight into its island's nodes by
// LMTP (both nodes share nothing, so the test delivers to both).
func (e *proxyEnv) deliver(user, island, body string) {
	e.t.Helper()
	for _, n := range e.lab.Nodes {
		if n.Island != island {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := n.NS.DialContext(ctx, "tcp", netip.AddrPortFrom(n.V4, 24).String())
		cancel()
		must(e.t, err)
		script := []string{"LHLO test", "MAIL FROM:<t@example.org>", fmt.Sprintf("RCPT TO:<%s>", user), "DATA",
			"Subject: for " + user + "\r\n\r\n" + body + "\r\n."}
		buf := make([]byte, 4096)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Read(buf)
		for _, line := range script {
			fmt.Fprintf(c, "%s\r\n", line)
			c.Read(buf)
		}
		fmt.Fprintf(c, "QUIT\r\n")
		c.Close()
	}
}

// clientRun runs a command on the client host.
func (e *proxyEnv) clientRun(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := e.lab.Client.Exec(ctx, name, args...)
	return string(out), err
}

// servedBy greps the nodes' Dovecot logs for a login of user.
func (e *proxyEnv) loginsOf(user string) map[string]int {
	out := map[string]int{}
	for name, d := range e.dovecot {
		out[name] = strings.Count(d.Log(), "Login: user=<"+user+">")
	}
	return out
}

// TestProxyE2EClients: real clients (curl over imap, imaps, pop3, pop3s
// and STARTTLS/STLS; python's imaplib and poplib with LOGIN, AUTHENTICATE
// PLAIN and a literal password) log in through the front door and read
// their mail; a user of island a always lands on island a, b on b; the
// nodes see the client's own address (IMAP ID on a, PROXY v2 on b).
func TestProxyE2EClients(t *testing.T) {
	e := newProxyEnv(t)
	e.deliver("alice", "a", "hello alice from the e2e test")
	e.deliver("bob", "b", "hello bob from the e2e test")
	e.deliver("carol", "a", "hello carol")
	front := frontVIP.String()
	for _, c := range []struct {
		user, pw, island string
		args             []string
	}{
		{"alice", "alice-pw", "a", []string{"imap://" + front + "/INBOX;UID=1"}},
		{"bob", "bob-pw", "b", []string{"imap://" + front + "/INBOX;UID=1"}},
		{"alice", "alice-pw", "a", []string{"--ssl-reqd", "-k", "imap://" + front + "/INBOX;UID=1"}},
		{"bob", "bob-pw", "b", []string{"-k", "imaps://" + front + "/INBOX;UID=1"}},
		{"alice", "alice-pw", "a", []string{"pop3://" + front + "/1"}},
		{"bob", "bob-pw", "b", []string{"--ssl-reqd", "-k", "pop3://" + front + "/1"}},
		{"bob", "bob-pw", "b", []string{"-k", "pop3s://" + front + "/1"}},
	} {
		before := e.loginsOf(c.user)
		out, err := e.clientRun(20*time.Second, "curl", append([]string{"-sS", "--max-time", "15", "-u", c.user + ":" + c.pw}, c.args...)...)
		if err != nil || !strings.Contains(out, "hello "+c.user) {
			t.Fatalf("curl %v as %s: %v\n%s", c.args, c.user, err, out)
		}
		after := e.loginsOf(c.user)
		for _, n := range e.lab.Nodes {
			if after[n.Name] > before[n.Name] && n.Island != c.island {
				t.Fatalf("%s (island %s) logged in on %s of island %s", c.user, c.island, n.Name, n.Island)
			}
		}
	}

	// python: imaplib LOGIN with a literal password (spaces, quotes,
	// backslash), AUTHENTICATE PLAIN, poplib USER/PASS.
	script := `
import imaplib, poplib, sys, base64
front, pw = sys.argv[1], sys.argv[2]
m = imaplib.IMAP4(front)
m.literal = pw.encode()
typ, _ = m._simple_command('LOGIN', 'carol')  # the password goes as a {n} literal
assert typ == 'OK', typ
m.state = 'AUTH'
typ, data = m.select('INBOX'); assert typ == 'OK'
typ, data = m.fetch('1', '(BODY[TEXT])'); assert b'hello carol' in data[0][1], data
m.logout()
m = imaplib.IMAP4(front)
m.authenticate('PLAIN', lambda _: b'\0alice\0alice-pw')
typ, data = m.select('INBOX'); assert typ == 'OK'
m.logout()
m = imaplib.IMAP4(front)
typ, _ = m.login('carol', pw)  # the same password as a quoted string
assert typ == 'OK', typ
m.logout()
p = poplib.POP3(front)
p.user('bob'); p.pass_('bob-pw')
n, _ = p.stat(); assert n >= 1, n
lines = p.retr(1)[1]; assert any(b'hello bob' in l for l in lines), lines
p.quit()
print('python ok')
`
	out, err := e.clientRun(30*time.Second, "python3", "-c", script, front, `pass w"ord \x`)
	if err != nil || !strings.Contains(out, "python ok") {
		t.Fatalf("python clients: %v\n%s", err, out)
	}

	// The nodes saw the client's own address: IMAP ID on island a, PROXY
	// v2 on island b.
	client := lab.ClientV4.Addr().String()
	for _, n := range e.lab.Nodes {
		log := e.dovecot[n.Name].Log()
		if strings.Contains(log, "Login: user=<") && !strings.Contains(log, "rip="+client) {
			t.Fatalf("%s (island %s) logged logins without the client's address %s:\n%s", n.Name, n.Island, client, tailLines(log, 10))
		}
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// imapLogin logs in over IMAP from the client host and returns the
// tagged answer of the login.
func (e *proxyEnv) imapLogin(user, pw string) (string, error) {
	c, r, _, err := e.greet(frontVIP, 143)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "a LOGIN %s %s\r\n", user, pw)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(line, "a ") {
			fmt.Fprintf(c, "z LOGOUT\r\n")
			return strings.TrimSpace(line), nil
		}
	}
}

// TestProxyE2ELDAPDown: with slapd stopped, cached users still log in (a
// stale cache entry); an uncached user gets NO [UNAVAILABLE] within the
// LDAP timeout; slapd back, new users work without a restart.
func TestProxyE2ELDAPDown(t *testing.T) {
	e := newProxyEnv(t)
	if ans, err := e.imapLogin("alice", "alice-pw"); err != nil || !strings.HasPrefix(ans, "a OK") {
		t.Fatalf("alice before: %q %v", ans, err)
	}
	must(t, e.slapd.Stop())
	time.Sleep(1100 * time.Millisecond) // let alice's 1s positive TTL expire: the answer must be stale
	if ans, err := e.imapLogin("alice", "alice-pw"); err != nil || !strings.HasPrefix(ans, "a OK") {
		t.Fatalf("cached alice with LDAP down: %q %v", ans, err)
	}
	start := time.Now()
	ans, err := e.imapLogin("dave", "dave-pw")
	took := time.Since(start)
	if err != nil || !strings.Contains(ans, "NO [UNAVAILABLE]") {
		t.Fatalf("uncached dave with LDAP down: %q %v", ans, err)
	}
	if took > 3*time.Second {
		t.Fatalf("NO [UNAVAILABLE] took %v with a 1s LDAP timeout", took)
	}
	t.Logf("uncached user with LDAP down answered in %v", took.Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	must(t, e.slapd.Start(ctx))
	if ans, err := e.imapLogin("dave", "dave-pw"); err != nil || !strings.HasPrefix(ans, "a OK") {
		t.Fatalf("dave after LDAP is back: %q %v", ans, err)
	}
	mfs := e.scrape(t)
	if v, _ := value(mfs, "atoll_directory_cache_total", map[string]string{"result": "stale"}); v < 1 {
		t.Fatal("no stale answer counted")
	}
	if v, _ := value(mfs, "atoll_proxy_logins_total", map[string]string{"protocol": "imap", "result": "unavailable"}); v < 1 {
		t.Fatal("unavailable login not counted")
	}
}

// TestProxyE2EIslandDown: one node of an island down, its users move to
// the other; every node down, a clean NO [UNAVAILABLE], counted.
func TestProxyE2EIslandDown(t *testing.T) {
	e := newProxyEnv(t)
	var b []*lab.Node
	for _, n := range e.lab.Nodes {
		if n.Island == "b" {
			b = append(b, n)
		}
	}
	must(t, e.dovecot[b[0].Name].Stop())
	deadline := time.Now().Add(15 * time.Second)
	for {
		ans, err := e.imapLogin("bob", "bob-pw")
		if err == nil && strings.HasPrefix(ans, "a OK") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob never logged in with one island-b node down: %q %v", ans, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	must(t, e.dovecot[b[1].Name].Stop())
	deadline = time.Now().Add(15 * time.Second)
	for {
		ans, err := e.imapLogin("bob", "bob-pw")
		if err == nil && strings.Contains(ans, "NO [UNAVAILABLE]") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob with island b down: %q %v, want NO [UNAVAILABLE]", ans, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if v, _ := value(e.scrape(t), "atoll_proxy_logins_total", map[string]string{"protocol": "imap", "result": "no_node"}); v < 1 {
		t.Fatal("no_node not counted")
	}
	// Island a is unaffected.
	if ans, err := e.imapLogin("alice", "alice-pw"); err != nil || !strings.HasPrefix(ans, "a OK") {
		t.Fatalf("alice: %q %v", ans, err)
	}
}

// TestProxyE2EModeNone: without the data plane (`dataplane: {mode: none}`)
// the proxy alone serves the front door, as a drop-in for a Perdition farm.
func TestProxyE2EModeNone(t *testing.T) {
	e := newProxyEnv(t, true)
	e.deliver("alice", "a", "hello alice without xdp")
	e.deliver("bob", "b", "hello bob without xdp")
	for _, c := range []struct{ user, pw, island string }{{"alice", "alice-pw", "a"}, {"bob", "bob-pw", "b"}} {
		before := e.loginsOf(c.user)
		out, err := e.clientRun(20*time.Second, "curl", "-sS", "--max-time", "15", "-u", c.user+":"+c.pw, "imap://"+frontVIP.String()+"/INBOX;UID=1")
		if err != nil || !strings.Contains(out, "hello "+c.user) {
			t.Fatalf("curl as %s: %v\n%s", c.user, err, out)
		}
		after := e.loginsOf(c.user)
		for _, n := range e.lab.Nodes {
			if after[n.Name] > before[n.Name] && n.Island != c.island {
				t.Fatalf("%s logged in on %s of island %s", c.user, n.Name, n.Island)
			}
		}
	}
	out, err := e.lab.LB.Exec(context.Background(), "ip", "-d", "link", "show", "eth0")
	must(t, err)
	if strings.Contains(string(out), "prog/xdp") {
		t.Fatalf("mode none attached an XDP program:\n%s", out)
	}
	if st := e.status(); st.Dataplane != "none" {
		t.Fatalf("status says data plane %q", st.Dataplane)
	}
}
