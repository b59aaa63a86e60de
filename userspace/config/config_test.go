package config

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// base is a small valid file; the bad cases edit it.
const base = `dataplane:
  interfaces: [eth0]
  source_v4: 198.51.100.1
islands:
  - name: a
    nodes:
      - name: n1
        addresses: [198.51.100.11]
      - name: n2
        addresses: [198.51.100.12]
services:
  - name: imap-a
    vips: [203.0.113.10]
    protocol: imap
    forwarding: ipip
    island: a
`

// edit replaces old (which must occur once) in base.
func edit(t testing.TB, old, new string) string {
	t.Helper()
	if strings.Count(base, old) != 1 {
		t.Fatalf("%q does not occur once in base", old)
	}
	return strings.Replace(base, old, new, 1)
}

// markedLine is the 1-based line holding the marker "#<".
func markedLine(t testing.TB, text string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, "#<") {
			return i + 1
		}
	}
	t.Fatalf("no #< marker in:\n%s", text)
	return 0
}

func TestBaseIsValid(t *testing.T) {
	if _, err := Parse("atoll.yaml", []byte(base)); err != nil {
		t.Fatal(err)
	}
}

// badCase is a file with exactly one problem: on the line marked "#<"
// (or line), with msg in its message.
type badCase struct {
	name string
	yaml string
	line int // 0: the line marked "#<"
	msg  string
}

