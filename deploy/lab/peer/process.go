//go:build linux

package peer

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Process is a foreground daemon we started and own: it runs in its own
// process group (so every process it forks can be found and killed), gets
// SIGKILL if the thread that started it dies (Pdeathsig: a crashed test
// leaves no daemon behind), and is reaped only after its whole group is
// gone, so neither its PID nor its group id can be reused while we still
// signal them.
type Process struct {
	cmd    *exec.Cmd
	pid    int
	exited chan struct{} // closed once the leader has exited (still unreaped)

	mu       sync.Mutex
	done     bool  // reaped
	signaled bool  // we sent SIGTERM or SIGKILL
	waitErr  error // from cmd.Wait
}

// StartProcess starts cmd as the leader of a new process group.
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pgid = 0
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go p.watch()
	return p, nil
}

// watch waits for the leader to exit without reaping it (WNOWAIT): the
// zombie keeps the PID and the process group id reserved until reap.
func (p *Process) watch() {
	defer close(p.exited)
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return
		}
	}
}

// PID is the leader's process id, which is also the group's id.
func (p *Process) PID() int { return p.pid }

// Exited is closed once the leader has exited (it stays unreaped until
// Stop).
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Running reports whether the leader has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// ErrExitedOnItsOwn is in Stop's error when the leader had exited with a
// failure before Stop signalled it.
var ErrExitedOnItsOwn = errors.New("exited on its own")

// Stop sends SIGTERM (or SIGKILL at once if hard), waits up to grace for
// the leader, then SIGKILL; then kills what is left of the group, waits
// for it to be gone and reaps the leader. Idempotent. It returns an error
// if the process had exited on its own with a failure, or if something
// survives.
func (p *Process) Stop(grace time.Duration, hard bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return nil
	}
	if p.Running() {
		p.signaled = true
		sig := syscall.SIGTERM
		if hard {
			sig = syscall.SIGKILL
		}
		_ = p.cmd.Process.Signal(sig) // pidfd-based: never hits a reused PID
		if !hard {
			p.awaitExit(grace)
		}
		<-p.exited
	}
	// The leader is a zombie now: the group id cannot be reused.
	sweepErr := killGroup(p.pid, 5*time.Second)
	p.waitErr = p.cmd.Wait()
	p.done = true
	var errs []error
	if sweepErr != nil {
		errs = append(errs, sweepErr)
	}
	if p.waitErr != nil && !p.signaled {
		errs = append(errs, fmt.Errorf("%w: %w", ErrExitedOnItsOwn, p.waitErr))
	}
	return errors.Join(errs...)
}

// awaitExit waits up to grace for the leader after its SIGTERM. If it is
// still there after 250 ms, the rest of the group gets SIGTERM too, so the
// leader is not left waiting for children: Dovecot's master does not
// signal children still initialising (one forked for a connection that
// came just before) and waits 5 s for them, and it gives its log process
// a second to drain after the others are gone. SIGKILL when grace is over.
func (p *Process) awaitExit(grace time.Duration) {
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	nudge := time.NewTimer(min(250*time.Millisecond, grace/2))
	defer nudge.Stop()
	for {
		select {
		case <-p.exited:
			return
		case <-nudge.C:
			_ = unix.Kill(-p.pid, unix.SIGTERM) // the leader is unreaped: the group id is ours
		case <-deadline.C:
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.exited
			return
		}
	}
}

// killGroup SIGKILLs every process of group pgid and waits until none is
// alive (zombies left to an init that does not reap do not count).
func killGroup(pgid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		live := GroupMembers(pgid)
		if len(live) == 0 {
			return nil
		}
		if err := unix.Kill(-pgid, unix.SIGKILL); err != nil && err != unix.ESRCH {
			return fmt.Errorf("kill process group %d: %w", pgid, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of group %d survive SIGKILL", live, pgid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ProcStat is the part of /proc/PID/stat we use.
type ProcStat struct {
	State      byte
	PPID, PGRP int
	StartTime  uint64 // clock ticks after boot: tells a reused PID apart
}

// ReadStat parses /proc/PID/stat.
func ReadStat(pid int) (ProcStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcStat{}, err
	}
	// "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
	// majflt cmajflt utime stime cutime cstime priority nice threads
	// itrealvalue starttime ..."; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := bytes.Fields(b[i+2:])
	if len(f) < 20 {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	var s ProcStat
	s.State = f[0][0]
	s.PPID, _ = strconv.Atoi(string(f[1]))
	s.PGRP, _ = strconv.Atoi(string(f[2]))
	s.StartTime, _ = strconv.ParseUint(string(f[19]), 10, 64)
	return s, nil
}

// allProcs calls fn for every process in /proc.
func allProcs(fn func(pid int, s ProcStat)) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s, err := ReadStat(pid); err == nil {
			fn(pid, s)
		}
	}
}

// GroupMembers lists the live (non-zombie) processes of group pgid.
func GroupMembers(pgid int) []int {
	var pids []int
	allProcs(func(pid int, s ProcStat) {
		if s.PGRP == pgid && s.State != 'Z' && s.State != 'X' {
			pids = append(pids, pid)
		}
	})
	return pids
}
