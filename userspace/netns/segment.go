//go:build linux

package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// bridgeAgeing is the bridge's FDB ageing time in clock_t units
// (centiseconds): the kernel default of 300 s, set explicitly.
const bridgeAgeing = 300 * 100

// Segment is an L2 segment: a bridge living in a namespace of its own.
// Hosts attach to it with veth pairs (Attach).
type Segment struct {
	// NS is the segment's namespace, holding the bridge and the veth peers.
	NS *NS
	// Bridge is the bridge's name inside NS ("br0").
	Bridge string

	mtu int
}

// NewSegment creates a namespace holding the bridge "br0", up, with the
// given MTU (0: the kernel default), which is also Attach's default. The
// bridge keeps that MTU whatever its ports' (it only limits frames to or
// from the bridge itself, which has no addresses; forwarded frames are
// limited by the ports). IPv6 is disabled in that namespace (the
// bridge has no addresses and sends no router or multicast-listener
// solicitations; it still forwards IPv6 frames), multicast snooping is off
// (so neighbour discovery is simply flooded), STP is off with forward_delay
// 0 (ports forward as soon as they are up), bridge netfilter hooks are off
// when br_netfilter is loaded, and FDB ageing is 300 s.
func NewSegment(prefix string, mtu int) (*Segment, error) {
	if mtu < 0 {
		return nil, fmt.Errorf("netns: new segment: invalid MTU %d", mtu)
	}
	ns, err := New(prefix)
	if err != nil {
		return nil, err
	}
	s := &Segment{NS: ns, Bridge: "br0", mtu: mtu}
	if err := s.init(); err != nil {
		return nil, errors.Join(err, ns.Close())
	}
	return s, nil
}

// init configures the segment namespace and creates its bridge.
func (s *Segment) init() error {
	n := s.NS
	for _, kv := range [][2]string{
		{"net.ipv6.conf.all.disable_ipv6", "1"},
		{"net.ipv6.conf.default.disable_ipv6", "1"},
		{"net.bridge.bridge-nf-call-iptables", "0"},
		{"net.bridge.bridge-nf-call-ip6tables", "0"},
		{"net.bridge.bridge-nf-call-arptables", "0"},
	} {
		// Missing: IPv6 disabled at boot, or br_netfilter not loaded.
		if err := n.Sysctl(kv[0], kv[1]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	// The netlink library's Bridge type cannot set stp_state or
	// forward_delay, so build RTM_NEWLINK by hand; a request without a
	// handle's sockets runs in the current thread's namespace, i.e. in n.
	err := n.Do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
		req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
		req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(s.Bridge)))
		info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
		info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
		data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
		data.AddRtAttr(nl.IFLA_BR_STP_STATE, nl.Uint32Attr(0))
		data.AddRtAttr(nl.IFLA_BR_FORWARD_DELAY, nl.Uint32Attr(0))
		data.AddRtAttr(nl.IFLA_BR_MCAST_SNOOPING, nl.Uint8Attr(0))
		data.AddRtAttr(nl.IFLA_BR_AGEING_TIME, nl.Uint32Attr(bridgeAgeing))
		req.AddData(info)
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("netns %s: create bridge %s: %w", n.Name, s.Bridge, err)
	}
	h, br, err := n.link(s.Bridge)
	if err != nil {
		return err
	}
	if err := s.pinMTU(h, br); err != nil {
		return err
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("netns %s: bring bridge %s up: %w", n.Name, s.Bridge, err)
	}
	return nil
}

// pinMTU sets the bridge's MTU so that it sticks. An MTU given at creation
// (IFLA_MTU) does not: the kernel then lowers the bridge to its smallest
// port's MTU as ports join. Only a change through ndo_change_mtu marks the
// MTU as set by the user, and setting the current value is a no-op that
// marks nothing, so step through another value first.
func (s *Segment) pinMTU(h *netlink.Handle, br netlink.Link) error {
	if s.mtu == 0 {
		return nil
	}
	if br.Attrs().MTU == s.mtu {
		other := s.mtu - 1
		if other < 68 {
			other = s.mtu + 1
		}
		if err := h.LinkSetMTU(br, other); err != nil {
			return fmt.Errorf("netns %s: set bridge %s MTU %d: %w", s.NS.Name, s.Bridge, other, err)
		}
	}
	if err := h.LinkSetMTU(br, s.mtu); err != nil {
		return fmt.Errorf("netns %s: set bridge %s MTU %d: %w", s.NS.Name, s.Bridge, s.mtu, err)
	}
	return nil
}

