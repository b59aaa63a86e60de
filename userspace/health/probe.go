// Package health checks mail nodes the way a client would: it connects
// (through the VIP when the control plane's Dialer sets SO_MARK), reads
// the greeting, optionally upgrades to TLS, and says goodbye properly, so
// a node that accepts TCP but is not serving mail is found DOWN. Monitor
// runs such probes on a set of targets with rise/fall hysteresis and
// reports state changes.
package health

import (
	proxyproto "github.com/pires/go-proxyproto"

	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Kind is the protocol a probe speaks.
type Kind string

const (
	KindTCP  Kind = "tcp"  // connect (and TLS handshake if implicit) and close
	KindIMAP Kind = "imap" // greeting "* OK", [STARTTLS], LOGOUT
	KindPOP3 Kind = "pop3" // greeting "+OK", [STLS], QUIT
	KindLMTP Kind = "lmtp" // greeting 220, LHLO, [STARTTLS, LHLO], QUIT
)

// TLSMode says whether and how a probe uses TLS.
type TLSMode string

const (
	TLSNone     TLSMode = "none"     // plaintext ("" means the same)
	TLSImplicit TLSMode = "implicit" // handshake right after connect (imaps, pop3s)
	TLSStartTLS TLSMode = "starttls" // STARTTLS / STLS after the greeting
)

// Dialer opens the probe's TCP connection.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// DefaultTimeout bounds a check whose Probe.Timeout is 0.
const DefaultTimeout = 5 * time.Second

const (
	maxLine = 8 << 10  // longest line a server may send
	maxRead = 64 << 10 // most bytes read from the server in one check
)

// Probe describes one kind of check. The zero TLS mode is TLSNone.
type Probe struct {
	Kind Kind
	TLS  TLSMode
	// TLSConfig for the handshake; nil means system roots. An empty
	// ServerName is set to the host part of the checked address (an IP
	// address is then verified against the certificate's IP SANs).
	TLSConfig *tls.Config
	// Timeout bounds the whole check, connect included (0: DefaultTimeout).
	Timeout time.Duration
	// Dialer opens the connection; nil means a plain net.Dialer.
	Dialer Dialer
	// ProxyHeader sends a PROXY protocol v2 LOCAL header first, as a
	// listener that expects the header from the proxy (HAProxy's
	// `send-proxy-v2` health checks do the same) needs.
	ProxyHeader bool
}

// Validate reports a probe that cannot run.
func (p Probe) Validate() error {
	switch p.Kind {
	case KindTCP, KindIMAP, KindPOP3, KindLMTP:
	default:
		return fmt.Errorf("health: unknown probe kind %q", p.Kind)
	}
	switch p.TLS {
	case "", TLSNone, TLSImplicit:
	case TLSStartTLS:
		if p.Kind == KindTCP {
			return errors.New("health: a tcp probe cannot use STARTTLS")
		}
	default:
		return fmt.Errorf("health: unknown TLS mode %q", p.TLS)
	}
	if p.Timeout < 0 {
		return fmt.Errorf("health: negative timeout %v", p.Timeout)
	}
	return nil
}

// Check runs one probe against addr (host:port). It returns how long the
// check took and nil, or an error that says in a sentence what went wrong
// ("no greeting within 1s", `greeting "* BYE shutting down" is not "* OK"`,
// "TLS handshake: ..."). Errors wrap the underlying cause where there is
// one (errors.Is(err, os.ErrDeadlineExceeded), syscall.ECONNREFUSED, …).
func (p Probe) Check(ctx context.Context, addr string) (time.Duration, error) {
	start := time.Now()
	err := p.check(ctx, addr)
	return time.Since(start), err
}

// checkError is an error whose message is a whole sentence and which
// still unwraps to its cause.
type checkError struct {
	msg string
	err error
}

func (e *checkError) Error() string { return e.msg }
func (e *checkError) Unwrap() error { return e.err }

func errorf(cause error, format string, a ...any) error {
	return &checkError{msg: fmt.Sprintf(format, a...), err: cause}
}

// timedOut makes a timeout's cause unwrap to os.ErrDeadlineExceeded, however
// it surfaced (deadline on the socket, context in a dial or handshake).
func timedOut(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return errors.Join(os.ErrDeadlineExceeded, err)
}

func (p Probe) check(ctx context.Context, addr string) error {
	if err := p.Validate(); err != nil {
		return err
	}
	timeout := p.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	budget := timeout
	if dl, ok := parent.Deadline(); ok && time.Until(dl) < budget {
		budget = max(time.Until(dl), 0).Round(time.Millisecond)
	}
	s := &session{ctx: ctx, parent: parent, budget: budget, addr: addr, probe: p}

	var dialer Dialer = p.Dialer
	if dialer == nil {
		dialer = &net.Dialer{}
	}
	raw, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		switch {
		case errors.Is(parent.Err(), context.Canceled):
			return errorf(parent.Err(), "check cancelled while connecting")
		case ctx.Err() != nil:
			return errorf(timedOut(err), "no connection within %v: %v", budget, err)
		}
		reason := err.Error()
		if se := (*os.SyscallError)(nil); errors.As(err, &se) {
			reason = se.Err.Error() // "connection refused", not "dial tcp …: connect: …"
		}
		return errorf(err, "connect to %s: %s", addr, reason)
	}
	defer raw.Close()
	// The deadline covers everything; a cancelled ctx ends reads at once.
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	s.raw = &limitedConn{Conn: raw, left: maxRead}
	s.conn = s.raw
	s.br = bufio.NewReaderSize(s.conn, maxLine)
	if p.ProxyHeader {
		hdr := proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
		if _, err := hdr.WriteTo(raw); err != nil {
			return errorf(err, "sending the PROXY header: %v", err)
		}
	}

	if p.TLS == TLSImplicit {
		if err := s.handshake(); err != nil {
			return err
		}
	}
	switch p.Kind {
	case KindTCP:
		return nil
	case KindIMAP:
		return s.imap()
	case KindPOP3:
		return s.pop3()
	case KindLMTP:
		return s.lmtp()
	}
	return nil
}

