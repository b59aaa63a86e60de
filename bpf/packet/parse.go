package packet

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Frame is a parsed Ethernet frame. Its byte slices alias the frame given
// to Parse.
type Frame struct {
	SrcMAC, DstMAC net.HardwareAddr
	VLAN           uint16     // VLAN ID of the single 802.1Q/802.1ad tag; 0 if untagged
	Outer          *IP        // set when the frame is IP-in-IP (IPv4 protocol 4/41 or IPv6 next header 4/41)
	IP             IP         // the (inner, if encapsulated) IP header
	TCP            *TCPHeader // when the (inner) packet is TCP and not a non-first fragment
	UDP            *UDP       // when the (inner) packet is UDP and not a non-first fragment
	ICMP           *ICMP      // when the (inner) packet is ICMP or ICMPv6 and not a non-first fragment
	Payload        []byte     // L4 payload: after the TCP, UDP or 8-byte ICMP header; the whole L4 part for other protocols and non-first fragments
}

// IP is a parsed IPv4 or IPv6 header.
type IP struct {
	Version    int        // 4 or 6
	Src, Dst   netip.Addr // IPv4 addresses are Is4
	Proto      uint8      // IPv4 protocol, or for IPv6 the upper-layer next header found after any extension headers
	TTL        uint8      // IPv4 TTL / IPv6 hop limit
	TOS        uint8      // IPv4 TOS / IPv6 traffic class
	DF         bool       // IPv4 don't-fragment
	MF         bool       // more fragments (IPv4 flag, or IPv6 fragment header M bit)
	FragOffset uint16     // fragment offset in 8-byte units (IPv4 field, or IPv6 fragment header)
	ID         uint16     // IPv4 identification
	TotalLen   int        // IPv4 total length; IPv6: 40 + payload length
	FlowLabel  uint32     // IPv6 flow label
	HeaderLen  int        // bytes before L4: IPv4 IHL*4; IPv6 40 + extension headers
	Options    []byte     // IPv4 options (with their padding), or the raw IPv6 extension headers; nil if none
}

// Fragment reports whether the header describes a fragment (first or not).
func (ip *IP) Fragment() bool { return ip.MF || ip.FragOffset != 0 }

// TCPHeader is a parsed TCP header (named so because TCP is the builder).
type TCPHeader struct {
	SrcPort, DstPort uint16
	Flags            uint8 // FlagFIN, FlagSYN, ...
	Seq, Ack         uint32
	Window           uint16
	Options          []byte // TCP options (data offset beyond 20 bytes); nil if none
}

// UDP is a parsed UDP header.
type UDP struct {
	SrcPort, DstPort uint16
	Length           uint16 // UDP length field (header + payload)
}

// ICMP is a parsed ICMP or ICMPv6 header.
type ICMP struct {
	Type, Code uint8
	// MTU is the next-hop MTU of an IPv4 fragmentation needed (type 3 code
	// 4; the low 16 bits of the second word) or the MTU of an ICMPv6 packet
	// too big (type 2); 0 for other messages.
	MTU uint32
	// Quoted is the invoking packet an error message carries (everything
	// after the 8-byte header of ICMP types 3, 4, 5, 11, 12 or ICMPv6 types
	// 1-4); nil for other messages.
	Quoted []byte
}

