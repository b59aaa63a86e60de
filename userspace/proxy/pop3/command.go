package pop3

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
)

// maxVerb is the longest command keyword accepted. RFC 1939 keywords are
// three or four characters; a little slack keeps unknown ones "unknown"
// rather than "malformed", which are answered alike anyway.
const maxVerb = 16

// command is one parsed client line.
type command struct {
	// Verb is the keyword, upper-cased (POP3 keywords are
	// case-insensitive).
	Verb string
	// Arg is everything after the first space, as sent: PASS takes the
	// rest of the line, spaces included.
	Arg string
}

// parseCommand splits a line (its CRLF or LF already removed) into the
// keyword and the rest. It refuses lines holding NUL, CR or LF (nothing
// of them may reach a node inside an argument) and keywords that are not
// 1..maxVerb ASCII letters.
func parseCommand(line []byte) (command, bool) {
	if bytes.ContainsAny(line, "\x00\r\n") {
		return command{}, false
	}
	verb, arg, _ := bytes.Cut(line, []byte{' '})
	if len(verb) == 0 || len(verb) > maxVerb {
		return command{}, false
	}
	up := make([]byte, len(verb))
	for i, b := range verb {
		switch {
		case b >= 'A' && b <= 'Z':
			up[i] = b
		case b >= 'a' && b <= 'z':
			up[i] = b - 'a' + 'A'
		default:
			return command{}, false
		}
	}
	return command{Verb: string(up), Arg: string(arg)}, true
}

// trimEOL removes one trailing LF and the CR before it, if any.
func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte{'\n'})
	return bytes.TrimSuffix(b, []byte{'\r'})
}

// authArgs are the arguments of AUTH (RFC 5034): a mechanism and an
// optional initial response ("=" is an empty one).
type authArgs struct {
	Mech    string // upper-cased; "" for a bare AUTH (list mechanisms)
	Initial string
	HasIR   bool
}

var errAuthSyntax = errors.New("AUTH syntax")

// parseAuth parses AUTH's argument.
func parseAuth(arg string) (authArgs, error) {
	f := strings.Fields(arg)
	switch len(f) {
	case 0:
		return authArgs{}, nil
	case 1:
		return authArgs{Mech: strings.ToUpper(f[0])}, nil
	case 2:
		return authArgs{Mech: strings.ToUpper(f[0]), Initial: f[1], HasIR: true}, nil
	}
	return authArgs{}, errAuthSyntax
}

var errPlain = errors.New("invalid PLAIN response")

// decodePlain decodes a SASL PLAIN response (RFC 4616): base64 of
// authzid NUL authcid NUL passwd, "=" standing for an empty response.
// The password may hold spaces and quotes, never NUL, CR or LF (they
// could not be passed on to a node that only speaks USER/PASS).
func decodePlain(b64 string) (authzid, authcid, pass string, err error) {
	if b64 == "=" {
		return "", "", "", errPlain
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", "", "", errPlain
	}
	parts := strings.SplitN(string(raw), "\x00", 3)
	if len(parts) != 3 || parts[1] == "" || strings.ContainsAny(parts[2], "\x00\r\n") {
		return "", "", "", errPlain
	}
	return parts[0], parts[1], parts[2], nil
}

// encodePlain builds the PLAIN response atoll sends a node.
func encodePlain(authzid, authcid, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authzid + "\x00" + authcid + "\x00" + pass))
}

// respCode returns the RFC 2449 response code of a "-ERR [CODE] text"
// line, upper-cased, or "".
func respCode(line string) string {
	rest, ok := strings.CutPrefix(line, "-ERR [")
	if !ok {
		return ""
	}
	code, _, ok := strings.Cut(rest, "]")
	if !ok {
		return ""
	}
	return strings.ToUpper(code)
}
