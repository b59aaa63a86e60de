package packet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	cli4   = netip.MustParseAddr("198.51.100.7")
	vip4   = netip.MustParseAddr("192.0.2.10")
	node4  = netip.MustParseAddr("10.1.0.1")
	be4    = netip.MustParseAddr("10.2.0.9")
	rtr4   = netip.MustParseAddr("203.0.113.1")
	cli6   = netip.MustParseAddr("2001:db8:c::7")
	vip6   = netip.MustParseAddr("2001:db8:f::10")
	node6  = netip.MustParseAddr("fd00:1::1")
	be6    = netip.MustParseAddr("fd00:2::9")
	rtr6   = netip.MustParseAddr("2001:db8:ffff::1")
	macA   = net.HardwareAddr{0xaa, 0xbb, 0xcc, 0x00, 0x11, 0x22}
	macB   = net.HardwareAddr{0x0e, 0x00, 0x00, 0x00, 0x00, 0x99}
	optNOP = []byte{1, 1, 1, 0}                       // NOP NOP NOP EOL
	opt8   = []byte{1, 1, 1, 1, 1, 1, 1, 0}           // NOPs then EOL
	opt3   = []byte{1, 1, 1}                          // padded to 4 by the builder
	optRR  = []byte{7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0} // record route, 2 slots, padded to 12
)

func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

func mustParse(t testing.TB, frame []byte) *Frame {
	t.Helper()
	f, err := Parse(frame)
	if err != nil {
		t.Fatalf("Parse: %v\nframe % x", err, frame)
	}
	return f
}

type tcpCase struct {
	name string
	spec TCPSpec
}

func tcpCases() []tcpCase {
	base4 := TCPSpec{Src: cli4, Dst: vip4, SrcPort: 40000, DstPort: 443, Flags: FlagSYN, Seq: 0x01020304}
	base6 := TCPSpec{Src: cli6, Dst: vip6, SrcPort: 40001, DstPort: 80, Flags: FlagACK | FlagPSH, Seq: 0xdeadbeef, Ack: 0xfeedf00d}
	with := func(s TCPSpec, f func(*TCPSpec)) TCPSpec { f(&s); return s }
	var cs []tcpCase
	for _, n := range []int{0, 1, 1400} {
		p := payload(n)
		sfx := "/" + map[int]string{0: "0", 1: "1", 1400: "1400"}[n]
		cs = append(cs,
			tcpCase{"v4" + sfx, with(base4, func(s *TCPSpec) { s.Payload = p })},
			tcpCase{"v4-opt4" + sfx, with(base4, func(s *TCPSpec) { s.Payload = p; s.IPv4Options = optNOP })},
			tcpCase{"v4-opt8" + sfx, with(base4, func(s *TCPSpec) { s.Payload = p; s.IPv4Options = opt8 })},
			tcpCase{"v6" + sfx, with(base6, func(s *TCPSpec) { s.Payload = p })},
			tcpCase{"v6-hbh" + sfx, with(base6, func(s *TCPSpec) { s.Payload = p; s.IPv6ExtHeader = true })},
			tcpCase{"vlan-v4" + sfx, with(base4, func(s *TCPSpec) { s.Payload = p; s.VLAN = 100 })},
			tcpCase{"vlan-v6" + sfx, with(base6, func(s *TCPSpec) { s.Payload = p; s.VLAN = 4094 })},
		)
	}
	cs = append(cs,
		tcpCase{"v4-opt3-padded", with(base4, func(s *TCPSpec) { s.IPv4Options = opt3 })},
		tcpCase{"v4-record-route", with(base4, func(s *TCPSpec) { s.IPv4Options = optRR; s.Payload = payload(33) })},
		tcpCase{"v4-opt40", with(base4, func(s *TCPSpec) { s.IPv4Options = bytes.Repeat([]byte{1}, 40) })},
		tcpCase{"v4-fields", with(base4, func(s *TCPSpec) {
			s.SrcMAC, s.DstMAC = macA, macB
			s.TOS, s.DF, s.TTL, s.ID = 0xb8, true, 3, 0xabcd
			s.Flags = FlagFIN | FlagACK | FlagRST | FlagURG | FlagECE | FlagCWR
			s.Ack = 0xffffffff
		})},
		tcpCase{"v6-fields", with(base6, func(s *TCPSpec) {
			s.SrcMAC, s.DstMAC = macA, macB
			s.TOS, s.TTL, s.FlowLabel = 0xb8, 255, 0xabcde
			s.Payload = payload(77)
		})},
		tcpCase{"v6-vlan-hbh", with(base6, func(s *TCPSpec) { s.VLAN = 1; s.IPv6ExtHeader = true; s.Payload = payload(5) })},
	)
	return cs
}