// Parse decodes an Ethernet frame: at most one VLAN tag, IPv4 or IPv6, one
// optional level of IP-in-IP (IPv4 protocol 4/41 or IPv6 next header
// 4/41), then TCP, UDP, ICMP or ICMPv6.
//
// It verifies every checksum it can: the IPv4 header checksum (outer and
// inner), the TCP and UDP checksums over the right IPv4 or IPv6
// pseudo-header (a zero IPv4 UDP checksum means none), the ICMP checksum
// and the ICMPv6 checksum with its pseudo-header. It checks lengths: an IP
// packet must fit in the frame (bytes past the IP length are Ethernet
// padding and are ignored), an encapsulated packet must fill its outer
// packet's payload exactly, headers must fit, and UDP's length must match.
// L4 checksums of fragments cannot be verified and are not; L4 headers of
// non-first fragments are not parsed.
//
// The error names the first bad checksum or inconsistent length, and wraps
// ErrChecksum, ErrLength or ErrMalformed.
func Parse(frame []byte) (*Frame, error) {
	if len(frame) < ethHeaderLen {
		return nil, fmt.Errorf("packet: %d-byte frame shorter than an Ethernet header: %w", len(frame), ErrLength)
	}
	f := &Frame{DstMAC: net.HardwareAddr(frame[0:6]), SrcMAC: net.HardwareAddr(frame[6:12])}
	vlan, et, l3, err := splitL2(frame)
	if err != nil {
		return nil, err
	}
	f.VLAN = vlan
	var ip IP
	var l4 []byte
	switch et {
	case EtherTypeIPv4:
		ip, l4, err = parseIPv4(l3, "")
	case EtherTypeIPv6:
		ip, l4, err = parseIPv6(l3, "")
	default:
		return nil, fmt.Errorf("packet: EtherType %#04x is not IPv4 or IPv6: %w", et, ErrMalformed)
	}
	if err != nil {
		return nil, err
	}
	if (ip.Proto == ProtoIPIP || ip.Proto == ProtoIPv6) && !ip.Fragment() {
		outer := ip
		f.Outer = &outer
		if ip.Proto == ProtoIPIP {
			ip, l4, err = parseIPv4(l4, "inner ")
		} else {
			ip, l4, err = parseIPv6(l4, "inner ")
		}
		if err != nil {
			return nil, err
		}
		if got, want := outer.TotalLen-outer.HeaderLen, ip.TotalLen; got != want {
			return nil, fmt.Errorf("packet: outer IPv%d payload is %d bytes but the inner IPv%d packet is %d: %w",
				outer.Version, got, ip.Version, want, ErrLength)
		}
	}
	f.IP = ip
	if err := parseL4(f, l4); err != nil {
		return nil, err
	}
	return f, nil
}

// splitL2 returns the VLAN ID (0 if untagged), the (inner) EtherType and
// the bytes after the Ethernet header of frame.
func splitL2(frame []byte) (vlan, et uint16, rest []byte, err error) {
	if len(frame) < ethHeaderLen {
		return 0, 0, nil, fmt.Errorf("packet: %d-byte frame shorter than an Ethernet header: %w", len(frame), ErrLength)
	}
	et = binary.BigEndian.Uint16(frame[12:])
	rest = frame[ethHeaderLen:]
	if et == EtherTypeVLAN || et == EtherTypeQinQ {
		if len(rest) < vlanHeaderLen {
			return 0, 0, nil, fmt.Errorf("packet: VLAN tag truncated: %w", ErrLength)
		}
		vlan = binary.BigEndian.Uint16(rest) & 0xfff
		et = binary.BigEndian.Uint16(rest[2:])
		rest = rest[vlanHeaderLen:]
		if et == EtherTypeVLAN || et == EtherTypeQinQ {
			return 0, 0, nil, fmt.Errorf("packet: stacked VLAN tags are not supported: %w", ErrMalformed)
		}
	}
	return vlan, et, rest, nil
}

// parseIPv4 parses the IPv4 packet at the start of b (which may hold
// trailing bytes past its total length) and returns its header and its
// payload. which is "" or "inner ", for error messages.
func parseIPv4(b []byte, which string) (IP, []byte, error) {
	if len(b) < ipv4HeaderLen {
		return IP{}, nil, fmt.Errorf("packet: %sIPv4 header truncated (%d bytes): %w", which, len(b), ErrLength)
	}
	if v := b[0] >> 4; v != 4 {
		return IP{}, nil, fmt.Errorf("packet: %sIPv4 header has version %d: %w", which, v, ErrMalformed)
	}
	hl := int(b[0]&0xf) * 4
	if hl < ipv4HeaderLen {
		return IP{}, nil, fmt.Errorf("packet: %sIPv4 IHL %d below 5: %w", which, hl/4, ErrMalformed)
	}
	if hl > len(b) {
		return IP{}, nil, fmt.Errorf("packet: %sIPv4 header of %d bytes truncated to %d: %w", which, hl, len(b), ErrLength)
	}
	frag := binary.BigEndian.Uint16(b[6:])
	ip := IP{
		Version:    4,
		TOS:        b[1],
		TotalLen:   int(binary.BigEndian.Uint16(b[2:])),
		ID:         binary.BigEndian.Uint16(b[4:]),
		DF:         frag&0x4000 != 0,
		MF:         frag&0x2000 != 0,
		FragOffset: frag & 0x1fff,
		TTL:        b[8],
		Proto:      b[9],
		Src:        netip.AddrFrom4([4]byte(b[12:16])),
		Dst:        netip.AddrFrom4([4]byte(b[16:20])),
		HeaderLen:  hl,
	}
	if hl > ipv4HeaderLen {
		ip.Options = b[ipv4HeaderLen:hl]
	}
	name := which + "IPv4"
	if which == "" && (ip.Proto == ProtoIPIP || ip.Proto == ProtoIPv6) && !ip.Fragment() {
		name = "outer IPv4"
	}
	if c := Checksum(b[:hl], 0); c != 0 {
		return IP{}, nil, fmt.Errorf("packet: %s header checksum %#04x is wrong (want %#04x): %w",
			name, binary.BigEndian.Uint16(b[10:]), want(b[:hl], 10, 0), ErrChecksum)
	}
	if ip.TotalLen < hl {
		return IP{}, nil, fmt.Errorf("packet: %s total length %d is less than its header length %d: %w", name, ip.TotalLen, hl, ErrLength)
	}
	if ip.TotalLen > len(b) {
		return IP{}, nil, fmt.Errorf("packet: %s total length %d exceeds the %d bytes present: %w", name, ip.TotalLen, len(b), ErrLength)
	}
	return ip, b[hl:ip.TotalLen], nil
}

