// Package daemon is `atoll run`: it loads the config, the data plane
// (pinned, adopting what a previous run left), the reconciler, the health
// monitor, the metrics endpoint and the admin API, and keeps them in step:
// a health change or an admin drain reaches the maps within one
// reconcile, SIGHUP reloads the config as a diff, and a bad config is
// refused while the running one stays in force. Stopping the daemon
// leaves forwarding untouched; `atoll reset` removes the pinned state.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/api"
	"github.com/atoll-lb/atoll/userspace/config"
	"github.com/atoll-lb/atoll/userspace/control"
	"github.com/atoll-lb/atoll/userspace/dataplane"
	"github.com/atoll-lb/atoll/userspace/health"
	"github.com/atoll-lb/atoll/userspace/metrics"
)

// Options start a daemon.
type Options struct {
	ConfigPath string
	Version    string
	Log        *slog.Logger
	// Ready, if set, is called once everything serves.
	Ready func()
}

// Daemon is a running `atoll run`.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	started time.Time

	mu         sync.Mutex // guards cfg, lastReload and the data-plane objects
	cfg        *config.Config
	lastReload *api.Reload

	bal     *dataplane.Balancer
	hc      *dataplane.HealthSteer
	hcLinks []link.Link
	routing []*dataplane.HCRouting
	rec     *control.Reconciler
	mon     *health.Monitor
	met     *metrics.Metrics
	proxy   *proxyState
	learner *control.Learner
	runCtx  context.Context

	trigger chan struct{}
}

// Run runs the daemon until ctx is done or SIGTERM/SIGINT arrives.
func Run(ctx context.Context, opts Options) error {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	cfg, err := config.Load(opts.ConfigPath)
	if err != nil {
		return fmt.Errorf("config refused:\n%w", err)
	}
	d := &Daemon{opts: opts, log: opts.Log, started: time.Now(), cfg: cfg, trigger: make(chan struct{}, 1)}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	d.runCtx = ctx
	if err := d.start(); err != nil {
		d.close()
		return err
	}
	defer d.close()
	core, closer, err := d.buildCore(cfg)
	if err != nil {
		return err
	}
	if err := d.startProxy(ctx, cfg, core, closer); err != nil {
		return err
	}

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	run := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	apiLn, err := api.Listen(cfg.API.Socket)
	if err != nil {
		return err
	}
	run("api", func() error { return api.Serve(ctx, apiLn, apiBackend{d}, d.log) })
	if cfg.Metrics.Listen != "" {
		ln, err := net.Listen("tcp", cfg.Metrics.Listen)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		srv := &http.Server{Handler: d.metricsHandler(), ReadHeaderTimeout: 5 * time.Second}
		run("metrics", func() error {
			go func() { <-ctx.Done(); srv.Close() }()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	run("health", func() error { return d.mon.Run(ctx) })
	if d.learner != nil {
		run("affinity", func() error {
			t := time.NewTicker(time.Minute)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
					d.learner.Sweep()
				}
			}
		})
	}
	run("reconcile", func() error { d.reconcileLoop(ctx); return nil })

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d.log.Info("atoll running", "config", opts.ConfigPath, "dataplane", cfg.Dataplane.Mode, "interfaces", cfg.Dataplane.Interfaces,
		"services", len(cfg.Services), "islands", len(cfg.Islands))
	if opts.Ready != nil {
		opts.Ready()
	}
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			if err := d.Reload(); err != nil {
				d.log.Error("reload refused; the running config stays in force", "err", err)
			}
		case err := <-errc:
			runErr = err
			stop()
			break loop
		}
	}
	stop()
	wg.Wait()
	d.log.Info("atoll stopped; forwarding continues from the pinned state")
	return runErr
}

func (d *Daemon) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.met.Registry, promhttp.HandlerOpts{}))
	return mux
}