func badCases(t testing.TB) []badCase {
	fx := makeFiles(t)
	manyIslands := func() string {
		var b strings.Builder
		b.WriteString("dataplane: {interfaces: [eth0], source_v4: 198.51.100.1}\nislands: #<\n")
		for i := range 65 {
			fmt.Fprintf(&b, "  - {name: i%d, nodes: [{name: n%d, addresses: [10.0.%d.%d]}]}\n", i, i, i/250, i%250+1)
		}
		b.WriteString("services:\n  - {name: s, vips: [203.0.113.10], protocol: imap, forwarding: ipip, island: i0}\n")
		return b.String()
	}
	manyVIPs := func() string {
		var b strings.Builder
		b.WriteString("dataplane: {interfaces: [eth0], source_v4: 198.51.100.1}\n")
		b.WriteString("islands:\n  - {name: a, nodes: [{name: n1, addresses: [198.51.100.11]}]}\n")
		b.WriteString("services: #<\n")
		for i := range 129 {
			fmt.Fprintf(&b, "  - {name: s%d, vips: [203.0.113.%d, '2001:db8:f::%x'], port: %d, protocol: tcp, forwarding: ipip, island: a}\n", i, i%200+1, i+1, 1000+i)
		}
		return b.String()
	}
	manyBackends := func() string {
		var b strings.Builder
		b.WriteString("dataplane: {interfaces: [eth0], source_v4: 198.51.100.1, source_v6: '2001:db8:1::1'}\n")
		b.WriteString("islands: #<\n  - name: a\n    nodes:\n")
		for i := range 2049 {
			fmt.Fprintf(&b, "      - {name: n%d, addresses: [10.1.%d.%d, 'fd00::%x']}\n", i, i/250, i%250+1, i+1)
		}
		b.WriteString("services:\n  - {name: s, vips: [203.0.113.10], protocol: imap, forwarding: ipip, island: a}\n")
		return b.String()
	}
	islandBackends := func() string {
		var b strings.Builder
		b.WriteString("dataplane: {interfaces: [eth0], source_v4: 198.51.100.1}\n")
		b.WriteString("islands:\n  - name: a\n    nodes:\n")
		for i := range 1100 {
			fmt.Fprintf(&b, "      - {name: n%d, addresses: [10.1.%d.%d]}\n", i, i/250, i%250+1)
		}
		b.WriteString("services: #<\n")
		for i, p := range []string{"imap", "imaps", "pop3", "pop3s"} {
			fmt.Fprintf(&b, "  - {name: %s, vips: [203.0.113.%d], protocol: %s, forwarding: ipip, island: a}\n", p, i+1, p)
		}
		return b.String()
	}
	cases := []badCase{
		{"empty file", "", 1, "the file is empty"},
		{"only comments", "# nothing here\n", 1, "the file is empty"},
		{"null document", "---\n~\n", 2, "the file is empty"},
		{"not a mapping", "- a\n- b\n", 1, "the file holds a list, not a mapping"},
		{"scalar document", "hello\n", 1, "the file holds a single value"},
		{"syntax error", edit(t, "    protocol: imap\n", "    protocol: imap: x #<\n"), 0, "YAML syntax error"},
		{"tab indentation", edit(t, "    forwarding: ipip\n", "\tforwarding: ipip #<\n"), 0, "tabs"},
		{"second document", base + "---\nfoo: 1 #<\n", 0, "a second YAML document"},
		{"unknown key with suggestion", base + "health:\n  intervall: 2s #<\n", 0, `unknown key "intervall" in health; did you mean "interval"?`},
		{"unknown top-level key", strings.Replace(base, "services:\n", "servics: #<\n", 1), 0, `unknown key "servics" at the top level; did you mean "services"?`},
		{"unknown key in a service", edit(t, "    island: a\n", "    island: a\n    colour: red #<\n"), 0, `unknown key "colour" in service imap-a; remove it`},
		{"unknown key in service health", edit(t, "    island: a\n", "    island: a\n    health: {chek: tcp} #<\n"), 0, `unknown key "chek" in health of service imap-a; did you mean "check"?`},
		{"duplicate key", edit(t, "    forwarding: ipip\n", "    forwarding: ipip\n    protocol: pop3 #<\n"), 0, `duplicate key "protocol" in service imap-a (first at line 14)`},
		{"wrong type", base + "health:\n  rise: abc #<\n", 0, `health.rise: got "abc", but it must be a whole number from 1 to 100`},
		{"duration without unit", base + "health:\n  interval: 2 #<\n", 0, "health.interval: got 2, but it must be a duration with a unit"},
		{"negative port", edit(t, "    protocol: imap\n", "    protocol: imap\n    port: -1 #<\n"), 0, "service imap-a: port: got -1, but it must be a port number from 1 to 65535"},
		{"non-integer port", edit(t, "    protocol: imap\n", "    protocol: imap\n    port: 143.5 #<\n"), 0, "service imap-a: port: got 143.5, but it must be a port number"},
		{"port out of range", edit(t, "    protocol: imap\n", "    protocol: imap\n    port: 70000 #<\n"), 0, "port: got 70000"},
		{"port 0", edit(t, "    protocol: imap\n", "    protocol: imap\n    port: 0 #<\n"), 0, "port 0 cannot be used"},
		{"octal port", edit(t, "    protocol: imap\n", "    protocol: imap\n    port: 0143 #<\n"), 0, "leading zero"},
		{"quoted number", edit(t, "    protocol: imap\n", "    protocol: imap\n    port: \"143\" #<\n"), 0, "remove the quotes"},
		{"hash_seed too large", edit(t, "  source_v4: 198.51.100.1\n", "  source_v4: 198.51.100.1\n  hash_seed: 0x1ffffffff #<\n"), 0, "dataplane.hash_seed: got 0x1ffffffff, but it must be a 32-bit number"},
		{"interfaces not a list", edit(t, "  interfaces: [eth0]\n", "  interfaces: eth0 #<\n"), 0, `dataplane.interfaces: got "eth0", but it must be a list, such as [eth0]`},
		{"empty list entry", edit(t, "  - name: imap-a\n", "  - #<\n  - name: imap-a\n"), 0, "services[0]: the entry is empty"},
		{"mode unknown", edit(t, "  interfaces: [eth0]\n", "  mode: xpd #<\n  interfaces: [eth0]\n"), 0, `dataplane.mode: "xpd" is not a mode`},
		{"xdp without interfaces", edit(t, "  interfaces: [eth0]\n", "  interfaces: [] #<\n"), 0, "dataplane.interfaces: no interface is given"},
		{"no dataplane section", strings.Replace(strings.Replace(base, "dataplane:\n  interfaces: [eth0]\n  source_v4: 198.51.100.1\n", "", 1), "ipip", "l2dsr", 1), 1, "dataplane.interfaces: no interface is given"},
		{"bad interface name", edit(t, "  interfaces: [eth0]\n", "  interfaces: [eth0, a/b] #<\n"), 0, `dataplane.interfaces: "a/b" contains '/'`},
		{"long interface name", edit(t, "  interfaces: [eth0]\n", "  interfaces: [averyveryverylongname] #<\n"), 0, "longer than 15 characters"},
		{"relative pin_path", edit(t, "  interfaces: [eth0]\n", "  interfaces: [eth0]\n  pin_path: bpf/atoll #<\n"), 0, "dataplane.pin_path: \"bpf/atoll\" is not an absolute path"},
		{"conntrack too small", edit(t, "  interfaces: [eth0]\n", "  interfaces: [eth0]\n  conntrack_size: 100 #<\n"), 0, "dataplane.conntrack_size: 100 is out of range; use 1024 to 67108864"},
		{"ring_size not prime", edit(t, "  interfaces: [eth0]\n", "  interfaces: [eth0]\n  ring_size: 65536 #<\n"), 0, "dataplane.ring_size: 65536 is not prime; Maglev needs a prime size: use 65537"},
		{"ring_size too large", edit(t, "  interfaces: [eth0]\n", "  interfaces: [eth0]\n  ring_size: 16777259 #<\n"), 0, "is too large; use a prime up to 16777213"},
		{"ring_size below island", edit(t, "  interfaces: [eth0]\n", "  interfaces: [eth0]\n  ring_size: 2 #<\n"), 0, "dataplane.ring_size: 2 is not larger than the 2 nodes of island a"},
		{"source_v4 is IPv6", edit(t, "  source_v4: 198.51.100.1\n", "  source_v4: 198.51.100.1\n  source_v6: 198.51.100.2 #<\n"), 0, "dataplane.source_v6: 198.51.100.2 is not an IPv6 address; put the LB's IPv6 address here (or use source_v4)"},
		{"source_v4 wrong family", edit(t, "  source_v4: 198.51.100.1\n", "  source_v4: 2001:db8::1 #<\n"), 0, "dataplane.source_v4: 2001:db8::1 is not an IPv4 address; put the LB's IPv4 address here (or use source_v6)"},
		{"source is a VIP", edit(t, "  source_v4: 198.51.100.1\n", "  source_v4: 203.0.113.10 #<\n"), 0, "is a VIP of service imap-a"},
		{"interval too short", base + "health:\n  interval: 50ms #<\n", 0, "health.interval: 50ms is too short; use 100ms or more"},
		{"timeout not below interval", base + "health:\n  interval: 1s\n  timeout: 1s #<\n", 0, "health.timeout: 1s is not shorter than health.interval 1s"},
		{"default timeout not below interval", base + "health: #<\n  interval: 500ms\n", 0, "health.timeout: 1s (the default) is not shorter than health.interval 500ms"},
		{"jitter not below interval", base + "health:\n  jitter: 2s #<\n", 0, "health.jitter: 2s is not shorter than health.interval 2s"},
		{"negative jitter", base + "health:\n  jitter: -1s #<\n", 0, "health.jitter: -1s is negative"},
		{"rise out of range", base + "health:\n  rise: 0 #<\n", 0, "health.rise: 0 is out of range; use 1 to 100"},
		{"concurrency out of range", base + "health:\n  concurrency: 5000 #<\n", 0, "health.concurrency: 5000 is out of range; use 1 to 4096"},
		{"relative ca_file", base + "health:\n  tls:\n    ca_file: ca.pem #<\n", 0, `health.tls.ca_file: "ca.pem" is not an absolute path`},
		{"missing ca_file", base + "health:\n  tls:\n    ca_file: /nonexistent/ca.pem #<\n", 0, "no such file or directory"},
		{"metrics listen without port", base + "metrics:\n  listen: 127.0.0.1 #<\n", 0, `metrics.listen: "127.0.0.1" is not host:port`},
		{"metrics listen bare IPv6", base + "metrics:\n  listen: \"::1:9742\" #<\n", 0, "needs brackets"},
		{"relative api socket", base + "api:\n  socket: atoll.sock #<\n", 0, `api.socket: "atoll.sock" is not an absolute file path`},
		{"no islands", strings.Replace(base, "islands:\n  - name: a\n    nodes:\n      - name: n1\n        addresses: [198.51.100.11]\n      - name: n2\n        addresses: [198.51.100.12]\n", "islands: [] #<\n", 1), 0, "islands: none is defined"},
		{"bad island name", edit(t, "  - name: a\n", "  - name: A_1 #<\n"), 0, `island "A_1": the name must be 1 to 32 lower-case letters`},
		{"duplicate island", edit(t, "services:\n", "  - name: a #<\n    nodes: [{name: n3, addresses: [198.51.100.13]}]\nservices:\n"), 0, "island a is defined twice (first at line 5)"},
		{"island without nodes", edit(t, "services:\n", "  - name: b\n    nodes: [] #<\nservices:\n"), 0, "island b has no nodes"},
		{"node in two islands", edit(t, "services:\n", "  - name: b\n    nodes:\n      - name: n1 #<\n        addresses: [198.51.100.13]\nservices:\n"), 0, "node n1 is also in island a (line 7); a node belongs to one island — rename one of them"},
		{"node twice in one island", edit(t, "      - name: n2\n", "      - name: n1 #<\n"), 0, "node n1 appears twice in island a (first at line 7)"},
		{"bad node name", edit(t, "      - name: n2\n", "      - name: N2.example #<\n"), 0, `node "N2.example": the name must be 1 to 63`},
		{"node without address", edit(t, "        addresses: [198.51.100.12]\n", "        addresses: [] #<\n"), 0, "node n2: no address is given"},
		{"node two IPv4 addresses", edit(t, "        addresses: [198.51.100.12]\n", "        addresses: [198.51.100.12, 198.51.100.13] #<\n"), 0, "node n2: 198.51.100.12 and 198.51.100.13 are both IPv4; give at most one address per family"},
		{"node three addresses", edit(t, "        addresses: [198.51.100.12]\n", "        addresses: [198.51.100.12, 198.51.100.13, '2001:db8::1'] #<\n"), 0, "node n2: 3 addresses are given; give at most two"},
		{"node address invalid", edit(t, "        addresses: [198.51.100.12]\n", "        addresses: [198.51.100.300] #<\n"), 0, `node n2: address "198.51.100.300" is not an IP address`},
		{"node address duplicated", edit(t, "        addresses: [198.51.100.12]\n", "        addresses: [198.51.100.11] #<\n"), 0, "node n2: address 198.51.100.11 is already used by node n1 (line 8)"},
		{"node address is a VIP", edit(t, "        addresses: [198.51.100.12]\n", "        addresses: [203.0.113.10] #<\n"), 0, "node n2: address 203.0.113.10 is a VIP of service imap-a"},
		{"weight too large", edit(t, "        addresses: [198.51.100.12]\n", "        addresses: [198.51.100.12]\n        weight: 2000 #<\n"), 0, "node n2: weight 2000 is too large; use 0 to 1000"},
		{"ports unknown protocol", edit(t, "        addresses: [198.51.100.12]\n", "        addresses: [198.51.100.12]\n        ports: {imapp: 10143} #<\n"), 0, `node n2: ports: "imapp" is not a protocol (did you mean "imap"?)`},
		{"ports negative", edit(t, "        addresses: [198.51.100.12]\n", "        addresses: [198.51.100.12]\n        ports: {imap: -5} #<\n"), 0, "node n2: ports.imap: got -5, but it must be a port number"},
		{"no services", strings.Replace(base, "services:\n  - name: imap-a\n    vips: [203.0.113.10]\n    protocol: imap\n    forwarding: ipip\n    island: a\n", "services: #<\n", 1), 0, "services: none is defined"},
		{"bad service name", edit(t, "  - name: imap-a\n", "  - name: imap_a #<\n"), 0, `service "imap_a": the name must be`},
		{"duplicate service", base + "  - name: imap-a #<\n    vips: [203.0.113.11]\n    protocol: imap\n    forwarding: ipip\n    island: a\n", 0, "service imap-a is defined twice (first at line 12)"},
		{"VIP port used twice", base + "  - name: imap-b\n    vips: [203.0.113.10] #<\n    protocol: imap\n    forwarding: ipip\n    island: a\n", 0, "service imap-b: VIP 203.0.113.10 port 143 is already used by service imap-a (line 13); give this service another VIP or port"},
		{"two VIPs of one family", edit(t, "    vips: [203.0.113.10]\n", "    vips: [203.0.113.10, 203.0.113.11] #<\n"), 0, "service imap-a: 203.0.113.10 and 203.0.113.11 are both IPv4; give at most one VIP per family"},
		{"no VIP", edit(t, "    vips: [203.0.113.10]\n", "    vips: [] #<\n"), 0, "service imap-a: no VIP is given"},
		{"multicast VIP", edit(t, "    vips: [203.0.113.10]\n", "    vips: [224.0.0.1] #<\n"), 0, `VIP "224.0.0.1" is a multicast address`},
		{"protocol missing", edit(t, "    protocol: imap\n", ""), 12, "service imap-a: protocol is missing"},
		{"protocol unknown", edit(t, "    protocol: imap\n", "    protocol: imap4 #<\n"), 0, `service imap-a: protocol "imap4" is not known`},
		{"tcp without port", edit(t, "    protocol: imap\n", "    protocol: tcp\n"), 12, "service imap-a: port is missing; a tcp service has no default port"},
		{"forwarding missing", edit(t, "    forwarding: ipip\n", ""), 12, "service imap-a: forwarding is missing"},
		{"forwarding unknown", edit(t, "    forwarding: ipip\n", "    forwarding: dsr #<\n"), 0, `service imap-a: forwarding "dsr" is not known; use l2dsr or ipip`},
		{"routing unknown", edit(t, "    island: a\n", "    island: a\n    routing: islands #<\n"), 0, `service imap-a: routing "islands" is not known`},
		{"login with island", edit(t, "    island: a\n", "    island: a #<\n    routing: login\n"), 0, "service imap-a: island: a login service has no island"},
		{"island routing without island", edit(t, "    island: a\n", ""), 12, "service imap-a: island is missing; routing island needs the island that serves this VIP (a)"},
		{"island not defined", edit(t, "    island: a\n", "    island: c #<\n"), 0, `service imap-a: island "c" is not defined under islands; define it or use one of: a`},
		{"check unknown", edit(t, "    island: a\n", "    island: a\n    health: {check: http} #<\n"), 0, `health.check "http" is not known`},
		{"check does not fit protocol", edit(t, "    island: a\n", "    island: a\n    health: {check: pop3} #<\n"), 0, "service imap-a: health.check pop3 does not fit protocol imap; use check: imap or tcp"},
		{"starttls with check tcp", edit(t, "    island: a\n", "    island: a\n    health: {check: tcp, tls: starttls} #<\n"), 0, "service imap-a: health.tls starttls needs a protocol check (imap, pop3 or lmtp), not check tcp"},
		{"starttls on imaps", edit(t, "    protocol: imap\n", "    protocol: imaps\n    health:\n      tls: starttls #<\n"), 0, "starttls does not fit protocol imaps"},
		{"implicit on imap", edit(t, "    island: a\n", "    island: a\n    health: {tls: implicit} #<\n"), 0, "implicit does not fit protocol imap"},
		{"plain check on imaps", edit(t, "    protocol: imap\n", "    protocol: imaps\n    health: {tls: none} #<\n"), 0, "health.tls none does not fit protocol imaps"},
		{"through_vip on login", edit(t, "    island: a\n", "    routing: login\n    health:\n      through_vip: true #<\n") + "directory: {static: " + fx.static + "}\n", 0, "health.through_vip cannot be true for routing login"},
		{"through_vip without data plane", edit(t, "  interfaces: [eth0]\n", "  mode: none\n") + "    health: {through_vip: true} #<\n", 0, "dataplane.mode is none"},
		{"ipip without source_v4", edit(t, "  source_v4: 198.51.100.1\n", "  source_v6: 2001:db8:1::1\n"), 12, "service imap-a: ipip reaches nodes n1 (198.51.100.11), n2 (198.51.100.12) over IPv4, but dataplane.source_v4 is not set"},
		{"too many islands", manyIslands(), 0, "islands: 65 islands are defined; the data plane holds at most 64"},
		{"too many service VIPs", manyVIPs(), 0, "services: the services have 258 VIPs in all; the data plane holds at most 256 (service × VIP) entries"},
		{"too many island backends", islandBackends(), 0, "services: the island services need 4400 backends (one per VIP and node of the island); the data plane holds at most 4096"},
		{"too many backends", manyBackends(), 0, "the nodes have 4098 addresses in all; the data plane holds at most 4096 backends"},
	}
	return append(cases, loginBadCases(t, fx)...)
}

