package imap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// parseAll reads every command of in; conts counts the "+" the reader
// asked for. Each result is a command or an error.
func parseAll(in string, maxLine, maxLiteral int, noLogin bool) (out []any, conts int) {
	rd := &reader{r: bufio.NewReader(strings.NewReader(in)), maxLine: maxLine, maxLiteral: maxLiteral, noLogin: noLogin}
	rd.cont = func() error { conts++; return nil }
	for range 100 {
		cmd, err := rd.next()
		if errors.Is(err, io.EOF) {
			return out, conts
		}
		if err != nil {
			out = append(out, err)
			var bad *badCommand
			if !errors.As(err, &bad) {
				return out, conts
			}
			continue
		}
		out = append(out, cmd)
	}
	return out, conts
}

func bad(tag, text string) error { return &badCommand{tag: tag, text: text} }

func TestParseCommands(t *testing.T) {
	long := "a LOGIN " + strings.Repeat("x", 300) + " y\r\n"
	tests := []struct {
		name    string
		in      string
		noLogin bool
		want    []any
		conts   int
	}{
		{"atom login", "a LOGIN alice secret\r\n", false, []any{&command{tag: "a", name: "LOGIN", user: []byte("alice"), pass: []byte("secret")}}, 0},
		{"lower case, odd tag", "A1.x] login alice secret\r\n", false, []any{&command{tag: "A1.x]", name: "LOGIN", user: []byte("alice"), pass: []byte("secret")}}, 0},
		{"quoted", `a LOGIN "bob" "p a\"s\\s w"` + "\r\n", false, []any{&command{tag: "a", name: "LOGIN", user: []byte("bob"), pass: []byte(`p a"s\s w`)}}, 0},
		{"empty quoted", `a LOGIN "" ""` + "\r\n", false, []any{&command{tag: "a", name: "LOGIN", user: []byte{}, pass: []byte{}}}, 0},
		{"8-bit quoted and atom", "a LOGIN j\xc3\xb6rg \"w\xc3\xb6rd\"\r\n", false, []any{&command{tag: "a", name: "LOGIN", user: []byte("jörg"), pass: []byte("wörd")}}, 0},
		{"sync literals", "a LOGIN {5}\r\nalice {6}\r\nse cr\r\n", false, []any{&command{tag: "a", name: "LOGIN", user: []byte("alice"), pass: []byte("se cr\r")}}, 2},
		{"non-sync literals", "a LOGIN {5+}\r\nalice {4+}\r\n\"\\ \"\r\nb NOOP\r\n", false, []any{
			&command{tag: "a", name: "LOGIN", user: []byte("alice"), pass: []byte(`"\ "`)},
			&command{tag: "b", name: "NOOP"}}, 0},
		{"empty literal", "a LOGIN alice {0}\r\n\r\n", false, []any{&command{tag: "a", name: "LOGIN", user: []byte("alice"), pass: []byte{}}}, 1},
		{"bare LF", "a NOOP\nb CAPABILITY\n", false, []any{&command{tag: "a", name: "NOOP"}, &command{tag: "b", name: "CAPABILITY"}}, 0},
		{"bad escape", `a LOGIN alice "x\q"` + "\r\nb NOOP\r\n", false, []any{bad("a", "Invalid escape in a quoted string."), &command{tag: "b", name: "NOOP"}}, 0},
		{"unterminated", `a LOGIN alice "x` + "\r\n", false, []any{bad("a", "Unterminated quoted string.")}, 0},
		{"missing password", "a LOGIN alice\r\n", false, []any{bad("a", "Missing arguments.")}, 0},
		{"extra argument", "a LOGIN alice pw more\r\n", false, []any{bad("a", "Unexpected extra arguments.")}, 0},
		{"two spaces", "a LOGIN  alice pw\r\n", false, []any{bad("a", "Invalid string argument.")}, 0},
		{"untagged", "* LOGIN a b\r\n", false, []any{bad("", "Invalid tag.")}, 0},
		{"plus in tag", "a+b NOOP\r\n", false, []any{bad("", "Invalid tag.")}, 0},
		{"empty line", "\r\n", false, []any{bad("", "Empty command line.")}, 0},
		{"no command", "abc\r\n", false, []any{bad("abc", "Missing command.")}, 0},
		{"bad command name", "a NO]OP\r\n", false, []any{bad("a", "Invalid command name.")}, 0},
		{"noop with args", "a NOOP x\r\n", false, []any{bad("a", "Unexpected extra arguments.")}, 0},
		{"literal not at the end", "a LOGIN {5}x y\r\n", false, []any{bad("a", "Invalid literal.")}, 0},
		{"NUL in literal", "a LOGIN u {3+}\r\na\x00b\r\nb NOOP\r\n", false, []any{bad("a", "NUL in a literal."), &command{tag: "b", name: "NOOP"}}, 0},
		{"unknown command, literal skipped", "a SELECT {5+}\r\nINBOX\r\nb NOOP\r\n", false, []any{
			&command{tag: "a", name: "SELECT", skipped: true}, &command{tag: "b", name: "NOOP"}}, 0},
		{"bad tag, literal skipped", "{5+}\r\nb NOOP\r\nc NOOP\r\n", false, []any{bad("", "Invalid tag."), &command{tag: "c", name: "NOOP"}}, 0},
		{"unknown command, sync literal not asked for", "a SELECT {5}\r\nb NOOP\r\n", false, []any{
			&command{tag: "a", name: "SELECT", skipped: true}, &command{tag: "b", name: "NOOP"}}, 0},
		{"sync literal too big: BAD, no +", "a LOGIN {65}\r\nb NOOP\r\n", false, []any{bad("a", "Literal too big."), &command{tag: "b", name: "NOOP"}}, 0},
		{"non-sync literal too big", "a LOGIN {65+}\r\n", false, []any{errLiteralTooBig}, 0},
		{"skipped non-sync literal too big", "a FOO {65+}\r\n", false, []any{errLiteralTooBig}, 0},
		{"huge literal", "a LOGIN {99999999999999999999999}\r\n", false, []any{bad("a", "Literal too big.")}, 0},
		{"line too long", long, false, []any{errLineTooLong}, 0},
		{"login refused: arguments not read", "a LOGIN {5}\r\nb LOGIN {5+}\r\nalice\r\nc NOOP\r\n", true, []any{
			&command{tag: "a", name: "LOGIN", skipped: true}, &command{tag: "b", name: "LOGIN", skipped: true}, &command{tag: "c", name: "NOOP"}}, 0},
		{"authenticate", "a authenticate plain dGVzdA==\r\nb AUTHENTICATE PLAIN\r\nc AUTHENTICATE PLAIN =\r\n", false, []any{
			&command{tag: "a", name: "AUTHENTICATE", mech: "PLAIN", ir: "dGVzdA==", hasIR: true},
			&command{tag: "b", name: "AUTHENTICATE", mech: "PLAIN"},
			&command{tag: "c", name: "AUTHENTICATE", mech: "PLAIN", ir: "=", hasIR: true}}, 0},
		{"authenticate bad", "a AUTHENTICATE\r\nb AUTHENTICATE PLAIN a.b\r\nc AUTHENTICATE PLAIN ab cd\r\n", false, []any{
			bad("a", "Missing arguments."), bad("b", "Unexpected extra arguments."), bad("c", "Unexpected extra arguments.")}, 0},
		{"id", `a ID ("name" "x" "version" NIL)` + "\r\nb ID nil\r\nc ID ()\r\nd ID (\"k\" {3}\r\nv v)\r\n", false, []any{
			&command{tag: "a", name: "ID", id: [][]byte{[]byte("name"), []byte("x"), []byte("version"), nil}},
			&command{tag: "b", name: "ID", idNil: true},
			&command{tag: "c", name: "ID", id: [][]byte{}},
			&command{tag: "d", name: "ID", id: [][]byte{[]byte("k"), []byte("v v")}}}, 1},
		{"id bad", "a ID (name x)\r\nb ID\r\nc ID (\"a\")\r\nd ID (\"a\" \"b\"\r\ne ID NILS\r\nf ID () x\r\n", false, []any{
			bad("a", "Expected a string."), bad("b", "Missing arguments."), bad("c", "Expected a space."),
			bad("d", "Missing arguments."), bad("e", "Invalid ID arguments."), bad("f", "Unexpected extra arguments.")}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, conts := parseAll(tt.in, 200, 64, tt.noLogin)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %s\nwant %s", show(got), show(tt.want))
			}
			if conts != tt.conts {
				t.Errorf("%d continuation requests, want %d", conts, tt.conts)
			}
		})
	}
}

