//go:build linux

package reference

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/atoll-lb/atoll/userspace/netns"
)

// State is what cleaning up after a crashed lab needs: the process that
// ran it, the namespaces, the process groups of the daemons, the pinned
// bpffs directories and the data directory.
type State struct {
	PID        int      `json:"pid"`
	StartTime  uint64   `json:"start_time"`
	Dir        string   `json:"dir"`
	Namespaces []string `json:"namespaces"`
	Groups     []Group  `json:"groups"`
	Pins       []string `json:"pins"`
}

// Group is a daemon's process group (its leader's PID and start time).
type Group struct {
	Name      string `json:"name"`
	PGID      int    `json:"pgid"`
	StartTime uint64 `json:"start_time"`
}

func (s State) clone() State {
	s.Namespaces = slices.Clone(s.Namespaces)
	s.Groups = slices.Clone(s.Groups)
	s.Pins = slices.Clone(s.Pins)
	return s
}

// WriteState writes st to path atomically.
func WriteState(path string, st State) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Cleanup removes what the lab recorded in the state file path left
// behind: it asks a still running lab process to stop (SIGTERM, by PID and
// start time), then kills the recorded daemons' process groups (only
// processes inside the lab's namespaces), removes the pinned state with
// `atoll reset` (atoll is the binary), deletes the namespaces and the data
// directory, and finally the state file. A missing state file is not an
// error. Progress goes to w.
func Cleanup(path, atoll string, w io.Writer) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reference: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		fmt.Fprintf(w, "ignoring unreadable state file %s: %v\n", path, err)
		return os.Remove(path)
	}
	var errs []error
	if st.PID > 0 && st.PID != os.Getpid() {
		if alive(st.PID, st.StartTime) {
			fmt.Fprintf(w, "stopping the running lab (pid %d) ...\n", st.PID)
			_ = unix.Kill(st.PID, unix.SIGTERM)
			deadline := time.Now().Add(60 * time.Second)
			for alive(st.PID, st.StartTime) && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			if alive(st.PID, st.StartTime) {
				fmt.Fprintf(w, "the lab (pid %d) did not stop: SIGKILL\n", st.PID)
				_ = unix.Kill(st.PID, unix.SIGKILL)
			} else if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
				return nil // it cleaned up after itself
			}
		}
	}
	// Processes of the recorded groups that live in the lab's namespaces.
	inodes := map[uint64]bool{}
	for _, ns := range st.Namespaces {
		var s unix.Stat_t
		if err := unix.Stat(filepath.Join(netns.RunDir, ns), &s); err == nil {
			inodes[s.Ino] = true
		}
	}
	for _, g := range st.Groups {
		if len(inodes) == 0 {
			break
		}
		for range 50 {
			live := groupMembersIn(g.PGID, inodes)
			if len(live) == 0 {
				break
			}
			fmt.Fprintf(w, "killing %s (process group %d: %v)\n", g.Name, g.PGID, live)
			for _, pid := range live {
				_ = unix.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, pin := range st.Pins {
		if _, err := os.Stat(pin); err != nil {
			continue
		}
		fmt.Fprintf(w, "removing pinned state %s\n", pin)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, atoll, "reset", "-yes", "-pin", pin).CombinedOutput()
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("reference: atoll reset -pin %s: %w: %s", pin, err, strings.TrimSpace(string(out))))
		}
		_ = os.Remove(filepath.Dir(pin)) // the pin base, once empty
	}
	for _, ns := range st.Namespaces {
		if _, err := os.Stat(filepath.Join(netns.RunDir, ns)); err != nil {
			continue
		}
		fmt.Fprintf(w, "removing namespace %s\n", ns)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, "ip", "netns", "delete", ns).CombinedOutput()
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("reference: delete namespace %s: %w: %s", ns, err, strings.TrimSpace(string(out))))
		}
	}
	if st.Dir != "" && filepath.IsAbs(st.Dir) && st.Dir != "/" {
		fmt.Fprintf(w, "removing %s\n", st.Dir)
		if err := os.RemoveAll(st.Dir); err != nil {
			errs = append(errs, fmt.Errorf("reference: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reference: %w", err)
	}
	return nil
}
