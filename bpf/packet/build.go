package packet

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Default MAC addresses used when a spec leaves SrcMAC or DstMAC nil.
var (
	DefaultSrcMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	DefaultDstMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
)

// Fixed header values the builders write.
const (
	// DefaultTTL is the IPv4 TTL / IPv6 hop limit used when a spec leaves it 0,
	// and by ICMPTooBig.
	DefaultTTL = 64
	// TCPWindow is the window every TCP header built by TCP carries.
	TCPWindow = 65535
	// ICMPv6MinMTU is the IPv6 minimum MTU that bounds an ICMPv6 error
	// (RFC 4443 section 2.4 (c)).
	ICMPv6MinMTU = 1280
)

// TCPSpec describes a TCP segment in an Ethernet frame.
//
// Fields marked IPv4 or IPv6 must be left zero for the other family; TCP
// panics otherwise.
type TCPSpec struct {
	SrcMAC, DstMAC net.HardwareAddr // nil → DefaultSrcMAC / DefaultDstMAC (02:00:00:00:00:01 / 02:00:00:00:00:02)
	VLAN           uint16           // 0 = untagged; else one 802.1Q tag (TPID 0x8100, PCP 0) with this VID (at most 4095)

	Src, Dst         netip.Addr // both IPv4 or both IPv6
	SrcPort, DstPort uint16
	Flags            uint8 // TCP flag bits: FlagFIN, FlagSYN, ...
	Seq, Ack         uint32

	IPv4Options []byte // IPv4 only; zero-padded (EOL) to a multiple of 4 by the builder, at most 40 bytes
	TOS         uint8  // IPv4 TOS / IPv6 traffic class
	DF          bool   // IPv4 don't-fragment
	MF          bool   // IPv4 more-fragments
	FragOffset  uint16 // IPv4 fragment offset in 8-byte units (at most 0x1fff)
	ID          uint16 // IPv4 identification
	FlowLabel   uint32 // IPv6 flow label (at most 0xfffff)
	TTL         uint8  // IPv4 TTL / IPv6 hop limit; 0 → DefaultTTL (64)
	Payload     []byte // TCP payload

	// IPv6NextHeader, when non-zero, replaces the upper-layer protocol
	// number (6) written into the IPv6 header chain: in the fixed header's
	// next header field, or in the hop-by-hop header's when IPv6ExtHeader is
	// set. The bytes that follow are still a TCP segment whose checksum is
	// computed as for TCP. To put a hop-by-hop header (next header 0) in
	// front of TCP, set IPv6ExtHeader rather than this field.
	IPv6NextHeader uint8
	// IPv6ExtHeader inserts one 8-byte hop-by-hop options header (holding a
	// single PadN option) between the IPv6 header and TCP.
	IPv6ExtHeader bool
}

// TCP builds the complete Ethernet frame s describes: Ethernet (and 802.1Q)
// header, IPv4 header with options and a correct header checksum or IPv6
// header with the optional hop-by-hop header, and a 20-byte TCP header
// (no options, window TCPWindow, urgent pointer 0) with a correct checksum
// over the pseudo-header, followed by the payload. All length fields are
// correct; the frame is not padded to the 60-byte Ethernet minimum.
//
// The IPv4 fragmentation fields are written as given but the TCP checksum
// is always computed over the segment present, as if it were not a
// fragment. TCP panics on an inconsistent spec (mixed or invalid address
// families, fields of the other family set, out-of-range values): it is a
// test helper.
func TCP(s TCPSpec) []byte {
	if !s.Src.IsValid() || !s.Dst.IsValid() {
		panic("packet.TCP: Src and Dst must be valid addresses")
	}
	v4 := s.Src.Is4()
	if s.Dst.Is4() != v4 {
		panic(fmt.Sprintf("packet.TCP: mixed address families %v and %v", s.Src, s.Dst))
	}
	if v4 && (s.IPv6NextHeader != 0 || s.IPv6ExtHeader || s.FlowLabel != 0) {
		panic("packet.TCP: IPv6 fields set for an IPv4 segment")
	}
	if !v4 && (len(s.IPv4Options) != 0 || s.DF || s.MF || s.FragOffset != 0 || s.ID != 0) {
		panic("packet.TCP: IPv4 fields set for an IPv6 segment")
	}
	if len(s.IPv4Options) > maxIPv4Options {
		panic(fmt.Sprintf("packet.TCP: %d bytes of IPv4 options, at most %d fit", len(s.IPv4Options), maxIPv4Options))
	}
	if s.FragOffset > 0x1fff {
		panic(fmt.Sprintf("packet.TCP: fragment offset %#x exceeds 13 bits", s.FragOffset))
	}
	if s.FlowLabel > 0xfffff {
		panic(fmt.Sprintf("packet.TCP: flow label %#x exceeds 20 bits", s.FlowLabel))
	}
	ttl := s.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}

	l4len := tcpHeaderLen + len(s.Payload)
	var l3 []byte
	if v4 {
		optLen := (len(s.IPv4Options) + 3) &^ 3
		hl := ipv4HeaderLen + optLen
		if hl+l4len > 0xffff {
			panic(fmt.Sprintf("packet.TCP: IPv4 total length %d exceeds 65535", hl+l4len))
		}
		l3 = make([]byte, hl+l4len)
		frag := s.FragOffset
		if s.DF {
			frag |= 0x4000
		}
		if s.MF {
			frag |= 0x2000
		}
		putIPv4Header(l3[:hl], s.TOS, s.ID, frag, ttl, ProtoTCP, s.Src, s.Dst, len(l3))
		copy(l3[ipv4HeaderLen:hl], s.IPv4Options)
		binary.BigEndian.PutUint16(l3[10:], 0)
		binary.BigEndian.PutUint16(l3[10:], Checksum(l3[:hl], 0))
		putTCP(l3[hl:], s)
	} else {
		ext := 0
		if s.IPv6ExtHeader {
			ext = 8
		}
		if ext+l4len > 0xffff {
			panic(fmt.Sprintf("packet.TCP: IPv6 payload length %d exceeds 65535", ext+l4len))
		}
		l3 = make([]byte, ipv6HeaderLen+ext+l4len)
		proto := uint8(ProtoTCP)
		if s.IPv6NextHeader != 0 {
			proto = s.IPv6NextHeader
		}
		first := proto
		if s.IPv6ExtHeader {
			first = ProtoHopByHop
			h := l3[ipv6HeaderLen:]
			h[0] = proto // next header
			h[1] = 0     // length in 8-byte units, not counting the first 8
			h[2] = 1     // PadN option ...
			h[3] = 4     // ... with 4 bytes of zero data
		}
		putIPv6Header(l3[:ipv6HeaderLen], s.TOS, s.FlowLabel, ext+l4len, first, ttl, s.Src, s.Dst)
		putTCP(l3[ipv6HeaderLen+ext:], s)
	}
	return append(ethHeader(s.SrcMAC, s.DstMAC, s.VLAN, v4), l3...)
}

