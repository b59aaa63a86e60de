//go:build linux

package netns

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	osexec "os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testPrefix starts the name of every namespace these tests create. It
// carries the PID so the leak check in TestMain only counts this binary's
// namespaces, not those of test packages running concurrently.
var testPrefix = fmt.Sprintf("nst%d", os.Getpid())

// serveArg makes the test binary, started inside a namespace by
// TestStartAndWaitTCP, act as a tiny TCP server instead of running tests.
const serveArg = "netns-test-serve"

func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == serveArg {
		serve(os.Args[2])
		return
	}
	if os.Geteuid() != 0 {
		os.Exit(m.Run()) // every test skips itself, loudly
	}
	totalBefore := len(runDirEntries(""))
	if own := runDirEntries(testPrefix + "-"); len(own) != 0 {
		fmt.Fprintf(os.Stderr, "netns: namespaces with this run's prefix already exist: %v\n", own)
		os.Exit(1)
	}
	code := m.Run()
	totalAfter := len(runDirEntries(""))
	if leaked := runDirEntries(testPrefix + "-"); len(leaked) != 0 {
		fmt.Fprintf(os.Stderr, "netns: LEAK: %d namespaces left in %s: %v (entries before: %d, after: %d)\n",
			len(leaked), RunDir, leaked, totalBefore, totalAfter)
		code = 1
	} else if testing.Verbose() {
		fmt.Printf("netns: leak check ok: %s had %d entries before the tests, %d after\n", RunDir, totalBefore, totalAfter)
	}
	os.Exit(code)
}

// runDirEntries lists /run/netns entries starting with prefix.
func runDirEntries(prefix string) []string {
	ents, err := os.ReadDir(RunDir)
	if err != nil && !os.IsNotExist(err) {
		fmt.Fprintf(os.Stderr, "netns: read %s: %v\n", RunDir, err)
		os.Exit(1)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names
}

// serve accepts connections on addr and answers each with "pong\n".
func serve(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(3)
		}
		_, _ = io.WriteString(c, "pong\n")
		c.Close()
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root: creates network namespaces (run the netns tests as root)")
	}
}

