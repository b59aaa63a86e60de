//go:build linux

package reference

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/userspace/netns"
)

// The BGP example (HABGP). Each LB host runs bird2 announcing the VIP
// prefixes (203.0.113.0/24, 2001:db8:f::/64) with itself as next hop, one
// session per family to the router; the router's bird2 merges the equal
// paths into one multipath kernel route, and the kernel hashes each flow
// (L4 policy) onto one LB host. Short hold timers (3 s) make a dead LB
// host's routes go quickly; production would add BFD.
//
// What is announced here is static: a production LB host should withdraw
// its announcement while atoll is unhealthy (`birdc disable vips4 vips6`
// from a check on `atoll status`; see docs/operations.md).
const (
	lbAS     = 64601
	routerAS = 64600
)

var birdLB = template.Must(template.New("bird-lb").Parse(`# bird.conf of {{.Name}} (deploy/lab/reference, BGP example)
router id {{.V4}};
log "{{.Log}}" all;
protocol device {}
protocol static vips4 {
  ipv4;
  route 203.0.113.0/24 blackhole;
}
protocol static vips6 {
  ipv6;
  route 2001:db8:f::/64 blackhole;
}
protocol bgp router4 {
  local {{.V4}} as {{.AS}};
  neighbor {{.RouterV4}} as {{.RouterAS}};
  hold time 3; keepalive time 1; connect retry time 1;
  ipv4 { import none; export where proto = "vips4"; next hop self; };
}
protocol bgp router6 {
  local {{.V6}} as {{.AS}};
  neighbor {{.RouterV6}} as {{.RouterAS}};
  hold time 3; keepalive time 1; connect retry time 1;
  ipv6 { import none; export where proto = "vips6"; next hop self; };
}
`))

var birdRouter = template.Must(template.New("bird-router").Parse(`# bird.conf of the router (deploy/lab/reference, BGP example)
router id {{.V4}};
log "{{.Log}}" all;
protocol device {}
protocol kernel k4 {
  ipv4 { import none; export all; };
  merge paths on;
}
protocol kernel k6 {
  ipv6 { import none; export all; };
  merge paths on;
}
{{- range .LBs}}
protocol bgp {{.Proto}}4 {
  local {{$.V4}} as {{$.AS}};
  neighbor {{.V4}} as {{.AS}};
  hold time 3; keepalive time 1; connect retry time 1;
  ipv4 { import all; export none; };
}
protocol bgp {{.Proto}}6 {
  local {{$.V6}} as {{$.AS}};
  neighbor {{.V6}} as {{.AS}};
  hold time 3; keepalive time 1; connect retry time 1;
  ipv6 { import all; export none; };
}
{{- end}}
`))

// startBird starts bird2 in ns in the foreground with a private config,
// control socket and log.
func (e *Env) startBird(name string, ns *netns.NS, dir string, tmpl *template.Template, data map[string]any) (sock, logPath string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("reference: %w", err)
	}
	conf, sock, logPath := filepath.Join(dir, "bird.conf"), filepath.Join(dir, "bird.ctl"), filepath.Join(dir, "bird.log")
	data["Log"] = logPath
	var b strings.Builder
	if err := tmpl.Execute(&b, data); err != nil {
		return "", "", fmt.Errorf("reference: %w", err)
	}
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return "", "", fmt.Errorf("reference: %w", err)
	}
	cmd := ns.Command(context.Background(), "bird", "-f", "-c", conf, "-s", sock, "-P", filepath.Join(dir, "bird.pid"))
	p, err := startProc("bird "+name, cmd, filepath.Join(dir, "bird.out"))
	if err != nil {
		return "", "", err
	}
	e.onClose(func() error { return p.stop(syscall.SIGTERM, 5*time.Second) })
	return sock, logPath, e.recordGroup("bird "+name, p.PID())
}

func (e *Env) startBGP(ctx context.Context) error {
	type lbData struct {
		Proto  string
		V4, V6 any
		AS     int
	}
	var lbs []lbData
	for _, lb := range e.LBs {
		var err error
		lb.BirdSock, lb.BirdLog, err = e.startBird(lb.Name, lb.NS, filepath.Join(lb.dir, "bird"), birdLB, map[string]any{
			"Name": lb.Name, "V4": lb.V4.Addr(), "V6": lb.V6.Addr(), "AS": lbAS,
			"RouterV4": lab.RouterV4.Addr(), "RouterV6": lab.RouterV6.Addr(), "RouterAS": routerAS,
		})
		if err != nil {
			return err
		}
		lbs = append(lbs, lbData{Proto: strings.ReplaceAll(lb.Name, "-", "_"), V4: lb.V4.Addr(), V6: lb.V6.Addr(), AS: lbAS})
	}
	sock, _, err := e.startBird("router", e.Lab.Router, filepath.Join(e.Opts.Dir, "router"), birdRouter, map[string]any{
		"V4": lab.RouterV4.Addr(), "V6": lab.RouterV6.Addr(), "AS": routerAS, "LBs": lbs,
	})
	if err != nil {
		return err
	}
	e.RouterBirdSock = sock
	e.logf("waiting for the router's ECMP routes to the VIPs over both LB hosts ...")
	return e.WaitECMP(ctx, 2)
}

// ECMPNextHops returns the router's next hops toward the IPv4 and IPv6
// VIP prefixes.
func (e *Env) ECMPNextHops() (v4, v6 []string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, dst := range []string{"203.0.113.0/24", "2001:db8:f::/64"} {
		fam := []string{"-4", "-6"}[i]
		out, err := e.Lab.Router.Exec(ctx, "ip", fam, "route", "show", dst)
		if err != nil {
			return nil, nil, err
		}
		var hops []string
		f := strings.Fields(string(out))
		for j := 0; j+1 < len(f); j++ {
			if f[j] == "via" {
				hops = append(hops, f[j+1])
			}
		}
		if i == 0 {
			v4 = hops
		} else {
			v6 = hops
		}
	}
	return v4, v6, nil
}

// WaitECMP waits until the router routes both VIP prefixes over n next hops.
func (e *Env) WaitECMP(ctx context.Context, n int) error {
	for {
		v4, v6, err := e.ECMPNextHops()
		if err == nil && len(v4) == n && len(v6) == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("reference: the router never had %d next hops for the VIPs (v4 %v, v6 %v, %v): %w", n, v4, v6, err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
