package directory

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStaticLookup(t *testing.T) {
	const file = `# islands of example.org
alice@example.org   a
*@example.net       b      # the whole domain
bob                 b
carol@example.net   c      # an exact rule beats its domain's
dave#x@example.org  d      # '#' inside a name is part of it
	 eve@example.org	e	 # blanks and tabs around fields

*                   z
`
	s, err := ParseStatic("islands", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 7 {
		t.Fatalf("Len %d, want 7", s.Len())
	}
	noDefault, err := ParseStatic("nodef", []byte("alice@example.org a\n*@example.net b\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		s      *Static
		user   string
		island string // "" = ErrUnknownUser
	}{
		{s, "alice@example.org", "a"},
		{s, "bob", "b"},
		{s, "bob@example.org", "z"}, // "bob" is a name without domain, not bob@anything
		{s, "anyone@example.net", "b"},
		{s, "carol@example.net", "c"},
		{s, "dave#x@example.org", "d"},
		{s, "eve@example.org", "e"},
		{s, "frank@example.com", "z"},
		{s, "frank", "z"},
		{s, "Alice@example.org", "z"}, // case-sensitive: the proxy passes normalised names
		{s, "anyone@Example.NET", "z"},
		{s, "x@sub.example.net", "z"}, // a domain rule is that domain only
		{s, "a@b@example.net", "b"},   // the domain is after the last '@'
		{s, "*", "z"},
		{s, "*@example.net", "b"},
		{noDefault, "alice@example.org", "a"},
		{noDefault, "x@example.net", "b"},
		{noDefault, "bob", ""},
		{noDefault, "bob@example.com", ""},
		{noDefault, "", ""},
	} {
		r, err := tc.s.Lookup(context.Background(), tc.user)
		switch {
		case tc.island == "" && !errors.Is(err, ErrUnknownUser):
			t.Errorf("%s: Lookup(%q) = %+v, %v; want ErrUnknownUser", tc.s.name, tc.user, r, err)
		case tc.island != "" && (err != nil || r.Island != tc.island):
			t.Errorf("%s: Lookup(%q) = %+v, %v; want island %s", tc.s.name, tc.user, r, err, tc.island)
		case r.Cached || r.Stale:
			t.Errorf("%s: Lookup(%q) = %+v: a static answer is neither cached nor stale", tc.s.name, tc.user, r)
		}
	}

	empty, err := ParseStatic("empty", []byte("# nothing\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := empty.Lookup(context.Background(), "alice"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("empty file: %v", err)
	}
}

func TestStaticErrors(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       []string // each must appear in the error
	}{
		{"no island", "alice\n", []string{"f:1: \"alice\" has no island"}},
		{"three fields", "\n\nalice a b\n", []string{"f:3: 3 fields"}},
		{"bad island", "alice A\n", []string{"f:1: island \"A\" is not a valid name"}},
		{"island with dot", "alice a.b\n", []string{"f:1: island \"a.b\""}},
		{"island too long", "alice " + strings.Repeat("a", 33) + "\n", []string{"f:1: island"}},
		{"island leading dash", "alice -a\n", []string{"f:1: island \"-a\""}},
		{"duplicate exact", "alice a\nbob b\nalice c\n", []string{"f:3: a second rule for alice (the first is on line 1)"}},
		{"duplicate domain", "*@example.org a\n\n*@example.org a\n", []string{"f:3: a second rule for *@example.org (the first is on line 1)"}},
		{"two defaults", "* a\n# x\n* b\n", []string{"f:3: a second default rule '*' (the first is on line 1)"}},
		{"star in name", "al*ce a\n", []string{"f:1: name \"al*ce\": '*' only"}},
		{"star domain", "*@*.org a\n", []string{"f:1: domain \"*.org\""}},
		{"empty domain", "*@ a\n", []string{"f:1: domain \"\""}},
		{"domain with @", "*@a@b a\n", []string{"f:1: domain \"a@b\""}},
		{"leading @", "@example.org a\n", []string{"f:1: name \"@example.org\": nothing before or after"}},
		{"trailing @", "alice@ a\n", []string{"f:1: name \"alice@\""}},
		{"control character", "al\x01ice a\n", []string{"f:1: name", "control"}},
		{"invalid UTF-8", "al\xffice a\n", []string{"f:1: name", "UTF-8"}},
		{"several at once", "alice a\nbob\nalice b\n", []string{"f:2:", "f:3: a second rule for alice"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseStatic("f", []byte(tc.file))
			if err == nil {
				t.Fatalf("parsed: %+v", s)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestStaticWithNames(t *testing.T) {
	s, err := ParseStatic("f", []byte("Alice@Example.org a\nbob b\n*@Example.NET n\n* z\n"))
	if err != nil {
		t.Fatal(err)
	}
	n := Names{Lowercase: true, DefaultDomain: "example.org"}
	ns, err := s.WithNames(n)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ in, island string }{
		{"ALICE@example.org", "a"},
		{"Bob", "b"},
		{"bob@example.org", "b"},
		{"x@EXAMPLE.net", "n"},
		{"someone", "z"},
	} {
		user, _, err := n.Normalize(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := ns.Lookup(context.Background(), user); err != nil || r.Island != tc.island {
			t.Errorf("%q (as %q): %+v, %v; want %s", tc.in, user, r, err, tc.island)
		}
	}
	// The original is untouched.
	if r, _ := s.Lookup(context.Background(), "alice@example.org"); r.Island != "z" {
		t.Fatalf("WithNames changed the original: %+v", r)
	}

	// Rules that become one after normalisation.
	dup, err := ParseStatic("f", []byte("bob a\n# c\nbob@example.org b\n*@x.org c\n*@X.org d\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = dup.WithNames(n)
	for _, w := range []string{"f:3: a second rule for bob@example.org once names are normalised (the first is on line 1)",
		"f:5: a second rule for *@x.org once names are normalised (the first is on line 4)"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v lacks %q", err, w)
		}
	}
}

func TestLoadStatic(t *testing.T) {
	p := filepath.Join(t.TempDir(), "islands.map")
	if err := os.WriteFile(p, []byte("alice a\nbob\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadStatic(p); err == nil || !strings.Contains(err.Error(), p+":2:") {
		t.Fatalf("error %v does not name %s:2", err, p)
	}
	if err := os.WriteFile(p, []byte("alice a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := LoadStatic(p)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.Lookup(context.Background(), "alice"); err != nil || r.Island != "a" {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := LoadStatic(p + ".missing"); err == nil {
		t.Fatal("missing file loaded")
	}
}
