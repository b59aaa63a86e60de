package main

import (
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDemoOnce runs what `make run` runs, to the end of its report, and
// checks every service carried every connection.
func TestDemoOnce(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root to create network namespaces and load BPF programs")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); done <- b }()
	err = runDemo([]string{"-once", "-conns", "10"})
	w.Close()
	os.Stdout = stdout
	out := <-done
	t.Logf("%s", out)
	if err != nil {
		t.Fatal(err)
	}
	rows := regexp.MustCompile(`(?m)^\s+(\S+)\s+(l2dsr|ipip \S+)\s+(\d+)\s+(\d+)\s+all bytes intact$`).FindAllSubmatch(out, -1)
	if len(rows) != 3 {
		t.Fatalf("want 3 service rows with all bytes intact, got %d", len(rows))
	}
	for _, row := range rows {
		a, _ := strconv.Atoi(string(row[3]))
		b, _ := strconv.Atoi(string(row[4]))
		if a+b != 10 {
			t.Fatalf("service %s: %d + %d connections, want 10", row[1], a, b)
		}
	}
	if !strings.Contains(string(out), "fwd_new=30") {
		t.Fatalf("data-plane counters do not show 30 new flows")
	}
	if _, err := os.Stat(demoStateFile); !os.IsNotExist(err) {
		t.Fatalf("state file left behind: %v", err)
	}
}