// session is one check's connection.
type session struct {
	ctx, parent context.Context
	budget      time.Duration
	addr        string
	probe       Probe

	raw  *limitedConn
	conn net.Conn // raw, or TLS over raw
	br   *bufio.Reader
}

// limitedConn fails reads once the check has read maxRead bytes.
type limitedConn struct {
	net.Conn
	left int
}

var errTooMuch = fmt.Errorf("server sent more than %d KiB", maxRead>>10)

func (c *limitedConn) Read(b []byte) (int, error) {
	if c.left <= 0 {
		return 0, errTooMuch
	}
	if len(b) > c.left {
		b = b[:c.left]
	}
	n, err := c.Conn.Read(b)
	c.left -= n
	return n, err
}

// cancelled reports whether the caller cancelled the check (as opposed to
// a deadline, the caller's or the probe's, passing).
func (s *session) cancelled() bool { return errors.Is(s.parent.Err(), context.Canceled) }

// describe turns an I/O error while waiting for what into a sentence.
func (s *session) describe(err error, what string) error {
	var ne net.Error
	switch {
	case s.cancelled():
		return errorf(s.parent.Err(), "check cancelled while waiting for the %s", what)
	case errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) || s.ctx.Err() != nil:
		return errorf(timedOut(err), "no %s within %v", what, s.budget)
	case errors.Is(err, io.EOF):
		return errorf(err, "connection closed before the %s", what)
	case errors.Is(err, bufio.ErrBufferFull):
		return errorf(err, "line longer than %d KiB in the %s", maxLine>>10, what)
	case errors.Is(err, errTooMuch):
		return errorf(err, "%v (reading the %s)", err, what)
	default:
		return errorf(err, "reading the %s: %v", what, err)
	}
}

