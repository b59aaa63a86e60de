//go:build linux

package main

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSuiteSmoke runs the suite's in-process sections (every XDP path
// through BPF_PROG_RUN, Maglev) with tiny repeat counts, so `make test`
// catches a bench that no longer builds its programs, gets a wrong
// verdict or cannot write its report. The numbers are not checked:
// figures belong to `make bench`, not to tests.
func TestSuiteSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: BPF_PROG_RUN needs root; run `make test` as root")
	}
	dir := t.TempDir()
	if err := run(dir, 1000, 1, true, map[string]bool{"xdp": true, "maglev": true}, "", remoteFlags{}); err != nil {
		t.Fatal(err)
	}
	js, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(js) != 1 {
		t.Fatalf("want one JSON report in %s, have %v (%v)", dir, js, err)
	}
	b, err := os.ReadFile(js[0])
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report: %v", err)
	}
	if _, err := os.Stat(strings.TrimSuffix(js[0], ".json") + ".md"); err != nil {
		t.Errorf("markdown report: %v", err)
	}
	if len(rep.XDP) < 10 {
		t.Fatalf("%d XDP paths measured, want every path (at least 10)", len(rep.XDP))
	}
	for _, x := range rep.XDP {
		want := "TX"
		if strings.HasPrefix(x.Path, "pass:") || strings.Contains(x.Path, "handoff") || strings.Contains(x.Path, "LOCAL") {
			want = "PASS"
		}
		if x.Verdict != want {
			t.Errorf("%s: verdict %s, want %s", x.Path, x.Verdict, want)
		}
		if x.NsPerPkt <= 0 || x.Baseline <= 0 {
			t.Errorf("%s: %v ns/packet beside a baseline of %v ns", x.Path, x.NsPerPkt, x.Baseline)
		}
	}
	if len(rep.Maglev) != 3 {
		t.Errorf("Maglev builds for %d sizes, want 3 (10, 100, 1000 nodes)", len(rep.Maglev))
	}
	for _, c := range rep.Charts {
		if _, err := os.Stat(filepath.Join(dir, c)); err != nil {
			t.Errorf("chart %s: %v", c, err)
		}
	}
}

// TestRemoteSection drives the remote section against a fake IMAP node on
// loopback named both as a node and as a VIP: every login counted, the
// ratio present, and a bad users file refused with its line.
func TestRemoteSection(t *testing.T) {
	f, err := startFakeNode()
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	if err := os.WriteFile(users, []byte("# bench users\nalice@example.org alice-pw\nbob@example.org:bob-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rf := remoteFlags{vips: []netip.AddrPort{f.addr()}, nodes: []netip.AddrPort{f.addr()}, usersFile: users,
		concurrency: 4, maxSessions: 200, seconds: 5}
	res, err := runRemote(rf, 2, func(string) {})
	if err != nil {
		t.Fatal(err)
	}
	if res.Users != 2 || len(res.Rows) != 2 {
		t.Fatalf("users %d, rows %d; want 2 and 2 (nodes, one VIP)", res.Users, len(res.Rows))
	}
	for _, r := range res.Rows {
		if r.Errors != 0 || len(r.Sessions.Runs) != 2 || r.Sessions.Min <= 0 || len(r.VsNodes.Runs) != 2 {
			t.Errorf("%s: %+v", r.Name, r)
		}
	}
	if md := remoteMarkdown(res); !strings.Contains(md, "VIP "+f.addr().String()) {
		t.Errorf("markdown lacks the VIP row:\n%s", md)
	}

	if err := os.WriteFile(users, []byte("alice@example.org alice-pw\njustaname\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runRemote(rf, 1, func(string) {}); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Errorf("a users file with a bad line 2: %v, want an error naming line 2", err)
	}
	rf.vips = nil
	if _, err := runRemote(rf, 1, func(string) {}); err == nil {
		t.Error("no -vip: no error")
	}
}
