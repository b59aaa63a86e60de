//go:build linux

// Package netns builds throwaway network topologies out of Linux network
// namespaces, bridges and veth pairs, and runs Go code and commands inside
// them. It is used by atoll's tests and its lab; everything it creates is
// removed by Close, names carry a random suffix so parallel tests do not
// collide, and nothing is wired to the host's own interfaces, so no test
// traffic leaves the namespaces.
//
// Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where named namespaces are bind-mounted, as iproute2 does, so
// `ip netns exec NAME ...` works on them.
const RunDir = "/run/netns"

// maxIfNameLen is IFNAMSIZ-1: the longest interface name the kernel takes.
const maxIfNameLen = 15

// ErrClosed is returned (wrapped) by every method of a closed NS.
var ErrClosed = errors.New("namespace closed")

// NS is a named network namespace, bind-mounted under /run/netns so
// `ip netns exec NAME` works on it too. Create one with New and release it
// with Close. Its methods are safe for concurrent use.
type NS struct {
	// Name is the namespace's name under /run/netns: "<prefix>-<6 hex>".
	Name string

	path string
	nh   *netlink.Handle

	mu     sync.Mutex
	fd     netns.NsHandle // -1 once closed
	closed bool
}

// New creates the network namespace "<prefix>-<6 random hex digits>",
// brings its loopback up, and sets, before any other link exists in it:
// net.ipv6.conf.{all,default}.accept_dad=0 (addresses usable at once) and
// net.ipv4.conf.{all,default,lo}.rp_filter=0 (asymmetric, direct server
// return paths are not dropped). On error nothing is left behind.
func New(prefix string) (*NS, error) {
	if prefix == "" {
		prefix = "atoll"
	}
	if strings.ContainsAny(prefix, "/\x00") || prefix == "." || prefix == ".." || len(prefix) > 200 {
		return nil, fmt.Errorf("netns: invalid prefix %q", prefix)
	}
	if err := prepareRunDir(); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		name := prefix + "-" + randHex(3)
		path := filepath.Join(RunDir, name)
		f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
		if errors.Is(err, fs.ErrExist) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("netns %s: create mount point: %w", name, err)
		}
		f.Close()
		n := &NS{Name: name, path: path, fd: -1}
		if err := n.init(); err != nil {
			if cerr := n.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
			return nil, err
		}
		return n, nil
	}
}

// init creates the namespace behind n.path and configures it.
func (n *NS) init() error {
	if err := n.unshareAndMount(); err != nil {
		return err
	}
	fd, err := netns.GetFromPath(n.path)
	if err != nil {
		return fmt.Errorf("netns %s: open: %w", n.Name, err)
	}
	n.fd = fd
	nh, err := netlink.NewHandleAt(fd, handleFamilies()...)
	if err != nil {
		return fmt.Errorf("netns %s: netlink handle: %w", n.Name, err)
	}
	n.nh = nh

	lo, err := nh.LinkByName("lo")
	if err == nil {
		err = nh.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("netns %s: bring lo up: %w", n.Name, err)
	}
	for _, kv := range [][2]string{
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
		{"net.ipv4.conf.lo.rp_filter", "0"},
	} {
		err := n.Sysctl(kv[0], kv[1])
		if err != nil && strings.HasPrefix(kv[0], "net.ipv6.") && errors.Is(err, fs.ErrNotExist) {
			continue // kernel booted with ipv6.disable=1
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unshareAndMount creates a new network namespace on a throwaway locked
// thread and bind-mounts it on n.path. The thread is switched back; if that
// fails it stays locked, so the runtime discards it when the goroutine ends.
func (n *NS) unshareAndMount() error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: get current namespace: %w", n.Name, err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: unshare: %w", n.Name, err)
			return
		}
		var mountErr error
		if err := unix.Mount("/proc/thread-self/ns/net", n.path, "none", unix.MS_BIND, ""); err != nil {
			mountErr = fmt.Errorf("netns %s: bind-mount on %s: %w", n.Name, n.path, err)
		}
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(mountErr, fmt.Errorf("netns %s: switch thread back: %w", n.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- mountErr
	}()
	return <-errc
}

var runDir struct {
	sync.Mutex
	ready bool
}

// prepareRunDir makes /run/netns a shared mount point, exactly as
// `ip netns add` does, so namespace mounts propagate to (and unmounts from)
// other mount namespaces, e.g. the one `ip netns exec` runs in. An flock on
// the directory keeps concurrent test binaries from stacking bind mounts.
func prepareRunDir() error {
	runDir.Lock()
	defer runDir.Unlock()
	if runDir.ready {
		return nil
	}
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("netns: create %s: %w", RunDir, err)
	}
	dfd, err := unix.Open(RunDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: open %s: %w", RunDir, err)
	}
	defer unix.Close(dfd) // also drops the flock
	if err := unix.Flock(dfd, unix.LOCK_EX); err != nil {
		return fmt.Errorf("netns: lock %s: %w", RunDir, err)
	}
	for made := false; ; made = true {
		err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINVAL) || made {
			return fmt.Errorf("netns: make %s a shared mount: %w", RunDir, err)
		}
		// Not a mount point yet: bind it onto itself first.
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("netns: bind-mount %s on itself: %w", RunDir, err)
		}
	}
	runDir.ready = true
	return nil
}

