package maps

import (
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestFlowHashSpread: the flows of busy clients (a few addresses, ports in
// sequence) and of many clients on one port spread evenly over a ring:
// each of 64 equal parts of a 65,537-slot ring gets its share of 640,000
// flows within 5% (five standard deviations), for both families and with
// two seeds.
func TestFlowHashSpread(t *testing.T) {
	const parts, ring = 64, 65537
	vip4 := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), 143)
	vip6 := netip.AddrPortFrom(netip.MustParseAddr("2001:db8:f::10"), 143)
	cases := map[string]func(i int) FlowKey{
		"v4 ports": func(i int) FlowKey {
			a := [4]byte{192, 0, 2, byte(i / 64000)}
			return NewFlowKey(netip.AddrPortFrom(netip.AddrFrom4(a), uint16(1024+i%64000)), vip4)
		},
		"v4 clients": func(i int) FlowKey {
			a := [4]byte{198, byte(i >> 16), byte(i >> 8), byte(i)}
			return NewFlowKey(netip.AddrPortFrom(netip.AddrFrom4(a), 40000), vip4)
		},
		"v6 ports": func(i int) FlowKey {
			a := netip.MustParseAddr("2001:db8:c::").As16()
			a[15] = byte(i / 64000)
			return NewFlowKey(netip.AddrPortFrom(netip.AddrFrom16(a), uint16(1024+i%64000)), vip6)
		},
		"v6 clients": func(i int) FlowKey {
			a := netip.MustParseAddr("2001:db8:c::").As16()
			a[13], a[14], a[15] = byte(i>>16), byte(i>>8), byte(i)
			return NewFlowKey(netip.AddrPortFrom(netip.AddrFrom16(a), 40000), vip6)
		},
	}
	for name, key := range cases {
		for _, seed := range []uint32{0x61746f6c, 1} {
			var count [parts]int
			const n = 640000
			for i := range n {
				count[RingIndex(FlowHash(key(i), seed), ring)*parts/ring]++
			}
			for p, c := range count {
				if c < n/parts*95/100 || c > n/parts*105/100 {
					t.Fatalf("%s, seed %#x: part %d of the ring got %d flows, want %d ± 5%%", name, seed, p, c, n/parts)
				}
			}
		}
	}
}

// TestFlowHashAvalanche: flipping any one bit of a key's address or port
// fields flips about half the hash's bits (averaged over random keys),
// so no part of the key is ignored or weakly mixed.
func TestFlowHashAvalanche(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const rounds = 400
	for byteIdx := range 38 {
		for bit := range 8 {
			flipped := 0
			for range rounds {
				var k FlowKey
				for i := range k.Src {
					k.Src[i], k.Dst[i] = byte(r.Uint32()), byte(r.Uint32())
				}
				k.Sport, k.Dport, k.Proto, k.Family = uint16(r.Uint32()), uint16(r.Uint32()), ipprotoTCP, familyV6
				h := FlowHash(k, 0x61746f6c)
				k2 := k
				flipKeyBit(&k2, byteIdx, bit)
				flipped += bits.OnesCount32(h ^ FlowHash(k2, 0x61746f6c))
			}
			if mean := float64(flipped) / rounds; mean < 15 || mean > 17 {
				t.Fatalf("byte %d bit %d: %.2f of 32 hash bits flip on average, want about 16", byteIdx, bit, mean)
			}
		}
	}
}

// flipKeyBit flips bit `bit` of byte i of the key's in-memory layout.
func flipKeyBit(k *FlowKey, i, bit int) {
	switch {
	case i < 16:
		k.Src[i] ^= 1 << bit
	case i < 32:
		k.Dst[i-16] ^= 1 << bit
	case i < 34:
		k.Sport ^= uint16(1) << (8*(i-32) + bit)
	case i < 36:
		k.Dport ^= uint16(1) << (8*(i-34) + bit)
	case i == 36:
		k.Proto ^= 1 << bit
	default:
		k.Family ^= 1 << bit
	}
}
