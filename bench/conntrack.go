package main

// Conntrack at 1M flows: the IPv4 LRU's memory, the cost of inserting
// into a full table, and how many of the most recent flows are still
// found once more flows than it holds have been inserted (an LRU hash in
// the kernel evicts approximately, per CPU, not strictly the oldest).
//
// Through BPF_PROG_RUN with bench.c's "new flow per run" wrapper: run i
// of a call carries flow seq+i, where seq is bench_seq (the wrapper
// rewrites the client's port and the low two bytes of its address). A
// fill inserts F distinct flows by their handshake's ACK (conntrack learns
// a flow there, not from its SYN); the replay then sets bench_seq back and
// sends the last W flows again, counting conntrack hits (fwd_established)
// against misses (fwd_learned, which re-insert and evict in turn).

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/dataplane"
	"github.com/atoll-lb/atoll/userspace/dataplane/progrun"
)

// ConntrackResult is the "Conntrack at 1M flows" section.
type ConntrackResult struct {
	Size          uint32         `json:"size"`
	MemlockBytes  uint64         `json:"memlock_bytes"` // the IPv4 LRU map, from fdinfo
	BytesPerEntry float64        `json:"bytes_per_entry"`
	Rows          []ConntrackRow `json:"rows"`
}

// ConntrackRow is one fill level.
type ConntrackRow struct {
	Inserted    uint64  `json:"flows_inserted"`
	InsertNs    float64 `json:"insert_ns_per_packet"` // the fill, new flow per run
	Replayed    uint64  `json:"flows_replayed"`       // the most recent ones
	Hits        uint64  `json:"hits"`
	Misses      uint64  `json:"misses"`
	HitRate     float64 `json:"hit_rate"`
	Entries     int     `json:"entries_after_fill,omitempty"`
	ReplayNsPkt float64 `json:"replay_ns_per_packet"`
}

// flowFrame is the first ACK of flow seq as bench.c's rewrite makes it.
func flowFrame(seq uint32) []byte {
	a := benchClient4.As4()
	a[2], a[3] = byte(seq>>24), byte(seq>>16)
	return packet.TCP(packet.TCPSpec{
		SrcMAC: benchMAC, Src: netipFrom4(a), Dst: benchVIP4, SrcPort: uint16(seq), DstPort: 143,
		Flags: uint8(packet.FlagACK), DF: true, Payload: make([]byte, 64),
	})
}

func runConntrack(quick bool, progress func(string)) (*ConntrackResult, error) {
	const size = 1 << 20
	res := &ConntrackResult{Size: size}
	fills := []float64{1, 1.5, 2}
	if quick {
		fills = []float64{2}
	}
	env, err := progrun.New("atl-bench-ct")
	if err != nil {
		return nil, err
	}
	defer env.Close()
	for i := range benchNodes {
		v4 := netipFrom4([4]byte{198, 51, 100, byte(11 + i)})
		if err := env.AddNeigh(v4, []byte{2, 0, 0, 0, 1, byte(0x11 + i)}); err != nil {
			return nil, err
		}
	}
	for _, f := range fills {
		progress(fmt.Sprintf("conntrack %d entries, fill %.1f×", size, f))
		row, err := conntrackFill(env, res, size, f)
		if err != nil {
			return nil, err
		}
		res.Rows = append(res.Rows, row)
	}
	return res, nil
}