// handleFamilies lists the netlink families the namespace's handle opens
// sockets for. A request for a family the handle has no socket for is
// silently run in the *caller's* namespace by the netlink library, so open
// every family the kernel offers that the library uses.
func handleFamilies() []int {
	fams := []int{unix.NETLINK_ROUTE, unix.NETLINK_GENERIC}
	for _, f := range []int{unix.NETLINK_XFRM, unix.NETLINK_NETFILTER} {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, f)
		if err == nil {
			unix.Close(fd)
			fams = append(fams, f)
		}
	}
	return fams
}

// Close deletes the namespace: it deletes every link in it (so veth peers in
// other namespaces vanish before Close returns, rather than whenever the
// kernel gets round to destroying the namespace), closes the netlink
// handle, and unmounts and removes /run/netns/NAME. A namespace still
// referenced elsewhere (a process started in it, an open socket) lives on
// in the kernel, without links, until that reference goes. Close is
// idempotent; calls after the first return nil.
func (n *NS) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	fd := n.fd
	n.fd = -1
	n.mu.Unlock()

	var errs []error
	if n.nh != nil {
		links, err := n.nh.LinkList()
		if err != nil {
			errs = append(errs, fmt.Errorf("list links: %w", err))
		}
		for _, l := range links {
			a := l.Attrs()
			if a.Flags&net.FlagLoopback != 0 {
				continue
			}
			err := n.nh.LinkDel(l)
			// ENODEV: the other end of a veth pair deleted just before.
			// EOPNOTSUPP: a physical device; it returns to the initial
			// namespace when this one is destroyed.
			if err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EOPNOTSUPP) {
				errs = append(errs, fmt.Errorf("delete link %s: %w", a.Name, err))
			}
		}
		closeHandle(n.nh)
	}
	if fd >= 0 {
		if err := fd.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close fd: %w", err))
		}
	}
	if err := unix.Unmount(n.path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", n.path, err))
	}
	if err := os.Remove(n.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", n.path, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netns %s: close: %w", n.Name, err)
	}
	return nil
}

// closeHandle closes h's sockets but, unlike h.Close, keeps its socket map,
// so a later request through a stale copy of the handle fails ("file already
// closed") instead of being silently run in the caller's namespace, which
// is what the netlink library does for a handle without sockets.
func closeHandle(h *netlink.Handle) {
	v := reflect.ValueOf(h).Elem().FieldByName("sockets")
	if v.IsValid() && v.Type() == reflect.TypeFor[map[int]*nl.SocketHandle]() {
		m := *(*map[int]*nl.SocketHandle)(unsafe.Pointer(v.UnsafeAddr()))
		if len(m) > 0 {
			for _, sh := range m {
				sh.Close()
			}
			return
		}
	}
	h.Close()
}

// dupFD returns a private duplicate of the namespace fd, so a concurrent
// Close cannot pull it from under a setns.
func (n *NS) dupFD() (netns.NsHandle, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return -1, fmt.Errorf("netns %s: %w", n.Name, ErrClosed)
	}
	fd, err := unix.FcntlInt(uintptr(n.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("netns %s: dup fd: %w", n.Name, err)
	}
	return netns.NsHandle(fd), nil
}

// handle returns the netlink handle, or an error once n is closed.
func (n *NS) handle() (*netlink.Handle, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("netns %s: %w", n.Name, ErrClosed)
	}
	return n.nh, nil
}

// Handle returns a netlink handle bound to the namespace: its requests act
// on the namespace's links, addresses, routes and neighbours. It is owned by
// n; do not close it. After Close its requests fail.
func (n *NS) Handle() *netlink.Handle {
	return n.nh
}