func show(v []any) string {
	var b strings.Builder
	for _, x := range v {
		switch x := x.(type) {
		case *command:
			b.WriteString("[" + strings.TrimSpace(string(x.encode())))
			if x.skipped {
				b.WriteString(" (skipped)")
			}
			b.WriteString("] ")
		case error:
			b.WriteString("<" + x.Error() + "> ")
		}
	}
	return b.String()
}

// The reader never buffers more than one command ahead of itself beyond
// what the socket gave it: after a command, the rest stays readable
// (what the relay gets as pipelined bytes).
func TestParseLeavesPipelinedBytes(t *testing.T) {
	in := "a LOGIN {5+}\r\nalice pw\r\nb SELECT INBOX\r\n"
	rd := &reader{r: bufio.NewReader(strings.NewReader(in)), maxLine: 100, maxLiteral: 100}
	if _, err := rd.next(); err != nil {
		t.Fatal(err)
	}
	if got := string(peekBuffered(rd.r)); got != "b SELECT INBOX\r\n" {
		t.Fatalf("buffered %q", got)
	}
}

func TestDecodePlain(t *testing.T) {
	tests := []struct {
		in              string
		authz, user, pw string
		ok              bool
	}{
		{plain("", "u", "p w"), "", "u", "p w", true},
		{plain("admin", "u", ""), "admin", "u", "", true},
		{plain("", "", "p"), "", "", "", false},
		{"=", "", "", "", false},
		{"dGVzdA==", "", "", "", false},  // no NULs
		{"AHUAcAB4", "", "", "", false},  // three NULs
		{"AHUAcA", "", "", "", false},    // unpadded
		{"AHUAc!==", "", "", "", false},  // bad alphabet
		{"AHUAcA==", "", "u", "p", true}, // \0u\0p
	}
	for _, tt := range tests {
		a, u, p, ok := decodePlain(tt.in)
		if ok != tt.ok || (ok && (string(a) != tt.authz || string(u) != tt.user || string(p) != tt.pw)) {
			t.Errorf("decodePlain(%q) = %q %q %q %v", tt.in, a, u, p, ok)
		}
	}
}

