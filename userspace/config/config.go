// Package config reads atoll's one YAML configuration file: the data plane,
// health checks, metrics, the API socket, the islands and their nodes, and
// the services.
//
// A file is decoded strictly (unknown keys and wrong types are errors) and
// validated as a whole before anything uses it. A bad file is refused with
// every problem listed, one per line, as "FILE:LINE: what is wrong and what
// to change", so `atoll check`, startup and reload (where a bad file changes
// nothing) all report the same thing. Every default is filled in by Parse:
// the rest of atoll never has to know which keys were written.
package config

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"
)

// Data plane modes (dataplane.mode).
const (
	// ModeXDP attaches the XDP balancer to dataplane.interfaces.
	ModeXDP = "xdp"
	// ModeNone runs without a data plane (proxy only).
	ModeNone = "none"
)

// Forwarding modes (services[].forwarding).
const (
	// ForwardL2DSR rewrites the destination MAC: nodes are on-link.
	ForwardL2DSR = "l2dsr"
	// ForwardIPIP wraps packets in an outer IPv4/IPv6 header to the node.
	ForwardIPIP = "ipip"
)

// Routing modes (services[].routing).
const (
	// RouteIsland sends the service's flows to the nodes of one island.
	RouteIsland = "island"
	// RouteLogin is the front door: the island is known after login.
	RouteLogin = "login"
)

// Protocols (services[].protocol and the keys of nodes[].ports).
const (
	// ProtoIMAP is IMAP (default port 143).
	ProtoIMAP = "imap"
	// ProtoIMAPS is IMAP over implicit TLS (default port 993).
	ProtoIMAPS = "imaps"
	// ProtoPOP3 is POP3 (default port 110).
	ProtoPOP3 = "pop3"
	// ProtoPOP3S is POP3 over implicit TLS (default port 995).
	ProtoPOP3S = "pop3s"
	// ProtoLMTP is LMTP (default port 24).
	ProtoLMTP = "lmtp"
	// ProtoTCP is any other TCP service; its port must be given.
	ProtoTCP = "tcp"
)

// Health check kinds (services[].health.check).
const (
	// CheckTCP only opens a TCP connection.
	CheckTCP = "tcp"
	// CheckIMAP expects an IMAP greeting.
	CheckIMAP = "imap"
	// CheckPOP3 expects a POP3 greeting.
	CheckPOP3 = "pop3"
	// CheckLMTP expects an LMTP greeting.
	CheckLMTP = "lmtp"
)

// TLS modes of a health check (services[].health.tls).
const (
	// TLSNone checks in plain text.
	TLSNone = "none"
	// TLSImplicit starts TLS at once (imaps, pop3s).
	TLSImplicit = "implicit"
	// TLSStartTLS upgrades with STARTTLS/STLS after the greeting.
	TLSStartTLS = "starttls"
)

// Config is a whole, validated configuration file with every default
// filled in.
type Config struct {
	// File is the file name given to Load or Parse.
	File string
	// Dataplane is the dataplane section.
	Dataplane Dataplane
	// Health is the health section.
	Health Health
	// Metrics is the metrics section.
	Metrics Metrics
	// API is the api section.
	API API
	// Islands are the islands in file order.
	Islands []Island
	// Services are the services in file order.
	Services []Service
}

// Dataplane is how the XDP balancer is loaded and attached.
type Dataplane struct {
	// Mode is ModeXDP or ModeNone.
	Mode string
	// Interfaces are the interfaces XDP is attached to (mode xdp).
	Interfaces []string
	// PinPath is the bpffs directory the maps are pinned under.
	PinPath string
	// ConntrackSize is the number of flows per family in conntrack.
	ConntrackSize uint32
	// RingSize is the (prime) Maglev ring size.
	RingSize uint32
	// HashSeed seeds the flow hash; LB hosts that back each other up must
	// share it.
	HashSeed uint32
	// SourceV4 is the LB's own IPv4 address, the outer source of ipip
	// toward IPv4 nodes; invalid (the zero Addr) when not set.
	SourceV4 netip.Addr
	// SourceV6 is the same for IPv6 nodes.
	SourceV6 netip.Addr
	// Line is the line of the dataplane key (0: the section is absent).
	Line int
}

// Health is how nodes are health-checked.
type Health struct {
	// Interval is the time between two checks of one node and service.
	Interval time.Duration
	// Timeout bounds one check; it is shorter than Interval.
	Timeout time.Duration
	// Jitter is the most a check is moved at random, below Interval.
	Jitter time.Duration
	// Rise is the number of passed checks that make a node up.
	Rise int
	// Fall is the number of failed checks that make a node down.
	Fall int
	// Concurrency is the most checks in flight at once.
	Concurrency int
	// TLS is how TLS checks verify nodes.
	TLS HealthTLS
	// Line is the line of the health key (0: the section is absent).
	Line int
}

