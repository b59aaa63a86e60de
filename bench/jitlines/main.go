// Command jitlines maps a loaded BPF program's JIT image to its source
// lines (the program's BTF line info) and, given perf samples, says which
// lines the program's time goes to: the per-line profile that perf cannot
// make here, lacking a BPF disassembler.
//
// While the program runs (a long bench run, say), find its id and record:
//
//	go run ./bench/jitlines                      # lists loaded XDP programs
//	perf record -e cpu-clock -a -o /tmp/perf.data -- sleep 5
//	perf script -i /tmp/perf.data -F ip,sym,symoff > /tmp/samples.txt
//	go run ./bench/jitlines -id 1234 -samples /tmp/samples.txt
//
// Record without -g: each line of perf script's output is then one sample.
// The bench's variants of bench.c's wrapper are loaded under their own
// names (bench, bench_rst, bench_new, bench_rst_new: with the undo step,
// with a new flow per run), since each is compiled differently by the
// verifier: pick the id of the one the measured path uses.
package main

import (
	"bufio"
	"cmp"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

func main() {
	id := flag.Int("id", 0, "program id (0: list loaded XDP programs)")
	samples := flag.String("samples", "", "perf script -F ip,sym,symoff output to attribute to lines")
	top := flag.Int("top", 40, "lines to print with -samples")
	flag.Parse()
	if err := run(*id, *samples, *top); err != nil {
		fmt.Fprintln(os.Stderr, "jitlines:", err)
		os.Exit(1)
	}
}

func run(id int, samples string, top int) error {
	if id == 0 {
		return list()
	}
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return fmt.Errorf("program %d: %w", id, err)
	}
	defer prog.Close()
	lines, name, err := jitLines(prog)
	if err != nil {
		return err
	}
	if samples == "" {
		for _, l := range lines {
			fmt.Printf("%#x %s\n", l.off, l.src)
		}
		return nil
	}
	return attribute(lines, name, samples, top)
}

// list prints the loaded XDP programs: id, name, tag.
func list() error {
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		if info, err := p.Info(); err == nil && p.Type() == ebpf.XDP {
			fmt.Printf("%d %s %s\n", id, info.Name, info.Tag)
		}
		p.Close()
	}
}

// line is where a source line's instructions start in the JIT image.
type line struct {
	off uint64
	src string
}

// jitLines pairs the program's line infos with the JIT addresses the
// kernel reports for them, as offsets into the image.
func jitLines(prog *ebpf.Program) ([]line, string, error) {
	info, err := prog.Info()
	if err != nil {
		return nil, "", err
	}
	addrs, ok := info.JitedKsymAddrs()
	if !ok || len(addrs) == 0 {
		return nil, "", errors.New("no JIT symbol address (is the JIT on?)")
	}
	jited, ok := info.JitedLineInfos()
	if !ok {
		return nil, "", errors.New("no JIT line info")
	}
	infos, err := info.LineInfos()
	if err != nil {
		return nil, "", fmt.Errorf("line info: %w", err)
	}
	if len(infos) != len(jited) {
		return nil, "", fmt.Errorf("%d line infos but %d JIT addresses", len(infos), len(jited))
	}
	out := make([]line, len(infos))
	for i, li := range infos {
		out[i] = line{
			off: jited[i] - uint64(addrs[0]),
			src: fmt.Sprintf("%s:%d %s", li.Line.FileName(), li.Line.LineNumber(), strings.TrimSpace(li.Line.Line())),
		}
	}
	slices.SortStableFunc(out, func(a, b line) int { return cmp.Compare(a.off, b.off) })
	return out, info.Name, nil
}

// attribute counts the samples in the program's symbol by the source line
// whose instructions hold them and prints the top lines.
func attribute(lines []line, name, path string, top int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	suffix := "_" + name + "+0x"
	counts := map[string]int{}
	total := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		for _, field := range strings.Fields(sc.Text()) {
			i := strings.Index(field, suffix)
			if !strings.HasPrefix(field, "bpf_prog_") || i < 0 {
				continue
			}
			off, err := strconv.ParseUint(field[i+len(suffix):], 16, 64)
			if err != nil {
				continue
			}
			j, _ := slices.BinarySearchFunc(lines, off+1, func(l line, t uint64) int { return cmp.Compare(l.off, t) })
			src := "(before the first line)"
			if j > 0 {
				src = lines[j-1].src
			}
			counts[src]++
			total++
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if total == 0 {
		return fmt.Errorf("no samples of a program named %s in %s", name, path)
	}
	type row struct {
		src string
		n   int
	}
	var rows []row
	for src, n := range counts {
		rows = append(rows, row{src, n})
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Or(cmp.Compare(b.n, a.n), cmp.Compare(a.src, b.src)) })
	fmt.Printf("%d samples in %s\n", total, name)
	for i, r := range rows {
		if i == top {
			break
		}
		fmt.Printf("%5.1f%% %s\n", 100*float64(r.n)/float64(total), r.src)
	}
	return nil
}