func expectIP(t *testing.T, got IP, s TCPSpec) {
	t.Helper()
	ttl := s.TTL
	if ttl == 0 {
		ttl = 64
	}
	want := IP{Src: s.Src, Dst: s.Dst, Proto: ProtoTCP, TTL: ttl, TOS: s.TOS, DF: s.DF, MF: s.MF, FragOffset: s.FragOffset}
	if s.IPv6NextHeader != 0 {
		want.Proto = s.IPv6NextHeader
	}
	if s.Src.Is4() {
		opts := (len(s.IPv4Options) + 3) &^ 3
		want.Version, want.ID = 4, s.ID
		want.HeaderLen = 20 + opts
		want.TotalLen = want.HeaderLen + 20 + len(s.Payload)
		if opts > 0 {
			want.Options = append(append([]byte{}, s.IPv4Options...), make([]byte, opts-len(s.IPv4Options))...)
		}
	} else {
		want.Version, want.FlowLabel = 6, s.FlowLabel
		want.HeaderLen = 40
		if s.IPv6ExtHeader {
			want.HeaderLen = 48
			nh := uint8(ProtoTCP)
			if s.IPv6NextHeader != 0 {
				nh = s.IPv6NextHeader
			}
			want.Options = []byte{nh, 0, 1, 4, 0, 0, 0, 0}
		}
		want.TotalLen = want.HeaderLen + 20 + len(s.Payload)
	}
	if got.Version != want.Version || got.Src != want.Src || got.Dst != want.Dst || got.Proto != want.Proto ||
		got.TTL != want.TTL || got.TOS != want.TOS || got.DF != want.DF || got.MF != want.MF ||
		got.FragOffset != want.FragOffset || got.ID != want.ID || got.TotalLen != want.TotalLen ||
		got.FlowLabel != want.FlowLabel || got.HeaderLen != want.HeaderLen || !bytes.Equal(got.Options, want.Options) {
		t.Errorf("IP header\n got %+v\nwant %+v", got, want)
	}
}

func TestTCPRoundTrip(t *testing.T) {
	for _, c := range tcpCases() {
		t.Run(c.name, func(t *testing.T) {
			s := c.spec
			frame := TCP(s)
			if again := TCP(s); !bytes.Equal(frame, again) {
				t.Fatal("TCP is not deterministic")
			}
			l2 := 14
			if s.VLAN != 0 {
				l2 = 18
			}
			f := mustParse(t, frame)
			if want := l2 + f.IP.TotalLen; len(frame) != want {
				t.Errorf("frame is %d bytes, want exactly %d (no padding)", len(frame), want)
			}
			src, dst := s.SrcMAC, s.DstMAC
			if src == nil {
				src, dst = DefaultSrcMAC, DefaultDstMAC
			}
			if !bytes.Equal(f.SrcMAC, src) || !bytes.Equal(f.DstMAC, dst) {
				t.Errorf("MACs %v → %v, want %v → %v", f.SrcMAC, f.DstMAC, src, dst)
			}
			if f.VLAN != s.VLAN {
				t.Errorf("VLAN %d, want %d", f.VLAN, s.VLAN)
			}
			if f.Outer != nil || f.ICMP != nil || f.UDP != nil {
				t.Errorf("unexpected layers: outer %v icmp %v udp %v", f.Outer, f.ICMP, f.UDP)
			}
			expectIP(t, f.IP, s)
			if f.TCP == nil {
				t.Fatal("no TCP header")
			}
			want := TCPHeader{SrcPort: s.SrcPort, DstPort: s.DstPort, Flags: s.Flags, Seq: s.Seq, Ack: s.Ack, Window: TCPWindow}
			if got := *f.TCP; got.SrcPort != want.SrcPort || got.DstPort != want.DstPort || got.Flags != want.Flags ||
				got.Seq != want.Seq || got.Ack != want.Ack || got.Window != want.Window || got.Options != nil {
				t.Errorf("TCP\n got %+v\nwant %+v", got, want)
			}
			if !bytes.Equal(f.Payload, s.Payload) {
				t.Errorf("payload %d bytes, want %d", len(f.Payload), len(s.Payload))
			}

			// Trailing Ethernet padding is ignored.
			padded := append(append([]byte{}, frame...), make([]byte, 17)...)
			pf := mustParse(t, padded)
			if !bytes.Equal(pf.Payload, s.Payload) || pf.IP.TotalLen != f.IP.TotalLen {
				t.Errorf("padding changed the parse: %d-byte payload", len(pf.Payload))
			}
			// An IP length beyond the frame is rejected.
			if _, err := Parse(frame[:len(frame)-1]); !errors.Is(err, ErrLength) {
				t.Errorf("truncated frame: err %v, want ErrLength", err)
			}
		})
	}
}

func TestTCPExactBytes(t *testing.T) {
	// A hand-assembled minimal SYN: every byte spelled out, checksums
	// computed independently of this package; not padded to 60 bytes.
	frame := TCP(TCPSpec{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"),
		SrcPort: 1, DstPort: 2, Flags: FlagSYN})
	want := []byte{
		2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00,
		0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0x66, 0xce, 10, 0, 0, 1, 10, 0, 0, 2,
		0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0x9b, 0xdd, 0, 0,
	}
	if !bytes.Equal(frame, want) {
		t.Errorf("frame\n got % x\nwant % x", frame, want)
	}
	if len(frame) != 54 {
		t.Errorf("frame is %d bytes, want 54", len(frame))
	}
}

func TestChecksum(t *testing.T) {
	// RFC 1071 section 3 example: the sum of these words is 0xddf2.
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := Checksum(b, 0); got != ^uint16(0xddf2) {
		t.Errorf("Checksum = %#04x, want %#04x", got, ^uint16(0xddf2))
	}
	if got := Checksum(b[:7], 0); got != ^uint16(0xddf2-0xf7) { // odd length: last byte is the high half
		t.Errorf("odd Checksum = %#04x, want %#04x", got, ^uint16(0xddf2-0xf7))
	}
	if got := Checksum(nil, 0x1234); got != ^uint16(0x1234) {
		t.Errorf("initial only = %#04x", got)
	}
	if got := Checksum(nil, 0x1ffff); got != ^uint16(1) { // carries fold
		t.Errorf("folded initial = %#04x", got)
	}
	big := bytes.Repeat([]byte{0xff}, 70000)
	if got := Checksum(big, 0xffffffff); got != 0 {
		t.Errorf("all-ones = %#04x, want 0", got)
	}
}