func newNS(t *testing.T, tag string) *NS {
	t.Helper()
	n, err := New(testPrefix + "-" + tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}

func newSegment(t *testing.T, mtu int) *Segment {
	t.Helper()
	s, err := NewSegment(testPrefix+"-seg", mtu)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func attach(t *testing.T, s *Segment, host *NS, ifname string, addrs ...string) {
	t.Helper()
	var ps []netip.Prefix
	for _, a := range addrs {
		ps = append(ps, netip.MustParsePrefix(a))
	}
	if _, err := s.Attach(host, ifname, 0, ps...); err != nil {
		t.Fatal(err)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echoOnce listens inside n on addr and echoes back what the first
// connection sends until it half-closes.
func echoOnce(t *testing.T, n *NS, addr string) net.Addr {
	t.Helper()
	l, err := n.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	return l.Addr()
}

// roundTrip dials addr from n, sends msg and expects it back.
func roundTrip(t *testing.T, n *NS, addr string, msg string) net.Conn {
	t.Helper()
	ctx := testCtx(t)
	c, err := n.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echo over %s: got %q, want %q", addr, got, msg)
	}
	return c
}

// neighMAC returns the MAC n has learnt for ip on ifname.
func neighMAC(t *testing.T, n *NS, ifname string, ip netip.Addr) (net.HardwareAddr, int) {
	t.Helper()
	idx, err := n.LinkIndex(ifname)
	if err != nil {
		t.Fatal(err)
	}
	fam := netlink.FAMILY_V4
	if ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	neighs, err := n.Handle().NeighList(idx, fam)
	if err != nil {
		t.Fatal(err)
	}
	for _, nb := range neighs {
		if a, ok := netip.AddrFromSlice(nb.IP); ok && a.Unmap() == ip {
			return nb.HardwareAddr, nb.State
		}
	}
	t.Fatalf("%s: no neighbour entry for %s on %s (entries: %v)", n.Name, ip, ifname, neighs)
	return nil, 0
}

func mustMAC(t *testing.T, n *NS, ifname string) net.HardwareAddr {
	t.Helper()
	mac, err := n.LinkMAC(ifname)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// Two hosts on one segment talk over IPv4 and IPv6, and each learns the
// MAC the other's LinkMAC reports.
func TestSegmentTwoHostsBothFamilies(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	seg := newSegment(t, 1500)
	a, b := newNS(t, "a"), newNS(t, "b")
	attach(t, seg, a, "eth0", "198.51.100.1/24", "2001:db8:1::1/64")
	attach(t, seg, b, "eth0", "198.51.100.2/24", "2001:db8:1::2/64")
	macA, macB := mustMAC(t, a, "eth0"), mustMAC(t, b, "eth0")

	for _, tc := range []struct{ name, srv, cli string }{
		{"ipv4", "198.51.100.1", "198.51.100.2"},
		{"ipv6", "2001:db8:1::1", "2001:db8:1::2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, cli := netip.MustParseAddr(tc.srv), netip.MustParseAddr(tc.cli)
			laddr := echoOnce(t, a, netip.AddrPortFrom(srv, 0).String())
			c := roundTrip(t, b, laddr.String(), "hello over "+tc.name)
			if got := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != cli {
				t.Errorf("client socket bound to %s, want %s (dial not made inside %s?)", got, cli, b.Name)
			}
			if mac, _ := neighMAC(t, b, "eth0", srv); !bytes.Equal(mac, macA) {
				t.Errorf("%s learnt %s for %s; %s's LinkMAC is %s", b.Name, mac, srv, a.Name, macA)
			}
			if mac, _ := neighMAC(t, a, "eth0", cli); !bytes.Equal(mac, macB) {
				t.Errorf("%s learnt %s for %s; %s's LinkMAC is %s", a.Name, mac, cli, b.Name, macB)
			}
		})
	}
}

// threadNetNS names the network namespace thread tid is in.
func threadNetNS(t *testing.T, tid string) (string, bool) {
	t.Helper()
	s, err := os.Readlink(filepath.Join("/proc/self/task", tid, "ns/net"))
	if errors.Is(err, os.ErrNotExist) {
		return "", false // thread exited meanwhile
	}
	if err != nil {
		t.Fatal(err)
	}
	return s, true
}

// Do runs fn inside the namespace and always puts the thread back. Not
// parallel: it checks that no thread of the process is left elsewhere, and
// parallel tests only start once sequential ones are done.
func TestDoRestoresNamespace(t *testing.T) {
	requireRoot(t)
	n := newNS(t, "do")
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(filepath.Join(RunDir, n.Name))
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	requireOrig := func(when string) {
		t.Helper()
		cur, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer cur.Close()
		if !cur.Equal(orig) {
			t.Fatalf("after Do (%s) the calling thread is in %s, want the original %s", when, cur, orig)
		}
	}
	inside := func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(target) {
			return fmt.Errorf("fn ran in %s, not in %s", cur, n.Name)
		}
		return nil
	}

	if err := n.Do(inside); err != nil {
		t.Fatal(err)
	}
	requireOrig("success")

	boom := errors.New("boom")
	if err := n.Do(func() error {
		if err := inside(); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("Do returned %v, want %v", err, boom)
	}
	requireOrig("error")

	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Fatalf("recovered %v, want the panic value \"kaboom\"", r)
			}
		}()
		_ = n.Do(func() error {
			if err := inside(); err != nil {
				t.Error(err)
			}
			panic("kaboom")
		})
		t.Fatal("Do did not re-panic")
	}()
	requireOrig("panic")

	if err := n.Do(func() error { runtime.Goexit(); return nil }); err == nil {
		t.Fatal("Do hid a runtime.Goexit in fn")
	}
	requireOrig("Goexit")

	// No thread of the process was left in the namespace.
	want, _ := threadNetNS(t, strconv.Itoa(os.Getpid()))
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if got, ok := threadNetNS(t, task.Name()); ok && got != want {
			t.Errorf("thread %s is in %s, want %s", task.Name(), got, want)
		}
	}
}

