//go:build linux

package directory

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
)

// people is the test directory.
var people = []peer.LDAPUser{
	{UID: "alice", Mail: "alice@example.org", Password: "pw", Island: "a"},
	{UID: "bob", Mail: "bob@example.net", Island: "b"},
	{UID: "carol", Mail: "carol@example.org", Island: "c"},
	{UID: "*", Island: "star"},                            // a literal '*' uid: found only if the filter is escaped
	{UID: `a(b)c\d`, Island: "paren"},                     // filter specials in a real uid
	{UID: "twin1", Mail: "twin@example.org", Island: "a"}, // two entries, one mail
	{UID: "twin2", Mail: "twin@example.org", Island: "b"},
	{UID: "homeless", Mail: "homeless@example.org"}, // no island
	{UID: "badisland", Island: "Not An Island"},     // an island no config can name
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type countObs struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *countObs) CacheResult(r string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[r]++
}

func (c *countObs) get(r string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[r]
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func startSlapd(t *testing.T, users []peer.LDAPUser) *peer.Slapd {
	t.Helper()
	peer.Require(t, "slapd")
	s, err := peer.StartSlapd(testCtx(t, 20*time.Second), peer.SlapdOptions{
		Dir:      t.TempDir(),
		LDAPS:    []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Users:    users,
		LogLevel: "stats",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop slapd: %v", err)
		}
		if t.Failed() {
			log := s.Log()
			if len(log) > 6000 {
				log = "…" + log[len(log)-6000:]
			}
			t.Logf("slapd log:\n%s", log)
		}
	})
	return s
}

type testLDAP struct {
	*LDAP
	log *syncBuf
	obs *countObs
}

// newLDAP makes a directory on s, bound as its service account, with the
// filter (|(uid=%u)(mail=%u)); f adjusts the options.
func newLDAP(t *testing.T, s *peer.Slapd, f func(o *LDAPOptions)) *testLDAP {
	t.Helper()
	o := LDAPOptions{
		URLs:         s.URLs,
		BindDN:       s.ServiceDN(),
		PasswordFile: writeFile(t, t.TempDir(), "pw", peer.SlapdServicePassword+"\n"),
		BaseDN:       s.PeopleDN(),
		Filter:       "(|(uid=%u)(mail=%u))",
		Attribute:    peer.SlapdIslandAttr,
		Timeout:      time.Second,
	}
	if f != nil {
		f(&o)
	}
	buf := &syncBuf{}
	obs := &countObs{m: map[string]int{}}
	l, err := NewLDAP(o, slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), obs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Close()
		if t.Failed() {
			t.Logf("directory log:\n%s", buf)
		}
	})
	return &testLDAP{l, buf, obs}
}

func (l *testLDAP) want(t *testing.T, user, island string) Result {
	t.Helper()
	r, err := l.Lookup(testCtx(t, 10*time.Second), user)
	if err != nil || r.Island != island {
		t.Fatalf("Lookup(%q) = %+v, %v; want island %s", user, r, err, island)
	}
	return r
}

func (l *testLDAP) wantErr(t *testing.T, user string, target error) (Result, error) {
	t.Helper()
	r, err := l.Lookup(testCtx(t, 10*time.Second), user)
	if !errors.Is(err, target) || r.Island != "" {
		t.Fatalf("Lookup(%q) = %+v, %v; want %v", user, r, err, target)
	}
	return r, err
}

// closedURL is an ldap:// URL on a loopback port nobody listens on.
// (Not an outside address: this machine's egress proxy accepts TCP to
// any of those.)
func closedURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "ldap://" + addr
}

// hungServer accepts TCP connections and never answers.
func hungServer(t *testing.T) (url string, accepted *atomic.Int32) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = new(atomic.Int32)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "ldap://" + ln.Addr().String(), accepted
}