// TestGopacketCrossCheck compares TCP's output with what gopacket builds
// from the same fields and with what gopacket decodes from it.
func TestGopacketCrossCheck(t *testing.T) {
	cases := []TCPSpec{
		{Src: cli4, Dst: vip4, SrcPort: 40000, DstPort: 443, Flags: FlagSYN | FlagECE | FlagCWR, Seq: 7, TOS: 0x10, DF: true, ID: 0x4242, TTL: 17},
		{Src: cli4, Dst: vip4, SrcPort: 40000, DstPort: 443, Flags: FlagACK, Seq: 7, Ack: 9, VLAN: 42, Payload: payload(1400), SrcMAC: macA, DstMAC: macB},
		{Src: cli4, Dst: vip4, SrcPort: 1, DstPort: 2, Flags: FlagACK, MF: true, FragOffset: 100, Payload: payload(3)},
		{Src: cli6, Dst: vip6, SrcPort: 50000, DstPort: 443, Flags: FlagSYN, Seq: 0x80000000, TOS: 0x28, FlowLabel: 0x12345},
		{Src: cli6, Dst: vip6, SrcPort: 50000, DstPort: 443, Flags: FlagACK | FlagFIN, Ack: 1, VLAN: 7, Payload: payload(1)},
	}
	for i, s := range cases {
		frame := TCP(s)
		src, dst := s.SrcMAC, s.DstMAC
		if src == nil {
			src, dst = DefaultSrcMAC, DefaultDstMAC
		}
		ttl := s.TTL
		if ttl == 0 {
			ttl = 64
		}
		var ls []gopacket.SerializableLayer
		eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}
		if s.Src.Is6() {
			eth.EthernetType = layers.EthernetTypeIPv6
		}
		ls = append(ls, eth)
		if s.VLAN != 0 {
			ls = append(ls, &layers.Dot1Q{VLANIdentifier: s.VLAN, Type: eth.EthernetType})
			eth.EthernetType = layers.EthernetTypeDot1Q
		}
		tcp := &layers.TCP{SrcPort: layers.TCPPort(s.SrcPort), DstPort: layers.TCPPort(s.DstPort), Seq: s.Seq, Ack: s.Ack,
			FIN: s.Flags&FlagFIN != 0, SYN: s.Flags&FlagSYN != 0, RST: s.Flags&FlagRST != 0, PSH: s.Flags&FlagPSH != 0,
			ACK: s.Flags&FlagACK != 0, URG: s.Flags&FlagURG != 0, ECE: s.Flags&FlagECE != 0, CWR: s.Flags&FlagCWR != 0,
			Window: TCPWindow}
		if s.Src.Is4() {
			var flags layers.IPv4Flag
			if s.DF {
				flags |= layers.IPv4DontFragment
			}
			if s.MF {
				flags |= layers.IPv4MoreFragments
			}
			ip := &layers.IPv4{Version: 4, TOS: s.TOS, Id: s.ID, Flags: flags, FragOffset: s.FragOffset, TTL: ttl,
				Protocol: layers.IPProtocolTCP, SrcIP: s.Src.AsSlice(), DstIP: s.Dst.AsSlice()}
			if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
				t.Fatal(err)
			}
			ls = append(ls, ip)
		} else {
			ip := &layers.IPv6{Version: 6, TrafficClass: s.TOS, FlowLabel: s.FlowLabel, NextHeader: layers.IPProtocolTCP,
				HopLimit: ttl, SrcIP: s.Src.AsSlice(), DstIP: s.Dst.AsSlice()}
			if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
				t.Fatal(err)
			}
			ls = append(ls, ip)
		}
		ls = append(ls, tcp, gopacket.Payload(s.Payload))
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
			t.Fatal(err)
		}
		// gopacket pads Ethernet frames to 60 bytes; TCP does not.
		gb := buf.Bytes()
		if len(gb) > len(frame) && len(frame) < 60 && len(gb) == 60 && bytes.Equal(gb[len(frame):], make([]byte, 60-len(frame))) {
			gb = gb[:len(frame)]
		}
		if !bytes.Equal(frame, gb) {
			t.Errorf("case %d: TCP differs from gopacket's serialization\n got % x\nwant % x", i, frame, buf.Bytes())
		}

		// And decode with gopacket.
		p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
		if el := p.ErrorLayer(); el != nil {
			t.Fatalf("case %d: gopacket decode: %v", i, el.Error())
		}
		ge := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		if !bytes.Equal(ge.SrcMAC, src) || !bytes.Equal(ge.DstMAC, dst) {
			t.Errorf("case %d: gopacket MACs %v %v", i, ge.SrcMAC, ge.DstMAC)
		}
		if s.VLAN != 0 {
			if q, ok := p.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q); !ok || q.VLANIdentifier != s.VLAN {
				t.Errorf("case %d: gopacket VLAN %+v", i, q)
			}
		}
		if s.Src.Is4() {
			gi := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			if !gi.SrcIP.Equal(s.Src.AsSlice()) || !gi.DstIP.Equal(s.Dst.AsSlice()) || gi.TTL != ttl || gi.TOS != s.TOS ||
				gi.Id != s.ID || gi.FragOffset != s.FragOffset || (gi.Flags&layers.IPv4DontFragment != 0) != s.DF ||
				(gi.Flags&layers.IPv4MoreFragments != 0) != s.MF || int(gi.Length) != 40+len(s.Payload) || gi.Protocol != layers.IPProtocolTCP {
				t.Errorf("case %d: gopacket IPv4 %+v", i, gi)
			}
		} else {
			gi := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
			if !gi.SrcIP.Equal(s.Src.AsSlice()) || !gi.DstIP.Equal(s.Dst.AsSlice()) || gi.HopLimit != ttl ||
				gi.TrafficClass != s.TOS || gi.FlowLabel != s.FlowLabel || int(gi.Length) != 20+len(s.Payload) ||
				gi.NextHeader != layers.IPProtocolTCP {
				t.Errorf("case %d: gopacket IPv6 %+v", i, gi)
			}
		}
		if s.FragOffset != 0 {
			continue // gopacket does not decode TCP in a non-first fragment
		}
		gt := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if uint16(gt.SrcPort) != s.SrcPort || uint16(gt.DstPort) != s.DstPort || gt.Seq != s.Seq || gt.Ack != s.Ack ||
			gt.SYN != (s.Flags&FlagSYN != 0) || gt.ACK != (s.Flags&FlagACK != 0) || gt.FIN != (s.Flags&FlagFIN != 0) ||
			gt.ECE != (s.Flags&FlagECE != 0) || gt.CWR != (s.Flags&FlagCWR != 0) || gt.DataOffset != 5 ||
			!bytes.Equal(gt.Payload, s.Payload) {
			t.Errorf("case %d: gopacket TCP %+v", i, gt)
		}
	}
}

