package directory

import (
	"strings"
	"testing"
)

func TestNamesNormalize(t *testing.T) {
	lower := Names{Lowercase: true}
	dom := Names{Lowercase: true, DefaultDomain: "example.org"}
	strip := Names{Lowercase: true, DefaultDomain: "example.org", NodeLogin: NodeLoginStrip}
	keep := Names{DefaultDomain: "example.org", NodeLogin: NodeLoginKeep}
	for _, tc := range []struct {
		name              string
		n                 Names
		in                string
		lookup, nodeLogin string
		err               string // "" = accepted
	}{
		{"as is", Names{}, "Alice@Example.ORG", "Alice@Example.ORG", "Alice@Example.ORG", ""},
		{"lowercase", lower, "Alice@Example.ORG", "alice@example.org", "alice@example.org", ""},
		{"lowercase non-ASCII", lower, "ÉLodie@Example.org", "élodie@example.org", "élodie@example.org", ""},
		{"default domain", dom, "Bob", "bob@example.org", "bob@example.org", ""},
		{"default domain not added twice", dom, "bob@example.net", "bob@example.net", "bob@example.net", ""},
		{"no default domain", lower, "bob", "bob", "bob", ""},
		{"strip", strip, "Carol@Example.net", "carol@example.net", "carol", ""},
		{"strip after default domain", strip, "carol", "carol@example.org", "carol", ""},
		{"strip at last @", strip, "a@b@example.org", "a@b@example.org", "a@b", ""},
		{"strip leading @ keeps name", strip, "@example.org", "@example.org", "@example.org", ""},
		{"keep", keep, "Dave", "Dave@example.org", "Dave@example.org", ""},
		{"keep without default", Names{NodeLogin: NodeLoginKeep}, "dave", "dave", "dave", ""},
		{"longest", Names{}, strings.Repeat("a", MaxNameLen), strings.Repeat("a", MaxNameLen), strings.Repeat("a", MaxNameLen), ""},
		{"filter characters pass (escaped later)", Names{}, "*)(uid=*", "*)(uid=*", "*)(uid=*", ""},

		{"empty", Names{}, "", "", "", "empty"},
		{"too long", Names{}, strings.Repeat("a", MaxNameLen+1), "", "", "too long"},
		{"too long before the default domain", dom, strings.Repeat("a", MaxNameLen+1), "", "", "too long"},
		{"NUL", Names{}, "alice\x00", "", "", "control"},
		{"CR", Names{}, "alice\r", "", "", "control"},
		{"LF", Names{}, "alice\nbob", "", "", "control"},
		{"CRLF injection", lower, "a\r\nA001 LOGOUT", "", "", "control"},
		{"tab", Names{}, "al\tice", "", "", "control"},
		{"space", Names{}, "al ice", "", "", "space"},
		{"DEL", Names{}, "alice\x7f", "", "", "control"},
		{"invalid UTF-8", Names{}, "alice\xff", "", "", "UTF-8"},
		{"truncated UTF-8", Names{}, "\xc3", "", "", "UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lookup, nodeLogin, err := tc.n.Normalize(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Normalize(%q) = %q, %q, %v; want an error mentioning %q", tc.in, lookup, nodeLogin, err, tc.err)
				}
				if lookup != "" || nodeLogin != "" {
					t.Fatalf("refused name still returned %q, %q", lookup, nodeLogin)
				}
				return
			}
			if err != nil {
				t.Fatalf("Normalize(%q): %v", tc.in, err)
			}
			if lookup != tc.lookup || nodeLogin != tc.nodeLogin {
				t.Fatalf("Normalize(%q) = %q, %q; want %q, %q", tc.in, lookup, nodeLogin, tc.lookup, tc.nodeLogin)
			}
		})
	}
}
