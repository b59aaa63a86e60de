package config

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	pathpkg "path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/atoll-lb/atoll/maps"
)

// Defaults.
const (
	defaultPinPath       = "/sys/fs/bpf/atoll"
	defaultConntrackSize = 1 << 20
	defaultRingSize      = 65537
	defaultHashSeed      = 0x61746f6c // "atol"
	defaultInterval      = 2 * time.Second
	defaultTimeout       = time.Second
	defaultRise          = 2
	defaultFall          = 3
	defaultConcurrency   = 64
	defaultMetricsListen = "127.0.0.1:9742"
	defaultSocket        = "/run/atoll/atoll.sock"
	defaultWeight        = 1
)

// Limits.
const (
	minConntrackSize = 1024
	maxConntrackSize = 1 << 26
	maxRingSize      = 16777213 // the largest prime below 2^24
	minInterval      = 100 * time.Millisecond
	maxRiseFall      = 100
	maxConcurrency   = 4096
	maxWeight        = 1000
	maxCAFileSize    = 16 << 20
	maxSocketPath    = 107 // sun_path holds 108 bytes with the NUL
)

var (
	reIslandName  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
	reServiceName = reIslandName
	reNodeName    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
)

var (
	protocols   = []string{ProtoIMAP, ProtoIMAPS, ProtoPOP3, ProtoPOP3S, ProtoLMTP, ProtoTCP}
	checks      = []string{CheckTCP, CheckIMAP, CheckPOP3, CheckLMTP}
	tlsModes    = []string{TLSNone, TLSImplicit, TLSStartTLS}
	forwardings = []string{ForwardL2DSR, ForwardIPIP}
	routings    = []string{RouteIsland, RouteLogin}
	modes       = []string{ModeXDP, ModeNone}
)

// defaultPorts are the well-known ports of the protocols (tcp has none).
var defaultPorts = map[string]uint16{ProtoIMAP: 143, ProtoIMAPS: 993, ProtoPOP3: 110, ProtoPOP3S: 995, ProtoLMTP: 24}

// defaultChecks are the checks of the protocols.
var defaultChecks = map[string]string{ProtoIMAP: CheckIMAP, ProtoIMAPS: CheckIMAP, ProtoPOP3: CheckPOP3, ProtoPOP3S: CheckPOP3, ProtoLMTP: CheckLMTP, ProtoTCP: CheckTCP}

// implicitTLS are the protocols that speak TLS from the first byte.
var implicitTLS = map[string]bool{ProtoIMAPS: true, ProtoPOP3S: true}

// run decodes and checks the file; the Config is only meaningful when no
// error was recorded.
func (p *parser) run() *Config {
	raw, ok := p.decode()
	if !ok {
		return nil
	}
	c := &checker{parser: p, cfg: &Config{File: p.file}}
	c.dataplane(raw.Dataplane)
	c.health(raw.Health)
	c.metrics(raw.Metrics)
	c.api(raw.API)
	c.proxy(raw.Proxy)
	c.directory(raw.Directory)
	c.islands(raw.Islands)
	c.services(raw.Services)
	c.affinity(raw.Affinity)
	c.limits()
	c.addressClashes()
	c.ringSize()
	c.tunnelSources()
	c.loginServices()
	c.proxySources()
	return c.cfg
}

// checker validates the raw config and builds the Config. Besides it, it
// keeps what the cross checks need to know: where each item is and which
// of its values are trustworthy.
type checker struct {
	*parser
	cfg *Config

	modeOK     bool // dataplane.mode is valid
	ringOK     bool // dataplane.ring_size was checked fine
	sourcesOK  bool // dataplane.source_v4/v6 are valid
	islandsOK  bool // the islands list could be read entry by entry
	namesOK    bool // every island has a valid name (references can be checked)
	islandLine map[string]int
	isl        []islandMeta // parallel to cfg.Islands
	svc        []serviceMeta

	proxyTLSSet    bool // proxy.tls names a file (fine or not)
	proxyTLSKnown  bool // proxy.tls could be read
	proxySourcesOK bool // proxy.source_addresses are valid
}

type islandMeta struct {
	path    path
	nodesOK bool // every node and its addresses could be read
	nodes   []nodeMeta
}

type nodeMeta struct {
	path    path
	addrsOK bool
}

type serviceMeta struct {
	path      path
	vipsOK    bool
	portOK    bool
	protoOK   bool
	routingOK bool
	fwdOK     bool
	islandOK  bool // Island names a defined island (routing island)
	// loginIsland: routing login with an island, so which routing is
	// meant is unclear and what login needs is not checked.
	loginIsland bool
}