func TestFragments(t *testing.T) {
	first := TCP(TCPSpec{Src: cli4, Dst: vip4, SrcPort: 1, DstPort: 2, MF: true, ID: 9, Payload: payload(16)})
	f := mustParse(t, first)
	if !f.IP.MF || f.IP.FragOffset != 0 || !f.IP.Fragment() || f.TCP == nil || f.TCP.DstPort != 2 {
		t.Errorf("first fragment: %+v tcp %+v", f.IP, f.TCP)
	}
	// The L4 checksum of a fragment is not checked.
	first[len(first)-1] ^= 0xff
	mustParse(t, first)

	s := TCPSpec{Src: cli4, Dst: vip4, SrcPort: 1, DstPort: 2, FragOffset: 185, Payload: payload(16)}
	later := TCP(s)
	f = mustParse(t, later)
	if f.IP.MF || f.IP.FragOffset != 185 || f.TCP != nil || len(f.Payload) != 36 {
		t.Errorf("later fragment: %+v tcp %+v payload %d", f.IP, f.TCP, len(f.Payload))
	}
	expectIP(t, f.IP, s)
}

func TestIPv6NextHeaderOverride(t *testing.T) {
	for _, ext := range []bool{false, true} {
		s := TCPSpec{Src: cli6, Dst: vip6, SrcPort: 1, DstPort: 2, IPv6NextHeader: 253, IPv6ExtHeader: ext, Payload: payload(4)}
		frame := TCP(s)
		f := mustParse(t, frame)
		expectIP(t, f.IP, s)
		if f.TCP != nil || len(f.Payload) != 24 {
			t.Errorf("ext %v: tcp %+v payload %d", ext, f.TCP, len(f.Payload))
		}
		first := frame[14+6]
		if want := map[bool]byte{false: 253, true: 0}[ext]; first != want {
			t.Errorf("ext %v: fixed header next header %d, want %d", ext, first, want)
		}
	}
}

func TestTCPPanics(t *testing.T) {
	cases := map[string]TCPSpec{
		"mixed":       {Src: cli4, Dst: vip6},
		"invalid":     {Dst: vip4},
		"v4-with-hbh": {Src: cli4, Dst: vip4, IPv6ExtHeader: true},
		"v6-with-df":  {Src: cli6, Dst: vip6, DF: true},
		"v6-with-opt": {Src: cli6, Dst: vip6, IPv4Options: optNOP},
		"opt41":       {Src: cli4, Dst: vip4, IPv4Options: make([]byte, 41)},
		"frag-offset": {Src: cli4, Dst: vip4, FragOffset: 0x2000},
		"vlan":        {Src: cli4, Dst: vip4, VLAN: 4096},
		"mac":         {Src: cli4, Dst: vip4, SrcMAC: net.HardwareAddr{1, 2, 3}},
		"too-long":    {Src: cli4, Dst: vip4, Payload: make([]byte, 65536-40)},
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("TCP did not panic")
				}
			}()
			TCP(s)
		})
	}
}

// region names a byte to flip in a frame and the checksum that must catch it.
type region struct {
	name string
	off  int    // offset into the frame
	want string // substring of the error
}

func flipCheck(t *testing.T, frame []byte, regions []region) {
	t.Helper()
	mustParse(t, frame)
	for _, r := range regions {
		b := append([]byte{}, frame...)
		b[r.off] ^= 0xff
		_, err := Parse(b)
		if !errors.Is(err, ErrChecksum) {
			t.Errorf("%s (byte %d flipped): err %v, want ErrChecksum", r.name, r.off, err)
			continue
		}
		if !strings.Contains(err.Error(), r.want) {
			t.Errorf("%s: error %q does not name %q", r.name, err, r.want)
		}
	}
}

