package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/atoll-lb/atoll/userspace/config"
	"github.com/atoll-lb/atoll/userspace/directory"
	"github.com/atoll-lb/atoll/userspace/health"
	"github.com/atoll-lb/atoll/userspace/proxy"
	"github.com/atoll-lb/atoll/userspace/proxy/imap"
	"github.com/atoll-lb/atoll/userspace/proxy/lmtp"
	"github.com/atoll-lb/atoll/userspace/proxy/pop3"
)

// proxyProtocols are the protocols the login proxy serves (lmtp: the
// LMTP island router).
var proxyProtocols = map[string]string{
	config.ProtoIMAP: "imap", config.ProtoIMAPS: "imap", config.ProtoPOP3: "pop3", config.ProtoPOP3S: "pop3",
	config.ProtoLMTP: "lmtp",
}

// proxyState is the login proxy inside the daemon.
type proxyState struct {
	srv       *proxy.Server
	dir       io.Closer // the directory behind the current core
	listeners map[string]*proxyListener
	// lmtp serves every LMTP listener, from the first config with an
	// LMTP login service on: a reload only changes its options, so what
	// it learned of the nodes' LHLO capabilities (which decides whether
	// 8BITMIME and SMTPUTF8 are offered to MTAs) is never forgotten.
	lmtp *lmtp.Handler
	wg   sync.WaitGroup
}

type proxyListener struct {
	cancel context.CancelFunc
	ln     net.Listener
}

// buildCore makes a proxy core from cfg: the directory (LDAP or static),
// the client certificate, limits and throttle.
func (d *Daemon) buildCore(cfg *config.Config) (*proxy.Core, io.Closer, error) {
	if !cfg.HasDirectory() {
		return nil, nil, nil
	}
	var (
		dir    directory.Directory
		closer io.Closer = nopCloser{}
	)
	dc := cfg.Directory
	switch {
	case dc.LDAP != nil:
		tc, err := tlsConfig(config.HealthTLS{CAFile: dc.LDAP.CAFile, InsecureSkipVerify: dc.LDAP.InsecureSkipVerify})
		if err != nil {
			return nil, nil, err
		}
		l, err := directory.NewLDAP(directory.LDAPOptions{
			URLs: dc.LDAP.URLs, StartTLS: dc.LDAP.StartTLS, TLSConfig: tc, BindDN: dc.LDAP.BindDN,
			PasswordFile: dc.LDAP.PasswordFile, BaseDN: dc.LDAP.BaseDN, Filter: dc.LDAP.Filter, Attribute: dc.LDAP.Attribute,
			Timeout: dc.LDAP.Timeout, PoolSize: dc.LDAP.PoolSize,
			PositiveTTL: ttl(dc.LDAP.PositiveTTL), NegativeTTL: ttl(dc.LDAP.NegativeTTL), StaleTTL: ttl(dc.LDAP.StaleTTL),
		}, d.log, d.met)
		if err != nil {
			return nil, nil, err
		}
		dir, closer = l, l
	default:
		s, err := directory.LoadStatic(dc.Static)
		if err == nil {
			s, err = s.WithNames(directory.Names{Lowercase: dc.Names.Lowercase, DefaultDomain: dc.Names.DefaultDomain, NodeLogin: dc.Names.NodeLogin})
		}
		if err != nil {
			return nil, nil, err
		}
		dir = s
	}
	var serverTLS *tls.Config
	if cfg.Proxy.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.Proxy.TLS.CertFile, cfg.Proxy.TLS.KeyFile)
		if err != nil {
			closer.Close()
			return nil, nil, fmt.Errorf("proxy.tls: %w", err)
		}
		serverTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	nodeTLS, err := tlsConfig(cfg.Health.TLS)
	if err != nil {
		closer.Close()
		return nil, nil, err
	}
	p := cfg.Proxy
	core := proxy.NewCore(proxy.Options{
		Directory:  dir,
		Names:      directory.Names{Lowercase: dc.Names.Lowercase, DefaultDomain: dc.Names.DefaultDomain, NodeLogin: dc.Names.NodeLogin},
		Nodes:      &proxyNodes{d: d, cfg: cfg, tls: nodeTLS},
		ServerTLS:  serverTLS,
		RequireTLS: p.RequireTLS,
		Limits: proxy.Limits{
			PreLoginTimeout: p.PreLoginTimeout, IdleTimeout: p.IdleTimeout, MaxLine: p.MaxLine, MaxLiteral: p.MaxLiteral,
			MaxBadCommands: p.MaxBadCommands, MaxLoginTries: p.MaxLoginTries,
		},
		MaxConnsPerSource: p.MaxConnectionsPerSource,
		Throttle: proxy.ThrottleSettings{
			Threshold: p.AuthThrottle.Threshold, Window: p.AuthThrottle.Window,
			BaseDelay: p.AuthThrottle.BaseDelay, MaxDelay: p.AuthThrottle.MaxDelay,
		},
		SourceAddrs: p.SourceAddresses,
		DialTimeout: p.DialTimeout,
		Hostname:    p.Hostname,
		Observer:    d.met,
		Log:         d.log,
		OnLogin:     d.onLogin,
	})
	return core, closer, nil
}