func (c *checker) dataplane(r *rawDataplane) {
	pa := path{"dataplane"}
	d := &c.cfg.Dataplane
	*d = Dataplane{Mode: ModeXDP, PinPath: defaultPinPath, ConntrackSize: defaultConntrackSize,
		RingSize: defaultRingSize, HashSeed: defaultHashSeed, Line: c.keyLine(pa)}
	if r == nil {
		r = &rawDataplane{}
	}
	c.modeOK = !c.bad(pa.add("mode"))
	if r.Mode != "" {
		d.Mode = r.Mode
		if c.modeOK && !slices.Contains(modes, r.Mode) {
			c.modeOK = false
			c.errorf(c.line(pa.add("mode")), "dataplane.mode: %q is not a mode; use xdp, or none to run without a data plane", r.Mode)
		}
	}

	ifp := pa.add("interfaces")
	d.Interfaces = r.Interfaces
	if !c.bad(ifp) {
		if len(r.Interfaces) == 0 && c.modeOK && d.Mode == ModeXDP {
			c.errorf(c.line(ifp), "dataplane.interfaces: no interface is given; list the interfaces to attach XDP to, such as [eth0], or set dataplane.mode: none")
		}
		seen := map[string]int{}
		for i, name := range r.Interfaces {
			ip := ifp.add(i)
			if msg := ifNameProblem(name); msg != "" {
				c.errorf(c.line(ip), "dataplane.interfaces: %q %s; write the interface's name as `ip link` shows it", name, msg)
			} else if first, dup := seen[name]; dup {
				c.errorf(c.line(ip), "dataplane.interfaces: %s is listed twice (first at line %d); remove one", name, first)
			} else {
				seen[name] = c.line(ip)
			}
		}
	}

	if r.PinPath != nil {
		d.PinPath = *r.PinPath
		if pp := pa.add("pin_path"); !c.bad(pp) && !pathpkg.IsAbs(d.PinPath) {
			c.errorf(c.line(pp), "dataplane.pin_path: %q is not an absolute path; write a directory on the BPF filesystem, such as %s", d.PinPath, defaultPinPath)
		}
	}
	if r.ConntrackSize != nil {
		d.ConntrackSize = *r.ConntrackSize
		if cp := pa.add("conntrack_size"); !c.bad(cp) && (d.ConntrackSize < minConntrackSize || d.ConntrackSize > maxConntrackSize) {
			c.errorf(c.line(cp), "dataplane.conntrack_size: %d is out of range; use %d to %d flows per family", d.ConntrackSize, minConntrackSize, maxConntrackSize)
		}
	}
	rp := pa.add("ring_size")
	c.ringOK = !c.bad(rp)
	if r.RingSize != nil {
		d.RingSize = *r.RingSize
		if c.ringOK {
			switch {
			case d.RingSize > maxRingSize:
				c.ringOK = false
				c.errorf(c.line(rp), "dataplane.ring_size: %d is too large; use a prime up to %d", d.RingSize, maxRingSize)
			case !isPrime(d.RingSize):
				c.ringOK = false
				c.errorf(c.line(rp), "dataplane.ring_size: %d is not prime; Maglev needs a prime size: use %d", d.RingSize, nextPrime(d.RingSize))
			}
		}
	}
	if r.HashSeed != nil {
		d.HashSeed = *r.HashSeed
	}

	c.sourcesOK = true
	for _, fam := range []int{4, 6} {
		key, val, dst := "source_v4", r.SourceV4, &d.SourceV4
		if fam == 6 {
			key, val, dst = "source_v6", r.SourceV6, &d.SourceV6
		}
		sp := pa.add(key)
		if c.bad(sp) {
			c.sourcesOK = false
			continue
		}
		if val == "" {
			continue
		}
		a, problem := parseAddr(val)
		if problem != "" {
			c.sourcesOK = false
			c.errorf(c.line(sp), "dataplane.%s: %q %s; put the LB's own IPv%d address here", key, val, problem, fam)
			continue
		}
		if familyOf(a) != fam {
			c.sourcesOK = false
			other := "source_v6"
			if fam == 6 {
				other = "source_v4"
			}
			c.errorf(c.line(sp), "dataplane.%s: %s is not an IPv%d address; put the LB's IPv%d address here (or use %s)", key, a, fam, fam, other)
			continue
		}
		*dst = a
	}
}