func TestChecksumRegions(t *testing.T) {
	p := payload(101) // odd: the last byte is a half word
	v4 := TCP(TCPSpec{Src: cli4, Dst: vip4, SrcPort: 1, DstPort: 2, IPv4Options: opt8, Payload: p})
	flipCheck(t, v4, []region{
		{"IPv4 TTL", 14 + 8, "IPv4 header checksum"},
		{"IPv4 src", 14 + 12, "IPv4 header checksum"},
		{"IPv4 option", 14 + 21, "IPv4 header checksum"},
		{"IPv4 checksum", 14 + 10, "IPv4 header checksum"},
		{"TCP seq", 14 + 28 + 4, "TCP checksum"},
		{"TCP checksum", 14 + 28 + 16, "TCP checksum"},
		{"TCP payload first", 14 + 28 + 20, "TCP checksum"},
		{"TCP payload last", len(v4) - 1, "TCP checksum"},
	})
	v6 := TCP(TCPSpec{Src: cli6, Dst: vip6, SrcPort: 1, DstPort: 2, VLAN: 5, IPv6ExtHeader: true, Payload: p})
	flipCheck(t, v6, []region{
		{"IPv6 src (pseudo-header)", 18 + 8, "TCP checksum"},
		{"IPv6 dst (pseudo-header)", 18 + 39, "TCP checksum"},
		{"TCP ports", 18 + 48, "over the IPv6 pseudo-header"},
		{"TCP flags", 18 + 48 + 13, "TCP checksum"},
		{"TCP payload last", len(v6) - 1, "TCP checksum"},
	})

	// Every byte of an IPv4 packet is covered by some checksum, and every
	// byte of an IPv6 packet from the addresses on.
	for i := 14; i < len(v4); i++ {
		b := append([]byte{}, v4...)
		b[i] ^= 0xff
		if _, err := Parse(b); err == nil {
			t.Errorf("v4 byte %d flipped: no error", i)
		}
	}
	v6 = TCP(TCPSpec{Src: cli6, Dst: vip6, SrcPort: 1, DstPort: 2, Payload: p})
	for i := 14 + 8; i < len(v6); i++ {
		b := append([]byte{}, v6...)
		b[i] ^= 0xff
		if _, err := Parse(b); err == nil {
			t.Errorf("v6 byte %d flipped: no error", i)
		}
	}
}

