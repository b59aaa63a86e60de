package directory

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
)

// Static is a Directory read from a file of rules, one per line:
//
//	# comment (a '#' at the start of a line or after a blank)
//	alice@example.org  a     # this user
//	bob                b     # a name without a domain
//	*@example.net      b     # every user of a domain
//	*                  a     # everyone else (at most one such rule)
//
// An exact rule wins over a domain rule, which wins over the default; no
// match and no default is ErrUnknownUser. Island names are
// [a-z0-9][a-z0-9-]{0,31}. A name appears in one rule only.
//
// Matching is exact and case-sensitive: Lookup gets names the proxy has
// already normalised (Names.Normalize), so the file must hold names in
// that same form — or call WithNames, which normalises the file's names
// with the same rules (lowercasing, default domain).
type Static struct {
	name   string
	exact  map[string]staticRule // user → rule
	domain map[string]staticRule // domain (after '@') → rule
	def    *staticRule
}

type staticRule struct {
	island string
	line   int
}

var _ Directory = (*Static)(nil)

// LoadStatic reads and parses a static file; errors name path:line.
func LoadStatic(path string) (*Static, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	return ParseStatic(path, data)
}

// ParseStatic parses a static file's content; name is used in errors
// ("name:line: problem"), all of which are reported at once.
func ParseStatic(name string, data []byte) (*Static, error) {
	s := &Static{name: name, exact: map[string]staticRule{}, domain: map[string]staticRule{}}
	var errs []error
	bad := func(line int, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: %s", name, line, fmt.Sprintf(format, a...)))
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		text := stripComment(sc.Text())
		f := strings.Fields(text)
		switch {
		case len(f) == 0:
			continue
		case len(f) == 1:
			bad(n, "%q has no island; write NAME ISLAND", f[0])
			continue
		case len(f) > 2:
			bad(n, "%d fields; write NAME ISLAND (names hold no blanks)", len(f))
			continue
		}
		pattern, island := f[0], f[1]
		if !reIsland.MatchString(island) {
			bad(n, "island %q is not a valid name ([a-z0-9][a-z0-9-]{0,31})", island)
			continue
		}
		if msg := s.add(pattern, staticRule{island: island, line: n}); msg != "" {
			bad(n, "%s", msg)
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// stripComment removes a '#' comment: at the start of the line or after a
// blank (a '#' inside a name is part of it).
func stripComment(line string) string {
	for i := 0; i < len(line); i++ {
		if line[i] == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t') {
			return line[:i]
		}
	}
	return line
}

// add records a rule; it returns the problem, if any.
func (s *Static) add(pattern string, r staticRule) string {
	switch {
	case pattern == "*":
		if s.def != nil {
			return fmt.Sprintf("a second default rule '*' (the first is on line %d)", s.def.line)
		}
		s.def = &r
		return ""
	case strings.HasPrefix(pattern, "*@"):
		d := pattern[2:]
		if msg := nameProblem(d); msg != "" || strings.ContainsAny(d, "@*") {
			if msg == "" {
				msg = "holds '@' or '*'"
			}
			return fmt.Sprintf("domain %q %s", d, msg)
		}
		if first, dup := s.domain[d]; dup {
			return fmt.Sprintf("a second rule for *@%s (the first is on line %d)", d, first.line)
		}
		s.domain[d] = r
		return ""
	}
	if msg := nameProblem(pattern); msg != "" {
		return fmt.Sprintf("name %q %s", pattern, msg)
	}
	if strings.Contains(pattern, "*") {
		return fmt.Sprintf("name %q: '*' only stands alone (the default) or as *@DOMAIN", pattern)
	}
	if strings.HasPrefix(pattern, "@") || strings.HasSuffix(pattern, "@") {
		return fmt.Sprintf("name %q: nothing before or after its '@'", pattern)
	}
	if first, dup := s.exact[pattern]; dup {
		return fmt.Sprintf("a second rule for %s (the first is on line %d)", pattern, first.line)
	}
	s.exact[pattern] = r
	return ""
}

// nameProblem refuses what Names.Normalize refuses (control characters,
// invalid UTF-8, too long, empty).
func nameProblem(name string) string {
	if _, _, err := (Names{}).Normalize(name); err != nil {
		return err.Error()
	}
	return ""
}

// WithNames returns a copy whose names went through n's rules, as the
// proxy's lookups do: exact names through n.Normalize (so "Bob" becomes
// "bob", and "bob" becomes "bob@example.org" with a default domain), and
// domains lowercased if n.Lowercase. Two rules that become the same are
// an error naming both lines.
func (s *Static) WithNames(n Names) (*Static, error) {
	out := &Static{name: s.name, exact: map[string]staticRule{}, domain: map[string]staticRule{}, def: s.def}
	var errs []error
	for _, name := range sortedKeys(s.exact) {
		r := s.exact[name]
		lookup, _, err := n.Normalize(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: name %q: %w", s.name, r.line, name, err))
			continue
		}
		if first, dup := out.exact[lookup]; dup { // keys come in line order: first.line < r.line
			errs = append(errs, fmt.Errorf("%s:%d: a second rule for %s once names are normalised (the first is on line %d)", s.name, r.line, lookup, first.line))
			continue
		}
		out.exact[lookup] = r
	}
	for _, d := range sortedKeys(s.domain) {
		r := s.domain[d]
		if n.Lowercase {
			d = strings.ToLower(d)
		}
		if first, dup := out.domain[d]; dup {
			errs = append(errs, fmt.Errorf("%s:%d: a second rule for *@%s once names are normalised (the first is on line %d)", s.name, r.line, d, first.line))
			continue
		}
		out.domain[d] = r
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func sortedKeys(m map[string]staticRule) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	// By line, so errors come in file order.
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(m[a].line, m[b].line) })
	return keys
}

// Lookup finds user's island: an exact rule, else its domain's rule
// (the part after the last '@'), else the default.
func (s *Static) Lookup(_ context.Context, user string) (Result, error) {
	if r, ok := s.exact[user]; ok {
		return Result{Island: r.island}, nil
	}
	if i := strings.LastIndexByte(user, '@'); i >= 0 {
		if r, ok := s.domain[user[i+1:]]; ok {
			return Result{Island: r.island}, nil
		}
	}
	if s.def != nil {
		return Result{Island: s.def.island}, nil
	}
	return Result{}, ErrUnknownUser
}

// Len is the number of rules.
func (s *Static) Len() int {
	n := len(s.exact) + len(s.domain)
	if s.def != nil {
		n++
	}
	return n
}
