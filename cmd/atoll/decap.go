package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/dataplane"
)

// addrList is a repeatable address flag.
type addrList []netip.Addr

func (a *addrList) String() string { return fmt.Sprint(*a) }

func (a *addrList) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		ip, err := netip.ParseAddr(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("not an IP address: %q", f)
		}
		*a = append(*a, ip.Unmap())
	}
	return nil
}

const decapUsage = `usage: atoll decap -i IFACE [-source ADDR]... [-pin DIR]
       atoll decap -i IFACE -detach [-pin DIR]
       atoll decap -i IFACE -stats [-pin DIR]

Attaches bpf/decap.c to IFACE in native XDP mode: IP-in-IP packets from the
load balancers lose their outer header and go up the stack to the VIP on lo.
The link and the counters are pinned under DIR/IFACE, so the program stays
attached after this command exits (a systemd oneshot unit fits). Nodes whose
kernel has the ipip/ip6tnl modules can use a tunnel device instead
(docs/architecture.md).
`

func runDecap(args []string) error {
	fs := flag.NewFlagSet("decap", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), decapUsage); fs.PrintDefaults() }
	var sources addrList
	iface := fs.String("i", "", "interface the tunnel packets arrive on")
	pin := fs.String("pin", "/sys/fs/bpf/atoll/decap", "bpffs directory for the pinned link and counters")
	detach := fs.Bool("detach", false, "detach the program and remove its pins")
	stats := fs.Bool("stats", false, "print the counters of the attached program")
	fs.Var(&sources, "source", "only decapsulate tunnels from this LB address (repeatable, comma-separated)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *iface == "" {
		return errors.New("decap: -i IFACE is required")
	}
	dir := filepath.Join(*pin, *iface)
	switch {
	case *detach:
		return decapDetach(dir)
	case *stats:
		return decapStats(dir)
	}
	ifc, err := net.InterfaceByName(*iface)
	if err != nil {
		return fmt.Errorf("decap: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("decap: %w (is bpffs mounted on %s?)", err, *pin)
	}
	if _, err := os.Stat(filepath.Join(dir, "link")); err == nil {
		return fmt.Errorf("decap: already attached to %s (pinned at %s); use -detach first", *iface, dir)
	}
	d, err := dataplane.LoadDecap(sources)
	if err != nil {
		return err
	}
	defer d.Close()
	l, err := dataplane.AttachXDP(d.Program, ifc.Index)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Pin(filepath.Join(dir, "link")); err != nil {
		return fmt.Errorf("decap: pin link: %w", err)
	}
	if err := d.Stats.Pin(filepath.Join(dir, "stats")); err != nil {
		_ = l.Unpin()
		return fmt.Errorf("decap: pin counters: %w", err)
	}
	fmt.Printf("decap attached to %s (ifindex %d), pinned at %s", *iface, ifc.Index, dir)
	if len(sources) > 0 {
		fmt.Printf(", accepting tunnels from %v", sources)
	}
	fmt.Println()
	return nil
}

func decapDetach(dir string) error {
	l, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil)
	if err != nil {
		return fmt.Errorf("decap: nothing pinned at %s: %w", dir, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("decap: unpin: %w", err)
	}
	_ = os.Remove(filepath.Join(dir, "stats"))
	_ = os.Remove(dir)
	fmt.Println("decap detached")
	return nil
}

func decapStats(dir string) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "stats"), nil)
	if err != nil {
		return fmt.Errorf("decap: no counters pinned at %s: %w", dir, err)
	}
	defer m.Close()
	names := map[maps.DecapStat]string{
		maps.DecapOK: "decapsulated", maps.DecapPass: "passed (not a tunnel)",
		maps.DecapForeign: "passed (unknown source)", maps.DecapMalformed: "dropped (malformed)",
		maps.DecapHeadroom: "dropped (headroom)",
	}
	for i := range maps.NumDecapStats {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			return fmt.Errorf("decap: read counters: %w", err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		fmt.Printf("%-26s %d\n", names[maps.DecapStat(i)], sum)
	}
	return nil
}