func (c *checker) health(r *rawHealth) {
	pa := path{"health"}
	h := &c.cfg.Health
	*h = Health{Interval: defaultInterval, Timeout: defaultTimeout, Rise: defaultRise, Fall: defaultFall,
		Concurrency: defaultConcurrency, Line: c.keyLine(pa)}
	if r == nil {
		r = &rawHealth{}
	}
	ip, tp, jp := pa.add("interval"), pa.add("timeout"), pa.add("jitter")
	intervalOK := !c.bad(ip)
	if r.Interval != nil {
		h.Interval = *r.Interval
		if intervalOK && h.Interval < minInterval {
			intervalOK = false
			c.errorf(c.line(ip), "health.interval: %s is too short; use %s or more", h.Interval, minInterval)
		}
	}
	if r.Timeout != nil {
		h.Timeout = *r.Timeout
	}
	if !c.bad(tp) {
		switch {
		case h.Timeout <= 0:
			c.errorf(c.line(tp), "health.timeout: %s is not a timeout; use a positive duration shorter than the interval (%s)", h.Timeout, h.Interval)
		case intervalOK && h.Timeout >= h.Interval:
			c.errorf(c.line(tp), "health.timeout: %s%s is not shorter than health.interval %s; make the timeout shorter than the interval", h.Timeout, defaulted(r.Timeout == nil), h.Interval)
		}
	}
	h.Jitter = h.Interval / 10
	if r.Jitter != nil {
		h.Jitter = *r.Jitter
		if !c.bad(jp) {
			switch {
			case h.Jitter < 0:
				c.errorf(c.line(jp), "health.jitter: %s is negative; use 0 (no jitter) up to less than the interval", h.Jitter)
			case intervalOK && h.Jitter >= h.Interval:
				c.errorf(c.line(jp), "health.jitter: %s is not shorter than health.interval %s; make it smaller than the interval", h.Jitter, h.Interval)
			}
		}
	}
	for _, f := range []struct {
		key      string
		val      *int
		dst      *int
		min, max int
		what     string
	}{
		{"rise", r.Rise, &h.Rise, 1, maxRiseFall, "passed checks that bring a node up"},
		{"fall", r.Fall, &h.Fall, 1, maxRiseFall, "failed checks that take a node down"},
		{"concurrency", r.Concurrency, &h.Concurrency, 1, maxConcurrency, "checks in flight at once"},
	} {
		if f.val == nil {
			continue
		}
		*f.dst = *f.val
		if fp := pa.add(f.key); !c.bad(fp) && (*f.val < f.min || *f.val > f.max) {
			c.errorf(c.line(fp), "health.%s: %d is out of range; use %d to %d (%s)", f.key, *f.val, f.min, f.max, f.what)
		}
	}
	if r.TLS != nil {
		h.TLS = HealthTLS{CAFile: r.TLS.CAFile, InsecureSkipVerify: r.TLS.InsecureSkipVerify, ServerName: r.TLS.ServerName}
		cp := pa.add("tls", "ca_file")
		if h.TLS.CAFile != "" && !c.bad(cp) {
			if msg := caFileProblem(h.TLS.CAFile); msg != "" {
				c.errorf(c.line(cp), "health.tls.ca_file: %s; fix the path, or write \"\" to use the system's roots", msg)
			}
		}
		sp := pa.add("tls", "server_name")
		if n := h.TLS.ServerName; n != "" && !c.bad(sp) && strings.ContainsAny(n, " \t/:") {
			c.errorf(c.line(sp), "health.tls.server_name: %q is not a host name; write the name in the nodes' certificates, or \"\" to use each node's name", n)
		}
	}
}

func defaulted(isDefault bool) string {
	if isDefault {
		return " (the default)"
	}
	return ""
}

func (c *checker) metrics(r *rawMetrics) {
	pa := path{"metrics"}
	m := &c.cfg.Metrics
	*m = Metrics{Listen: defaultMetricsListen, Line: c.keyLine(pa)}
	if r == nil || r.Listen == nil {
		return
	}
	m.Listen = *r.Listen
	lp := pa.add("listen")
	if m.Listen == "" || c.bad(lp) {
		return
	}
	if msg := listenProblem(m.Listen); msg != "" {
		c.errorf(c.line(lp), "metrics.listen: %q %s; write host:port, such as %s, or \"\" to turn metrics off", m.Listen, msg, defaultMetricsListen)
	}
}

func (c *checker) api(r *rawAPI) {
	pa := path{"api"}
	a := &c.cfg.API
	*a = API{Socket: defaultSocket, Line: c.keyLine(pa)}
	if r == nil || r.Socket == nil {
		return
	}
	a.Socket = *r.Socket
	sp := pa.add("socket")
	switch {
	case c.bad(sp):
	case !pathpkg.IsAbs(a.Socket) || strings.HasSuffix(a.Socket, "/"):
		c.errorf(c.line(sp), "api.socket: %q is not an absolute file path; write one, such as %s", a.Socket, defaultSocket)
	case len(a.Socket) > maxSocketPath:
		c.errorf(c.line(sp), "api.socket: the path is %d bytes long, more than a unix socket allows (%d); use a shorter one, such as %s", len(a.Socket), maxSocketPath, defaultSocket)
	}
}

