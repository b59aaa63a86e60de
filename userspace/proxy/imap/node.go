package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/atoll-lb/atoll/userspace/proxy"
)

// Bounds on what a node may send before its login answer.
const (
	maxNodeLine     = 64 << 10
	maxNodeResponse = 1 << 20
)

// errAuthzUnsupported: the client gave an authorization identity and the
// node offers no AUTHENTICATE PLAIN to carry it.
var errAuthzUnsupported = errors.New("imap: the node cannot take an authorization identity")

// node is a connection to a node, up to its answer to the login.
type node struct {
	name      string
	conn      net.Conn
	r         *bufio.Reader
	caps      []string
	capsKnown bool
	seq       int
	stop      func() bool // stops closing conn when the session's ctx ends
}

func newBufReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 4096) }

// peekBuffered returns what r holds already read.
func peekBuffered(r *bufio.Reader) []byte {
	b, _ := r.Peek(r.Buffered())
	return b
}

func (n *node) close() { n.conn.Close() }

func (n *node) has(capability string) bool {
	return slices.ContainsFunc(n.caps, func(c string) bool { return strings.EqualFold(c, capability) })
}

func (n *node) nextTag() string {
	n.seq++
	return "atoll" + strconv.Itoa(n.seq)
}

func (n *node) send(s string) error {
	_, err := io.WriteString(n.conn, s)
	return err
}

// openNode connects to nd and prepares it for the login: greeting,
// STARTTLS when the island wants it, capabilities, and the client's
// address by ID when the island passes it that way.
func (c *client) openNode(ctx context.Context, r *proxy.Route, nd proxy.Node) (*node, error) {
	conn, err := c.core.Dial(ctx, r, nd, c.s.Client, c.s.Local)
	if err != nil {
		return nil, err
	}
	n := &node{name: nd.Name, conn: conn, r: newBufReader(conn)}
	n.stop = context.AfterFunc(ctx, func() { conn.Close() })
	ok := false
	defer func() {
		if !ok {
			n.stop()
			conn.Close()
		}
	}()
	conn.SetDeadline(time.Now().Add(c.h.nodeTimeout))
	greeting, _, err := n.readResp()
	if err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !hasPrefixFold(greeting, "* OK") {
		return nil, fmt.Errorf("greeting %q", greeting)
	}
	n.noteCaps(greeting)
	if r.NodeTLS == proxy.NodeTLSStartTLS {
		if n.capsKnown && !n.has("STARTTLS") {
			return nil, errors.New("the node does not offer STARTTLS")
		}
		status, rest, err := n.simple("STARTTLS")
		if err != nil {
			return nil, fmt.Errorf("STARTTLS: %w", err)
		}
		if !strings.EqualFold(status, "OK") {
			return nil, fmt.Errorf("STARTTLS refused: %s%s", status, rest)
		}
		if n.r.Buffered() > 0 {
			return nil, errors.New("data behind the node's STARTTLS answer")
		}
		tc := tls.Client(conn, c.core.NodeTLS(r, nd))
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("STARTTLS handshake: %w", err)
		}
		n.conn, n.r = tc, newBufReader(tc)
		n.caps, n.capsKnown = nil, false // capabilities before TLS do not count
	}
	if !n.capsKnown {
		if status, rest, err := n.simple("CAPABILITY"); err != nil {
			return nil, fmt.Errorf("CAPABILITY: %w", err)
		} else if !strings.EqualFold(status, "OK") {
			return nil, fmt.Errorf("CAPABILITY refused: %s%s", status, rest)
		}
	}
	if !n.has("AUTH=PLAIN") && n.has("LOGINDISABLED") {
		return nil, errors.New("the node refuses logins (LOGINDISABLED, no AUTH=PLAIN)")
	}
	if r.ClientAddr == proxy.ClientAddrID && n.has("ID") {
		status, rest, err := n.simple(idCommand(c.s.Client, c.s.Local))
		if err != nil {
			return nil, fmt.Errorf("ID: %w", err)
		}
		if !strings.EqualFold(status, "OK") {
			c.log.Warn("imap: the node refused ID with the client's address", "node", nd.Name, "answer", status+rest)
		}
	}
	ok = true
	return n, nil
}

// idCommand passes the client's address the way Dovecot reads it.
func idCommand(client, local netip.AddrPort) string {
	q := func(s string) string { return quote([]byte(s)) }
	return fmt.Sprintf("ID (%s %s %s %s %s %s %s %s)",
		q("x-originating-ip"), q(client.Addr().WithZone("").String()),
		q("x-originating-port"), q(strconv.Itoa(int(client.Port()))),
		q("x-connected-ip"), q(local.Addr().WithZone("").String()),
		q("x-connected-port"), q(strconv.Itoa(int(local.Port()))))
}

