package lmtp

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The client side's parsers are ours (not go-smtp's server, see the
// package comment); FuzzParseCommand, FuzzParsePath and FuzzReadReply
// exercise them.

// maxPath is the longest path accepted in MAIL and RCPT, in bytes
// (RFC 5321 4.5.3.1.3 says 256; a little slack for source routes).
const maxPath = 512

// command is one client command line: its verb in upper case and the
// rest of the line after one space.
type command struct {
	Verb string
	Arg  string
}

var errSyntax = errors.New("syntax error")

// parseCommand splits a command line (without its line ending). The verb
// is letters only; control characters (NUL, CR, bare LF…) anywhere in
// the line make it a syntax error, as does invalid UTF-8.
func parseCommand(line []byte) (command, error) {
	if !utf8.Valid(line) {
		return command{}, errSyntax
	}
	for _, b := range line {
		if b < 0x20 && b != '\t' || b == 0x7f {
			return command{}, errSyntax
		}
	}
	s := string(line)
	verb, arg, _ := strings.Cut(s, " ")
	if verb == "" || len(verb) > 16 {
		return command{}, errSyntax
	}
	for i := 0; i < len(verb); i++ {
		c := verb[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return command{}, errSyntax
		}
	}
	return command{Verb: strings.ToUpper(verb), Arg: arg}, nil
}

// param is one ESMTP parameter of MAIL or RCPT (KEYWORD or KEYWORD=VALUE),
// its keyword in upper case.
type param struct {
	Key, Value string
	HasValue   bool
}

// parseMailArg parses the argument of MAIL ("FROM:<path> params") or
// RCPT ("TO:<path> params"), prefix being "FROM:" or "TO:". One blank
// after the colon is tolerated (many clients send it). The address is
// returned without its angle brackets and without a source route; for
// MAIL it may be empty (the null reverse-path <>).
func parseMailArg(arg, prefix string) (addr string, params []param, err error) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", nil, fmt.Errorf("expected %s<address>", prefix)
	}
	rest := strings.TrimLeft(arg[len(prefix):], " ")
	addr, rest, err = parsePath(rest)
	if err != nil {
		return "", nil, err
	}
	params, err = parseParams(rest)
	if err != nil {
		return "", nil, err
	}
	return addr, params, nil
}

// parsePath reads "<[@route,@route:]mailbox>" at the start of s and
// returns the mailbox and what follows the '>'. The local part may be a
// quoted string (spaces and '>' allowed inside, backslash escapes); no
// control characters anywhere; UTF-8 must be valid (whether non-ASCII is
// allowed depends on SMTPUTF8 and is the caller's check). A mailbox
// without '@' is accepted (RFC 5321 allows <postmaster>; the directory
// decides about the others).
func parsePath(s string) (mailbox, rest string, err error) {
	if !strings.HasPrefix(s, "<") {
		return "", "", errors.New("address must be in angle brackets")
	}
	end := -1
	quoted := false
	for i := 1; i < len(s) && i <= maxPath+1; i++ {
		c := s[i]
		switch {
		case c < 0x20 || c == 0x7f:
			return "", "", errors.New("control character in address")
		case quoted && c == '\\':
			i++ // the escaped character, whatever it is
			if i < len(s) && (s[i] < 0x20 || s[i] == 0x7f) {
				return "", "", errors.New("control character in address")
			}
		case c == '"':
			quoted = !quoted
		case !quoted && c == ' ':
			return "", "", errors.New("blank in address")
		case !quoted && c == '<':
			return "", "", errors.New("'<' in address")
		case !quoted && c == '>':
			end = i
		}
		if end >= 0 {
			break
		}
	}
	if end < 0 {
		if len(s) > maxPath+1 {
			return "", "", errors.New("address too long")
		}
		return "", "", errors.New("address without closing '>'")
	}
	inner, rest := s[1:end], s[end+1:]
	if rest != "" && rest[0] != ' ' {
		return "", "", errors.New("text after the address")
	}
	if !utf8.ValidString(inner) {
		return "", "", errors.New("address is not UTF-8")
	}
	if strings.HasPrefix(inner, "@") {
		// A source route (RFC 5321 4.1.2 A-d-l): obsolete, ignored.
		i := strings.IndexByte(inner, ':')
		if i < 0 {
			return "", "", errors.New("source route without ':'")
		}
		// Route domains are names: a quote, blank or backslash there means
		// the ':' belongs to a quoted local part, not to a route.
		if strings.ContainsAny(inner[:i], "\" \\") {
			return "", "", errors.New("bad source route")
		}
		inner = inner[i+1:]
		if inner == "" {
			return "", "", errors.New("source route without mailbox")
		}
	}
	if inner != "" {
		if err := checkMailbox(inner); err != nil {
			return "", "", err
		}
	}
	return inner, rest, nil
}

