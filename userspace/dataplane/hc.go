package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/atoll-lb/atoll/bpf"
	"github.com/atoll-lb/atoll/maps"
)

// DefaultHCMarkBase is the socket mark base of health checks through the
// forwarding path: mark = base | backend id.
const DefaultHCMarkBase = 0xa7000000

// DefaultHCTable is the routing table marked check packets use.
const DefaultHCTable = 0xa7

// hcFakeMAC is the neighbour entry of a VIP for marked packets: hc.c
// rewrites the MACs anyway, the kernel only needs a resolved neighbour to
// hand the packet to TC egress.
var hcFakeMAC = net.HardwareAddr{0x02, 0, 0, 0, 0xa7, 0xa7}

// HealthSteer is a loaded hc.c: it sends marked health-check packets to
// one backend the way the balancer forwards client packets.
type HealthSteer struct {
	Program  *ebpf.Program
	Targets  *ebpf.Map
	Config   *ebpf.Map
	Stats    *ebpf.Map
	MarkBase uint32

	coll *ebpf.Collection
}

// LoadHealthSteer loads bpf/hc.c with the given mark base (0: default).
func LoadHealthSteer(markBase uint32) (*HealthSteer, error) {
	if markBase == 0 {
		markBase = DefaultHCMarkBase
	}
	if markBase&^0xfffff000 != 0 {
		return nil, fmt.Errorf("dataplane: health-check mark base %#x must leave the low 12 bits free", markBase)
	}
	spec, err := bpf.LoadHC()
	if err != nil {
		return nil, fmt.Errorf("dataplane: hc spec: %w", err)
	}
	if err := spec.Variables["hc_mark_base"].Set(markBase); err != nil {
		return nil, fmt.Errorf("dataplane: hc mark: %w", err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("dataplane: load hc: %w", err)
	}
	return &HealthSteer{
		Program:  coll.Programs[bpf.HCProgHcEgress],
		Targets:  coll.Maps[bpf.HCMapHcTargets],
		Config:   coll.Maps[bpf.HCMapHcConfig],
		Stats:    coll.Maps[bpf.HCMapHcStats],
		MarkBase: markBase,
		coll:     coll,
	}, nil
}

// Close releases the program (attached links keep it alive until closed).
func (h *HealthSteer) Close() error {
	h.coll.Close()
	return nil
}

// Attach attaches hc.c at TC egress (tcx) of an interface of the calling
// thread's network namespace. The link is not pinned: checks live with
// the daemon.
func (h *HealthSteer) Attach(ifindex int) (link.Link, error) {
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: h.Program, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		return nil, fmt.Errorf("dataplane: attach hc to ifindex %d: %w", ifindex, err)
	}
	return l, nil
}

// Mark is the socket mark of checks steered to backend id.
func (h *HealthSteer) Mark(id uint32) uint32 { return h.MarkBase | id }

// SetTarget tells hc.c where checks marked for backend id go.
func (h *HealthSteer) SetTarget(id uint32, addr netip.Addr, fwd maps.ForwardMode) error {
	if id >= maps.MaxBackends {
		return fmt.Errorf("dataplane: hc target id %d out of range", id)
	}
	var t bpf.HCHcTarget
	if addr.Is4() {
		b := addr.As4()
		copy(t.Addr[:], b[:])
		t.Family = 2
	} else {
		t.Addr = addr.As16()
		t.Family = 10
	}
	t.Fwd = uint8(fwd)
	if err := h.Targets.Put(id, &t); err != nil {
		return fmt.Errorf("dataplane: hc target %d: %w", id, err)
	}
	return nil
}

// ClearTarget forgets backend id: its marked packets are dropped.
func (h *HealthSteer) ClearTarget(id uint32) error {
	var t bpf.HCHcTarget
	if err := h.Targets.Put(id, &t); err != nil {
		return fmt.Errorf("dataplane: clear hc target %d: %w", id, err)
	}
	return nil
}

// SetSources sets the outer source addresses of ipip checks.
func (h *HealthSteer) SetSources(v4, v6 netip.Addr) error {
	var c bpf.HCLbConfig
	if v4.Is4() {
		c.Src4 = v4.As4()
	}
	if v6.Is6() && !v6.Is4In6() {
		c.Src6 = v6.As16()
	}
	if err := h.Config.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("dataplane: hc config: %w", err)
	}
	return nil
}

// ReadStats returns hc.c's counters summed over CPUs, in enum hc_stat
// order.
func (h *HealthSteer) ReadStats() ([]uint64, error) {
	out := make([]uint64, int(bpf.HCHcStatHC_STAT_MAX))
	for i := range out {
		var per []uint64
		if err := h.Stats.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("dataplane: hc stats: %w", err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out, nil
}

// HCRouting is the policy routing marked check packets need: a rule
// sending the mark range to a table whose default route leaves by the
// balancer's interface, and a neighbour entry per VIP so the kernel hands
// the packet to TC egress (hc.c sets the real MACs). Unmarked traffic is
// not affected.
type HCRouting struct {
	Handle   *netlink.Handle // the namespace's handle; nil = the current one
	Ifindex  int
	MarkBase uint32
	Table    int
}

func (r *HCRouting) handle() *netlink.Handle {
	if r.Handle != nil {
		return r.Handle
	}
	h, _ := netlink.NewHandle()
	return h
}

// Setup installs the rules and the table's default routes (idempotent).
func (r *HCRouting) Setup() error {
	h := r.handle()
	link, err := h.LinkByIndex(r.Ifindex)
	if err != nil {
		return fmt.Errorf("dataplane: hc routing: %w", err)
	}
	mask := uint32(0xfffff000)
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rule := netlink.NewRule()
		rule.Family = fam
		rule.Mark = r.MarkBase
		rule.Mask = &mask
		rule.Table = r.Table
		rule.Priority = 100
		if err := h.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("dataplane: hc rule: %w", err)
		}
		dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		if fam == unix.AF_INET6 {
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		rt := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Table: r.Table, Scope: netlink.SCOPE_LINK, Family: fam}
		if err := h.RouteReplace(rt); err != nil {
			return fmt.Errorf("dataplane: hc route: %w", err)
		}
	}
	return nil
}

// SetVIPs gives every VIP a neighbour entry on the interface.
func (r *HCRouting) SetVIPs(vips []netip.Addr) error {
	h := r.handle()
	for _, v := range vips {
		fam := unix.AF_INET
		if v.Is6() {
			fam = unix.AF_INET6
		}
		n := &netlink.Neigh{LinkIndex: r.Ifindex, Family: fam, State: netlink.NUD_PERMANENT, IP: v.AsSlice(), HardwareAddr: hcFakeMAC}
		if err := h.NeighSet(n); err != nil {
			return fmt.Errorf("dataplane: hc neighbour for %v: %w", v, err)
		}
	}
	return nil
}

// Teardown removes the rules and the table's routes.
func (r *HCRouting) Teardown() error {
	h := r.handle()
	mask := uint32(0xfffff000)
	var errs []error
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rule := netlink.NewRule()
		rule.Family = fam
		rule.Mark = r.MarkBase
		rule.Mask = &mask
		rule.Table = r.Table
		rule.Priority = 100
		if err := h.RuleDel(rule); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
