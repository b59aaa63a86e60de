package control

import (
	"fmt"
	"strings"
	"time"

	"github.com/atoll-lb/atoll/maps"
)

// Kinds of control-plane ids, the prefixes of their names in the pinned
// names map.
const (
	kindService = "s:"
	kindBackend = "b:"
	kindIsland  = "i:"
	kindDrain   = "d:" // an admin drain of a node; the id is unused
)

// quarantine is how long a released id is not handed out again: flows
// still tracked with it must not land on whatever gets it next.
const quarantine = 10 * time.Minute

// idTable hands out stable ids by name, persisted in the pinned names map
// so a restarted daemon gives every object the id it had.
type idTable struct {
	m        *maps.Maps
	byName   map[string]uint32
	released map[string]map[uint32]time.Time // kind -> id -> when
	now      func() time.Time
}

func limitOf(kind string) uint32 {
	switch kind {
	case kindService:
		return maps.MaxServices
	case kindBackend:
		return maps.MaxBackends
	default:
		return maps.MaxIslands
	}
}

func loadIDs(m *maps.Maps) (*idTable, error) {
	names, err := m.ListNames()
	if err != nil {
		return nil, err
	}
	t := &idTable{m: m, byName: names, released: map[string]map[uint32]time.Time{}, now: time.Now}
	for name, id := range names {
		kind := name[:min(2, len(name))]
		if kind == kindDrain {
			continue
		}
		if (kind != kindService && kind != kindBackend && kind != kindIsland) || id >= limitOf(kind) {
			return nil, fmt.Errorf("control: pinned names map holds %q -> %d, which this atoll does not understand; run `atoll reset`", name, id)
		}
	}
	return t, nil
}

// get returns the id of name, allocating one (lowest free, not in
// quarantine) when it has none.
func (t *idTable) get(kind, name string) (uint32, error) {
	key := kind + name
	if id, ok := t.byName[key]; ok {
		return id, nil
	}
	used := map[uint32]bool{}
	for n, id := range t.byName {
		if strings.HasPrefix(n, kind) {
			used[id] = true
		}
	}
	now := t.now()
	for id := range t.released[kind] {
		if now.Sub(t.released[kind][id]) < quarantine {
			used[id] = true
		} else {
			delete(t.released[kind], id)
		}
	}
	for id := uint32(0); id < limitOf(kind); id++ {
		if !used[id] {
			if err := t.m.PutName(key, id); err != nil {
				return 0, err
			}
			t.byName[key] = id
			return id, nil
		}
	}
	// Exhausted: take the oldest quarantined id rather than fail.
	var (
		best   uint32
		bestAt time.Time
		found  bool
	)
	for id, at := range t.released[kind] {
		if !found || at.Before(bestAt) {
			best, bestAt, found = id, at, true
		}
	}
	if !found {
		return 0, fmt.Errorf("control: no free %s id (limit %d)", strings.TrimSuffix(kind, ":"), limitOf(kind))
	}
	delete(t.released[kind], best)
	if err := t.m.PutName(key, best); err != nil {
		return 0, err
	}
	t.byName[key] = best
	return best, nil
}

// release forgets name; its id rests in quarantine.
func (t *idTable) release(kind, name string) error {
	key := kind + name
	id, ok := t.byName[key]
	if !ok {
		return nil
	}
	if err := t.m.DeleteName(key); err != nil {
		return err
	}
	delete(t.byName, key)
	if t.released[kind] == nil {
		t.released[kind] = map[uint32]time.Time{}
	}
	t.released[kind][id] = t.now()
	return nil
}

// names lists the names of one kind (without the prefix) and their ids.
func (t *idTable) names(kind string) map[string]uint32 {
	out := map[string]uint32{}
	for n, id := range t.byName {
		if strings.HasPrefix(n, kind) {
			out[strings.TrimPrefix(n, kind)] = id
		}
	}
	return out
}
