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
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Report is everything one run of the suite measured.
type Report struct {
	Date      string           `json:"date"`
	Host      string           `json:"host"`
	Kernel    string           `json:"kernel"`
	CPUs      int              `json:"cpus"`
	Repeat    uint32           `json:"repeat"`
	Runs      int              `json:"runs"`
	XDP       []XDPResult      `json:"xdp"`
	Maglev    []MaglevResult   `json:"maglev"`
	Proxy     *ProxyResult     `json:"proxy,omitempty"`
	E2E       *E2EResult       `json:"e2e,omitempty"`
	LMTP      *LMTPResult      `json:"lmtp,omitempty"`
	Conntrack *ConntrackResult `json:"conntrack,omitempty"`
	Remote    *RemoteResult    `json:"remote,omitempty"`
	Charts    []string         `json:"charts,omitempty"` // PNG files beside the report
	Failed    []string         `json:"failed,omitempty"` // sections that failed, with why
	Elapsed   string           `json:"elapsed"`
}

func main() {
	out := flag.String("out", "bench/results", "directory for the report files")
	quick := flag.Bool("quick", false, "fewer repeats, runs and seconds per figure, no loopback proxy section (under five minutes)")
	repeat := flag.Uint("repeat", 2_000_000, "BPF_PROG_RUN repeat count per measurement")
	runs := flag.Int("runs", 7, "measurements per figure (the median is reported)")
	paths := flag.String("paths", "", "xdp section: measure only the paths whose name contains this")
	only := flag.String("sections", strings.Join(allSections, ","), "comma-separated sections to run (remote: only when asked, or with -vip)")
	var rf remoteFlags
	flag.Var(addrList{&rf.vips}, "vip", "remote section: a deployment's VIP to log in through, ADDR:PORT (repeat)")
	flag.Var(addrList{&rf.nodes}, "node", "remote section: a node to log in to directly, the baseline, ADDR:PORT (repeat)")
	flag.StringVar(&rf.usersFile, "users", "", "remote section: file of \"user password\" lines to log in as")
	flag.StringVar(&rf.src, "src", "", "remote section: local address to connect from")
	flag.IntVar(&rf.concurrency, "concurrency", 16, "remote section: concurrent clients")
	flag.IntVar(&rf.maxSessions, "max-sessions", 20000, "remote section: at most this many sessions per measurement")
	flag.Float64Var(&rf.seconds, "seconds", 10, "remote section: at most this many seconds per measurement")
	flag.Parse()
	if *quick {
		*repeat, *runs = 200_000, 3
	}
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "sections" })
	if len(rf.vips) > 0 && !set {
		*only = "remote" // pointed at a deployment: nothing else
	}
	if *quick && !set {
		// The end-to-end section measures the proxy on the real topology;
		// the loopback proxy section (10,000 idle sessions) is for the
		// full run.
		*only = strings.Join(slices.DeleteFunc(slices.Clone(allSections), func(s string) bool { return s == "proxy" }), ",")
	}
	want := map[string]bool{}
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if !slices.Contains(allSections, s) && s != "remote" {
				fmt.Fprintf(os.Stderr, "bench: unknown section %q (have %s)\n", s, strings.Join(allSections, ", "))
				os.Exit(2)
			}
			want[s] = true
		}
	}
	handleSignals()
	if err := run(*out, uint32(*repeat), *runs, *quick, want, *paths, rf); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// sectionFailed records a failed section; the others still run and
// the report is still written.
func sectionFailed(rep *Report, name string, err error) {
	fmt.Fprintf(os.Stderr, "bench: %s: %v\n", name, err)
	rep.Failed = append(rep.Failed, name+": "+err.Error())
}

// allSections are the parts of the suite, in the order they run; the
// remote section runs only when asked for.
var allSections = []string{"xdp", "conntrack", "maglev", "proxy", "e2e", "lmtp"}

// cleanups run, last added first, when SIGINT or SIGTERM ends the suite
// early: namespaces, daemons and pinned state must not outlive it.
var (
	cleanupMu sync.Mutex
	cleanups  []func()
)

// atInterrupt registers f to run on SIGINT/SIGTERM; the returned func
// unregisters it (call it once f has run normally).
func atInterrupt(f func()) (done func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	cleanups = append(cleanups, f)
	i := len(cleanups) - 1
	return func() {
		cleanupMu.Lock()
		defer cleanupMu.Unlock()
		cleanups[i] = nil
	}
}

func handleSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-ch
		fmt.Fprintf(os.Stderr, "\nbench: %v: cleaning up\n", s)
		cleanupMu.Lock()
		for i := len(cleanups) - 1; i >= 0; i-- {
			if cleanups[i] != nil {
				cleanups[i]()
			}
		}
		os.Exit(130)
	}()
}

