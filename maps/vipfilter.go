package maps

import (
	"fmt"
	"net/netip"

	"github.com/atoll-lb/atoll/bpf"
)

// VIPFilterBit is the bit of the VIP filter that stands for destination
// address a, as bpf/lb.h's vip_filter_bit computes it: the XOR of the
// address's four 32-bit words (an IPv4 address is the first word, the
// rest zero), its top VIPFilterLog2 bits by topBits.
func VIPFilterBit(a netip.Addr) uint32 {
	var (
		k FlowKey
		w keyWords
	)
	putAddr(&k.Dst, a)
	w.fill(&k) // the words as the program reads them; Dst is words 4–7
	return topBits(w[4]^w[5]^w[6]^w[7], VIPFilterLog2)
}

// syncVIPFilter rebuilds the VIP filter from vip_addrs and stores it with
// one update, so a packet sees the old filter or the new one. Callers
// order it so that a VIP's bit is set before its service exists and
// cleared only after its last service is gone: a filter never hides a
// service from the data plane.
func (m *Maps) syncVIPFilter() error {
	var (
		f bpf.BalancerVipBits
		k bpf.BalancerAddrKey
		n uint32
	)
	it := m.VIPAddrs.Iterate()
	for it.Next(&k, &n) {
		bit := VIPFilterBit(getAddr(k.Addr, k.Family))
		f.Bits[bit/64] |= 1 << (bit % 64)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("maps: iterate vip addresses: %w", err)
	}
	if err := m.VIPFilter.Put(uint32(0), &f); err != nil {
		return fmt.Errorf("maps: put vip filter: %w", err)
	}
	return nil
}
