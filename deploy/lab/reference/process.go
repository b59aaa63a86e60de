//go:build linux

package reference

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is a daemon the reference lab started and owns (atoll run,
// keepalived, bird): the leader of its own process group, SIGKILLed if the
// thread that started it dies, and reaped only after its whole group is
// gone, so neither its PID nor its group id is reused while we may still
// signal them.
type proc struct {
	name      string
	cmd       *exec.Cmd
	pid       int
	startTime uint64
	exited    chan struct{}

	mu   sync.Mutex
	done bool
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
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.Cancel = nil // stop() ends it; a cancelled context must not race it
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("reference: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	p.startTime, _ = startTimeOf(p.pid)
	go func() {
		defer close(p.exited)
		for {
			var info unix.Siginfo
			if err := unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != unix.EINTR {
				return
			}
		}
	}()
	return p, nil
}

// running reports whether the leader has not exited.
func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends sig (SIGTERM, or SIGKILL for a crash), waits up to grace,
// then SIGKILLs the leader and whatever is left of its group and reaps the
// leader. Idempotent.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return nil
	}
	if p.running() {
		_ = p.cmd.Process.Signal(sig)
		t := time.NewTimer(grace)
		select {
		case <-p.exited:
		case <-t.C:
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.exited
		}
		t.Stop()
	}
	err := killGroup(p.pid, 5*time.Second)
	_ = p.cmd.Wait()
	p.done = true
	if err != nil {
		return fmt.Errorf("reference: %s (pid %d): %w", p.name, p.pid, err)
	}
	return nil
}

// killGroup SIGKILLs the live members of group pgid until none is left.
func killGroup(pgid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		live := groupMembers(pgid, nil)
		if len(live) == 0 {
			return nil
		}
		for _, pid := range live {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of group %d survive SIGKILL", live, pgid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procStat is what /proc/PID/stat tells about a process.
type procStat struct {
	state     byte
	pgrp      int
	startTime uint64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return procStat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := bytes.Fields(b[i+2:])
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	s := procStat{state: f[0][0]}
	s.pgrp, _ = strconv.Atoi(string(f[2]))
	s.startTime, _ = strconv.ParseUint(string(f[19]), 10, 64)
	return s, nil
}

// startTimeOf is the process's start time in clock ticks after boot: a
// PID whose start time differs is another process.
func startTimeOf(pid int) (uint64, error) {
	s, err := readStat(pid)
	return s.startTime, err
}

// groupMembers lists the live processes of group pgid; with netInodes,
// only those whose network namespace is one of them.
func groupMembers(pgid int, netInodes map[uint64]bool) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		s, err := readStat(pid)
		if err != nil || s.pgrp != pgid || s.state == 'Z' || s.state == 'X' {
			continue
		}
		if netInodes != nil && !netInodes[netInode(pid)] {
			continue
		}
		pids = append(pids, pid)
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
