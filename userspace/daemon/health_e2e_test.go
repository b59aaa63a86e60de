package daemon_test

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/userspace/api"
)

// TestE2EHealthDovecot: a node whose Dovecot stops goes DOWN after `fall`
// checks and gets no new flow; started again it is UP after `rise`.
func TestE2EHealthDovecot(t *testing.T) {
	e := newEnv(t, 2, 2)
	victim := e.lab.Nodes[0].Name
	if got := e.sessions(lab.VIP4, 20); got[victim] == 0 {
		t.Fatalf("before: %s got no session of 20: %v", victim, got)
	}
	stopped := time.Now()
	must(t, e.dovecot[victim].Stop())
	e.waitFor(victim+" down", 10*time.Second, func(st api.Status) bool {
		s, h, _ := nodeState(st, "imap-a", lab.VIP4, victim)
		s6, _, _ := nodeState(st, "imap-a", lab.VIP6, victim)
		p, _, _ := nodeState(st, "pop3-a", lab.VIP4, victim)
		return s == "down" && h == "down" && s6 == "down" && p == "down"
	})
	t.Logf("%s down for IMAP and POP3 %v after its Dovecot was told to stop (interval 1s, fall 2)", victim, time.Since(stopped).Round(time.Millisecond))
	if got := e.sessions(lab.VIP4, 30); got[victim] != 0 || got[e.lab.Nodes[1].Name] != 30 {
		t.Fatalf("with %s down: sessions %v", victim, got)
	}
	if got := e.sessions(lab.VIP6, 10); got[victim] != 0 {
		t.Fatalf("with %s down, over IPv6: sessions %v", victim, got)
	}
	e.startDovecot(e.lab.Nodes[0])
	e.waitFor(victim+" up again", 10*time.Second, func(st api.Status) bool {
		s, h, _ := nodeState(st, "imap-a", lab.VIP4, victim)
		s6, _, _ := nodeState(st, "imap-a", lab.VIP6, victim)
		return s == "up" && h == "up" && s6 == "up"
	})
	if got := e.sessions(lab.VIP4, 30); got[victim] == 0 {
		t.Fatalf("after recovery %s got none of 30: %v", victim, got)
	}
}

// TestE2ESilentNode: a node that accepts TCP but never greets is DOWN.
func TestE2ESilentNode(t *testing.T) {
	e := newEnv(t, 2, 2)
	victim := e.lab.Nodes[1]
	must(t, e.dovecot[victim.Name].Stop())
	ln, err := victim.NS.Listen("tcp4", ":143")
	must(t, err)
	t.Cleanup(func() { ln.Close() })
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // accept, never greet
			mu.Unlock()
		}
	}()
	// DOWN because it stays silent, not merely because Dovecot went away.
	e.waitFor(victim.Name+" down for its silence", 10*time.Second, func(st api.Status) bool {
		s, _, _ := nodeState(st, "imap-a", lab.VIP4, victim.Name)
		c, ok := check(st, "imap-a", lab.VIP4, victim.Name, "direct4")
		return s == "down" && ok && c.State == "down" && strings.Contains(c.LastError, "no greeting")
	})
	// And it stays DOWN: accepting connections is not being healthy.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if s, _, _ := nodeState(e.status(), "imap-a", lab.VIP4, victim.Name); s != "down" {
			t.Fatalf("silent node became %s", s)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := e.sessions(lab.VIP4, 10); got[victim.Name] != 0 {
		t.Fatalf("silent node got sessions: %v", got)
	}
}

// TestE2EVIPMissing: a node whose VIP is gone from lo is DOWN although its
// own address still answers.
func TestE2EVIPMissing(t *testing.T) {
	e := newEnv(t, 2, 2)
	victim := e.lab.Nodes[1]
	h := victim.NS.Handle()
	lo, err := h.LinkByName("lo")
	must(t, err)
	// Dovecot listens on the VIP too: keep the address but stop it being
	// local by moving it off lo? Removing it is the real failure.
	addr := netlinkAddr(netip.PrefixFrom(lab.VIP4, 32))
	must(t, h.AddrDel(lo, addr))
	t.Cleanup(func() { h.AddrAdd(lo, addr) })
	st := e.waitFor(victim.Name+" down for the IPv4 VIP", 10*time.Second, func(st api.Status) bool {
		s, _, _ := nodeState(st, "imap-a", lab.VIP4, victim.Name)
		return s == "down"
	})
	// Its IPv6 VIP is still there, and so is its own address.
	if s, _, _ := nodeState(st, "imap-a", lab.VIP6, victim.Name); s != "up" {
		t.Fatalf("IPv6 VIP of %s: %s, want up", victim.Name, s)
	}
	if c, _ := check(st, "imap-a", lab.VIP4, victim.Name, "direct4"); c.State != "up" {
		t.Fatalf("direct check %s, want up (the node's own address answers)", c.State)
	}
	if c, _ := check(st, "imap-a", lab.VIP4, victim.Name, "vip4"); c.State != "down" {
		t.Fatalf("vip4 check %s, want down", c.State)
	}
	if got := e.sessions(lab.VIP4, 20); got[victim.Name] != 0 {
		t.Fatalf("node without its VIP still got sessions: %v", got)
	}
}

// check finds one check of a node in a status.
func check(st api.Status, service string, vip netip.Addr, node, path string) (api.Check, bool) {
	for _, s := range st.Services {
		if s.Name != service || s.VIP.Addr() != vip {
			continue
		}
		for _, n := range s.Nodes {
			if n.Name != node {
				continue
			}
			for _, c := range n.Checks {
				if c.Path == path {
					return c, true
				}
			}
		}
	}
	return api.Check{}, false
}
