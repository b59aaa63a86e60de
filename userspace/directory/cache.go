package directory

import (
	"container/list"
	"sync"
	"time"
)

// cacheEntry is one user's last answer.
type cacheEntry struct {
	user     string
	island   string // "" for a negative entry
	negative bool
	expires  time.Time // fresh until then
	dead     time.Time // useless from then on (expires + StaleTTL for positives)
}

// cache maps user names to answers, bounded: when full, the entry written
// longest ago goes. Entries past their use are dropped when met.
type cache struct {
	max int

	mu      sync.Mutex
	entries map[string]*list.Element // of *cacheEntry
	order   list.List                // oldest write first
	evicted uint64
}

func newCache(max int) *cache {
	return &cache{max: max, entries: map[string]*list.Element{}}
}

// get returns a copy of user's entry if it is still of any use at now.
func (c *cache) get(user string, now time.Time) (cacheEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[user]
	if !ok {
		return cacheEntry{}, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.dead) {
		c.order.Remove(el)
		delete(c.entries, user)
		return cacheEntry{}, false
	}
	return *e, true
}

// put writes user's entry (replacing any), then makes room: dead entries
// at the old end go, then the oldest while over the bound.
func (c *cache) put(e cacheEntry, now time.Time) {
	if !now.Before(e.dead) {
		c.remove(e.user) // not worth keeping (TTL 0), and the old answer is superseded
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[e.user]; ok {
		*el.Value.(*cacheEntry) = e
		c.order.MoveToBack(el)
	} else {
		c.entries[e.user] = c.order.PushBack(&e)
	}
	for {
		front := c.order.Front()
		if front == nil {
			return
		}
		fe := front.Value.(*cacheEntry)
		full := c.order.Len() > c.max
		if !full && now.Before(fe.dead) {
			return
		}
		if full && now.Before(fe.dead) {
			c.evicted++
		}
		c.order.Remove(front)
		delete(c.entries, fe.user)
	}
}

func (c *cache) remove(user string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[user]; ok {
		c.order.Remove(el)
		delete(c.entries, user)
	}
}

func (c *cache) stats() (entries int, evicted uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len(), c.evicted
}
