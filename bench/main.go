// Command bench is atoll's benchmark suite (`make bench`). It measures
// every XDP path with BPF_PROG_RUN beside a baseline program run in the
// same process, and the Maglev builder, then writes a Markdown report and
// a JSON file under -out. Every figure is a median of several runs with
// its spread; every comparison is a ratio measured in the same run.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Report is everything one run of the suite measured.
type Report struct {
	Date    string         `json:"date"`
	Host    string         `json:"host"`
	Kernel  string         `json:"kernel"`
	CPUs    int            `json:"cpus"`
	Repeat  uint32         `json:"repeat"`
	Runs    int            `json:"runs"`
	XDP     []XDPResult    `json:"xdp"`
	Maglev  []MaglevResult `json:"maglev"`
	Proxy   *ProxyResult   `json:"proxy,omitempty"`
	Elapsed string         `json:"elapsed"`
}

func main() {
	out := flag.String("out", "bench/results", "directory for the report files")
	quick := flag.Bool("quick", false, "fewer repeats, runs, logins and sessions (about a minute)")
	repeat := flag.Uint("repeat", 2_000_000, "BPF_PROG_RUN repeat count per measurement")
	runs := flag.Int("runs", 7, "measurements per figure (the median is reported)")
	flag.Parse()
	if *quick {
		*repeat, *runs = 200_000, 3
	}
	if err := run(*out, uint32(*repeat), *runs, *quick); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(outDir string, repeat uint32, runs int, quick bool) error {
	start := time.Now()
	progress := newProgress()
	rep := Report{Date: start.UTC().Format(time.RFC3339), Repeat: repeat, Runs: runs, CPUs: numCPU()}
	rep.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		rep.Kernel = strings.TrimSpace(string(b))
	}
	var err error
	if rep.XDP, err = runXDP(repeat, runs, progress); err != nil {
		return fmt.Errorf("xdp: %w", err)
	}
	if rep.Maglev, err = runMaglev(runs, progress); err != nil {
		return fmt.Errorf("maglev: %w", err)
	}
	if rep.Proxy, err = runProxy(quick, runs, progress); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	rep.Elapsed = time.Since(start).Round(time.Second).String()
	progress("")

	md := markdown(&rep)
	fmt.Print(md)
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	base := filepath.Join(outDir, start.UTC().Format("2006-01-02T150405Z"))
	if err := os.WriteFile(base+".md", []byte(md), 0o644); err != nil {
		return err
	}
	js, err := json.MarshalIndent(&rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s.md and %s.json\n", base, base)
	return nil
}

// newProgress returns a progress printer: one updating line on a terminal,
// one line per figure otherwise (the first run of each).
func newProgress() func(string) {
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		return func(s string) { fmt.Fprintf(os.Stderr, "\r\033[K%s", s) }
	}
	return func(s string) {
		if strings.Contains(s, " run 1/") {
			fmt.Fprintln(os.Stderr, strings.Replace(s, " run 1/", " runs: ", 1))
		}
	}
}

func numCPU() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return 0
	}
	n := 0
	for _, r := range strings.Split(strings.TrimSpace(string(b)), ",") {
		var a, z int
		if c, _ := fmt.Sscanf(r, "%d-%d", &a, &z); c == 2 {
			n += z - a + 1
		} else {
			n++
		}
	}
	return n
}

func markdown(r *Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# atoll benchmark, %s\n\n", r.Date)
	fmt.Fprintf(&b, "Host %s, kernel %s, %d CPUs. Each figure is the median of %d runs (min–max beside it); XDP runs repeat each packet %d times in one BPF_PROG_RUN call. Took %s.\n\n",
		r.Host, r.Kernel, r.CPUs, r.Runs, r.Repeat, r.Elapsed)
	b.WriteString("## XDP paths (BPF_PROG_RUN)\n\n")
	b.WriteString("The baseline program parses Ethernet + IP + TCP, swaps MACs and returns XDP_TX; it runs on the same frame right before each measurement, and the ratio is the median of the per-run ratios.\n\n")
	b.WriteString("| path | verdict | ns/packet | min–max | baseline ns | ratio | goal | |\n|---|---|---:|---:|---:|---:|---:|---|\n")
	for _, x := range r.XDP {
		goal, mark := "", ""
		if x.Goal > 0 {
			goal = fmt.Sprintf("≤ %.0f×", x.Goal)
			mark = "met"
			if x.Ratio > x.Goal {
				mark = "**missed**"
			}
		}
		name := x.Path
		if x.Note != "" {
			name += " (" + x.Note + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %.1f | %.1f–%.1f | %.1f | %.2f× | %s | %s |\n", name, x.Verdict, x.NsPerPkt, x.NsMin, x.NsMax, x.Baseline, x.Ratio, goal, mark)
	}
	b.WriteString("\n\"undo step\": bench.c removes the outer header and restores the L2 header after each run, because the kernel does not restore the frame between repeats; its cost (an adjust_head and a 14-byte copy) is included. \"new flow per run\": bench.c rewrites the client port and address after each run so every run misses conntrack and inserts (evicting once the LRU is full); that rewrite is included too.\n\n")
	b.WriteString("## Maglev ring build\n\n| nodes | ring size | ms | min–max |\n|---:|---:|---:|---:|\n")
	for _, m := range r.Maglev {
		fmt.Fprintf(&b, "| %d | %d | %.2f | %.2f–%.2f |\n", m.Nodes, m.Size, m.MsMedian, m.MsMin, m.MsMax)
	}
	if r.Proxy != nil {
		b.WriteString("\n" + proxyMarkdown(r.Proxy))
	}
	return b.String()
}
