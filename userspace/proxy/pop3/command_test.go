package pop3

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseCommand(t *testing.T) {
	for _, tc := range []struct {
		line string
		ok   bool
		verb string
		arg  string
	}{
		{"USER alice", true, "USER", "alice"},
		{"user alice", true, "USER", "alice"},
		{"PaSs pa ss \"dq\" 'sq' ", true, "PASS", "pa ss \"dq\" 'sq' "},
		{"PASS  leading space", true, "PASS", " leading space"},
		{"CAPA", true, "CAPA", ""},
		{"CAPA ", true, "CAPA", ""},
		{"AUTH PLAIN AGFsaWNlAHB3", true, "AUTH", "PLAIN AGFsaWNlAHB3"},
		{"XVERYLONGKEYWORD", true, "XVERYLONGKEYWORD", ""},
		{"XVERYLONGKEYWORDS", false, "", ""},
		{"", false, "", ""},
		{" USER alice", false, "", ""},
		{"USER\talice", false, "", ""},
		{"US3R alice", false, "", ""},
		{"USER al\x00ice", false, "", ""},
		{"PASS a\rb", false, "", ""},
		{"PASS a\nb", false, "", ""},
		{"ÜSER x", false, "", ""},
	} {
		cmd, ok := parseCommand([]byte(tc.line))
		if ok != tc.ok || cmd.Verb != tc.verb || cmd.Arg != tc.arg {
			t.Errorf("parseCommand(%q) = %+v, %v; want %q %q %v", tc.line, cmd, ok, tc.verb, tc.arg, tc.ok)
		}
	}
}

func TestTrimEOL(t *testing.T) {
	for in, want := range map[string]string{"a\r\n": "a", "a\n": "a", "a\r\r\n": "a\r", "a": "a", "\r\n": "", "a\r": "a"} {
		if got := string(trimEOL([]byte(in))); got != want {
			t.Errorf("trimEOL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseAuth(t *testing.T) {
	for _, tc := range []struct {
		arg  string
		want authArgs
		err  bool
	}{
		{"", authArgs{}, false},
		{"plain", authArgs{Mech: "PLAIN"}, false},
		{"PLAIN =", authArgs{Mech: "PLAIN", Initial: "=", HasIR: true}, false},
		{"PLAIN AGEAYg==", authArgs{Mech: "PLAIN", Initial: "AGEAYg==", HasIR: true}, false},
		{"PLAIN a b", authArgs{}, true},
	} {
		got, err := parseAuth(tc.arg)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseAuth(%q) = %+v, %v", tc.arg, got, err)
		}
	}
}

func TestDecodePlain(t *testing.T) {
	for _, tc := range []struct {
		in                string
		authz, user, pass string
		ok                bool
	}{
		{encodePlain("", "alice", "pw"), "", "alice", "pw", true},
		{encodePlain("alice", "alice", `pa ss "q" 'x'`), "alice", "alice", `pa ss "q" 'x'`, true},
		{encodePlain("", "alice", ""), "", "alice", "", true},
		{encodePlain("", "", "pw"), "", "", "", false},
		{encodePlain("", "alice", "p\x00w"), "", "", "", false},
		{encodePlain("", "alice", "p\r\nDELE 1"), "", "", "", false},
		{"YWxpY2U=", "", "", "", false}, // "alice": no NUL
		{"=", "", "", "", false},
		{"!!", "", "", "", false},
	} {
		authz, user, pass, err := decodePlain(tc.in)
		if (err == nil) != tc.ok || authz != tc.authz || user != tc.user || pass != tc.pass {
			t.Errorf("decodePlain(%q) = %q %q %q %v", tc.in, authz, user, pass, err)
		}
	}
}

func TestRespCode(t *testing.T) {
	for in, want := range map[string]string{
		"-ERR [AUTH] Authentication failed.": "AUTH",
		"-ERR [in-use] locked":               "IN-USE",
		"-ERR [SYS/TEMP] later":              "SYS/TEMP",
		"-ERR no code":                       "",
		"-ERR [unterminated":                 "",
		"+OK [AUTH]":                         "",
	} {
		if got := respCode(in); got != want {
			t.Errorf("respCode(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzCommand feeds arbitrary lines to the command parser and, for AUTH,
// to the AUTH and PLAIN decoders. Invariants: no panic; an accepted line
// has an upper-case letter keyword of at most maxVerb bytes and is the
// keyword (any case) plus " " plus the argument; nothing accepted holds
// NUL, CR or LF; a decoded PLAIN password never holds them either and
// re-encodes to the same identities.
func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		"USER alice", "PASS pa ss \"q\" 'x'", "AUTH PLAIN " + encodePlain("", "alice", "pw"), "AUTH PLAIN",
		"AUTH", "CAPA", "STLS", "QUIT", "auth plain =", "PASS a\rb", "US\x00ER", "AUTH PLAIN AAAA", "AUTH PLAIN a b",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		cmd, ok := parseCommand(line)
		if !ok {
			return
		}
		if len(cmd.Verb) == 0 || len(cmd.Verb) > maxVerb || strings.ToUpper(cmd.Verb) != cmd.Verb {
			t.Fatalf("verb %q", cmd.Verb)
		}
		for _, r := range cmd.Verb {
			if r < 'A' || r > 'Z' {
				t.Fatalf("verb %q", cmd.Verb)
			}
		}
		if strings.ContainsAny(cmd.Arg, "\x00\r\n") {
			t.Fatalf("arg %q", cmd.Arg)
		}
		rebuilt := cmd.Verb
		if bytes.IndexByte(line, ' ') >= 0 {
			rebuilt += " " + cmd.Arg
		}
		if !strings.EqualFold(rebuilt, string(line)) {
			t.Fatalf("%q parsed as %+v", line, cmd)
		}
		if cmd.Verb != "AUTH" {
			return
		}
		a, err := parseAuth(cmd.Arg)
		if err != nil || !a.HasIR {
			return
		}
		authz, user, pass, err := decodePlain(a.Initial)
		if err != nil {
			return
		}
		if user == "" || strings.ContainsAny(pass, "\x00\r\n") || strings.Contains(authz, "\x00") || strings.Contains(user, "\x00") {
			t.Fatalf("decoded %q %q %q", authz, user, pass)
		}
		a2, u2, p2, err := decodePlain(encodePlain(authz, user, pass))
		if err != nil || a2 != authz || u2 != user || p2 != pass {
			t.Fatalf("round trip of %q %q %q: %q %q %q %v", authz, user, pass, a2, u2, p2, err)
		}
	})
}
