package maps

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
)

// DefaultRingSize is the default Maglev table size (a prime). Even at 1,000
// nodes each gets about 65 slots, so shares stay within a few percent of
// the weights; adding or removing a node moves, besides that node's own
// slots, about 0.5% of the table.
const DefaultRingSize = 65537

// maxRingSize bounds the table (64 MiB of uint32 per ring is already far
// more than any data plane map should hold).
const maxRingSize = 1 << 24

// MaglevNode is one candidate node of a ring.
type MaglevNode struct {
	Name   string // stable identity: the permutation is seeded from it, so renumbering IDs moves nothing
	ID     uint32 // backend id stored in the table
	Weight uint32 // relative weight; 0 means not in the table (draining)
}

// maglevPerm walks one node's preference list lazily: slot j is
// (offset + j*skip) % M, and since M is prime and 0 < skip < M the list is
// a permutation of all slots, so a free slot is always found.
type maglevPerm struct {
	id     uint32
	weight uint64
	acc    uint64 // weight credit carried between rounds
	pos    uint64 // next preferred slot, offset + j*skip mod M
	skip   uint64
}

// BuildMaglev returns a table of size backend IDs: the Maglev lookup table
// (Eisenbud et al., NSDI 2016) over the nodes with a non-zero weight.
//
// Each node's preference list is seeded from its Name only, via
// sha256(Name): offset = h1 % size and skip = h2 % (size-1) + 1, where h1
// and h2 are the first and second little-endian uint64 of the digest.
// Nodes are taken in Name order whatever the input order, so the same set
// of nodes always gives the same table and IDs can be renumbered freely.
//
// The table is filled in rounds, weighted as in Katran: in each round every
// node adds its Weight to a credit; a node whose credit reaches the largest
// weight pays that much and claims its next preferred free slot. So the
// heaviest nodes claim one slot every round and a node of half their weight
// every other round; with equal weights this is exactly classic Maglev.
// Filling stops as soon as the table is full.
//
// size must be prime, greater than the number of weighted nodes and at
// most 1<<24. Names and IDs must be unique and names non-empty. If no node
// has a weight, BuildMaglev returns (nil, nil): an empty ring, which the
// caller takes as "no backend".
func BuildMaglev(nodes []MaglevNode, size uint32) ([]uint32, error) {
	if size > maxRingSize {
		return nil, fmt.Errorf("maglev: ring size %d exceeds the maximum %d", size, maxRingSize)
	}
	if !isPrime(size) {
		return nil, fmt.Errorf("maglev: ring size %d is not prime", size)
	}

	active := make([]MaglevNode, 0, len(nodes))
	names := make(map[string]struct{}, len(nodes))
	ids := make(map[uint32]string, len(nodes))
	for _, n := range nodes {
		if n.Name == "" {
			return nil, fmt.Errorf("maglev: node with ID %d has an empty name", n.ID)
		}
		if _, dup := names[n.Name]; dup {
			return nil, fmt.Errorf("maglev: duplicate node name %q", n.Name)
		}
		names[n.Name] = struct{}{}
		if other, dup := ids[n.ID]; dup {
			return nil, fmt.Errorf("maglev: duplicate node ID %d (nodes %q and %q)", n.ID, other, n.Name)
		}
		ids[n.ID] = n.Name
		if n.Weight > 0 {
			active = append(active, n)
		}
	}
	if len(active) == 0 {
		return nil, nil
	}
	if uint64(len(active)) >= uint64(size) {
		return nil, fmt.Errorf("maglev: ring size %d must be greater than the number of weighted nodes (%d)", size, len(active))
	}
	slices.SortFunc(active, func(a, b MaglevNode) int { return cmp.Compare(a.Name, b.Name) })

	m := uint64(size)
	perms := make([]maglevPerm, len(active))
	var maxWeight uint64
	for i, n := range active {
		sum := sha256.Sum256([]byte(n.Name))
		h1 := binary.LittleEndian.Uint64(sum[0:8])
		h2 := binary.LittleEndian.Uint64(sum[8:16])
		perms[i] = maglevPerm{
			id:     n.ID,
			weight: uint64(n.Weight),
			pos:    h1 % m,
			skip:   h2%(m-1) + 1,
		}
		maxWeight = max(maxWeight, uint64(n.Weight))
	}

	table := make([]uint32, size)
	taken := make([]bool, size)
	filled := uint64(0)
	// The heaviest node claims a slot every round, so this ends within
	// size rounds.
	for {
		for i := range perms {
			p := &perms[i]
			p.acc += p.weight
			// weight <= maxWeight and acc < maxWeight before the add,
			// so one claim per round settles the credit.
			if p.acc < maxWeight {
				continue
			}
			p.acc -= maxWeight
			for taken[p.pos] {
				p.advance(m)
			}
			table[p.pos] = p.id
			taken[p.pos] = true
			p.advance(m)
			filled++
			if filled == m {
				return table, nil
			}
		}
	}
}

// advance moves to the next entry of the preference list; pos and skip are
// both below m, so one subtraction replaces the modulo.
func (p *maglevPerm) advance(m uint64) {
	p.pos += p.skip
	if p.pos >= m {
		p.pos -= m
	}
}

// isPrime reports whether n is prime, by trial division: callers pass at
// most maxRingSize, so this is a few thousand divisions at worst.
func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := uint64(3); d*d <= uint64(n); d += 2 {
		if uint64(n)%d == 0 {
			return false
		}
	}
	return true
}