// parseIPv6 parses the IPv6 packet at the start of b (which may hold
// trailing bytes past its payload length) and any extension headers, and
// returns its header and its upper-layer payload. which is "" or "inner ",
// for error messages.
func parseIPv6(b []byte, which string) (IP, []byte, error) {
	if len(b) < ipv6HeaderLen {
		return IP{}, nil, fmt.Errorf("packet: %sIPv6 header truncated (%d bytes): %w", which, len(b), ErrLength)
	}
	w := binary.BigEndian.Uint32(b)
	if v := w >> 28; v != 6 {
		return IP{}, nil, fmt.Errorf("packet: %sIPv6 header has version %d: %w", which, v, ErrMalformed)
	}
	plen := int(binary.BigEndian.Uint16(b[4:]))
	ip := IP{
		Version:   6,
		TOS:       uint8(w >> 20),
		FlowLabel: w & 0xfffff,
		TotalLen:  ipv6HeaderLen + plen,
		TTL:       b[7],
		Src:       netip.AddrFrom16([16]byte(b[8:24])),
		Dst:       netip.AddrFrom16([16]byte(b[24:40])),
	}
	if ip.TotalLen > len(b) {
		return IP{}, nil, fmt.Errorf("packet: %sIPv6 payload length %d exceeds the %d bytes present: %w",
			which, plen, len(b)-ipv6HeaderLen, ErrLength)
	}
	pkt := b[:ip.TotalLen]
	next, off := b[6], ipv6HeaderLen
	for {
		var n int
		switch next {
		case ProtoHopByHop, ProtoRouting, ProtoDstOpts:
			if len(pkt)-off < 2 {
				return IP{}, nil, fmt.Errorf("packet: %sIPv6 extension header %d truncated: %w", which, next, ErrLength)
			}
			n = (int(pkt[off+1]) + 1) * 8
		case ProtoAH:
			if len(pkt)-off < 2 {
				return IP{}, nil, fmt.Errorf("packet: %sIPv6 authentication header truncated: %w", which, ErrLength)
			}
			n = (int(pkt[off+1]) + 2) * 4
		case ProtoFragment:
			n = 8
		default:
			ip.Proto = next
			ip.HeaderLen = off
			if off > ipv6HeaderLen {
				ip.Options = pkt[ipv6HeaderLen:off]
			}
			return ip, pkt[off:], nil
		}
		if len(pkt)-off < n {
			return IP{}, nil, fmt.Errorf("packet: %sIPv6 extension header %d of %d bytes exceeds the %d bytes of payload left: %w",
				which, next, n, len(pkt)-off, ErrLength)
		}
		if next == ProtoFragment {
			fo := binary.BigEndian.Uint16(pkt[off+2:])
			ip.FragOffset = fo >> 3
			ip.MF = fo&1 != 0
		}
		next = pkt[off]
		off += n
	}
}

