package control

import (
	"net/netip"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/userspace/config"
)

// TestLearner: consistent logins install an entry; a login into another
// island removes it and bars the address; the bar ends.
func TestLearner(t *testing.T) {
	_, b := newRec(t)
	now := time.Unix(1000, 0)
	ids := map[string]uint32{"a": 1, "b": 2}
	l := NewLearner(b.Maps, nil, func(n string) (uint32, bool) { id, ok := ids[n]; return id, ok }, func() time.Duration { return time.Hour })
	l.now = func() time.Time { return now }
	l.log = discardLogger()
	l.Configure(config.AffinityLearn{Enabled: true, Logins: 2, TTL: 10 * time.Minute, Bar: 30 * time.Minute, MaxEntries: 10, VerifyOneIn: 8},
		[]config.AffinityPrefix{{Prefix: netip.MustParsePrefix("192.0.2.50/32"), Island: "b"}})
	client := netip.MustParseAddr("192.0.2.12")
	entry := func() (island uint32, probe uint16, ok bool) {
		all, err := b.Maps.ListAffinity()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range all {
			if a.Prefix == netip.PrefixFrom(client, 32) {
				return a.Island, a.ProbeMask, a.Learned
			}
		}
		return 0, 0, false
	}
	l.Login(client, "a")
	if _, _, ok := entry(); ok {
		t.Fatal("learned after one login")
	}
	l.Login(client, "a")
	if isl, probe, ok := entry(); !ok || isl != 1 || probe != 7 {
		t.Fatalf("after two logins: island %d probe %d learned %v", isl, probe, ok)
	}
	if n, _ := l.Stats(); n != 1 {
		t.Fatalf("learned count %d", n)
	}
	l.Login(client, "b") // conflict
	if _, _, ok := entry(); ok {
		t.Fatal("entry survived a login into another island")
	}
	if n, c := l.Stats(); n != 0 || c != 1 {
		t.Fatalf("stats %d, %d", n, c)
	}
	l.Login(client, "a")
	l.Login(client, "a")
	if _, _, ok := entry(); ok {
		t.Fatal("learned while barred")
	}
	now = now.Add(31 * time.Minute)
	l.Login(client, "a")
	l.Login(client, "a")
	if _, _, ok := entry(); !ok {
		t.Fatal("not learned after the bar ended")
	}
	// Expiry.
	now = now.Add(11 * time.Minute)
	l.Sweep()
	if _, _, ok := entry(); ok {
		t.Fatal("expired entry not removed")
	}
	// A static /32 is never learned over.
	static := netip.MustParseAddr("192.0.2.50")
	l.Login(static, "a")
	l.Login(static, "a")
	if all, _ := b.Maps.ListAffinity(); len(all) != 0 {
		t.Fatalf("learned over a static address: %+v", all)
	}
}
