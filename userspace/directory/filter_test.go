package directory

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

func TestFilterExpand(t *testing.T) {
	for _, tc := range []struct {
		tmpl, user, want string
	}{
		{"(uid=%u)", "alice", "(uid=alice)"},
		{"(|(uid=%u)(mail=%u))", "alice@example.org", "(|(uid=alice@example.org)(mail=alice@example.org))"},
		{"(&(uid=%n)(domain=%d))", "alice@example.org", "(&(uid=alice)(domain=example.org))"},
		{"(&(uid=%n)(domain=%d))", "alice", "(&(uid=alice)(domain=))"},
		{"(&(uid=%n)(domain=%d))", "a@b@c", "(&(uid=a@b)(domain=c))"},
		{"(&(uid=%u)(x=100%%))", "bob", "(&(uid=bob)(x=100%))"},
		{"(uid=%u)", "%u", "(uid=%u)"}, // the user's '%' is not a placeholder
		// Injection: every special character is escaped (RFC 4515).
		{"(uid=%u)", "*", `(uid=\2a)`},
		{"(|(uid=%u)(mail=%u))", "*)(uid=*", `(|(uid=\2a\29\28uid=\2a)(mail=\2a\29\28uid=\2a))`},
		{"(uid=%u)", "admin)(|(uid=*", `(uid=admin\29\28|\28uid=\2a)`},
		{"(uid=%u)", "a\x00b", `(uid=a\00b)`},
		{"(uid=%u)", `a\2ab`, `(uid=a\5c2ab)`},
		{"(uid=%u)", "a\r\nb", "(uid=a\r\nb)"}, // no special meaning in a filter: sent as data
		{"(uid=%u)", "é", `(uid=\c3\a9)`},
		{"(&(uid=%n)(domain=%d))", "*@*", `(&(uid=\2a)(domain=\2a))`},
	} {
		f, err := parseFilter(tc.tmpl)
		if err != nil {
			t.Fatalf("%s: %v", tc.tmpl, err)
		}
		got := f.expand(tc.user)
		if got != tc.want {
			t.Errorf("%s with %q = %q, want %q", tc.tmpl, tc.user, got, tc.want)
		}
		// It compiles to one equality per placeholder, and decodes back to
		// the user's exact bytes.
		p, err := ldap.CompileFilter(got)
		if err != nil {
			t.Errorf("%q does not compile: %v", got, err)
			continue
		}
		if tc.tmpl == "(uid=%u)" {
			if p.Tag != ldap.FilterEqualityMatch {
				t.Errorf("%q compiles to tag %d, not one equality match", got, p.Tag)
			} else if v := p.Children[1].Data.String(); v != tc.user {
				t.Errorf("%q carries %q, not the user's %q", got, v, tc.user)
			}
		}
	}
}

func TestFilterErrors(t *testing.T) {
	for _, tc := range []struct{ tmpl, want string }{
		{"(uid=alice)", "no %u"},
		{"", "no %u"},
		{"(uid=%x)", "%x"},
		{"(uid=%u)%", "lone '%'"},
		{"(uid=%u", "not a valid LDAP filter"},
		{"uid=%u", "not a valid LDAP filter"},
		{"(uid=%u))", "not a valid LDAP filter"},
		{"(|(uid=%u)(mail=%u)", "not a valid LDAP filter"},
	} {
		if _, err := parseFilter(tc.tmpl); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFilter(%q) = %v, want an error mentioning %q", tc.tmpl, err, tc.want)
		}
	}
}

