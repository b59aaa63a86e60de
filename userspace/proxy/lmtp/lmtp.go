// Package lmtp is atoll's LMTP island router (RFC 2033): one front-door
// LMTP VIP for the MTAs, which deliver every message there instead of
// looking up each recipient's island themselves. A Handler speaks LMTP to
// the MTA, routes each recipient with the core (name rules, directory,
// the island's healthy nodes ordered for that address), reads the whole
// message, then runs ONE LMTP transaction per island involved, on a node
// of that island, all islands at once, and answers the MTA one reply per
// accepted recipient in the order of its RCPT commands, each with the
// node's own code, enhanced code and text. Nothing is acknowledged before
// a node acknowledged it: a 250 for a recipient means its node said 250.
//
// # Client side (the MTA)
//
// Greeting "220 <hostname> LMTP atoll ready". LHLO offers PIPELINING and
// ENHANCEDSTATUSCODES (RFC 2033 requires both), SIZE <MaxMessageSize>,
// 8BITMIME and SMTPUTF8 only when every node seen in the last day (of
// every island) offers them — node capabilities are learned from their
// LHLO answers as messages are delivered, so until a node was seen only
// PIPELINING ENHANCEDSTATUSCODES SIZE are offered — and STARTTLS when the
// core has a certificate. MAIL takes SIZE= (checked against the maximum,
// 552 5.3.4), BODY=7BIT/8BITMIME and SMTPUTF8 (each only when offered);
// RCPT takes no parameters. RSET, NOOP, QUIT, VRFY (252), HELP. No
// CHUNKING/BDAT, DSN or AUTH. The core's limits apply: MaxLine to command
// lines, PreLoginTimeout as the idle timeout (per command, and between
// reads within DATA), MaxBadCommands to unrecognised or malformed
// commands; RequireTLS refuses MAIL before STARTTLS.
//
// Recipient answers: unknown user or invalid name 550 5.1.1; directory
// unavailable 451 4.3.0 (bounded by the directory's own timeout); no
// healthy node in the island 451 4.4.1; too many recipients 452 4.5.3;
// else 250 2.1.5. An unknown recipient is answered after the core's
// 100–300 ms "unknown user" padding (the same as for logins).
//
// The message is spooled in memory up to 4 MiB and in an unlinked
// temporary file in $TMPDIR beyond (nothing stays on disk if the process
// dies), bounded by MaxMessageSize: past it the rest is read and thrown
// away and every recipient gets 552 5.3.4. Message bytes are passed on
// unchanged (no line-length limit inside DATA).
//
// # Node side
//
// For each island: the nodes of the Route of its first recipient, in
// order. The core dials (PROXY v2 and implicit TLS as the island says);
// then greeting, LHLO, STARTTLS when the island says so, and XCLIENT
// ADDR=<client> [PORT=] [NAME=[UNAVAILABLE]] [HELO=<client's LHLO name>]
// with the attributes the node lists, when it offers XCLIENT — Dovecot's
// LMTP does, for clients in its login_trusted_networks, and then records
// the MTA's address and name (in its log and its Received: header) instead
// of atoll's. Then MAIL FROM with what the node supports (BODY=8BITMIME,
// SIZE=, SMTPUTF8), the island's recipients (each address once), DATA and
// the node's per-recipient replies. A node that cannot be reached or
// fails (connection, timeout, garbage, 4xx or 421) before it accepted any
// recipient is skipped for the island's next node; when none is left the
// island's recipients get 451 4.4.1. A node that fails after accepting a
// recipient is not retried elsewhere (a message that makes nodes crash
// must not take the island down one node after the other): its accepted
// recipients get 451 4.4.2, the others keep their answers. Every step
// with a node (each reply, the message transfer, the final replies) is
// bounded by Options.NodeTimeout.
//
// # Why the client side is not go-smtp's Server
//
// go-smtp v0.25.1 serves the node side (its Client sends MAIL with the
// node's parameters, RCPT, DATA and reads LMTP's per-recipient replies).
// Its Server could not give the behaviour above: its LHLO always lists
// 8BITMIME and CHUNKING; its greeting ("<domain> LMTP Service Ready") and
// its MAIL and RCPT success replies ("250 2.0.0 I'll make sure <x> gets
// this") are fixed; it prefixes every per-recipient DATA reply with
// "<rcpt> ", so a node's text cannot be relayed unchanged; its error
// limit is a constant 3 (no MaxBadCommands); its line limit also applies
// inside DATA, where an overlong line loses data and desynchronises the
// session; the DATA read deadline is the one set for the DATA command
// (a total, not an idle timeout); HELP is not implemented and sequence
// errors are 502 instead of 503. The command, path and parameter parsers,
// the DATA reader and the node reply reader are therefore ours, with
// fuzz targets.
package lmtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/atoll-lb/atoll/userspace/proxy"
)