// Do runs fn on a locked OS thread switched into the namespace and switches
// the thread back afterwards, also when fn panics. fn runs on its own
// goroutine, so the caller's thread is never switched; a panic in fn is
// re-raised in the caller with the same value, and fn must not call
// t.FailNow/t.Fatal (return an error instead: a runtime.Goexit in fn is
// reported as an error). If switching back fails, the thread is left locked
// so the runtime destroys it instead of reusing it.
//
// Sockets created in fn stay in the namespace after Do returns. Goroutines
// that fn starts do not run in the namespace.
func (n *NS) Do(fn func() error) error {
	target, err := n.dupFD()
	if err != nil {
		return err
	}
	defer target.Close()

	type result struct {
		err      error
		panicked bool
		value    any
		exited   bool // runtime.Goexit in fn
	}
	done := make(chan result, 1)
	go func() {
		res := result{exited: true}
		defer func() { done <- res }()
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			res = result{err: fmt.Errorf("netns %s: get current namespace: %w", n.Name, err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread() // setns failed: the thread is unchanged
			res = result{err: fmt.Errorf("netns %s: enter: %w", n.Name, err)}
			return
		}
		defer func() {
			if err := netns.Set(orig); err != nil {
				// Keep the thread locked: it dies with this goroutine.
				res.err = errors.Join(res.err, fmt.Errorf("netns %s: switch thread back (thread discarded): %w", n.Name, err))
				return
			}
			runtime.UnlockOSThread()
		}()
		defer func() {
			if r := recover(); r != nil {
				res.panicked, res.value, res.exited = true, r, false
			}
		}()
		res.err = fn()
		res.exited = false
	}()
	res := <-done
	if res.panicked {
		panic(res.value)
	}
	if res.exited {
		return errors.Join(res.err, fmt.Errorf("netns %s: Do: fn called runtime.Goexit (t.FailNow/t.Fatal?)", n.Name))
	}
	return res.err
}

// ipCmd finds iproute2's ip binary; /usr/sbin is not always on PATH.
func ipCmd() string {
	if p, err := exec.LookPath("ip"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "ip"
}

// Command returns an unstarted command that runs name inside the namespace
// through `ip netns exec` (which execs name, so the process's PID is the
// command's own). Use it to set Stdout, Stderr, Env, etc. before starting.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, ipCmd(), append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// NetCommand is like Command but enters only the network namespace
// (nsenter --net), keeping the caller's mount namespace. `ip netns exec`
// remounts /sys privately, so a process it starts sees no bpffs under
// /sys/fs/bpf and anything it pins there dies with it; a daemon whose
// pinned state must outlive it (atoll run) is started this way.
func (n *NS) NetCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + filepath.Join(RunDir, n.Name), "--", name}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Exec runs a command inside the namespace and returns its combined output.
// The error includes the output.
func (n *NS) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	if _, err := n.handle(); err != nil {
		return nil, err
	}
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("netns %s: exec %s: %w: %s", n.Name,
			strings.Join(append([]string{name}, args...), " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Start starts a long-running command inside the namespace. Its output is
// discarded (use Command to capture it); the caller must Wait for it, or
// kill it (cancel ctx, or cmd.Process.Kill) and then Wait. A process still
// running keeps the namespace alive in the kernel after Close.
func (n *NS) Start(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	if _, err := n.handle(); err != nil {
		return nil, err
	}
	cmd := n.Command(ctx, name, args...)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("netns %s: start %s: %w", n.Name, name, err)
	}
	return cmd, nil
}

// Sysctl writes value to the network sysctl key inside the namespace, e.g.
// Sysctl("net.ipv4.ip_forward", "1"). Keys use dots, or slashes when a
// component (an interface name like eth0.100) contains a dot, as sysctl(8)
// accepts. Only net.* keys are accepted: others are not per namespace and
// would change the host.
func (n *NS) Sysctl(key, value string) error {
	path, err := sysctlPath(key)
	if err != nil {
		return fmt.Errorf("netns %s: sysctl %s: %w", n.Name, key, err)
	}
	err = n.Do(func() error {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(value)
		return errors.Join(err, f.Close())
	})
	if err != nil {
		return fmt.Errorf("netns %s: sysctl %s=%s: %w", n.Name, key, value, err)
	}
	return nil
}

// sysctlPath maps a sysctl key to its /proc/sys path, refusing non-net keys.
func sysctlPath(key string) (string, error) {
	rel := strings.TrimPrefix(key, "/")
	if !strings.Contains(rel, "/") {
		rel = strings.ReplaceAll(rel, ".", "/")
	}
	p := filepath.Join("/proc/sys", rel)
	if !strings.HasPrefix(p, "/proc/sys/net/") || strings.Contains(rel, "..") {
		return "", errors.New("only net.* keys are per network namespace")
	}
	return p, nil
}

// checkLiteral refuses addresses that need a name lookup: the resolver runs
// on other goroutines, hence outside the namespace.
func checkLiteral(network, addr string) error {
	switch {
	case strings.HasPrefix(network, "unix"):
		return nil
	case strings.HasPrefix(network, "ip:"), strings.HasPrefix(network, "ip4:"), strings.HasPrefix(network, "ip6:"):
		if addr == "" {
			return nil
		}
		_, err := netip.ParseAddr(addr)
		return err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("host %q is not an IP literal (names would be resolved outside the namespace)", host)
	}
	return nil
}

// Listen announces on the local network address from inside the namespace
// (see net.Listen). Hosts must be IP literals or empty.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	if err := checkLiteral(network, addr); err != nil {
		return nil, fmt.Errorf("netns %s: listen %s %s: %w", n.Name, network, addr, err)
	}
	var l net.Listener
	err := n.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: listen %s %s: %w", n.Name, network, addr, err)
	}
	return l, nil
}