func (c *checker) islands(raws []rawIsland) {
	pa := path{"islands"}
	c.islandLine = map[string]int{}
	if c.badSelf(pa) {
		return
	}
	idx := c.aligned(pa, len(raws))
	if idx == nil {
		return
	}
	c.islandsOK, c.namesOK = true, true
	if c.seqLen(pa) == 0 {
		c.namesOK = false
		c.errorf(c.line(pa), "islands: none is defined; define at least one island with its nodes (see deploy/atoll.example.yaml)")
		return
	}
	nodeLine := map[string]int{}      // node name -> line
	nodeIsland := map[string]string{} // node name -> island name
	addrLine := map[netip.Addr]int{}
	addrNode := map[netip.Addr]string{}
	for k, r := range raws {
		ip := pa.add(idx[k])
		isl := Island{Name: r.Name, Proxy: c.islandProxy(r.Proxy, ip.add("proxy")), Line: c.line(ip)}
		meta := islandMeta{path: ip}
		switch np := ip.add("name"); {
		case c.bad(np):
			c.namesOK = false
		case r.Name == "":
			c.namesOK = false
			c.errorf(isl.Line, "%s: name is missing; give the island a name, such as \"a\"", c.describe(ip))
		case !reIslandName.MatchString(r.Name):
			c.namesOK = false
			c.errorf(c.line(np), "island %q: the name must be 1 to 32 lower-case letters, digits or '-', starting with a letter or digit; rename it", r.Name)
			c.islandLine[r.Name] = isl.Line
		default:
			if first, dup := c.islandLine[r.Name]; dup {
				c.errorf(isl.Line, "island %s is defined twice (first at line %d); rename or remove one of them", r.Name, first)
			} else {
				c.islandLine[r.Name] = isl.Line
			}
		}

		nsp := ip.add("nodes")
		nidx := c.aligned(nsp, len(r.Nodes))
		if c.badSelf(nsp) || nidx == nil {
			c.cfg.Islands = append(c.cfg.Islands, isl)
			c.isl = append(c.isl, meta)
			continue
		}
		meta.nodesOK = true
		if len(r.Nodes) == 0 && c.seqLen(nsp) == 0 {
			c.errorf(c.line(nsp), "%s has no nodes; list at least one under nodes:", c.describe(ip))
		}
		for j, rn := range r.Nodes {
			np := nsp.add(nidx[j])
			n, nm := c.node(rn, np, isl.Name, nodeLine, nodeIsland, addrLine, addrNode)
			meta.nodesOK = meta.nodesOK && nm.addrsOK
			isl.Nodes = append(isl.Nodes, n)
			meta.nodes = append(meta.nodes, nm)
		}
		c.cfg.Islands = append(c.cfg.Islands, isl)
		c.isl = append(c.isl, meta)
	}
}

func (c *checker) node(r rawNode, np path, island string, nodeLine map[string]int, nodeIsland map[string]string,
	addrLine map[netip.Addr]int, addrNode map[netip.Addr]string) (Node, nodeMeta) {
	n := Node{Name: r.Name, Weight: defaultWeight, Ports: map[string]uint16{}, Line: c.line(np)}
	meta := nodeMeta{path: np}
	switch namep := np.add("name"); {
	case c.bad(namep):
	case r.Name == "":
		c.errorf(n.Line, "%s: name is missing; give the node its name, such as its host name \"dbmail-left-a\"", c.describe(np))
	case !reNodeName.MatchString(r.Name):
		c.errorf(c.line(namep), "node %q: the name must be 1 to 63 lower-case letters, digits or '-', starting with a letter or digit; rename it", r.Name)
	default:
		if first, dup := nodeLine[r.Name]; dup {
			if nodeIsland[r.Name] == island {
				c.errorf(n.Line, "node %s appears twice in island %s (first at line %d); remove or rename one of them", r.Name, island, first)
			} else {
				c.errorf(n.Line, "node %s is also in island %s (line %d); a node belongs to one island — rename one of them", r.Name, nodeIsland[r.Name], first)
			}
		} else {
			nodeLine[r.Name] = n.Line
			nodeIsland[r.Name] = island
		}
	}

	ap := np.add("addresses")
	if !c.bad(ap) {
		var ok bool
		n.Addresses, ok = c.addrList(r.Addresses, ap, c.describe(np), "address", "addresses", "the node's IPv4 and/or IPv6 address")
		meta.addrsOK = ok
		for i, a := range n.Addresses {
			if !ok {
				break
			}
			l := c.line(ap.add(i))
			if first, dup := addrLine[a]; dup {
				c.errorf(l, "%s: address %s is already used by node %s (line %d); each node needs its own addresses", c.describe(np), a, addrNode[a], first)
				meta.addrsOK = false
				continue
			}
			addrLine[a], addrNode[a] = l, r.Name
		}
	} else {
		n.Addresses = nil
		for _, s := range r.Addresses {
			if a, problem := parseAddr(s); problem == "" {
				n.Addresses = append(n.Addresses, a)
			}
		}
	}

	if r.Weight != nil {
		n.Weight = *r.Weight
		if wp := np.add("weight"); !c.bad(wp) && n.Weight > maxWeight {
			c.errorf(c.line(wp), "%s: weight %d is too large; use 0 to %d (0 drains the node)", c.describe(np), n.Weight, maxWeight)
		}
	}
	pp := np.add("ports")
	for _, proto := range sortedKeys(r.Ports) {
		port := r.Ports[proto]
		kp := pp.add(proto)
		if c.badSelf(kp) {
			continue
		}
		if !slices.Contains(protocols, proto) {
			hint := ""
			if s := suggest(proto, protocols); s != "" {
				hint = fmt.Sprintf(" (did you mean %q?)", s)
			}
			c.errorf(c.line(kp), "%s: ports: %q is not a protocol%s; use one of: %s", c.describe(np), proto, hint, strings.Join(protocols, ", "))
			continue
		}
		if port == 0 {
			c.errorf(c.line(kp), "%s: ports.%s: port 0 cannot be used; write the port the node serves %s on (1 to 65535), or remove the entry to use the service's port", c.describe(np), proto, proto)
			continue
		}
		n.Ports[proto] = port
	}
	return n, meta
}