// Defaults of Options.
const (
	DefaultMaxMessageSize = 50 << 20
	DefaultMaxRecipients  = 100
	// DefaultCommandTimeout bounds each reply of a node (greeting, LHLO,
	// STARTTLS, XCLIENT, MAIL, RCPT, DATA's 354) when NodeTimeout is 0.
	DefaultCommandTimeout = 30 * time.Second
	// DefaultDataTimeout bounds the message transfer to a node and its
	// per-recipient replies when NodeTimeout is 0 (RFC 5321 suggests 10
	// minutes for the final reply; an LMTP node answers once it stored
	// the message, in milliseconds when it is well).
	DefaultDataTimeout = 5 * time.Minute
)

// Options configure a Handler.
type Options struct {
	// MaxMessageSize is the largest message accepted, in bytes (LHLO's
	// SIZE); larger ones get 552 5.3.4. Default DefaultMaxMessageSize.
	MaxMessageSize int64
	// MaxRecipients is the most recipients of one transaction; more get
	// 452 4.5.3. Default DefaultMaxRecipients.
	MaxRecipients int
	// NodeTimeout, when set, bounds every step with a node (each reply,
	// the message transfer, the replies after it); 0 means
	// DefaultCommandTimeout for each reply and DefaultDataTimeout for the
	// transfer and the replies after it. Connecting is bounded by the
	// core's dial timeout.
	NodeTimeout time.Duration
}

// Observer is what the metrics package may implement, besides
// proxy.Observer, to count deliveries; the handler checks core.Observer()
// for it. Recipient lookups are counted through the core as logins of
// protocol "lmtp" (ok, unknown_user, bad_name, unavailable, no_node,
// error). Methods must be cheap.
type Observer interface {
	// Delivery counts one recipient's outcome on island: one of the
	// Result* constants.
	Delivery(island, result string)
	// Recipients is the number of accepted recipients of a transaction
	// (at the end of DATA).
	Recipients(n int)
	// Bytes is the size of a message received (before any refusal).
	Bytes(n int64)
}

// Delivery results (Observer.Delivery).
const (
	ResultDelivered  = "delivered"   // the node said 2xx
	ResultDeferred   = "deferred"    // the node said 4xx
	ResultRejected   = "rejected"    // the node said 5xx
	ResultNodeFailed = "node_failed" // no node answered: 451 4.4.x from atoll
	ResultTooBig     = "too_big"     // over MaxMessageSize: 552 from atoll
	ResultLocalError = "local_error" // the message could not be spooled
)

// Handler serves LMTP clients: one proxy.Session (one connection) per
// Serve call, each in its own goroutine (the core's Serve). It is safe
// for concurrent use; what it learns about nodes' capabilities is shared
// by its sessions and kept across SetOptions (atoll run keeps one Handler
// for its LMTP listeners across reloads).
type Handler struct {
	opts atomic.Pointer[Options]
	caps capBook
}

var _ proxy.Handler = (*Handler)(nil)

// NewHandler returns a Handler; zero options take their defaults.
func NewHandler(o Options) *Handler {
	h := &Handler{}
	h.SetOptions(o)
	return h
}