// ListenPacket is Listen for packet networks (see net.ListenPacket), e.g.
// "udp". Hosts must be IP literals or empty.
func (n *NS) ListenPacket(network, addr string) (net.PacketConn, error) {
	if err := checkLiteral(network, addr); err != nil {
		return nil, fmt.Errorf("netns %s: listen %s %s: %w", n.Name, network, addr, err)
	}
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: listen %s %s: %w", n.Name, network, addr, err)
	}
	return pc, nil
}

// DialContext connects to addr from a socket created inside the namespace
// (see net.Dialer.DialContext). Hosts must be IP literals. The dial runs
// serially on the namespace's locked thread (no happy-eyeballs goroutines,
// which would create their sockets outside it); the thread is held until
// the connect completes or ctx ends.
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := checkLiteral(network, addr); err != nil {
		return nil, fmt.Errorf("netns %s: dial %s %s: %w", n.Name, network, addr, err)
	}
	d := net.Dialer{FallbackDelay: -1}
	var c net.Conn
	err := n.Do(func() (err error) {
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: dial %s %s: %w", n.Name, network, addr, err)
	}
	return c, nil
}

// WaitTCP polls, with a short backoff bounded by ctx, until a TCP connection
// to addr from inside the namespace succeeds, then closes it. It is a
// readiness check for a server just started.
func (n *NS) WaitTCP(ctx context.Context, addr string) error {
	backoff := 5 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := n.DialContext(actx, "tcp", addr)
		cancel()
		if err == nil {
			_ = c.Close() // only readiness matters
			return nil
		}
		if errors.Is(err, ErrClosed) {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("netns %s: wait for tcp %s: %w (last error: %v)", n.Name, addr, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// link looks ifname up in the namespace.
func (n *NS) link(ifname string) (*netlink.Handle, netlink.Link, error) {
	h, err := n.handle()
	if err != nil {
		return nil, nil, err
	}
	l, err := h.LinkByName(ifname)
	if err != nil {
		return nil, nil, fmt.Errorf("netns %s: link %s: %w", n.Name, ifname, err)
	}
	return h, l, nil
}

// ipNet converts an address and prefix length to a net.IPNet.
func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, a.BitLen())}
}

// checkPrefix refuses prefixes the kernel would misread.
func checkPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return errors.New("invalid prefix")
	}
	if p.Addr().Is4In6() {
		return errors.New("IPv4-mapped IPv6 address; use the plain IPv4 form")
	}
	return nil
}

// AddAddr adds prefix (the address with its prefix length, e.g.
// 198.51.100.1/24) to ifname. IPv6 addresses get IFA_F_NODAD, so they are
// usable at once; IPv4 ones get the usual broadcast address.
func (n *NS) AddAddr(ifname string, prefix netip.Prefix) error {
	if err := checkPrefix(prefix); err != nil {
		return fmt.Errorf("netns %s: add address %s: %w", n.Name, prefix, err)
	}
	h, l, err := n.link(ifname)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: ipNet(prefix.Addr(), prefix.Bits())}
	if prefix.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("netns %s: add address %s to %s: %w", n.Name, prefix, ifname, err)
	}
	return nil
}

