package daemon_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/api"
)

// atollBin is the atoll binary the tests run as a real daemon process.
var atollBin string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // every test skips loudly
		}
		dir, err := os.MkdirTemp("", "atoll-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if atollBin, err = lab.BuildAtoll(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root (network namespaces, BPF, Dovecot); run `make test` as root")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// env is a lab with Dovecot on every node and `atoll run` on the LB host.
type env struct {
	t       *testing.T
	lab     *lab.Lab
	dir     string
	cfgPath string
	pin     string
	socket  string
	dovecot map[string]*peer.Dovecot
	daemon  *exec.Cmd
	logPath string
	client  *api.Client
	nodes   int // nodes named in the config (of lab.Nodes)
}

type cfgData struct {
	Pin, Socket string
	Nodes       []*lab.Node
	VIP4, VIP6  netip.Addr
	SrcV4       netip.Addr
	SrcV6       netip.Addr
	Broken      bool
}

var cfgTmpl = template.Must(template.New("cfg").Parse(`# written by the e2e test
dataplane:
  interfaces: [eth0]
  pin_path: {{.Pin}}
  conntrack_size: 65536
  source_v4: {{.SrcV4}}
  source_v6: {{.SrcV6}}
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
islands:
  - name: a
    nodes:
{{- range .Nodes}}
      - name: {{.Name}}
        addresses: [{{.V4}}, {{.V6}}]
{{- end}}
services:
  - name: imap-a
    vips: [{{.VIP4}}, {{.VIP6}}]
    protocol: imap
    forwarding: ipip
    island: a
  - name: pop3-a
    vips: [{{.VIP4}}]
    protocol: pop3
    forwarding: l2dsr
    island: a
{{- if .Broken}}
  - name: broken
    vips: [{{.VIP4}}]
    port: 143
    protocol: imap
    forwarding: sideways
    island: nowhere
{{- end}}
`))

// newEnv builds the lab with `nodes` nodes (the config names the first
// `inConfig`), starts Dovecot on each and `atoll run` on the LB host, and
// waits until every node is up.
func newEnv(t *testing.T, nodes, inConfig int) *env {
	t.Helper()
	requireRoot(t)
	l, err := lab.New(lab.Config{Prefix: "atl-e2e", Nodes: nodes, NoBalancer: true})
	must(t, err)
	t.Cleanup(func() { l.Close() })
	dir := t.TempDir()
	e := &env{t: t, lab: l, dir: dir, cfgPath: filepath.Join(dir, "atoll.yaml"), socket: filepath.Join(dir, "atoll.sock"),
		pin: "/sys/fs/bpf/atoll-e2e-" + filepath.Base(filepath.Dir(dir)), dovecot: map[string]*peer.Dovecot{}, nodes: inConfig}
	t.Cleanup(func() { exec.Command(atollBin, "reset", "-yes", "-pin", e.pin).Run() })
	for _, n := range l.Nodes {
		e.startDovecot(n)
	}
	e.writeConfig(false)
	e.startDaemon()
	e.client = api.NewClient(e.socket)
	e.waitAllUp()
	return e
}

func (e *env) startDovecot(n *lab.Node) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := peer.StartDovecot(ctx, peer.DovecotOptions{
		Dir:    filepath.Join(e.dir, "dovecot-"+n.Name),
		Name:   n.Name,
		Listen: []netip.Addr{n.V4, n.V6, lab.VIP4, lab.VIP6},
		Ports:  peer.DovecotPorts{IMAP: 143, POP3: 110, LMTP: 24, IMAPS: -1, POP3S: -1, LMTPS: -1},
		Users:  map[string]string{"alice": "secret"},
		Command: func(name string, args ...string) *exec.Cmd {
			return n.NS.Command(context.Background(), name, args...)
		},
		Dial: n.NS.DialContext,
	})
	must(e.t, err)
	e.t.Cleanup(func() { d.Stop() })
	e.dovecot[n.Name] = d
}