// SetOptions replaces the options (a config reload): sessions that start
// afterwards use them, sessions in progress keep the ones they started
// with (a client is never offered one SIZE and held to another). Zero
// options take their defaults.
func (h *Handler) SetOptions(o Options) {
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.MaxRecipients <= 0 {
		o.MaxRecipients = DefaultMaxRecipients
	}
	h.opts.Store(&o)
}

// Options returns the options in force, defaults filled in.
func (h *Handler) Options() Options { return *h.opts.Load() }

func (o Options) commandTimeout() time.Duration {
	if o.NodeTimeout > 0 {
		return o.NodeTimeout
	}
	return DefaultCommandTimeout
}

func (o Options) dataTimeout() time.Duration {
	if o.NodeTimeout > 0 {
		return o.NodeTimeout
	}
	return DefaultDataTimeout
}

// session is one client connection.
type session struct {
	h    *Handler
	opts Options // the handler's options when the session started
	s    *proxy.Session
	core *proxy.Core
	lim  proxy.Limits
	log  *slog.Logger
	ctx  context.Context
	obs  Observer // nil when the core's observer does not implement it

	// conn is s.Conn or the TLS connection over it after STARTTLS; s.Conn
	// itself is never replaced (the core closes it from another
	// goroutine when the server stops).
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	werr error
	tls  bool

	helo string     // the client's LHLO name; "" before LHLO
	adv  advertised // what the last LHLO offered
	bad  int        // unrecognised or malformed commands so far
	tx   *transaction

	// nodes are node sessions kept between transactions, by island
	// (node.go); islands are delivered concurrently.
	nodesMu sync.Mutex
	nodes   map[string]*nodeConn
	closing sync.WaitGroup // node sessions being ended politely
}

// advertised are the optional extensions one LHLO answer offered.
type advertised struct{ eightBit, utf8 bool }

// transaction is a MAIL transaction in progress.
type transaction struct {
	from  string
	utf8  bool
	rcpts []recipient // accepted, in RCPT order (duplicates kept)
}

type recipient struct {
	addr  string
	route *proxy.Route
}

var (
	errLineTooLong = errors.New("lmtp: line too long")
	errTimeout     = errors.New("lmtp: client idle")
)

// Serve implements proxy.Handler.
func (h *Handler) Serve(ctx context.Context, s *proxy.Session) {
	c := &session{h: h, opts: h.Options(), s: s, core: s.Core, lim: s.Core.Limits(), log: s.Log, ctx: ctx, conn: s.Conn, tls: s.TLS}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.obs, _ = c.core.Observer().(Observer)
	c.setConn(c.conn)
	// Kept node sessions end (with QUIT) after the client's connection
	// is closed, so the client does not wait for them.
	defer c.closeNodes()
	defer func() { c.conn.Close() }()
	c.reply(220, "", c.core.Hostname()+" LMTP atoll ready")
	for {
		// Pipelining (RFC 2920): answers are buffered while the client's
		// commands are, and sent before waiting for more.
		if c.r.Buffered() == 0 && !c.flush() {
			return
		}
		line, err := c.readLine()
		switch {
		case errors.Is(err, errTimeout):
			c.finish(421, "4.4.2", c.core.Hostname()+" Idle timeout, closing connection")
			return
		case errors.Is(err, errLineTooLong):
			c.finish(500, "5.5.2", "Line too long, closing connection")
			return
		case err != nil:
			return
		}
		cmd, err := parseCommand(line)
		if err != nil {
			if !c.badCommand(500, "5.5.2", "Syntax error") {
				return
			}
			continue
		}
		if !c.dispatch(cmd) {
			return
		}
	}
}

func (c *session) setConn(conn net.Conn) {
	c.conn = conn
	c.r = bufio.NewReaderSize(conn, c.lim.MaxLine+2)
	c.w = bufio.NewWriterSize(conn, 4096)
	c.werr = nil
}

