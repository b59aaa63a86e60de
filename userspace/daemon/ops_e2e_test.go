package daemon_test

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/api"
)

// cli runs the atoll CLI against the daemon's socket.
func (e *env) cli(args ...string) (string, error) {
	cmd := exec.Command(atollBin, args[0])
	cmd.Args = append(cmd.Args, "-socket", e.socket)
	cmd.Args = append(cmd.Args, args[1:]...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// imapSession is an open IMAP session through the balancer.
type imapSession struct {
	c    net.Conn
	r    *bufio.Reader
	node string
	tag  int
}

func (e *env) openIMAP(t *testing.T, vip netip.Addr) *imapSession {
	t.Helper()
	c, r, g, err := e.greet(vip, 143)
	must(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Time{})
	return &imapSession{c: c, r: r, node: servedBy(g)}
}

// noop sends a NOOP and waits for its tagged OK.
func (s *imapSession) noop() error {
	s.tag++
	tag := fmt.Sprintf("n%d", s.tag)
	s.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(s.c, "%s NOOP\r\n", tag); err != nil {
		return err
	}
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, tag+" ") {
			if !strings.HasPrefix(line, tag+" OK") {
				return fmt.Errorf("NOOP answered %q", line)
			}
			return nil
		}
	}
}

// TestE2EDrain: a drained node keeps its open sessions and gets no new
// ones; undrained, it gets new ones again.
func TestE2EDrain(t *testing.T) {
	e := newEnv(t, 2, 2)
	s := e.openIMAP(t, lab.VIP4)
	victim := s.node
	out, err := e.cli("drain", victim)
	if err != nil {
		t.Fatalf("atoll drain: %v\n%s", err, out)
	}
	st := e.status()
	for _, svc := range st.Services {
		for _, n := range svc.Nodes {
			if n.Name == victim && (n.State != "draining" || !n.Drained) {
				t.Fatalf("%s/%v: %s is %s (drained=%v), want draining", svc.Name, svc.VIP, victim, n.State, n.Drained)
			}
		}
	}
	out, err = e.cli("status")
	if err != nil || !strings.Contains(out, "draining (admin)") || !strings.Contains(out, "drained by the admin: "+victim) {
		t.Fatalf("atoll status after drain: %v\n%s", err, out)
	}
	for i := 0; i < 10; i++ {
		if err := s.noop(); err != nil {
			t.Fatalf("open session to the drained node broke: %v", err)
		}
	}
	if got := e.sessions(lab.VIP4, 30); got[victim] != 0 {
		t.Fatalf("drained %s got new sessions: %v", victim, got)
	}
	if got := e.sessions(lab.VIP6, 10); got[victim] != 0 {
		t.Fatalf("drained %s got new IPv6 sessions: %v", victim, got)
	}
	if err := s.noop(); err != nil {
		t.Fatalf("open session after new ones: %v", err)
	}
	out, err = e.cli("undrain", victim)
	if err != nil {
		t.Fatalf("atoll undrain: %v\n%s", err, out)
	}
	if got := e.sessions(lab.VIP4, 30); got[victim] == 0 {
		t.Fatalf("undrained %s got no new session: %v", victim, got)
	}
	out, err = e.cli("drain", "no-such-node")
	if err == nil || !strings.Contains(out, "no-such-node") {
		t.Fatalf("drain of an unknown node: err %v, output %q", err, out)
	}
}