// parseL4 parses the transport header in l4 (the IP payload) into f.
func parseL4(f *Frame, l4 []byte) error {
	ip := &f.IP
	f.Payload = l4
	if ip.FragOffset != 0 {
		return nil // no L4 header in a non-first fragment
	}
	verify := !ip.Fragment()
	v := fmt.Sprintf("IPv%d", ip.Version)
	if f.Outer != nil {
		v = "inner " + v
	}
	switch {
	case ip.Proto == ProtoTCP:
		if len(l4) < tcpHeaderLen {
			return fmt.Errorf("packet: TCP header truncated (%d bytes of %s payload): %w", len(l4), v, ErrLength)
		}
		doff := int(l4[12]>>4) * 4
		if doff < tcpHeaderLen {
			return fmt.Errorf("packet: TCP data offset %d below 5: %w", doff/4, ErrMalformed)
		}
		if doff > len(l4) {
			return fmt.Errorf("packet: TCP header of %d bytes exceeds the %d-byte segment: %w", doff, len(l4), ErrLength)
		}
		if verify {
			init := PseudoHeaderSum(ip.Src, ip.Dst, ProtoTCP, len(l4))
			if Checksum(l4, init) != 0 {
				return fmt.Errorf("packet: TCP checksum %#04x over the %s pseudo-header is wrong (want %#04x): %w",
					binary.BigEndian.Uint16(l4[16:]), v, want(l4, 16, init), ErrChecksum)
			}
		}
		t := &TCPHeader{
			SrcPort: binary.BigEndian.Uint16(l4[0:]),
			DstPort: binary.BigEndian.Uint16(l4[2:]),
			Seq:     binary.BigEndian.Uint32(l4[4:]),
			Ack:     binary.BigEndian.Uint32(l4[8:]),
			Flags:   l4[13],
			Window:  binary.BigEndian.Uint16(l4[14:]),
		}
		if doff > tcpHeaderLen {
			t.Options = l4[tcpHeaderLen:doff]
		}
		f.TCP = t
		f.Payload = l4[doff:]
	case ip.Proto == ProtoUDP:
		if len(l4) < udpHeaderLen {
			return fmt.Errorf("packet: UDP header truncated (%d bytes of %s payload): %w", len(l4), v, ErrLength)
		}
		u := &UDP{
			SrcPort: binary.BigEndian.Uint16(l4[0:]),
			DstPort: binary.BigEndian.Uint16(l4[2:]),
			Length:  binary.BigEndian.Uint16(l4[4:]),
		}
		if verify {
			if int(u.Length) != len(l4) {
				return fmt.Errorf("packet: UDP length %d but the %s payload is %d bytes: %w", u.Length, v, len(l4), ErrLength)
			}
			csum := binary.BigEndian.Uint16(l4[6:])
			if ip.Version == 6 || csum != 0 {
				init := PseudoHeaderSum(ip.Src, ip.Dst, ProtoUDP, len(l4))
				if csum == 0 || Checksum(l4, init) != 0 {
					return fmt.Errorf("packet: UDP checksum %#04x over the %s pseudo-header is wrong (want %#04x): %w",
						csum, v, udpWant(l4, init), ErrChecksum)
				}
			}
		}
		f.UDP = u
		f.Payload = l4[udpHeaderLen:]
	case ip.Proto == ProtoICMP && ip.Version == 4, ip.Proto == ProtoICMPv6 && ip.Version == 6:
		name := "ICMP"
		var init uint32
		if ip.Version == 6 {
			name = "ICMPv6"
			init = PseudoHeaderSum(ip.Src, ip.Dst, ProtoICMPv6, len(l4))
		}
		if len(l4) < icmpHeaderLen {
			return fmt.Errorf("packet: %s header truncated (%d bytes of %s payload): %w", name, len(l4), v, ErrLength)
		}
		if verify && Checksum(l4, init) != 0 {
			return fmt.Errorf("packet: %s checksum %#04x is wrong (want %#04x): %w",
				name, binary.BigEndian.Uint16(l4[2:]), want(l4, 2, init), ErrChecksum)
		}
		ic := &ICMP{Type: l4[0], Code: l4[1]}
		body := l4[icmpHeaderLen:]
		if ip.Version == 4 {
			switch ic.Type {
			case 3, 4, 5, 11, 12:
				ic.Quoted = body
			}
			if ic.Type == 3 && ic.Code == 4 {
				ic.MTU = uint32(binary.BigEndian.Uint16(l4[6:]))
			}
		} else {
			if ic.Type >= 1 && ic.Type <= 4 {
				ic.Quoted = body
			}
			if ic.Type == 2 {
				ic.MTU = binary.BigEndian.Uint32(l4[4:])
			}
		}
		f.ICMP = ic
		f.Payload = body
	}
	return nil
}

// want returns the checksum region b should carry in its 16-bit checksum
// field at off, given the pseudo-header sum init.
func want(b []byte, off int, init uint32) uint16 {
	s := sum(b, uint64(init))
	s += 0xffff - uint64(binary.BigEndian.Uint16(b[off:])) // subtract the field (one's complement)
	return ^fold(s)
}

// udpWant is want for UDP, where a computed 0 is sent as 0xffff.
func udpWant(b []byte, init uint32) uint16 {
	if c := want(b, 6, init); c != 0 {
		return c
	}
	return 0xffff
}