func TestBadFiles(t *testing.T) {
	for _, tc := range badCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.line
			if want == 0 {
				want = markedLine(t, tc.yaml)
			}
			cfg, err := Parse("atoll.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.yaml)
			}
			if cfg != nil {
				t.Error("a Config came back with the errors")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, not Errors: %v", err, err)
			}
			if len(errs) != 1 {
				t.Fatalf("want one problem, got %d:\n%v", len(errs), err)
			}
			e := errs[0]
			if e.Line != want || !strings.Contains(e.Msg, tc.msg) || e.File != "atoll.yaml" {
				t.Fatalf("got  %v\nwant atoll.yaml:%d: ...%s...", e, want, tc.msg)
			}
			if got := e.Error(); !strings.HasPrefix(got, fmt.Sprintf("atoll.yaml:%d: ", want)) {
				t.Errorf("Error() = %q", got)
			}
		})
	}
}

// ipip reaches a node at its address of the VIP's family, else at its
// other one (as the reconciler does): the source of that family is needed.
func TestIPv6VIPToIPv4NodeNeedsSourceV4Only(t *testing.T) {
	text := edit(t, "    vips: [203.0.113.10]\n", "    vips: ['2001:db8:f::10', 203.0.113.10]\n")
	if _, err := Parse("atoll.yaml", []byte(text)); err != nil {
		t.Fatal(err)
	}
	// Without source_v4 but with source_v6, the same nodes cannot be
	// reached: they have no IPv6 address.
	text = strings.Replace(text, "  source_v4: 198.51.100.1\n", "  source_v6: 2001:db8:1::1\n", 1)
	_, err := Parse("atoll.yaml", []byte(text))
	if err == nil || !strings.Contains(err.Error(), "dataplane.source_v4 is not set") {
		t.Fatalf("got %v", err)
	}
	// A node with both families needs the source of the VIP's family.
	text = strings.Replace(text, "        addresses: [198.51.100.11]\n", "        addresses: [198.51.100.11, '2001:db8:1::11']\n", 1)
	text = strings.Replace(text, "        addresses: [198.51.100.12]\n", "        addresses: [198.51.100.12, '2001:db8:1::12']\n", 1)
	_, err = Parse("atoll.yaml", []byte(text))
	if err == nil || !strings.Contains(err.Error(), "ipip reaches nodes n1 (198.51.100.11), n2 (198.51.100.12) over IPv4") {
		t.Fatalf("got %v", err)
	}
	if strings.Contains(err.Error(), "source_v6 is not set") {
		t.Fatalf("IPv6 is covered: %v", err)
	}
}

func TestAllProblemsSortedByLine(t *testing.T) {
	text := `islands:
  - name: a
    nodes:
      - name: n1
        addresses: [198.51.100.11, 198.51.100.12]
services:
  - name: imap-a
    vips: [203.0.113.10]
    protocol: imap
    forwarding: ipip
    island: b
dataplane:
  interfaces: [eth0]
  source_v4: 198.51.100.1
  ring_size: 1000
`
	_, err := Parse("x.yaml", []byte(text))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("got %v", err)
	}
	want := []struct {
		line int
		msg  string
	}{
		{5, "node n1: 198.51.100.11 and 198.51.100.12 are both IPv4"},
		{11, `service imap-a: island "b" is not defined under islands`},
		{15, "dataplane.ring_size: 1000 is not prime"},
	}
	if len(errs) != len(want) {
		t.Fatalf("want %d problems, got:\n%v", len(want), err)
	}
	for i, w := range want {
		if errs[i].Line != w.line || !strings.Contains(errs[i].Msg, w.msg) {
			t.Errorf("problem %d: got %v, want line %d with %q", i, errs[i], w.line, w.msg)
		}
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "x.yaml:5: ") || !strings.HasPrefix(lines[2], "x.yaml:15: ") {
		t.Errorf("Error() =\n%s", err)
	}
}

// Type errors and semantic problems are reported together, without a
// consequence of the type error (the port that could not be read is not
// also "missing").
func TestTypeAndSemanticProblemsTogether(t *testing.T) {
	text := edit(t, "    protocol: imap\n", "    protocol: tcp\n    port: abc\n") + "health:\n  rise: 0\n  intervall: 1s\n"
	_, err := Parse("atoll.yaml", []byte(text))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 3 {
		t.Fatalf("want 3 problems, got:\n%v", err)
	}
	for i, w := range []string{"port: got \"abc\"", "health.rise: 0 is out of range", `unknown key "intervall"`} {
		if !strings.Contains(errs[i].Msg, w) {
			t.Errorf("problem %d: %v, want %q", i, errs[i], w)
		}
	}
}