// FuzzCommand feeds arbitrary bytes to the pre-login command reader: it
// never panics, every tag it accepts is a valid tag that starts the
// input, and every command it parses comes back the same after being
// encoded and parsed again.
func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		"a LOGIN alice secret\r\n",
		"a LOGIN \"bob\" \"p a\\\"s\\\\s w\"\r\n",
		"a LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
		"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
		"a ID (\"name\" \"x\" \"v\" NIL)\r\nb ID NIL\r\n",
		"a SELECT {3+}\r\nabc\r\nb NOOP\r\n",
		"* BAD\r\n{2+}\r\nab\r\n",
		"a LOGIN {99999+}\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := &reader{r: bufio.NewReader(bytes.NewReader(data)), maxLine: 256, maxLiteral: 256, cont: func() error { return nil }}
		for i := 0; i < 64; i++ {
			cmd, err := rd.next()
			var badc *badCommand
			if errors.As(err, &badc) {
				for _, c := range []byte(badc.tag) {
					if !isTagChar(c) {
						t.Fatalf("BAD with invalid tag %q", badc.tag)
					}
				}
				continue
			}
			if err != nil {
				return
			}
			if cmd.tag == "" || cmd.name == "" || cmd.name != strings.ToUpper(cmd.name) {
				t.Fatalf("command %+v", cmd)
			}
			for _, c := range []byte(cmd.tag) {
				if !isTagChar(c) {
					t.Fatalf("invalid tag %q", cmd.tag)
				}
			}
			if i == 0 && (!bytes.HasPrefix(data, []byte(cmd.tag+" ")) ||
				!strings.EqualFold(string(data[len(cmd.tag)+1:min(len(data), len(cmd.tag)+1+len(cmd.name))]), cmd.name)) {
				t.Fatalf("tag %q / command %q do not start %q", cmd.tag, cmd.name, data)
			}
			enc := cmd.encode()
			rd2 := &reader{r: bufio.NewReader(bytes.NewReader(enc)), maxLine: 4096, maxLiteral: 4096}
			again, err := rd2.next()
			if err != nil {
				t.Fatalf("re-parse of %q (from %+v): %v", enc, cmd, err)
			}
			if !reflect.DeepEqual(again, cmd) {
				t.Fatalf("round trip:\n%+v\n%+v\nvia %q", cmd, again, enc)
			}
		}
	})
}
