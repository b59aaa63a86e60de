// Command atoll is the XDP-assisted L4 load balancer for mail ports.
//
//	atoll run -c FILE          the daemon: data plane, health checks, reconciler, metrics, API
//	atoll check -c FILE        validate a config without touching anything
//	atoll status [-o json]     services, nodes, health, counters of the running daemon
//	atoll drain|undrain NODE   keep a node's flows but send it no new ones / undo
//	atoll reload               re-read the config (as SIGHUP does)
//	atoll flows [-n N]         a sample of the conntrack table
//	atoll reset -yes           remove the pinned state (detach, drop tracked flows)
//	atoll decap -i IFACE ...   attach the node-side decapsulator (ipip nodes)
//	atoll demo [-once|-stop]   run the data plane in a small namespace topology
//	atoll lab [-once|-stop]    run the reference deployment in namespaces (make run)
//	atoll version              print the version
package main

import (
	"fmt"
	"os"
	"runtime/debug"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

const usage = `usage: atoll COMMAND [flags]

commands:
  run       the daemon: data plane, health checks, reconciler, metrics, admin API
  check     validate a config file without touching anything (like nginx -t)
  status    show services, nodes, health and counters of the running daemon
  drain     drain a node: it keeps its flows and gets no new ones
  undrain   undo a drain
  reload    make the running daemon re-read its config (as SIGHUP does)
  flows     show a sample of the conntrack table
  reset     remove the pinned state: detaches the balancer, drops tracked flows
  decap     attach (or detach) the node-side ipip decapsulator on an interface
  demo      start the data plane in a small namespace topology and show real
            connections going through it
  lab       start the reference deployment in network namespaces: two LB
            hosts with VRRP, two islands of Dovecot nodes, slapd, Postfix
  version   print the version

'atoll COMMAND -h' shows a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "version", "-v", "--version":
		fmt.Println("atoll", buildVersion())
	case "run":
		err = runRun(args)
	case "check":
		err = runCheck(args)
	case "reset":
		err = runReset(args)
	case "status", "drain", "undrain", "reload", "flows":
		err = runCtl(cmd, args)
	case "decap":
		err = runDecap(args)
	case "demo":
		err = runDemo(args)
	case "lab":
		err = runLab(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "atoll: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "atoll:", err)
		os.Exit(1)
	}
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return version
}
