package lmtp

import (
	"bufio"
	"bytes"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	smtp "github.com/emersion/go-smtp"
)

func TestParseCommand(t *testing.T) {
	for _, c := range []struct {
		in        string
		verb, arg string
		bad       bool
	}{
		{in: "LHLO mta.test", verb: "LHLO", arg: "mta.test"},
		{in: "mail FROM:<a@b>", verb: "MAIL", arg: "FROM:<a@b>"},
		{in: "DATA", verb: "DATA"},
		{in: "NOOP  two  blanks", verb: "NOOP", arg: " two  blanks"},
		{in: "", bad: true},
		{in: " NOOP", bad: true},
		{in: "NO0P", bad: true},
		{in: "NOOP \x00", bad: true},
		{in: "NOOP a\rb", bad: true},
		{in: "RCPT TO:<\xff@x>", bad: true},
		{in: strings.Repeat("A", 17), bad: true},
	} {
		got, err := parseCommand([]byte(c.in))
		if c.bad {
			if err == nil {
				t.Errorf("%q: parsed as %+v, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got.Verb != c.verb || got.Arg != c.arg {
			t.Errorf("%q: %+v %v, want %s %q", c.in, got, err, c.verb, c.arg)
		}
	}
}

func TestParseMailArg(t *testing.T) {
	for _, c := range []struct {
		in, prefix, addr string
		params           []param
		bad              bool
	}{
		{in: "FROM:<a@b.test>", prefix: "FROM:", addr: "a@b.test"},
		{in: "from: <a@b.test>", prefix: "FROM:", addr: "a@b.test"},
		{in: "FROM:<>", prefix: "FROM:", addr: ""},
		{in: "FROM:<a@b.test> SIZE=100 body=8bitmime SMTPUTF8", prefix: "FROM:", addr: "a@b.test",
			params: []param{{"SIZE", "100", true}, {"BODY", "8bitmime", true}, {"SMTPUTF8", "", false}}},
		{in: `TO:<"john doe"@x.test>`, prefix: "TO:", addr: `"john doe"@x.test`},
		{in: `TO:<"a>b\"c"@x.test>`, prefix: "TO:", addr: `"a>b\"c"@x.test`},
		{in: "TO:<@relay.test,@r2.test:u@x.test>", prefix: "TO:", addr: "u@x.test"},
		{in: "TO:<postmaster>", prefix: "TO:", addr: "postmaster"},
		{in: "TO:<grüße@x.test>", prefix: "TO:", addr: "grüße@x.test"},
		{in: "TO:<[1.2.3.4]@x>", prefix: "TO:", addr: "[1.2.3.4]@x"},
		{in: "TO:<u@x.test>", prefix: "FROM:", bad: true},
		{in: "TO:u@x.test", prefix: "TO:", bad: true},
		{in: "TO:<u@x.test", prefix: "TO:", bad: true},
		{in: "TO:<u @x.test>", prefix: "TO:", bad: true},
		{in: "TO:<u@x.test>X", prefix: "TO:", bad: true},
		{in: "TO:<u@>", prefix: "TO:", bad: true},
		{in: "TO:<@x.test>", prefix: "TO:", bad: true},
		{in: "TO:<@r.test:>", prefix: "TO:", bad: true},
		{in: `TO:<@":">`, prefix: "TO:", bad: true},  // the ':' is quoted: no route, and no mailbox
		{in: "TO:<@:@@0>", prefix: "TO:", bad: true}, // '@' in an unquoted local part (found by FuzzParseMailArg)
		{in: "TO:<a@b@x.test>", prefix: "TO:", bad: true},
		{in: `TO:<"a"b@x.test>`, prefix: "TO:", bad: true}, // text after the quoted string
		{in: `TO:<"a@x.test>`, prefix: "TO:", bad: true},   // unterminated quoted string
		{in: `TO:<"a\"@x.test>`, prefix: "TO:", bad: true}, // the closing quote is escaped
		{in: "TO:<u@x\x01.test>", prefix: "TO:", bad: true},
		{in: "TO:<a<b@x.test>", prefix: "TO:", bad: true},
		{in: "TO:<u@x.test> A=1 a=2", prefix: "TO:", bad: true},
		{in: "TO:<u@x.test> =1", prefix: "TO:", bad: true},
		{in: "TO:<u@x.test> K=", prefix: "TO:", bad: true},
		{in: "TO:<u@x.test> K=a=b", prefix: "TO:", bad: true},
		{in: "TO:<" + strings.Repeat("x", 600) + "@x.test>", prefix: "TO:", bad: true},
	} {
		addr, params, err := parseMailArg(c.in, c.prefix)
		if c.bad {
			if err == nil {
				t.Errorf("%q: parsed as %q %+v, want an error", c.in, addr, params)
			}
			continue
		}
		if err != nil || addr != c.addr || !slices.Equal(params, c.params) {
			t.Errorf("%q: %q %+v %v, want %q %+v", c.in, addr, params, err, c.addr, c.params)
		}
	}
}

func TestXCLIENT(t *testing.T) {
	v4 := netip.MustParseAddrPort("192.0.2.7:2525")
	v6 := netip.MustParseAddrPort("[2001:db8::7]:2525")
	for _, c := range []struct {
		offered string
		client  netip.AddrPort
		helo    string
		want    string
	}{
		{"ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT", v4, "mta.test", "XCLIENT ADDR=192.0.2.7 PORT=2525 HELO=mta.test"},
		{"NAME ADDR HELO", v4, "mta+x=y test", "XCLIENT ADDR=192.0.2.7 NAME=[UNAVAILABLE] HELO=mta+2Bx+3Dy+20test"},
		{"addr", v6, "mta.test", "XCLIENT ADDR=IPV6:2001:db8::7"},
		{"HELO NAME", v4, "mta.test", ""},
		{"ADDR", netip.AddrPortFrom(netip.MustParseAddr("::ffff:192.0.2.9"), 1), "", "XCLIENT ADDR=192.0.2.9"},
	} {
		if got := xclientCommand(c.offered, c.client, c.helo); got != c.want {
			t.Errorf("%q %v %q: %q, want %q", c.offered, c.client, c.helo, got, c.want)
		}
	}
}

func TestDomainLike(t *testing.T) {
	for name, want := range map[string]bool{"mta.example.test": true, "localhost": true, "[192.0.2.1]": true, "[IPv6:2001:db8::1]": true,
		"": false, "a..b": false, "-a.b": false, "grüße.test": false, "[300.1.1.1]": false, "a_b.test": false, "x@y": false} {
		if domainLike(name) != want {
			t.Errorf("domainLike(%q) = %v", name, !want)
		}
	}
}

func TestReadReply(t *testing.T) {
	r := bufio.NewReaderSize(strings.NewReader("250-node\r\n250-8BITMIME\r\n250 XCLIENT ADDR HELO\r\n220 next\n"), 64)
	rep, err := readReply(r)
	if err != nil || rep.Code != 250 || !slices.Equal(rep.Lines, []string{"node", "8BITMIME", "XCLIENT ADDR HELO"}) {
		t.Fatalf("%+v %v", rep, err)
	}
	if ext := extensions(rep.Lines); ext["XCLIENT"] != "ADDR HELO" || len(ext) != 2 {
		t.Fatalf("extensions %v", ext)
	}
	if rep, err := readReply(r); err != nil || rep.Code != 220 || string(rep.Raw) != "220 next\n" {
		t.Fatalf("%+v %v", rep, err)
	}
	for _, bad := range []string{"250-a\r\n251 b\r\n", "25\r\n", "2500 x\r\n", "abc def\r\n", "199 x\r\n", "250-" + strings.Repeat("x", 100) + "\r\n", strings.Repeat("250-x\r\n", maxReplyLines+1), "250-cut"} {
		if rep, err := readReply(bufio.NewReaderSize(strings.NewReader(bad), 64)); err == nil {
			t.Errorf("%q: %+v, want an error", bad, rep)
		}
	}
}

func TestRelay(t *testing.T) {
	if got := relayOK("2.0.0 <a@x> id Saved"); got.Code != 250 || got.Enh != "2.0.0" || !slices.Equal(got.Lines, []string{"<a@x> id Saved"}) {
		t.Errorf("relayOK %+v", got)
	}
	if got := relayOK("<a@x> Saved"); got.Enh != "2.0.0" || got.Lines[0] != "<a@x> Saved" {
		t.Errorf("relayOK without enhanced code %+v", got)
	}
	se := &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "<a@x> Quota exceeded\n5.2.2 really"}
	if got := relayError(se); got.Code != 552 || got.Enh != "5.2.2" || !slices.Equal(got.Lines, []string{"<a@x> Quota exceeded", "really"}) {
		t.Errorf("relayError %+v", got)
	}
	if got := relayError(&smtp.SMTPError{Code: 450, Message: "busy"}); got.Enh != "4.0.0" {
		t.Errorf("relayError without enhanced code %+v", got)
	}
	for _, c := range []struct {
		code int
		text string
		ok   bool
	}{{250, "2.1.5 OK", true}, {550, "5.1.1 x", true}, {550, "2.1.5 x", false}, {250, "2.1 x", false}, {250, "2.1000.1 x", false}, {250, "OK", false}} {
		if _, _, ok := enhancedCode(c.code, c.text); ok != c.ok {
			t.Errorf("enhancedCode(%d, %q) = %v", c.code, c.text, ok)
		}
	}
}

func TestCapBook(t *testing.T) {
	var b capBook
	if e, u := b.common(); e || u {
		t.Fatal("nothing seen: conservative")
	}
	b.record("a", "n1", map[string]string{"8BITMIME": "", "SMTPUTF8": ""})
	if e, u := b.common(); !e || !u {
		t.Fatal("one node with both")
	}
	b.record("b", "n2", map[string]string{"8BITMIME": ""})
	if e, u := b.common(); !e || u {
		t.Fatal("a node without SMTPUTF8")
	}
	b.record("a", "n1", map[string]string{})
	if e, _ := b.common(); e {
		t.Fatal("a node that lost 8BITMIME")
	}
}

func TestReadData(t *testing.T) {
	in := "a\r\n..b\r\n.\r\n"
	var out bytes.Buffer
	n, tooBig, err := readData(bufio.NewReader(strings.NewReader(in+"NEXT")), &out, 100, nil)
	if err != nil || tooBig || out.String() != "a\r\n.b\r\n" || n != 7 {
		t.Fatalf("%q %d %v %v", out.String(), n, tooBig, err)
	}
	out.Reset()
	r := bufio.NewReader(strings.NewReader("0123456789\r\nabc\r\n.\r\nNOOP\r\n"))
	n, tooBig, err = readData(r, &out, 12, nil)
	if err != nil || !tooBig || n != 17 || out.String() != "0123456789\r\n" {
		t.Fatalf("%q %d %v %v", out.String(), n, tooBig, err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "NOOP\r\n" {
		t.Fatalf("the session lost step: %q left", rest)
	}
	if _, _, err := readData(bufio.NewReader(strings.NewReader("a\r\n")), io.Discard, 100, nil); err != io.ErrUnexpectedEOF {
		t.Fatalf("cut message: %v", err)
	}
}

// ---- fuzz targets for the parsers that are ours ----

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"LHLO x", "MAIL FROM:<a@b> SIZE=1", "RCPT TO:<\"q\\\"x\"@b>", "DATA", "\x00", "é"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		c, err := parseCommand(line)
		if err != nil {
			return
		}
		if c.Verb == "" || strings.ToUpper(c.Verb) != c.Verb || !utf8.ValidString(c.Arg) {
			t.Fatalf("%q → %+v", line, c)
		}
		for _, b := range []byte(c.Arg) {
			if b < 0x20 && b != '\t' || b == 0x7f {
				t.Fatalf("%q → control character in %q", line, c.Arg)
			}
		}
	})
}

