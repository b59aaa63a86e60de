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

const jhashInitval = 0xdeadbeef

func jhashMix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= bits.RotateLeft32(c, 4)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 6)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 8)
	b += a
	a -= c
	a ^= bits.RotateLeft32(c, 16)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 19)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 4)
	b += a
	return a, b, c
}

func jhashFinal(a, b, c uint32) uint32 {
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return c
}

// FlowHash is bpf/hash.h's flow_hash: lookup3 (jhash2) over the key's ten
// words. The data plane indexes a ring with FlowHash % size.
func FlowHash(k FlowKey, seed uint32) uint32 {
	var w keyWords
	w.fill(&k)
	a := uint32(jhashInitval) + 10<<2 + seed
	b, c := a, a
	for i := 0; i < 9; i += 3 {
		a += w[i]
		b += w[i+1]
		c += w[i+2]
		a, b, c = jhashMix(a, b, c)
	}
	a += w[9]
	return jhashFinal(a, b, c)
}

// PickFromTable returns the backend id the data plane picks for a flow
// from a Maglev table built by BuildMaglev, or false for an empty table.
func PickFromTable(table []uint32, k FlowKey, seed uint32) (uint32, bool) {
	if len(table) == 0 {
		return 0, false
	}
	return table[FlowHash(k, seed)%uint32(len(table))], true
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
