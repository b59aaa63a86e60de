// Package pop3 is the POP3 side of atoll's login proxy (RFC 1939, CAPA
// RFC 2449, STLS RFC 2595, SASL RFC 5034, response codes RFC 3206).
//
// A Handler speaks POP3 to the client until it has a login — USER/PASS or
// AUTH PLAIN (with an initial response or a continuation) — asks the core
// where the user lives, replays the login on one of the island's nodes
// (AUTH PLAIN when the node offers it, else USER/PASS; STLS toward the node
// when the island wants it), relays the node's answer line as it is, and on
// success hands both connections to the core's byte relay.
//
// No APOP timestamp is ever offered: an APOP digest covers the banner of
// the server the client talks to (atoll's), so no node could check it.
// POP3 has no command to tell the node the client's address (IMAP's ID
// fields have no POP3 counterpart): only a PROXY v2 header carries it, and
// an island configured with ClientAddrID is treated as ClientAddrNone.
package pop3

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/atoll-lb/atoll/userspace/proxy"
)

// Client-facing answers that tests and operators grep for.
const (
	msgUnknown         = "-ERR Unknown command."
	msgTooManyBad      = "-ERR Too many invalid commands."
	msgLineTooLong     = "-ERR Line too long."
	msgInactivity      = "-ERR Disconnected for inactivity."
	msgTooManyFails    = "-ERR Too many failed logins."
	msgAuthFailed      = "-ERR [AUTH] Authentication failed."
	msgPlainDisabled   = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections."
	msgUnavailable     = "-ERR [SYS/TEMP] Account directory unavailable, try again later."
	msgNoNode          = "-ERR [SYS/TEMP] No server available for this account, try again later."
	msgNodeFailed      = "-ERR [SYS/TEMP] The server for this account did not answer, try again later."
	msgInternal        = "-ERR [SYS/TEMP] Internal error, try again later."
	msgBadMech         = "-ERR [SYS/PERM] Unsupported mechanism."
	msgNoAuthz         = "-ERR [SYS/PERM] Authorization identity not supported."
	msgAuthAborted     = "-ERR Authentication aborted."
	msgBadPlain        = "-ERR Invalid AUTH PLAIN response."
	msgAuthSyntax      = "-ERR Invalid AUTH arguments."
	msgNoUser          = "-ERR No username given."
	msgNoPass          = "-ERR No password given."
	msgUserFirst       = "-ERR USER first."
	msgNoTLS           = "-ERR TLS is not available."
	msgAlreadyTLS      = "-ERR TLS is already active."
	msgBeginTLS        = "+OK Begin TLS negotiation"
	msgLogout          = "+OK Logging out."
	msgUserOK          = "+OK"
	msgAuthContinue    = "+ "
	defaultNodeTimeout = 30 * time.Second
)

// Handler serves POP3 clients. It is stateless between sessions and safe
// for concurrent use.
type Handler struct {
	// NodeTimeout bounds each step of the exchange with a node before the
	// relay starts (greeting, STLS, CAPA, the login itself); default 30s.
	NodeTimeout time.Duration
}

// NewHandler returns a Handler with the default settings.
func NewHandler() *Handler { return &Handler{NodeTimeout: defaultNodeTimeout} }

var _ proxy.Handler = (*Handler)(nil)

func (h *Handler) nodeTimeout() time.Duration {
	if h.NodeTimeout > 0 {
		return h.NodeTimeout
	}
	return defaultNodeTimeout
}

// session is one client connection before login.
type session struct {
	h    *Handler
	s    *proxy.Session
	core *proxy.Core
	lim  proxy.Limits
	log  *slog.Logger

	// conn is the client connection: s.Conn, or the TLS connection over
	// it after STLS. s.Conn itself is never replaced: the core closes it
	// from another goroutine when the server stops.
	conn net.Conn
	r    *bufio.Reader
	tls  bool

	user     string // from USER, waiting for PASS
	haveUser bool
	bad      int // invalid commands so far
	fails    int // failed logins so far
}

var (
	errLineTooLong = errors.New("pop3: line too long")
	errTimeout     = errors.New("pop3: client idle")
)

// Serve implements proxy.Handler.
func (h *Handler) Serve(ctx context.Context, s *proxy.Session) {
	c := &session{h: h, s: s, core: s.Core, lim: s.Core.Limits(), log: s.Log, conn: s.Conn, tls: s.TLS}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.r = c.newReader(c.conn)
	defer func() {
		if !s.HandedOff() {
			c.conn.Close()
		}
	}()
	if !c.reply("+OK " + c.core.Hostname() + " atoll ready.") {
		return
	}
	for {
		line, err := c.readLine()
		switch {
		case errors.Is(err, errTimeout):
			c.finish(msgInactivity)
			return
		case errors.Is(err, errLineTooLong):
			c.finish(msgLineTooLong)
			return
		case err != nil:
			return
		}
		cmd, ok := parseCommand(line)
		if !ok {
			if !c.badCommand(msgUnknown) {
				return
			}
			continue
		}
		if !c.dispatch(ctx, cmd) {
			return
		}
	}
}