// dispatch runs one command; false ends the session.
func (c *session) dispatch(cmd command) bool {
	switch cmd.Verb {
	case "LHLO":
		return c.cmdLHLO(cmd.Arg)
	case "MAIL":
		return c.cmdMAIL(cmd.Arg)
	case "RCPT":
		return c.cmdRCPT(cmd.Arg)
	case "DATA":
		return c.cmdDATA(cmd.Arg)
	case "RSET":
		c.tx = nil
		return c.reply(250, "2.0.0", "OK")
	case "NOOP":
		return c.reply(250, "2.0.0", "OK")
	case "VRFY":
		return c.reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
	case "HELP":
		return c.reply(214, "2.0.0", "Commands: LHLO MAIL RCPT DATA RSET NOOP VRFY HELP STARTTLS QUIT")
	case "QUIT":
		c.finish(221, "2.0.0", c.core.Hostname()+" closing connection")
		return false
	case "STARTTLS":
		return c.cmdSTARTTLS(cmd.Arg)
	case "HELO", "EHLO":
		return c.badCommand(500, "5.5.1", "This is an LMTP server: use LHLO")
	case "BDAT", "EXPN", "ETRN", "TURN", "AUTH", "XCLIENT":
		return c.badCommand(502, "5.5.1", cmd.Verb+" is not implemented")
	}
	return c.badCommand(500, "5.5.2", "Command unrecognized")
}

func (c *session) cmdLHLO(arg string) bool {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, " "), " ")
	if name == "" {
		return c.badCommand(501, "5.5.4", "LHLO needs a domain name or address literal")
	}
	c.helo, c.tx = name, nil
	eightBit, utf8 := c.h.caps.common()
	c.adv = advertised{eightBit: eightBit, utf8: utf8}
	lines := []string{c.core.Hostname(), "PIPELINING", "ENHANCEDSTATUSCODES", "SIZE " + strconv.FormatInt(c.opts.MaxMessageSize, 10)}
	if eightBit {
		lines = append(lines, "8BITMIME")
	}
	if utf8 {
		lines = append(lines, "SMTPUTF8")
	}
	if !c.tls && c.core.ServerTLS() != nil {
		lines = append(lines, "STARTTLS")
	}
	// RFC 2034: no enhanced code in the EHLO/LHLO answer.
	return c.replyLines(250, "", lines)
}

func (c *session) cmdMAIL(arg string) bool {
	switch {
	case c.helo == "":
		return c.reply(503, "5.5.1", "Send LHLO first")
	case c.tx != nil:
		return c.reply(503, "5.5.1", "Nested MAIL command")
	case c.core.RequireTLS() && !c.tls:
		return c.reply(530, "5.7.0", "Must issue a STARTTLS command first")
	}
	from, params, err := parseMailArg(arg, "FROM:")
	if err != nil {
		return c.badCommand(501, "5.5.4", "Syntax: MAIL FROM:<address> ("+err.Error()+")")
	}
	tx := &transaction{from: from}
	for _, p := range params {
		switch {
		case p.Key == "SIZE" && p.HasValue:
			size, err := strconv.ParseInt(p.Value, 10, 64)
			if err != nil || size < 0 {
				return c.badCommand(501, "5.5.4", "Bad SIZE value")
			}
			if size > c.opts.MaxMessageSize {
				return c.reply(552, "5.3.4", fmt.Sprintf("Message size exceeds the limit of %d bytes", c.opts.MaxMessageSize))
			}
		case p.Key == "BODY" && p.HasValue:
			switch strings.ToUpper(p.Value) {
			case "7BIT":
			case "8BITMIME":
				if !c.adv.eightBit {
					return c.reply(555, "5.5.4", "BODY=8BITMIME is not supported")
				}
			default:
				return c.reply(555, "5.5.4", "Unsupported BODY type")
			}
		case p.Key == "SMTPUTF8" && !p.HasValue:
			if !c.adv.utf8 {
				return c.reply(555, "5.5.4", "SMTPUTF8 is not supported")
			}
			tx.utf8 = true
		default:
			return c.reply(555, "5.5.4", "Unsupported parameter "+p.Key)
		}
	}
	if !tx.utf8 && !isASCII(from) {
		return c.reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
	}
	c.tx = tx
	return c.reply(250, "2.1.0", "OK")
}

