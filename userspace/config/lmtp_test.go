package config

import (
	"strings"
	"testing"
)

const lmtpBase = `
dataplane: {mode: none}
directory: {static: /etc/hostname}
islands:
  - name: a
    nodes: [{name: n1, addresses: [198.51.100.11]}]
services:
  - {name: lmtp, vips: [203.0.113.20], protocol: lmtp, forwarding: ipip, routing: login}
`

// TestProxyLMTP: the LMTP router's limits, their defaults and ranges.
func TestProxyLMTP(t *testing.T) {
	cfg, err := Parse("t.yaml", []byte(lmtpBase))
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Proxy.LMTP; l.MaxMessageSize != 50<<20 || l.MaxRecipients != 100 {
		t.Fatalf("defaults %+v", l)
	}
	cfg, err = Parse("t.yaml", []byte(lmtpBase+"proxy: {lmtp: {max_message_size: 10485760, max_recipients: 20}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Proxy.LMTP; l.MaxMessageSize != 10<<20 || l.MaxRecipients != 20 {
		t.Fatalf("set %+v", l)
	}
	for _, c := range []struct{ text, want string }{
		{"proxy: {lmtp: {max_recipients: 0}}\n", "max_recipients: 0 is out of range"},
		{"proxy: {lmtp: {max_message_size: 10}}\n", "max_message_size: 10 is out of range"},
		{"proxy: {lmtp: {max_recipient: 5}}\n", `did you mean "max_recipients"`},
	} {
		_, err := Parse("t.yaml", []byte(lmtpBase+c.text))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%q: %v, want %q", c.text, err, c.want)
		}
		if !strings.Contains(err.Error(), "t.yaml:9:") {
			t.Fatalf("%q: %v, want line 9", c.text, err)
		}
	}
}
