package maps

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/atoll-lb/atoll/bpf"
)

// TestConstsMatchObject checks the Go mirrors of bpf/consts.h against the
// compiled object: map sizes, the stat enums and the struct layouts.
func TestConstsMatchObject(t *testing.T) {
	spec, err := bpf.LoadBalancer()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint32{
		MapServices:       MaxServices * 2,
		MapSvcTable:       1,
		MapServiceState:   MaxServices,
		MapVIPAddrs:       MaxVIPAddrs,
		MapVIPFilter:      1,
		MapBackends:       MaxBackends,
		MapRings:          MaxRings,
		MapRingsPrev:      MaxRings,
		MapRingGrace:      MaxRings,
		MapConntrack4:     DefaultConntrackSize,
		MapConntrack6:     DefaultConntrackSize,
		MapNextHops:       MaxBackends,
		MapFlowCache:      FlowCacheSize,
		MapFlowCacheGen:   1,
		MapStats:          uint32(NumStats),
		MapBackendTraffic: MaxBackends,
		MapRetiredTraffic: MaxServices + 1,
		MapAffinity4:      MaxAffinity,
		MapAffinity6:      MaxAffinity,
	} {
		m, ok := spec.Maps[name]
		if !ok {
			t.Errorf("object has no map %q", name)
			continue
		}
		if m.MaxEntries != want {
			t.Errorf("map %s: %d entries in the object, Go expects %d", name, m.MaxEntries, want)
		}
	}
	if in := spec.Maps[MapSvcTable].InnerMap; in.MaxEntries != SvcTableSize || in.ValueSize != uint32(binary.Size(svcSlot{})) {
		t.Errorf("services table template: %d entries of %d bytes, Go expects %d of %d", in.MaxEntries, in.ValueSize, SvcTableSize, binary.Size(svcSlot{}))
	}
	if got := spec.Maps[MapRings].InnerMap.MaxEntries; got != DefaultRingSize+1 {
		t.Errorf("ring template: %d entries, want DefaultRingSize+1 = %d", got, DefaultRingSize+1)
	}

	if got, want := spec.Maps[MapVIPFilter].ValueSize, uint32(1<<VIPFilterLog2/8); got != want {
		t.Errorf("vip_filter value: %d bytes in the object, Go expects %d (VIPFilterLog2 %d)", got, want, VIPFilterLog2)
	}

	var stat *btf.Enum
	if err := spec.Types.TypeByName("stat", &stat); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, v := range stat.Values {
		if v.Name == "STAT_MAX" {
			if int(v.Value) != NumStats {
				t.Errorf("STAT_MAX = %d, NumStats = %d", v.Value, NumStats)
			}
			continue
		}
		name := StatName(Stat(v.Value))
		if name == "unknown" || name == "" || seen[name] {
			t.Errorf("%s (%d) has no unique Go name (%q)", v.Name, v.Value, name)
		}
		seen[name] = true
	}
}