func (c *session) cmdRCPT(arg string) bool {
	if c.tx == nil {
		return c.reply(503, "5.5.1", "MAIL first")
	}
	addr, params, err := parseMailArg(arg, "TO:")
	if err != nil || addr == "" {
		if err == nil {
			err = errors.New("empty address")
		}
		return c.badCommand(501, "5.5.4", "Syntax: RCPT TO:<address> ("+err.Error()+")")
	}
	if len(params) > 0 {
		return c.reply(555, "5.5.4", "Unsupported parameter "+params[0].Key)
	}
	if !c.tx.utf8 && !isASCII(addr) {
		return c.reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
	}
	if len(c.tx.rcpts) >= c.opts.MaxRecipients {
		return c.reply(452, "4.5.3", "Too many recipients")
	}
	const proto = "lmtp"
	r, err := c.core.Route(c.ctx, c.s.Service, addr)
	switch {
	case err == nil:
	case errors.Is(err, proxy.ErrBadName), errors.Is(err, proxy.ErrUnknownUser):
		result := "unknown_user"
		if errors.Is(err, proxy.ErrBadName) {
			result = "bad_name"
		}
		c.core.LoginResult(proto, result)
		c.log.Info("lmtp: recipient refused", "rcpt", addr, "result", result, "err", err)
		return c.reply(550, "5.1.1", "<"+addr+">: no such user")
	case errors.Is(err, proxy.ErrUnavailable):
		c.core.LoginResult(proto, "unavailable")
		c.log.Warn("lmtp: directory unavailable", "rcpt", addr, "err", err)
		return c.reply(451, "4.3.0", "Directory unavailable, try again later")
	case errors.Is(err, proxy.ErrNoNode):
		c.core.LoginResult(proto, "no_node")
		c.log.Warn("lmtp: no node for the recipient", "rcpt", addr, "err", err)
		return c.reply(451, "4.4.1", "No server available for this recipient's island")
	default:
		if c.ctx.Err() != nil {
			return false
		}
		c.core.LoginResult(proto, "error")
		c.log.Error("lmtp: route failed", "rcpt", addr, "err", err)
		return c.reply(451, "4.3.0", "Internal error, try again later")
	}
	c.core.LoginResult(proto, "ok")
	c.tx.rcpts = append(c.tx.rcpts, recipient{addr: addr, route: r})
	return c.reply(250, "2.1.5", "OK")
}

