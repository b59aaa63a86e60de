package directory

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Node-login rules (Names.NodeLogin).
const (
	// NodeLoginKeep logs in to the node with the full name.
	NodeLoginKeep = "keep"
	// NodeLoginStrip logs in to the node with the part before '@'.
	NodeLoginStrip = "strip"
)

// MaxNameLen is the longest user name accepted (RFC 5321's path limit).
const MaxNameLen = 256

// Names are the user-name rules from the config.
type Names struct {
	// Lowercase the name before anything else.
	Lowercase bool
	// DefaultDomain is appended (with '@') to a name without one.
	DefaultDomain string
	// NodeLogin: NodeLoginKeep (default) or NodeLoginStrip.
	NodeLogin string
}

// Normalize returns the name to look up in the directory and the name to
// log in to the node with. Names with control characters (NUL, CR, LF…),
// invalid UTF-8, spaces, or over MaxNameLen bytes are refused: they are
// never sent to LDAP or to a node.
func (n Names) Normalize(user string) (lookup, nodeLogin string, err error) {
	if user == "" {
		return "", "", errors.New("empty user name")
	}
	if len(user) > MaxNameLen {
		return "", "", errors.New("user name too long")
	}
	if !utf8.ValidString(user) {
		return "", "", errors.New("user name is not UTF-8")
	}
	for _, r := range user {
		if r < 0x21 || r == 0x7f {
			return "", "", errors.New("user name with a control character or space")
		}
	}
	if n.Lowercase {
		user = strings.ToLower(user)
	}
	if n.DefaultDomain != "" && !strings.Contains(user, "@") {
		user += "@" + n.DefaultDomain
	}
	lookup, nodeLogin = user, user
	if n.NodeLogin == NodeLoginStrip {
		if i := strings.LastIndexByte(user, '@'); i > 0 {
			nodeLogin = user[:i]
		}
	}
	return lookup, nodeLogin, nil
}
