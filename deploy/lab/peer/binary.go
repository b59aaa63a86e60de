package peer

import (
	"fmt"
	"os/exec"
	"path/filepath"
)

// sbinDirs hold daemons that are not in a non-root PATH.
var sbinDirs = []string{"/usr/sbin", "/usr/local/sbin", "/sbin"}

// Binary finds an installed program: in PATH, else in the sbin
// directories. Its error says how to install it.
func Binary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range sbinDirs {
		if p, err := exec.LookPath(filepath.Join(d, name)); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("peer: %s is not installed (run deploy/install-deps.sh)", name)
}

// TB is the part of testing.TB that Require uses (this package is also
// built into atoll, which must not import testing).
type TB interface {
	Helper()
	Fatal(args ...any)
}

// Require fails the test unless every program is installed: `make test`
// installs them (deploy/install-deps.sh), so a missing one is a broken
// setup, not a reason to skip.
func Require(t TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := Binary(n); err != nil {
			t.Fatal(err)
		}
	}
}