// ifNames parses `ip -o link` output into interface names.
func ifNames(out []byte) []string {
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), ": ", 3)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(f[1], "@")
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Exec runs inside the namespace: `ip -o link` there lists its own links
// only.
func TestExecSeesOnlyOwnLinks(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	n := newNS(t, "exec")
	// A veth pair: dummy links need a module not every CI kernel has.
	la := netlink.NewLinkAttrs()
	la.Name = "nstveth0"
	if err := n.Handle().LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "nstveth1"}); err != nil {
		t.Fatal(err)
	}
	out, err := n.Exec(testCtx(t), "ip", "-o", "link")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ifNames(out), []string{"lo", "nstveth0", "nstveth1"}; !slices.Equal(got, want) {
		t.Fatalf("ip -o link inside %s lists %v, want %v:\n%s", n.Name, got, want, out)
	}
	hostLinks, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range hostLinks {
		name := l.Attrs().Name
		if strings.HasPrefix(name, "nstveth") {
			t.Errorf("the namespace's link %s shows up in the host namespace", name)
		}
		if name != "lo" && slices.Contains(ifNames(out), name) {
			t.Errorf("host link %s shows up inside %s", name, n.Name)
		}
	}

	// Failing commands report their output.
	if _, err := n.Exec(testCtx(t), "ip", "link", "show", "nosuchlink0"); err == nil ||
		!strings.Contains(err.Error(), "nosuchlink0") {
		t.Errorf("Exec error does not carry the command's output: %v", err)
	}
	// Names would be resolved outside the namespace: refused.
	if _, err := n.DialContext(testCtx(t), "tcp", "localhost:80"); err == nil {
		t.Error("DialContext accepted a host name")
	}
}

func requireGone(t *testing.T, name string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(RunDir, name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s/%s still exists after Close (stat: %v)", RunDir, name, err)
	}
	out, err := osexec.CommandContext(testCtx(t), ipCmd(), "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), name) {
		t.Errorf("ip netns list still shows %s:\n%s", name, out)
	}
}