// start loads the data plane and the control objects.
func (d *Daemon) start() error {
	cfg := d.cfg
	d.met = metrics.New(d, d.opts.Version, d.log)
	if cfg.Dataplane.Mode == config.ModeXDP {
		if err := d.loadDataplane(cfg); err != nil {
			return err
		}
		rec, err := control.New(d.bal.Maps, d.log)
		if err != nil {
			return err
		}
		d.rec = rec
		if s, b := rec.Adopted(); s > 0 || b > 0 {
			d.log.Info("adopted pinned state", "services", s, "backends", b)
		}
		d.learner = control.NewLearner(d.bal.Maps, d.log, rec.IslandID, monotonicNow)
		if err := d.learner.Adopt(); err != nil {
			return err
		}
		d.learner.Configure(cfg.Affinity.Learn, cfg.Affinity.Static)
	}
	d.mon = health.NewMonitor(healthSettings(cfg), d.onHealthChange, d.log, d.met)
	if err := d.apply(); err != nil {
		return err
	}
	return nil
}

func healthSettings(cfg *config.Config) health.Settings {
	return health.Settings{Interval: cfg.Health.Interval, Jitter: cfg.Health.Jitter, Rise: cfg.Health.Rise, Fall: cfg.Health.Fall, Concurrency: cfg.Health.Concurrency}
}

// loadDataplane loads (or reloads) the balancer over the pinned maps and
// attaches it to every configured interface, replacing a previous
// program in place; interfaces no longer configured are detached.
func (d *Daemon) loadDataplane(cfg *config.Config) error {
	dp := cfg.Dataplane
	bal, err := dataplane.LoadBalancer(dataplane.Options{ConntrackSize: dp.ConntrackSize, HashSeed: dp.HashSeed, PinPath: dp.PinPath})
	if err != nil {
		return err
	}
	for _, ifn := range dp.Interfaces {
		ifc, err := net.InterfaceByName(ifn)
		if err != nil {
			bal.Close()
			return fmt.Errorf("dataplane: interface %s: %w", ifn, err)
		}
		replaced, err := bal.AttachPinned(dp.PinPath, ifn, ifc.Index)
		if err != nil {
			bal.Close()
			return err
		}
		d.log.Info("balancer attached", "interface", ifn, "replaced_in_place", replaced)
	}
	pinned, _ := dataplane.PinnedLinks(dp.PinPath)
	for _, ifn := range pinned {
		if !slices.Contains(dp.Interfaces, ifn) {
			if err := dataplane.DetachPinned(dp.PinPath, ifn); err != nil {
				d.log.Warn("detach from removed interface", "interface", ifn, "err", err)
			} else {
				d.log.Info("balancer detached", "interface", ifn)
			}
		}
	}
	if d.bal != nil {
		d.bal.Close()
	}
	d.bal = bal
	return d.setupHealthSteer(cfg)
}

// setupHealthSteer attaches hc.c at egress of the interfaces and installs
// its policy routing, for checks through the forwarding path.
func (d *Daemon) setupHealthSteer(cfg *config.Config) error {
	for _, l := range d.hcLinks {
		l.Close()
	}
	d.hcLinks = nil
	if d.hc == nil {
		hc, err := dataplane.LoadHealthSteer(0)
		if err != nil {
			return err
		}
		d.hc = hc
	}
	if err := d.hc.SetSources(cfg.Dataplane.SourceV4, cfg.Dataplane.SourceV6); err != nil {
		return err
	}
	d.routing = nil
	for i, ifn := range cfg.Dataplane.Interfaces {
		ifc, err := net.InterfaceByName(ifn)
		if err != nil {
			return err
		}
		l, err := d.hc.Attach(ifc.Index)
		if err != nil {
			return err
		}
		d.hcLinks = append(d.hcLinks, l)
		if i == 0 { // one table is enough: hc.c picks the real way out
			r := &dataplane.HCRouting{Ifindex: ifc.Index, MarkBase: d.hc.MarkBase, Table: dataplane.DefaultHCTable}
			if err := r.Setup(); err != nil {
				return err
			}
			d.routing = append(d.routing, r)
		}
	}
	return nil
}

func (d *Daemon) close() {
	d.closeProxy()
	for _, l := range d.hcLinks {
		l.Close()
	}
	for _, r := range d.routing {
		r.Teardown()
	}
	if d.hc != nil {
		d.hc.Close()
	}
	if d.bal != nil {
		d.bal.Close()
	}
	if d.cfg != nil {
		os.Remove(d.cfg.API.Socket)
	}
}