// addrList checks a list of one or two addresses, at most one per family.
func (c *checker) addrList(raws []string, ap path, who, one, many, what string) ([]netip.Addr, bool) {
	if len(raws) == 0 {
		c.errorf(c.line(ap), "%s: no %s is given; write %s under %s:", who, one, what, many)
		return nil, false
	}
	if len(raws) > 2 {
		c.errorf(c.line(ap), "%s: %d %s are given; give at most two, one IPv4 and one IPv6", who, len(raws), many)
		return nil, false
	}
	ok := true
	var out []netip.Addr
	for i, s := range raws {
		a, problem := parseAddr(s)
		if problem != "" {
			c.errorf(c.line(ap.add(i)), "%s: %s %q %s; write an IPv4 or IPv6 address", who, one, s, problem)
			ok = false
			continue
		}
		if len(out) == 1 && familyOf(out[0]) == familyOf(a) {
			c.errorf(c.line(ap.add(i)), "%s: %s and %s are both IPv%d; give at most one %s per family — remove one", who, out[0], a, familyOf(a), one)
			ok = false
			continue
		}
		out = append(out, a)
	}
	return out, ok
}

func (c *checker) services(raws []rawService) {
	pa := path{"services"}
	if c.badSelf(pa) {
		return
	}
	idx := c.aligned(pa, len(raws))
	if idx == nil {
		return
	}
	if c.seqLen(pa) == 0 {
		c.errorf(c.line(pa), "services: none is defined; define at least one service (see deploy/atoll.example.yaml)")
		return
	}
	nameLine := map[string]int{}
	for k, r := range raws {
		sp := pa.add(idx[k])
		s, meta := c.service(r, sp, nameLine)
		c.cfg.Services = append(c.cfg.Services, s)
		c.svc = append(c.svc, meta)
	}
}