func (c *session) cmdDATA(arg string) bool {
	switch {
	case arg != "":
		return c.badCommand(501, "5.5.4", "DATA takes no argument")
	case c.tx == nil:
		return c.reply(503, "5.5.1", "MAIL first")
	case len(c.tx.rcpts) == 0:
		return c.reply(554, "5.5.1", "No valid recipients")
	}
	tx := c.tx
	c.tx = nil
	if !c.reply(354, "", "Start mail input; end with <CRLF>.<CRLF>") || !c.flush() {
		return false
	}
	sp := &spool{}
	defer sp.Close()
	sw := &spoolWriter{sp: sp}
	last := time.Now()
	c.conn.SetReadDeadline(last.Add(c.lim.PreLoginTimeout))
	n, tooBig, err := readData(c.r, sw, c.opts.MaxMessageSize, func() {
		// An idle timeout: the deadline moves while bytes come (at most
		// once a second, to keep this cheap).
		if now := time.Now(); now.Sub(last) > time.Second {
			last = now
			c.conn.SetReadDeadline(now.Add(c.lim.PreLoginTimeout))
		}
	})
	if err != nil {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			c.finish(421, "4.4.2", c.core.Hostname()+" Idle timeout during DATA, closing connection")
		}
		c.log.Info("lmtp: message not received", "err", err, "bytes", n)
		return false
	}
	if c.obs != nil {
		c.obs.Recipients(len(tx.rcpts))
		c.obs.Bytes(n)
	}
	var replies []reply
	switch {
	case tooBig:
		c.log.Info("lmtp: message too big", "bytes", n, "max", c.opts.MaxMessageSize)
		for _, rc := range tx.rcpts {
			replies = append(replies, reply{Code: 552, Enh: "5.3.4", Lines: []string{fmt.Sprintf("<%s> Message too big: the limit is %d bytes", rc.addr, c.opts.MaxMessageSize)}})
			c.observe(rc.route.Island, ResultTooBig)
		}
	case sw.err != nil:
		c.log.Error("lmtp: cannot spool the message", "err", sw.err, "bytes", n)
		for _, rc := range tx.rcpts {
			replies = append(replies, reply{Code: 451, Enh: "4.3.0", Lines: []string{"<" + rc.addr + "> Local error while receiving the message, try again later"}})
			c.observe(rc.route.Island, ResultLocalError)
		}
	default:
		replies = c.deliver(tx, sp)
	}
	for _, rp := range replies {
		rp.writeTo(c)
	}
	return c.flush()
}

func (c *session) observe(island, result string) {
	if c.obs != nil {
		c.obs.Delivery(island, result)
	}
}

// cmdSTARTTLS upgrades the client connection (RFC 3207). Whatever the
// client sent after the STARTTLS line, before the handshake, is thrown
// away: it came in plain text, and executing it after the handshake is
// the command injection of CVE-2011-0411. The session starts over
// (LHLO again, no transaction).
func (c *session) cmdSTARTTLS(arg string) bool {
	conf := c.core.ServerTLS()
	switch {
	case arg != "":
		return c.badCommand(501, "5.5.4", "STARTTLS takes no argument")
	case c.tls:
		return c.reply(503, "5.5.1", "TLS already active")
	case conf == nil:
		return c.reply(502, "5.5.1", "TLS is not available")
	case c.tx != nil:
		return c.reply(503, "5.5.1", "STARTTLS not allowed during a transaction")
	}
	if !c.reply(220, "2.0.0", "Ready to start TLS") || !c.flush() {
		return false
	}
	if n := c.r.Buffered(); n > 0 {
		c.log.Info("lmtp: discarded plaintext sent after STARTTLS", "bytes", n)
	}
	tc := tls.Server(c.s.Conn, conf)
	c.conn.SetDeadline(time.Now().Add(c.lim.PreLoginTimeout))
	if err := tc.HandshakeContext(c.ctx); err != nil {
		c.log.Debug("lmtp: client TLS handshake failed", "err", err)
		return false
	}
	c.setConn(tc)
	c.tls = true
	c.helo, c.tx, c.adv = "", nil, advertised{}
	return true
}

// badCommand answers an unrecognised or malformed command, or closes the
// session once MaxBadCommands were seen. false ends the session.
func (c *session) badCommand(code int, enh, text string) bool {
	c.bad++
	if c.bad >= c.lim.MaxBadCommands {
		c.finish(421, "4.7.0", c.core.Hostname()+" Too many errors, closing connection")
		return false
	}
	return c.reply(code, enh, text)
}

// readLine reads one command line within the idle timeout.
func (c *session) readLine() ([]byte, error) {
	c.conn.SetReadDeadline(time.Now().Add(c.lim.PreLoginTimeout))
	b, err := c.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, errLineTooLong
	}
	if err != nil {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return nil, errTimeout
		}
		return nil, err
	}
	b = b[:len(b)-1]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	if len(b) > c.lim.MaxLine {
		return nil, errLineTooLong
	}
	return b, nil
}

// reply buffers one single-line reply; false if writing already failed.
func (c *session) reply(code int, enh, text string) bool {
	return c.replyLines(code, enh, []string{text})
}