// onHealthChange runs on the monitor's goroutine: schedule a reconcile.
func (d *Daemon) onHealthChange(c health.Change) {
	d.met.ObserveChange(c)
	select {
	case d.trigger <- struct{}{}:
	default:
	}
}

func (d *Daemon) reconcileLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.trigger:
			if err := d.apply(); err != nil {
				d.log.Error("reconcile", "err", err)
			}
		}
	}
}

// healthOf combines a node's checks for a service and VIP family: its
// own address the data plane uses, and the check through that VIP.
func (d *Daemon) healthOf(service, node string, family int, addr netip.Addr) health.State {
	ids := []string{targetID(service, node, directPath(addr)), targetID(service, node, fmt.Sprintf("vip%d", family))}
	state := health.StateUp
	known := false
	for _, id := range ids {
		st, ok := d.mon.Status(id)
		if !ok {
			continue
		}
		switch st.State {
		case health.StateDown:
			return health.StateDown
		case health.StateUnknown:
			state = health.StateUnknown
		default:
			known = true
		}
	}
	if !known {
		return health.StateUnknown
	}
	return state
}

func targetID(service, node, path string) string { return service + "/" + node + "/" + path }

// directPath names the check of a node's own address: direct4, direct6.
func directPath(a netip.Addr) string {
	if a.Is4() {
		return "direct4"
	}
	return "direct6"
}

// apply reconciles the current config with health and drains, then
// points health checks (and hc.c) at the backends it decided.
func (d *Daemon) apply() error {
	d.mu.Lock()
	cfg := d.cfg
	d.mu.Unlock()
	if d.rec != nil {
		res, err := d.rec.Apply(cfg, d.healthOf, d.rec.Drains())
		d.met.ObserveReconcile(res, err)
		if err != nil {
			return err
		}
	}
	targets, err := d.targets(cfg)
	if err != nil {
		return err
	}
	d.mon.Set(targets)
	return nil
}

// targets builds the health targets: every node of every island service
// checked on its own address, and through each VIP when the service asks
// for it and the data plane runs.
func (d *Daemon) targets(cfg *config.Config) ([]health.Target, error) {
	tlsBase, err := tlsConfig(cfg.Health.TLS)
	if err != nil {
		return nil, err
	}
	var out []health.Target
	var vips []netip.Addr
	for si := range cfg.Services {
		s := &cfg.Services[si]
		if s.Routing != config.RouteIsland {
			continue
		}
		isl := cfg.IslandByName(s.Island)
		for ni := range isl.Nodes {
			n := &isl.Nodes[ni]
			tc := tlsBase.Clone()
			if tc.ServerName == "" {
				tc.ServerName = n.Name
			}
			probe := health.Probe{Kind: health.Kind(s.Health.Check), TLS: health.TLSMode(s.Health.TLS), TLSConfig: tc, Timeout: cfg.Health.Timeout}
			// Every address of the node is checked: the data plane may
			// reach it by either, and the checks keep the LB's neighbour
			// entries fresh, which bpf_fib_lookup needs.
			for _, a := range n.Addresses {
				out = append(out, health.Target{
					ID: targetID(s.Name, n.Name, directPath(a)), Addr: netip.AddrPortFrom(a, s.NodePort(n)).String(), Probe: probe,
				})
			}
			if !s.Health.ThroughVIP || d.hc == nil || d.rec == nil {
				continue
			}
			for _, vip := range s.VIPs {
				fam := 4
				if vip.Is6() {
					fam = 6
				}
				id, ok := d.rec.BackendID(s.Name, fam, n.Name)
				if !ok {
					continue
				}
				addr, _ := n.Address(fam)
				if !addr.IsValid() {
					addr = n.Addresses[0]
				}
				// The check through the VIP starts once the node's own
				// address has answered: that check resolves the LB's
				// neighbour entry, without which hc.c (like the balancer)
				// cannot reach the node, and a first failure would count.
				vipID := targetID(s.Name, n.Name, fmt.Sprintf("vip%d", fam))
				if _, running := d.mon.Status(vipID); !running {
					if st, ok := d.mon.Status(targetID(s.Name, n.Name, directPath(addr))); !ok || st.State != health.StateUp {
						continue
					}
				}
				fwd := maps.ForwardIPIP
				if s.Forwarding == config.ForwardL2DSR {
					fwd = maps.ForwardL2DSR
				}
				if err := d.hc.SetTarget(id, addr, fwd); err != nil {
					return nil, err
				}
				p := probe
				p.Dialer = health.MarkDialer{Mark: d.hc.Mark(id)}
				out = append(out, health.Target{ID: vipID, Addr: netip.AddrPortFrom(vip, s.Port).String(), Probe: p})
				if !slices.Contains(vips, vip) {
					vips = append(vips, vip)
				}
			}
		}
	}
	for _, r := range d.routing {
		if err := r.SetVIPs(vips); err != nil {
			return nil, err
		}
	}
	out = append(out, d.proxyTargets(cfg, tlsBase)...)
	return out, nil
}

