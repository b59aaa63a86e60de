package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Listener is one proxy listener: a socket, a service and a protocol.
type Listener struct {
	Service string
	Handler Handler
	// TLS: implicit TLS (993, 995); the core's ServerTLS is used.
	TLS bool
	// Protocol names the handler's protocol in metrics ("imap", "pop3").
	Protocol string
	// Refuse is what to send a client over its address's connection cap
	// before closing (e.g. "* BYE Too many connections\r\n").
	Refuse string
}

// Server serves listeners with the current Core; a reload swaps the core
// without closing the listeners (sessions keep the core they started
// with).
type Server struct {
	core atomic.Pointer[Core]
}

// NewServer returns a server using c.
func NewServer(c *Core) *Server {
	s := &Server{}
	s.core.Store(c)
	return s
}

// SetCore makes new connections use c.
func (s *Server) SetCore(c *Core) { s.core.Store(c) }

// Core returns the current core.
func (s *Server) Core() *Core { return s.core.Load() }

// Serve accepts connections on ln until ctx is done; see Server.Serve.
func (c *Core) Serve(ctx context.Context, ln net.Listener, l Listener) error {
	return NewServer(c).Serve(ctx, ln, l)
}

// Serve accepts connections on ln until ctx is done, handing each to the
// listener's handler with the current core. It returns after every
// session started here ended or was cut at ctx's end.
func (srv *Server) Serve(ctx context.Context, ln net.Listener, l Listener) error {
	var wg sync.WaitGroup
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		c := srv.core.Load()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		client := addrPort(conn.RemoteAddr())
		if l.TLS && c.opts.ServerTLS == nil {
			c.log.Error("proxy: implicit-TLS listener without a certificate", "service", l.Service)
			conn.Close()
			continue
		}
		if !c.acquire(client.Addr()) {
			c.log.Warn("proxy: connection cap per source reached", "client", client.Addr(), "service", l.Service)
			conn.SetWriteDeadline(time.Now().Add(time.Second))
			conn.Write([]byte(l.Refuse))
			conn.Close()
			continue
		}
		wg.Add(1)
		go c.serveConn(ctx, conn, l, client, func() {
			c.release(client.Addr())
			wg.Done()
		})
	}
}

// serveConn runs the handler on conn, then the relay if the handler
// handed the session off; done is called when the session is over.
func (c *Core) serveConn(ctx context.Context, conn net.Conn, l Listener, client netip.AddrPort, done func()) {
	s := &Session{
		Conn: conn, Client: client, Local: addrPort(conn.LocalAddr()), Service: l.Service, Core: c,
		Log: c.log.With("service", l.Service, "client", client),
	}
	if l.TLS {
		s.Conn = tls.Server(conn, c.opts.ServerTLS)
		s.TLS = true
	}
	c.obs.Session(l.Protocol, 1)
	end := func() {
		c.obs.Session(l.Protocol, -1)
		done()
	}
	// The session is cut when the server stops: closing the accepted
	// socket also ends a TLS session on top of it, and never races with a
	// handler that replaced s.Conn after STARTTLS.
	sctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(sctx, func() { conn.Close() })
	l.Handler.Serve(sctx, s)
	stop()
	cancel()
	h := s.handoff
	if h == nil {
		conn.Close()
		end()
		return
	}
	// This goroutine ends here, and with it the login's stack and state;
	// the relay has goroutines of its own.
	c.startRelay(ctx, h, end)
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
