package main

// The remote section: the login load generator pointed at a real
// deployment (`-vip`, `-node`, `-users`), from this host's own network
// namespace. It connects only to the addresses the operator named, and
// like every load loop here it is bounded in count and in time.

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"
)

// remoteFlags are the command-line settings of the remote section.
type remoteFlags struct {
	vips, nodes []netip.AddrPort
	usersFile   string
	src         string
	concurrency int
	maxSessions int
	seconds     float64
}

// addrList is a repeatable ADDR:PORT flag.
type addrList struct{ list *[]netip.AddrPort }

func (a addrList) String() string {
	if a.list == nil {
		return ""
	}
	s := make([]string, len(*a.list))
	for i, x := range *a.list {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func (a addrList) Set(v string) error {
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return fmt.Errorf("want ADDR:PORT ([v6]:PORT for IPv6): %w", err)
	}
	*a.list = append(*a.list, ap)
	return nil
}

// RemoteResult is the "Against a deployment" section.
type RemoteResult struct {
	Users       int         `json:"users"`
	Concurrency int         `json:"concurrency"`
	MaxSessions int         `json:"max_sessions"`
	MaxSeconds  float64     `json:"max_seconds"`
	Rows        []RemoteRow `json:"rows"`
}

// RemoteRow is one named address (or the nodes together).
type RemoteRow struct {
	Name     string `json:"name"`
	Sessions Spread `json:"sessions_per_second"`
	VsNodes  Spread `json:"vs_nodes"` // per-run ratio to the nodes row, when there is one
	Errors   int    `json:"errors"`
	FirstErr string `json:"first_error,omitempty"`
}

// readUsers reads "user password" or "user:password" lines ("#" starts
// a comment).
func readUsers(path string) ([]benchUser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var users []benchUser
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name, pw, ok := strings.Cut(l, ":")
		if f := strings.Fields(l); !ok && len(f) == 2 {
			name, pw, ok = f[0], f[1], true
		}
		if !ok || name == "" || pw == "" {
			return nil, fmt.Errorf("%s:%d: want \"user password\" or \"user:password\"", path, n)
		}
		users = append(users, benchUser{name: strings.TrimSpace(name), password: strings.TrimSpace(pw)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("%s: no users", path)
	}
	return users, nil
}

// runRemote measures IMAP sessions per second (connect, greeting, LOGIN,
// LOGOUT) through every VIP and straight to the nodes, in rounds whose
// order rotates, and the ratio of each VIP to the nodes per round.
func runRemote(rf remoteFlags, runs int, progress func(string)) (*RemoteResult, error) {
	if len(rf.vips) == 0 {
		return nil, fmt.Errorf("the remote section needs at least one -vip ADDR:PORT")
	}
	if rf.usersFile == "" {
		return nil, fmt.Errorf("the remote section needs -users FILE (one \"user password\" per line)")
	}
	users, err := readUsers(rf.usersFile)
	if err != nil {
		return nil, err
	}
	var src netip.Addr
	if rf.src != "" {
		if src, err = netip.ParseAddr(rf.src); err != nil {
			return nil, fmt.Errorf("-src: %w", err)
		}
	}
	type row struct {
		name string
		t    target
		runs []float64
		errs int
		err  error
	}
	var rows []*row
	if len(rf.nodes) > 0 {
		rows = append(rows, &row{name: "nodes (direct)", t: target{addrs: rf.nodes, src: src}})
	}
	for _, v := range rf.vips {
		rows = append(rows, &row{name: "VIP " + v.String(), t: target{addrs: []netip.AddrPort{v}, src: src}})
	}
	// One login per target first: a wrong password or a closed port is
	// an error now, not a table of zeros.
	for _, r := range rows {
		for i := range r.t.addrs {
			if err := loginCycle(r.t, i, users[0]); err != nil {
				return nil, fmt.Errorf("%s: one login as %s: %w", r.name, users[0].name, err)
			}
		}
	}
	maxDur := time.Duration(rf.seconds * float64(time.Second))
	for run := range runs {
		for i := range rows {
			r := rows[(i+run)%len(rows)]
			progress(fmt.Sprintf("remote %-28s run %d/%d", r.name, run+1, runs))
			l := runLoginLoad(r.t, users, rf.concurrency, rf.maxSessions, maxDur)
			r.runs = append(r.runs, l.perSecond())
			r.errs += l.errors
			if r.err == nil {
				r.err = l.firstErr
			}
		}
	}
	res := &RemoteResult{Users: len(users), Concurrency: rf.concurrency, MaxSessions: rf.maxSessions, MaxSeconds: rf.seconds}
	for _, r := range rows {
		x := RemoteRow{Name: r.name, Sessions: spread(r.runs), Errors: r.errs}
		if len(rf.nodes) > 0 {
			x.VsNodes = ratioRuns(r.runs, rows[0].runs)
		}
		if r.err != nil {
			x.FirstErr = r.err.Error()
		}
		res.Rows = append(res.Rows, x)
	}
	return res, nil
}

func remoteMarkdown(r *RemoteResult) string {
	var b strings.Builder
	b.WriteString("## Against a deployment\n\n")
	fmt.Fprintf(&b, "%d concurrent clients from this host, each doing connect → greeting → `LOGIN` → `LOGOUT` in a loop as one of %d users, at most %d sessions or %.0f s per measurement; the order of the rows rotates each round and a ratio is taken per round.\n\n",
		r.Concurrency, r.Users, r.MaxSessions, r.MaxSeconds)
	b.WriteString("| target | sessions/s | min–max | ÷ nodes | min–max | failed | first error |\n|---|---:|---:|---:|---:|---:|---|\n")
	for _, x := range r.Rows {
		vs := "—"
		mm := "—"
		if len(x.VsNodes.Runs) > 0 {
			vs = fmt.Sprintf("%.2f×", x.VsNodes.Median)
			mm = fmt.Sprintf("%.2f–%.2f", x.VsNodes.Min, x.VsNodes.Max)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f–%.0f | %s | %s | %d | %s |\n", x.Name, x.Sessions.Median, x.Sessions.Min, x.Sessions.Max, vs, mm, x.Errors, x.FirstErr)
	}
	b.WriteString("\n")
	return b.String()
}
