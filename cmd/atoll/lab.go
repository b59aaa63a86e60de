package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/deploy/lab/reference"
)

const labUsage = `usage: atoll lab [-once] [-ha vrrp|bgp] [-mta-path front|island] [-prefix P]
       atoll lab -stop

Starts the reference deployment in network namespaces: two LB hosts
(lb-left, lb-right) running 'atoll run' with the same config and keepalived
(VRRP) moving the VIPs' next hop between them, two islands of two Dovecot
nodes (IMAP, POP3, LMTP) with a few users and a welcome message each, slapd
with the users' island attribute, an MTA host running two Postfix
instances (smtp-left, smtp-right) that deliver by LMTP through atoll, and a
client host. With -ha bgp, both LB hosts announce the VIPs by BGP (bird2)
to a router host that spreads flows over them by ECMP, instead of VRRP.
It prints what runs where and commands to try, then waits for
Ctrl-C and removes everything. 'atoll lab -stop' (make stop) cleans up
after a crash; state is kept in ` + labStateFile + `.
`

const (
	labStateFile = "/run/atoll/lab/state.json"
	labDirName   = "atoll-lab"
)

func runLab(args []string) error {
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), labUsage); fs.PrintDefaults() }
	once := fs.Bool("once", false, "tear down right after start-up instead of waiting for Ctrl-C")
	stop := fs.Bool("stop", false, "remove what a crashed lab left behind")
	mtaPath := fs.String("mta-path", string(reference.MTAFront), "where the MTAs deliver: front (atoll's LMTP router) or island (island a's LMTP VIP)")
	prefix := fs.String("prefix", "atoll", "namespace name prefix")
	ha := fs.String("ha", string(reference.HAVRRP), "how the LB hosts share the VIPs: vrrp (keepalived, active/standby) or bgp (bird2 + ECMP router, scale-out)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if os.Geteuid() != 0 {
		return errors.New("lab: needs root (network namespaces, BPF, Dovecot, Postfix)")
	}
	if err := reference.Cleanup(labStateFile, self, os.Stdout); err != nil {
		return err
	}
	if *stop {
		return nil
	}
	if *mtaPath != string(reference.MTAFront) && *mtaPath != string(reference.MTAIsland) {
		return fmt.Errorf("lab: -mta-path %q: front or island", *mtaPath)
	}
	// Stop on Ctrl-C or SIGTERM, also while starting.
	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	fmt.Println("atoll lab: the reference deployment in network namespaces")
	env, err := reference.Start(startCtx, reference.Options{
		Dir: filepath.Join(os.TempDir(), labDirName), Atoll: self, Prefix: *prefix,
		MTAPath: reference.MTAPath(*mtaPath), HA: reference.HA(*ha), Log: prefixWriter{"  "},
		Record: func(st reference.State) error { return reference.WriteState(labStateFile, st) },
	})
	if err != nil {
		_ = reference.Cleanup(labStateFile, self, os.Stdout)
		return err
	}
	defer func() {
		fmt.Println("\nstopping: daemons, pinned state, namespaces ...")
		if err := env.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "atoll lab:", err)
		}
		if err := reference.Cleanup(labStateFile, self, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "atoll lab:", err)
		}
	}()
	printLab(env, self)
	if *once {
		return nil
	}
	<-ctx.Done()
	return nil
}

// prefixWriter indents progress lines.
type prefixWriter struct{ p string }

func (w prefixWriter) Write(b []byte) (int, error) {
	fmt.Print(w.p + string(b))
	return len(b), nil
}