// checkMailbox checks the shape local@domain (or a bare local part):
// a non-empty local part, a non-empty domain without quotes or blanks.
func checkMailbox(m string) error {
	at := lastUnquotedAt(m)
	local, domain := m, ""
	if at >= 0 {
		local, domain = m[:at], m[at+1:]
		if domain == "" {
			return errors.New("empty domain")
		}
		if strings.ContainsAny(domain, "\" \\@") {
			return errors.New("bad domain")
		}
	}
	if local == "" {
		return errors.New("empty local part")
	}
	if !strings.HasPrefix(local, `"`) {
		if strings.Contains(local, `"`) {
			return errors.New("stray quote in local part")
		}
		// '@' is no atext (RFC 5321 4.1.2): only a quoted local part may
		// hold one (and "<@@x>" would read back as a source route).
		if strings.Contains(local, "@") {
			return errors.New("'@' in an unquoted local part")
		}
		return nil
	}
	// A quoted local part is one quoted string: its closing quote ends it.
	for i := 1; i < len(local); i++ {
		switch local[i] {
		case '\\':
			i++
		case '"':
			if i != len(local)-1 {
				return errors.New("text after the quoted local part")
			}
			return nil
		}
	}
	return errors.New("unterminated quoted local part")
}

// lastUnquotedAt is the index of the '@' that separates the local part
// from the domain, or -1.
func lastUnquotedAt(m string) int {
	at, quoted := -1, false
	for i := 0; i < len(m); i++ {
		switch m[i] {
		case '\\':
			if quoted {
				i++
			}
		case '"':
			quoted = !quoted
		case '@':
			if !quoted {
				at = i
			}
		}
	}
	return at
}

// parseParams parses " KEY[=VALUE] KEY[=VALUE]…" (after the path).
// Keywords are letters, digits and '-', starting with a letter or digit;
// values are printable ASCII without '=' (RFC 5321 esmtp-value). A
// keyword given twice is an error.
func parseParams(s string) ([]param, error) {
	var out []param
	for _, f := range strings.Fields(s) {
		k, v, hasValue := strings.Cut(f, "=")
		if k == "" || !isKeyword(k) {
			return nil, fmt.Errorf("bad parameter %q", f)
		}
		if hasValue {
			if v == "" {
				return nil, fmt.Errorf("empty value for %s", k)
			}
			for i := 0; i < len(v); i++ {
				if v[i] < 0x21 || v[i] > 0x7e || v[i] == '=' {
					return nil, fmt.Errorf("bad value for %s", k)
				}
			}
		}
		k = strings.ToUpper(k)
		for _, p := range out {
			if p.Key == k {
				return nil, fmt.Errorf("%s given twice", k)
			}
		}
		out = append(out, param{Key: k, Value: v, HasValue: hasValue})
	}
	return out, nil
}

func isKeyword(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || c != '-') {
			return false
		}
	}
	return true
}

// isASCII reports whether s is 7-bit.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// xtext encodes s as RFC 3461 xtext (XCLIENT attribute values):
// printable ASCII except '+' and '=' as is, everything else as +HH.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "+%02X", c)
		}
	}
	return b.String()
}

