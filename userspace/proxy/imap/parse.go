package imap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
)

// Fatal errors of the command reader: the connection is closed after the
// answer the handler sends for them.
var (
	// errLineTooLong: a line (or a command with its literals) went over
	// the limits. The rest of it cannot be skipped safely.
	errLineTooLong = errors.New("imap: command line too long")
	// errLiteralTooBig: a non-synchronizing literal over the limit; its
	// bytes are on their way and cannot be refused.
	errLiteralTooBig = errors.New("imap: non-synchronizing literal too big")
)

// badCommand is a syntax error, answered with BAD. An empty tag means the
// tag itself was unreadable: the answer is untagged ("* BAD").
type badCommand struct{ tag, text string }

func (e *badCommand) Error() string { return "imap: bad command: " + e.text }

// maxIDFields bounds an ID list (RFC 2971 allows 30 pairs).
const maxIDFields = 64

// command is one pre-login command, its arguments parsed.
type command struct {
	tag  string
	name string // upper case
	// LOGIN
	user, pass []byte
	// AUTHENTICATE
	mech  string // upper case
	ir    string // the initial response as sent ("=" for an empty one)
	hasIR bool
	// ID: field, value pairs (a nil value is NIL); idNil: "ID NIL".
	id    [][]byte
	idNil bool
	// skipped: the arguments were not parsed but discarded (a command
	// not served here, or a login refused before TLS).
	skipped bool
}

// reader reads pre-login commands from a client, with their literals.
type reader struct {
	r          *bufio.Reader
	maxLine    int
	maxLiteral int
	// prepare runs before each read from the client (the read deadline).
	prepare func()
	// cont answers a synchronizing literal ("+ Ready for literal data").
	cont func() error
	// noLogin: LOGIN and AUTHENTICATE are refused; their arguments are
	// discarded unread, so no password is asked for (no "+" is sent).
	noLogin bool
	// budget is what the current command may still read (lines and
	// literals).
	budget int
}

