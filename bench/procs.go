package main

// Child processes of the end-to-end suite (HAProxy, Perdition, nginx,
// `atoll run`), each the leader of its own process group, and what the
// kernel accounts to such a group: CPU time and memory, read from /proc.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// childProc is a started child, leader of its process group.
type childProc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
}

// startChild starts cmd in a new process group (killed with us), its
// output to logPath.
func startChild(name string, cmd *exec.Cmd, logPath string) (*childProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &childProc{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *childProc) pid() int { return p.cmd.Process.Pid }

func (p *childProc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *childProc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	return tail(string(b), 20)
}

// stop sends SIGTERM to the leader (by its PID), waits up to grace, then
// SIGKILLs what is left of its process group (by its PGID) and reaps the
// leader. Idempotent.
func (p *childProc) stop(grace time.Duration) {
	pgid := p.pid()
	if p.running() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(grace):
		}
	}
	if len(groupMembers(pgid)) > 0 {
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
	<-p.exited
	// Children the leader did not reap are reaped by init; wait until
	// they are gone so their sockets and memory are too (bounded).
	for deadline := time.Now().Add(5 * time.Second); len(groupMembers(pgid)) > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
}

// statFields are the fields of /proc/PID/stat after the command name
// (field 3 onwards, so index 0 is field 3).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed stat")
	}
	return strings.Fields(string(b[i+1:])), nil
}

// groupMembers lists the live processes of process group pgid.
func groupMembers(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := statFields(pid)
		if err != nil || len(f) < 3 {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid && f[0] != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

// groupCPU is the CPU time, in seconds, of process group pgid: user +
// system of every live member plus what each has collected from its
// reaped children (cutime + cstime). Between two readings the difference
// counts every process of the group once, including children that lived
// and were reaped in between (a forking server's sessions).
func groupCPU(pgid int) float64 {
	var ticks int64
	for _, pid := range groupMembers(pgid) {
		f, err := statFields(pid)
		if err != nil || len(f) < 15 {
			continue
		}
		for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
	}
	return float64(ticks) / clockTicks
}

// groupMem is the memory of a process group: the sum over its members
// of VmRSS (which counts shared pages once per process) and of Pss (which
// divides them among the processes sharing them), in KiB.
type groupMem struct {
	Procs  int   `json:"processes"`
	RSSKiB int64 `json:"rss_kib"`
	PssKiB int64 `json:"pss_kib"`
}

func readGroupMem(pgid int) groupMem {
	var m groupMem
	for _, pid := range groupMembers(pgid) {
		pm, err := readProcMem(pid)
		if err != nil {
			continue
		}
		m.Procs++
		m.RSSKiB += pm.RSSKiB
		if b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup")); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if rest, ok := strings.CutPrefix(l, "Pss:"); ok {
					if f := strings.Fields(rest); len(f) > 0 {
						v, _ := strconv.ParseInt(f[0], 10, 64)
						m.PssKiB += v
					}
				}
			}
		}
	}
	return m
}

// softirqSeconds is the box-wide softirq time of /proc/stat, in seconds.
func softirqSeconds() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 7 && f[0] == "cpu" {
			v, _ := strconv.ParseFloat(f[7], 64) // user nice system idle iowait irq softirq
			return v / clockTicks
		}
	}
	return 0
}