func FuzzParseMailArg(f *testing.F) {
	for _, s := range []string{"FROM:<a@b.test> SIZE=10 BODY=8BITMIME", "TO:<\"a b\"@x>", "TO:<@r:u@x>", "FROM:<>", "TO:<u@x> K", "TO:<\"\\>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		for _, prefix := range []string{"FROM:", "TO:"} {
			addr, params, err := parseMailArg(arg, prefix)
			if err != nil {
				continue
			}
			if len(addr) > maxPath || !utf8.ValidString(addr) || strings.ContainsAny(addr, "\r\n\x00") {
				t.Fatalf("%q → address %q", arg, addr)
			}
			for _, p := range params {
				if p.Key == "" || strings.ToUpper(p.Key) != p.Key || strings.ContainsAny(p.Value, " =") {
					t.Fatalf("%q → parameter %+v", arg, p)
				}
			}
			// What is passed on to a node parses back to itself.
			if addr != "" {
				again, _, err := parseMailArg(prefix+"<"+addr+">", prefix)
				if err != nil || again != addr {
					t.Fatalf("%q → %q → %q %v", arg, addr, again, err)
				}
			}
		}
	})
}

// stuffBytes dot-stuffs msg and ends it with CRLF if it does not end
// with a line break: what a client sends for msg.
func stuffBytes(msg []byte) []byte {
	var out []byte
	for l := range bytes.SplitAfterSeq(msg, []byte("\n")) {
		if len(l) > 0 && l[0] == '.' {
			out = append(out, '.')
		}
		out = append(out, l...)
	}
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\r', '\n')
	}
	return out
}

