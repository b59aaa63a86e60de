package config

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

const affinityBase = `dataplane: {mode: none}
directory: {static: /etc/hostname}
islands:
  - name: a
    nodes: [{name: n1, addresses: [198.51.100.11]}]
  - name: b
    nodes: [{name: n2, addresses: [198.51.100.12]}]
services:
  - {name: imap, vips: [203.0.113.20], protocol: imap, forwarding: ipip, routing: login}
`

func TestAffinity(t *testing.T) {
	cfg, err := Parse("t.yaml", []byte(affinityBase))
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Affinity.Learn; l.Enabled || l.Logins != 3 || l.TTL != time.Hour || l.Bar != time.Hour || l.MaxEntries != 10000 || l.VerifyOneIn != 8 {
		t.Fatalf("defaults %+v", l)
	}
	cfg, err = Parse("t.yaml", []byte(affinityBase+`affinity:
  static:
    - {prefix: 192.0.2.0/25, island: a}
    - {prefix: 192.0.2.10/32, island: b}
    - {prefix: "2001:db8:c::/64", island: a}
  learn: {enabled: true, logins: 2, ttl: 10m, bar: 30m, max_entries: 100}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []AffinityPrefix{
		{netip.MustParsePrefix("192.0.2.0/25"), "a", 12},
		{netip.MustParsePrefix("192.0.2.10/32"), "b", 13},
		{netip.MustParsePrefix("2001:db8:c::/64"), "a", 14},
	}
	for i, w := range want {
		if cfg.Affinity.Static[i] != w {
			t.Fatalf("static[%d] = %+v, want %+v", i, cfg.Affinity.Static[i], w)
		}
	}
	if l := cfg.Affinity.Learn; !l.Enabled || l.Logins != 2 || l.TTL != 10*time.Minute || l.Bar != 30*time.Minute || l.MaxEntries != 100 {
		t.Fatalf("learn %+v", l)
	}
	for _, c := range []struct {
		text, want string
		line       int
	}{
		{"affinity:\n  static:\n    - {prefix: 192.0.2.1/24, island: a}\n", "host bits set; write 192.0.2.0/24", 12},
		{"affinity:\n  static:\n    - {prefix: 192.0.2.0, island: a}\n", "is not a prefix", 12},
		{"affinity:\n  static:\n    - {prefix: 192.0.2.0/24, island: c}\n", `island "c" is not defined`, 12},
		{"affinity:\n  static:\n    - {prefix: 192.0.2.0/24}\n", "island is missing", 12},
		{"affinity:\n  static:\n    - {prefix: 192.0.2.0/24, island: a}\n    - {prefix: 192.0.2.0/24, island: b}\n", "already listed on line 12", 13},
		{"affinity:\n  learn: {logins: 1}\n", "logins: 1 is out of range", 11},
		{"affinity:\n  learn: {ttl: 1s}\n", "ttl", 11},
		{"affinity:\n  learn: {verify_one_in: 6}\n", "not a power of two", 11},
		{"affinity:\n  lern: {enabled: true}\n", `did you mean "learn"`, 11},
	} {
		_, err := Parse("t.yaml", []byte(affinityBase+c.text))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "t.yaml:"+strconv.Itoa(c.line)+":") {
			t.Errorf("%q: %v, want line %d and %q", c.text, err, c.line, c.want)
		}
	}
}