func TestNewLDAPErrors(t *testing.T) {
	dir := t.TempDir()
	pw := writeFile(t, dir, "pw", "secret\n")
	empty := writeFile(t, dir, "empty", "\n")
	ok := LDAPOptions{URLs: []string{"ldap://127.0.0.1:1"}, BaseDN: "dc=example,dc=org", Filter: "(uid=%u)", Attribute: "mailIsland"}
	with := func(f func(o *LDAPOptions)) LDAPOptions {
		o := ok
		f(&o)
		return o
	}
	if l, err := NewLDAP(ok, nil, nil); err != nil {
		t.Fatal(err)
	} else {
		if l.o.Timeout != DefaultLDAPTimeout || l.o.PoolSize != DefaultPoolSize || l.o.PositiveTTL != DefaultPositiveTTL ||
			l.o.NegativeTTL != DefaultNegativeTTL || l.o.StaleTTL != DefaultStaleTTL || l.o.MaxEntries != DefaultMaxEntries {
			t.Fatalf("defaults not filled in: %+v", l.o)
		}
		l.Close()
	}
	if l, err := NewLDAP(with(func(o *LDAPOptions) { o.PositiveTTL, o.NegativeTTL, o.StaleTTL = -1, -1, -1 }), nil, nil); err != nil {
		t.Fatal(err)
	} else if l.o.PositiveTTL != 0 || l.o.NegativeTTL != 0 || l.o.StaleTTL != 0 {
		t.Fatalf("negative TTLs not turned off: %+v", l.o)
	}
	if l, err := NewLDAP(with(func(o *LDAPOptions) { o.BindDN, o.PasswordFile = "cn=atoll,dc=example,dc=org", pw }), nil, nil); err != nil {
		t.Fatal(err)
	} else if l.password != "secret" {
		t.Fatalf("password %q: the trailing newline is not trimmed", l.password)
	}
	for _, tc := range []struct {
		name string
		o    LDAPOptions
		want string
	}{
		{"no URL", with(func(o *LDAPOptions) { o.URLs = nil }), "no LDAP URL"},
		{"bad scheme", with(func(o *LDAPOptions) { o.URLs = []string{"ldap://a", "http://b"} }), "want ldap:// or ldaps://"},
		{"URL with DN", with(func(o *LDAPOptions) { o.URLs = []string{"ldap://a/dc=x"} }), "HOST[:PORT]"},
		{"URL without host", with(func(o *LDAPOptions) { o.URLs = []string{"ldap://"} }), "HOST[:PORT]"},
		{"URL bad port", with(func(o *LDAPOptions) { o.URLs = []string{"ldap://a:99999"} }), "bad port"},
		{"no base", with(func(o *LDAPOptions) { o.BaseDN = "" }), "base DN"},
		{"bad base", with(func(o *LDAPOptions) { o.BaseDN = "nonsense" }), "base DN"},
		{"no attribute", with(func(o *LDAPOptions) { o.Attribute = "" }), "attribute"},
		{"filter without user", with(func(o *LDAPOptions) { o.Filter = "(uid=x)" }), "no %u"},
		{"filter unbalanced", with(func(o *LDAPOptions) { o.Filter = "(uid=%u" }), "not a valid"},
		{"bind without file", with(func(o *LDAPOptions) { o.BindDN = "cn=x" }), "without a password file"},
		{"file without bind", with(func(o *LDAPOptions) { o.PasswordFile = pw }), "without a bind DN"},
		{"missing file", with(func(o *LDAPOptions) { o.BindDN, o.PasswordFile = "cn=x", dir+"/nope" }), "no such file"},
		{"empty password", with(func(o *LDAPOptions) { o.BindDN, o.PasswordFile = "cn=x", empty }), "is empty"},
	} {
		if _, err := NewLDAP(tc.o, nil, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error mentioning %q", tc.name, err, tc.want)
		}
	}
}

func TestCacheBound(t *testing.T) {
	c := newCache(3)
	now := time.Now()
	put := func(u string, ttl time.Duration) {
		c.put(cacheEntry{user: u, island: "a", expires: now.Add(ttl), dead: now.Add(ttl)}, now)
	}
	put("a", time.Hour)
	put("b", time.Hour)
	put("c", time.Hour)
	put("a", time.Hour) // rewritten: now the newest
	put("d", time.Hour) // evicts b, the oldest write
	if _, ok := c.get("b", now); ok {
		t.Fatal("b not evicted")
	}
	for _, u := range []string{"a", "c", "d"} {
		if _, ok := c.get(u, now); !ok {
			t.Fatalf("%s evicted", u)
		}
	}
	if n, ev := c.stats(); n != 3 || ev != 1 {
		t.Fatalf("entries %d evictions %d, want 3 1", n, ev)
	}
	// Dead entries go without counting as evictions; TTL 0 is not kept.
	c2 := newCache(10)
	c2.put(cacheEntry{user: "x", expires: now.Add(time.Millisecond), dead: now.Add(time.Millisecond)}, now)
	c2.put(cacheEntry{user: "y", dead: now}, now)
	later := now.Add(time.Second)
	c2.put(cacheEntry{user: "z", expires: later.Add(time.Hour), dead: later.Add(time.Hour)}, later)
	if n, ev := c2.stats(); n != 1 || ev != 0 {
		t.Fatalf("entries %d evictions %d, want 1 0", n, ev)
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := dir + "/" + name
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
