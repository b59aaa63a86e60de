//go:build linux

package reference

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/atoll-lb/atoll/userspace/netns"
)

// IMAP is a minimal IMAP client for the lab's checks: long-lived sessions
// whose every command must be answered (a session that moved to another
// node, or lost its LB, fails its next command).
type IMAP struct {
	// Greeting is the server's greeting line: a node's names itself
	// ("* OK atoll-test dbmail-left-a ready."), the proxy does not.
	Greeting string
	// Timeout bounds each command (default 10 s).
	Timeout time.Duration

	conn net.Conn
	r    *bufio.Reader
	tag  int
}

// DialIMAP connects from ns to addr and reads the greeting.
func DialIMAP(ctx context.Context, ns *netns.NS, addr string) (*IMAP, error) {
	c, err := ns.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("imap %s: %w", addr, err)
	}
	m := &IMAP{conn: c, r: bufio.NewReader(c), Timeout: 10 * time.Second}
	c.SetDeadline(time.Now().Add(m.Timeout))
	line, err := m.r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("imap %s: greeting: %w", addr, err)
	}
	m.Greeting = strings.TrimRight(line, "\r\n")
	if !strings.HasPrefix(m.Greeting, "* OK") {
		c.Close()
		return nil, fmt.Errorf("imap %s: greeting %q", addr, m.Greeting)
	}
	return m, nil
}

// Node is the node named in the greeting ("" behind the proxy).
func (m *IMAP) Node() string {
	_, rest, ok := strings.Cut(m.Greeting, " atoll-test ")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, " ")
	return name
}

// Cmd sends one command and returns the untagged lines (literals inlined)
// and the tagged status line; a NO or BAD answer is an error.
func (m *IMAP) Cmd(format string, a ...any) ([]string, error) {
	m.tag++
	tag := "a" + strconv.Itoa(m.tag)
	cmd := fmt.Sprintf(format, a...)
	m.conn.SetDeadline(time.Now().Add(m.Timeout))
	if _, err := fmt.Fprintf(m.conn, "%s %s\r\n", tag, cmd); err != nil {
		return nil, fmt.Errorf("imap %s: %w", verb(cmd), err)
	}
	var untagged []string
	for {
		line, err := m.readLine()
		if err != nil {
			return untagged, fmt.Errorf("imap %s: %w", verb(cmd), err)
		}
		if rest, ok := strings.CutPrefix(line, tag+" "); ok {
			if !strings.HasPrefix(rest, "OK") {
				return untagged, fmt.Errorf("imap %s: %s", verb(cmd), rest)
			}
			return untagged, nil
		}
		untagged = append(untagged, line)
	}
}

// readLine reads one response line, with any literals ({n}) inlined.
func (m *IMAP) readLine() (string, error) {
	var b strings.Builder
	for {
		line, err := m.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		line = strings.TrimRight(line, "\r\n")
		b.WriteString(line)
		i := strings.LastIndexByte(line, '{')
		if i < 0 || !strings.HasSuffix(line, "}") {
			return b.String(), nil
		}
		n, err := strconv.Atoi(line[i+1 : len(line)-1])
		if err != nil || n < 0 || n > 1<<20 {
			return b.String(), nil
		}
		lit := make([]byte, n)
		if _, err := io.ReadFull(m.r, lit); err != nil {
			return "", err
		}
		b.Write(lit)
	}
}

func verb(cmd string) string {
	v, _, _ := strings.Cut(cmd, " ")
	return v
}

// Login logs in and selects INBOX.
func (m *IMAP) Login(user, password string) error {
	if _, err := m.Cmd("LOGIN %s %s", quote(user), quote(password)); err != nil {
		return err
	}
	_, err := m.Cmd("SELECT INBOX")
	return err
}

// Search returns the sequence numbers of messages whose subject holds s.
func (m *IMAP) Search(s string) ([]int, error) {
	lines, err := m.Cmd("SEARCH SUBJECT %s", quote(s))
	if err != nil {
		return nil, err
	}
	var seqs []int
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, "* SEARCH"); ok {
			for _, f := range strings.Fields(rest) {
				if n, err := strconv.Atoi(f); err == nil {
					seqs = append(seqs, n)
				}
			}
		}
	}
	return seqs, nil
}

// Noop proves the session is alive.
func (m *IMAP) Noop() error {
	_, err := m.Cmd("NOOP")
	return err
}

// Close logs out (best effort) and closes the connection.
func (m *IMAP) Close() error {
	m.conn.SetDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(m.conn, "z LOGOUT\r\n")
	return m.conn.Close()
}

// Abort closes the connection without a word.
func (m *IMAP) Abort() error { return m.conn.Close() }

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// POP3Messages logs in over POP3 from ns at addr and returns the greeting
// and every message (RETR, dot-unstuffed).
func POP3Messages(ctx context.Context, ns *netns.NS, addr, user, password string) (string, []string, error) {
	c, err := ns.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("pop3 %s: %w", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	r := bufio.NewReader(c)
	read := func() (string, error) {
		l, err := r.ReadString('\n')
		l = strings.TrimRight(l, "\r\n")
		if err == nil && !strings.HasPrefix(l, "+OK") {
			err = fmt.Errorf("%q", l)
		}
		return l, err
	}
	greet, err := read()
	if err != nil {
		return "", nil, fmt.Errorf("pop3 %s: greeting: %w", addr, err)
	}
	cmd := func(format string, a ...any) (string, error) {
		if _, err := fmt.Fprintf(c, format+"\r\n", a...); err != nil {
			return "", err
		}
		l, err := read()
		if err != nil {
			return "", fmt.Errorf("pop3 %s: %s: %w", addr, verb(format), err)
		}
		return l, nil
	}
	if _, err := cmd("USER %s", user); err != nil {
		return greet, nil, err
	}
	if _, err := cmd("PASS %s", password); err != nil {
		return greet, nil, err
	}
	st, err := cmd("STAT")
	if err != nil {
		return greet, nil, err
	}
	var n int
	if f := strings.Fields(st); len(f) >= 2 {
		n, _ = strconv.Atoi(f[1])
	}
	var msgs []string
	for i := 1; i <= n; i++ {
		if _, err := cmd("RETR %d", i); err != nil {
			return greet, msgs, err
		}
		var b strings.Builder
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return greet, msgs, fmt.Errorf("pop3 %s: RETR %d: %w", addr, i, err)
			}
			l = strings.TrimRight(l, "\r\n")
			if l == "." {
				break
			}
			b.WriteString(strings.TrimPrefix(l, ".") + "\n")
		}
		msgs = append(msgs, b.String())
	}
	cmd("QUIT")
	return greet, msgs, nil
}