func searches(t *testing.T, s *peer.Slapd) int64 {
	t.Helper()
	n, err := s.Searches(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// 1. Lookups by uid and by mail; unknown, ambiguous and incomplete
// entries; the second round comes from the cache, which the server's own
// counter confirms, and survives the server going away.
func TestLDAPLookupAndCache(t *testing.T) {
	s := startSlapd(t, people)
	l := newLDAP(t, s, nil)
	cases := []struct {
		user, island string // "" = ErrUnknownUser
		warning      string // logged on the first lookup
	}{
		{"alice", "a", ""},
		{"alice@example.org", "a", ""},
		{"bob@example.net", "b", ""},
		{"bob", "b", ""},
		{"nobody", "", ""},
		{"twin@example.org", "", "more than one entry matches"},
		{"homeless", "", "has no island attribute"},
		{"badisland", "", "not a valid island name"},
	}
	for _, tc := range cases {
		var r Result
		if tc.island == "" {
			r, _ = l.wantErr(t, tc.user, ErrUnknownUser)
		} else {
			r = l.want(t, tc.user, tc.island)
		}
		if r.Cached || r.Stale {
			t.Errorf("%s: first lookup %+v", tc.user, r)
		}
		if tc.warning != "" && !strings.Contains(l.log.String(), tc.warning) {
			t.Errorf("%s: no warning %q logged", tc.user, tc.warning)
		}
	}
	if st := l.Stats(); st.Misses != 8 || st.Searches != 8 || st.Hits != 0 || st.Entries != 8 {
		t.Fatalf("after the first round: %+v", st)
	}

	n0 := searches(t, s)
	for _, tc := range cases {
		var r Result
		if tc.island == "" {
			r, _ = l.wantErr(t, tc.user, ErrUnknownUser)
		} else {
			r = l.want(t, tc.user, tc.island)
		}
		if !r.Cached || r.Stale {
			t.Errorf("%s: second lookup %+v, want Cached", tc.user, r)
		}
	}
	if n1 := searches(t, s); n1 != n0 {
		t.Fatalf("slapd saw %d searches during the cached round, want 0", n1-n0)
	}
	st := l.Stats()
	if st.Hits != 4 || st.NegativeHits != 4 || st.Searches != 8 {
		t.Fatalf("after the cached round: %+v", st)
	}
	if l.obs.get(CacheHit) != 4 || l.obs.get(CacheNegativeHit) != 4 || l.obs.get(CacheMiss) != 8 {
		t.Fatalf("observer saw %v", l.obs.m)
	}
	// No server at all: the cache still answers.
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if r := l.want(t, "alice", "a"); !r.Cached || r.Stale {
		t.Fatalf("with slapd stopped: %+v", r)
	}
	l.wantErr(t, "nobody", ErrUnknownUser)
	if st := l.Stats(); st.Searches != 8 {
		t.Fatalf("searches %d after slapd stopped, want 8", st.Searches)
	}
}

// 2. Servers are tried in order: a closed port, a hung server, the real
// one. The first lookup pays one Timeout for the hung server; later ones
// skip the failed servers for RetryAfter.
func TestLDAPServerOrder(t *testing.T) {
	s := startSlapd(t, people)
	closed := closedURL(t)
	hung, accepted := hungServer(t)
	const timeout = 500 * time.Millisecond
	l := newLDAP(t, s, func(o *LDAPOptions) {
		o.URLs = []string{closed, hung, s.URLs[0]}
		o.Timeout = timeout
	})
	start := time.Now()
	l.want(t, "alice", "a")
	first := time.Since(start)
	t.Logf("closed, hung, real: first lookup %v (Timeout %v)", first, timeout)
	if first < timeout*9/10 || first > 2*timeout {
		t.Errorf("first lookup took %v, want about one Timeout (%v), at most two", first, timeout)
	}
	if accepted.Load() == 0 {
		t.Error("the hung server was never tried")
	}
	for _, u := range []string{closed, hung} {
		if !strings.Contains(l.log.String(), "url="+u) {
			t.Errorf("no log line for the failed server %s", u)
		}
	}
	start = time.Now()
	l.want(t, "bob", "b")
	second := time.Since(start)
	t.Logf("second lookup (failed servers held back): %v", second)
	if second > timeout/2 {
		t.Errorf("second lookup took %v: the failed servers were not skipped", second)
	}

	// Without the hold-back, every uncached lookup pays the hung server.
	strict := newLDAP(t, s, func(o *LDAPOptions) {
		o.URLs = []string{hung, s.URLs[0]}
		o.Timeout = timeout
		o.RetryAfter = -1
	})
	for _, u := range []string{"alice", "bob"} {
		start := time.Now()
		strict.want(t, u, map[string]string{"alice": "a", "bob": "b"}[u])
		if el := time.Since(start); el < timeout*9/10 || el > 2*timeout {
			t.Errorf("%s with RetryAfter off: %v, want about %v", u, el, timeout)
		}
	}

	// The first server that answers wins: two directories that disagree.
	s2 := startSlapd(t, []peer.LDAPUser{{UID: "alice", Island: "z"}})
	newLDAP(t, s, func(o *LDAPOptions) { o.URLs = []string{s.URLs[0], s2.URLs[0]} }).want(t, "alice", "a")
	newLDAP(t, s, func(o *LDAPOptions) { o.URLs = []string{s2.URLs[0], s.URLs[0]} }).want(t, "alice", "z")

	// A ctx deadline shorter than Timeout ends the wait, not the search:
	// the answer lands in the cache for the next lookup.
	slow := newLDAP(t, s, func(o *LDAPOptions) {
		o.URLs = []string{hung, s.URLs[0]}
		o.Timeout = timeout
	})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err := slow.Lookup(ctx, "carol")
	el := time.Since(start)
	t.Logf("ctx deadline 150ms before a hung server: %v after %v", err, el)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want ErrUnavailable with the deadline", err)
	}
	if el >= timeout {
		t.Fatalf("the ctx deadline was not respected: %v (Timeout %v)", el, timeout)
	}
	time.Sleep(timeout + 300*time.Millisecond)
	if r := slow.want(t, "carol", "c"); !r.Cached {
		t.Fatalf("the background search did not fill the cache: %+v", r)
	}
}

// 3. The directory goes down: cached users still resolve (stale past
// PositiveTTL), others fail fast with ErrUnavailable; it comes back
// without a new LDAP object.
func TestLDAPServerDown(t *testing.T) {
	s := startSlapd(t, people)
	const ttl = 300 * time.Millisecond
	l := newLDAP(t, s, func(o *LDAPOptions) { o.PositiveTTL = ttl })
	short := newLDAP(t, s, func(o *LDAPOptions) { o.PositiveTTL, o.StaleTTL = ttl, 200*time.Millisecond })
	l.want(t, "alice", "a")
	l.want(t, "bob", "b")
	short.want(t, "alice", "a")
	fetched := time.Now()

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if r := l.want(t, "alice", "a"); !r.Cached || r.Stale {
		t.Fatalf("fresh entry with slapd down: %+v", r)
	}
	time.Sleep(time.Until(fetched.Add(ttl + 50*time.Millisecond)))
	if r := l.want(t, "alice", "a"); !r.Cached || !r.Stale {
		t.Fatalf("expired entry with slapd down: %+v, want Stale", r)
	}
	if st := l.Stats(); st.Stale != 1 || l.obs.get(CacheStale) != 1 {
		t.Fatalf("stale not counted: %+v %v", st, l.obs.m)
	}
	start := time.Now()
	_, err := l.wantErr(t, "carol", ErrUnavailable)
	el := time.Since(start)
	t.Logf("uncached user, slapd down (connection refused): %v after %v (Timeout %v)", err, el, l.o.Timeout)
	if el > l.o.Timeout {
		t.Fatalf("ErrUnavailable after %v, over Timeout %v", el, l.o.Timeout)
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Errorf("error %q does not say why", err)
	}
	if st := l.Stats(); st.Unavailable != 1 {
		t.Fatalf("unavailable not counted: %+v", st)
	}
	// Past expiry + StaleTTL nothing is served.
	time.Sleep(time.Until(fetched.Add(ttl + 200*time.Millisecond + 50*time.Millisecond)))
	short.wantErr(t, "alice", ErrUnavailable)

	// Back up: pooled connections are dead, the first lookup still works.
	if err := s.Start(testCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if r := l.want(t, "alice", "a"); r.Cached || r.Stale {
		t.Fatalf("after restart: %+v, want a fresh answer", r)
	}
	l.want(t, "carol", "c")
	if err := s.AddUser(testCtx(t, 10*time.Second), peer.LDAPUser{UID: "dora", Island: "d"}); err != nil {
		t.Fatal(err)
	}
	l.want(t, "dora", "d")
	short.want(t, "alice", "a")
	if !strings.Contains(l.log.String(), "answers again") {
		t.Error("the recovery is not logged")
	}

	// Hung (SIGSTOP: the kernel still accepts connections, nothing
	// answers): each lookup that needs the server costs one Timeout, then
	// stale or ErrUnavailable.
	if err := syscall.Kill(s.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := func() { syscall.Kill(s.PID, syscall.SIGCONT) }
	t.Cleanup(cont)
	time.Sleep(ttl + 50*time.Millisecond) // alice (fetched after the restart) expires
	start = time.Now()
	if r := l.want(t, "alice", "a"); !r.Stale {
		t.Fatalf("hung server, expired entry: %+v, want Stale", r)
	}
	el = time.Since(start)
	t.Logf("hung slapd (SIGSTOP), expired entry: stale after %v", el)
	if el < l.o.Timeout*9/10 || el > l.o.Timeout+500*time.Millisecond {
		t.Errorf("stale answer after %v, want about Timeout %v", el, l.o.Timeout)
	}
	start = time.Now()
	_, err = l.wantErr(t, "carol@example.org", ErrUnavailable)
	el = time.Since(start)
	t.Logf("hung slapd (SIGSTOP), uncached user: %v after %v", err, el)
	if el < l.o.Timeout*9/10 || el > l.o.Timeout+500*time.Millisecond {
		t.Errorf("ErrUnavailable after %v, want about Timeout %v", el, l.o.Timeout)
	}
	cont()
	l.want(t, "carol@example.org", "c")
}

// 4. The negative cache: an unknown user stays unknown for NegativeTTL,
// then a user added meanwhile resolves.
func TestLDAPNegativeCache(t *testing.T) {
	s := startSlapd(t, people)
	// Long enough for the lookups and the LDAP add below on a loaded
	// machine: they must all happen within it.
	const nttl = 2 * time.Second
	l := newLDAP(t, s, func(o *LDAPOptions) { o.NegativeTTL = nttl })
	off := newLDAP(t, s, func(o *LDAPOptions) { o.NegativeTTL = -1 })
	start := time.Now()
	if r, _ := l.wantErr(t, "erin", ErrUnknownUser); r.Cached {
		t.Fatalf("first lookup %+v", r)
	}
	off.wantErr(t, "erin", ErrUnknownUser)
	if err := s.AddUser(testCtx(t, 10*time.Second), peer.LDAPUser{UID: "erin", Island: "e"}); err != nil {
		t.Fatal(err)
	}
	if r, _ := l.wantErr(t, "erin", ErrUnknownUser); !r.Cached {
		t.Fatalf("within NegativeTTL: %+v, want a cached answer", r)
	}
	if el := time.Since(start); el > nttl {
		t.Fatalf("the lookups within NegativeTTL took %v, longer than it (%v)", el, nttl)
	}
	off.want(t, "erin", "e") // NegativeTTL off: not cached
	time.Sleep(time.Until(start.Add(nttl + 50*time.Millisecond)))
	if r := l.want(t, "erin", "e"); r.Cached {
		t.Fatalf("after NegativeTTL: %+v", r)
	}
	if l.obs.get(CacheNegativeHit) != 1 {
		t.Fatalf("observer %v", l.obs.m)
	}
}

// 5. Filter injection: names full of filter syntax find nobody else,
// and the filter sent is exactly the escaped one.
func TestLDAPInjection(t *testing.T) {
	s := startSlapd(t, people)
	l := newLDAP(t, s, nil)
	var mu sync.Mutex
	var sent []string
	l.onSearch = func(_, filter string) {
		mu.Lock()
		sent = append(sent, filter)
		mu.Unlock()
	}
	for _, tc := range []struct {
		user, island, escaped string // island "" = ErrUnknownUser
	}{
		{"alice", "a", "alice"},
		{"*", "star", `\2a`},
		{"*)(uid=*", "", `\2a\29\28uid=\2a`},
		{"admin)(|(uid=*", "", `admin\29\28|\28uid=\2a`},
		{"alice)(uid=bob", "", `alice\29\28uid=bob`},
		{"(uid=alice)", "", `\28uid=alice\29`},
		{"al*", "", `al\2a`},
		{"*@example.org", "", `\2a@example.org`},
		{`a(b)c\d`, "paren", `a\28b\29c\5cd`},
		{`alice\`, "", `alice\5c`},
		{`\2a`, "", `\5c2a`},
		{"alice\x00", "", `alice\00`},
		{"alice\x00)(uid=*", "", `alice\00\29\28uid=\2a`},
		{"alice\r\n", "", "alice\r\n"},
		{"alice\n(uid=*)", "", "alice\n\\28uid=\\2a\\29"},
		{"\xff", "", `\ff`},
		{"", "", ""},
	} {
		mu.Lock()
		sent = nil
		mu.Unlock()
		r, err := l.Lookup(testCtx(t, 10*time.Second), tc.user)
		switch {
		case tc.island == "" && !errors.Is(err, ErrUnknownUser):
			t.Errorf("Lookup(%q) = %+v, %v; want ErrUnknownUser", tc.user, r, err)
		case tc.island != "" && (err != nil || r.Island != tc.island):
			t.Errorf("Lookup(%q) = %+v, %v; want %s", tc.user, r, err, tc.island)
		}
		want := "(|(uid=" + tc.escaped + ")(mail=" + tc.escaped + "))"
		mu.Lock()
		if len(sent) != 1 || sent[0] != want {
			t.Errorf("Lookup(%q) sent %q, want [%q]", tc.user, sent, want)
		}
		mu.Unlock()
	}
	// What slapd received (its stats log; it prints hex in upper case).
	for _, f := range []string{`filter="(|(uid=\2A\29\28uid=\2A)(mail=\2A\29\28uid=\2A))"`, `filter="(|(uid=\2A)(mail=\2A))"`} {
		if !strings.Contains(s.Log(), f) {
			t.Errorf("slapd's log lacks %s", f)
		}
	}
	if st := l.Stats(); st.Unavailable != 0 {
		t.Fatalf("some lookup failed as unavailable: %+v", st)
	}
}

// 5b. ldaps:// and StartTLS with the instance's CA; a wrong CA or name
// is ErrUnavailable.
func TestLDAPTLS(t *testing.T) {
	s := startSlapd(t, people)
	good := &tls.Config{RootCAs: s.CertPool()}
	l := newLDAP(t, s, func(o *LDAPOptions) { o.URLs, o.TLSConfig = s.LDAPSURLs, good })
	l.want(t, "alice", "a") // ServerName from the URL: 127.0.0.1, an IP SAN

	before := strings.Count(s.Log(), "oid=1.3.6.1.4.1.1466.20037")
	st := newLDAP(t, s, func(o *LDAPOptions) { o.StartTLS, o.TLSConfig = true, good })
	st.want(t, "alice", "a")
	if after := strings.Count(s.Log(), "oid=1.3.6.1.4.1.1466.20037"); after != before+1 {
		t.Errorf("slapd saw %d StartTLS requests, want 1", after-before)
	}
	named := newLDAP(t, s, func(o *LDAPOptions) {
		o.URLs, o.TLSConfig = s.LDAPSURLs, &tls.Config{RootCAs: s.CertPool(), ServerName: "localhost"}
	})
	named.want(t, "alice", "a")

	for name, f := range map[string]func(o *LDAPOptions){
		"ldaps, wrong CA":    func(o *LDAPOptions) { o.URLs, o.TLSConfig = s.LDAPSURLs, &tls.Config{RootCAs: x509.NewCertPool()} },
		"StartTLS, wrong CA": func(o *LDAPOptions) { o.StartTLS, o.TLSConfig = true, &tls.Config{RootCAs: x509.NewCertPool()} },
		"ldaps, wrong name": func(o *LDAPOptions) {
			o.URLs, o.TLSConfig = s.LDAPSURLs, &tls.Config{RootCAs: s.CertPool(), ServerName: "ldap.example.org"}
		},
		"ldaps, system roots": func(o *LDAPOptions) { o.URLs = s.LDAPSURLs },
	} {
		t.Run(name, func(t *testing.T) {
			bad := newLDAP(t, s, f)
			_, err := bad.wantErr(t, "alice", ErrUnavailable)
			if !strings.Contains(err.Error(), "certificate") {
				t.Errorf("error %q does not mention the certificate", err)
			}
			if !strings.Contains(bad.log.String(), "TLS fails") {
				t.Errorf("the TLS failure is not logged as such:\n%s", bad.log)
			}
		})
	}
}

// A refused bind is a configuration error: ErrUnavailable (never "unknown
// user"), logged once as an error; Reload with the right password heals.
func TestLDAPBadBind(t *testing.T) {
	s := startSlapd(t, people)
	pwFile := writeFile(t, t.TempDir(), "pw", "wrong\n")
	l := newLDAP(t, s, func(o *LDAPOptions) { o.PasswordFile = pwFile })
	for _, u := range []string{"alice", "bob"} {
		_, err := l.wantErr(t, u, ErrUnavailable)
		if !strings.Contains(err.Error(), "bind refused") {
			t.Errorf("error %q does not say the bind was refused", err)
		}
	}
	if n := strings.Count(l.log.String(), "refuses our bind"); n != 1 {
		t.Errorf("the bind failure is logged %d times, want once:\n%s", n, l.log)
	}
	if !strings.Contains(l.log.String(), "level=ERROR") {
		t.Error("the bind failure is not logged as an error")
	}
	if err := os.WriteFile(pwFile, []byte(peer.SlapdServicePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.Reload(); err != nil {
		t.Fatal(err)
	}
	l.want(t, "alice", "a")
	// A password file that became unreadable keeps the old password.
	os.Remove(pwFile)
	if err := l.Reload(); err == nil {
		t.Fatal("Reload of a missing file succeeded")
	}
	l.want(t, "bob", "b")

	// An anonymous directory may not read people: no entry is found.
	anon := newLDAP(t, s, func(o *LDAPOptions) { o.BindDN, o.PasswordFile = "", "" })
	_, err := anon.Lookup(testCtx(t, 10*time.Second), "alice")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("anonymous lookup: %v, want ErrUnavailable (insufficient access is not an unknown user)", err)
	}
	t.Logf("anonymous lookup: %v", err)
}

// 6. Fifty concurrent lookups of one uncached user: one search, counted
// by slapd's monitor. Lookups of different users run in parallel on
// different pooled connections.
func TestLDAPSingleflight(t *testing.T) {
	s := startSlapd(t, people)
	l := newLDAP(t, s, nil)
	const n = 50
	var inFlight atomic.Int32
	l.onSearch = func(_, _ string) {
		inFlight.Add(1)
		time.Sleep(300 * time.Millisecond) // keep the search in flight while the others arrive
		inFlight.Add(-1)
	}
	n0 := searches(t, s)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			r, err := l.Lookup(context.Background(), "alice")
			if err == nil && r.Island != "a" {
				err = errors.New("wrong island " + r.Island)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n1 := searches(t, s)
	st := l.Stats()
	t.Logf("%d concurrent lookups: slapd counted %d searches; directory: %+v", n, n1-n0, st)
	if n1-n0 != 1 || st.Searches != 1 {
		t.Fatalf("%d concurrent lookups of one user made %d searches (slapd) / %d (directory), want 1", n, n1-n0, st.Searches)
	}
	if st.Misses != n || st.Hits != 0 {
		t.Fatalf("not every lookup joined the one search: %+v", st)
	}

	// Different users at once: in parallel, not one after another.
	var peak atomic.Int32
	l.onSearch = func(_, _ string) {
		v := inFlight.Add(1)
		for {
			p := peak.Load()
			if v <= p || peak.CompareAndSwap(p, v) {
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
		inFlight.Add(-1)
	}
	users := []string{"bob", "carol", "*", "alice@example.org", "bob@example.net", "carol@example.org"}
	start := time.Now()
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := l.Lookup(context.Background(), u); err != nil {
				t.Errorf("%s: %v", u, err)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	t.Logf("%d different users at once: %v, %d searches in flight at the peak", len(users), el, peak.Load())
	if peak.Load() != int32(len(users)) {
		t.Fatalf("peak %d in flight, %v: different users did not run in parallel", peak.Load(), el)
	}
	srv := l.servers[0]
	srv.mu.Lock()
	idle := len(srv.idle)
	srv.mu.Unlock()
	if idle != l.o.PoolSize {
		t.Fatalf("%d idle connections kept, want PoolSize %d", idle, l.o.PoolSize)
	}
}

func TestLDAPClose(t *testing.T) {
	s := startSlapd(t, people)
	l := newLDAP(t, s, nil)
	l.want(t, "alice", "a")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l.wantErr(t, "alice", ErrUnavailable)
	if n := len(l.servers[0].idle); n != 0 {
		t.Fatalf("%d connections left open", n)
	}
}
