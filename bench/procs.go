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
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
)

// childProc is a started child: a peer.Process (leader of its own
// process group, killed with us, reaped only once its group is gone) with
// a name and a log file.
type childProc struct {
	name    string
	logPath string
	*peer.Process
}

// startChild starts cmd in a new process group, its output to logPath.
func startChild(name string, cmd *exec.Cmd, logPath string) (*childProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := peer.StartProcess(cmd)
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &childProc{name: name, logPath: logPath, Process: p}, nil
}

func (p *childProc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	return tail(string(b), 20)
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs what is left of
// the group and reaps the leader once the group is gone. Idempotent. How
// the child ended does not matter to a measurement.
func (p *childProc) stop(grace time.Duration) { _ = p.Stop(grace, false) }

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

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

// groupCPU is the CPU time, in seconds, of process group pgid: user +
// system of every live member plus what each has collected from its
// reaped children (cutime + cstime). Between two readings the difference
// counts every process of the group once, including children that lived
// and were reaped in between (a forking server's sessions).
func groupCPU(pgid int) float64 {
	var ticks int64
	for _, pid := range peer.GroupMembers(pgid) {
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
	for _, pid := range peer.GroupMembers(pgid) {
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
