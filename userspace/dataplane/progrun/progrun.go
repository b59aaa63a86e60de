// Package progrun runs XDP programs with BPF_PROG_RUN inside a private
// network namespace whose routes and neighbours the caller controls, so
// that bpf_fib_lookup answers the same way on every machine. The table
// tests of the data plane and the benchmark suite build on it.
package progrun

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/atoll-lb/atoll/userspace/netns"
)

// The addresses of the environment's interface, lb0.
var (
	Addr4 = netip.MustParsePrefix("198.51.100.1/24")
	Addr6 = netip.MustParsePrefix("2001:db8:1::1/64")
)

// Interface is the name of the interface the programs "receive" on.
const Interface = "lb0"

// Env is a namespace with one up veth (lb0, MTU 1500, Addr4 and Addr6)
// and forwarding enabled, as bpf_fib_lookup requires.
type Env struct {
	NS      *netns.NS
	Ifindex int
	MAC     net.HardwareAddr
}

// xdpMd is struct xdp_md, the context of an XDP test run.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// New creates an environment in a fresh namespace named prefix-XXXXXX.
func New(prefix string) (*Env, error) {
	ns, err := netns.New(prefix)
	if err != nil {
		return nil, err
	}
	e := &Env{NS: ns}
	if err := e.init(); err != nil {
		ns.Close()
		return nil, fmt.Errorf("progrun: %w", err)
	}
	return e, nil
}

func (e *Env) init() error {
	h := e.NS.Handle()
	// No dummy device on this kernel: a veth pair inside the namespace.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: Interface, MTU: 1500}, PeerName: "lb1"}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	for _, name := range []string{Interface, "lb1"} {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", name, err)
		}
	}
	for _, kv := range [][2]string{
		{"net.ipv4.conf.all.forwarding", "1"},
		{"net.ipv6.conf.all.forwarding", "1"},
	} {
		if err := e.NS.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	for _, p := range []netip.Prefix{Addr4, Addr6} {
		if err := e.NS.AddAddr(Interface, p); err != nil {
			return err
		}
	}
	var err error
	if e.Ifindex, err = e.NS.LinkIndex(Interface); err != nil {
		return err
	}
	e.MAC, err = e.NS.LinkMAC(Interface)
	return err
}

// Close removes the namespace.
func (e *Env) Close() error { return e.NS.Close() }

// AddNeigh adds a permanent neighbour on lb0.
func (e *Env) AddNeigh(ip netip.Addr, mac net.HardwareAddr) error {
	return e.NS.AddNeigh(Interface, ip, mac)
}

func (e *Env) ctx(frame []byte) xdpMd {
	return xdpMd{DataEnd: uint32(len(frame)), IngressIfindex: uint32(e.Ifindex)}
}

// Run runs prog once on frame as if received on lb0 and returns the
// verdict and the frame as the program left it.
func (e *Env) Run(prog *ebpf.Program, frame []byte) (uint32, []byte, error) {
	return e.RunOn(-1, prog, frame)
}

// RunOn is Run on one CPU (any if cpu < 0): the program's per-CPU state,
// such as the flow cache, is that CPU's, as for a NIC queue whose
// interrupts that CPU serves.
func (e *Env) RunOn(cpu int, prog *ebpf.Program, frame []byte) (uint32, []byte, error) {
	var ret uint32
	out := make([]byte, len(frame)+256)
	err := e.NS.Do(func() error {
		if cpu >= 0 {
			// NS.Do's thread is locked to it; put its CPUs back after.
			var old, one unix.CPUSet
			if err := unix.SchedGetaffinity(0, &old); err != nil {
				return fmt.Errorf("get CPU affinity: %w", err)
			}
			one.Set(cpu)
			if err := unix.SchedSetaffinity(0, &one); err != nil {
				return fmt.Errorf("run on CPU %d: %w", cpu, err)
			}
			defer unix.SchedSetaffinity(0, &old)
		}
		opts := &ebpf.RunOptions{Data: frame, DataOut: out, Context: e.ctx(frame)}
		var err error
		ret, err = prog.Run(opts)
		out = opts.DataOut
		return err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("progrun: BPF_PROG_RUN: %w", err)
	}
	return ret, out, nil
}

// Timing is what Benchmark measured.
type Timing struct {
	// Kernel is BPF_PROG_TEST_RUN's own average, whole nanoseconds.
	Kernel time.Duration
	// NsPerRun is the wall-clock time of the one syscall divided by the
	// repeat count: sub-nanosecond resolution, and the syscall's own cost
	// vanishes over a large repeat.
	NsPerRun float64
	// Verdict is the program's last return value.
	Verdict uint32
}

// Benchmark runs prog repeat times on frame inside the kernel, as if
// received on lb0, and returns the timing and the last verdict. The kernel does not restore the frame between runs: a
// program that changes its length must undo that itself (bpf/bench.c).
//
// cilium/ebpf's Program.Benchmark takes no context (so no ingress
// interface for bpf_fib_lookup); this issues BPF_PROG_TEST_RUN itself.
func (e *Env) Benchmark(prog *ebpf.Program, frame []byte, repeat uint32) (Timing, error) {
	ctx := e.ctx(frame)
	var (
		tm    Timing
		errno unix.Errno
	)
	if repeat == 0 {
		repeat = 1
	}
	err := e.NS.Do(func() error {
		for range 10 {
			attr := testRunAttr{
				progFD:     uint32(prog.FD()),
				dataSizeIn: uint32(len(frame)),
				dataIn:     uint64(uintptr(unsafe.Pointer(&frame[0]))),
				repeat:     repeat,
				ctxSizeIn:  uint32(unsafe.Sizeof(ctx)),
				ctxIn:      uint64(uintptr(unsafe.Pointer(&ctx))),
			}
			start := time.Now()
			_, _, errno = unix.Syscall(unix.SYS_BPF, bpfProgTestRun, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
			wall := time.Since(start)
			runtime.KeepAlive(frame)
			runtime.KeepAlive(&ctx)
			if errno == unix.EINTR {
				continue
			}
			if errno != 0 {
				return errno
			}
			tm = Timing{
				Kernel:   time.Duration(attr.duration),
				NsPerRun: float64(wall.Nanoseconds()) / float64(repeat),
				Verdict:  attr.retval,
			}
			return nil
		}
		return errno
	})
	if err != nil {
		return Timing{}, fmt.Errorf("progrun: benchmark: %w", err)
	}
	return tm, nil
}

const bpfProgTestRun = 10 // BPF_PROG_TEST_RUN

// testRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr.
type testRunAttr struct {
	progFD      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}
