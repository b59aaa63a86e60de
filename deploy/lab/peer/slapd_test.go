//go:build linux

package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/atoll-lb/atoll/userspace/netns"
)

func startSlapd(t *testing.T, o SlapdOptions) *Slapd {
	t.Helper()
	Require(t, "slapd")
	s, err := StartSlapd(testCtx(t, 20*time.Second), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if t.Failed() {
			t.Logf("slapd log:\n%s", tail(s.Log(), 60))
		}
	})
	return s
}

// islandOf searches uid's mailIsland over conn c (nil entries = none).
func islandOf(t *testing.T, c *ldap.Conn, s *Slapd, uid string) ([]string, error) {
	t.Helper()
	res, err := c.Search(ldap.NewSearchRequest(s.PeopleDN(), ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 2, 5, false,
		"(uid="+ldap.EscapeFilter(uid)+")", []string{SlapdIslandAttr}, nil))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range res.Entries {
		out = append(out, e.GetAttributeValue(SlapdIslandAttr))
	}
	return out, nil
}

func wantIsland(t *testing.T, s *Slapd, url, uid, island string) {
	t.Helper()
	c, err := s.Conn(testCtx(t, 5*time.Second), url, s.ServiceDN(), SlapdServicePassword)
	if err != nil {
		t.Fatalf("%s: bind as %s: %v", url, s.ServiceDN(), err)
	}
	defer c.Close()
	got, err := islandOf(t, c, s, uid)
	if err != nil {
		t.Fatalf("%s: search %s: %v", url, uid, err)
	}
	if len(got) != 1 || got[0] != island {
		t.Fatalf("%s: %s has islands %q, want [%s]", url, uid, got, island)
	}
}

func TestSlapdServesUsers(t *testing.T) {
	s := startSlapd(t, SlapdOptions{
		Dir:   t.TempDir(),
		LDAPS: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Users: []LDAPUser{
			{UID: "alice", Mail: "alice@example.org", Password: "pw-a", Island: "a"},
			{UID: "bob", Mail: "bob@example.org", Island: "b"},
			{UID: "*", Island: "star"},
		},
	})
	if len(s.URLs) != 1 || len(s.LDAPSURLs) != 1 || strings.HasSuffix(s.URLs[0], ":0") {
		t.Fatalf("URLs %q %q", s.URLs, s.LDAPSURLs)
	}
	wantIsland(t, s, s.URLs[0], "alice", "a")
	wantIsland(t, s, s.URLs[0], "bob", "b")
	// The literal "*" user: with the filter escaped it is the only match.
	wantIsland(t, s, s.URLs[0], "*", "star")

	// ldaps:// with the generated certificate (its own CA).
	wantIsland(t, s, s.LDAPSURLs[0], "alice", "a")

	// StartTLS on the ldap:// listener.
	c, err := s.Conn(testCtx(t, 5*time.Second), s.URLs[0], "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StartTLS(s.TLSConfig()); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	if err := c.Bind(s.ServiceDN(), SlapdServicePassword); err != nil {
		t.Fatalf("bind after StartTLS: %v", err)
	}
	c.Close()

	// A client that trusts another CA is refused.
	raw, err := net.Dial("tcp", strings.TrimPrefix(s.LDAPSURLs[0], "ldaps://"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tls.Client(raw, &tls.Config{ServerName: "localhost"}).Handshake(); err == nil {
		t.Fatal("TLS handshake succeeded without trusting the instance's certificate")
	}
	raw.Close()

	// Anonymous: may read the root DSE, not people.
	anon, err := s.Conn(testCtx(t, 5*time.Second), s.URLs[0], "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if got, err := islandOf(t, anon, s, "alice"); err == nil && len(got) > 0 {
		t.Fatalf("anonymous read alice's island: %q", got)
	} else {
		t.Logf("anonymous search: entries %q, err %v", got, err)
	}
	// A user may bind with its password (auth access), not read others.
	uc, err := s.Conn(testCtx(t, 5*time.Second), s.URLs[0], s.UserDN("alice"), "pw-a")
	if err != nil {
		t.Fatalf("bind as alice: %v", err)
	}
	if got, err := islandOf(t, uc, s, "bob"); err == nil && len(got) > 0 {
		t.Fatalf("alice read bob's island: %q", got)
	}
	uc.Close()
	// A wrong service password is refused.
	if _, err := s.Conn(testCtx(t, 5*time.Second), s.URLs[0], s.ServiceDN(), "wrong"); !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
		t.Fatalf("bind with a wrong password: %v, want invalidCredentials", err)
	}

	// AddUser creates, then updates.
	ctx := testCtx(t, 10*time.Second)
	if err := s.AddUser(ctx, LDAPUser{UID: "carol", Mail: "carol@example.org", Island: "c"}); err != nil {
		t.Fatal(err)
	}
	wantIsland(t, s, s.URLs[0], "carol", "c")
	if err := s.AddUser(ctx, LDAPUser{UID: "carol", Island: "d"}); err != nil {
		t.Fatal(err)
	}
	wantIsland(t, s, s.URLs[0], "carol", "d")

	// The monitor counts searches.
	n0, err := s.Searches(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantIsland(t, s, s.URLs[0], "carol", "d")
	wantIsland(t, s, s.URLs[0], "alice", "a")
	n1, err := s.Searches(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n1-n0 != 2 {
		t.Fatalf("monitor counted %d searches, want 2", n1-n0)
	}
}

func TestSlapdStopStartKeepsData(t *testing.T) {
	s := startSlapd(t, SlapdOptions{
		Dir:    t.TempDir(),
		Suffix: "o=atoll-test",
		LDAPS:  []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Users:  []LDAPUser{{UID: "dora", Mail: "dora@example.org", Island: "x"}},
	})
	ctx := testCtx(t, 30*time.Second)
	if err := s.AddUser(ctx, LDAPUser{UID: "eve", Island: "y"}); err != nil {
		t.Fatal(err)
	}
	urls, cert := s.URLs, string(s.CertPEM)
	addr := strings.TrimPrefix(s.URLs[0], "ldap://")

	procs := descendants(s.PID)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, procs)
	requireRefused(t, nil, addr)
	if s.Running() {
		t.Fatal("Running after Stop")
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err == nil {
		t.Fatal("Start of a running instance succeeded")
	}
	if fmt.Sprint(s.URLs) != fmt.Sprint(urls) || string(s.CertPEM) != cert {
		t.Fatalf("restart moved URLs %q → %q or changed the certificate", urls, s.URLs)
	}
	wantIsland(t, s, s.URLs[0], "dora", "x")
	wantIsland(t, s, s.LDAPSURLs[0], "eve", "y")

	// A crash (SIGKILL) keeps the data too.
	procs = descendants(s.PID)
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, procs)
	requireRefused(t, nil, addr)
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wantIsland(t, s, s.URLs[0], "eve", "y")

	// Stop leaves no process behind.
	pid := s.PID
	procs = descendants(pid)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, procs)
	if live := GroupMembers(pid); len(live) > 0 {
		t.Fatalf("processes %v of slapd's group survive", live)
	}
}

func TestSlapdIPv6(t *testing.T) {
	Require(t, "slapd")
	if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Fatalf("no IPv6 loopback (::1): %v", err)
	} else {
		l.Close()
	}
	s := startSlapd(t, SlapdOptions{
		Dir:    t.TempDir(),
		Listen: []netip.AddrPort{netip.MustParseAddrPort("[::1]:0"), netip.MustParseAddrPort("127.0.0.1:0")},
		LDAPS:  []netip.AddrPort{netip.MustParseAddrPort("[::1]:0")},
		Users:  []LDAPUser{{UID: "fay", Island: "six"}},
	})
	for _, u := range append(s.URLs, s.LDAPSURLs...) {
		wantIsland(t, s, u, "fay", "six")
	}
	// The certificate names the IPv6 address too.
	c, err := tls.Dial("tcp", strings.TrimPrefix(s.LDAPSURLs[0], "ldaps://"), &tls.Config{RootCAs: s.CertPool(), ServerName: "::1"})
	if err != nil {
		t.Fatalf("TLS to [::1] by address: %v", err)
	}
	c.Close()
}

func TestSlapdOptionErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		o    SlapdOptions
		want string
	}{
		{"no dir", SlapdOptions{}, "Dir is required"},
		{"dir with space", SlapdOptions{Dir: dir + "/a b"}, "interpret"},
		{"bad suffix", SlapdOptions{Dir: dir, Suffix: "not a dn"}, "Suffix"},
		{"suffix rdn", SlapdOptions{Dir: dir, Suffix: "cn=x"}, "first RDN"},
		{"zone", SlapdOptions{Dir: dir, Listen: []netip.AddrPort{netip.MustParseAddrPort("[fe80::1%lo]:389")}}, "zone"},
		{"port 0 off loopback", SlapdOptions{Dir: dir, Listen: []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:0")}}, "loopback"},
		{"empty uid", SlapdOptions{Dir: dir, Users: []LDAPUser{{Island: "a"}}}, "empty UID"},
		{"log level", SlapdOptions{Dir: dir, LogLevel: "loud"}, "LogLevel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := StartSlapd(testCtx(t, 10*time.Second), tc.o)
			if err == nil {
				s.Stop()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestSlapdStartFailureLeavesNothing(t *testing.T) {
	Require(t, "slapd")
	// The port is taken by someone else: slapd exits, and we say why.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s, err := StartSlapd(testCtx(t, 10*time.Second), SlapdOptions{
		Dir:    t.TempDir(),
		Listen: []netip.AddrPort{netip.MustParseAddrPort(l.Addr().String())},
	})
	if err == nil {
		s.Stop()
		t.Fatal("started on a taken port")
	}
	if !strings.Contains(err.Error(), "exited") {
		t.Fatalf("error %q", err)
	}
	t.Logf("error: %v", err)
}

func TestSlapdInNamespace(t *testing.T) {
	Require(t, "slapd")
	if os.Geteuid() != 0 {
		t.Skip("SKIP: network namespaces need root")
	}
	ns, err := netns.New("atl-ldap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	addr := netip.MustParsePrefix("198.51.100.21/32")
	if err := ns.AddAddr("lo", addr); err != nil {
		t.Fatal(err)
	}
	s := startSlapd(t, SlapdOptions{
		Dir:    t.TempDir(),
		Listen: []netip.AddrPort{netip.AddrPortFrom(addr.Addr(), 389)},
		LDAPS:  []netip.AddrPort{netip.AddrPortFrom(addr.Addr(), 636)},
		Users:  []LDAPUser{{UID: "gus", Island: "ns"}},
		Command: func(name string, args ...string) *exec.Cmd {
			return ns.Command(context.Background(), name, args...)
		},
		Dial: ns.DialContext,
	})
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s.PID)); !strings.Contains(string(cmdline), "slapd") {
		t.Fatalf("PID %d is %q, not slapd: ip netns exec should exec", s.PID, cmdline)
	}
	wantIsland(t, s, "ldap://198.51.100.21:389", "gus", "ns")
	wantIsland(t, s, "ldaps://198.51.100.21:636", "gus", "ns")
	procs := descendants(s.PID)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, procs)
	if _, err := s.Conn(testCtx(t, 2*time.Second), s.URLs[0], "", ""); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("after Stop: %v, want refused", err)
	}
}
