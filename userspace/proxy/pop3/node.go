package pop3

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/atoll-lb/atoll/userspace/proxy"
)

// maxNodeLine bounds a line read from a node before the relay.
const maxNodeLine = 8192

// nodeConn is a node connection after the login was replayed on it.
type nodeConn struct {
	node   proxy.Node
	conn   net.Conn      // plain or TLS
	r      *bufio.Reader // may hold bytes past the answer
	answer string        // the node's answer to the login, without CRLF
}

// errAfterCredentials marks a failure once the password was sent: the
// login is not tried on another node (it may have counted on this one).
type errAfterCredentials struct{ err error }

func (e errAfterCredentials) Error() string {
	return "after the credentials were sent: " + e.err.Error()
}
func (e errAfterCredentials) Unwrap() error { return e.err }

// loginNode tries r's nodes in order until one answers the login with
// +OK or -ERR. A node that cannot be reached, does not greet with +OK or
// fails before the credentials were sent is skipped; a failure after the
// credentials were sent ends the attempt.
func (h *Handler) loginNode(ctx context.Context, core *proxy.Core, s *proxy.Session, r *proxy.Route, pass string, log *slog.Logger) (*nodeConn, error) {
	var errs []error
	for _, n := range r.Nodes {
		nc, err := h.tryNode(ctx, core, s, r, n, pass)
		if err == nil {
			return nc, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Warn("pop3: node failed during login", "node", n.Name, "addr", n.Addr, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
		if _, ok := errors.AsType[errAfterCredentials](err); ok {
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("pop3: the route lists no node")
	}
	return nil, errors.Join(errs...)
}

// tryNode replays the login on node n.
func (h *Handler) tryNode(ctx context.Context, core *proxy.Core, s *proxy.Session, r *proxy.Route, n proxy.Node, pass string) (_ *nodeConn, err error) {
	conn, err := core.Dial(ctx, r, n, s.Client, s.Local)
	if err != nil {
		return nil, err
	}
	// Until the relay starts, the server stopping cuts the node too.
	raw := conn
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	t := &nodeText{conn: conn, r: bufio.NewReaderSize(conn, maxNodeLine), timeout: h.nodeTimeout()}

	greeting, err := t.line()
	if err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(greeting, "+OK") {
		return nil, fmt.Errorf("greeting %q", greeting)
	}
	if r.NodeTLS == proxy.NodeTLSStartTLS {
		ans, err := t.cmd("STLS")
		if err != nil {
			return nil, fmt.Errorf("STLS: %w", err)
		}
		if !strings.HasPrefix(ans, "+OK") {
			return nil, fmt.Errorf("STLS refused: %q", ans)
		}
		if t.r.Buffered() > 0 {
			return nil, errors.New("STLS: node sent data before the TLS handshake")
		}
		tc := tls.Client(conn, core.NodeTLS(r, n))
		tc.SetDeadline(time.Now().Add(t.timeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("STLS handshake: %w", err)
		}
		conn = tc
		t = &nodeText{conn: tc, r: bufio.NewReaderSize(tc, maxNodeLine), timeout: t.timeout}
	}
	caps, err := t.capa()
	if err != nil {
		return nil, fmt.Errorf("CAPA: %w", err)
	}

	var answer string
	if hasSASL(caps, "PLAIN") {
		if answer, err = t.cmd("AUTH PLAIN " + encodePlain("", r.NodeUser, pass)); err != nil {
			return nil, errAfterCredentials{err}
		}
		if answer == "+" || strings.HasPrefix(answer, "+ ") {
			// A challenge for a mechanism that has none: cancel.
			t.cmd("*")
			return nil, errAfterCredentials{fmt.Errorf("unexpected AUTH challenge %q", answer)}
		}
	} else {
		if answer, err = t.cmd("USER " + r.NodeUser); err != nil {
			return nil, fmt.Errorf("USER: %w", err)
		}
		if strings.HasPrefix(answer, "+OK") {
			if answer, err = t.cmd("PASS " + pass); err != nil {
				return nil, errAfterCredentials{err}
			}
		}
	}
	if !strings.HasPrefix(answer, "+OK") && !strings.HasPrefix(answer, "-ERR") {
		return nil, errAfterCredentials{fmt.Errorf("login answer %q", answer)}
	}
	return &nodeConn{node: n, conn: conn, r: t.r, answer: answer}, nil
}

// hasSASL reports whether CAPA lines announce SASL mechanism mech.
func hasSASL(caps []string, mech string) bool {
	for _, l := range caps {
		f := strings.Fields(l)
		if len(f) > 1 && strings.EqualFold(f[0], "SASL") {
			for _, m := range f[1:] {
				if strings.EqualFold(m, mech) {
					return true
				}
			}
		}
	}
	return false
}

// nodeText is the line-oriented exchange with a node before the relay.
type nodeText struct {
	conn    net.Conn
	r       *bufio.Reader
	timeout time.Duration
}

func (t *nodeText) line() (string, error) {
	t.conn.SetDeadline(time.Now().Add(t.timeout))
	b, err := t.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", errors.New("line too long")
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	return string(trimEOL(b)), nil
}

func (t *nodeText) cmd(c string) (string, error) {
	t.conn.SetDeadline(time.Now().Add(t.timeout))
	if _, err := io.WriteString(t.conn, c+"\r\n"); err != nil {
		return "", err
	}
	return t.line()
}

// capa asks for the node's capabilities; a node without CAPA (-ERR) has
// none worth knowing.
func (t *nodeText) capa() ([]string, error) {
	first, err := t.cmd("CAPA")
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(first, "+OK") {
		return nil, nil
	}
	var caps []string
	for {
		l, err := t.line()
		if err != nil {
			return nil, err
		}
		if l == "." {
			return caps, nil
		}
		if len(caps) > 256 {
			return nil, errors.New("endless CAPA answer")
		}
		caps = append(caps, strings.TrimPrefix(l, "."))
	}
}
