package imap

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// fakeNode is a scripted IMAP server: it records every command it gets,
// raw (literal bytes and AUTHENTICATE continuations included).
type fakeNode struct {
	t    *testing.T
	ln   net.Listener
	addr string

	// greeting is the first line (default: OK with capabilities caps).
	greeting string
	// caps answer CAPABILITY.
	caps string
	// idAnswer answers ID after the tag (default "OK ID completed.").
	idAnswer string
	// loginAnswer answers LOGIN and AUTHENTICATE after the tag ("": the
	// node hangs up instead); before can hold untagged lines sent ahead
	// of it.
	loginAnswer, before string
	hangUp              bool

	mu      sync.Mutex
	got     []string // every command, raw, without its final CRLF
	remotes []string // RemoteAddr / LocalAddr of each connection
	locals  []string
	wg      sync.WaitGroup
}

type fakeOpt func(*fakeNode)

func withCaps(caps string) fakeOpt { return func(f *fakeNode) { f.caps = caps } }
func withGreeting(g string) fakeOpt {
	return func(f *fakeNode) { f.greeting = g }
}
func withLogin(ans string) fakeOpt {
	return func(f *fakeNode) { f.loginAnswer, f.hangUp = ans, ans == "" }
}
func withBefore(lines string) fakeOpt { return func(f *fakeNode) { f.before = lines } }
func withID(ans string) fakeOpt       { return func(f *fakeNode) { f.idAnswer = ans } }

// startFakeNode listens on loopback; with proxyHeader it expects a PROXY
// header first (go-proxyproto) and records the addresses it carries.
func startFakeNode(t *testing.T, proxyHeader bool, opts ...fakeOpt) *fakeNode {
	t.Helper()
	f := &fakeNode{t: t, caps: "IMAP4rev1 SASL-IR ID AUTH=PLAIN LITERAL+", idAnswer: "OK ID completed."}
	for _, o := range opts {
		o(f)
	}
	if f.loginAnswer == "" && !f.hangUp {
		f.loginAnswer = "OK [CAPABILITY IMAP4rev1 IDLE] Logged in"
	}
	if f.greeting == "" {
		f.greeting = "* OK [CAPABILITY " + f.caps + "] fake ready."
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	if proxyHeader {
		// The default policy requires the header.
		ln = &proxyproto.Listener{Listener: ln}
	}
	f.ln = ln
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Go(func() { f.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		f.wg.Wait()
	})
	return f
}

func (f *fakeNode) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.got...)
}

func (f *fakeNode) serve(c net.Conn) {
	defer c.Close()
	// Reading the PROXY header happens on the first read.
	r := bufio.NewReader(c)
	if _, err := io.WriteString(c, f.greeting+"\r\n"); err != nil {
		return
	}
	f.mu.Lock()
	f.remotes = append(f.remotes, c.RemoteAddr().String())
	f.locals = append(f.locals, c.LocalAddr().String())
	f.mu.Unlock()
	readLine := func() (string, bool) {
		l, err := r.ReadString('\n')
		if err != nil {
			return "", false
		}
		return strings.TrimRight(l, "\r\n"), true
	}
	for {
		line, ok := readLine()
		if !ok {
			return
		}
		raw, first := line, line
		// Literals: read their bytes (asking for them when synchronizing).
		for {
			n, sync, ok := trailingLiteral([]byte(line))
			if !ok {
				break
			}
			if sync {
				io.WriteString(c, "+ go ahead\r\n")
			}
			buf := make([]byte, n)
			if _, err := io.ReadFull(r, buf); err != nil {
				return
			}
			if line, ok = readLine(); !ok {
				return
			}
			raw += "\r\n" + string(buf) + line
		}
		f2 := strings.Fields(first)
		tag, name := "", ""
		if len(f2) > 0 {
			tag = f2[0]
		}
		if len(f2) > 1 {
			name = strings.ToUpper(f2[1])
		}
		if name == "AUTHENTICATE" && len(f2) == 3 {
			io.WriteString(c, "+ \r\n")
			resp, ok := readLine()
			if !ok {
				return
			}
			raw += "\r\n" + resp
		}
		f.mu.Lock()
		f.got = append(f.got, raw)
		f.mu.Unlock()
		var out string
		switch name {
		case "CAPABILITY":
			out = "* CAPABILITY " + f.caps + "\r\n" + tag + " OK Capability completed.\r\n"
		case "ID":
			out = "* ID NIL\r\n" + tag + " " + f.idAnswer + "\r\n"
		case "LOGIN", "AUTHENTICATE":
			if f.hangUp {
				return
			}
			out = f.before + tag + " " + f.loginAnswer + "\r\n"
		case "LOGOUT":
			io.WriteString(c, "* BYE bye\r\n"+tag+" OK Logout completed.\r\n")
			return
		default:
			out = tag + " OK " + name + " done by " + f.addr + "\r\n"
		}
		if _, err := io.WriteString(c, out); err != nil {
			return
		}
	}
}

// literalArg renders s as the proxy sends it in a literal.
func literalArg(s string, plus bool) string {
	p := ""
	if plus {
		p = "+"
	}
	return "{" + strconv.Itoa(len(s)) + p + "}\r\n" + s
}
