package maps

import (
	"encoding/binary"
	"math/bits"
	"net/netip"

	"github.com/atoll-lb/atoll/bpf"
)

// FlowKey is the conntrack key: a client's 5-tuple toward a VIP.
type FlowKey = bpf.BalancerFlowKey

// ipprotoTCP is the only L4 protocol the balancer steers.
const ipprotoTCP = 6

// NewFlowKey returns the key of the TCP flow client → vip. Both must be
// of one family.
func NewFlowKey(client, vip netip.AddrPort) FlowKey {
	var k FlowKey
	putAddr(&k.Src, client.Addr())
	putAddr(&k.Dst, vip.Addr())
	k.Sport = htons(client.Port())
	k.Dport = htons(vip.Port())
	k.Proto = ipprotoTCP
	k.Family = family(vip.Addr())
	return k
}

// fill loads the key's ten 32-bit words as the BPF program reads them on
// a little-endian host.
func (w *keyWords) fill(k *FlowKey) {
	var b [40]byte
	copy(b[0:16], k.Src[:])
	copy(b[16:32], k.Dst[:])
	binary.BigEndian.PutUint16(b[32:], ntohs(k.Sport))
	binary.BigEndian.PutUint16(b[34:], ntohs(k.Dport))
	b[36] = k.Proto
	b[37] = k.Family
	binary.LittleEndian.PutUint16(b[38:], k.Pad)
	for i := range w {
		w[i] = binary.LittleEndian.Uint32(b[i*4:])
	}
}

// keyWords is a flow key seen as the hash's input words.
type keyWords [10]uint32

// fhStep is bpf/hash.h's fh_step: absorb one 64-bit word.
func fhStep(h, w uint64) uint64 {
	h = (h ^ w) * 0x9E3779B97F4A7C15
	return h ^ h>>32
}

// FlowHash is bpf/hash.h's flow_hash: the key's five 64-bit words in two
// multiply chains joined by MurmurHash3's finalizer, top 32 bits. The
// data plane indexes a ring with RingIndex(FlowHash, size).
func FlowHash(k FlowKey, seed uint32) uint32 {
	var w keyWords
	w.fill(&k)
	word := func(i int) uint64 { return uint64(w[2*i]) | uint64(w[2*i+1])<<32 }
	a, b := fhStep(uint64(seed), word(0)), fhStep(^uint64(seed), word(1))
	a = fhStep(a, word(2))
	b = fhStep(b, word(3))
	a = fhStep(a, word(4)) ^ b
	a ^= a >> 33
	a *= 0xff51afd7ed558ccd
	a ^= a >> 33
	a *= 0xc4ceb9fe1a85ec53
	a ^= a >> 33
	return uint32(a >> 32)
}

// RingIndex is bpf/hash.h's ring_index: the hash's slot in a ring of
// size entries (multiply-shift, no division).
func RingIndex(hash uint32, size int) int {
	return int(uint64(hash) * uint64(size) >> 32)
}

// PickFromTable returns the backend id the data plane picks for a flow
// from a Maglev table built by BuildMaglev, or false for an empty table.
func PickFromTable(table []uint32, k FlowKey, seed uint32) (uint32, bool) {
	if len(table) == 0 {
		return 0, false
	}
	return table[RingIndex(FlowHash(k, seed), len(table))], true
}

// FlowLabel is bpf/encap.h's flow_label: the 20-bit IPv6 flow label of
// the outer header of an encapsulated flow.
func FlowLabel(k FlowKey) uint32 {
	var w keyWords
	w.fill(&k)
	l := w[0] ^ w[3] ^ w[8]
	l ^= l >> 12
	return l & 0xfffff
}

func putAddr(dst *[16]uint8, a netip.Addr) {
	*dst = [16]uint8{}
	if a.Is4() {
		b := a.As4()
		copy(dst[:], b[:])
		return
	}
	b := a.As16()
	copy(dst[:], b[:])
}

func getAddr(src [16]uint8, fam uint8) netip.Addr {
	if fam == familyV4 {
		return netip.AddrFrom4([4]byte(src[:4]))
	}
	return netip.AddrFrom16(src)
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return familyV4
	}
	return familyV6
}

// htons turns a port into the uint16 whose in-memory bytes are in network
// order on a little-endian host, as the generated structs hold __be16.
func htons(p uint16) uint16 { return bits.ReverseBytes16(p) }

func ntohs(p uint16) uint16 { return bits.ReverseBytes16(p) }

// FlowCacheSlot returns the flow cache entry (on each CPU) that the flow
// may occupy, as bpf/lb.h's fc_slot computes it.
func FlowCacheSlot(k FlowKey, seed uint32) uint32 {
	var w keyWords
	w.fill(&k)
	return topBits(w[0]^w[1]^w[2]^w[3]^bits.RotateLeft32(w[4]^w[5]^w[6]^w[7], 16)^w[8]^seed, FlowCacheLog2)
}

// topBits is bpf/hash.h's top_bits: x times 0x9E3779B1, its top n bits.
func topBits(x uint32, n int) uint32 {
	return (x * 0x9E3779B1) >> (32 - n)
}
