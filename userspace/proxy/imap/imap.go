// Package imap is the IMAP side of atoll's login proxy (the role
// Perdition plays): it talks to the client until the login (LOGIN or
// AUTHENTICATE PLAIN, after STARTTLS when required), has the core route
// the user to a node of its island, replays the login there, relays the
// node's answer with the client's tag, and on success hands both
// connections to the core's relay.
//
// Before login the proxy answers CAPABILITY, NOOP, ID, STARTTLS, LOGIN,
// AUTHENTICATE and LOGOUT itself; everything else is BAD. It answers
// synchronizing literals itself ("+"), honours LITERAL+, discards
// anything pipelined behind STARTTLS (CVE-2011-0411), and gives an unknown
// user the same answer as a wrong password.
package imap

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/atoll-lb/atoll/userspace/proxy"
)

// protocol names this handler in the core's metrics.
const protocol = "imap"

// Answers shared by several paths.
const (
	authFailed   = "NO [AUTHENTICATIONFAILED] Authentication failed."
	privacy      = "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections."
	dirDown      = "NO [UNAVAILABLE] Account directory unavailable, try again later."
	noServer     = "NO [UNAVAILABLE] No server available for this account, try again later."
	serverLost   = "NO [UNAVAILABLE] Lost the connection to the server, try again later."
	internalErr  = "NO [UNAVAILABLE] Internal error, try again later."
	byeLater     = "* BYE Try again later."
	continuation = "+ Ready for literal data"
)

// Handler serves IMAP clients before login. It implements proxy.Handler.
type Handler struct {
	// nodeTimeout bounds the conversation with a node up to its answer
	// to the login.
	nodeTimeout time.Duration
}

// NewHandler returns an IMAP handler.
func NewHandler() *Handler { return &Handler{nodeTimeout: 30 * time.Second} }

var _ proxy.Handler = (*Handler)(nil)

// client is one client connection before login.
type client struct {
	h    *Handler
	s    *proxy.Session
	core *proxy.Core
	lim  proxy.Limits
	log  *slog.Logger
	// conn is the client connection: s.Conn, or the *tls.Conn over it
	// after STARTTLS (s.Conn is left alone: the core closes it when the
	// server stops, which ends the TLS connection too).
	conn  net.Conn
	tls   bool
	rd    *reader
	bads  int // BAD answers so far
	fails int // failed logins so far
}