// dispatch runs one command; false ends the session.
func (c *session) dispatch(ctx context.Context, cmd command) bool {
	switch cmd.Verb {
	case "CAPA":
		return c.reply(c.capa())
	case "USER":
		return c.cmdUser(cmd.Arg)
	case "PASS":
		return c.cmdPass(ctx, cmd.Arg)
	case "AUTH":
		return c.cmdAuth(ctx, cmd.Arg)
	case "STLS":
		return c.cmdSTLS(ctx)
	case "QUIT":
		c.finish(msgLogout)
		return false
	}
	return c.badCommand(msgUnknown)
}

// plainAllowed: credentials may be sent on this connection.
func (c *session) plainAllowed() bool { return c.tls || !c.core.RequireTLS() }

// canSTLS: STLS is offered.
func (c *session) canSTLS() bool { return !c.tls && c.core.ServerTLS() != nil }

// capa is the CAPA answer (RFC 2449). No line starts with '.', so no
// dot-stuffing is needed.
func (c *session) capa() string {
	caps := []string{"+OK Capability list follows"}
	if c.plainAllowed() {
		caps = append(caps, "USER", "SASL PLAIN")
	}
	caps = append(caps, "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "TOP", "UIDL")
	if c.canSTLS() {
		caps = append(caps, "STLS")
	}
	caps = append(caps, ".")
	return strings.Join(caps, "\r\n")
}

func (c *session) cmdUser(arg string) bool {
	if !c.plainAllowed() {
		return c.badCommand(msgPlainDisabled)
	}
	if arg == "" {
		return c.badCommand(msgNoUser)
	}
	c.user, c.haveUser = arg, true
	return c.reply(msgUserOK)
}

func (c *session) cmdPass(ctx context.Context, arg string) bool {
	if !c.haveUser {
		return c.badCommand(msgUserFirst)
	}
	if arg == "" {
		return c.badCommand(msgNoPass)
	}
	user := c.user
	c.user, c.haveUser = "", false
	return c.login(ctx, user, arg)
}

func (c *session) cmdAuth(ctx context.Context, arg string) bool {
	a, err := parseAuth(arg)
	if err != nil {
		return c.badCommand(msgAuthSyntax)
	}
	if a.Mech == "" {
		if c.plainAllowed() {
			return c.reply("+OK\r\nPLAIN\r\n.")
		}
		return c.reply("+OK\r\n.")
	}
	if a.Mech != "PLAIN" {
		return c.badCommand(msgBadMech)
	}
	if !c.plainAllowed() {
		return c.badCommand(msgPlainDisabled)
	}
	// AUTH starts over: a USER before it is forgotten.
	c.user, c.haveUser = "", false
	resp := a.Initial
	if !a.HasIR {
		if !c.reply(msgAuthContinue) {
			return false
		}
		line, err := c.readLine()
		switch {
		case errors.Is(err, errTimeout):
			c.finish(msgInactivity)
			return false
		case errors.Is(err, errLineTooLong):
			c.finish(msgLineTooLong)
			return false
		case err != nil:
			return false
		}
		resp = string(line)
		if resp == "*" {
			return c.badCommand(msgAuthAborted)
		}
	}
	authzid, authcid, pass, err := decodePlain(resp)
	if err != nil {
		return c.badCommand(msgBadPlain)
	}
	if authzid != "" && authzid != authcid {
		// Logging in as someone else (a master user) would have to be
		// routed by the authzid and logged in with node-specific rules.
		return c.badCommand(msgNoAuthz)
	}
	return c.login(ctx, authcid, pass)
}

// cmdSTLS upgrades the client connection (RFC 2595). Whatever the client
// sent after the STLS line, before the handshake, is thrown away: it came
// in plain text, and executing it after the handshake is the command
// injection of CVE-2011-0411.
func (c *session) cmdSTLS(ctx context.Context) bool {
	if c.tls {
		return c.badCommand(msgAlreadyTLS)
	}
	conf := c.core.ServerTLS()
	if conf == nil {
		return c.badCommand(msgNoTLS)
	}
	if !c.reply(msgBeginTLS) {
		return false
	}
	if n := c.r.Buffered(); n > 0 {
		c.log.Info("pop3: discarded plaintext sent after STLS", "bytes", n)
	}
	tc := tls.Server(c.s.Conn, conf)
	c.conn.SetDeadline(time.Now().Add(c.lim.PreLoginTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		c.log.Debug("pop3: client TLS handshake failed", "err", err)
		return false
	}
	c.conn, c.r, c.tls = tc, c.newReader(tc), true
	// RFC 2595: the client forgets what it learned; so do we.
	c.user, c.haveUser = "", false
	return true
}

// login routes user, replays the login on a node and relays its answer.
// It returns false when the session is over: relayed to the node after a
// successful login, or closed.
func (c *session) login(ctx context.Context, user, pass string) bool {
	const proto = "pop3"
	client := c.s.Client.Addr()
	r, err := c.core.Route(ctx, c.s.Service, user)
	switch {
	case err == nil:
	case errors.Is(err, proxy.ErrBadName), errors.Is(err, proxy.ErrUnknownUser):
		result := "unknown_user"
		if errors.Is(err, proxy.ErrBadName) {
			result = "bad_name"
		}
		c.core.LoginResult(proto, result)
		c.log.Info("pop3: login failed", "user", user, "result", result, "err", err)
		// Answered like a wrong password, after the same delay: the
		// answer must not tell which names exist.
		return c.loginFailed(ctx, user, msgAuthFailed, true)
	case errors.Is(err, proxy.ErrUnavailable):
		c.core.LoginResult(proto, "unavailable")
		c.log.Warn("pop3: directory unavailable", "user", user, "err", err)
		c.finish(msgUnavailable)
		return false
	case errors.Is(err, proxy.ErrNoNode):
		c.core.LoginResult(proto, "no_node")
		c.log.Warn("pop3: no node for the user", "user", user, "err", err)
		c.finish(msgNoNode)
		return false
	default:
		if ctx.Err() != nil {
			return false
		}
		c.core.LoginResult(proto, "error")
		c.log.Error("pop3: route failed", "user", user, "err", err)
		c.finish(msgInternal)
		return false
	}

	nc, err := c.h.loginNode(ctx, c.core, c.s, r, pass, c.log)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		c.core.LoginResult(proto, "error")
		c.log.Warn("pop3: no node accepted the login", "user", r.User, "island", r.Island, "err", err)
		c.finish(msgNodeFailed)
		return false
	}
	if !strings.HasPrefix(nc.answer, "+OK") {
		nc.conn.Close()
		c.core.LoginResult(proto, "failed")
		c.log.Info("pop3: node refused the login", "user", r.User, "node", nc.node.Name, "answer", nc.answer)
		// A locked mailbox or a node in trouble says nothing about the
		// password: only other refusals feed the throttle.
		guess := true
		switch code := respCode(nc.answer); {
		case code == "IN-USE", code == "LOGIN-DELAY", strings.HasPrefix(code, "SYS/"):
			guess = false
		}
		return c.loginFailed(ctx, r.User, nc.answer, guess)
	}

	// Logged in: the node's answer, then bytes both ways.
	c.core.LoginResult(proto, "ok")
	c.core.LoginSucceeded(client, r)
	c.log.Info("pop3: logged in", "user", r.User, "island", r.Island, "node", nc.node.Name)
	if !c.reply(nc.answer) {
		nc.conn.Close()
		return false
	}
	up, _ := c.r.Peek(c.r.Buffered())
	down, _ := nc.r.Peek(nc.r.Buffered())
	c.s.Handoff(proto, c.conn, nc.conn, clone(up), clone(down))
	return false
}

// loginFailed answers a failed login with answer, after the throttle's
// delay when the failure may be a guess, and closes the session after
// MaxLoginTries failures. false ends the session.
func (c *session) loginFailed(ctx context.Context, user, answer string, guess bool) bool {
	if guess {
		if d := c.core.LoginFailed(c.s.Client.Addr(), user); d > 0 && !sleep(ctx, d) {
			return false
		}
	}
	c.fails++
	if !c.reply(answer) {
		return false
	}
	if c.fails >= c.lim.MaxLoginTries {
		c.finish(msgTooManyFails)
		return false
	}
	return true
}

// badCommand answers an invalid command with msg, or closes the session
// once MaxBadCommands were seen. false ends the session.
func (c *session) badCommand(msg string) bool {
	c.bad++
	if c.bad >= c.lim.MaxBadCommands {
		c.finish(msgTooManyBad)
		return false
	}
	return c.reply(msg)
}

// newReader reads client lines: a line longer than MaxLine fills the
// buffer and is refused.
func (c *session) newReader(r io.Reader) *bufio.Reader {
	return bufio.NewReaderSize(r, c.lim.MaxLine+2)
}

// readLine reads one client line within the pre-login timeout.
func (c *session) readLine() ([]byte, error) {
	c.conn.SetDeadline(time.Now().Add(c.lim.PreLoginTimeout))
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
	b = trimEOL(b)
	if len(b) > c.lim.MaxLine {
		return nil, errLineTooLong
	}
	return b, nil
}

// reply writes one answer (CRLF added). false if the client is gone.
func (c *session) reply(s string) bool {
	c.conn.SetWriteDeadline(time.Now().Add(c.lim.PreLoginTimeout))
	_, err := io.WriteString(c.conn, s+"\r\n")
	return err == nil
}

// finish sends a last answer and closes the connection so that the
// answer arrives: the write side is shut first and unread client bytes
// are drained for a moment (closing a socket with unread data resets the
// connection, and the client may never see the answer).
func (c *session) finish(msg string) {
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	io.WriteString(c.conn, msg+"\r\n")
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

// sleep waits d or until ctx is done; false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}
