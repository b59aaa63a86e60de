// Package config reads atoll's one YAML configuration file: the data plane,
// health checks, metrics, the API socket, the login proxy and the directory
// it finds users' islands in, the islands and their nodes, and the services.
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

// How an island's nodes learn the client's address from the proxy
// (islands[].proxy.client_address).
const (
	// ClientAddrNone tells the node nothing: it sees the proxy's address.
	ClientAddrNone = "none"
	// ClientAddrProxy sends a PROXY protocol v2 header first.
	ClientAddrProxy = "proxy_protocol"
	// ClientAddrID sends the IMAP ID x-originating-ip and -port fields.
	ClientAddrID = "imap_id"
)

// The name the proxy logs in to a node with (directory.names.node_login).
const (
	// NodeLoginKeep logs in with the whole (normalised) name.
	NodeLoginKeep = "keep"
	// NodeLoginStrip logs in with the part before the '@'.
	NodeLoginStrip = "strip"
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
	// Proxy is the proxy section; it has its defaults when absent.
	Proxy Proxy
	// Affinity is the affinity section (client prefixes straight to an
	// island through the front door); defaults when absent.
	Affinity Affinity
	// Directory is the directory section (see HasDirectory); its Names
	// have their defaults when absent.
	Directory Directory
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

// Proxy is the login proxy: it serves the services with routing login
// (imap, imaps, pop3, pop3s), finds each user's island in the directory and
// relays the session to a node of that island.
type Proxy struct {
	// Hostname is the name in greetings: the machine's host name when not
	// written ("atoll" if it cannot be had).
	Hostname string
	// TLS is the certificate offered to clients.
	TLS ProxyTLS
	// RequireTLS refuses logins before TLS (IMAP LOGINDISABLED); it is
	// only true with TLS set.
	RequireTLS bool
	// PreLoginTimeout is how long a client may be idle before it logs in
	// (1s to 1h).
	PreLoginTimeout time.Duration
	// IdleTimeout closes a session idle this long after login; 0: never
	// (the node's own timeouts apply). Otherwise at least 30m.
	IdleTimeout time.Duration
	// MaxLine is the longest command line before login, in bytes.
	MaxLine int
	// MaxLiteral is the longest IMAP literal before login, in bytes.
	MaxLiteral int
	// MaxBadCommands is the number of bad commands that close a connection.
	MaxBadCommands int
	// MaxLoginTries is the number of failed logins that close a connection.
	MaxLoginTries int
	// MaxConnectionsPerSource caps the connections from one client
	// address; -1: no cap.
	MaxConnectionsPerSource int
	// LMTP are the LMTP router's limits.
	LMTP ProxyLMTP
	// AuthThrottle delays the answers to clients that fail to log in.
	AuthThrottle AuthThrottle
	// SourceAddresses are the local addresses the proxy dials nodes from,
	// in turn; empty: the kernel picks one.
	SourceAddresses []netip.Addr
	// DialTimeout bounds the connection to a node.
	DialTimeout time.Duration
	// Line is the line of the proxy key (0: the section is absent).
	Line int
}

// Affinity says which client prefixes go straight to an island through
// the front door (routing login) without the proxy.
type Affinity struct {
	// Static prefixes from the file: webmail servers, corporate NAT
	// ranges, MTAs of a hosted domain. The most specific prefix wins.
	Static []AffinityPrefix
	// Learn lets the proxy install a client address whose logins all land
	// in one island.
	Learn AffinityLearn
	Line  int
}

// AffinityPrefix is one static client prefix and its island.
type AffinityPrefix struct {
	Prefix netip.Prefix
	Island string
	Line   int
}

// AffinityLearn tunes learned affinity (off by default). Behind NAT many
// users share one address: one user of another island there is a
// conflict, which removes the entry and bars the address from learning
// for Bar — so a shared address may go back and forth between the proxy
// and an island, but never sends a user to the wrong island for longer
// than one conflicting login.
type AffinityLearn struct {
	Enabled bool
	// Logins: consecutive logins from one address into one island before
	// the address is learned.
	Logins int
	// TTL of a learned entry; Bar: how long an address with a conflict is
	// not learned again.
	TTL, Bar time.Duration
	// MaxEntries bounds the learned entries.
	MaxEntries int
	// VerifyOneIn: one new flow in this many from a learned address still
	// goes through the proxy, so a login into another island is noticed
	// (a power of two; 0: never — then a conflict is never seen).
	VerifyOneIn int
}

// ProxyLMTP are the LMTP router's limits (login services with protocol
// lmtp).
type ProxyLMTP struct {
	// MaxMessageSize is the largest message accepted, in bytes (SIZE).
	MaxMessageSize int
	// MaxRecipients is the most recipients of one transaction.
	MaxRecipients int
}

// ProxyTLS is the proxy's certificate for clients: both files set, or
// neither (no TLS toward clients).
type ProxyTLS struct {
	// CertFile is the PEM certificate (chain); "" when there is no TLS.
	CertFile string
	// KeyFile is the PEM private key of CertFile; "" when there is no TLS.
	KeyFile string
}

// AuthThrottle is the failed-login throttle, per client address: after
// Threshold failures within Window, each answer to a failed login waits
// BaseDelay, doubled on every further failure up to MaxDelay.
type AuthThrottle struct {
	// Threshold is the number of failures before delays start; -1 turns
	// the throttle off.
	Threshold int
	// Window is how long a failure counts.
	Window time.Duration
	// BaseDelay is the first delay.
	BaseDelay time.Duration
	// MaxDelay is the longest delay (at least BaseDelay).
	MaxDelay time.Duration
}

// Directory is where the proxy finds users' islands: a static map or LDAP.
type Directory struct {
	// Static is the absolute path of the static map, or "".
	Static string
	// LDAP is the LDAP directory, or nil.
	LDAP *LDAP
	// Names are the rules user names are normalised with; they have their
	// defaults even when the section is absent.
	Names Names
	// Line is the line of the directory key (0: the section is absent).
	Line int
}

// LDAP is an LDAP directory: a user's island is the value of Attribute in
// the entry Filter finds under BaseDN.
type LDAP struct {
	// URLs are the servers, ldap:// or ldaps://, tried in turn (1 to 8).
	URLs []string
	// StartTLS upgrades ldap:// connections with StartTLS.
	StartTLS bool
	// CAFile is a PEM bundle to verify the servers with; "" uses the
	// system roots.
	CAFile string
	// InsecureSkipVerify skips the verification of the servers'
	// certificates.
	InsecureSkipVerify bool
	// BindDN is the DN to bind as; "" binds anonymously.
	BindDN string
	// PasswordFile holds the password of BindDN ("" without BindDN).
	PasswordFile string
	// BaseDN is where users are searched.
	BaseDN string
	// Filter finds a user's entry; %u is the whole name, %n the part
	// before '@', %d the domain, %% a '%'.
	Filter string
	// Attribute holds the island's name in the user's entry.
	Attribute string
	// Timeout bounds one request to a server.
	Timeout time.Duration
	// PoolSize is the number of connections kept per server.
	PoolSize int
	// PositiveTTL is how long a found island is cached; 0: not at all.
	PositiveTTL time.Duration
	// NegativeTTL is how long an unknown user is cached; 0: not at all.
	NegativeTTL time.Duration
	// StaleTTL is how long past its TTL an entry may still be served
	// while no server answers; 0: never.
	StaleTTL time.Duration
}

// Names are the rules user names go through before the lookup.
type Names struct {
	// Lowercase lowers the name first (default true).
	Lowercase bool
	// DefaultDomain is appended, after an '@', to names without one; ""
	// appends nothing.
	DefaultDomain string
	// NodeLogin is NodeLoginKeep or NodeLoginStrip.
	NodeLogin string
}

// Island is a group of nodes that hold the same mailboxes.
type Island struct {
	// Name is unique among islands.
	Name string
	// Proxy is how the proxy reaches the island's nodes.
	Proxy IslandProxy
	// Nodes are the island's nodes in file order (at least one).
	Nodes []Node
	// Line is the line of the island's entry.
	Line int
}

// IslandProxy is how the proxy talks to an island's nodes.
type IslandProxy struct {
	// ClientAddress is how a node learns the client's address: one of the
	// ClientAddr* constants. With ClientAddrProxy the node expects a PROXY
	// v2 header on every connection, so the proxy's health checks of the
	// island's nodes send a PROXY v2 LOCAL header first.
	ClientAddress string
	// TLS is the TLS toward the nodes: TLSNone, TLSStartTLS or
	// TLSImplicit, verified with health.tls's ca_file and
	// insecure_skip_verify.
	TLS string
}

// Node is one mail server.
type Node struct {
	// Name is unique across all islands.
	Name string
	// Addresses are one or two addresses, at most one per family.
	Addresses []netip.Addr
	// Weight is the node's share in Maglev; 0 drains it.
	Weight uint32
	// Ports maps a protocol name to the port the proxy uses to reach the
	// node for that protocol; the health checks made at the node's own
	// address use it too. Without an entry, the service's port is used.
	// The DSR services always use the VIP's port (the data plane keeps
	// it). Never nil.
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

// HasDirectory says whether a directory is configured (static or LDAP).
func (c *Config) HasDirectory() bool {
	return c.Directory.Static != "" || c.Directory.LDAP != nil
}

// LoginServices returns the services with routing login, in file order.
func (c *Config) LoginServices() []*Service {
	var out []*Service
	for i := range c.Services {
		if c.Services[i].Routing == RouteLogin {
			out = append(out, &c.Services[i])
		}
	}
	return out
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