// putTCP writes the TCP header and payload of s into b (exactly their size)
// and fills in the checksum.
func putTCP(b []byte, s TCPSpec) {
	binary.BigEndian.PutUint16(b[0:], s.SrcPort)
	binary.BigEndian.PutUint16(b[2:], s.DstPort)
	binary.BigEndian.PutUint32(b[4:], s.Seq)
	binary.BigEndian.PutUint32(b[8:], s.Ack)
	b[12] = (tcpHeaderLen / 4) << 4
	b[13] = s.Flags
	binary.BigEndian.PutUint16(b[14:], TCPWindow)
	binary.BigEndian.PutUint16(b[16:], 0) // checksum
	binary.BigEndian.PutUint16(b[18:], 0) // urgent pointer
	copy(b[tcpHeaderLen:], s.Payload)
	binary.BigEndian.PutUint16(b[16:], Checksum(b, PseudoHeaderSum(s.Src, s.Dst, ProtoTCP, len(b))))
}

// putIPv4Header writes a 20-byte IPv4 header (IHL from len(b)) with a zero
// checksum into b.
func putIPv4Header(b []byte, tos uint8, id, frag uint16, ttl, proto uint8, src, dst netip.Addr, total int) {
	b[0] = 0x40 | uint8(len(b)/4)
	b[1] = tos
	binary.BigEndian.PutUint16(b[2:], uint16(total))
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], frag)
	b[8] = ttl
	b[9] = proto
	binary.BigEndian.PutUint16(b[10:], 0)
	a, d := src.As4(), dst.As4()
	copy(b[12:16], a[:])
	copy(b[16:20], d[:])
}

// putIPv6Header writes a 40-byte IPv6 header into b.
func putIPv6Header(b []byte, tclass uint8, flow uint32, plen int, next, hops uint8, src, dst netip.Addr) {
	binary.BigEndian.PutUint32(b[0:], 6<<28|uint32(tclass)<<20|flow&0xfffff)
	binary.BigEndian.PutUint16(b[4:], uint16(plen))
	b[6] = next
	b[7] = hops
	a, d := src.As16(), dst.As16()
	copy(b[8:24], a[:])
	copy(b[24:40], d[:])
}

// ethHeader returns an Ethernet header, with an 802.1Q tag when vlan is
// non-zero, whose (inner) EtherType is IPv4 or IPv6.
func ethHeader(src, dst net.HardwareAddr, vlan uint16, v4 bool) []byte {
	if src == nil {
		src = DefaultSrcMAC
	}
	if dst == nil {
		dst = DefaultDstMAC
	}
	if len(src) != 6 || len(dst) != 6 {
		panic(fmt.Sprintf("packet: MAC addresses %v and %v must be 6 bytes", src, dst))
	}
	if vlan > 0xfff {
		panic(fmt.Sprintf("packet: VLAN ID %d exceeds 4095", vlan))
	}
	et := uint16(EtherTypeIPv6)
	if v4 {
		et = EtherTypeIPv4
	}
	b := make([]byte, 0, ethHeaderLen+vlanHeaderLen)
	b = append(b, dst...)
	b = append(b, src...)
	if vlan != 0 {
		b = binary.BigEndian.AppendUint16(b, EtherTypeVLAN)
		b = binary.BigEndian.AppendUint16(b, vlan)
	}
	return binary.BigEndian.AppendUint16(b, et)
}

