package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/atoll-lb/atoll/maps"
)

// MaglevResult is the build time of one ring.
type MaglevResult struct {
	Nodes    int     `json:"nodes"`
	Size     uint32  `json:"ring_size"`
	MsMedian float64 `json:"ms_median"`
	MsMin    float64 `json:"ms_min"`
	MsMax    float64 `json:"ms_max"`
}

func runMaglev(runs int, progress func(string)) ([]MaglevResult, error) {
	var out []MaglevResult
	for _, n := range []int{10, 100, 1000} {
		nodes := make([]maps.MaglevNode, n)
		for i := range nodes {
			nodes[i] = maps.MaglevNode{Name: fmt.Sprintf("node-%04d", i), ID: uint32(i), Weight: 1}
		}
		var ms []float64
		for i := range runs {
			progress(fmt.Sprintf("maglev %4d nodes run %d/%d", n, i+1, runs))
			start := time.Now()
			if _, err := maps.BuildMaglev(nodes, maps.DefaultRingSize); err != nil {
				return nil, err
			}
			ms = append(ms, float64(time.Since(start).Microseconds())/1000)
		}
		out = append(out, MaglevResult{Nodes: n, Size: maps.DefaultRingSize, MsMedian: median(ms), MsMin: slices.Min(ms), MsMax: slices.Max(ms)})
	}
	return out, nil
}
