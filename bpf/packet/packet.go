// Package packet builds byte-exact Ethernet frames for BPF_PROG_RUN tests
// and benchmarks of atoll's XDP programs, and parses and verifies the
// frames those programs output.
//
// Everything here is deterministic: the same spec always yields the same
// bytes. The builders (TCP, ICMPTooBig) write headers by hand with correct
// lengths and checksums and never pad short frames. Parse decodes a frame,
// including one level of IP-in-IP encapsulation, and checks every checksum
// and length it can.
package packet

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// TCP flag bits for TCPSpec.Flags and TCP.Flags (byte 13 of the TCP header).
const (
	FlagFIN = 0x01 // no more data from sender
	FlagSYN = 0x02 // synchronize sequence numbers
	FlagRST = 0x04 // reset the connection
	FlagPSH = 0x08 // push function
	FlagACK = 0x10 // acknowledgment field significant
	FlagURG = 0x20 // urgent pointer field significant
	FlagECE = 0x40 // ECN echo
	FlagCWR = 0x80 // congestion window reduced
)

// IP protocol numbers (IPv4 protocol / IPv6 next header) used by this package.
const (
	ProtoHopByHop = 0  // IPv6 hop-by-hop options header
	ProtoICMP     = 1  // ICMP for IPv4
	ProtoIPIP     = 4  // IPv4 encapsulated in IP
	ProtoTCP      = 6  // TCP
	ProtoUDP      = 17 // UDP
	ProtoIPv6     = 41 // IPv6 encapsulated in IP
	ProtoRouting  = 43 // IPv6 routing header
	ProtoFragment = 44 // IPv6 fragment header
	ProtoAH       = 51 // authentication header
	ProtoICMPv6   = 58 // ICMP for IPv6
	ProtoNoNext   = 59 // IPv6 no next header
	ProtoDstOpts  = 60 // IPv6 destination options header
)

// EtherTypes used by this package.
const (
	EtherTypeIPv4  = 0x0800 // IPv4
	EtherTypeIPv6  = 0x86dd // IPv6
	EtherTypeVLAN  = 0x8100 // 802.1Q VLAN tag
	EtherTypeQinQ  = 0x88a8 // 802.1ad service VLAN tag (accepted by Parse as a single tag)
	ethHeaderLen   = 14
	vlanHeaderLen  = 4
	ipv4HeaderLen  = 20
	ipv6HeaderLen  = 40
	tcpHeaderLen   = 20
	icmpHeaderLen  = 8
	udpHeaderLen   = 8
	maxIPv4Options = 40
)

// Errors wrapped by Parse, for errors.Is: every error Parse returns wraps
// exactly one of them.
var (
	// ErrChecksum reports a checksum that does not verify.
	ErrChecksum = errors.New("bad checksum")
	// ErrLength reports a truncated header or a length field that disagrees
	// with the bytes present or with an enclosing header.
	ErrLength = errors.New("inconsistent length")
	// ErrMalformed reports anything else Parse cannot decode: an unknown
	// EtherType, a wrong IP version, a header length field below its minimum.
	ErrMalformed = errors.New("malformed frame")
)

// Checksum returns the RFC 1071 Internet checksum of b: the one's complement
// of the one's complement sum of b's big-endian 16-bit words (an odd last
// byte is padded with zero), with initial added in first. initial is an
// unfolded partial sum such as PseudoHeaderSum returns, or 0.
//
// To fill a checksum field, zero it, compute Checksum over the region and
// store the result big-endian. To verify a region that includes its
// checksum field, check that Checksum returns 0.
func Checksum(b []byte, initial uint32) uint16 {
	return ^fold(sum(b, uint64(initial)))
}

// PseudoHeaderSum returns the unfolded one's complement sum of the TCP/UDP/
// ICMPv6 pseudo-header for src and dst (both IPv4: RFC 793; both IPv6: RFC
// 8200 section 8.1), upper-layer protocol proto and upper-layer length
// length, for use as Checksum's initial value. It panics if src and dst are
// not of one family.
func PseudoHeaderSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() {
		panic("packet: pseudo-header addresses of mixed or invalid families")
	}
	var s uint64
	if src.Is4() {
		a, b := src.As4(), dst.As4()
		s = sum(a[:], s)
		s = sum(b[:], s)
	} else {
		a, b := src.As16(), dst.As16()
		s = sum(a[:], s)
		s = sum(b[:], s)
	}
	s += uint64(proto)
	s += uint64(uint32(length)>>16) + uint64(uint32(length)&0xffff)
	return uint32(fold(s))
}

// sum adds b's big-endian 16-bit words to s without folding.
func sum(b []byte, s uint64) uint64 {
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

// fold folds a wide one's complement sum into 16 bits.
func fold(s uint64) uint16 {
	for s>>16 != 0 {
		s = (s & 0xffff) + (s >> 16)
	}
	return uint16(s)
}