func TestDefaults(t *testing.T) {
	text := `dataplane:
  interfaces: [eth0]
  source_v4: 198.51.100.1
islands:
  - name: a
    nodes:
      - name: n1
        addresses: [198.51.100.11]
services:
  - name: s
    vips: [203.0.113.10]
    protocol: imaps
    forwarding: ipip
    island: a
`
	cfg, err := Parse("atoll.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Dataplane
	if d.Mode != ModeXDP || d.PinPath != "/sys/fs/bpf/atoll" || d.ConntrackSize != 1048576 || d.RingSize != 65537 ||
		d.HashSeed != 0x61746f6c || d.SourceV6.IsValid() || d.SourceV4 != netip.MustParseAddr("198.51.100.1") || d.Line != 1 {
		t.Errorf("dataplane: %+v", d)
	}
	h := cfg.Health
	if h.Interval != 2*time.Second || h.Timeout != time.Second || h.Jitter != 200*time.Millisecond ||
		h.Rise != 2 || h.Fall != 3 || h.Concurrency != 64 || h.TLS != (HealthTLS{}) || h.Line != 0 {
		t.Errorf("health: %+v", h)
	}
	if cfg.Metrics != (Metrics{Listen: "127.0.0.1:9742"}) {
		t.Errorf("metrics: %+v", cfg.Metrics)
	}
	if cfg.API != (API{Socket: "/run/atoll/atoll.sock"}) {
		t.Errorf("api: %+v", cfg.API)
	}
	n := cfg.Islands[0].Nodes[0]
	if n.Weight != 1 || n.Ports == nil || len(n.Ports) != 0 || n.Line != 7 || cfg.Islands[0].Line != 5 {
		t.Errorf("node: %+v", n)
	}
	s := cfg.Services[0]
	want := Service{Name: "s", VIPs: []netip.Addr{netip.MustParseAddr("203.0.113.10")}, Port: 993, Protocol: ProtoIMAPS,
		Forwarding: ForwardIPIP, Routing: RouteIsland, Island: "a",
		Health: ServiceHealth{Check: CheckIMAP, TLS: TLSImplicit, ThroughVIP: true}, Line: 10}
	if fmt.Sprint(s) != fmt.Sprint(want) {
		t.Errorf("service:\n got %+v\nwant %+v", s, want)
	}
	if cfg.File != "atoll.yaml" {
		t.Errorf("File = %q", cfg.File)
	}

	// Defaults that follow other values: jitter from the interval, port
	// and check from the protocol, through_vip from routing and mode.
	text2 := strings.Replace(text, "  interfaces: [eth0]\n", "  mode: none\n", 1) +
		"  - {name: p, vips: [203.0.113.10], protocol: pop3, forwarding: l2dsr, routing: login}\n" +
		"  - {name: l, vips: [203.0.113.10], protocol: lmtp, forwarding: l2dsr, island: a}\n" +
		"health:\n  interval: 5s\n  timeout: 2s\n" +
		"directory: {static: " + makeFiles(t).static + "}\n"
	cfg, err = Parse("atoll.yaml", []byte(text2))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Health.Jitter != 500*time.Millisecond {
		t.Errorf("jitter = %v", cfg.Health.Jitter)
	}
	p, l := cfg.Services[1], cfg.Services[2]
	if p.Port != 110 || p.Health != (ServiceHealth{Check: CheckPOP3, TLS: TLSNone}) || p.Island != "" {
		t.Errorf("pop3: %+v", p)
	}
	if l.Port != 24 || l.Health != (ServiceHealth{Check: CheckLMTP, TLS: TLSNone}) {
		t.Errorf("lmtp (mode none: not through the VIP): %+v", l)
	}
	if cfg.Services[0].Health.ThroughVIP {
		t.Error("through_vip defaults to false without a data plane")
	}
}

func TestExample(t *testing.T) {
	cfg, err := Load("../../deploy/atoll.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Islands) != 2 || len(cfg.Services) != 13 {
		t.Fatalf("%d islands, %d services", len(cfg.Islands), len(cfg.Services))
	}
	for _, isl := range cfg.Islands {
		if len(isl.Nodes) != 2 {
			t.Errorf("island %s has %d nodes", isl.Name, len(isl.Nodes))
		}
	}
	n, isl := cfg.NodeByName("dbmail-right-b")
	if n == nil || isl.Name != "b" || n.Addresses[0] != netip.MustParseAddr("198.51.100.14") || n.Addresses[1] != netip.MustParseAddr("2001:db8:1::14") {
		t.Errorf("dbmail-right-b: %+v in %+v", n, isl)
	}
	if a := cfg.IslandByName("a"); a == nil || a.Nodes[0].Name != "dbmail-left-a" {
		t.Errorf("island a: %+v", a)
	}
	if cfg.IslandByName("c") != nil {
		t.Error("island c found")
	}
	if n, isl := cfg.NodeByName("nope"); n != nil || isl != nil {
		t.Error("node nope found")
	}
	d := cfg.Dataplane
	if d.SourceV4 != netip.MustParseAddr("198.51.100.1") || d.SourceV6 != netip.MustParseAddr("2001:db8:1::1") ||
		len(d.Interfaces) != 1 || d.Interfaces[0] != "eth0" || d.HashSeed != 0x61746f6c {
		t.Errorf("dataplane: %+v", d)
	}
	byName := map[string]*Service{}
	for i := range cfg.Services {
		byName[cfg.Services[i].Name] = &cfg.Services[i]
	}
	imap := byName["imap"]
	if imap == nil || imap.Routing != RouteLogin || imap.Port != 143 || imap.Island != "" ||
		imap.VIPs[0] != netip.MustParseAddr("203.0.113.10") || imap.Health.ThroughVIP {
		t.Errorf("imap: %+v", imap)
	}
	if s := byName["lmtp"]; s == nil || s.Port != 24 || s.Routing != RouteLogin {
		t.Errorf("lmtp: %+v", s)
	}
	if s := byName["pop3"]; s == nil || s.Port != 110 {
		t.Errorf("pop3: %+v", s)
	}
	for _, name := range []string{"imap", "imaps", "pop3", "pop3s", "lmtp"} {
		for _, island := range []string{"a", "b"} {
			s := byName[name+"-"+island]
			if s == nil || s.Island != island || s.Routing != RouteIsland || s.Forwarding != ForwardIPIP || !s.Health.ThroughVIP {
				t.Errorf("%s-%s: %+v", name, island, s)
			}
		}
	}
	if s := byName["imaps-b"]; s.Port != 993 || s.VIPs[1] != netip.MustParseAddr("2001:db8:f::12") || s.Health.TLS != TLSImplicit {
		t.Errorf("imaps-b: %+v", s)
	}

	p := cfg.Proxy
	if p.Hostname != "mail.example.org" || p.TLS != (ProxyTLS{}) || p.RequireTLS || p.PreLoginTimeout != time.Minute ||
		p.IdleTimeout != 0 || p.MaxConnectionsPerSource != 50 || p.AuthThrottle.MaxDelay != 30*time.Second ||
		len(p.SourceAddresses) != 1 || p.SourceAddresses[0] != netip.MustParseAddr("198.51.100.1") || p.DialTimeout != 5*time.Second || p.Line == 0 {
		t.Errorf("proxy: %+v", p)
	}
	dir := cfg.Directory
	if !cfg.HasDirectory() || dir.Static != "" || dir.LDAP == nil || dir.Names != (Names{Lowercase: true, NodeLogin: NodeLoginKeep}) {
		t.Fatalf("directory: %+v", dir)
	}
	if l := dir.LDAP; len(l.URLs) != 2 || l.URLs[1] != "ldaps://198.51.100.31" || l.BindDN != "" || l.PasswordFile != "" ||
		l.Filter != "(|(uid=%u)(mail=%u))" || l.Attribute != "mailIsland" || l.StaleTTL != time.Hour {
		t.Errorf("ldap: %+v", l)
	}
	for _, isl := range cfg.Islands {
		if isl.Proxy != (IslandProxy{ClientAddress: ClientAddrNone, TLS: TLSNone}) {
			t.Errorf("island %s proxy: %+v", isl.Name, isl.Proxy)
		}
	}
	var login []string
	for _, s := range cfg.LoginServices() {
		login = append(login, s.Name)
	}
	if strings.Join(login, " ") != "imap pop3 lmtp" {
		t.Errorf("login services: %v", login)
	}
}

// The example's commented alternatives load too: a static directory, an
// LDAP bind with a password file, and TLS for clients.
func TestExampleAlternatives(t *testing.T) {
	data, err := os.ReadFile("../../deploy/atoll.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fx := makeFiles(t)
	text := string(data)
	for _, r := range [][2]string{
		{"  # tls:\n  #   cert_file: /etc/atoll/proxy.crt\n  #   key_file: /etc/atoll/proxy.key\n", "  tls:\n    cert_file: " + fx.cert + "\n    key_file: " + fx.key + "\n"},
		{"  require_tls: false\n", "  require_tls: true\n"},
		{"    # bind_dn: cn=atoll,dc=example,dc=org\n    # password_file: /etc/atoll/ldap.secret\n", "    bind_dn: cn=atoll,dc=example,dc=org\n    password_file: " + fx.secret + "\n"},
	} {
		text = editText(t, text, r[0], r[1])
	}
	cfg, err := Parse("atoll.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Proxy.TLS.KeyFile != fx.key || !cfg.Proxy.RequireTLS || cfg.Directory.LDAP.PasswordFile != fx.secret {
		t.Errorf("proxy %+v directory %+v", cfg.Proxy, cfg.Directory.LDAP)
	}

	// A static directory instead of LDAP: the ldap block goes.
	static := editText(t, string(data), "  # static: /etc/atoll/islands.map\n", "  static: "+fx.static+"\n")
	start, end := strings.Index(static, "  ldap:\n"), strings.Index(static, "  # What is done to a name")
	if start < 0 || end < start {
		t.Fatal("the example's ldap block is not where expected")
	}
	cfg, err = Parse("atoll.yaml", []byte(static[:start]+static[end:]))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Directory.Static != fx.static || cfg.Directory.LDAP != nil {
		t.Errorf("directory: %+v", cfg.Directory)
	}
}

func TestValueForms(t *testing.T) {
	for _, tc := range []struct {
		seed string
		want uint32
	}{{"0x61746f6c", 0x61746f6c}, {"1635020652", 1635020652}, {"0", 0}, {"0xffffffff", 0xffffffff}, {"4294967295", 4294967295}} {
		text := edit(t, "  interfaces: [eth0]\n", "  interfaces: [eth0]\n  hash_seed: "+tc.seed+"\n")
		cfg, err := Parse("atoll.yaml", []byte(text))
		if err != nil {
			t.Fatalf("hash_seed %s: %v", tc.seed, err)
		}
		if cfg.Dataplane.HashSeed != tc.want {
			t.Errorf("hash_seed %s = %#x", tc.seed, cfg.Dataplane.HashSeed)
		}
	}
	for _, bad := range []string{"-1", "4294967296", "0x100000000", "'0x10'", "1.5", "abc"} {
		text := edit(t, "  interfaces: [eth0]\n", "  interfaces: [eth0]\n  hash_seed: "+bad+"\n")
		if _, err := Parse("atoll.yaml", []byte(text)); err == nil || !strings.Contains(err.Error(), "atoll.yaml:3: dataplane.hash_seed") {
			t.Errorf("hash_seed %s: %v", bad, err)
		}
	}

	text := base + `health:
  interval: 1m30s
  timeout: 1500ms
  jitter: 0s
  rise: 1
  fall: 100
  concurrency: 4096
  tls: {ca_file: "", insecure_skip_verify: true, server_name: imap.example.org}
metrics: {listen: ""}
api: {socket: /tmp/a.sock}
`
	text = strings.Replace(text, "        addresses: [198.51.100.12]\n",
		"        addresses: ['2001:db8:1::12', 198.51.100.12]\n        weight: 0\n        ports: {imap: 10143, lmtp: 2424, pop3: 65535}\n", 1)
	cfg, err := Parse("atoll.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	h := cfg.Health
	if h.Interval != 90*time.Second || h.Timeout != 1500*time.Millisecond || h.Jitter != 0 || h.Rise != 1 || h.Fall != 100 || h.Concurrency != 4096 {
		t.Errorf("health: %+v", h)
	}
	if h.TLS != (HealthTLS{InsecureSkipVerify: true, ServerName: "imap.example.org"}) {
		t.Errorf("tls: %+v", h.TLS)
	}
	if cfg.Metrics.Listen != "" || cfg.API.Socket != "/tmp/a.sock" {
		t.Errorf("metrics %+v api %+v", cfg.Metrics, cfg.API)
	}
	n, _ := cfg.NodeByName("n2")
	if n.Weight != 0 || len(n.Ports) != 3 || n.Ports["imap"] != 10143 || n.Ports["lmtp"] != 2424 || n.Ports["pop3"] != 65535 {
		t.Errorf("node: %+v", n)
	}
	if a, ok := n.Address(4); !ok || a != netip.MustParseAddr("198.51.100.12") {
		t.Errorf("Address(4) = %v %v", a, ok)
	}
	if a, ok := n.Address(6); !ok || a != netip.MustParseAddr("2001:db8:1::12") {
		t.Errorf("Address(6) = %v %v", a, ok)
	}
	n1, _ := cfg.NodeByName("n1")
	if _, ok := n1.Address(6); ok {
		t.Error("n1 has no IPv6 address")
	}
	s := &cfg.Services[0]
	if s.NodePort(n) != 10143 || s.NodePort(n1) != 143 {
		t.Errorf("NodePort: %d %d", s.NodePort(n), s.NodePort(n1))
	}
}

func TestCAFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "ca.pem")
	cert := makeTestCert(t)
	if err := os.WriteFile(good, cert, 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "x.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse("atoll.yaml", []byte(base+"health: {tls: {ca_file: "+good+"}}\n")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{notPEM, dir} {
		_, err := Parse("atoll.yaml", []byte(base+"health: {tls: {ca_file: "+bad+"}}\n"))
		if err == nil || !strings.Contains(err.Error(), "atoll.yaml:17: health.tls.ca_file: ") {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

// makeTestCert returns a self-signed certificate in PEM.
func makeTestCert(t testing.TB) []byte {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "atoll test CA"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IsCA:         true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("../../deploy/atoll.example.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(base))
	for _, tc := range badCases(f) {
		if len(tc.yaml) < 4096 {
			f.Add([]byte(tc.yaml))
		}
	}
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("islands: &i\n  - name: a\n    nodes: *i\n"))
	f.Add([]byte("services:\n  - <<: {name: a}\n    <<: {name: b}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("f.yaml", data)
		if (cfg == nil) == (err == nil) {
			t.Fatalf("cfg %v, err %v", cfg, err)
		}
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %T %v", err, err)
			}
			for i, e := range errs {
				if e.Line < 1 || e.Msg == "" || (i > 0 && errs[i-1].Line > e.Line) {
					t.Fatalf("bad error list:\n%v", err)
				}
			}
		}
	})
}

// testFiles are the files the proxy and directory cases point at.
type testFiles struct {
	dir      string
	static   string // an island map (any content)
	cert     string // a certificate...
	key      string // ...and its key
	otherKey string // a key of another certificate
	ca       string // a CA bundle
	secret   string // a password
	empty    string // an empty file
}

func makeFiles(t testing.TB) testFiles {
	t.Helper()
	dir := t.TempDir()
	fx := testFiles{dir: dir}
	cert, key := makeTestPair(t)
	_, otherKey := makeTestPair(t)
	for _, f := range []struct {
		dst  *string
		name string
		data []byte
	}{
		{&fx.static, "islands.map", []byte("example.org a\n")},
		{&fx.cert, "proxy.crt", cert},
		{&fx.key, "proxy.key", key},
		{&fx.otherKey, "other.key", otherKey},
		{&fx.ca, "ca.pem", makeTestCert(t)},
		{&fx.secret, "ldap.secret", []byte("s3cret\n")},
		{&fx.empty, "empty", []byte("\n")},
	} {
		*f.dst = filepath.Join(dir, f.name)
		if err := os.WriteFile(*f.dst, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return fx
}

// makeTestPair returns a self-signed certificate and its key, in PEM.
func makeTestPair(t testing.TB) (cert, key []byte) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "mail.example.org"},
		DNSNames:     []string{"mail.example.org"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8})
}

// editText replaces old (which must occur once) in text.
func editText(t testing.TB, text, old, new string) string {
	t.Helper()
	if strings.Count(text, old) != 1 {
		t.Fatalf("%q does not occur once in:\n%s", old, text)
	}
	return strings.Replace(text, old, new, 1)
}

// frontDoor is a login service, appended to base's services.
const frontDoor = `  - name: front
    vips: [203.0.113.20]
    protocol: imap
    forwarding: ipip
    routing: login
`

// ldapBlock is a valid LDAP directory that the LDAP cases edit.
const ldapBlock = `directory:
  ldap:
    urls: [ldap://198.51.100.30]
    base_dn: ou=people,dc=example,dc=org
    filter: (uid=%u)
    attribute: mailIsland
`

// loginBase is base with a login front door and a static directory: a
// valid file the proxy cases add to.
func loginBase(fx testFiles) string {
	return base + frontDoor + "directory:\n  static: " + fx.static + "\n"
}

func TestLoginBaseIsValid(t *testing.T) {
	fx := makeFiles(t)
	if _, err := Parse("atoll.yaml", []byte(loginBase(fx))); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse("atoll.yaml", []byte(base+frontDoor+ldapBlock)); err != nil {
		t.Fatal(err)
	}
}

func loginBadCases(t testing.TB, fx testFiles) []badCase {
	lb := loginBase(fx)
	proxy := func(text string) string { return lb + "proxy:\n" + text }
	dir := func(text string) string { return base + frontDoor + "directory:\n" + text }
	ldap := func(old, new string) string { return base + frontDoor + editText(t, ldapBlock, old, new) }
	login := func(proto string) string {
		return base + editText(t, frontDoor, "    protocol: imap\n", "    protocol: "+proto+"\n") + "directory: {static: " + fx.static + "}\n"
	}
	return []badCase{
		// proxy
		{"proxy unknown key", proxy("  hostnme: mail.example.org #<\n"), 0, `unknown key "hostnme" in proxy; did you mean "hostname"?`},
		{"proxy hostname", proxy("  hostname: \"mail example\" #<\n"), 0, `proxy.hostname: "mail example" is not a host name`},
		{"proxy not a mapping", lb + "proxy: [a] #<\n", 0, "proxy: got a list, but it must be a mapping"},
		{"proxy cert without key", proxy("  tls: {cert_file: " + fx.cert + "} #<\n"), 0, "proxy.tls: cert_file is set but key_file is not"},
		{"proxy key without cert", proxy("  tls:\n    cert_file: \"\"\n    key_file: " + fx.key + " #<\n"), 0, "proxy.tls: key_file is set but cert_file is not"},
		{"proxy relative cert", proxy("  tls:\n    cert_file: proxy.crt #<\n    key_file: " + fx.key + "\n"), 0, `proxy.tls.cert_file: "proxy.crt" is not an absolute path`},
		{"proxy cert not PEM", proxy("  tls:\n    cert_file: " + fx.static + " #<\n    key_file: " + fx.key + "\n"), 0, "holds no PEM certificate"},
		{"proxy missing key", proxy("  tls:\n    cert_file: " + fx.cert + "\n    key_file: /nonexistent/proxy.key #<\n"), 0, "proxy.tls.key_file: stat /nonexistent/proxy.key: no such file or directory"},
		{"proxy key of another cert", proxy("  tls:\n    cert_file: " + fx.cert + "\n    key_file: " + fx.otherKey + " #<\n"), 0, "proxy.tls.key_file: the certificate and key do not load as a pair (tls: private key does not match public key)"},
		{"proxy cert as key", proxy("  tls:\n    cert_file: " + fx.cert + "\n    key_file: " + fx.cert + " #<\n"), 0, "do not load as a pair"},
		{"require_tls without tls", proxy("  require_tls: true #<\n"), 0, "proxy.require_tls: true needs proxy.tls"},
		{"require_tls not a bool", proxy("  require_tls: maybe #<\n"), 0, `proxy.require_tls: got "maybe", but it must be true or false`},
		{"pre_login_timeout too long", proxy("  pre_login_timeout: 2h #<\n"), 0, "proxy.pre_login_timeout: 2h is out of range; use 1s to 1h"},
		{"pre_login_timeout without unit", proxy("  pre_login_timeout: 60 #<\n"), 0, "proxy.pre_login_timeout: got 60, but it must be a duration with a unit, such as 60s"},
		{"idle_timeout too short", proxy("  idle_timeout: 10m #<\n"), 0, "proxy.idle_timeout: 10m is too short: an IMAP client in IDLE"},
		{"idle_timeout negative", proxy("  idle_timeout: -1h #<\n"), 0, "proxy.idle_timeout: -1h is negative"},
		{"idle_timeout bare zero", proxy("  idle_timeout: 0 #<\n"), 0, "proxy.idle_timeout: got 0, but it must be a duration with a unit, such as 2h (0s: none"},
		{"max_line too small", proxy("  max_line: 100 #<\n"), 0, "proxy.max_line: 100 is out of range; use 512 to 1048576"},
		{"max_line not a number", proxy("  max_line: lots #<\n"), 0, `proxy.max_line: got "lots", but it must be a whole number from 512 to 1048576`},
		{"max_literal too large", proxy("  max_literal: 2000000 #<\n"), 0, "proxy.max_literal: 2000000 is out of range; use 64 to 1048576"},
		{"max_bad_commands zero", proxy("  max_bad_commands: 0 #<\n"), 0, "proxy.max_bad_commands: 0 is out of range; use 1 to 1000"},
		{"max_login_tries too many", proxy("  max_login_tries: 101 #<\n"), 0, "proxy.max_login_tries: 101 is out of range; use 1 to 100"},
		{"max_connections_per_source zero", proxy("  max_connections_per_source: 0 #<\n"), 0, "proxy.max_connections_per_source: 0 is out of range; use 1 to 100000, or -1 for no cap"},
		{"threshold -2", proxy("  auth_throttle:\n    threshold: -2 #<\n"), 0, "proxy.auth_throttle.threshold: -2 is out of range; use 1 to 10000, or -1 to turn the throttle off"},
		{"throttle unknown key", proxy("  auth_throttle:\n    windows: 1m #<\n"), 0, `unknown key "windows" in proxy.auth_throttle; did you mean "window"?`},
		{"window too long", proxy("  auth_throttle:\n    window: 25h #<\n"), 0, "proxy.auth_throttle.window: 25h is out of range; use 1s to 24h"},
		{"base_delay too short", proxy("  auth_throttle:\n    base_delay: 5ms #<\n"), 0, "proxy.auth_throttle.base_delay: 5ms is out of range; use 10ms to 1m"},
		{"max_delay below base_delay", proxy("  auth_throttle:\n    base_delay: 2s\n    max_delay: 1s #<\n"), 0, "proxy.auth_throttle.max_delay: 1s is shorter than base_delay 2s"},
		{"base_delay above default max_delay", proxy("  auth_throttle:\n    base_delay: 45s #<\n"), 0, "proxy.auth_throttle.base_delay: 45s is longer than max_delay 30s (the default); set max_delay too"},
		{"max_delay too long", proxy("  auth_throttle:\n    max_delay: 11m #<\n"), 0, "proxy.auth_throttle.max_delay: 11m is too long; use base_delay (1s) to 10m"},
		{"source address invalid", proxy("  source_addresses: [198.51.100.2, 198.51.100.256] #<\n"), 0, `proxy.source_addresses: "198.51.100.256" is not an IP address`},
		{"source address twice", proxy("  source_addresses:\n    - 198.51.100.2\n    - 198.51.100.2 #<\n"), 0, "proxy.source_addresses: 198.51.100.2 is listed twice (first at line"},
		{"source address is a VIP", proxy("  source_addresses: [203.0.113.20] #<\n"), 0, "proxy.source_addresses: 203.0.113.20 is a VIP of service front (line 17)"},
		{"source address is a node", proxy("  source_addresses: [198.51.100.12] #<\n"), 0, "proxy.source_addresses: 198.51.100.12 is an address of node n2 (line 9)"},
		{"source addresses not a list", proxy("  source_addresses: 198.51.100.2 #<\n"), 0, `proxy.source_addresses: got "198.51.100.2", but it must be a list, such as [198.51.100.2]`},
		{"dial_timeout too short", proxy("  dial_timeout: 50ms #<\n"), 0, "proxy.dial_timeout: 50ms is out of range; use 100ms to 1m"},

		// routing login
		{"login without directory", base + strings.Replace(frontDoor, "  - name: front\n", "  - name: front #<\n", 1), 0, "service front: routing login needs a directory section: the proxy must know which island each user is on"},
		{"lmtp login without directory", base + "  - {name: mx, vips: [203.0.113.20], protocol: lmtp, forwarding: ipip, routing: login} #<\n", 0, "service mx: routing login needs a directory section"},
		{"tcp login", base + "  - name: web\n    vips: [203.0.113.20]\n    port: 80\n    protocol: tcp\n    forwarding: ipip\n    routing: login #<\ndirectory: {static: " + fx.static + "}\n", 0, "service web: routing login needs a protocol users log in with"},
		{"imaps login without proxy tls", login("imaps"), 17, "service front: routing login with protocol imaps needs proxy.tls"},
		{"pop3s login without proxy tls", login("pop3s"), 17, "routing login with protocol pop3s needs proxy.tls"},
		{"misspelt tls is not also missing", login("imaps") + "proxy:\n  tsl: {cert_file: " + fx.cert + "} #<\n", 0, `unknown key "tsl" in proxy; did you mean "tls"?`},
		{"misspelt directory is not also missing", base + frontDoor + "directroy: #<\n  static: " + fx.static + "\n", 0, `unknown key "directroy" at the top level; did you mean "directory"?`},

		// directory
		{"directory empty", base + frontDoor + "directory: #<\n", 0, "directory: neither static nor ldap is given"},
		{"directory names only", base + frontDoor + "directory: #<\n  names: {lowercase: false}\n", 0, "directory: neither static nor ldap is given"},
		{"directory static and ldap", ldap("  ldap:\n", "  static: "+fx.static+"\n  ldap: #<\n"), 0, "directory: static (line 23) and ldap are both given; keep one of them"},
		{"directory unknown key", dir("  statik: " + fx.static + " #<\n"), 0, `unknown key "statik" in directory; did you mean "static"?`},
		{"static relative", dir("  static: islands.map #<\n"), 0, `directory.static: "islands.map" is not an absolute path`},
		{"static missing", dir("  static: /nonexistent/islands.map #<\n"), 0, "directory.static: stat /nonexistent/islands.map: no such file or directory"},
		{"static is a directory", dir("  static: " + fx.dir + " #<\n"), 0, "is not a regular file"},
		{"ldap empty", dir("  ldap: #<\n"), 0, "directory.ldap is empty"},
		{"ldap unknown key", ldap("    base_dn:", "    bsae_dn:"), 25, `unknown key "bsae_dn" in directory.ldap; did you mean "base_dn"?`},
		{"ldap no urls", ldap("    urls: [ldap://198.51.100.30]\n", "    urls: [] #<\n"), 0, "directory.ldap.urls: no URL is given"},
		{"ldap urls missing", ldap("    urls: [ldap://198.51.100.30]\n", ""), 23, "directory.ldap.urls: no URL is given"},
		{"ldap too many urls", ldap("    urls: [ldap://198.51.100.30]\n", "    urls: [ldap://a1, ldap://a2, ldap://a3, ldap://a4, ldap://a5, ldap://a6, ldap://a7, ldap://a8, ldap://a9] #<\n"), 0, "directory.ldap.urls: 9 URLs are given; list at most 8"},
		{"ldap url scheme", ldap("    urls: [ldap://198.51.100.30]\n", "    urls: [ldap://198.51.100.30, http://198.51.100.31] #<\n"), 0, `directory.ldap.urls: "http://198.51.100.31" does not start with ldap:// or ldaps://`},
		{"ldap url with a DN", ldap("    urls: [ldap://198.51.100.30]\n", "    urls:\n      - ldap://198.51.100.30/dc=example,dc=org #<\n"), 0, "has more than a server"},
		{"ldap url bad host", ldap("    urls: [ldap://198.51.100.30]\n", "    urls: [ldap://198.51.100.300] #<\n"), 0, `"ldap://198.51.100.300" has an invalid host`},
		{"ldap url bad port", ldap("    urls: [ldap://198.51.100.30]\n", "    urls: ['ldap://198.51.100.30:0'] #<\n"), 0, "has no valid port"},
		{"ldap url IPv6 without brackets", ldap("    urls: [ldap://198.51.100.30]\n", "    urls: ['ldap://2001:db8::30'] #<\n"), 0, "has an IPv6 address without brackets"},
		{"ldap url IPv6 not a URL", ldap("    urls: [ldap://198.51.100.30]\n", "    urls: ['ldap://fe80::a'] #<\n"), 0, "is not a URL (an IPv6 address needs brackets); write ldap://HOST[:PORT] or ldaps://HOST[:PORT], with an IPv6 address in brackets such as ldap://[2001:db8::30]"},
		{"ldap url twice", ldap("    urls: [ldap://198.51.100.30]\n", "    urls:\n      - ldap://LDAP1.example.org\n      - ldap://ldap1.example.org:389 #<\n"), 0, "directory.ldap.urls: ldap://ldap1.example.org:389 is the same server as the URL at line 25"},
		{"start_tls with only ldaps", ldap("    urls: [ldap://198.51.100.30]\n", "    urls: [ldaps://198.51.100.30, 'ldaps://[2001:db8::30]']\n    start_tls: true #<\n"), 0, "directory.ldap.start_tls: every URL is ldaps://"},
		{"ldap ca_file missing", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    ca_file: /nonexistent/ca.pem #<\n"), 0, "directory.ldap.ca_file: stat /nonexistent/ca.pem: no such file or directory"},
		{"bind_dn without password_file", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    bind_dn: cn=atoll,dc=example,dc=org #<\n"), 0, "directory.ldap: bind_dn is set but password_file is not"},
		{"password_file without bind_dn", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    password_file: "+fx.secret+" #<\n"), 0, "directory.ldap.password_file: without bind_dn the bind is anonymous"},
		{"password_file empty", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    bind_dn: cn=atoll,dc=example,dc=org\n    password_file: "+fx.empty+" #<\n"), 0, "is empty (an empty password binds without authentication)"},
		{"password_file relative", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    bind_dn: cn=atoll,dc=example,dc=org\n    password_file: ldap.secret #<\n"), 0, `directory.ldap.password_file: "ldap.secret" is not an absolute path`},
		{"bind_dn not a DN", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    bind_dn: atoll #<\n    password_file: "+fx.secret+"\n"), 0, `directory.ldap.bind_dn: "atoll" is not a DN`},
		{"base_dn missing", ldap("    base_dn: ou=people,dc=example,dc=org\n", ""), 23, "directory.ldap: base_dn is missing"},
		{"base_dn not a DN", ldap("    base_dn: ou=people,dc=example,dc=org\n", "    base_dn: people #<\n"), 0, `directory.ldap.base_dn: "people" is not a DN`},
		{"filter missing", ldap("    filter: (uid=%u)\n", ""), 23, "directory.ldap: filter is missing"},
		{"filter without name", ldap("    filter: (uid=%u)\n", "    filter: (objectClass=person) #<\n"), 0, "holds no %u, %n or %d, so every user would get the same entry"},
		{"filter without parentheses", ldap("    filter: (uid=%u)\n", "    filter: uid=%u #<\n"), 0, `directory.ldap.filter: "uid=%u" does not start with '('`},
		{"filter unbalanced", ldap("    filter: (uid=%u)\n", "    filter: \"(|(uid=%u)(mail=%u)\" #<\n"), 0, "has 1 '(' more than ')'"},
		{"filter extra parenthesis", ldap("    filter: (uid=%u)\n", "    filter: (uid=%u)) #<\n"), 0, "goes on after the parenthesis that closes its first '('"},
		{"filter two parts", ldap("    filter: (uid=%u)\n", "    filter: (uid=%u)(mail=%u) #<\n"), 0, "combine the parts, such as (|(uid=%u)(mail=%u))"},
		{"filter bad escape", ldap("    filter: (uid=%u)\n", "    filter: (uid=%s) #<\n"), 0, "holds %s, which atoll does not replace"},
		{"filter lone percent", ldap("    filter: (uid=%u)\n", "    filter: (uid=%u%) #<\n"), 0, "holds %)"},
		{"attribute missing", ldap("    attribute: mailIsland\n", ""), 23, "directory.ldap: attribute is missing"},
		{"attribute invalid", ldap("    attribute: mailIsland\n", "    attribute: mail_island #<\n"), 0, `directory.ldap.attribute: "mail_island" is not an attribute name`},
		{"ldap timeout", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    timeout: 2m #<\n"), 0, "directory.ldap.timeout: 2m is out of range; use 100ms to 1m"},
		{"pool_size zero", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    pool_size: 0 #<\n"), 0, "directory.ldap.pool_size: 0 is out of range; use 1 to 256"},
		{"stale_ttl too long", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    cache:\n      stale_ttl: 200h #<\n"), 0, "directory.ldap.cache.stale_ttl: 200h is out of range; use 0s to 168h"},
		{"positive_ttl negative", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    cache: {positive_ttl: -1s} #<\n"), 0, "directory.ldap.cache.positive_ttl: -1s is out of range; use 0s to 24h"},
		{"cache unknown key", ldap("    attribute: mailIsland\n", "    attribute: mailIsland\n    cache:\n      ttl: 1m #<\n"), 0, `unknown key "ttl" in directory.ldap.cache; remove it (the keys here are: positive_ttl, negative_ttl, stale_ttl)`},
		{"node_login unknown", dir("  static: " + fx.static + "\n  names:\n    node_login: stirp #<\n"), 0, `directory.names.node_login: "stirp" is not known (did you mean "strip"?)`},
		{"default_domain with @", dir("  static: " + fx.static + "\n  names:\n    default_domain: \"@example.org\" #<\n"), 0, "directory.names.default_domain: \"@example.org\" starts with '@'; write the domain alone, such as example.org"},
		{"default_domain invalid", dir("  static: " + fx.static + "\n  names:\n    default_domain: example_org #<\n"), 0, `directory.names.default_domain: "example_org" is not a domain name`},
		{"lowercase not a bool", dir("  static: " + fx.static + "\n  names: {lowercase: 1} #<\n"), 0, "directory.names.lowercase: got 1, but it must be true or false"},

		// islands[].proxy
		{"client_address unknown", editText(t, lb, "  - name: a\n", "  - name: a\n    proxy: {client_address: proxy-protocol} #<\n"), 0, `island a: proxy.client_address "proxy-protocol" is not known (did you mean "proxy_protocol"?)`},
		{"island tls unknown", editText(t, lb, "  - name: a\n", "  - name: a\n    proxy:\n      tls: startls #<\n"), 0, `island a: proxy.tls "startls" is not known (did you mean "starttls"?)`},
		{"island proxy unknown key", editText(t, lb, "  - name: a\n", "  - name: a\n    proxy:\n      client_adress: none #<\n"), 0, `unknown key "client_adress" in proxy of island a; did you mean "client_address"?`},
	}
}

func TestLoginDefaults(t *testing.T) {
	cfg, err := Parse("atoll.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	host, herr := os.Hostname()
	if herr != nil || !isDomain(host) {
		host = "atoll"
	}
	want := Proxy{Hostname: host, PreLoginTimeout: time.Minute, MaxLine: 8192, MaxLiteral: 8192,
		MaxBadCommands: 10, MaxLoginTries: 3, MaxConnectionsPerSource: 50,
		AuthThrottle: AuthThrottle{Threshold: 5, Window: 10 * time.Minute, BaseDelay: time.Second, MaxDelay: 30 * time.Second},
		DialTimeout:  5 * time.Second, LMTP: ProxyLMTP{MaxMessageSize: 50 << 20, MaxRecipients: 100}}
	if fmt.Sprint(cfg.Proxy) != fmt.Sprint(want) {
		t.Errorf("proxy:\n got %+v\nwant %+v", cfg.Proxy, want)
	}
	if cfg.Directory != (Directory{Names: Names{Lowercase: true, NodeLogin: NodeLoginKeep}}) || cfg.HasDirectory() {
		t.Errorf("directory: %+v", cfg.Directory)
	}
	if cfg.Islands[0].Proxy != (IslandProxy{ClientAddress: ClientAddrNone, TLS: TLSNone}) {
		t.Errorf("island proxy: %+v", cfg.Islands[0].Proxy)
	}
	if got := cfg.LoginServices(); len(got) != 0 {
		t.Errorf("login services: %v", got)
	}

	// An empty proxy section and a static directory.
	fx := makeFiles(t)
	cfg, err = Parse("atoll.yaml", []byte(loginBase(fx)+"proxy:\n  tls: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want.Line = 24
	if fmt.Sprint(cfg.Proxy) != fmt.Sprint(want) {
		t.Errorf("proxy:\n got %+v\nwant %+v", cfg.Proxy, want)
	}
	if cfg.Directory != (Directory{Static: fx.static, Names: Names{Lowercase: true, NodeLogin: NodeLoginKeep}, Line: 22}) || !cfg.HasDirectory() {
		t.Errorf("directory: %+v", cfg.Directory)
	}
	if ls := cfg.LoginServices(); len(ls) != 1 || ls[0] != &cfg.Services[1] || ls[0].Name != "front" {
		t.Errorf("login services: %v", ls)
	}

	// The LDAP defaults.
	cfg, err = Parse("atoll.yaml", []byte(base+frontDoor+ldapBlock))
	if err != nil {
		t.Fatal(err)
	}
	wantLDAP := LDAP{URLs: []string{"ldap://198.51.100.30"}, BaseDN: "ou=people,dc=example,dc=org", Filter: "(uid=%u)", Attribute: "mailIsland",
		Timeout: 2 * time.Second, PoolSize: 4, PositiveTTL: 5 * time.Minute, NegativeTTL: time.Minute, StaleTTL: time.Hour}
	if l := cfg.Directory.LDAP; l == nil || fmt.Sprint(*l) != fmt.Sprint(wantLDAP) {
		t.Errorf("ldap:\n got %+v\nwant %+v", l, wantLDAP)
	}
	if cfg.Directory.Static != "" || cfg.Directory.Names != (Names{Lowercase: true, NodeLogin: NodeLoginKeep}) || !cfg.HasDirectory() {
		t.Errorf("directory: %+v", cfg.Directory)
	}
}

// TestLoginFullFile writes every key of the new sections.
func TestLoginFullFile(t *testing.T) {
	fx := makeFiles(t)
	text := edit(t, "  - name: a\n", "  - name: a\n    proxy:\n      client_address: proxy_protocol\n      tls: implicit\n")
	text, _, _ = strings.Cut(text, "services:\n")
	text += `  - {name: b, proxy: {client_address: imap_id, tls: starttls}, nodes: [{name: m1, addresses: [198.51.100.21]}]}
services:
  - {name: imap-a, vips: [203.0.113.10], protocol: imap, forwarding: ipip, island: a}
  - {name: imaps, vips: [203.0.113.20], protocol: imaps, forwarding: ipip, routing: login}
  - {name: pop3s, vips: [203.0.113.20], protocol: pop3s, forwarding: ipip, routing: login}
  - {name: imap, vips: [203.0.113.20], protocol: imap, forwarding: ipip, routing: login}
  - {name: lmtp, vips: [203.0.113.20], protocol: lmtp, forwarding: ipip, routing: login}
proxy:
  hostname: mail.example.org
  tls:
    cert_file: CERT
    key_file: KEY
  require_tls: true
  pre_login_timeout: 30s
  idle_timeout: 2h
  max_line: 512
  max_literal: 1048576
  max_bad_commands: 1000
  max_login_tries: 1
  max_connections_per_source: -1
  auth_throttle:
    threshold: -1
    window: 24h
    base_delay: 10ms
    max_delay: 10m
  source_addresses: [198.51.100.1, '2001:db8:1::1']
  dial_timeout: 100ms
directory:
  ldap:
    urls: [ldap://198.51.100.30, 'ldaps://[2001:db8::31]:1636', ldap://ldap.example.org/]
    start_tls: true
    ca_file: CA
    insecure_skip_verify: true
    bind_dn: cn=atoll\,x,dc=example,dc=org
    password_file: SECRET
    base_dn: ou=people,dc=example,dc=org
    filter: "(|(uid=%u)(&(mail=%n@%d)(x=100%%)))"
    attribute: 1.3.6.1.4.1.99999.1
    timeout: 1m
    pool_size: 256
    cache:
      positive_ttl: 0s
      negative_ttl: 24h
      stale_ttl: 168h
  names:
    lowercase: false
    default_domain: Example.org
    node_login: strip
`
	text = strings.NewReplacer("CERT", fx.cert, "KEY", fx.key, "CA", fx.ca, "SECRET", fx.secret).Replace(text)
	cfg, err := Parse("atoll.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	want := Proxy{Hostname: "mail.example.org", TLS: ProxyTLS{CertFile: fx.cert, KeyFile: fx.key}, RequireTLS: true,
		PreLoginTimeout: 30 * time.Second, IdleTimeout: 2 * time.Hour, MaxLine: 512, MaxLiteral: 1 << 20,
		MaxBadCommands: 1000, MaxLoginTries: 1, MaxConnectionsPerSource: -1,
		AuthThrottle:    AuthThrottle{Threshold: -1, Window: 24 * time.Hour, BaseDelay: 10 * time.Millisecond, MaxDelay: 10 * time.Minute},
		SourceAddresses: []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8:1::1")},
		DialTimeout:     100 * time.Millisecond, Line: markedLineOf(t, text, "proxy:"),
		LMTP: ProxyLMTP{MaxMessageSize: 50 << 20, MaxRecipients: 100}}
	if fmt.Sprint(cfg.Proxy) != fmt.Sprint(want) {
		t.Errorf("proxy:\n got %+v\nwant %+v", cfg.Proxy, want)
	}
	wantLDAP := LDAP{URLs: []string{"ldap://198.51.100.30", "ldaps://[2001:db8::31]:1636", "ldap://ldap.example.org/"},
		StartTLS: true, CAFile: fx.ca, InsecureSkipVerify: true, BindDN: `cn=atoll\,x,dc=example,dc=org`, PasswordFile: fx.secret,
		BaseDN: "ou=people,dc=example,dc=org", Filter: "(|(uid=%u)(&(mail=%n@%d)(x=100%%)))", Attribute: "1.3.6.1.4.1.99999.1",
		Timeout: time.Minute, PoolSize: 256, PositiveTTL: 0, NegativeTTL: 24 * time.Hour, StaleTTL: 7 * 24 * time.Hour}
	d := cfg.Directory
	if d.LDAP == nil || fmt.Sprint(*d.LDAP) != fmt.Sprint(wantLDAP) {
		t.Errorf("ldap:\n got %+v\nwant %+v", d.LDAP, wantLDAP)
	}
	if d.Static != "" || d.Names != (Names{Lowercase: false, DefaultDomain: "Example.org", NodeLogin: NodeLoginStrip}) || d.Line != markedLineOf(t, text, "directory:") {
		t.Errorf("directory: %+v", d)
	}
	if a, b := cfg.IslandByName("a").Proxy, cfg.IslandByName("b").Proxy; a != (IslandProxy{ClientAddrProxy, TLSImplicit}) || b != (IslandProxy{ClientAddrID, TLSStartTLS}) {
		t.Errorf("island proxies: %+v %+v", a, b)
	}
	var names []string
	for _, s := range cfg.LoginServices() {
		names = append(names, s.Name)
	}
	if strings.Join(names, " ") != "imaps pop3s imap lmtp" {
		t.Errorf("login services: %v", names)
	}
}

// markedLineOf is the 1-based line that starts with prefix.
func markedLineOf(t testing.TB, text, prefix string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			return i + 1
		}
	}
	t.Fatalf("no line starts with %q", prefix)
	return 0
}

// A problem in one section does not hide those of the others, and its
// consequences are not reported.
func TestLoginProblemsTogether(t *testing.T) {
	text := base + strings.Replace(frontDoor, "imap", "imaps", 1) + `proxy:
  tls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}
  require_tls: true
  max_line: 1
directory:
  ldap:
    urls: [ftp://x]
    start_tls: true
    base_dn: dc=example
    filter: (uid=%u)
`
	_, err := Parse("atoll.yaml", []byte(text))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("got %v", err)
	}
	want := []string{
		"proxy.tls.cert_file: stat /nonexistent/c.pem",
		"proxy.tls.key_file: stat /nonexistent/k.pem",
		"proxy.max_line: 1 is out of range",
		"directory.ldap: attribute is missing",
		`directory.ldap.urls: "ftp://x" does not start with ldap://`,
	}
	if len(errs) != len(want) {
		t.Fatalf("want %d problems, got:\n%v", len(want), err)
	}
	for i, w := range want {
		if !strings.Contains(errs[i].Msg, w) {
			t.Errorf("problem %d: %v, want %q", i, errs[i], w)
		}
	}
}

func TestFmtDur(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", time.Hour: "1h", 24 * time.Hour: "24h", 10 * time.Minute: "10m", 90 * time.Second: "1m30s",
		90 * time.Minute: "1h30m", time.Hour + time.Second: "1h0m1s", 10 * time.Millisecond: "10ms", -time.Hour: "-1h",
	} {
		if got := fmtDur(d); got != want {
			t.Errorf("fmtDur(%v) = %q, want %q", d, got, want)
		}
	}
}
