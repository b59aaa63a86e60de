// Command jitlines says which source lines of a BPF program its time goes
// to, from perf samples and the program's BTF line info: the per-line
// profile that perf cannot make here, lacking a BPF disassembler.
//
// While the program runs (a long bench run, say), record and attribute:
//
//	perf record -e cpu-clock -a -o /tmp/perf.data -- sleep 4
//	perf script -i /tmp/perf.data -F ip,sym > /tmp/samples.txt
//	go run ./bench/jitlines -samples /tmp/samples.txt
//
// Record without -g: each line of perf script's output is then one sample,
// its first field the address. Samples are matched to loaded programs by
// address, not by symbol: the kernel names a program's symbol after its
// BTF function, so instances of one program loaded with different
// constants (bench.c's wrappers) share a symbol but not their code.
// Without -samples, -id N prints program N's line table (JIT address,
// source line).
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
	id := flag.Int("id", 0, "program id: print its line table, or with -samples only attribute to it")
	samples := flag.String("samples", "", "perf script -F ip,sym output to attribute to source lines")
	top := flag.Int("top", 40, "lines to print per program")
	flag.Parse()
	if err := run(ebpf.ProgramID(*id), *samples, *top); err != nil {
		fmt.Fprintln(os.Stderr, "jitlines:", err)
		os.Exit(1)
	}
}

func run(id ebpf.ProgramID, samples string, top int) error {
	if samples == "" {
		if id == 0 {
			return errors.New("give -samples, or -id for a line table")
		}
		p, err := load(id)
		if err != nil {
			return err
		}
		for _, l := range p.lines {
			fmt.Printf("%#x %s\n", l.addr, l.src)
		}
		return nil
	}
	var progs []*prog
	if id != 0 {
		p, err := load(id)
		if err != nil {
			return err
		}
		progs = append(progs, p)
	} else {
		var err error
		if progs, err = loadAll(); err != nil {
			return err
		}
	}
	if err := count(progs, samples); err != nil {
		return err
	}
	found := false
	for _, p := range progs {
		if p.total > 0 {
			found = true
			p.print(top)
		}
	}
	if !found {
		return fmt.Errorf("no sample of %s falls in a loaded program's code", samples)
	}
	return nil
}

// prog is one loaded program's code: where its source lines start.
type prog struct {
	id     ebpf.ProgramID
	name   string
	code   []span // every function's JIT image
	lines  []line // by address
	counts map[string]int
	total  int
}

// span is one function's JIT image, [start, end).
type span struct{ start, end uint64 }

func (p *prog) holds(ip uint64) bool {
	for _, s := range p.code {
		if ip >= s.start && ip < s.end {
			return true
		}
	}
	return false
}

// line is where a source line's instructions start.
type line struct {
	addr uint64
	src  string
}

func loadAll() ([]*prog, error) {
	var out []*prog
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		id = next
		if p, err := load(id); err == nil {
			out = append(out, p)
		}
	}
}

// load reads a program's JIT address, size and line infos; the kernel
// reports each line info's JIT address beside it.
func load(id ebpf.ProgramID) (*prog, error) {
	pr, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return nil, fmt.Errorf("program %d: %w", id, err)
	}
	defer pr.Close()
	info, err := pr.Info()
	if err != nil {
		return nil, fmt.Errorf("program %d: %w", id, err)
	}
	addrs, ok := info.JitedKsymAddrs()
	if !ok || len(addrs) == 0 {
		return nil, fmt.Errorf("program %d: no JIT address (is the JIT on?)", id)
	}
	lens, ok := info.JitedFuncLens()
	if !ok || len(lens) != len(addrs) {
		return nil, fmt.Errorf("program %d: no JIT function lengths", id)
	}
	jited, ok := info.JitedLineInfos()
	if !ok {
		return nil, fmt.Errorf("program %d: no JIT line info", id)
	}
	infos, err := info.LineInfos()
	if err != nil {
		return nil, fmt.Errorf("program %d: line info: %w", id, err)
	}
	if len(infos) != len(jited) {
		return nil, fmt.Errorf("program %d: %d line infos but %d JIT addresses", id, len(infos), len(jited))
	}
	p := &prog{id: id, name: info.Name, counts: map[string]int{}}
	for i, a := range addrs {
		p.code = append(p.code, span{uint64(a), uint64(a) + uint64(lens[i])})
	}
	for i, li := range infos {
		p.lines = append(p.lines, line{
			addr: jited[i],
			src:  fmt.Sprintf("%s:%d %s", li.Line.FileName(), li.Line.LineNumber(), strings.TrimSpace(li.Line.Line())),
		})
	}
	slices.SortStableFunc(p.lines, func(a, b line) int { return cmp.Compare(a.addr, b.addr) })
	return p, nil
}

// count attributes each sample to the line of the program whose code
// holds its address.
func count(progs []*prog, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		ip, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil {
			continue
		}
		for _, p := range progs {
			if !p.holds(ip) {
				continue
			}
			i, _ := slices.BinarySearchFunc(p.lines, ip+1, func(l line, t uint64) int { return cmp.Compare(l.addr, t) })
			src := "(before the first line)"
			if i > 0 {
				src = p.lines[i-1].src
			}
			p.counts[src]++
			p.total++
			break
		}
	}
	return sc.Err()
}

func (p *prog) print(top int) {
	type row struct {
		src string
		n   int
	}
	var rows []row
	for src, n := range p.counts {
		rows = append(rows, row{src, n})
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Or(cmp.Compare(b.n, a.n), cmp.Compare(a.src, b.src)) })
	fmt.Printf("program %d (%s): %d samples\n", p.id, p.name, p.total)
	for i, r := range rows {
		if i == top {
			break
		}
		fmt.Printf("%5.1f%% %s\n", 100*float64(r.n)/float64(p.total), r.src)
	}
}