// readLine reads one line (without CR LF).
func (s *session) readLine(what string) (string, error) {
	b, err := s.br.ReadSlice('\n')
	if err != nil {
		return "", s.describe(err, what)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func (s *session) send(line string) error {
	if _, err := io.WriteString(s.conn, line+"\r\n"); err != nil {
		var ne net.Error
		if !s.cancelled() && (errors.As(err, &ne) && ne.Timeout()) {
			return errorf(timedOut(err), "could not send %s within %v", firstWord(line), s.budget)
		}
		return errorf(err, "sending %s: %v", firstWord(line), err)
	}
	return nil
}

func firstWord(line string) string {
	f := strings.Fields(line)
	if len(f) >= 2 && (f[0] == "a" || f[0] == "z") { // IMAP tag
		return f[1]
	}
	if len(f) > 0 {
		return f[0]
	}
	return "command"
}

// quote shortens a server line for an error message.
func quote(line string) string {
	const max = 120
	if len(line) > max {
		line = line[:max] + "…"
	}
	return strconv.Quote(line)
}

// handshake runs the TLS handshake on the raw connection. Bytes the server
// sent before it (after a STARTTLS answer) are refused: they would be
// taken as coming over TLS (the CVE-2011-0411 class).
func (s *session) handshake() error {
	if s.br.Buffered() > 0 {
		return errorf(nil, "server sent %d bytes after accepting STARTTLS, before the TLS handshake", s.br.Buffered())
	}
	var conf *tls.Config
	if s.probe.TLSConfig != nil {
		conf = s.probe.TLSConfig.Clone()
	} else {
		conf = &tls.Config{}
	}
	if conf.ServerName == "" {
		host, _, err := net.SplitHostPort(s.addr)
		if err != nil {
			host = s.addr
		}
		conf.ServerName = host
	}
	tc := tls.Client(s.raw, conf)
	if err := tc.HandshakeContext(s.ctx); err != nil {
		if s.cancelled() {
			return errorf(s.parent.Err(), "check cancelled during the TLS handshake")
		}
		var ne net.Error
		if s.ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
			return errorf(timedOut(err), "no TLS handshake within %v", s.budget)
		}
		return errorf(err, "TLS handshake: %v", err)
	}
	s.conn = tc
	s.br = bufio.NewReaderSize(tc, maxLine)
	return nil
}

// okPrefix reports whether line starts with the status word (IMAP and
// POP3 keywords are case-insensitive) followed by a space or the end.
func okPrefix(line, word string) bool {
	if len(line) < len(word) || !strings.EqualFold(line[:len(word)], word) {
		return false
	}
	return len(line) == len(word) || line[len(word)] == ' '
}

// imapTagged reads lines until the one tagged tag, skipping untagged ones;
// it reports whether an untagged "* BYE" came before it.
func (s *session) imapTagged(tag, what string) (line string, bye bool, err error) {
	for {
		l, err := s.readLine(what)
		if err != nil {
			return "", bye, err
		}
		if okPrefix(l, tag) {
			return l, bye, nil
		}
		if okPrefix(l, "* BYE") {
			bye = true
		}
	}
}

func (s *session) imap() error {
	g, err := s.readLine("greeting")
	if err != nil {
		return err
	}
	if !okPrefix(g, "* OK") {
		return errorf(nil, "greeting %s is not \"* OK\"", quote(g))
	}
	if s.probe.TLS == TLSStartTLS {
		if err := s.send("a STARTTLS"); err != nil {
			return err
		}
		l, _, err := s.imapTagged("a", "answer to STARTTLS")
		if err != nil {
			return err
		}
		if !okPrefix(l, "a OK") {
			return errorf(nil, "STARTTLS refused: %s", quote(l))
		}
		if err := s.handshake(); err != nil {
			return err
		}
	}
	if err := s.send("z LOGOUT"); err != nil {
		return err
	}
	l, bye, err := s.imapTagged("z", "answer to LOGOUT")
	if err != nil {
		return err
	}
	if !okPrefix(l, "z OK") {
		return errorf(nil, "LOGOUT answered %s", quote(l))
	}
	if !bye {
		return errorf(nil, "LOGOUT answered %s without \"* BYE\" first", quote(l))
	}
	return nil
}

func (s *session) pop3() error {
	g, err := s.readLine("greeting")
	if err != nil {
		return err
	}
	if !okPrefix(g, "+OK") {
		return errorf(nil, "greeting %s is not \"+OK\"", quote(g))
	}
	if s.probe.TLS == TLSStartTLS {
		if err := s.send("STLS"); err != nil {
			return err
		}
		l, err := s.readLine("answer to STLS")
		if err != nil {
			return err
		}
		if !okPrefix(l, "+OK") {
			return errorf(nil, "STLS refused: %s", quote(l))
		}
		if err := s.handshake(); err != nil {
			return err
		}
	}
	if err := s.send("QUIT"); err != nil {
		return err
	}
	l, err := s.readLine("answer to QUIT")
	if err != nil {
		return err
	}
	if !okPrefix(l, "+OK") {
		return errorf(nil, "QUIT answered %s", quote(l))
	}
	return nil
}

// smtpReply reads a (multi-line) SMTP/LMTP reply: "ddd-text" lines then
// "ddd text" (or "ddd"). It returns the code and the last line.
func (s *session) smtpReply(what string) (int, string, error) {
	code := -1
	for {
		l, err := s.readLine(what)
		if err != nil {
			return 0, "", err
		}
		if len(l) < 3 || (len(l) > 3 && l[3] != ' ' && l[3] != '-') {
			return 0, "", errorf(nil, "malformed line %s in the %s", quote(l), what)
		}
		c, err := strconv.Atoi(l[:3])
		if err != nil || c < 100 || c > 599 {
			return 0, "", errorf(nil, "malformed line %s in the %s", quote(l), what)
		}
		if code >= 0 && c != code {
			return 0, "", errorf(nil, "reply code changes from %d to %d at %s in the %s", code, c, quote(l), what)
		}
		code = c
		if len(l) == 3 || l[3] == ' ' {
			return code, l, nil
		}
	}
}

// lmtpCommand sends cmd and reads its reply.
func (s *session) lmtpCommand(cmd string) (int, string, error) {
	if err := s.send(cmd); err != nil {
		return 0, "", err
	}
	return s.smtpReply("answer to " + firstWord(cmd))
}

// lhlo sends LHLO and wants 250.
func (s *session) lhlo() error {
	code, last, err := s.lmtpCommand("LHLO atoll-health")
	if err != nil {
		return err
	}
	if code != 250 {
		return errorf(nil, "LHLO answered %s", quote(last))
	}
	return nil
}

func (s *session) lmtp() error {
	code, last, err := s.smtpReply("greeting")
	if err != nil {
		return err
	}
	if code != 220 {
		return errorf(nil, "greeting %s is not 220", quote(last))
	}
	if err := s.lhlo(); err != nil {
		return err
	}
	if s.probe.TLS == TLSStartTLS {
		code, last, err := s.lmtpCommand("STARTTLS")
		if err != nil {
			return err
		}
		if code != 220 {
			return errorf(nil, "STARTTLS refused: %s", quote(last))
		}
		if err := s.handshake(); err != nil {
			return err
		}
		if err := s.lhlo(); err != nil {
			return err
		}
	}
	code, last, err = s.lmtpCommand("QUIT")
	if err != nil {
		return err
	}
	if code != 221 {
		return errorf(nil, "QUIT answered %s", quote(last))
	}
	return nil
}