// Serve talks to the client until it logs in (then the core relays the
// session) or goes away.
func (h *Handler) Serve(ctx context.Context, s *proxy.Session) {
	c := &client{h: h, s: s, core: s.Core, lim: s.Core.Limits(), log: s.Log, conn: s.Conn, tls: s.TLS}
	if c.log == nil {
		c.log = slog.Default()
	}
	defer func() {
		if !s.HandedOff() {
			c.conn.Close()
		}
	}()
	if tc, ok := c.conn.(*tls.Conn); ok {
		tc.SetDeadline(time.Now().Add(c.lim.PreLoginTimeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			c.log.Debug("imap: TLS handshake failed", "err", err)
			return
		}
	}
	c.rd = c.newReader(c.conn)
	if c.write("* OK [CAPABILITY "+c.capabilities()+"] "+c.core.Hostname()+" atoll ready.") != nil {
		return
	}
	for {
		cmd, err := c.rd.next()
		if err != nil {
			if !c.readFailed(err) {
				return
			}
			continue
		}
		if !c.dispatch(ctx, cmd) {
			return
		}
	}
}

func (c *client) newReader(conn net.Conn) *reader {
	return &reader{
		r:          newBufReader(conn),
		maxLine:    c.lim.MaxLine,
		maxLiteral: c.lim.MaxLiteral,
		prepare:    func() { conn.SetReadDeadline(time.Now().Add(c.lim.PreLoginTimeout)) },
		cont:       func() error { return c.write(continuation) },
		noLogin:    !c.loginAllowed(),
	}
}

// loginAllowed: no login before TLS when the core requires TLS.
func (c *client) loginAllowed() bool { return c.tls || !c.core.RequireTLS() }

// capabilities are the pre-login capabilities: only what works here.
func (c *client) capabilities() string {
	caps := []string{"IMAP4rev1", "LITERAL+", "SASL-IR", "ID"}
	if !c.tls && c.core.ServerTLS() != nil {
		caps = append(caps, "STARTTLS")
	}
	if c.loginAllowed() {
		caps = append(caps, "AUTH=PLAIN")
	} else {
		caps = append(caps, "LOGINDISABLED")
	}
	return strings.Join(caps, " ")
}

// write sends lines to the client, each followed by CRLF, in one write.
func (c *client) write(lines ...string) error { return c.writeRaw(nil, lines...) }

// writeRaw sends raw bytes, then lines, in one write.
func (c *client) writeRaw(raw []byte, lines ...string) error {
	b := bytes.NewBuffer(raw)
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	c.conn.SetWriteDeadline(time.Now().Add(c.lim.PreLoginTimeout))
	_, err := c.conn.Write(b.Bytes())
	return err
}

func answerTag(tag string) string {
	if tag == "" {
		return "*"
	}
	return tag
}

// bad answers BAD and counts it; false when the connection must close.
func (c *client) bad(tag, text string) bool {
	if c.write(answerTag(tag)+" BAD "+text) != nil {
		return false
	}
	c.bads++
	if c.bads >= c.lim.MaxBadCommands {
		c.write("* BYE Too many invalid commands.")
		return false
	}
	return true
}

// readFailed answers a failed read; false when the connection must close.
func (c *client) readFailed(err error) bool {
	var bad *badCommand
	var ne net.Error
	switch {
	case errors.As(err, &bad):
		return c.bad(bad.tag, bad.text)
	case errors.Is(err, errLineTooLong):
		c.write("* BAD Command line too long")
	case errors.Is(err, errLiteralTooBig):
		c.write("* BYE literal too big")
	case errors.As(err, &ne) && ne.Timeout():
		c.write("* BYE Disconnected for inactivity.")
	default:
		c.log.Debug("imap: client gone before login", "err", err)
	}
	return false
}

// dispatch runs one command; false when the connection must close.
func (c *client) dispatch(ctx context.Context, cmd *command) bool {
	tag := cmd.tag
	switch cmd.name {
	case "CAPABILITY":
		return c.write("* CAPABILITY "+c.capabilities(), tag+" OK Capability completed.") == nil
	case "NOOP":
		return c.write(tag+" OK NOOP completed.") == nil
	case "ID":
		if !cmd.idNil {
			c.log.Debug("imap: client ID", "fields", idString(cmd.id))
		}
		return c.write(`* ID ("name" "atoll")`, tag+" OK ID completed.") == nil
	case "LOGOUT":
		c.write("* BYE Logging out.", tag+" OK Logout completed.")
		return false
	case "STARTTLS":
		return c.startTLS(ctx, tag)
	case "LOGIN":
		if !c.loginAllowed() {
			return c.write(tag+" "+privacy) == nil
		}
		return c.login(ctx, tag, nil, cmd.user, cmd.pass)
	case "AUTHENTICATE":
		if !c.loginAllowed() {
			return c.write(tag+" "+privacy) == nil
		}
		return c.authenticate(ctx, cmd)
	}
	return c.bad(tag, "Unknown command, or not allowed before login.")
}

func idString(id [][]byte) string {
	var b strings.Builder
	for i := 0; i+1 < len(id); i += 2 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.Write(id[i])
		b.WriteByte('=')
		if id[i+1] == nil {
			b.WriteString("NIL")
		} else {
			b.Write(id[i+1])
		}
	}
	return b.String()
}