// Close removes the namespace, its mount and its links (including veth
// ends in other namespaces) at once, and may be called again.
func TestCloseRemovesEverything(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	seg := newSegment(t, 0)
	a := newNS(t, "close-a")
	b := newNS(t, "close-b")
	peerA, err := seg.Attach(a, "eth0", 0, netip.MustParsePrefix("192.0.2.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seg.Attach(b, "eth0", 0, netip.MustParsePrefix("192.0.2.2/24")); err != nil {
		t.Fatal(err)
	}
	staleHandle := a.Handle()

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, a.Name)
	if _, err := seg.NS.LinkIndex(peerA); err == nil {
		t.Errorf("veth peer %s still in the segment after its host was closed", peerA)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := a.LinkIndex("eth0"); !errors.Is(err, ErrClosed) {
		t.Errorf("LinkIndex on a closed NS: %v, want ErrClosed", err)
	}
	// A stale handle must fail, not fall back to the caller's namespace.
	if links, err := staleHandle.LinkList(); err == nil {
		t.Errorf("netlink handle of a closed NS still works (listed %d links: which namespace?)", len(links))
	}

	segName := seg.NS.Name
	if err := seg.Close(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, segName)
	if _, err := b.LinkIndex("eth0"); err == nil {
		t.Errorf("%s still has eth0 after its segment was closed", b.Name)
	}
	if err := seg.Close(); err != nil {
		t.Errorf("second segment Close: %v", err)
	}
}

// Sysctl writes land in the namespace only.
func TestSysctlIsPerNamespace(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	n := newNS(t, "sysctl")
	ctx := testCtx(t)
	readIn := func(key string) string {
		t.Helper()
		out, err := n.Exec(ctx, "sysctl", "-n", key)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	readHost := func(key string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	for _, tc := range []struct{ key, v1, v2 string }{
		{"net.ipv4.ip_forward", "1", "0"},
		{"net.ipv4.ip_default_ttl", "42", "43"},
	} {
		host := readHost(tc.key)
		v := tc.v1
		if host == v {
			v = tc.v2
		}
		if err := n.Sysctl(tc.key, v); err != nil {
			t.Fatal(err)
		}
		if got := readIn(tc.key); got != v {
			t.Errorf("inside %s: %s = %s, want %s", n.Name, tc.key, got, v)
		}
		if got := readHost(tc.key); got != host {
			t.Errorf("host %s changed from %s to %s", tc.key, host, got)
		}
	}
	// What New sets up.
	for _, key := range []string{
		"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad",
		"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
	} {
		if got := readIn(key); got != "0" {
			t.Errorf("inside %s: %s = %s, want 0", n.Name, key, got)
		}
	}
	if err := n.Sysctl("kernel.hostname", "x"); err == nil {
		t.Error("Sysctl accepted a key that is not per network namespace")
	}
}

// A gateway outside the local subnet works through the onlink flag and a
// permanent neighbour entry; the server sits on loopback addresses of the
// other host, as a DSR real server would.
func TestOnlinkGatewayAndPermanentNeigh(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	seg := newSegment(t, 1500)
	srv, cli := newNS(t, "gw-srv"), newNS(t, "gw-cli")
	attach(t, seg, srv, "eth0", "198.51.100.1/24", "2001:db8:1::1/64")
	attach(t, seg, cli, "eth0", "198.51.100.2/24", "2001:db8:1::2/64")
	macSrv := mustMAC(t, srv, "eth0")
	if err := cli.DisableOffloads("eth0"); err != nil {
		t.Fatal(err)
	}
	out, err := cli.Exec(testCtx(t), "ethtool", "-k", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tx-checksumming: off", "tcp-segmentation-offload: off",
		"generic-segmentation-offload: off", "generic-receive-offload: off"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("after DisableOffloads, ethtool -k lacks %q:\n%s", want, out)
		}
	}

	for _, tc := range []struct{ name, vip, dst, gw string }{
		{"ipv4", "203.0.113.10/32", "203.0.113.0/24", "192.0.2.1"},
		{"ipv6", "2001:db8:2::10/128", "2001:db8:2::/64", "2001:db8:ff::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vip := netip.MustParsePrefix(tc.vip)
			gw := netip.MustParseAddr(tc.gw)
			if err := srv.AddAddr("lo", vip); err != nil {
				t.Fatal(err)
			}
			if err := cli.AddNeigh("eth0", gw, macSrv); err != nil {
				t.Fatal(err)
			}
			if err := cli.AddRoute(netip.MustParsePrefix(tc.dst), "eth0", gw); err != nil {
				t.Fatal(err)
			}
			laddr := echoOnce(t, srv, netip.AddrPortFrom(vip.Addr(), 0).String())
			roundTrip(t, cli, laddr.String(), "via an off-subnet gateway over "+tc.name)
			if mac, state := neighMAC(t, cli, "eth0", gw); !bytes.Equal(mac, macSrv) || state != netlink.NUD_PERMANENT {
				t.Errorf("neighbour %s: %s state %#x, want %s permanent", gw, mac, state, macSrv)
			}
		})
	}

	// On-link route without a gateway, and a default route.
	if err := cli.AddRoute(netip.MustParsePrefix("192.0.2.128/25"), "eth0", netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	if err := cli.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), "eth0", netip.MustParseAddr("198.51.100.1")); err != nil {
		t.Fatal(err)
	}
	out, err = cli.Exec(testCtx(t), "ip", "route", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"default via 198.51.100.1 dev eth0 onlink", "192.0.2.128/25 dev eth0 scope link",
		"203.0.113.0/24 via 192.0.2.1 dev eth0 onlink"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ip route lacks %q:\n%s", want, out)
		}
	}
}