// AddRoute adds a route to dst (masked to its prefix length) out of ifname.
// With a valid gw the route goes via gw with the onlink flag, so a gateway
// outside the interface's subnets but on the same segment works; with a
// zero gw the route is on-link (scope link).
func (n *NS) AddRoute(dst netip.Prefix, ifname string, gw netip.Addr) error {
	if err := checkPrefix(dst); err != nil {
		return fmt.Errorf("netns %s: add route %s: %w", n.Name, dst, err)
	}
	dst = dst.Masked()
	if gw.IsValid() && (gw.Is4() != dst.Addr().Is4() || gw.Is4In6() || gw.Zone() != "") {
		return fmt.Errorf("netns %s: add route %s via %s: gateway family differs from destination's (or is mapped/zoned)", n.Name, dst, gw)
	}
	h, l, err := n.link(ifname)
	if err != nil {
		return err
	}
	r := &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       ipNet(dst.Addr(), dst.Bits()),
		Scope:     netlink.SCOPE_LINK,
	}
	if gw.IsValid() {
		r.Gw = net.IP(gw.AsSlice())
		r.Flags = int(netlink.FLAG_ONLINK)
		r.Scope = netlink.SCOPE_UNIVERSE
	}
	if err := h.RouteAdd(r); err != nil {
		if gw.IsValid() {
			return fmt.Errorf("netns %s: add route %s via %s dev %s: %w", n.Name, dst, gw, ifname, err)
		}
		return fmt.Errorf("netns %s: add route %s dev %s: %w", n.Name, dst, ifname, err)
	}
	return nil
}

// AddNeigh installs a permanent neighbour entry ip -> mac on ifname,
// replacing any entry the kernel had learnt.
func (n *NS) AddNeigh(ifname string, ip netip.Addr, mac net.HardwareAddr) error {
	if !ip.IsValid() || ip.Is4In6() || len(mac) == 0 {
		return fmt.Errorf("netns %s: add neighbour %s lladdr %s: invalid address", n.Name, ip, mac)
	}
	h, l, err := n.link(ifname)
	if err != nil {
		return err
	}
	fam := netlink.FAMILY_V4
	if ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	nb := &netlink.Neigh{
		LinkIndex:    l.Attrs().Index,
		Family:       fam,
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(ip.WithZone("").AsSlice()),
		HardwareAddr: mac,
	}
	if err := h.NeighSet(nb); err != nil {
		return fmt.Errorf("netns %s: add neighbour %s lladdr %s dev %s: %w", n.Name, ip, mac, ifname, err)
	}
	return nil
}

// LinkMAC returns ifname's hardware address.
func (n *NS) LinkMAC(ifname string) (net.HardwareAddr, error) {
	_, l, err := n.link(ifname)
	if err != nil {
		return nil, err
	}
	return append(net.HardwareAddr(nil), l.Attrs().HardwareAddr...), nil
}

// LinkIndex returns ifname's interface index inside the namespace.
func (n *NS) LinkIndex(ifname string) (int, error) {
	_, l, err := n.link(ifname)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}

// DisableOffloads runs `ethtool -K IFNAME tx off tso off gso off gro off`
// inside the namespace. Transmit checksum offload must be off on a veth
// whose packets reach an XDP_TX path: otherwise they carry partial
// checksums that become bad once the program rewrites and bounces them.
func (n *NS) DisableOffloads(ifname string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := n.Exec(ctx, "ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off", "gro", "off"); err != nil {
		return fmt.Errorf("netns %s: disable offloads on %s: %w", n.Name, ifname, err)
	}
	return nil
}

// randHex returns 2*nbytes random hex digits.
func randHex(nbytes int) string {
	b := make([]byte, nbytes)
	_, _ = rand.Read(b) // never fails (crypto/rand panics rather)
	return hex.EncodeToString(b)
}

// checkIfName refuses names the kernel would reject.
func checkIfName(name string) error {
	if name == "" || len(name) > maxIfNameLen || name == "." || name == ".." ||
		strings.ContainsAny(name, "/:\x00 \t\n") {
		return fmt.Errorf("invalid interface name %q (1-%d characters, no '/', ':' or spaces)", name, maxIfNameLen)
	}
	return nil
}