func (c *checker) service(r rawService, sp path, nameLine map[string]int) (Service, serviceMeta) {
	s := Service{Name: r.Name, Protocol: r.Protocol, Forwarding: r.Forwarding, Routing: RouteIsland, Island: r.Island, Line: c.line(sp)}
	meta := serviceMeta{path: sp}
	who := c.describe(sp)
	field := func(k ...any) path { return sp.add(k...) }

	switch np := field("name"); {
	case c.bad(np):
	case r.Name == "":
		c.errorf(s.Line, "%s: name is missing; give the service a name, such as \"imap-a\"", who)
	case !reServiceName.MatchString(r.Name):
		c.errorf(c.line(np), "service %q: the name must be 1 to 32 lower-case letters, digits or '-', starting with a letter or digit; rename it", r.Name)
	default:
		if first, dup := nameLine[r.Name]; dup {
			c.errorf(s.Line, "service %s is defined twice (first at line %d); rename or remove one of them", r.Name, first)
		} else {
			nameLine[r.Name] = s.Line
		}
	}

	if vp := field("vips"); !c.bad(vp) {
		s.VIPs, meta.vipsOK = c.addrList(r.VIPs, vp, who, "VIP", "vips", "the service's IPv4 and/or IPv6 VIP")
	}

	switch pp := field("protocol"); {
	case c.bad(pp):
	case r.Protocol == "":
		c.errorf(s.Line, "%s: protocol is missing; set protocol: to one of %s", who, strings.Join(protocols, ", "))
	case !slices.Contains(protocols, r.Protocol):
		c.errorf(c.line(pp), "%s: protocol %q is not known; use one of %s", who, r.Protocol, strings.Join(protocols, ", "))
	default:
		meta.protoOK = true
	}

	portp := field("port")
	switch {
	case c.bad(portp):
	case r.Port != nil && *r.Port == 0:
		c.errorf(c.line(portp), "%s: port 0 cannot be used; write the VIP's port (1 to 65535)", who)
	case r.Port != nil:
		s.Port = *r.Port
		meta.portOK = true
	case !meta.protoOK:
	case r.Protocol == ProtoTCP:
		c.errorf(s.Line, "%s: port is missing; a tcp service has no default port: write the VIP's port under port:", who)
	default:
		s.Port = defaultPorts[r.Protocol]
		meta.portOK = true
	}

	switch fp := field("forwarding"); {
	case c.bad(fp):
	case r.Forwarding == "":
		c.errorf(s.Line, "%s: forwarding is missing; set forwarding: l2dsr (nodes on the LB's L2 segment) or ipip (tunnel to the nodes)", who)
	case !slices.Contains(forwardings, r.Forwarding):
		c.errorf(c.line(fp), "%s: forwarding %q is not known; use l2dsr or ipip", who, r.Forwarding)
	default:
		meta.fwdOK = true
	}

	rp := field("routing")
	if r.Routing != "" {
		s.Routing = r.Routing
	}
	switch {
	case c.bad(rp):
	case !slices.Contains(routings, s.Routing):
		c.errorf(c.line(rp), "%s: routing %q is not known; use island (the VIP belongs to one island) or login (the front door)", who, s.Routing)
	default:
		meta.routingOK = true
	}

	if ip := field("island"); meta.routingOK && !c.bad(ip) {
		switch {
		case s.Routing == RouteLogin && r.Island != "":
			meta.loginIsland = true
			c.errorf(c.line(ip), "%s: island: a login service has no island (it is known after login); remove island: %s, or set routing: island", who, r.Island)
		case s.Routing == RouteIsland && r.Island == "":
			c.errorf(s.Line, "%s: island is missing; routing island needs the island that serves this VIP%s, or set routing: login", who, c.islandChoices(" (", ")"))
		case s.Routing == RouteIsland && c.islandsOK:
			if _, ok := c.islandLine[r.Island]; ok {
				meta.islandOK = true
			} else if c.namesOK {
				c.errorf(c.line(ip), "%s: island %q is not defined under islands; define it%s", who, r.Island, c.islandChoices(" or use one of: ", ""))
			}
		}
	}

	// Health: defaults follow the protocol and routing.
	hp := field("health")
	rh := r.Health
	if rh == nil {
		rh = &rawServiceHealth{}
	}
	s.Health.Check = rh.Check
	if s.Health.Check == "" {
		s.Health.Check = defaultChecks[r.Protocol]
	}
	s.Health.TLS = rh.TLS
	if s.Health.TLS == "" {
		s.Health.TLS = TLSNone
		if implicitTLS[r.Protocol] {
			s.Health.TLS = TLSImplicit
		}
	}
	s.Health.ThroughVIP = s.Routing == RouteIsland && c.cfg.Dataplane.Mode == ModeXDP
	if rh.ThroughVIP != nil {
		s.Health.ThroughVIP = *rh.ThroughVIP
	}
	checkOK, tlsOK := false, false
	switch cp := hp.add("check"); {
	case c.bad(cp):
	case rh.Check != "" && !slices.Contains(checks, rh.Check):
		c.errorf(c.line(cp), "%s: health.check %q is not known; use one of %s", who, rh.Check, strings.Join(checks, ", "))
	case !meta.protoOK:
	case r.Protocol != ProtoTCP && s.Health.Check != CheckTCP && s.Health.Check != defaultChecks[r.Protocol]:
		c.errorf(c.line(cp), "%s: health.check %s does not fit protocol %s; use check: %s or tcp", who, s.Health.Check, r.Protocol, defaultChecks[r.Protocol])
	default:
		checkOK = true
	}
	switch tp := hp.add("tls"); {
	case c.bad(tp):
	case rh.TLS != "" && !slices.Contains(tlsModes, rh.TLS):
		c.errorf(c.line(tp), "%s: health.tls %q is not known; use none, implicit or starttls", who, rh.TLS)
	default:
		tlsOK = true
	}
	if checkOK && tlsOK {
		tl := c.line(hp.add("tls"))
		switch t := s.Health.TLS; {
		case t == TLSStartTLS && s.Health.Check == CheckTCP:
			c.errorf(tl, "%s: health.tls starttls needs a protocol check (imap, pop3 or lmtp), not check tcp; use tls: none or implicit, or another check", who)
		case t == TLSStartTLS && implicitTLS[r.Protocol]:
			c.errorf(tl, "%s: health.tls starttls does not fit protocol %s, which speaks TLS from the first byte; use tls: implicit", who, r.Protocol)
		case t == TLSImplicit && r.Protocol != ProtoTCP && !implicitTLS[r.Protocol]:
			c.errorf(tl, "%s: health.tls implicit does not fit protocol %s, which starts in plain text; use tls: starttls or none", who, r.Protocol)
		case t == TLSNone && implicitTLS[r.Protocol] && s.Health.Check != CheckTCP:
			c.errorf(tl, "%s: health.tls none does not fit protocol %s, which speaks TLS from the first byte; use tls: implicit, or check: tcp", who, r.Protocol)
		}
	}
	if vp := hp.add("through_vip"); rh.ThroughVIP != nil && *rh.ThroughVIP && !c.bad(vp) {
		switch {
		case meta.routingOK && s.Routing == RouteLogin:
			c.errorf(c.line(vp), "%s: health.through_vip cannot be true for routing login (new flows to the VIP go to the local proxy, not to a node); remove it", who)
		case c.modeOK && c.cfg.Dataplane.Mode == ModeNone:
			c.errorf(c.line(vp), "%s: health.through_vip needs the data plane to steer checks, and dataplane.mode is none; remove it", who)
		}
	}
	return s, meta
}

func (c *checker) islandChoices(before, after string) string {
	if !c.islandsOK || len(c.islandLine) == 0 {
		return ""
	}
	var names []string
	for _, isl := range c.cfg.Islands {
		if _, ok := c.islandLine[isl.Name]; ok && isl.Name != "" {
			names = append(names, isl.Name)
		}
	}
	return before + strings.Join(names, ", ") + after
}

