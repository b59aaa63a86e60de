package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/maps"
)

const demoUsage = `usage: atoll demo [-conns N] [-once]
       atoll demo -stop

Builds a small topology in network namespaces (a client, a load-balancer
host with balancer.c attached natively to its veth, two nodes holding the
VIPs on lo with decap.c), installs three services (l2dsr over IPv4, ipip
4in4 and 6in6), opens real TCP connections through them from the client
and shows which node served each and that every byte came back. Then it
waits for Ctrl-C and removes everything. -stop cleans up after a crash.
`

// demoState is what -stop needs to clean up after a crashed demo.
type demoState struct {
	PID        int      `json:"pid"`
	Namespaces []string `json:"namespaces"`
}

const demoStateFile = "/run/atoll/demo.json"

const demoPort = 143

func runDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), demoUsage); fs.PrintDefaults() }
	conns := fs.Int("conns", 20, "connections per service")
	once := fs.Bool("once", false, "tear down right after the report instead of waiting for Ctrl-C")
	stop := fs.Bool("stop", false, "remove what a crashed demo left behind")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *stop {
		return demoStop()
	}
	if *conns < 1 || *conns > 1000 {
		return fmt.Errorf("demo: -conns must be 1..1000")
	}
	if os.Geteuid() != 0 {
		return errors.New("demo: needs root (network namespaces and BPF programs)")
	}
	if err := demoStop(); err != nil {
		return err
	}

	fmt.Println("atoll demo: building the topology in network namespaces ...")
	l, err := lab.New(lab.Config{Prefix: "atl-demo", ConntrackSize: 1 << 16})
	if err != nil {
		return err
	}
	defer func() {
		l.Close()
		os.Remove(demoStateFile)
	}()
	if err := writeDemoState(l); err != nil {
		return err
	}
	for _, n := range l.Nodes {
		for _, network := range []string{"tcp4", "tcp6"} {
			ln, err := n.NS.Listen(network, fmt.Sprintf(":%d", demoPort))
			if err != nil {
				return err
			}
			defer ln.Close()
			go demoServe(ln, n.Name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), lab.DefaultTimeout)
	defer cancel()
	if err := l.WarmNeighbours(ctx, demoPort); err != nil {
		return err
	}

	type svcDesc struct {
		svc     maps.Service
		nodesV6 bool
		mode    string
	}
	services := []svcDesc{
		{maps.Service{VIP: lab.VIP4, Port: demoPort, ID: 1, Forward: maps.ForwardL2DSR, Route: maps.RouteIsland}, false, "l2dsr"},
		{maps.Service{VIP: lab.VIP6, Port: demoPort, ID: 2, Forward: maps.ForwardIPIP, Route: maps.RouteIsland}, true, "ipip 6in6"},
		{maps.Service{VIP: lab.VIP4, Port: demoPort + 850, ID: 3, Forward: maps.ForwardIPIP, Route: maps.RouteIsland}, false, "ipip 4in4"},
	}
	printTopology(l)
	fmt.Println("\nservices (Maglev over both nodes):")
	for _, s := range services {
		if _, err := l.Configure(s.svc, s.nodesV6); err != nil {
			return err
		}
		fmt.Printf("  %-22s %s\n", netip.AddrPortFrom(s.svc.VIP, s.svc.Port), s.mode)
	}
	// The 4in4 service listens on the nodes' port 993 too.
	for _, n := range l.Nodes {
		ln, err := n.NS.Listen("tcp4", fmt.Sprintf(":%d", demoPort+850))
		if err != nil {
			return err
		}
		defer ln.Close()
		go demoServe(ln, n.Name)
	}

	fmt.Printf("\n%d connections to each service from the client, 4 KiB echoed on each:\n", *conns)
	fmt.Printf("  %-22s %-10s %8s %8s  %s\n", "service", "mode", l.Nodes[0].Name, l.Nodes[1].Name, "result")
	for _, s := range services {
		vip := netip.AddrPortFrom(s.svc.VIP, s.svc.Port)
		byNode, err := demoConnections(ctx, l, vip, *conns)
		result := "all bytes intact"
		if err != nil {
			result = "FAILED: " + err.Error()
		}
		fmt.Printf("  %-22s %-10s %8d %8d  %s\n", vip, s.mode, byNode[l.Nodes[0].Name], byNode[l.Nodes[1].Name], result)
		if err != nil {
			return err
		}
	}
	st, err := l.Balancer.Maps.ReadStats()
	if err != nil {
		return err
	}
	fmt.Print("\ndata-plane counters:")
	for i, v := range st {
		if v != 0 {
			fmt.Printf(" %s=%d", maps.StatName(maps.Stat(i)), v)
		}
	}
	fmt.Println()
	if *once {
		return nil
	}
	fmt.Printf(`
Try it from another terminal (a node greets, then echoes; curl gives up
after 2 s, as telnet:// never ends by itself):
  echo hello | ip netns exec %[1]s curl -s --max-time 2 telnet://%[2]s:%[3]d
  echo hello | ip netns exec %[1]s curl -s --max-time 2 telnet://[%[4]s]:%[3]d
  echo hello | ip netns exec %[1]s curl -s --max-time 2 telnet://%[2]s:%[5]d

Ctrl-C stops the demo and removes everything ('make stop' after a crash).
`, l.Client.Name, lab.VIP4, demoPort, lab.VIP6, demoPort+850)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	fmt.Println("\nstopping: removing namespaces")
	return nil
}