func conntrackFill(env *progrun.Env, res *ConntrackResult, size uint32, fill float64) (ConntrackRow, error) {
	var row ConntrackRow
	b, err := setupBench(env, dataplane.BenchOptions{NewFlows: true, Options: dataplane.Options{ConntrackSize: size}})
	if err != nil {
		return row, err
	}
	defer b.Close()
	seqMap, err := benchSeqMap(b.Balancer)
	if err != nil {
		return row, err
	}
	defer seqMap.Close()
	if res.MemlockBytes == 0 {
		res.MemlockBytes = memlock(b.Maps.Conntrack4)
		res.BytesPerEntry = float64(res.MemlockBytes) / float64(size)
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return row, err
	}
	// send runs flows from … from+n-1 in chunks: before each chunk every
	// CPU's bench_seq is set to the next flow and the chunk's frame is
	// that flow; after it the largest bench_seq is where the next chunk
	// starts. (A BPF_PROG_RUN interrupted by a signal is retried from its
	// first packet, possibly on another CPU: chunks keep that from
	// reordering or repeating flows.) It returns the flows sent and the
	// mean wall time per packet.
	send := func(from, n uint32) (uint32, float64, error) {
		const chunk = 1 << 16
		next, sent := from, uint32(0)
		var ns float64
		for next-from < n {
			k := min(chunk, n-(next-from))
			vals := make([]uint32, ncpu)
			for i := range vals {
				vals[i] = next
			}
			if err := seqMap.Put(uint32(0), vals); err != nil {
				return sent, 0, err
			}
			t, err := env.Benchmark(b.Balancer, flowFrame(next), k)
			if err != nil {
				return sent, 0, err
			}
			if err := seqMap.Lookup(uint32(0), &vals); err != nil {
				return sent, 0, err
			}
			ns += t.NsPerRun * float64(k)
			next = next + k
			for _, v := range vals {
				next = max(next, v)
			}
			sent += k
		}
		return next - from, ns / float64(sent), nil
	}
	// Fill: flows 0 … F-1.
	inserted, insertNs, err := send(0, uint32(fill*float64(size)))
	if err != nil {
		return row, err
	}
	row.Inserted, row.InsertNs = uint64(inserted), insertNs
	row.Entries = countEntries(b.Maps.Conntrack4)
	// Replay the newest W = size/2 flows.
	row.Replayed = uint64(size / 2)
	before, err := b.Maps.ReadStats()
	if err != nil {
		return row, err
	}
	_, replayNs, err := send(inserted-uint32(row.Replayed), uint32(row.Replayed))
	if err != nil {
		return row, err
	}
	after, err := b.Maps.ReadStats()
	if err != nil {
		return row, err
	}
	row.ReplayNsPkt = replayNs
	row.Hits = after[maps.StatFwdEstablished] - before[maps.StatFwdEstablished]
	row.Misses = after[maps.StatFwdLearned] - before[maps.StatFwdLearned] + after[maps.StatFwdRescheduled] - before[maps.StatFwdRescheduled]
	if n := row.Hits + row.Misses; n > 0 {
		row.HitRate = float64(row.Hits) / float64(n)
	}
	return row, nil
}

// benchSeqMap finds bench.c's bench_seq among the program's maps.
func benchSeqMap(p *ebpf.Program) (*ebpf.Map, error) {
	info, err := p.Info()
	if err != nil {
		return nil, err
	}
	ids, ok := info.MapIDs()
	if !ok {
		return nil, fmt.Errorf("the kernel does not list the program's maps")
	}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		if mi, err := m.Info(); err == nil && mi.Name == "bench_seq" {
			return m, nil
		}
		m.Close()
	}
	return nil, fmt.Errorf("bench_seq not found among the bench program's maps")
}

// memlock is the map's memory as the kernel charges it (fdinfo).
func memlock(m *ebpf.Map) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "memlock:"); ok {
			v, _ := strconv.ParseUint(strings.TrimSpace(rest), 10, 64)
			return v
		}
	}
	return 0
}

// countEntries walks the map's keys (bounded by its size).
func countEntries(m *ebpf.Map) int {
	n := 0
	it := m.Iterate()
	var k, v []byte
	for it.Next(&k, &v) && n <= int(m.MaxEntries()) {
		n++
	}
	return n
}

func conntrackMarkdown(r *ConntrackResult) string {
	var b strings.Builder
	b.WriteString("## Conntrack at 1M flows (BPF_PROG_RUN)\n\n")
	fmt.Fprintf(&b, "The IPv4 conntrack LRU with %d entries: %.1f MiB as the kernel charges it (`memlock` in fdinfo), %.0f bytes per entry. Per fill level, a fresh table gets the first ACKs of F distinct flows (conntrack learns a flow from its handshake's ACK, not its SYN; bench.c's new-flow-per-run wrapper; the insert cost includes eviction once full, and the wrapper's rewrite), then the most recent %d flows are sent again (both in BPF_PROG_RUN calls of 64Ki packets; the calling thread may move between CPUs between calls, as a NIC's queues spread flows over CPUs): a hit is a conntrack hit (`fwd_established`), a miss is learned anew (`fwd_learned`) and evicts in turn. The kernel's LRU evicts approximately (per-CPU free lists, batch shrinking), so a table holding more than the replayed flows may still miss some.\n\n",
		r.Size, float64(r.MemlockBytes)/(1<<20), r.BytesPerEntry, r.Size/2)
	b.WriteString("| flows inserted | fill | insert ns/pkt | entries after | replayed (newest) | hit rate | replay ns/pkt |\n|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.Rows {
		fmt.Fprintf(&b, "| %d | %.1f× | %.0f | %d | %d | %.2f%% | %.0f |\n", x.Inserted, float64(x.Inserted)/float64(r.Size), x.InsertNs, x.Entries, x.Replayed, 100*x.HitRate, x.ReplayNsPkt)
	}
	b.WriteString("\n")
	return b.String()
}

func netipFrom4(a [4]byte) netip.Addr { return netip.AddrFrom4(a) }