// TestE2ERestart: a long-lived session keeps flowing across kill -9 of the
// daemon and its restart; the conntrack table is not emptied and the
// restarted daemon adopts the pinned state, replacing the program in place.
func TestE2ERestart(t *testing.T) {
	e := newEnv(t, 2, 2)
	var sessions []*imapSession
	for i := 0; i < 20; i++ {
		sessions = append(sessions, e.openIMAP(t, lab.VIP4))
	}
	before := e.status().Conntrack.V4
	if before < 20 {
		t.Fatalf("%d flows tracked with 20 sessions open", before)
	}
	var (
		stop     = make(chan struct{})
		done     = make(chan struct{})
		failures atomic.Int64
		rounds   atomic.Int64
	)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, s := range sessions {
				if err := s.noop(); err != nil {
					if failures.Add(1) < 3 {
						t.Errorf("%s: session to %s: %v", time.Now().Format("15:04:05.000"), s.node, err)
					}
				}
			}
			rounds.Add(1)
		}
	}()
	// waitRounds waits for n more rounds of NOOPs and at least a second.
	waitRounds := func(n int64) {
		target := rounds.Load() + n
		start := time.Now()
		deadline := start.Add(20 * time.Second)
		for (rounds.Load() < target || time.Since(start) < time.Second) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if rounds.Load() < target {
			t.Fatalf("sessions stalled")
		}
	}
	waitRounds(3)
	t.Logf("%s: kill -9", time.Now().Format("15:04:05.000"))
	e.killDaemon()
	waitRounds(5) // the data plane forwards with nobody at the wheel
	t.Logf("%s: restart", time.Now().Format("15:04:05.000"))
	e.startDaemon()
	waitRounds(5)
	close(stop)
	<-done
	if failures.Load() != 0 {
		t.Fatalf("%d NOOPs failed across the restart", failures.Load())
	}
	st := e.status()
	if st.Conntrack.V4 < before {
		t.Fatalf("conntrack emptied: %d flows before, %d after", before, st.Conntrack.V4)
	}
	log, _ := os.ReadFile(e.logPath)
	for _, want := range []string{"replaced_in_place=true", "adopted pinned state"} {
		if !strings.Contains(string(log), want) {
			t.Fatalf("restarted daemon's log lacks %q:\n%s", want, log)
		}
	}
	t.Logf("%d NOOP rounds over 20 sessions, none failed; %d flows tracked before, %d after", rounds.Load(), before, st.Conntrack.V4)

	// `atoll flows` lists the sessions' flows with their nodes.
	out, err := e.cli("flows", "-n", "1000")
	if err != nil {
		t.Fatalf("atoll flows: %v\n%s", err, out)
	}
	for _, s := range sessions {
		local := s.c.LocalAddr().String()
		if !strings.Contains(out, local) {
			t.Fatalf("atoll flows lacks %s:\n%s", local, out)
		}
	}

	// A changed conntrack_size cannot adopt the pinned maps: the daemon
	// refuses to start and says what to do; `atoll reset` clears the way.
	if err := e.daemon.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	e.daemon.Wait()
	e.daemon = nil
	cfg, _ := os.ReadFile(e.cfgPath)
	must(t, os.WriteFile(e.cfgPath, []byte(strings.Replace(string(cfg), "conntrack_size: 65536", "conntrack_size: 131072", 1)), 0o644))
	run := e.lab.LB.NetCommand(t.Context(), atollBin, "run", "-c", e.cfgPath)
	out2, err := run.CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "atoll reset") || !strings.Contains(string(out2), "entries") {
		t.Fatalf("start over pinned maps of another size: %v\n%s", err, out2)
	}
	if out, err := exec.Command(atollBin, "reset", "-yes", "-pin", e.pin).CombinedOutput(); err != nil {
		t.Fatalf("atoll reset: %v\n%s", err, out)
	}
	e.startDaemon()
	e.waitAllUp()
	if fi, err := os.Stat(e.socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("API socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}

// pinnedRing reads the ring the data plane uses for a service VIP.
func (e *env) pinnedRing(t *testing.T, st api.Status, service string, vip netip.Addr) []uint32 {
	t.Helper()
	rings, err := ebpf.LoadPinnedMap(filepath.Join(e.pin, "rings"), nil)
	must(t, err)
	defer rings.Close()
	m := &maps.Maps{Rings: rings}
	for _, s := range st.Services {
		if s.Name == service && s.VIP.Addr() == vip {
			// island a is the first island: id 0.
			table, err := m.Ring(s.ID, 0)
			must(t, err)
			return table
		}
	}
	t.Fatalf("no service %s on %v", service, vip)
	return nil
}

func nodeOfBackend(st api.Status, id uint32) string {
	for _, s := range st.Services {
		for _, n := range s.Nodes {
			if n.BackendID == id {
				return n.Name
			}
		}
	}
	return "?"
}

// TestE2EReload: adding a node to an island of N moves about 1/(N+1) of
// new flows' choices, real connections follow the new ring, and a broken
// config on reload changes nothing.
func TestE2EReload(t *testing.T) {
	e := newEnv(t, 3, 2)
	const seed = 0x61746f6c // the config's default hash_seed
	st0 := e.status()
	ring0 := e.pinnedRing(t, st0, "imap-a", lab.VIP4)

	e.nodes = 3
	e.writeConfig(false)
	if out, err := e.cli("reload"); err != nil {
		t.Fatalf("atoll reload: %v\n%s", err, out)
	}
	e.waitAllUp()
	st1 := e.status()
	ring1 := e.pinnedRing(t, st1, "imap-a", lab.VIP4)
	r := rand.New(rand.NewPCG(5, 6))
	moved, total := 0, 20000
	for i := 0; i < total; i++ {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(r.IntN(254) + 1)}), uint16(1024+r.IntN(60000)))
		k := maps.NewFlowKey(client, netip.AddrPortFrom(lab.VIP4, 143))
		a, _ := maps.PickFromTable(ring0, k, seed)
		b, _ := maps.PickFromTable(ring1, k, seed)
		if nodeOfBackend(st0, a) != nodeOfBackend(st1, b) {
			moved++
		}
	}
	frac := float64(moved) / float64(total)
	t.Logf("adding a third node moved %.3f of new flows' choices (1/3 = 0.333)", frac)
	if frac > 1.1/3 || frac < 0.9/3 {
		t.Fatalf("moved %.3f of choices, want about 1/3", frac)
	}
	// Real connections land where the installed ring says.
	for i := 0; i < 20; i++ {
		c, rd, g, err := e.greet(lab.VIP4, 143)
		must(t, err)
		local := netip.MustParseAddrPort(c.LocalAddr().String())
		id, _ := maps.PickFromTable(ring1, maps.NewFlowKey(local, netip.AddrPortFrom(lab.VIP4, 143)), seed)
		fmt.Fprintf(c, "a LOGOUT\r\n")
		rd.ReadString('\n')
		c.Close()
		if want := nodeOfBackend(st1, id); servedBy(g) != want {
			t.Fatalf("connection from %v served by %s, the ring says %s", local, servedBy(g), want)
		}
	}

	// A broken config is refused whole, by the CLI and by SIGHUP.
	e.writeConfig(true)
	out, err := e.cli("reload")
	if err == nil || !strings.Contains(out, "atoll.yaml:") || !strings.Contains(out, "sideways") {
		t.Fatalf("reload of a broken config: err %v, output:\n%s", err, out)
	}
	must(t, syscall.Kill(e.daemon.Process.Pid, syscall.SIGHUP))
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := e.status()
		if st.LastReload != nil && !st.LastReload.OK && time.Since(st.LastReload.At) < time.Second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP with a broken config left no refused reload: %+v", st.LastReload)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st2 := e.status()
	if len(st2.Services) != len(st1.Services) {
		t.Fatalf("broken config changed the services: %d -> %d", len(st1.Services), len(st2.Services))
	}
	ring2 := e.pinnedRing(t, st2, "imap-a", lab.VIP4)
	if len(ring2) != len(ring1) {
		t.Fatal("broken config changed the ring")
	}
	for i := range ring1 {
		if ring1[i] != ring2[i] {
			t.Fatal("broken config changed the ring")
		}
	}
	if got := e.sessions(lab.VIP4, 10); len(got) == 0 || got["?"] != 0 {
		t.Fatalf("sessions after a refused reload: %v", got)
	}
	// `atoll check` says the same, without a daemon.
	cmd := exec.Command(atollBin, "check", "-c", e.cfgPath)
	out2, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "sideways") {
		t.Fatalf("atoll check of the broken file: %v\n%s", err, out2)
	}
}
