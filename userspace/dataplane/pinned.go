package dataplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ErrLayout marks a pinned map whose layout differs from the program's:
// pinned state from another atoll version, or a changed conntrack_size.
var ErrLayout = errors.New("pinned map layout differs")

// EnsureBPFFS makes sure dir lies on a bpf filesystem, mounting bpffs on
// /sys/fs/bpf when nothing is mounted there yet, and creates dir.
//
// A bpffs mounted inside a private mount namespace dies with it, and so do
// the pins: `ip netns exec` gives its command such a namespace (it
// remounts /sys). Run `atoll run` in the host's mount namespace (systemd,
// or nsenter --net for a network namespace).
func EnsureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type != unix.BPF_FS_MAGIC && strings.HasPrefix(dir, "/sys/fs/bpf") {
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, ""); err != nil {
			return fmt.Errorf("dataplane: mount bpffs on /sys/fs/bpf: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("dataplane: pin directory: %w", err)
	}
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("dataplane: pin directory %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("dataplane: pin directory %s is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)", dir)
	}
	return nil
}

// checkPinned compares the maps a spec would pin with those already
// pinned under dir, so a mismatch is reported by name, not as a load
// failure.
func checkPinned(spec *ebpf.CollectionSpec, dir string) error {
	var errs []error
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pinned map %s: %w", path, err))
			continue
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("pinned map %s: %w", path, err))
			continue
		}
		var diff []string
		if info.Type != ms.Type {
			diff = append(diff, fmt.Sprintf("type %s, want %s", info.Type, ms.Type))
		}
		if info.KeySize != ms.KeySize {
			diff = append(diff, fmt.Sprintf("key size %d, want %d", info.KeySize, ms.KeySize))
		}
		if info.ValueSize != ms.ValueSize {
			diff = append(diff, fmt.Sprintf("value size %d, want %d", info.ValueSize, ms.ValueSize))
		}
		if info.MaxEntries != ms.MaxEntries {
			diff = append(diff, fmt.Sprintf("%d entries, want %d", info.MaxEntries, ms.MaxEntries))
		}
		if len(diff) > 0 {
			errs = append(errs, fmt.Errorf("%w: %s has %s", ErrLayout, path, strings.Join(diff, ", ")))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("dataplane: %w\n(the pinned state was made by another atoll version or another conntrack_size; `atoll reset` removes it and drops every tracked flow)", errors.Join(errs...))
	}
	return nil
}

func linkPath(pinPath, ifname string) string {
	return filepath.Join(pinPath, "links", ifname)
}

// AttachPinned attaches the balancer to ifname (an interface of the
// calling thread's network namespace) in native mode and pins the link
// under PinPath/links, so forwarding outlives this process. When a
// previous daemon left a pinned link there, its program is replaced in
// place: no packet meets a detached interface.
func (b *Balancer) AttachPinned(pinPath, ifname string, ifindex int) (replaced bool, err error) {
	path := linkPath(pinPath, ifname)
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		defer l.Close()
		if err := l.Update(b.Program); err != nil {
			return false, fmt.Errorf("dataplane: replace program on %s: %w", ifname, err)
		}
		return true, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("dataplane: pinned link %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, fmt.Errorf("dataplane: %w", err)
	}
	l, err := AttachXDP(b.Program, ifindex)
	if err != nil {
		return false, err
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		return false, fmt.Errorf("dataplane: pin link of %s: %w", ifname, err)
	}
	return false, nil
}

// PinnedLinks lists the interfaces with a pinned balancer link.
func PinnedLinks(pinPath string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(pinPath, "links"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// DetachPinned removes ifname's pinned link, which detaches the program.
func DetachPinned(pinPath, ifname string) error {
	path := linkPath(pinPath, ifname)
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		// Not a link any more (e.g. the interface vanished): drop the pin.
		return os.Remove(path)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("dataplane: unpin link of %s: %w", ifname, err)
	}
	return nil
}

// Reset removes everything pinned under pinPath: links (detaching the
// balancer from its interfaces) and maps (dropping every tracked flow).
func Reset(pinPath string) error {
	ifs, err := PinnedLinks(pinPath)
	if err != nil {
		return err
	}
	var errs []error
	for _, ifn := range ifs {
		errs = append(errs, DetachPinned(pinPath, ifn))
	}
	_ = os.Remove(filepath.Join(pinPath, "links"))
	ents, err := os.ReadDir(pinPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("dataplane: %w", err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		errs = append(errs, os.Remove(filepath.Join(pinPath, e.Name())))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dataplane: reset %s: %w", pinPath, err)
	}
	_ = os.Remove(pinPath)
	return nil
}
