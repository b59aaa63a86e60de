package imap

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/proxy"
)

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := peer.Binary(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// run runs a command bounded by a timeout and returns its stdout.
func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(cmd.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %q: %v\nstdout:\n%s\nstderr:\n%s", name, args, err, out.String(), errb.String())
	}
	return out.String()
}

// The script logs in four ways (LOGIN with a quoted password, LOGIN with
// the password as a synchronizing literal, ASCII and UTF-8, AUTHENTICATE
// PLAIN without SASL-IR: imaplib waits for "+"); each time it selects
// INBOX, fetches the newest message and prints the SHA-256 of its bytes.
// A wrong password must fail with AUTHENTICATIONFAILED.
const imaplibScript = `
import hashlib, imaplib, os, sys
host, port = os.environ["HOST"], int(os.environ["PORT"])

def fetch(M):
    typ, _ = M.select("INBOX")
    assert typ == "OK", typ
    typ, data = M.fetch("*", "(BODY.PEEK[])")
    assert typ == "OK", (typ, data)
    body = data[0][1]
    M.logout()
    return hashlib.sha256(body).hexdigest()

out = []
# LOGIN: imaplib quotes the password (spaces, quotes, backslashes).
M = imaplib.IMAP4(host, port)
assert "AUTH=PLAIN" in M.capabilities, M.capabilities
M.login(os.environ["U1"], os.environ["P1"])
out.append(fetch(M))
# LOGIN with the password as a synchronizing literal.
M = imaplib.IMAP4(host, port)
M.literal = os.environ["P1"].encode()
typ, dat = M._simple_command("LOGIN", os.environ["U1"])
assert typ == "OK", (typ, dat)
M.state = "AUTH"
out.append(fetch(M))
# A UTF-8 password as a literal.
M = imaplib.IMAP4(host, port)
M.literal = os.environ["P2"].encode("utf-8")
typ, dat = M._simple_command("LOGIN", os.environ["U2"])
assert typ == "OK", (typ, dat)
M.state = "AUTH"
out.append(fetch(M))
# AUTHENTICATE PLAIN (continuation, no SASL-IR).
M = imaplib.IMAP4(host, port)
u, p = os.environ["U1"], os.environ["P1"]
M.authenticate("PLAIN", lambda _: ("\0" + u + "\0" + p).encode())
out.append(fetch(M))
# A wrong password is refused with the node's answer.
M = imaplib.IMAP4(host, port)
try:
    M.login(u, p + "x")
    sys.exit("wrong password accepted")
except imaplib.IMAP4.error as e:
    assert "AUTHENTICATIONFAILED" in str(e), e
M.logout()
print(" ".join(out))
`

// Test 2: Python's imaplib against the proxy.
func TestPythonImaplib(t *testing.T) {
	t.Parallel()
	py := requireTool(t, "python3")
	d := sharedDovecot(t)
	e := newEnv(t, proxy.Options{}, false)
	e.dovecotIsland("dc", d, proxy.IslandSettings{})
	e.dir.setDef("dc")
	// pyq's password has spaces, quotes and a backslash; pyu's is UTF-8.
	want := map[string]string{}
	for _, u := range []string{"pyq", "pyu"} {
		deliver(t, d, u, "imaplib")
		want[u] = sha(fetchBody(t, directFetch(t, imapAddr(d), u, dovecotUsers[u], "*")))
	}
	host, port, _ := net.SplitHostPort(e.addr)
	out := strings.Fields(run(t, []string{"HOST=" + host, "PORT=" + port, "U1=pyq", "P1=" + dovecotUsers["pyq"], "U2=pyu", "P2=" + dovecotUsers["pyu"]},
		py, "-c", imaplibScript))
	wantOut := []string{want["pyq"], want["pyq"], want["pyu"], want["pyq"]}
	if strings.Join(out, " ") != strings.Join(wantOut, " ") {
		t.Fatalf("imaplib fetched %q, want %q", out, wantOut)
	}
}

// Test 3: curl over imap:// (plaintext and STARTTLS) and imaps://.
func TestCurl(t *testing.T) {
	t.Parallel()
	curl := requireTool(t, "curl")
	d := sharedDovecot(t)
	e := newEnv(t, proxy.Options{}, false)
	e.dovecotIsland("dc", d, proxy.IslandSettings{})
	e.dir.setDef("dc")
	deliver(t, d, "liz", "curl")
	resp := directFetch(t, imapAddr(d), "liz", "liz-pw", "*")
	body := string(fetchBody(t, resp))
	seq := strings.Fields(resp)[1] // "* N FETCH ..."
	ca := testCert(t).caFile
	_, port, _ := net.SplitHostPort(e.addr)
	_, tport, _ := net.SplitHostPort(e.tlsAddr)
	base := []string{"-sS", "--max-time", "20", "--cacert", ca}
	tests := []struct {
		name string
		args []string
	}{
		{"imap", []string{"imap://127.0.0.1:" + port + "/", "-u", "liz:liz-pw"}},
		// curl 7.88 has no way to force the LOGIN command while AUTH=PLAIN
		// is offered (AUTH=+LOGIN came later); imaplib covers LOGIN.
		{"imap SASL-IR, quotes and spaces", []string{"imap://127.0.0.1:" + port + "/", "-u", "bob:" + dovecotUsers["bob"], "--sasl-ir"}},
		{"imap STARTTLS", []string{"imap://127.0.0.1:" + port + "/", "-u", "liz:liz-pw", "--ssl-reqd"}},
		{"imaps", []string{"imaps://127.0.0.1:" + tport + "/", "-u", "liz:liz-pw"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := run(t, nil, curl, append(base, tt.args...)...)
			if !strings.Contains(out, "INBOX") {
				t.Fatalf("LIST output lacks INBOX: %q", out)
			}
		})
	}
	t.Run("fetch over imaps", func(t *testing.T) {
		out := run(t, nil, curl, append(base, "imaps://127.0.0.1:"+tport+"/INBOX;MAILINDEX="+seq, "-u", "liz:liz-pw")...)
		if out != body {
			t.Fatalf("curl fetched %q, want %q", out, body)
		}
	})
	// With RequireTLS, curl needs --ssl-reqd: LOGINDISABLED, STARTTLS,
	// then AUTH=PLAIN.
	t.Run("require TLS", func(t *testing.T) {
		e := newEnv(t, proxy.Options{RequireTLS: true}, false)
		e.dovecotIsland("dc", d, proxy.IslandSettings{})
		e.dir.setDef("dc")
		_, port, _ := net.SplitHostPort(e.addr)
		out := run(t, nil, curl, append(base, "imap://127.0.0.1:"+port+"/", "-u", "liz:liz-pw", "--ssl-reqd")...)
		if !strings.Contains(out, "INBOX") {
			t.Fatalf("LIST output lacks INBOX: %q", out)
		}
	})
}