// limits checks the data plane's table sizes.
func (c *checker) limits() {
	if c.islandsOK && c.seqLen(path{"islands"}) > maps.MaxIslands {
		c.errorf(c.line(path{"islands"}), "islands: %d islands are defined; the data plane holds at most %d — merge or remove some", c.seqLen(path{"islands"}), maps.MaxIslands)
	}
	if c.islandsOK {
		backends, ok := 0, true
		for i, isl := range c.cfg.Islands {
			ok = ok && c.isl[i].nodesOK
			for _, n := range isl.Nodes {
				backends += len(n.Addresses)
			}
		}
		if ok && backends > maps.MaxBackends {
			c.errorf(c.line(path{"islands"}), "islands: the nodes have %d addresses in all; the data plane holds at most %d backends (one per node address) — remove nodes or addresses", backends, maps.MaxBackends)
		}
	}
	entries, ok := 0, true
	for i, s := range c.cfg.Services {
		ok = ok && c.svc[i].vipsOK
		entries += len(s.VIPs)
	}
	if ok && entries > maps.MaxServices {
		c.errorf(c.line(path{"services"}), "services: the services have %d VIPs in all; the data plane holds at most %d (service × VIP) entries — remove services or VIPs", entries, maps.MaxServices)
	}
	// The reconciler gives every node of an island service one backend per
	// VIP of the service.
	if c.islandsOK {
		total, ok := 0, true
		for i, s := range c.cfg.Services {
			m := c.svc[i]
			if !m.routingOK || s.Routing != RouteIsland || !m.islandOK {
				continue
			}
			k := c.islandIndex(s.Island)
			ok = ok && m.vipsOK && c.isl[k].nodesOK
			total += len(s.VIPs) * len(c.cfg.Islands[k].Nodes)
		}
		if ok && total > maps.MaxBackends {
			c.errorf(c.line(path{"services"}), "services: the island services need %d backends (one per VIP and node of the island); the data plane holds at most %d — remove services, VIPs or nodes", total, maps.MaxBackends)
		}
	}
}

func (c *checker) islandIndex(name string) int {
	for i, isl := range c.cfg.Islands {
		if isl.Name == name {
			return i
		}
	}
	return -1
}

// addressClashes finds a VIP:port used twice, and addresses used as two
// things (VIP, node, LB source).
func (c *checker) addressClashes() {
	type use struct {
		service string
		line    int
	}
	vipPort := map[netip.AddrPort]use{}
	vipUse := map[netip.Addr]use{}
	for i, s := range c.cfg.Services {
		m := c.svc[i]
		if !m.vipsOK {
			continue
		}
		for j, v := range s.VIPs {
			l := c.line(m.path.add("vips", j))
			if _, ok := vipUse[v]; !ok {
				vipUse[v] = use{s.Name, l}
			}
			if !m.portOK {
				continue
			}
			ap := netip.AddrPortFrom(v, s.Port)
			if first, dup := vipPort[ap]; dup {
				c.errorf(l, "%s: VIP %s port %d is already used by service %s (line %d); give this service another VIP or port", c.describe(m.path), v, s.Port, first.service, first.line)
				continue
			}
			vipPort[ap] = use{s.Name, l}
		}
	}
	for i, isl := range c.cfg.Islands {
		for j, n := range isl.Nodes {
			nm := c.isl[i].nodes[j]
			if !nm.addrsOK {
				continue
			}
			for k, a := range n.Addresses {
				if u, ok := vipUse[a]; ok {
					c.errorf(c.line(nm.path.add("addresses", k)), "%s: address %s is a VIP of service %s (line %d); give the node its own address", c.describe(nm.path), a, u.service, u.line)
				}
			}
		}
	}
	if !c.sourcesOK {
		return
	}
	for _, src := range []struct {
		key  string
		addr netip.Addr
	}{{"source_v4", c.cfg.Dataplane.SourceV4}, {"source_v6", c.cfg.Dataplane.SourceV6}} {
		if !src.addr.IsValid() {
			continue
		}
		if u, ok := vipUse[src.addr]; ok {
			c.errorf(c.line(path{"dataplane", src.key}), "dataplane.%s: %s is a VIP of service %s (line %d); the tunnel source must be the LB's own address, not a VIP", src.key, src.addr, u.service, u.line)
		}
		if n, _ := c.nodeWithAddr(src.addr); n != "" {
			c.errorf(c.line(path{"dataplane", src.key}), "dataplane.%s: %s is an address of node %s; the tunnel source must be the LB's own address", src.key, src.addr, n)
		}
	}
}

func (c *checker) nodeWithAddr(a netip.Addr) (string, int) {
	for i, isl := range c.cfg.Islands {
		for j, n := range isl.Nodes {
			if c.isl[i].nodes[j].addrsOK && slices.Contains(n.Addresses, a) {
				return n.Name, n.Line
			}
		}
	}
	return "", 0
}

// ringSize checks that the ring can hold every node of the largest island.
func (c *checker) ringSize() {
	if !c.ringOK || !c.islandsOK {
		return
	}
	largest, name := 0, ""
	for _, isl := range c.cfg.Islands {
		if len(isl.Nodes) > largest {
			largest, name = len(isl.Nodes), isl.Name
		}
	}
	if uint32(largest) >= c.cfg.Dataplane.RingSize {
		want := nextPrime(uint32(largest) * 3000)
		if want > maxRingSize {
			want = maxRingSize
		}
		c.errorf(c.line(path{"dataplane", "ring_size"}), "dataplane.ring_size: %d%s is not larger than the %d nodes of island %s; use a larger prime, such as %d", c.cfg.Dataplane.RingSize, defaulted(c.keyLine(path{"dataplane", "ring_size"}) == 0), largest, name, want)
	}
}