// startTLS upgrades the connection. Whatever the client sent after the
// STARTTLS line in plaintext is dropped with the old reader: a fresh
// reader is built on the TLS connection (CVE-2011-0411).
func (c *client) startTLS(ctx context.Context, tag string) bool {
	if c.tls {
		return c.bad(tag, "TLS is already active.")
	}
	if c.core.ServerTLS() == nil {
		return c.bad(tag, "STARTTLS is not available.")
	}
	if c.write(tag+" OK Begin TLS negotiation now.") != nil {
		return false
	}
	if n := c.rd.r.Buffered(); n > 0 {
		c.log.Warn("imap: plaintext sent behind STARTTLS discarded", "bytes", n)
	}
	tc := tls.Server(c.conn, c.core.ServerTLS())
	c.conn.SetDeadline(time.Now().Add(c.lim.PreLoginTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		c.log.Debug("imap: STARTTLS handshake failed", "err", err)
		return false
	}
	c.conn, c.tls = tc, true
	c.rd = c.newReader(tc)
	return true
}

// authenticate runs AUTHENTICATE PLAIN, with or without an initial
// response (SASL-IR).
func (c *client) authenticate(ctx context.Context, cmd *command) bool {
	tag := cmd.tag
	if cmd.mech != "PLAIN" {
		return c.write(tag+" NO [CANNOT] Unsupported authentication mechanism") == nil
	}
	resp := cmd.ir
	if !cmd.hasIR {
		if c.write("+ ") != nil {
			return false
		}
		c.rd.budget = c.lim.MaxLine + 2
		line, err := c.rd.readLine()
		if err != nil {
			return c.readFailed(err)
		}
		resp = string(line)
		if resp == "*" {
			return c.bad(tag, "AUTHENTICATE cancelled")
		}
	}
	authz, user, pass, ok := decodePlain(resp)
	if !ok {
		return c.bad(tag, "Invalid PLAIN authentication data.")
	}
	return c.login(ctx, tag, authz, user, pass)
}

// decodePlain decodes a base64 PLAIN message (RFC 4616): authzid NUL
// authcid NUL passwd, authcid not empty. "=" is an empty response.
func decodePlain(resp string) (authz, user, pass []byte, ok bool) {
	if resp == "=" || resp == "" {
		return nil, nil, nil, false
	}
	msg, err := base64.StdEncoding.Strict().DecodeString(resp)
	if err != nil {
		return nil, nil, nil, false
	}
	parts := bytes.Split(msg, []byte{0})
	if len(parts) != 3 || len(parts[1]) == 0 {
		return nil, nil, nil, false
	}
	return parts[0], parts[1], parts[2], true
}

// sleep waits d unless ctx ends first (false then).
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// failed answers a failed login after the throttle's delay and counts
// it; false when the connection must close.
func (c *client) failed(ctx context.Context, tag, user, result, answer string, before []byte) bool {
	c.core.LoginResult(protocol, result)
	c.log.Info("imap: login failed", "user", user, "result", result)
	if !sleep(ctx, c.core.LoginFailed(c.s.Client.Addr(), user)) {
		return false
	}
	if c.writeRaw(before, tag+" "+answer) != nil {
		return false
	}
	c.fails++
	if c.fails >= c.lim.MaxLoginTries {
		c.write("* BYE Too many failed logins.")
		return false
	}
	return true
}

// fatal answers tag with answer, says BYE and records result; the
// connection closes.
func (c *client) fatal(tag, result, answer string) bool {
	c.core.LoginResult(protocol, result)
	c.write(tag+" "+answer, byeLater)
	return false
}

// login routes user, replays the login on a node and relays its answer.
// It returns false when the connection is done (closed, or relayed).
func (c *client) login(ctx context.Context, tag string, authz, user, pass []byte) bool {
	name := string(user)
	r, err := c.core.Route(ctx, c.s.Service, name)
	switch {
	case err == nil:
	case errors.Is(err, proxy.ErrBadName):
		return c.failed(ctx, tag, name, "bad_name", authFailed, nil)
	case errors.Is(err, proxy.ErrUnknownUser):
		return c.failed(ctx, tag, name, "unknown_user", authFailed, nil)
	case errors.Is(err, proxy.ErrUnavailable):
		c.log.Warn("imap: directory unavailable", "user", name, "err", err)
		return c.fatal(tag, "unavailable", dirDown)
	case errors.Is(err, proxy.ErrNoNode):
		c.log.Warn("imap: no node for the user", "user", name, "err", err)
		return c.fatal(tag, "no_node", noServer)
	default:
		c.log.Warn("imap: routing failed", "user", name, "err", err)
		return c.fatal(tag, "error", internalErr)
	}
	var n *node
	for _, nd := range r.Nodes {
		if n, err = c.openNode(ctx, r, nd); err == nil {
			break
		}
		c.log.Warn("imap: node unusable, trying the next one", "node", nd.Name, "addr", nd.Addr, "err", err)
		if ctx.Err() != nil {
			return false
		}
	}
	if n == nil {
		return c.fatal(tag, "no_node", noServer)
	}
	defer n.stop()
	ans, err := n.login(authz, []byte(r.NodeUser), pass)
	if err != nil {
		n.close()
		if errors.Is(err, errAuthzUnsupported) {
			c.core.LoginResult(protocol, "error")
			return c.write(tag+" NO [CANNOT] Authorization identity not supported by the server.") == nil
		}
		c.log.Warn("imap: node failed during login", "node", n.name, "user", name, "err", err)
		return c.fatal(tag, "error", serverLost)
	}
	if !ans.ok {
		n.close()
		return c.failed(ctx, tag, name, "failed", ans.status+ans.rest, untagged(ans.untagged, nil))
	}
	// Logged in: advertise what every node of the island offers.
	if caps := ans.caps(); caps != nil {
		c.core.RecordCaps(r.Island, n.name, caps)
		ans.setCaps(c.core.IslandCaps(r.Island))
	}
	if c.writeRaw(untagged(ans.untagged, ans.islandCaps), tag+" "+ans.status+ans.rest) != nil {
		n.close()
		c.core.LoginResult(protocol, "error")
		return false
	}
	c.core.LoginResult(protocol, "ok")
	c.core.LoginSucceeded(c.s.Client.Addr(), r)
	c.log.Info("imap: logged in", "user", name, "island", r.Island, "node", n.name)
	up := bytes.Clone(peekBuffered(c.rd.r))
	down := bytes.Clone(peekBuffered(n.r))
	c.s.Handoff(protocol, c.conn, n.conn, up, down)
	return false
}

// untagged renders the node's untagged answers to the login for the
// client: CAPABILITY lines replaced by the island's when known, BYE
// dropped (the node's connection ends, not the client's).
func untagged(lines [][]byte, islandCaps []string) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		if isBye(l) {
			continue
		}
		if islandCaps != nil && isCapabilityLine(l) {
			b.WriteString("* CAPABILITY " + strings.Join(islandCaps, " ") + "\r\n")
			continue
		}
		b.Write(l)
	}
	return b.Bytes()
}