// xclientCommand builds the XCLIENT command (Postfix's protocol, which
// Dovecot's LMTP server speaks for login_trusted_networks) for a node
// whose LHLO listed offered ("ADDR PORT PROTO HELO …"): the attributes
// it names among ADDR, PORT, NAME and HELO. Empty when ADDR is not
// offered: without it the command would tell the node nothing useful.
func xclientCommand(offered string, client netip.AddrPort, helo string) string {
	has := map[string]bool{}
	for _, a := range strings.Fields(offered) {
		has[strings.ToUpper(a)] = true
	}
	if !has["ADDR"] || !client.Addr().IsValid() {
		return ""
	}
	addr := client.Addr().Unmap()
	cmd := "XCLIENT ADDR="
	if addr.Is6() {
		cmd += "IPV6:" + addr.WithZone("").String()
	} else {
		cmd += addr.String()
	}
	if has["PORT"] && client.Port() != 0 {
		cmd += " PORT=" + strconv.Itoa(int(client.Port()))
	}
	if has["NAME"] {
		// atoll does no reverse lookups.
		cmd += " NAME=[UNAVAILABLE]"
	}
	if has["HELO"] && helo != "" {
		cmd += " HELO=" + xtext(helo)
	}
	return cmd
}

// ---- replies from nodes ----

// maxReplyLines bounds a multi-line reply from a node (an LHLO answer
// has a dozen lines).
const maxReplyLines = 100

// nodeReply is one reply read from a node: its code, the text of each
// line (after "ddd-" / "ddd "), and the raw bytes as received.
type nodeReply struct {
	Code  int
	Lines []string
	Raw   []byte
}

// readReply reads one reply (RFC 5321 4.2): lines "ddd-text" then a last
// "ddd text" or "ddd", every line with the same code, the first digit
// 2 to 5. A line longer than r's buffer, more than maxReplyLines lines,
// or anything else is an error: the node is speaking something else.
func readReply(r *bufio.Reader) (nodeReply, error) {
	var rep nodeReply
	for n := 0; ; n++ {
		if n >= maxReplyLines {
			return nodeReply{}, errors.New("reply with too many lines")
		}
		b, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return nodeReply{}, errors.New("reply line too long")
		}
		if err != nil {
			return nodeReply{}, err
		}
		rep.Raw = append(rep.Raw, b...)
		line := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if len(line) < 3 || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
			return nodeReply{}, fmt.Errorf("malformed reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || line[0] < '2' || line[0] > '5' {
			return nodeReply{}, fmt.Errorf("malformed reply code in %q", line)
		}
		if n > 0 && code != rep.Code {
			return nodeReply{}, fmt.Errorf("reply code changed within a reply: %q", line)
		}
		rep.Code = code
		text := ""
		if len(line) > 4 {
			text = line[4:]
		}
		rep.Lines = append(rep.Lines, text)
		if len(line) == 3 || line[3] == ' ' {
			return rep, nil
		}
	}
}

// extensions turns an LHLO answer's lines into keyword (upper case) →
// parameters; the first line is the node's name and is skipped.
func extensions(lines []string) map[string]string {
	ext := map[string]string{}
	for i, l := range lines {
		if i == 0 {
			continue
		}
		k, v, _ := strings.Cut(l, " ")
		if k != "" {
			ext[strings.ToUpper(k)] = v
		}
	}
	return ext
}

// enhancedCode returns the RFC 3463 code at the start of text
// ("2.1.5 OK" → "2.1.5", "OK") when its class matches the reply code's
// first digit.
func enhancedCode(code int, text string) (enh, rest string, ok bool) {
	head, tail, _ := strings.Cut(text, " ")
	parts := strings.Split(head, ".")
	if len(parts) != 3 || len(head) > 11 {
		return "", text, false
	}
	for i, p := range parts {
		if p == "" || len(p) > 3 {
			return "", text, false
		}
		for j := 0; j < len(p); j++ {
			if p[j] < '0' || p[j] > '9' {
				return "", text, false
			}
		}
		if i == 0 && (len(p) != 1 || int(p[0]-'0') != code/100) {
			return "", text, false
		}
	}
	return head, tail, true
}