func printLab(env *reference.Env, self string) {
	ns := env.Namespaces()
	fmt.Println("\nwhat runs where (namespace: address — daemons):")
	fmt.Printf("  %-15s %-22s %-34s %s\n", "role", "namespace", "address", "runs")
	row := func(role, addr, runs string) {
		fmt.Printf("  %-15s %-22s %-34s %s\n", role, ns[role].Name, addr, runs)
	}
	row("client", lab.ClientV4.Addr().String()+", "+lab.ClientV6.Addr().String(), "your mail client (curl)")
	row("mta", lab.MTALeftV4.Addr().String()+", "+lab.MTARightV4.Addr().String(), "Postfix smtp-left, smtp-right (LMTP to "+string(env.Opts.MTAPath)+")")
	bgp := env.Opts.HA == reference.HABGP
	for _, lb := range env.LBs {
		ha := "bird2 announcing the VIPs"
		if !bgp {
			ha = "keepalived BACKUP"
			if ok, _ := lb.HoldsVIPs(); ok {
				ha = "keepalived MASTER"
			}
		}
		row(lb.Name, lb.V4.Addr().String()+", "+lb.V6.Addr().String(), "atoll run (XDP + proxy), "+ha)
	}
	if bgp {
		row("router", lab.RouterV4.Addr().String()+", "+lab.RouterV6.Addr().String(), "bird2, ECMP over both LB hosts")
	}
	row("ldap", lab.ServerV4.Addr().String(), "slapd (ou=people,dc=example,dc=org; mailIsland)")
	for _, n := range env.Lab.Nodes {
		v := reference.IslandVIPs[n.Island]
		row(n.Name, n.V4.String(), fmt.Sprintf("Dovecot island %s (VIP %s on lo, decap.c)", n.Island, v[0]))
	}
	hop4, hop6, holder := lab.FloatV4.Addr(), lab.FloatV6.Addr(), "held by the VRRP master"
	if bgp {
		hop4, hop6, holder = lab.RouterV4.Addr(), lab.RouterV6.Addr(), "the router; ECMP over both LB hosts"
	}
	fmt.Printf(`
VIPs (next hop %s / %s, %s):
  %-16s front door: IMAP 143, POP3 110, LMTP 24 through the login proxy
  %-16s island a:   IMAP, POP3, LMTP by XDP (ipip, direct server return)
  %-16s island b:   the same
  IPv6: %s, %s, %s

users (password = name-pw): `, hop4, hop6, holder, reference.FrontV4, reference.IslandVIPs["a"][0], reference.IslandVIPs["b"][0],
		reference.FrontV6, reference.IslandVIPs["a"][1], reference.IslandVIPs["b"][1])
	for i, u := range reference.Users {
		if i > 0 {
			fmt.Print(", ")
		}
		fmt.Printf("%s (island %s)", u.Name, u.Island)
	}
	c, m := ns["client"].Name, ns["mta"].Name
	left, right := env.LBs[0], env.LBs[1]
	fmt.Printf(`

try, as root:
  # read mail through the front door (the proxy finds the island in LDAP)
  ip netns exec %[1]s curl -s --user alice@example.org:alice-pw 'imap://%[3]s/INBOX' -X 'FETCH 1:* (ENVELOPE)'
  ip netns exec %[1]s curl -s --user bob@example.org:bob-pw pop3://%[3]s/1
  # straight to island b's VIP (XDP, the node answers the client directly)
  ip netns exec %[1]s curl -s --user bob@example.org:bob-pw 'imap://%[4]s/INBOX' -X 'SEARCH ALL'
  # send mail (smtp-left relays by LMTP to atoll, which finds each recipient's island)
  ip netns exec %[2]s swaks -s %[5]s --from me@example.org --to alice@example.org,dave@example.org --h-Subject 'hi from the lab'
  # the daemons
  %[6]s status -socket %[7]s
  %[6]s status -socket %[8]s
  ip netns exec %[9]s curl -s 127.0.0.1:9742/metrics | grep -E '^atoll_(node_state|proxy_logins_total)'
  # fail things
  %[6]s drain -socket %[7]s dbmail-left-a
  ip netns exec %[9]s ip link set eth0 down     # lb-left "crashes": the VIPs move to lb-right
  ip netns exec %[9]s ip link set eth0 up

logs and configs: %[10]s
`, c, m, reference.FrontV4, reference.IslandVIPs["b"][0], lab.MTALeftV4.Addr(), self, left.Socket, right.Socket, left.NS.Name, env.Opts.Dir)
	if bgp {
		fmt.Printf("  ip netns exec %s ip route show 203.0.113.0/24   # the router's ECMP route\n  birdc -s %s show protocols\n",
			ns["router"].Name, env.RouterBirdSock)
	}
	fmt.Println("\nCtrl-C stops the lab and removes everything ('make stop' after a crash).")
}
