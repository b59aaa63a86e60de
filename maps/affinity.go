package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/bpf"
)

// Names of the affinity maps.
const (
	MapAffinity4 = "affinity4"
	MapAffinity6 = "affinity6"
)

// Affinity flags (bpf/consts.h AFF_F_*).
const (
	// AffinityLearned marks an entry the proxy installed from logins.
	AffinityLearned = 1
)

// Affinity is one client prefix with its island: new front-door flows
// from it go straight to that island's ring instead of the proxy.
type Affinity struct {
	Prefix netip.Prefix
	Island uint32
	// Learned entries expire at Expires (CLOCK_MONOTONIC coarse, the
	// data plane's clock); static ones never (zero).
	Learned bool
	Expires time.Duration
	// ProbeMask keeps the new flows whose flow hash has none of its bits
	// set going through the proxy (0: none; 7: one in 8).
	ProbeMask uint16
}

func (m *Maps) affinityMap(p netip.Prefix) (*ebpf.Map, error) {
	if !p.IsValid() {
		return nil, fmt.Errorf("maps: invalid affinity prefix")
	}
	if p.Addr().Is4() {
		return m.Affinity4, nil
	}
	if p.Addr().Is4In6() {
		return nil, fmt.Errorf("maps: affinity prefix %v is IPv4-mapped; use the IPv4 form", p)
	}
	return m.Affinity6, nil
}

func affinityKey(p netip.Prefix) any {
	p = p.Masked()
	if p.Addr().Is4() {
		return &bpf.BalancerLpm4Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As4()}
	}
	return &bpf.BalancerLpm6Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}
}

// PutAffinity adds or replaces a prefix's affinity.
func (m *Maps) PutAffinity(a Affinity) error {
	mp, err := m.affinityMap(a.Prefix)
	if err != nil {
		return err
	}
	if a.Island >= MaxIslands {
		return fmt.Errorf("maps: affinity %v: island id %d out of range", a.Prefix, a.Island)
	}
	v := bpf.BalancerAffinity{Island: a.Island, ExpiresNs: uint64(a.Expires), ProbeMask: a.ProbeMask}
	if a.Learned {
		v.Flags = AffinityLearned
	}
	if err := mp.Put(affinityKey(a.Prefix), &v); err != nil {
		return fmt.Errorf("maps: put affinity %v: %w", a.Prefix, err)
	}
	return nil
}

// DeleteAffinity removes a prefix; a missing one is not an error.
func (m *Maps) DeleteAffinity(p netip.Prefix) error {
	mp, err := m.affinityMap(p)
	if err != nil {
		return err
	}
	if err := mp.Delete(affinityKey(p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("maps: delete affinity %v: %w", p, err)
	}
	return nil
}

// ListAffinity returns every prefix of both families.
func (m *Maps) ListAffinity() ([]Affinity, error) {
	var out []Affinity
	conv := func(p netip.Prefix, v *bpf.BalancerAffinity) {
		out = append(out, Affinity{Prefix: p, Island: v.Island, Learned: v.Flags&AffinityLearned != 0, Expires: time.Duration(v.ExpiresNs), ProbeMask: v.ProbeMask})
	}
	var (
		k4 bpf.BalancerLpm4Key
		k6 bpf.BalancerLpm6Key
		v  bpf.BalancerAffinity
	)
	it := m.Affinity4.Iterate()
	for it.Next(&k4, &v) {
		conv(netip.PrefixFrom(netip.AddrFrom4(k4.Addr), int(k4.Prefixlen)), &v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("maps: list affinity4: %w", err)
	}
	it = m.Affinity6.Iterate()
	for it.Next(&k6, &v) {
		conv(netip.PrefixFrom(netip.AddrFrom16(k6.Addr), int(k6.Prefixlen)), &v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("maps: list affinity6: %w", err)
	}
	return out, nil
}