// HealthTLS is how TLS health checks verify the nodes' certificates.
type HealthTLS struct {
	// CAFile is a PEM bundle to verify nodes with; "" uses the system roots.
	CAFile string
	// InsecureSkipVerify skips certificate verification.
	InsecureSkipVerify bool
	// ServerName is the SNI and verification name; "" uses the node's name.
	ServerName string
}

// Metrics is the Prometheus endpoint.
type Metrics struct {
	// Listen is the host:port to serve metrics on; "" disables them.
	Listen string
	// Line is the line of the metrics key (0: the section is absent).
	Line int
}

// API is the local control socket.
type API struct {
	// Socket is the absolute path of the unix socket.
	Socket string
	// Line is the line of the api key (0: the section is absent).
	Line int
}

// Island is a group of nodes that hold the same mailboxes.
type Island struct {
	// Name is unique among islands.
	Name string
	// Nodes are the island's nodes in file order (at least one).
	Nodes []Node
	// Line is the line of the island's entry.
	Line int
}

// Node is one mail server.
type Node struct {
	// Name is unique across all islands.
	Name string
	// Addresses are one or two addresses, at most one per family.
	Addresses []netip.Addr
	// Weight is the node's share in Maglev; 0 drains it.
	Weight uint32
	// Ports maps a protocol name to the port used to reach the node's own
	// address for that protocol (health checks, the proxy); never nil.
	Ports map[string]uint16
	// Line is the line of the node's entry.
	Line int
}

// Service is one VIP service: one or two VIPs (one per family) and a port.
type Service struct {
	// Name is unique among services.
	Name string
	// VIPs are one or two addresses, at most one per family.
	VIPs []netip.Addr
	// Port is the VIP's TCP port.
	Port uint16
	// Protocol is one of the Proto* constants.
	Protocol string
	// Forwarding is ForwardL2DSR or ForwardIPIP.
	Forwarding string
	// Routing is RouteIsland or RouteLogin.
	Routing string
	// Island names the service's island (RouteIsland only, else "").
	Island string
	// Health is how the service's nodes are checked.
	Health ServiceHealth
	// Line is the line of the service's entry.
	Line int
}

// ServiceHealth is a service's health check.
type ServiceHealth struct {
	// Check is one of the Check* constants.
	Check string
	// TLS is one of the TLS* constants.
	TLS string
	// ThroughVIP sends the check to the VIP (steered to the node by the
	// data plane) rather than to the node's own address. It defaults to
	// true for routing island with mode xdp, else false.
	ThroughVIP bool
}

// Error is one problem in a configuration file.
type Error struct {
	// File is the file name given to Load or Parse.
	File string
	// Line is the 1-based line the problem is on.
	Line int
	// Msg says what is wrong and what to change.
	Msg string
}

// Error returns "FILE:LINE: MSG".
func (e Error) Error() string {
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// Errors is every problem found in a file, sorted by line.
type Errors []Error

// Error returns the problems one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Load reads the file at path and parses it (see Parse). An unreadable
// file is reported with the error of the read.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse decodes and validates a configuration. file is only used in
// messages. On any problem it returns nil and an Errors listing them all.
func Parse(file string, data []byte) (*Config, error) {
	p := newParser(file, data)
	cfg := p.run()
	if len(p.errs) > 0 {
		return nil, p.sortedErrors()
	}
	return cfg, nil
}

// IslandByName returns the island called name, or nil.
func (c *Config) IslandByName(name string) *Island {
	for i := range c.Islands {
		if c.Islands[i].Name == name {
			return &c.Islands[i]
		}
	}
	return nil
}

// NodeByName returns the node called name and its island, or nil, nil.
func (c *Config) NodeByName(name string) (*Node, *Island) {
	for i := range c.Islands {
		isl := &c.Islands[i]
		for j := range isl.Nodes {
			if isl.Nodes[j].Name == name {
				return &isl.Nodes[j], isl
			}
		}
	}
	return nil, nil
}

// Address returns the node's address of a family (4 or 6).
func (n *Node) Address(family int) (netip.Addr, bool) {
	for _, a := range n.Addresses {
		if (family == 4 && a.Is4()) || (family == 6 && a.Is6()) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// NodePort is the port the service reaches node n's own address on: the
// node's port for the service's protocol if it has one, else the service's
// port. (Traffic through the data plane always keeps the VIP's port.)
func (s *Service) NodePort(n *Node) uint16 {
	if p, ok := n.Ports[s.Protocol]; ok {
		return p
	}
	return s.Port
}