func printTopology(l *lab.Lab) {
	fmt.Println("\nhosts:")
	fmt.Printf("  %-8s %-24s %s, %s\n", "client", l.Client.Name, lab.ClientV4.Addr(), lab.ClientV6.Addr())
	fmt.Printf("  %-8s %-24s %s, %s  balancer.c on eth0 (native XDP)\n", "lb", l.LB.Name, lab.LBV4.Addr(), lab.LBV6.Addr())
	for _, n := range l.Nodes {
		fmt.Printf("  %-8s %-24s %s, %s  VIPs %s and %s on lo, decap.c on eth0\n", n.Name, n.NS.Name, n.V4, n.V6, lab.VIP4, lab.VIP6)
	}
}

// demoServe greets with the node's name and the client's address, then
// echoes lines.
func demoServe(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Minute))
			fmt.Fprintf(c, "* OK %s (atoll demo node) sees you as %s\r\n", name, c.RemoteAddr())
			io.Copy(c, c)
		}()
	}
}

// demoConnections opens n connections to vip and checks each echo.
func demoConnections(ctx context.Context, l *lab.Lab, vip netip.AddrPort, n int) (map[string]int, error) {
	var (
		mu     sync.Mutex
		byNode = map[string]int{}
		wg     sync.WaitGroup
		first  error
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node, err := demoSession(ctx, l, vip)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && first == nil {
				first = err
			}
			if err == nil {
				byNode[node]++
			}
		}()
	}
	wg.Wait()
	return byNode, first
}

func demoSession(ctx context.Context, l *lab.Lab, vip netip.AddrPort) (string, error) {
	c, err := l.Client.DialContext(ctx, "tcp", vip.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	greet, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no greeting: %w", err)
	}
	f := strings.Fields(greet)
	if len(f) < 3 {
		return "", fmt.Errorf("bad greeting %q", greet)
	}
	msg := make([]byte, 4096)
	rand.Read(msg)
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r, got); err != nil {
		return "", fmt.Errorf("echo: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return "", errors.New("echo differs")
	}
	return f[2], nil
}

func writeDemoState(l *lab.Lab) error {
	if err := os.MkdirAll(filepath.Dir(demoStateFile), 0o755); err != nil {
		return err
	}
	b, _ := json.Marshal(demoState{PID: os.Getpid(), Namespaces: l.Namespaces()})
	return os.WriteFile(demoStateFile, b, 0o644)
}

// demoStop removes what a previous demo left: it stops the demo process
// (by its PID) if it still runs, else deletes its namespaces.
func demoStop() error {
	b, err := os.ReadFile(demoStateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var st demoState
	if err := json.Unmarshal(b, &st); err != nil {
		os.Remove(demoStateFile)
		return nil
	}
	if st.PID > 0 && st.PID != os.Getpid() && processAlive(st.PID) {
		fmt.Printf("stopping the running demo (pid %d)\n", st.PID)
		_ = syscall.Kill(st.PID, syscall.SIGTERM)
		for i := 0; i < 100 && processAlive(st.PID); i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	names := st.Namespaces
	sort.Strings(names)
	for _, ns := range names {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			fmt.Println("removing namespace", ns)
			if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
				return fmt.Errorf("demo: delete namespace %s: %v: %s", ns, err, out)
			}
		}
	}
	os.Remove(demoStateFile)
	return nil
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(b, []byte("atoll"))
}
