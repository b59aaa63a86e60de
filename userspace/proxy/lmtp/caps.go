package lmtp

import (
	"sync"
	"time"
)

// capsMaxAge forgets what a node announced after a day (as the core does
// for IMAP): a node removed from every island stops restricting the list.
const capsMaxAge = 24 * time.Hour

// capBook remembers which optional extensions each node announced in its
// LHLO answer, learned as messages are delivered. The client is offered
// 8BITMIME and SMTPUTF8 only when at least one node was seen and every
// node seen in the last day (of every island) offers them; before any
// node was seen, only the conservative set (PIPELINING,
// ENHANCEDSTATUSCODES, SIZE) is offered. Shared by the sessions of a
// Handler.
type capBook struct {
	mu    sync.Mutex
	nodes map[string]nodeCaps // "island/node" →
}

type nodeCaps struct {
	eightBit, utf8 bool
	at             time.Time
}

func (b *capBook) record(island, node string, ext map[string]string) {
	_, eightBit := ext["8BITMIME"]
	_, utf8 := ext["SMTPUTF8"]
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.nodes == nil {
		b.nodes = map[string]nodeCaps{}
	}
	b.nodes[island+"/"+node] = nodeCaps{eightBit: eightBit, utf8: utf8, at: time.Now()}
}

// common returns whether every node seen lately offers 8BITMIME and
// SMTPUTF8 (false, false when none was seen).
func (b *capBook) common() (eightBit, utf8 bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := 0
	eightBit, utf8 = true, true
	for k, c := range b.nodes {
		if time.Since(c.at) > capsMaxAge {
			delete(b.nodes, k)
			continue
		}
		seen++
		eightBit = eightBit && c.eightBit
		utf8 = utf8 && c.utf8
	}
	if seen == 0 {
		return false, false
	}
	return eightBit, utf8
}