func run(outDir string, repeat uint32, runs int, quick bool, want map[string]bool, paths string, rf remoteFlags) error {
	start := time.Now()
	progress := newProgress()
	rep := Report{Date: start.UTC().Format(time.RFC3339), Repeat: repeat, Runs: runs, CPUs: numCPU()}
	rep.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		rep.Kernel = strings.TrimSpace(string(b))
	}
	var err error
	if want["xdp"] {
		if rep.XDP, err = runXDP(repeat, runs, paths, progress); err != nil {
			return fmt.Errorf("xdp: %w", err)
		}
	}
	if want["conntrack"] {
		if rep.Conntrack, err = runConntrack(quick, progress); err != nil {
			sectionFailed(&rep, "conntrack", err)
		}
	}
	if want["maglev"] {
		if rep.Maglev, err = runMaglev(runs, progress); err != nil {
			return fmt.Errorf("maglev: %w", err)
		}
	}
	if want["proxy"] {
		if rep.Proxy, err = runProxy(quick, runs, progress); err != nil {
			sectionFailed(&rep, "proxy", err)
		}
	}
	if want["e2e"] {
		e2eRuns := runs
		if !quick {
			e2eRuns = 5
		}
		if rep.E2E, err = runE2E(quick, e2eRuns, progress); err != nil {
			sectionFailed(&rep, "e2e", err)
		}
	}
	if want["lmtp"] {
		if rep.LMTP, err = runLMTP(quick, runs, progress); err != nil {
			sectionFailed(&rep, "lmtp", err)
		}
	}
	if want["remote"] {
		if rep.Remote, err = runRemote(rf, runs, progress); err != nil {
			sectionFailed(&rep, "remote", err)
		}
	}
	rep.Elapsed = time.Since(start).Round(time.Second).String()
	progress("")

	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	base := filepath.Join(outDir, start.UTC().Format("2006-01-02T150405Z"))
	charts, err := writeCharts(base, &rep)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: charts:", err)
	}
	rep.Charts = charts
	md := markdown(&rep)
	fmt.Print(md)
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
	if len(rep.Failed) > 0 {
		return fmt.Errorf("%d section(s) failed (see the report)", len(rep.Failed))
	}
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
	for _, f := range r.Failed {
		fmt.Fprintf(&b, "**Section failed** — %s\n\n", strings.ReplaceAll(strings.TrimSpace(f), "\n", "\n    "))
	}
	if len(r.Charts) > 0 {
		b.WriteString("Charts (medians; the tables carry the spreads):")
		for _, c := range r.Charts {
			fmt.Fprintf(&b, " [%s](%s)", strings.TrimSuffix(c[strings.Index(c, "Z-")+2:], ".png"), c)
		}
		b.WriteString(".\n\n")
	}
	if len(r.XDP) > 0 {
		xdpMarkdown(&b, r)
	}
	if r.Conntrack != nil {
		b.WriteString(conntrackMarkdown(r.Conntrack))
	}
	if len(r.Maglev) > 0 {
		b.WriteString("## Maglev ring build\n\n| nodes | ring size | ms | min–max |\n|---:|---:|---:|---:|\n")
		for _, m := range r.Maglev {
			fmt.Fprintf(&b, "| %d | %d | %.2f | %.2f–%.2f |\n", m.Nodes, m.Size, m.MsMedian, m.MsMin, m.MsMax)
		}
	}
	if r.E2E != nil {
		b.WriteString("\n" + e2eMarkdown(r.E2E))
	}
	if r.LMTP != nil {
		b.WriteString("\n" + lmtpMarkdown(r.LMTP))
	}
	if r.Proxy != nil {
		b.WriteString("\n" + proxyMarkdown(r.Proxy))
	}
	if r.Remote != nil {
		b.WriteString("\n" + remoteMarkdown(r.Remote))
	}
	return b.String()
}

// xdpMarkdown renders the BPF_PROG_RUN table.
func xdpMarkdown(b *strings.Builder, r *Report) {
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
		fmt.Fprintf(b, "| %s | %s | %.1f | %.1f–%.1f | %.1f | %.2f× | %s | %s |\n", name, x.Verdict, x.NsPerPkt, x.NsMin, x.NsMax, x.Baseline, x.Ratio, goal, mark)
	}
	b.WriteString("\n\"undo step\": bench.c removes the outer header and restores the L2 header after each run, because the kernel does not restore the frame between repeats; its cost (an adjust_head and a 14-byte copy) is included. \"new flow per run\": bench.c rewrites the client port and address after each run so every run is a new flow: a SYN is placed by Maglev without touching conntrack, a first ACK misses conntrack and is inserted (evicting once the LRU is full); that rewrite is included too.\n\n")
}