// replyLines buffers a reply of one or more lines, each with the
// enhanced code when there is one (RFC 2034).
func (c *session) replyLines(code int, enh string, lines []string) bool {
	if c.werr != nil {
		return false
	}
	for i, l := range lines {
		sep := " "
		if i < len(lines)-1 {
			sep = "-"
		}
		if enh != "" {
			_, c.werr = fmt.Fprintf(c.w, "%d%s%s %s\r\n", code, sep, enh, l)
		} else {
			_, c.werr = fmt.Fprintf(c.w, "%d%s%s\r\n", code, sep, l)
		}
		if c.werr != nil {
			return false
		}
	}
	return true
}

// flush sends the buffered replies; false if the client is gone.
func (c *session) flush() bool {
	if c.werr != nil {
		return false
	}
	if c.w.Buffered() == 0 {
		return true
	}
	c.conn.SetWriteDeadline(time.Now().Add(c.lim.PreLoginTimeout))
	c.werr = c.w.Flush()
	return c.werr == nil
}

// finish sends a last reply and closes the connection so that it
// arrives: the write side is shut first and unread client bytes are
// drained for a moment (closing a socket with unread data resets the
// connection, and the client may never see the reply).
func (c *session) finish(code int, enh, text string) {
	c.reply(code, enh, text)
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.flush()
	if tc, ok := c.conn.(*tls.Conn); ok {
		tc.CloseWrite() // close_notify
	}
	if cw, ok := c.s.Conn.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			c.s.Conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			io.Copy(io.Discard, io.LimitReader(c.s.Conn, 256<<10))
		}
	}
	c.conn.Close()
}

// spoolWriter keeps the DATA reader going when the spool fails (a full
// disk): the message is still read to its end, so the session stays in
// step, and the error is answered per recipient.
type spoolWriter struct {
	sp  *spool
	err error
}

func (w *spoolWriter) Write(p []byte) (int, error) {
	if w.err == nil {
		_, w.err = w.sp.Write(p)
	}
	return len(p), nil
}

// reply is one reply to the client.
type reply struct {
	Code  int
	Enh   string // "2.1.5"; "" for none
	Lines []string
	// NodeFailed: atoll's 451 4.4.x, no node answered for the recipient.
	NodeFailed bool
}

func (r reply) writeTo(c *session) bool { return c.replyLines(r.Code, r.Enh, r.Lines) }

// islandJob is one island's share of a transaction.
type islandJob struct {
	island string
	route  *proxy.Route // of the island's first recipient: settings, nodes in order
	addrs  []string     // each address once, in RCPT order
}

// deliver runs one node transaction per island, all at once, and returns
// one reply per recipient of tx, in its RCPT order.
func (c *session) deliver(tx *transaction, sp *spool) []reply {
	var jobs []*islandJob
	byIsland := map[string]*islandJob{}
	for _, rc := range tx.rcpts {
		j := byIsland[rc.route.Island]
		if j == nil {
			j = &islandJob{island: rc.route.Island, route: rc.route}
			byIsland[j.island] = j
			jobs = append(jobs, j)
		}
		if !containsString(j.addrs, rc.addr) {
			j.addrs = append(j.addrs, rc.addr)
		}
	}
	env := envelope{from: tx.from, utf8: tx.utf8, helo: c.helo}
	results := make(map[*islandJob]map[string]reply, len(jobs))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Go(func() {
			res := c.deliverIsland(j, env, sp)
			mu.Lock()
			results[j] = res
			mu.Unlock()
		})
	}
	wg.Wait()
	out := make([]reply, 0, len(tx.rcpts))
	for _, rc := range tx.rcpts {
		rp, ok := results[byIsland[rc.route.Island]][rc.addr]
		if !ok { // cannot happen: every address of a job gets a reply
			rp = reply{Code: 451, Enh: "4.3.0", Lines: []string{"<" + rc.addr + "> Internal error, try again later"}}
		}
		out = append(out, rp)
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