// Close deletes the segment's namespace, its bridge and every veth pair
// attached to it (the hosts' ends included). It is idempotent.
func (s *Segment) Close() error {
	return s.NS.Close()
}

// Attach connects host to the segment with a veth pair: ifname inside host
// (MTU mtu, the given addresses, up) and a peer inside the segment
// namespace, enslaved to the bridge and up, whose name it returns. mtu 0
// means the segment's MTU. On error the pair is deleted again.
func (s *Segment) Attach(host *NS, ifname string, mtu int, addrs ...netip.Prefix) (peer string, err error) {
	peer = "veth" + randHex(4)
	wrap := func(err error) error {
		return fmt.Errorf("segment %s: attach %s/%s: %w", s.NS.Name, hostName(host), ifname, err)
	}
	if host == nil {
		return "", wrap(errors.New("nil host namespace"))
	}
	if err := checkIfName(ifname); err != nil {
		return "", wrap(err)
	}
	if mtu < 0 {
		return "", wrap(fmt.Errorf("invalid MTU %d", mtu))
	}
	if mtu == 0 {
		mtu = s.mtu
	}
	for _, p := range addrs {
		if err := checkPrefix(p); err != nil {
			return "", wrap(fmt.Errorf("address %s: %w", p, err))
		}
	}
	hh, err := host.handle()
	if err != nil {
		return "", wrap(err)
	}
	segFD, err := s.NS.dupFD()
	if err != nil {
		return "", wrap(err)
	}
	defer segFD.Close()

	// Create the pair in host, with the peer placed straight into the
	// segment namespace: neither name ever exists in the caller's namespace.
	la := netlink.NewLinkAttrs()
	la.Name = ifname
	la.MTU = mtu
	veth := &netlink.Veth{
		LinkAttrs:     la,
		PeerName:      peer,
		PeerNamespace: netlink.NsFd(segFD),
		PeerMTU:       uint32(mtu),
		PeerTxQLen:    -1,
	}
	if err := hh.LinkAdd(veth); err != nil {
		return "", wrap(fmt.Errorf("create veth pair %s/%s: %w", ifname, peer, err))
	}
	defer func() {
		if err != nil {
			// Deleting one end deletes both.
			if l, lerr := hh.LinkByName(ifname); lerr == nil {
				if derr := hh.LinkDel(l); derr != nil {
					err = errors.Join(err, fmt.Errorf("clean up veth %s: %w", ifname, derr))
				}
			}
		}
	}()

	sh, p, err := s.NS.link(peer)
	if err != nil {
		return "", wrap(err)
	}
	_, br, err := s.NS.link(s.Bridge)
	if err != nil {
		return "", wrap(err)
	}
	if err := sh.LinkSetMaster(p, br); err != nil {
		return "", wrap(fmt.Errorf("enslave %s to %s: %w", peer, s.Bridge, err))
	}
	if err := sh.LinkSetUp(p); err != nil {
		return "", wrap(fmt.Errorf("bring %s up: %w", peer, err))
	}
	for _, a := range addrs {
		if err := host.AddAddr(ifname, a); err != nil {
			return "", wrap(err)
		}
	}
	_, hl, err := host.link(ifname)
	if err != nil {
		return "", wrap(err)
	}
	if err := hh.LinkSetUp(hl); err != nil {
		return "", wrap(fmt.Errorf("bring %s up: %w", ifname, err))
	}
	return peer, nil
}

func hostName(n *NS) string {
	if n == nil {
		return "<nil>"
	}
	return n.Name
}