func (e *env) writeConfig(broken bool) {
	e.t.Helper()
	f, err := os.Create(e.cfgPath)
	must(e.t, err)
	defer f.Close()
	must(e.t, cfgTmpl.Execute(f, cfgData{
		Pin: e.pin, Socket: e.socket, Nodes: e.lab.Nodes[:e.nodes], VIP4: lab.VIP4, VIP6: lab.VIP6,
		SrcV4: lab.LBV4.Addr(), SrcV6: lab.LBV6.Addr(), Broken: broken,
	}))
}

// startDaemon runs `atoll run` in the LB namespace as a real process.
func (e *env) startDaemon() {
	e.t.Helper()
	e.logPath = filepath.Join(e.dir, fmt.Sprintf("atoll-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(e.logPath)
	must(e.t, err)
	// nsenter --net, not `ip netns exec`: the daemon must pin on the
	// host's bpffs for its state to outlive it.
	cmd := e.lab.LB.NetCommand(context.Background(), atollBin, "run", "-c", e.cfgPath, "-log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	must(e.t, cmd.Start())
	logf.Close()
	e.daemon = cmd
	e.t.Cleanup(func() {
		if e.daemon != nil && e.daemon.Process != nil {
			e.daemon.Process.Signal(syscall.SIGTERM)
			e.daemon.Wait()
		}
		if e.t.Failed() {
			b, _ := os.ReadFile(e.logPath)
			e.t.Logf("atoll log:\n%s", b)
		}
	})
	// Ready when the API answers.
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := api.NewClient(e.socket)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Status(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(e.logPath)
			e.t.Fatalf("atoll did not come up: %v\n%s", err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killDaemon kills `atoll run` with SIGKILL, as a crash would.
func (e *env) killDaemon() {
	e.t.Helper()
	must(e.t, syscall.Kill(e.daemon.Process.Pid, syscall.SIGKILL))
	e.daemon.Wait()
	e.daemon = nil
}

func (e *env) status() api.Status {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := e.client.Status(ctx)
	must(e.t, err)
	return st
}

// nodeState returns the data-plane state and health of a node for a
// service VIP.
func nodeState(st api.Status, service string, vip netip.Addr, node string) (string, string, bool) {
	for _, s := range st.Services {
		if s.Name != service || s.VIP.Addr() != vip {
			continue
		}
		for _, n := range s.Nodes {
			if n.Name == node {
				return n.State, n.Health, true
			}
		}
	}
	return "", "", false
}

// waitFor polls the status until cond holds.
func (e *env) waitFor(what string, timeout time.Duration, cond func(api.Status) bool) api.Status {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := e.status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s; status: %+v", what, st.Services)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) waitAllUp() {
	e.t.Helper()
	e.waitFor("every node up", 20*time.Second, func(st api.Status) bool {
		n := 0
		for _, s := range st.Services {
			for _, nd := range s.Nodes {
				if nd.Health != "up" || nd.State != "up" {
					return false
				}
				n++
			}
		}
		return n > 0
	})
}

// greet opens a connection from the client host to vip:port and returns
// it with the greeting line.
func (e *env) greet(vip netip.Addr, port uint16) (net.Conn, *bufio.Reader, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := e.lab.Client.DialContext(ctx, "tcp", netip.AddrPortFrom(vip, port).String())
	if err != nil {
		return nil, nil, "", err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, nil, "", err
	}
	return c, r, line, nil
}

// servedBy names the node whose Dovecot greeted ("atoll-test NAME ready").
func servedBy(greeting string) string {
	f := strings.Fields(greeting)
	for i, w := range f {
		if w == "atoll-test" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return "?"
}

// sessions opens n IMAP sessions to vip, logs out, and counts per node.
func (e *env) sessions(vip netip.Addr, n int) map[string]int {
	e.t.Helper()
	out := map[string]int{}
	for i := 0; i < n; i++ {
		c, r, g, err := e.greet(vip, 143)
		if err != nil {
			e.t.Fatalf("session %d to %v: %v", i, vip, err)
		}
		fmt.Fprintf(c, "a LOGOUT\r\n")
		r.ReadString('\n')
		c.Close()
		out[servedBy(g)]++
	}
	return out
}
