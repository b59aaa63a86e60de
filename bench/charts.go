package main

// PNG charts beside the Markdown report (gonum/plot): one bar chart per
// table worth seeing at a glance. The tables carry the spreads; the
// charts show medians.

import (
	"fmt"
	"image/color"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// series is one set of bars (one colour) of a chart.
type series struct {
	name   string
	values []float64
}

var chartColors = []color.Color{
	color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xff, 0x7f, 0x0e, 0xff},
	color.RGBA{0x2c, 0xa0, 0x2c, 0xff}, color.RGBA{0xd6, 0x27, 0x28, 0xff},
}

// barChart writes a (grouped) bar chart to path.
func barChart(path, title, ylabel string, labels []string, ss []series) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	p.Y.Min = 0
	w := vg.Points(float64(36 / len(ss)))
	for k, s := range ss {
		bars, err := plotter.NewBarChart(plotter.Values(s.values), w)
		if err != nil {
			return fmt.Errorf("chart %s: %w", filepath.Base(path), err)
		}
		bars.LineStyle.Width = 0
		bars.Color = chartColors[k%len(chartColors)]
		bars.Offset = vg.Length(float64(k)-float64(len(ss)-1)/2) * w
		p.Add(bars)
		if len(ss) > 1 {
			p.Legend.Add(s.name, bars)
		}
	}
	p.Legend.Top = true
	p.NominalX(labels...)
	p.X.Tick.Label.Rotation = 0.5
	p.X.Tick.Label.XAlign = -0.9
	p.X.Tick.Label.YAlign = -0.6
	p.Add(plotter.NewGrid())
	width := vg.Length(max(6, 0.9*float64(len(labels)))) * vg.Inch
	return p.Save(width, 4*vg.Inch, path)
}

// writeCharts writes the report's charts as base-NAME.png and returns
// their file names.
func writeCharts(base string, r *Report) ([]string, error) {
	var out []string
	add := func(name, title, ylabel string, labels []string, ss ...series) error {
		path := base + "-" + name + ".png"
		if len(labels) == 0 {
			return nil
		}
		if err := barChart(path, title, ylabel, labels, ss); err != nil {
			return err
		}
		out = append(out, filepath.Base(path))
		return nil
	}
	if len(r.XDP) > 0 {
		var labels []string
		var ns, base []float64
		for _, x := range r.XDP {
			labels = append(labels, x.Path)
			ns, base = append(ns, x.NsPerPkt), append(base, x.Baseline)
		}
		if err := add("xdp", "XDP paths, BPF_PROG_RUN", "ns per packet (median)", labels,
			series{"balancer path", ns}, series{"baseline program", base}); err != nil {
			return out, err
		}
	}
	if e := r.E2E; e != nil {
		for _, ph := range e.Phases {
			var labels []string
			var rate, cpu, fetch []float64
			for _, x := range ph.Rows {
				labels = append(labels, x.Key)
				rate = append(rate, x.Logins.Median)
				cpu = append(cpu, x.CPUTotal.Median)
				fetch = append(fetch, x.Fetch.Median)
			}
			if err := add("sessions-"+ph.Key, "IMAP sessions/s — "+ph.Node, "sessions per second (median)", labels, series{"sessions/s", rate}); err != nil {
				return out, err
			}
			if err := add("cpu-"+ph.Key, "LB host CPU per 1,000 sessions — "+ph.Node, "CPU seconds (process + XDP)", labels, series{"CPU s", cpu}); err != nil {
				return out, err
			}
			if ph.Fetches > 0 {
				if err := add("fetch-"+ph.Key, "Large FETCH — "+ph.Node, "MiB/s (median)", labels, series{"MiB/s", fetch}); err != nil {
					return out, err
				}
			}
		}
		var labels []string
		var pss []float64
		for _, m := range e.Memory {
			labels = append(labels, m.Key)
			pss = append(pss, m.PssKiB.Median)
		}
		if err := add("memory", "LB host memory per 1,000 idle sessions", "KiB (Pss, median)", labels, series{"Pss KiB", pss}); err != nil {
			return out, err
		}
	}
	if l := r.LMTP; l != nil {
		var labels []string
		var router, direct []float64
		for _, x := range l.Rows {
			labels = append(labels, fmt.Sprintf("%d recipient(s)", x.Recipients))
			router, direct = append(router, x.Router.Median), append(direct, x.Direct.Median)
		}
		if err := add("lmtp", "LMTP, 10 KiB messages", "messages per second (median)", labels,
			series{"atoll LMTP router", router}, series{"direct to Dovecot", direct}); err != nil {
			return out, err
		}
	}
	return out, nil
}