func TestLengthErrors(t *testing.T) {
	v4 := TCP(TCPSpec{Src: cli4, Dst: vip4, SrcPort: 1, DstPort: 2, Payload: payload(10)})
	v6 := TCP(TCPSpec{Src: cli6, Dst: vip6, SrcPort: 1, DstPort: 2, Payload: payload(10)})
	setLen := func(frame []byte, off int, n uint16, fixIPv4 bool) []byte {
		b := append([]byte{}, frame...)
		binary.BigEndian.PutUint16(b[off:], n)
		if fixIPv4 {
			binary.BigEndian.PutUint16(b[24:], 0)
			binary.BigEndian.PutUint16(b[24:], Checksum(b[14:34], 0))
		}
		return b
	}
	cases := []struct {
		name  string
		frame []byte
		err   error
		msg   string
	}{
		{"v4 total length beyond frame", setLen(v4, 16, 51, true), ErrLength, "exceeds"},
		{"v4 total length below header", setLen(v4, 16, 19, true), ErrLength, "less than its header"},
		{"v4 total length cuts TCP header", setLen(v4, 16, 30, true), ErrLength, "TCP header truncated"},
		{"v4 total length cuts payload", setLen(v4, 16, 45, true), ErrChecksum, "TCP checksum"},
		{"v6 payload length beyond frame", setLen(v6, 18, 31, false), ErrLength, "IPv6 payload length"},
		{"v6 payload length short", setLen(v6, 18, 29, false), ErrChecksum, "TCP checksum"},
		{"short ethernet", v4[:13], ErrLength, "Ethernet"},
		{"short ipv4", v4[:33], ErrLength, "IPv4 header truncated"},
		{"short ipv6", v6[:53], ErrLength, "IPv6 header truncated"},
		{"arp", append(append([]byte{}, v4[:12]...), 0x08, 0x06, 0, 1), ErrMalformed, "EtherType"},
	}
	for _, c := range cases {
		_, err := Parse(c.frame)
		if !errors.Is(err, c.err) || !strings.Contains(fmtErr(err), c.msg) {
			t.Errorf("%s: err %v, want %v naming %q", c.name, err, c.err, c.msg)
		}
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// encap wraps the IP packet of inner (a frame as TCP builds it, untagged)
// in an outer IPv4 or IPv6 header written by hand, in a new Ethernet frame.
// extra bytes are appended inside the outer packet (to break lengths).
func encap(inner []byte, src, dst netip.Addr, extra int) []byte {
	l3 := append(inner[14:], make([]byte, extra)...)
	proto := uint8(ProtoIPv6)
	if binary.BigEndian.Uint16(inner[12:]) == EtherTypeIPv4 {
		proto = ProtoIPIP
	}
	var hdr []byte
	et := uint16(EtherTypeIPv6)
	if src.Is4() {
		et = EtherTypeIPv4
		hdr = make([]byte, 20)
		hdr[0] = 0x45
		binary.BigEndian.PutUint16(hdr[2:], uint16(20+len(l3)))
		binary.BigEndian.PutUint16(hdr[6:], 0x4000)
		hdr[8], hdr[9] = 64, proto
		copy(hdr[12:], src.AsSlice())
		copy(hdr[16:], dst.AsSlice())
		binary.BigEndian.PutUint16(hdr[10:], Checksum(hdr, 0))
	} else {
		hdr = make([]byte, 40)
		binary.BigEndian.PutUint32(hdr, 6<<28|0xfeed)
		binary.BigEndian.PutUint16(hdr[4:], uint16(len(l3)))
		hdr[6], hdr[7] = proto, 64
		copy(hdr[8:], src.AsSlice())
		copy(hdr[24:], dst.AsSlice())
	}
	out := append([]byte{}, macB...)
	out = append(out, macA...)
	out = binary.BigEndian.AppendUint16(out, et)
	out = append(out, hdr...)
	return append(out, l3...)
}

func TestEncapsulated(t *testing.T) {
	in4 := TCPSpec{Src: cli4, Dst: vip4, SrcPort: 40000, DstPort: 443, Flags: FlagACK, Seq: 5, DF: true, TOS: 4, IPv4Options: optNOP, Payload: payload(100)}
	in6 := TCPSpec{Src: cli6, Dst: vip6, SrcPort: 40000, DstPort: 443, Flags: FlagSYN, Seq: 6, FlowLabel: 77, Payload: payload(99)}
	cases := []struct {
		name     string
		inner    TCPSpec
		src, dst netip.Addr
	}{
		{"4in4", in4, node4, be4},
		{"6in6", in6, node6, be6},
		{"4in6", in4, node6, be6},
		{"6in4", in6, node4, be4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			frame := encap(TCP(c.inner), c.src, c.dst, 0)

			// The hand-written outer header matches gopacket's.
			gp := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
			ol := gp.Layers()[1]
			var obuf []byte
			b := gopacket.NewSerializeBuffer()
			opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
			if c.src.Is4() {
				o := ol.(*layers.IPv4)
				o2 := &layers.IPv4{Version: 4, TTL: 64, Flags: layers.IPv4DontFragment, Protocol: o.Protocol, SrcIP: o.SrcIP, DstIP: o.DstIP}
				if err := gopacket.SerializeLayers(b, opts, o2, gopacket.Payload(o.Payload)); err != nil {
					t.Fatal(err)
				}
			} else {
				o := ol.(*layers.IPv6)
				o2 := &layers.IPv6{Version: 6, FlowLabel: 0xfeed, HopLimit: 64, NextHeader: o.NextHeader, SrcIP: o.SrcIP, DstIP: o.DstIP}
				if err := gopacket.SerializeLayers(b, opts, o2, gopacket.Payload(o.Payload)); err != nil {
					t.Fatal(err)
				}
			}
			obuf = b.Bytes()
			if !bytes.Equal(obuf, frame[14:]) {
				t.Fatalf("hand-built outer packet differs from gopacket's\n got % x\nwant % x", frame[14:], obuf)
			}

			f := mustParse(t, frame)
			if f.Outer == nil {
				t.Fatal("Outer not set")
			}
			o := f.Outer
			wantProto := uint8(ProtoIPIP)
			if c.inner.Src.Is6() {
				wantProto = ProtoIPv6
			}
			hl := map[bool]int{true: 20, false: 40}[c.src.Is4()]
			if o.Src != c.src || o.Dst != c.dst || o.Proto != wantProto || o.TTL != 64 || o.HeaderLen != hl ||
				o.TotalLen != len(frame)-14 || o.Version != map[bool]int{true: 4, false: 6}[c.src.Is4()] {
				t.Errorf("outer %+v", *o)
			}
			if c.src.Is4() && !o.DF {
				t.Errorf("outer DF not set")
			}
			if c.src.Is6() && o.FlowLabel != 0xfeed {
				t.Errorf("outer flow label %#x", o.FlowLabel)
			}
			expectIP(t, f.IP, c.inner)
			if f.TCP == nil || f.TCP.SrcPort != c.inner.SrcPort || f.TCP.Seq != c.inner.Seq || f.TCP.Flags != c.inner.Flags {
				t.Errorf("inner TCP %+v", f.TCP)
			}
			if !bytes.Equal(f.Payload, c.inner.Payload) {
				t.Errorf("inner payload %d bytes", len(f.Payload))
			}

			// Ethernet padding after the outer packet is fine ...
			mustParse(t, append(append([]byte{}, frame...), 0, 0, 0, 0))
			// ... but bytes inside the outer packet past the inner one are not.
			if _, err := Parse(encap(TCP(c.inner), c.src, c.dst, 3)); !errors.Is(err, ErrLength) ||
				!strings.Contains(err.Error(), "outer") {
				t.Errorf("outer length ≠ inner + header: err %v", err)
			}

			// Checksums of both layers are checked.
			regions := []region{
				{"inner TCP", len(frame) - 1, "over the inner IPv"},
			}
			if c.src.Is4() { // an outer IPv6 header has no checksum to check
				regions = append(regions, region{"outer IPv4 header", 14 + 8, "outer IPv4 header checksum"})
			}
			if c.inner.Src.Is4() {
				regions = append(regions, region{"inner IPv4 header", 14 + hl + 8, "inner IPv4 header checksum"})
			} else {
				regions = append(regions, region{"inner IPv6 src", 14 + hl + 8, "over the inner IPv6 pseudo-header"})
			}
			flipCheck(t, frame, regions)
		})
	}
}

func TestICMPTooBig(t *testing.T) {
	cases := []struct {
		name   string
		quoted TCPSpec
		router netip.Addr
		mtu    uint32
		quote  int // bytes of the quoted IP packet expected in the message
	}{
		{"v4", TCPSpec{Src: vip4, Dst: cli4, SrcPort: 443, DstPort: 40000, Flags: FlagACK, DF: true, Payload: payload(1400)}, rtr4, 1400, 28},
		{"v4-options", TCPSpec{Src: vip4, Dst: cli4, SrcPort: 443, DstPort: 40000, Flags: FlagACK, DF: true, IPv4Options: opt8, Payload: payload(1400)}, rtr4, 576, 36},
		{"v4-vlan", TCPSpec{Src: vip4, Dst: cli4, SrcPort: 443, DstPort: 40000, VLAN: 12, DF: true, Payload: payload(1)}, rtr4, 1280, 28},
		{"v6-short", TCPSpec{Src: vip6, Dst: cli6, SrcPort: 443, DstPort: 40000, Flags: FlagACK, Payload: payload(100)}, rtr6, 1280, 160},
		{"v6-long", TCPSpec{Src: vip6, Dst: cli6, SrcPort: 443, DstPort: 40000, Flags: FlagACK, Payload: payload(1400)}, rtr6, 1400, 1232},
		{"v6-vlan-hbh", TCPSpec{Src: vip6, Dst: cli6, SrcPort: 443, DstPort: 40000, VLAN: 3, IPv6ExtHeader: true, Payload: payload(1)}, rtr6, 9000, 69},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			q := TCP(c.quoted)
			frame := ICMPTooBig(macA, macB, c.router, c.mtu, q)
			if again := ICMPTooBig(macA, macB, c.router, c.mtu, q); !bytes.Equal(frame, again) {
				t.Fatal("ICMPTooBig is not deterministic")
			}
			f := mustParse(t, frame)
			if !bytes.Equal(f.SrcMAC, macA) || !bytes.Equal(f.DstMAC, macB) || f.VLAN != c.quoted.VLAN {
				t.Errorf("L2 %v → %v vlan %d", f.SrcMAC, f.DstMAC, f.VLAN)
			}
			if f.IP.Src != c.router || f.IP.Dst != c.quoted.Src || f.IP.TTL != 64 || f.TCP != nil || f.Outer != nil {
				t.Errorf("IP %+v", f.IP)
			}
			if f.ICMP == nil {
				t.Fatal("no ICMP")
			}
			l2 := map[bool]int{true: 18, false: 14}[c.quoted.VLAN != 0]
			wantQuote := q[l2 : l2+c.quote]
			if c.quoted.Src.Is4() {
				if f.IP.Proto != ProtoICMP || f.ICMP.Type != 3 || f.ICMP.Code != 4 {
					t.Errorf("ICMP %d/%d proto %d", f.ICMP.Type, f.ICMP.Code, f.IP.Proto)
				}
			} else {
				if f.IP.Proto != ProtoICMPv6 || f.ICMP.Type != 2 || f.ICMP.Code != 0 {
					t.Errorf("ICMPv6 %d/%d proto %d", f.ICMP.Type, f.ICMP.Code, f.IP.Proto)
				}
				if f.IP.TotalLen > 1280 {
					t.Errorf("ICMPv6 packet is %d bytes, over 1280", f.IP.TotalLen)
				}
			}
			if f.ICMP.MTU != c.mtu {
				t.Errorf("MTU %d, want %d", f.ICMP.MTU, c.mtu)
			}
			if !bytes.Equal(f.ICMP.Quoted, wantQuote) || !bytes.Equal(f.Payload, wantQuote) {
				t.Errorf("quoted %d bytes, want %d\n got % x\nwant % x", len(f.ICMP.Quoted), len(wantQuote), f.ICMP.Quoted, wantQuote)
			}
			// gopacket agrees on the type and decodes the quoted header.
			p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
			if c.quoted.Src.Is4() {
				gi, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
				if !ok || gi.TypeCode != layers.CreateICMPv4TypeCode(3, 4) || uint32(gi.Seq) != c.mtu {
					t.Errorf("gopacket ICMPv4 %+v", gi)
				}
			} else {
				gi, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
				if !ok || gi.TypeCode != layers.CreateICMPv6TypeCode(2, 0) {
					t.Errorf("gopacket ICMPv6 %+v", gi)
				}
			}

			// The ICMP checksum covers the quote; ICMPv6's covers the
			// pseudo-header too.
			hl := map[bool]int{true: 20, false: 40}[c.router.Is4()]
			name := map[bool]string{true: "ICMP checksum", false: "ICMPv6 checksum"}[c.router.Is4()]
			regions := []region{
				{"ICMP type", l2 + hl, name},
				{"ICMP mtu", l2 + hl + 7, name},
				{"quote first", l2 + hl + 8, name},
				{"quote last", len(frame) - 1, name},
			}
			if c.router.Is4() {
				regions = append(regions, region{"IPv4 header", l2 + 8, "IPv4 header checksum"})
			} else {
				regions = append(regions, region{"IPv6 src (pseudo-header)", l2 + 8, name}, region{"IPv6 dst (pseudo-header)", l2 + 39, name})
			}
			flipCheck(t, frame, regions)
		})
	}
	t.Run("nil-macs", func(t *testing.T) {
		f := mustParse(t, ICMPTooBig(nil, nil, rtr4, 1500, TCP(TCPSpec{Src: vip4, Dst: cli4})))
		if !bytes.Equal(f.SrcMAC, DefaultSrcMAC) || !bytes.Equal(f.DstMAC, DefaultDstMAC) {
			t.Errorf("MACs %v %v", f.SrcMAC, f.DstMAC)
		}
	})
	t.Run("panics", func(t *testing.T) {
		for name, fn := range map[string]func(){
			"family":    func() { ICMPTooBig(nil, nil, rtr6, 1500, TCP(TCPSpec{Src: vip4, Dst: cli4})) },
			"mtu":       func() { ICMPTooBig(nil, nil, rtr4, 70000, TCP(TCPSpec{Src: vip4, Dst: cli4})) },
			"not-ip":    func() { ICMPTooBig(nil, nil, rtr4, 1500, make([]byte, 60)) },
			"too-short": func() { ICMPTooBig(nil, nil, rtr4, 1500, make([]byte, 5)) },
		} {
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("%s: no panic", name)
					}
				}()
				fn()
			}()
		}
	})
}

