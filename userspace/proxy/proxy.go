// Package proxy is atoll's login proxy core: the flows the data plane
// cannot place (the island is known only after login) arrive here on the
// front-door VIP. A protocol handler (proxy/imap, proxy/pop3) talks to the
// client until it has the login; the core finds the user's island in the
// directory, picks a healthy node of it (a consistent hash of the user
// name, so one user keeps landing on one node), dials it (passing the
// client's address by PROXY v2 when the island wants it), and once the
// handler has replayed the login there, copies bytes both ways (splice on
// plain TCP) until either side closes.
//
// The core also owns what the handlers share: limits, per-source
// connection counts, the failed-login throttle and the metrics hooks.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/atoll-lb/atoll/userspace/directory"
)

// Errors of Route, which handlers turn into protocol answers
// (IMAP `NO [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`, or the node-style
// failure for an unknown user).
var (
	// ErrUnknownUser: the directory does not know the user.
	ErrUnknownUser = directory.ErrUnknownUser
	// ErrUnavailable: the directory cannot answer and nothing is cached.
	ErrUnavailable = directory.ErrUnavailable
	// ErrNoNode: the user's island has no healthy node.
	ErrNoNode = errors.New("proxy: no healthy node in the island")
	// ErrBadName: the user name cannot be a user (NUL, CR, LF, too long…).
	ErrBadName = errors.New("proxy: invalid user name")
)

// How the client's address reaches the node (per island).
const (
	ClientAddrNone  = "none"
	ClientAddrProxy = "proxy_protocol" // HAProxy PROXY v2 header first
	ClientAddrID    = "imap_id"        // IMAP ID x-originating-ip / -port
)

// TLS toward the node (per island).
const (
	NodeTLSNone     = "none"
	NodeTLSStartTLS = "starttls"
	NodeTLSImplicit = "implicit"
)

// Limits bound what a client may do before login.
type Limits struct {
	PreLoginTimeout time.Duration // idle time allowed before login (default 60s)
	IdleTimeout     time.Duration // after login; 0 = none (the node's own applies)
	MaxLine         int           // longest command line (default 8192)
	MaxLiteral      int           // longest IMAP literal before login (default 8192)
	MaxBadCommands  int           // BAD answers before the connection is closed (default 10)
	MaxLoginTries   int           // failed logins on one connection before it is closed (default 3)
	// ParkAfter: a relayed direction silent this long is parked (its
	// goroutine ends; the socket waits in a shared epoll set) — default
	// 2s, negative never. Only plain TCP parks.
	ParkAfter time.Duration
}

func (l Limits) withDefaults() Limits {
	if l.PreLoginTimeout <= 0 {
		l.PreLoginTimeout = 60 * time.Second
	}
	if l.ParkAfter == 0 {
		l.ParkAfter = 2 * time.Second
	}
	if l.MaxLine <= 0 {
		l.MaxLine = 8192
	}
	if l.MaxLiteral <= 0 {
		l.MaxLiteral = 8192
	}
	if l.MaxBadCommands <= 0 {
		l.MaxBadCommands = 10
	}
	if l.MaxLoginTries <= 0 {
		l.MaxLoginTries = 3
	}
	return l
}

// Node is a candidate node for a login.
type Node struct {
	Name string
	Addr netip.AddrPort // the node's own address and its port for the protocol
}

// Route is where a login goes.
type Route struct {
	User       string // the name looked up (normalised)
	NodeUser   string // the name to log in to the node with
	Island     string
	Nodes      []Node // healthy nodes, preferred first: try them in order
	ClientAddr string // ClientAddr*
	NodeTLS    string // NodeTLS*
	TLSConfig  *tls.Config
	Stale      bool // the island came from a stale cache entry
}

// Session is one accepted client connection handed to a protocol handler.
type Session struct {
	// Conn is the client connection; a handler may replace it with a
	// *tls.Conn after STARTTLS/STLS (the server cuts the session by
	// closing the accepted socket underneath, so that is safe).
	Conn net.Conn
	// Client is the client's address and port; Local the VIP:port.
	Client, Local netip.AddrPort
	// TLS: the connection is already TLS (an implicit-TLS listener).
	TLS bool
	// Service is the config name of the service (e.g. "imap").
	Service string
	Core    *Core
	Log     *slog.Logger

	handoff *handoff
}

// Handler serves one client connection of its protocol.
type Handler interface {
	Serve(ctx context.Context, s *Session)
}