// readLine reads one line with its line end, at most maxNodeLine bytes.
func readLine(r *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > limit {
			return nil, errors.New("line too long")
		}
		if err == nil {
			return line, nil
		}
		if err != bufio.ErrBufferFull {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

func trimEOL(b []byte) string { return strings.TrimRight(string(b), "\r\n") }

// readResp reads one response: its first line (without CRLF) and its
// raw bytes, literals of untagged responses included.
func (n *node) readResp() (first string, raw []byte, err error) {
	raw, err = readLine(n.r, maxNodeLine)
	if err != nil {
		return "", nil, err
	}
	first = trimEOL(raw)
	if !strings.HasPrefix(first, "* ") {
		return first, raw, nil
	}
	for cur := first; ; {
		size, _, ok := trailingLiteral([]byte(cur))
		if !ok {
			return first, raw, nil
		}
		if len(raw)+size > maxNodeResponse {
			return "", nil, errors.New("response too long")
		}
		lit := make([]byte, size)
		if _, err := io.ReadFull(n.r, lit); err != nil {
			return "", nil, err
		}
		next, err := readLine(n.r, maxNodeLine)
		if err != nil {
			return "", nil, err
		}
		raw = append(append(raw, lit...), next...)
		cur = trimEOL(next)
	}
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// tagged splits a response tagged tag into its status word and the rest
// (from the space after the status on, or empty).
func tagged(line, tag string) (status, rest string, ok bool) {
	if !strings.HasPrefix(line, tag+" ") {
		return "", "", false
	}
	status, rest, _ = strings.Cut(line[len(tag)+1:], " ")
	if rest != "" || strings.HasSuffix(line, " ") {
		rest = " " + rest
	}
	return status, rest, true
}

func isCapabilityLine(raw []byte) bool { return hasPrefixFold(string(raw), "* CAPABILITY ") }

func isBye(raw []byte) bool { return hasPrefixFold(string(raw), "* BYE") }

// capsCode returns the list of a "[CAPABILITY ...]" response code at the
// start of rest (" [CAPABILITY a b] text"), and where the list sits.
func capsCode(rest string) (caps []string, start, end int, ok bool) {
	const code = " [CAPABILITY "
	if !hasPrefixFold(rest, code) {
		return nil, 0, 0, false
	}
	close := strings.IndexByte(rest, ']')
	if close < 0 {
		return nil, 0, 0, false
	}
	return strings.Fields(rest[len(code):close]), len(code), close, true
}

// noteCaps takes the capabilities from an untagged response
// ("* CAPABILITY ..." or "* OK [CAPABILITY ...] ...").
func (n *node) noteCaps(line string) {
	if hasPrefixFold(line, "* CAPABILITY ") {
		n.caps, n.capsKnown = strings.Fields(line[len("* CAPABILITY "):]), true
		return
	}
	if _, rest, ok := tagged(line, "*"); ok {
		if caps, _, _, ok := capsCode(rest); ok {
			n.caps, n.capsKnown = caps, true
		}
	}
}

// simple runs a command that needs no continuation and returns its
// tagged status; untagged answers only feed the capabilities.
func (n *node) simple(cmd string) (status, rest string, err error) {
	tag := n.nextTag()
	if err := n.send(tag + " " + cmd + "\r\n"); err != nil {
		return "", "", err
	}
	for {
		line, _, err := n.readResp()
		if err != nil {
			return "", "", err
		}
		if status, rest, ok := tagged(line, tag); ok {
			if caps, _, _, ok := capsCode(rest); ok && strings.EqualFold(status, "OK") {
				n.caps, n.capsKnown = caps, true
			}
			return status, rest, nil
		}
		if hasPrefixFold(line, "* BYE") {
			return "", "", fmt.Errorf("the node said %q", line)
		}
		if !strings.HasPrefix(line, "* ") {
			return "", "", fmt.Errorf("unexpected %q", line)
		}
		n.noteCaps(line)
	}
}

// answer is a node's answer to the login.
type answer struct {
	ok       bool
	status   string   // the status word as the node sent it
	rest     string   // what follows it, from the space on
	untagged [][]byte // untagged responses before it, raw
	// islandCaps replace the capabilities the node announced (setCaps).
	islandCaps []string
}

// caps are the capabilities the node announced with its answer: the
// response code, else an untagged CAPABILITY; nil if neither.
func (a *answer) caps() []string {
	if caps, _, _, ok := capsCode(a.rest); ok {
		return caps
	}
	var caps []string
	for _, l := range a.untagged {
		if isCapabilityLine(l) {
			caps = strings.Fields(trimEOL(l)[len("* CAPABILITY "):])
		}
	}
	return caps
}

// setCaps replaces the announced capabilities, keeping the node's text.
func (a *answer) setCaps(caps []string) {
	if caps == nil {
		caps = []string{}
	}
	a.islandCaps = caps
	if _, start, end, ok := capsCode(a.rest); ok {
		a.rest = a.rest[:start] + strings.Join(caps, " ") + a.rest[end:]
	}
}

// login replays the client's login on the node: AUTHENTICATE PLAIN when
// the node offers it (with SASL-IR if it has it), LOGIN otherwise.
// An error means the connection failed (or, errAuthzUnsupported, that
// nothing was sent).
func (n *node) login(authz, user, pass []byte) (*answer, error) {
	tag := n.nextTag()
	if n.has("AUTH=PLAIN") {
		msg := make([]byte, 0, len(authz)+len(user)+len(pass)+2)
		msg = append(append(append(append(append(msg, authz...), 0), user...), 0), pass...)
		b64 := base64.StdEncoding.EncodeToString(msg)
		if n.has("SASL-IR") {
			if err := n.send(tag + " AUTHENTICATE PLAIN " + b64 + "\r\n"); err != nil {
				return nil, err
			}
			return n.finish(tag, true, nil)
		}
		if err := n.send(tag + " AUTHENTICATE PLAIN\r\n"); err != nil {
			return nil, err
		}
		a := &answer{}
		if done, err := n.await(tag, a); err != nil || done {
			return a, err
		}
		if err := n.send(b64 + "\r\n"); err != nil {
			return nil, err
		}
		return n.finish(tag, true, a)
	}
	if len(authz) > 0 {
		return nil, errAuthzUnsupported
	}
	a := &answer{}
	out := []byte(tag + " LOGIN")
	for _, s := range [][]byte{user, pass} {
		out = append(out, ' ')
		switch {
		case quotable(s):
			out = append(out, quote(s)...)
		case n.has("LITERAL+") || (n.has("LITERAL-") && len(s) <= 4096):
			out = append(out, "{"+strconv.Itoa(len(s))+"+}\r\n"...)
			out = append(out, s...)
		default:
			out = append(out, "{"+strconv.Itoa(len(s))+"}\r\n"...)
			if _, err := n.conn.Write(out); err != nil {
				return nil, err
			}
			if done, err := n.await(tag, a); err != nil || done {
				return a, err
			}
			out = append(out[:0], s...)
		}
	}
	out = append(out, "\r\n"...)
	if _, err := n.conn.Write(out); err != nil {
		return nil, err
	}
	return n.finish(tag, false, a)
}

// await reads up to a continuation request (false) or the tagged answer
// (true, a filled in).
func (n *node) await(tag string, a *answer) (done bool, err error) {
	for {
		line, raw, err := n.readResp()
		if err != nil {
			return false, err
		}
		if strings.HasPrefix(line, "+") {
			return false, nil
		}
		if done, err := n.final(line, raw, tag, a); err != nil || done {
			return done, err
		}
	}
}

// finish reads up to the tagged answer. A further continuation request
// is cancelled ("*") when sasl, and an error otherwise.
func (n *node) finish(tag string, sasl bool, a *answer) (*answer, error) {
	if a == nil {
		a = &answer{}
	}
	size := 0
	for {
		line, raw, err := n.readResp()
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(line, "+") {
			if !sasl {
				return nil, fmt.Errorf("unexpected continuation %q", line)
			}
			if err := n.send("*\r\n"); err != nil {
				return nil, err
			}
			continue
		}
		if size += len(raw); size > maxNodeResponse {
			return nil, errors.New("too much before the login answer")
		}
		if done, err := n.final(line, raw, tag, a); err != nil || done {
			return a, err
		}
	}
}

// final files one response: the tagged answer (true, checked) or an
// untagged one.
func (n *node) final(line string, raw []byte, tag string, a *answer) (bool, error) {
	if status, rest, ok := tagged(line, tag); ok {
		a.status, a.rest = status, rest
		a.ok = strings.EqualFold(status, "OK")
		return true, a.check()
	}
	if !strings.HasPrefix(line, "* ") {
		return false, fmt.Errorf("unexpected %q", line)
	}
	a.untagged = append(a.untagged, raw)
	return false, nil
}

// check refuses a tagged answer that is not OK, NO or BAD, and an OK
// after an untagged BYE (the node is going away). A BYE before a NO is
// not passed on (untagged drops it): the client's connection stays.
func (a *answer) check() error {
	for _, l := range a.untagged {
		if a.ok && isBye(l) {
			return fmt.Errorf("the node said %q", trimEOL(l))
		}
	}
	switch strings.ToUpper(a.status) {
	case "OK", "NO", "BAD":
		return nil
	}
	return fmt.Errorf("unexpected answer %q", a.status+a.rest)
}