// onLogin feeds learned affinity with the proxy's successful logins.
func (d *Daemon) onLogin(client netip.Addr, island string) {
	if d.learner != nil {
		d.learner.Login(client, island)
	}
}

// startProxy starts (or, on reload, reconfigures) the proxy: a new core
// for new connections, listeners opened for new login VIPs and closed for
// removed ones; sessions in flight keep going.
func (d *Daemon) startProxy(ctx context.Context, cfg *config.Config, core *proxy.Core, closer io.Closer) error {
	if core == nil {
		d.stopProxyListeners(nil)
		return nil
	}
	ps := d.proxy
	if ps == nil {
		ps = &proxyState{srv: proxy.NewServer(core), listeners: map[string]*proxyListener{}}
		d.proxy = ps
	} else {
		ps.srv.SetCore(core)
		if ps.dir != nil {
			ps.dir.Close()
		}
	}
	ps.dir = closer
	lmtpOpts := lmtpOptions(cfg)
	if ps.lmtp != nil {
		ps.lmtp.SetOptions(lmtpOpts)
	}
	want := map[string]bool{}
	for _, s := range cfg.LoginServices() {
		proto, ok := proxyProtocols[s.Protocol]
		if !ok {
			d.log.Warn("login service not served by the proxy yet", "service", s.Name, "protocol", s.Protocol)
			continue
		}
		var h proxy.Handler
		refuse := "* BYE Too many connections from your address.\r\n"
		switch proto {
		case "imap":
			h = imap.NewHandler()
		case "pop3":
			h = pop3.NewHandler()
			refuse = "-ERR [SYS/TEMP] Too many connections from your address.\r\n"
		case "lmtp":
			if ps.lmtp == nil {
				ps.lmtp = lmtp.NewHandler(lmtpOpts)
			}
			h = ps.lmtp
			refuse = "421 4.7.0 Too many connections\r\n"
		}
		for _, vip := range s.VIPs {
			addr := netip.AddrPortFrom(vip, s.Port)
			// The protocol is part of the key: a service that changes
			// protocol on the same VIP:port gets a listener with the
			// right handler.
			key := s.Name + "|" + s.Protocol + "|" + addr.String()
			want[key] = true
			if _, ok := ps.listeners[key]; ok {
				continue
			}
			ln, err := listenFreebind(ctx, addr)
			if err != nil {
				return fmt.Errorf("proxy: listen on %v for %s: %w", addr, s.Name, err)
			}
			lctx, cancel := context.WithCancel(ctx)
			ps.listeners[key] = &proxyListener{cancel: cancel, ln: ln}
			l := proxy.Listener{Service: s.Name, Handler: h, TLS: s.Protocol == config.ProtoIMAPS || s.Protocol == config.ProtoPOP3S, Protocol: proto, Refuse: refuse}
			ps.wg.Add(1)
			go func() {
				defer ps.wg.Done()
				if err := ps.srv.Serve(lctx, ln, l); err != nil && lctx.Err() == nil {
					d.log.Error("proxy listener stopped", "service", l.Service, "addr", addr, "err", err)
				}
			}()
			d.log.Info("proxy listening", "service", s.Name, "addr", addr, "protocol", s.Protocol)
		}
	}
	d.stopProxyListeners(want)
	return nil
}

// lmtpOptions are the LMTP router's options from cfg (proxy.lmtp).
func lmtpOptions(cfg *config.Config) lmtp.Options {
	return lmtp.Options{MaxMessageSize: int64(cfg.Proxy.LMTP.MaxMessageSize), MaxRecipients: cfg.Proxy.LMTP.MaxRecipients}
}

// stopProxyListeners closes the listeners not in keep (all with nil).
func (d *Daemon) stopProxyListeners(keep map[string]bool) {
	if d.proxy == nil {
		return
	}
	for key, l := range d.proxy.listeners {
		if keep[key] {
			continue
		}
		l.cancel()
		l.ln.Close()
		delete(d.proxy.listeners, key)
		d.log.Info("proxy listener closed", "listener", key)
	}
}

