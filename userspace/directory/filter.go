package directory

import (
	"errors"
	"fmt"
	"strings"

	"github.com/go-ldap/ldap/v3"
)

// filterTemplate is a parsed LDAPOptions.Filter: literal text and
// placeholders.
type filterTemplate []filterPart

type filterPart struct {
	lit string
	v   byte // 'u', 'n', 'd', or 0 for a literal
}

// parseFilter parses a filter template: %u is the whole name, %n the part
// before the last '@' (the whole name without one), %d the part after it
// ("" without one), %% a '%'. At least one of %u, %n, %d must appear, and
// the filter must compile once filled in.
func parseFilter(t string) (filterTemplate, error) {
	var (
		out  filterTemplate
		lit  strings.Builder
		name bool
	)
	for i := 0; i < len(t); i++ {
		if t[i] != '%' {
			lit.WriteByte(t[i])
			continue
		}
		if i+1 == len(t) {
			return nil, errors.New("ends with a lone '%' (write %% for a '%')")
		}
		i++
		switch c := t[i]; c {
		case '%':
			lit.WriteByte('%')
		case 'u', 'n', 'd':
			if lit.Len() > 0 {
				out = append(out, filterPart{lit: lit.String()})
				lit.Reset()
			}
			out = append(out, filterPart{v: c})
			name = true
		default:
			return nil, fmt.Errorf("holds %%%c; use %%u (the whole name), %%n (the part before '@'), %%d (the domain) or %%%%", c)
		}
	}
	if lit.Len() > 0 {
		out = append(out, filterPart{lit: lit.String()})
	}
	if !name {
		return nil, errors.New("holds no %u, %n or %d: every user would get the same entry")
	}
	for _, probe := range []string{"user@example.org", "user"} {
		if _, err := ldap.CompileFilter(out.expand(probe)); err != nil {
			return nil, fmt.Errorf("is not a valid LDAP filter: %w", err)
		}
	}
	return out, nil
}

// expand fills the template in for user. Every part of the name goes
// through ldap.EscapeFilter (RFC 4515: '*', '(', ')', '\', NUL and every
// byte above 0x7f become \xx), so no name can change the filter's
// structure.
func (f filterTemplate) expand(user string) string {
	local, domain := user, ""
	if i := strings.LastIndexByte(user, '@'); i >= 0 {
		local, domain = user[:i], user[i+1:]
	}
	var b strings.Builder
	for _, p := range f {
		switch p.v {
		case 0:
			b.WriteString(p.lit)
		case 'u':
			b.WriteString(ldap.EscapeFilter(user))
		case 'n':
			b.WriteString(ldap.EscapeFilter(local))
		case 'd':
			b.WriteString(ldap.EscapeFilter(domain))
		}
	}
	return b.String()
}
