package maps

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/bpf"
)

// svcSlot mirrors bpf/types.h's struct svc_slot (32 bytes: the C side
// asserts the layout; BTF does not carry it, see bpf/maps.h).
type svcSlot struct {
	Key bpf.BalancerSvcKey
	Svc bpf.BalancerService
}

// slotShared marks a services table slot that two services share: the
// data plane asks the services hash (SVC_SLOT_SHARED).
const slotShared = 0xff

// SvcSlot is the services table slot of a service key, as bpf/lb.h's
// svc_slot_of computes it: the key's five 32-bit words as the program
// reads them (little-endian), the fifth (port, protocol, family) turned
// half over, folded by topBits.
func SvcSlot(k bpf.BalancerSvcKey) uint32 {
	w4 := uint32(k.Port) | uint32(k.Proto)<<16 | uint32(k.Family)<<24
	x := binary.LittleEndian.Uint32(k.Addr[0:4]) ^ binary.LittleEndian.Uint32(k.Addr[4:8]) ^
		binary.LittleEndian.Uint32(k.Addr[8:12]) ^ binary.LittleEndian.Uint32(k.Addr[12:16]) ^ bits.RotateLeft32(w4, 16)
	return topBits(x, SvcTableLog2)
}

// SyncServiceTable rebuilds the services table from the services hash.
// New and every service write do it; it is for tools and tests that
// write the hash directly.
func (m *Maps) SyncServiceTable() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.syncSvcTable()
}

// syncSvcTable rebuilds the services table from the services hash in a
// new inner map and switches it in with one update, so a packet sees the
// old table or the new one (an array update is not atomic: a packet could
// read half a slot). It follows every write to the hash.
func (m *Maps) syncSvcTable() error {
	slots := make([]svcSlot, SvcTableSize)
	var (
		k bpf.BalancerSvcKey
		v bpf.BalancerService
	)
	it := m.Services.Iterate()
	for it.Next(&k, &v) {
		s := &slots[SvcSlot(k)]
		switch s.Key.Family {
		case 0:
			*s = svcSlot{Key: k, Svc: v}
		default:
			*s = svcSlot{Key: bpf.BalancerSvcKey{Family: slotShared}}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("maps: iterate services: %w", err)
	}
	inner, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "svc_table",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  uint32(binary.Size(svcSlot{})),
		MaxEntries: SvcTableSize,
	})
	if err != nil {
		return fmt.Errorf("maps: create services table: %w", err)
	}
	defer inner.Close()
	if _, err := inner.BatchUpdate(indexes(SvcTableSize), slots, nil); err != nil {
		return fmt.Errorf("maps: fill services table: %w", err)
	}
	if err := m.SvcTable.Put(uint32(0), inner); err != nil {
		return fmt.Errorf("maps: switch services table: %w", err)
	}
	return nil
}