// listenFreebind listens on addr even before the address is on the host
// (keepalived may add the VIP later): IP_FREEBIND. The accepted sockets
// inherit the listener's keep-alive (proxy.ListenKeepAlive), so Go is
// told not to set it on each (KeepAlive: -1).
func listenFreebind(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if addr.Addr().Is4() {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
			}
			if serr == nil {
				serr = proxy.ListenKeepAlive(int(fd))
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	return lc.Listen(ctx, network, addr.String())
}

// proxyNodes is the control plane's view for the proxy core.
type proxyNodes struct {
	d   *Daemon
	cfg *config.Config
	tls *tls.Config
}

// Nodes lists island's nodes for a login service, healthy unless its
// direct check of that service says DOWN.
func (p *proxyNodes) Nodes(service, island string) []proxy.NodeInfo {
	isl := p.cfg.IslandByName(island)
	var svc *config.Service
	for i := range p.cfg.Services {
		if p.cfg.Services[i].Name == service {
			svc = &p.cfg.Services[i]
		}
	}
	if isl == nil || svc == nil {
		return nil
	}
	out := make([]proxy.NodeInfo, 0, len(isl.Nodes))
	for i := range isl.Nodes {
		n := &isl.Nodes[i]
		a := n.Addresses[0]
		healthy := true
		if st, ok := p.d.mon.Status(targetID(service, n.Name, directPath(a))); ok && st.State == health.StateDown {
			healthy = false
		}
		if p.d.rec != nil && p.d.rec.Drains()[n.Name] {
			healthy = false
		}
		if n.Weight == 0 {
			healthy = false
		}
		out = append(out, proxy.NodeInfo{Name: n.Name, Addr: netip.AddrPortFrom(a, proxyNodePort(svc, isl, n)), Healthy: healthy})
	}
	return out
}

// Island returns how the proxy reaches island's nodes.
func (p *proxyNodes) Island(island string) (proxy.IslandSettings, bool) {
	isl := p.cfg.IslandByName(island)
	if isl == nil {
		return proxy.IslandSettings{}, false
	}
	return proxy.IslandSettings{ClientAddr: isl.Proxy.ClientAddress, NodeTLS: isl.Proxy.TLS, TLSConfig: p.tls}, true
}

// proxyTargets are the health checks of the proxy's way to the nodes: each
// login service checks every node of every island on the port the proxy
// uses (with a PROXY v2 LOCAL header where the island wants the header).
func (d *Daemon) proxyTargets(cfg *config.Config, base *tls.Config) []health.Target {
	var out []health.Target
	for _, s := range cfg.LoginServices() {
		if _, ok := proxyProtocols[s.Protocol]; !ok {
			continue
		}
		for ii := range cfg.Islands {
			isl := &cfg.Islands[ii]
			for ni := range isl.Nodes {
				n := &isl.Nodes[ni]
				tc := base.Clone()
				if tc.ServerName == "" {
					tc.ServerName = n.Name
				}
				mode := health.TLSNone
				switch isl.Proxy.TLS {
				case config.TLSImplicit:
					mode = health.TLSImplicit
				case config.TLSStartTLS:
					mode = health.TLSStartTLS
				}
				// Every address: the proxy dials the first, the front door's
				// affinity flows reach the node by its address of the
				// VIP's family.
				for _, a := range n.Addresses {
					out = append(out, health.Target{
						ID:   targetID(s.Name, n.Name, directPath(a)),
						Addr: netip.AddrPortFrom(a, proxyNodePort(s, isl, n)).String(),
						Probe: health.Probe{Kind: health.Kind(s.Health.Check), TLS: mode, TLSConfig: tc, Timeout: cfg.Health.Timeout,
							ProxyHeader: isl.Proxy.ClientAddress == config.ClientAddrProxy},
					})
				}
			}
		}
	}
	return out
}

// proxyNodePort is the node port the proxy uses for a login service: the
// node speaks the service's protocol in plain text (143, 110) or with
// STARTTLS, or with implicit TLS (993, 995) when the island says so —
// whatever the client used toward the proxy. nodes[].ports overrides it
// by protocol name (imap, imaps, pop3, pop3s). LMTP has one port however
// the island speaks TLS: nodes[].ports.lmtp, or 24.
func proxyNodePort(s *config.Service, isl *config.Island, n *config.Node) uint16 {
	if s.Protocol == config.ProtoLMTP {
		if p, ok := n.Ports[config.ProtoLMTP]; ok {
			return p
		}
		return 24
	}
	key := strings.TrimSuffix(s.Protocol, "s")
	if isl.Proxy.TLS == config.TLSImplicit {
		key += "s"
	}
	if p, ok := n.Ports[key]; ok {
		return p
	}
	return map[string]uint16{"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995}[key]
}

// closeProxy stops the listeners and waits for the sessions.
func (d *Daemon) closeProxy() {
	if d.proxy == nil {
		return
	}
	d.stopProxyListeners(nil)
	d.proxy.wg.Wait()
	if d.proxy.dir != nil {
		d.proxy.dir.Close()
	}
}

// ttl turns a config TTL (0: off) into the directory's (0: default,
// negative: off).
func ttl(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// nopCloser closes nothing (the static directory holds no connection).
type nopCloser struct{}

func (nopCloser) Close() error { return nil }