// ICMPTooBig builds what a router sends toward a VIP about a packet the
// node sent (VIP → client) that did not fit the next hop: an ICMP
// destination unreachable / fragmentation needed (type 3 code 4) with the
// next-hop MTU for IPv4, or an ICMPv6 packet too big (type 2 code 0) with
// the MTU for IPv6. It goes from router to the source address of the IP
// packet in the quoted frame, in an Ethernet frame from srcMAC to dstMAC
// (nil → DefaultSrcMAC / DefaultDstMAC) that carries the quoted frame's
// 802.1Q VLAN ID, if it has one.
//
// For IPv4 the message quotes the quoted packet's IP header (with options)
// and the first 8 bytes of its payload; for IPv6 it quotes as much of the
// packet as keeps the ICMPv6 packet within 1280 bytes, as Linux does. Fewer
// bytes are quoted if the packet is shorter. The IP header has TOS/traffic
// class 0, flow label 0, ID 0, no flags and TTL/hop limit DefaultTTL.
// Checksums and lengths are correct.
//
// quoted is an Ethernet frame as TCP builds it (optionally one VLAN tag,
// then IPv4 or IPv6). ICMPTooBig panics if it cannot find an IP packet
// there, if router is not of the quoted packet's family or if mtu does not
// fit IPv4's 16-bit field.
func ICMPTooBig(srcMAC, dstMAC net.HardwareAddr, router netip.Addr, mtu uint32, quoted []byte) []byte {
	vlan, et, l3, err := splitL2(quoted)
	if err != nil {
		panic("packet.ICMPTooBig: quoted frame: " + err.Error())
	}
	switch et {
	case EtherTypeIPv4:
		if !router.Is4() {
			panic(fmt.Sprintf("packet.ICMPTooBig: router %v is not IPv4 like the quoted packet", router))
		}
		if mtu > 0xffff {
			panic(fmt.Sprintf("packet.ICMPTooBig: IPv4 next-hop MTU %d exceeds 65535", mtu))
		}
		if len(l3) < ipv4HeaderLen || l3[0]>>4 != 4 {
			panic("packet.ICMPTooBig: quoted frame holds no IPv4 header")
		}
		ihl := int(l3[0]&0xf) * 4
		n := ihl + 8
		if tot := int(binary.BigEndian.Uint16(l3[2:])); tot < n {
			n = tot
		}
		n = min(n, len(l3))
		dst := netip.AddrFrom4([4]byte(l3[12:16]))
		b := make([]byte, ipv4HeaderLen+icmpHeaderLen+n)
		putIPv4Header(b[:ipv4HeaderLen], 0, 0, 0, DefaultTTL, ProtoICMP, router, dst, len(b))
		binary.BigEndian.PutUint16(b[10:], Checksum(b[:ipv4HeaderLen], 0))
		ic := b[ipv4HeaderLen:]
		ic[0], ic[1] = 3, 4
		binary.BigEndian.PutUint16(ic[6:], uint16(mtu))
		copy(ic[icmpHeaderLen:], l3[:n])
		binary.BigEndian.PutUint16(ic[2:], Checksum(ic, 0))
		return append(ethHeader(srcMAC, dstMAC, vlan, true), b...)
	case EtherTypeIPv6:
		if !router.Is6() || router.Is4In6() {
			panic(fmt.Sprintf("packet.ICMPTooBig: router %v is not IPv6 like the quoted packet", router))
		}
		if len(l3) < ipv6HeaderLen || l3[0]>>4 != 6 {
			panic("packet.ICMPTooBig: quoted frame holds no IPv6 header")
		}
		n := ipv6HeaderLen + int(binary.BigEndian.Uint16(l3[4:]))
		n = min(n, len(l3), ICMPv6MinMTU-ipv6HeaderLen-icmpHeaderLen)
		dst := netip.AddrFrom16([16]byte(l3[8:24]))
		b := make([]byte, ipv6HeaderLen+icmpHeaderLen+n)
		putIPv6Header(b[:ipv6HeaderLen], 0, 0, icmpHeaderLen+n, ProtoICMPv6, DefaultTTL, router, dst)
		ic := b[ipv6HeaderLen:]
		ic[0], ic[1] = 2, 0
		binary.BigEndian.PutUint32(ic[4:], mtu)
		copy(ic[icmpHeaderLen:], l3[:n])
		binary.BigEndian.PutUint16(ic[2:], Checksum(ic, PseudoHeaderSum(router, dst, ProtoICMPv6, len(ic))))
		return append(ethHeader(srcMAC, dstMAC, vlan, false), b...)
	default:
		panic(fmt.Sprintf("packet.ICMPTooBig: quoted frame has EtherType %#04x, not IPv4 or IPv6", et))
	}
}