func tlsConfig(c config.HealthTLS) (*tls.Config, error) {
	tc := &tls.Config{InsecureSkipVerify: c.InsecureSkipVerify, ServerName: c.ServerName, MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("health.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("health.tls.ca_file %s: no PEM certificate in it", c.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// Reload re-reads the config file and applies it as a diff. A config
// with errors, or one that changes what cannot change while running, is
// refused and the running one stays in force.
func (d *Daemon) Reload() error {
	err := d.reload()
	d.met.ObserveReload(err)
	d.mu.Lock()
	d.lastReload = &api.Reload{At: time.Now(), OK: err == nil}
	if err != nil {
		d.lastReload.Error = err.Error()
	}
	d.mu.Unlock()
	return err
}

func (d *Daemon) reload() error {
	cfg, err := config.Load(d.opts.ConfigPath)
	if err != nil {
		return fmt.Errorf("config refused:\n%w", err)
	}
	d.mu.Lock()
	old := d.cfg
	d.mu.Unlock()
	o, n := old.Dataplane, cfg.Dataplane
	var fixed []string
	if o.Mode != n.Mode {
		fixed = append(fixed, "dataplane.mode")
	}
	if o.PinPath != n.PinPath {
		fixed = append(fixed, "dataplane.pin_path")
	}
	if o.ConntrackSize != n.ConntrackSize {
		fixed = append(fixed, "dataplane.conntrack_size (the pinned conntrack maps cannot be resized; `atoll reset` drops them)")
	}
	if old.API.Socket != cfg.API.Socket {
		fixed = append(fixed, "api.socket")
	}
	if old.Metrics.Listen != cfg.Metrics.Listen {
		fixed = append(fixed, "metrics.listen")
	}
	if len(fixed) > 0 {
		return fmt.Errorf("config refused: these settings need a restart: %v", fixed)
	}
	// The proxy's parts (directory, certificate) must load before anything
	// changes.
	core, closer, err := d.buildCore(cfg)
	if err != nil {
		return fmt.Errorf("config refused: %w", err)
	}
	handedOver := false
	defer func() {
		if !handedOver && closer != nil {
			closer.Close()
		}
	}()
	if n.Mode == config.ModeXDP && (o.HashSeed != n.HashSeed || !slices.Equal(o.Interfaces, n.Interfaces)) {
		d.mu.Lock()
		err := d.loadDataplane(cfg)
		d.mu.Unlock()
		if err != nil {
			return fmt.Errorf("reload data plane: %w", err)
		}
	}
	d.mu.Lock()
	d.cfg = cfg
	d.mu.Unlock()
	if d.learner != nil {
		d.learner.Configure(cfg.Affinity.Learn, cfg.Affinity.Static)
	}
	d.mon.UpdateSettings(healthSettings(cfg))
	if err := d.apply(); err != nil {
		return err
	}
	handedOver = true
	if err := d.startProxy(d.runCtx, cfg, core, closer); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	d.log.Info("config reloaded", "services", len(cfg.Services), "islands", len(cfg.Islands))
	return nil
}
