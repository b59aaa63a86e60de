package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/atoll-lb/atoll/userspace/api"
	"github.com/atoll-lb/atoll/userspace/config"
	"github.com/atoll-lb/atoll/userspace/daemon"
	"github.com/atoll-lb/atoll/userspace/dataplane"
)

const defaultConfig = "/etc/atoll/atoll.yaml"

func runRun(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	cfgPath := fs.String("c", defaultConfig, "config file")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("run: -log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	return daemon.Run(context.Background(), daemon.Options{ConfigPath: *cfgPath, Version: buildVersion(), Log: log})
}

// runCheck validates a config without touching anything, like nginx -t.
func runCheck(args []string) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	cfgPath := fs.String("c", defaultConfig, "config file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			fmt.Fprintln(os.Stderr, err)
			return fmt.Errorf("%s: %d problem(s); nothing was applied", *cfgPath, len(errs))
		}
		return err
	}
	nodes := 0
	for _, i := range cfg.Islands {
		nodes += len(i.Nodes)
	}
	fmt.Printf("%s: ok (%d services, %d islands, %d nodes)\n", *cfgPath, len(cfg.Services), len(cfg.Islands), nodes)
	return nil
}

// runReset removes the pinned state on purpose.
func runReset(args []string) error {
	fs := flag.NewFlagSet("reset", flag.ContinueOnError)
	cfgPath := fs.String("c", "", "config file (for dataplane.pin_path)")
	pin := fs.String("pin", "/sys/fs/bpf/atoll", "pinned state directory (when -c is not given)")
	yes := fs.Bool("yes", false, "do it: detaches the balancer and drops every tracked flow")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir := *pin
	if *cfgPath != "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return err
		}
		dir = cfg.Dataplane.PinPath
	}
	if !*yes {
		return fmt.Errorf("reset detaches the balancer from its interfaces and drops every tracked flow under %s; run `atoll reset -yes` to do it", dir)
	}
	if err := dataplane.Reset(dir); err != nil {
		return err
	}
	fmt.Println("removed the pinned state under", dir)
	return nil
}

func client(fs *flag.FlagSet, args []string) (*api.Client, *flag.FlagSet, error) {
	socket := fs.String("socket", "/run/atoll/atoll.sock", "admin API socket")
	if err := fs.Parse(args); err != nil {
		return nil, fs, err
	}
	return api.NewClient(*socket), fs, nil
}

func runCtl(cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	output := fs.String("o", "table", "output: table or json")
	max := fs.Int("n", 100, "flows: how many to show")
	c, fs, err := client(fs, args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch cmd {
	case "status":
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(st)
		}
		printStatus(os.Stdout, st)
	case "drain", "undrain":
		if fs.NArg() != 1 {
			return fmt.Errorf("usage: atoll %s NODE", cmd)
		}
		if cmd == "drain" {
			err = c.Drain(ctx, fs.Arg(0))
		} else {
			err = c.Undrain(ctx, fs.Arg(0))
		}
		if err != nil {
			return err
		}
		fmt.Printf("%s %sed\n", fs.Arg(0), cmd)
	case "reload":
		if err := c.Reload(ctx); err != nil {
			return err
		}
		fmt.Println("config reloaded")
	case "flows":
		flows, err := c.Flows(ctx, *max)
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(flows)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CLIENT\tVIP\tSERVICE\tNODE\tAGE")
		for _, f := range flows {
			node := f.Node
			if f.Local {
				node = "(local proxy)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0fs\n", f.Client, f.VIP, f.Service, node, f.AgeSec)
		}
		tw.Flush()
	}
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printStatus(w io.Writer, st api.Status) {
	fmt.Fprintf(w, "atoll %s, up %s, config %s\n", st.Version, time.Since(st.StartedAt).Round(time.Second), st.Config)
	fmt.Fprintf(w, "data plane: %s on %s (pinned under %s), %d + %d tracked flows (IPv4 + IPv6)\n",
		st.Dataplane, strings.Join(st.Interfaces, ", "), st.PinPath, st.Conntrack.V4, st.Conntrack.V6)
	if len(st.Drained) > 0 {
		fmt.Fprintf(w, "drained by the admin: %s\n", strings.Join(st.Drained, ", "))
	}
	if st.LastReload != nil {
		res := "ok"
		if !st.LastReload.OK {
			res = "REFUSED: " + firstLine(st.LastReload.Error)
		}
		fmt.Fprintf(w, "last reload: %s, %s\n", st.LastReload.At.Format(time.RFC3339), res)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tVIP\tMODE\tISLAND\tNODE\tSTATE\tHEALTH\tWEIGHT\tPACKETS\tNEW FLOWS\tCHECKS")
	for _, s := range st.Services {
		mode := s.Forwarding + "/" + s.Routing
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\t\t\t\t%d\t%d\t\n", s.Name, s.VIP, mode, s.Island, s.Counters.Packets, s.Counters.NewFlows)
		for _, n := range s.Nodes {
			var checks []string
			for _, c := range n.Checks {
				x := fmt.Sprintf("%s %s %.1fms", c.Path, c.State, c.LatencyMs)
				if c.LastError != "" {
					x = fmt.Sprintf("%s %s (%s)", c.Path, c.State, c.LastError)
				}
				checks = append(checks, x)
			}
			state := n.State
			if n.Drained {
				state += " (admin)"
			}
			fmt.Fprintf(tw, "\t\t\t\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", n.Name, state, n.Health, n.Weight, n.Counters.Packets, n.Counters.NewFlows, strings.Join(checks, "; "))
		}
	}
	tw.Flush()
	if aff, hand := st.Outcomes["fwd_affinity"], st.Outcomes["pass_handoff"]; aff+hand > 0 {
		fmt.Fprintf(w, "\nfront door: %d new flows straight to an island by affinity (XDP), %d handed to the proxy\n", aff, hand)
	}
	if len(st.Outcomes) > 0 {
		fmt.Fprint(w, "\ndata-plane outcomes:")
		for _, k := range sortedKeys(st.Outcomes) {
			fmt.Fprintf(w, " %s=%d", k, st.Outcomes[k])
		}
		fmt.Fprintln(w)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
