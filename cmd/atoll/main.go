// Command atoll is the XDP-assisted L4 load balancer for mail ports.
//
//	atoll version              print the version
//	atoll decap -i IFACE ...   attach the node-side decapsulator (ipip nodes)
//	atoll demo [-once|-stop]   run the data plane in a small namespace topology
//
// `atoll run` (the control plane) arrives with the control-plane issue.
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
  version   print the version
  decap     attach (or detach) the node-side ipip decapsulator on an interface
  demo      start the data plane in a small namespace topology and show real
            connections going through it (what 'make run' does for now)

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
	case "decap":
		err = runDecap(args)
	case "demo":
		err = runDemo(args)
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