func TestUDPAndOtherProtocols(t *testing.T) {
	// Rewrite a TCP frame's L4 into UDP by hand.
	build := func(src, dst netip.Addr, csum bool) []byte {
		frame := TCP(TCPSpec{Src: src, Dst: dst, Payload: payload(12)})
		hl := 20
		if src.Is6() {
			hl = 40
			frame[14+6] = ProtoUDP
		} else {
			frame[14+9] = ProtoUDP
			binary.BigEndian.PutUint16(frame[24:], 0)
			binary.BigEndian.PutUint16(frame[24:], Checksum(frame[14:34], 0))
		}
		u := frame[14+hl:]
		clear(u[:8])
		binary.BigEndian.PutUint16(u[0:], 53)
		binary.BigEndian.PutUint16(u[2:], 5353)
		binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
		if csum {
			binary.BigEndian.PutUint16(u[6:], Checksum(u, PseudoHeaderSum(src, dst, ProtoUDP, len(u))))
		}
		return frame
	}
	for _, fam := range [][2]netip.Addr{{cli4, vip4}, {cli6, vip6}} {
		f := mustParse(t, build(fam[0], fam[1], true))
		if f.UDP == nil || f.UDP.SrcPort != 53 || f.UDP.DstPort != 5353 || int(f.UDP.Length) != 32 || len(f.Payload) != 24 {
			t.Errorf("%v: UDP %+v payload %d", fam[0], f.UDP, len(f.Payload))
		}
		b := build(fam[0], fam[1], true)
		b[len(b)-1] ^= 0xff
		if _, err := Parse(b); !errors.Is(err, ErrChecksum) {
			t.Errorf("%v: corrupted UDP: %v", fam[0], err)
		}
	}
	mustParse(t, build(cli4, vip4, false)) // IPv4 UDP without a checksum
	if _, err := Parse(build(cli6, vip6, false)); !errors.Is(err, ErrChecksum) {
		t.Errorf("IPv6 UDP without a checksum: %v", err)
	}
}