func FuzzReadData(f *testing.F) {
	for _, s := range []string{"a\r\n.\r\n..\r\n", ".", "x\n.\ny", strings.Repeat("z", 40) + "\r\n.x", ""} {
		f.Add([]byte(s), int64(1000))
	}
	f.Fuzz(func(t *testing.T, msg []byte, max int64) {
		// Round trip: stuffed and terminated, the message comes back as it
		// was (plus the CRLF a client adds to an unterminated last line).
		want := stuffBytes(msg)
		want = bytes.ReplaceAll(append([]byte("\n"), want...), []byte("\n."), []byte("\n"))[1:]
		in := append(stuffBytes(msg), ".\r\nAFTER"...)
		r := bufio.NewReaderSize(bytes.NewReader(in), 16)
		var out bytes.Buffer
		if max < 0 {
			max = -max
		}
		n, tooBig, err := readData(r, &out, max, nil)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if n != int64(len(want)) || tooBig != (n > max) {
			t.Fatalf("%q: n %d tooBig %v, want n %d (max %d)", in, n, tooBig, len(want), max)
		}
		if !tooBig && !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("%q: got %q, want %q", in, out.Bytes(), want)
		}
		if int64(out.Len()) > max {
			t.Fatalf("wrote %d bytes past max %d", out.Len(), max)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "AFTER" {
			t.Fatalf("%q: %q left after the message", in, rest)
		}
		// Arbitrary input never panics.
		readData(bufio.NewReaderSize(bytes.NewReader(msg), 16), io.Discard, max, nil)
	})
}

func FuzzReadReply(f *testing.F) {
	for _, s := range []string{"250-a\r\n250 b\r\n", "220 x\n", "250\r\n", "5", "354-\r\n354 go\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(in), 64)
		rep, err := readReply(r)
		if err != nil {
			return
		}
		if rep.Code < 200 || rep.Code > 599 || len(rep.Lines) == 0 || len(rep.Lines) > maxReplyLines {
			t.Fatalf("%q → %+v", in, rep)
		}
		if !bytes.HasPrefix(in, rep.Raw) {
			t.Fatalf("%q → raw %q is not what was read", in, rep.Raw)
		}
	})
}
