package lab

import (
	"fmt"
	"os/exec"
	"path/filepath"
)

// BuildAtoll builds the atoll binary of this tree into dir and returns
// its path: the daemon the end-to-end tests, the reference lab's tests
// and the benchmarks run as a real process.
func BuildAtoll(dir string) (string, error) {
	bin := filepath.Join(dir, "atoll")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/atoll-lb/atoll/cmd/atoll").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/atoll: %w\n%s", err, out)
	}
	return bin, nil
}