// A failed Attach leaves neither end of the veth pair behind, and does not
// touch an existing link of the same name.
func TestAttachRollsBackOnError(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	seg := newSegment(t, 0)
	n := newNS(t, "rollback")
	segLinks := func() []string {
		links, err := seg.NS.Handle().LinkList()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		slices.Sort(names)
		return names
	}
	before := segLinks()

	dup := netip.MustParsePrefix("198.51.100.1/24")
	if _, err := seg.Attach(n, "eth0", 0, dup, dup); err == nil {
		t.Fatal("Attach with a duplicate address succeeded")
	} else {
		t.Logf("expected error: %v", err)
	}
	if _, err := n.LinkIndex("eth0"); err == nil {
		t.Error("failed Attach left eth0 in the host namespace")
	}
	if got := segLinks(); !slices.Equal(got, before) {
		t.Errorf("failed Attach left links in the segment: %v, before %v", got, before)
	}

	if _, err := seg.Attach(n, "averyverylongname", 0); err == nil {
		t.Error("Attach accepted a 17-character interface name")
	}
	attach(t, seg, n, "eth0", "198.51.100.1/24")
	if _, err := seg.Attach(n, "eth0", 0); err == nil {
		t.Fatal("second Attach with the same name succeeded")
	}
	if _, err := n.LinkIndex("eth0"); err != nil {
		t.Errorf("a failed Attach removed the existing eth0: %v", err)
	}
}

// Names are unique per call, and both namespaces exist under /run/netns.
func TestNamesAreUnique(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	a, b := newNS(t, "same"), newNS(t, "same")
	if a.Name == b.Name {
		t.Fatalf("two New calls returned the same name %s", a.Name)
	}
	for _, n := range []*NS{a, b} {
		if _, err := os.Stat(filepath.Join(RunDir, n.Name)); err != nil {
			t.Error(err)
		}
	}
}

// Start runs a long-lived process inside the namespace; WaitTCP sees it
// become ready.
func TestStartAndWaitTCP(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	n := newNS(t, "start")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:18080"
	cmd, err := n.Start(context.Background(), self, serveArg, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := n.WaitTCP(testCtx(t), addr); err != nil {
		t.Fatal(err)
	}
	c, err := n.DialContext(testCtx(t), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "pong\n" {
		t.Fatalf("read %q, %v; want \"pong\\n\"", got, err)
	}

	// WaitTCP gives up with ctx when nothing listens.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := n.WaitTCP(ctx, "127.0.0.1:18081"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitTCP with nothing listening: %v, want deadline exceeded", err)
	}
}

// The segment's bridge is configured as documented and its ports forward
// as soon as they are attached.
func TestSegmentBridgeSettings(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	seg := newSegment(t, 9000)
	h := newNS(t, "brport")
	peer, err := seg.Attach(h, "eth0", 1500, netip.MustParsePrefix("192.0.2.7/24"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	out, err := seg.NS.Exec(ctx, "ip", "-d", "link", "show", seg.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mtu 9000", "state UP", "forward_delay 0", "stp_state 0",
		"ageing_time 30000", "mcast_snooping 0"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bridge lacks %q:\n%s", want, out)
		}
	}
	out, err = seg.NS.Exec(ctx, "ip", "-d", "link", "show", peer)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mtu 1500", "master " + seg.Bridge, "bridge_slave state forwarding"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("port %s lacks %q:\n%s", peer, want, out)
		}
	}
	out, err = seg.NS.Exec(ctx, "sysctl", "-n", "net.ipv6.conf."+seg.Bridge+".disable_ipv6")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(out)) != "1" {
		t.Errorf("IPv6 not disabled on the bridge: %s", out)
	}
	out, err = h.Exec(ctx, "ip", "-o", "addr", "show", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "192.0.2.7/24") {
		t.Errorf("host end lacks its address:\n%s", out)
	}
	out, err = h.Exec(ctx, "ip", "-o", "link", "show", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "mtu 1500") || !strings.Contains(string(out), "state UP") {
		t.Errorf("host end is not up with MTU 1500:\n%s", out)
	}
}