// readLine reads one line without its CRLF (a bare LF is accepted).
func (rd *reader) readLine() ([]byte, error) {
	if rd.prepare != nil {
		rd.prepare()
	}
	var line []byte
	for {
		frag, err := rd.r.ReadSlice('\n')
		if len(line)+len(frag) > rd.maxLine+2 {
			return nil, errLineTooLong
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	if len(line) > rd.maxLine {
		return nil, errLineTooLong
	}
	rd.budget -= len(line) + 2
	if rd.budget < 0 {
		return nil, errLineTooLong
	}
	return line, nil
}

// readLiteral reads n bytes of a literal.
func (rd *reader) readLiteral(n int) ([]byte, error) {
	if rd.prepare != nil {
		rd.prepare()
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(rd.r, buf); err != nil {
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		return nil, err
	}
	rd.budget -= n
	return buf, nil
}

// next reads the next command. Errors: *badCommand (the command was
// consumed whole; answer BAD and go on), errLineTooLong and
// errLiteralTooBig (answer and close), or the connection's error.
func (rd *reader) next() (*command, error) {
	rd.budget = rd.maxLine + 2 + 2*rd.maxLiteral
	line, err := rd.readLine()
	if err != nil {
		return nil, err
	}
	p := &parser{rd: rd, line: line}
	cmd, err := p.command()
	var bad *badCommand
	if errors.As(err, &bad) || (err == nil && cmd.skipped) {
		if serr := p.skipRest(); serr != nil {
			return nil, serr
		}
	}
	return cmd, err
}

// parser walks one command: its current line, and the lines after each
// literal.
type parser struct {
	rd   *reader
	line []byte
	pos  int
	tag  string
}

func (p *parser) bad(text string) error { return &badCommand{tag: p.tag, text: text} }

func (p *parser) eol() bool { return p.pos >= len(p.line) }

func (p *parser) peek() byte {
	if p.eol() {
		return 0
	}
	return p.line[p.pos]
}

// Character classes of RFC 9051's grammar.

func isAtomChar(c byte) bool {
	if c <= 0x20 || c >= 0x7f {
		return false
	}
	switch c {
	case '(', ')', '{', '%', '*', '"', '\\', ']':
		return false
	}
	return true
}

func isAstringChar(c byte) bool { return isAtomChar(c) || c == ']' }

func isTagChar(c byte) bool { return isAstringChar(c) && c != '+' }

// astring atoms also take 8-bit bytes: clients type UTF-8 passwords
// unquoted, and refusing them helps nobody.
func isLooseAstringChar(c byte) bool { return isAstringChar(c) || c >= 0x80 }

func (p *parser) span(ok func(byte) bool) []byte {
	start := p.pos
	for !p.eol() && ok(p.line[p.pos]) {
		p.pos++
	}
	return p.line[start:p.pos]
}

func (p *parser) sp() error {
	if p.eol() {
		return p.bad("Missing arguments.")
	}
	if p.peek() != ' ' {
		return p.bad("Expected a space.")
	}
	p.pos++
	return nil
}

func (p *parser) end() error {
	if !p.eol() {
		return p.bad("Unexpected extra arguments.")
	}
	return nil
}

func (p *parser) command() (*command, error) {
	tag := p.span(isTagChar)
	if len(tag) == 0 || (!p.eol() && p.peek() != ' ') {
		if len(p.line) == 0 {
			return nil, p.bad("Empty command line.")
		}
		return nil, p.bad("Invalid tag.")
	}
	p.tag = string(tag)
	cmd := &command{tag: p.tag}
	if err := p.sp(); err != nil {
		return nil, p.bad("Missing command.")
	}
	name := p.span(isAtomChar)
	if len(name) == 0 {
		return nil, p.bad("Missing command.")
	}
	cmd.name = strings.ToUpper(string(name))
	if !p.eol() && p.peek() != ' ' {
		return nil, p.bad("Invalid command name.")
	}
	var err error
	switch cmd.name {
	case "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS":
		err = p.end()
	case "ID":
		err = p.idArgs(cmd)
	case "LOGIN":
		if p.rd.noLogin {
			cmd.skipped = true
			return cmd, nil
		}
		err = p.loginArgs(cmd)
	case "AUTHENTICATE":
		if p.rd.noLogin {
			cmd.skipped = true
			return cmd, nil
		}
		err = p.authArgs(cmd)
	default:
		cmd.skipped = true
		return cmd, nil
	}
	if err != nil {
		return nil, err
	}
	return cmd, nil
}

func (p *parser) loginArgs(cmd *command) error {
	var err error
	if err = p.sp(); err != nil {
		return err
	}
	if cmd.user, err = p.astring(); err != nil {
		return err
	}
	if err = p.sp(); err != nil {
		return err
	}
	if cmd.pass, err = p.astring(); err != nil {
		return err
	}
	return p.end()
}

func isBase64Char(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '='
}

func (p *parser) authArgs(cmd *command) error {
	if err := p.sp(); err != nil {
		return err
	}
	mech := p.span(isAtomChar)
	if len(mech) == 0 {
		return p.bad("Missing authentication mechanism.")
	}
	cmd.mech = strings.ToUpper(string(mech))
	if p.eol() {
		return nil
	}
	if err := p.sp(); err != nil {
		return err
	}
	ir := p.span(isBase64Char)
	if len(ir) == 0 {
		return p.bad("Invalid initial response.")
	}
	cmd.ir, cmd.hasIR = string(ir), true
	return p.end()
}

// idArgs: SP ("(" [string SP nstring *(SP string SP nstring)] ")" / NIL).
func (p *parser) idArgs(cmd *command) error {
	if err := p.sp(); err != nil {
		return err
	}
	if p.nil() {
		cmd.idNil = true
		return p.end()
	}
	if p.peek() != '(' || p.eol() {
		return p.bad("Invalid ID arguments.")
	}
	p.pos++
	cmd.id = [][]byte{}
	if p.peek() == ')' && !p.eol() {
		p.pos++
		return p.end()
	}
	for {
		if len(cmd.id) >= 2*maxIDFields {
			return p.bad("Too many ID fields.")
		}
		field, err := p.string()
		if err != nil {
			return err
		}
		if err := p.sp(); err != nil {
			return err
		}
		var value []byte
		if !p.nil() {
			if value, err = p.string(); err != nil {
				return err
			}
		}
		cmd.id = append(cmd.id, field, value)
		if p.peek() == ')' && !p.eol() {
			p.pos++
			return p.end()
		}
		if err := p.sp(); err != nil {
			return err
		}
	}
}

// nil consumes NIL (case-insensitive) when it stands alone.
func (p *parser) nil() bool {
	rest := p.line[p.pos:]
	if len(rest) < 3 || !strings.EqualFold(string(rest[:3]), "NIL") {
		return false
	}
	if len(rest) > 3 && isAstringChar(rest[3]) {
		return false
	}
	p.pos += 3
	return true
}

// astring = atom / quoted / literal. The result is never nil.
func (p *parser) astring() ([]byte, error) {
	switch p.peek() {
	case '"', '{':
		return p.string()
	}
	a := p.span(isLooseAstringChar)
	if len(a) == 0 {
		return nil, p.bad("Invalid string argument.")
	}
	return bytes.Clone(a), nil
}

// string = quoted / literal. The result is never nil.
func (p *parser) string() ([]byte, error) {
	if p.eol() {
		return nil, p.bad("Missing arguments.")
	}
	switch p.peek() {
	case '"':
		return p.quoted()
	case '{':
		return p.literal()
	}
	return nil, p.bad("Expected a string.")
}

func (p *parser) quoted() ([]byte, error) {
	p.pos++
	out := []byte{}
	for {
		if p.eol() {
			return nil, p.bad("Unterminated quoted string.")
		}
		c := p.line[p.pos]
		p.pos++
		switch c {
		case '"':
			return out, nil
		case '\\':
			if p.eol() {
				return nil, p.bad("Unterminated quoted string.")
			}
			e := p.line[p.pos]
			p.pos++
			if e != '"' && e != '\\' {
				return nil, p.bad("Invalid escape in a quoted string.")
			}
			out = append(out, e)
		case 0, '\r', '\n':
			return nil, p.bad("Invalid character in a quoted string.")
		default:
			out = append(out, c)
		}
	}
}

// trailingLiteral finds a literal marker ("{n}" or "{n+}") ending line.
// n is capped so it cannot overflow (anything that large is too big).
func trailingLiteral(line []byte) (n int, sync, ok bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false, false
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 0 {
		return 0, false, false
	}
	num := line[open+1 : len(line)-1]
	sync = true
	if len(num) > 0 && num[len(num)-1] == '+' {
		num, sync = num[:len(num)-1], false
	}
	if len(num) == 0 {
		return 0, false, false
	}
	for _, c := range num {
		if c < '0' || c > '9' {
			return 0, false, false
		}
		if n < 1<<40 {
			n = n*10 + int(c-'0')
		}
	}
	return n, sync, true
}

// literal reads "{n}" / "{n+}" CRLF and n bytes, then the line that
// continues the command. For "{n}" the proxy itself asks for the bytes.
func (p *parser) literal() ([]byte, error) {
	n, sync, ok := trailingLiteral(p.line[p.pos:])
	if !ok || bytes.IndexByte(p.line[p.pos+1:], '{') >= 0 {
		return nil, p.bad("Invalid literal.")
	}
	if n > p.rd.maxLiteral || n > p.rd.budget {
		if sync {
			// The client waits for "+", which never comes: nothing
			// follows, the command is over.
			return nil, p.bad("Literal too big.")
		}
		return nil, errLiteralTooBig
	}
	if sync && p.rd.cont != nil {
		if err := p.rd.cont(); err != nil {
			return nil, err
		}
	}
	buf, err := p.rd.readLiteral(n)
	if err != nil {
		return nil, err
	}
	line, err := p.rd.readLine()
	if err != nil {
		return nil, err
	}
	p.line, p.pos = line, 0
	if bytes.IndexByte(buf, 0) >= 0 {
		return nil, p.bad("NUL in a literal.")
	}
	return buf, nil
}

// skipRest discards what is left of a command that is not parsed: the
// bytes of non-synchronizing literals ending its lines, with the lines
// after them. A synchronizing literal ends it (its bytes only come
// after a "+", which is never sent).
func (p *parser) skipRest() error {
	line := p.line
	for {
		n, sync, ok := trailingLiteral(line)
		if !ok || sync {
			return nil
		}
		if n > p.rd.maxLiteral {
			return errLiteralTooBig
		}
		if n > p.rd.budget {
			return errLineTooLong
		}
		if _, err := p.rd.readLiteral(n); err != nil {
			return err
		}
		var err error
		if line, err = p.rd.readLine(); err != nil {
			return err
		}
	}
}

// quotable reports whether s can be sent as an IMAP4rev1 quoted string.
func quotable(s []byte) bool {
	for _, c := range s {
		if c == 0 || c == '\r' || c == '\n' || c >= 0x80 {
			return false
		}
	}
	return true
}

// quote returns s as a quoted string (s must be quotable).
func quote(s []byte) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for _, c := range s {
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

// encode renders cmd back to the wire (quoted strings where possible,
// LITERAL+ literals otherwise). Used by the fuzz target's round trip.
func (cmd *command) encode() []byte {
	var b bytes.Buffer
	str := func(s []byte) {
		if quotable(s) {
			b.WriteString(quote(s))
			return
		}
		b.WriteString("{" + strconv.Itoa(len(s)) + "+}\r\n")
		b.Write(s)
	}
	b.WriteString(cmd.tag + " " + cmd.name)
	switch cmd.name {
	case "LOGIN":
		if cmd.skipped {
			break
		}
		b.WriteByte(' ')
		str(cmd.user)
		b.WriteByte(' ')
		str(cmd.pass)
	case "AUTHENTICATE":
		if cmd.skipped {
			break
		}
		b.WriteString(" " + cmd.mech)
		if cmd.hasIR {
			b.WriteString(" " + cmd.ir)
		}
	case "ID":
		if cmd.idNil {
			b.WriteString(" NIL")
			break
		}
		b.WriteString(" (")
		for i, s := range cmd.id {
			if i > 0 {
				b.WriteByte(' ')
			}
			if s == nil {
				b.WriteString("NIL")
			} else {
				str(s)
			}
		}
		b.WriteByte(')')
	}
	b.WriteString("\r\n")
	return b.Bytes()
}
