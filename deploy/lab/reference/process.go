//go:build linux

package reference

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
)

// proc is a daemon the reference lab started and owns (atoll run,
// keepalived, bird): a peer.Process (its own process group, killed with
// us, reaped only once the group is gone) with a name and a log file.
type proc struct {
	name string
	*peer.Process
}

// startProc starts cmd (output appended to logPath) as a group leader.
func startProc(name string, cmd *exec.Cmd, logPath string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("reference: %s: %w", name, err)
	}
	defer logf.Close()
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = nil // stop() ends it; a cancelled context must not race it
	p, err := peer.StartProcess(cmd)
	if err != nil {
		return nil, fmt.Errorf("reference: start %s: %w", name, err)
	}
	return &proc{name: name, Process: p}, nil
}

// stop sends sig (SIGTERM, or SIGKILL for a crash), waits up to grace,
// then SIGKILLs what is left of the group and reaps the leader.
// Idempotent.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) error {
	if err := p.Stop(grace, sig == syscall.SIGKILL); err != nil {
		return fmt.Errorf("reference: %s (pid %d): %w", p.name, p.PID(), err)
	}
	return nil
}

// startTimeOf is the process's start time in clock ticks after boot: a
// PID whose start time differs is another process.
func startTimeOf(pid int) (uint64, error) {
	s, err := peer.ReadStat(pid)
	return s.StartTime, err
}

// alive says whether pid is still the process that started at startTime.
func alive(pid int, startTime uint64) bool {
	s, err := peer.ReadStat(pid)
	return err == nil && s.StartTime == startTime && s.State != 'Z' && s.State != 'X'
}

// groupMembersIn lists the live processes of group pgid whose network
// namespace is one of netInodes.
func groupMembersIn(pgid int, netInodes map[uint64]bool) []int {
	var pids []int
	for _, pid := range peer.GroupMembers(pgid) {
		if netInodes[netInode(pid)] {
			pids = append(pids, pid)
		}
	}
	return pids
}

// netInode is the inode of a process's network namespace (0 if unknown).
func netInode(pid int) uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &st); err != nil {
		return 0
	}
	return st.Ino
}