// tunnelSources checks that ipip has an outer source address for every
// node it reaches. As the reconciler does, a node is reached at its address
// of the VIP's family, else at its other one.
func (c *checker) tunnelSources() {
	if !c.modeOK || c.cfg.Dataplane.Mode != ModeXDP || !c.sourcesOK || !c.islandsOK {
		return
	}
	src := map[int]netip.Addr{4: c.cfg.Dataplane.SourceV4, 6: c.cfg.Dataplane.SourceV6}
	for i, s := range c.cfg.Services {
		m := c.svc[i]
		if !m.fwdOK || s.Forwarding != ForwardIPIP || !m.routingOK || !m.vipsOK {
			continue
		}
		var islands []int
		switch {
		case s.Routing == RouteIsland && m.islandOK:
			islands = []int{c.islandIndex(s.Island)}
		case s.Routing == RouteLogin:
			for k := range c.cfg.Islands {
				islands = append(islands, k)
			}
		}
		missing := map[int][]string{} // outer family -> "node (address)"
		for _, k := range islands {
			for j, n := range c.cfg.Islands[k].Nodes {
				if !c.isl[k].nodes[j].addrsOK {
					continue
				}
				for _, fam := range []int{4, 6} {
					if !slices.ContainsFunc(s.VIPs, func(v netip.Addr) bool { return familyOf(v) == fam }) {
						continue
					}
					a, ok := n.Address(fam)
					if !ok {
						if a, ok = n.Address(10 - fam); !ok {
							continue
						}
					}
					outer := familyOf(a)
					d := fmt.Sprintf("%s (%s)", n.Name, a)
					if !src[outer].IsValid() && !slices.Contains(missing[outer], d) {
						missing[outer] = append(missing[outer], d)
					}
				}
			}
		}
		for _, fam := range []int{4, 6} {
			if len(missing[fam]) == 0 {
				continue
			}
			word := "node"
			if len(missing[fam]) > 1 {
				word = "nodes"
			}
			c.errorf(s.Line, "%s: ipip reaches %s %s over IPv%d, but dataplane.source_v%d is not set; set it to this LB's own IPv%d address (the tunnel's outer source)", c.describe(m.path), word, strings.Join(missing[fam], ", "), fam, fam, fam)
		}
	}
}

// parseAddr parses an address for a VIP, a node or a source; problem says
// what is wrong with it.
func parseAddr(s string) (netip.Addr, string) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return a, "is not an IP address"
	case a.Zone() != "":
		return a, "has a zone (%" + a.Zone() + "), which atoll cannot use"
	case a.Is4In6():
		return a, "is an IPv4-mapped IPv6 address (write it as plain IPv4, " + a.Unmap().String() + ")"
	case a.IsUnspecified():
		return a, "is the unspecified address"
	case a.IsMulticast():
		return a, "is a multicast address"
	case a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return a, "is the broadcast address"
	}
	return a, ""
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// ifNameProblem checks an interface name as the kernel does
// (dev_valid_name).
func ifNameProblem(name string) string {
	switch {
	case name == "":
		return "is empty"
	case len(name) > 15:
		return "is longer than 15 characters"
	case name == "." || name == "..":
		return "is not an interface name"
	case strings.ContainsAny(name, "/:") || strings.IndexFunc(name, isSpace) >= 0:
		return "contains '/', ':' or a space"
	}
	return ""
}

func isSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f'
}

// listenProblem checks a host:port to listen on.
func listenProblem(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Count(s, ":") > 1 && !strings.HasPrefix(s, "[") {
			return "is not host:port: an IPv6 address needs brackets, such as [::1]:9742"
		}
		return "is not host:port"
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "has no valid port (1 to 65535)"
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && !reHostName.MatchString(host) {
			return "has an invalid host"
		}
	}
	return ""
}

var reHostName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$`)

// caFileProblem checks that a CA bundle can be read and holds a
// certificate.
func caFileProblem(name string) string {
	if !pathpkg.IsAbs(name) {
		return fmt.Sprintf("%q is not an absolute path", name)
	}
	fi, err := os.Stat(name)
	if err != nil {
		return err.Error()
	}
	if !fi.Mode().IsRegular() {
		return fmt.Sprintf("%s is not a regular file", name)
	}
	f, err := os.Open(name)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCAFileSize))
	if err != nil {
		return err.Error()
	}
	certs := 0
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Sprintf("%s holds a certificate that cannot be parsed (%v)", name, err)
		}
		certs++
	}
	if certs == 0 {
		return fmt.Sprintf("%s holds no PEM certificate", name)
	}
	return ""
}

func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for d := uint32(2); uint64(d)*uint64(d) <= uint64(n); d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// nextPrime returns the smallest prime >= n, at most maxRingSize.
func nextPrime(n uint32) uint32 {
	for ; n < maxRingSize; n++ {
		if isPrime(n) {
			return n
		}
	}
	return maxRingSize
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