func seedFrames() [][]byte {
	var seeds [][]byte
	for _, c := range tcpCases() {
		if len(c.spec.Payload) <= 100 {
			seeds = append(seeds, TCP(c.spec))
		}
	}
	q4 := TCP(TCPSpec{Src: vip4, Dst: cli4, SrcPort: 443, DstPort: 1, Payload: payload(40)})
	q6 := TCP(TCPSpec{Src: vip6, Dst: cli6, SrcPort: 443, DstPort: 1, Payload: payload(40)})
	seeds = append(seeds,
		ICMPTooBig(nil, nil, rtr4, 1400, q4),
		ICMPTooBig(nil, nil, rtr6, 1400, q6),
		TCP(TCPSpec{Src: cli4, Dst: vip4, MF: true, FragOffset: 3}),
	)
	return seeds
}

func FuzzParse(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(s)
	}
	// Encapsulated seeds.
	for _, o := range [][2]netip.Addr{{node4, be4}, {node6, be6}} {
		f.Add(encap(TCP(TCPSpec{Src: cli4, Dst: vip4, Payload: payload(3)}), o[0], o[1], 0))
		f.Add(encap(TCP(TCPSpec{Src: cli6, Dst: vip6, IPv6ExtHeader: true}), o[0], o[1], 0))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		fr, err := Parse(frame)
		if err != nil {
			if !errors.Is(err, ErrChecksum) && !errors.Is(err, ErrLength) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v wraps no sentinel", err)
			}
			return
		}
		l2 := 14
		if fr.VLAN != 0 || binary.BigEndian.Uint16(frame[12:]) == EtherTypeVLAN || binary.BigEndian.Uint16(frame[12:]) == EtherTypeQinQ {
			l2 = 18
		}
		top := fr.IP
		if fr.Outer != nil {
			top = *fr.Outer
		}
		if l2+top.TotalLen > len(frame) {
			t.Fatalf("accepted an IP length %d beyond the %d-byte frame", top.TotalLen, len(frame))
		}
		if fr.IP.HeaderLen > fr.IP.TotalLen || len(fr.Payload) > fr.IP.TotalLen {
			t.Fatalf("inconsistent lengths: %+v payload %d", fr.IP, len(fr.Payload))
		}
	})
}
