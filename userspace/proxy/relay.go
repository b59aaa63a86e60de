package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A logged-in session is a relay: bytes copied both ways between client
// and node, each direction by its own goroutine, with splice(2) between
// plain TCP sockets (io.Copy between *net.TCPConn).
//
// Most sessions of a mail platform are idle (an IMAP client in IDLE sits
// silent for up to 29 minutes at a time), and a parked goroutine with
// its stack is most of what an idle session costs. So a direction whose
// source has been silent for Limits.ParkAfter is parked: its goroutine
// ends and the source socket waits in one epoll set shared by every
// session (see parker); when it becomes readable a fresh goroutine
// resumes the copy. A parked session holds its two sockets and a few
// hundred bytes. TLS sockets never park: a *tls.Conn may hold decrypted
// bytes that the socket's readiness says nothing about.

// chunk bounds one io.Copy so the activity clock moves during a long
// transfer (each chunk is still one splice loop).
const chunk = 1 << 20

// relay is one logged-in session's byte relay.
type relay struct {
	core         *Core
	protocol     string
	client, node net.Conn
	idle         time.Duration
	parkAfter    time.Duration
	last         atomic.Int64 // UnixNano of the last byte moved either way
	up, down     atomic.Int64
	dirs         [2]direction
	live         atomic.Int32 // directions not done
	aborted      bool         // guarded by parker.mu
	timer        *time.Timer  // the idle timeout
	stop         func() bool  // stops the server-stop hook
	done         func()       // called once both directions are done
	closeOnce    sync.Once
}

// direction copies src to dst.
type direction struct {
	r        *relay
	dst, src net.Conn
	n        *atomic.Int64
	fd       int  // src's descriptor when it may park, else -1
	parked   bool // guarded by parker.mu
}

// Handoff ends the handler's part of a logged-in session: after Serve
// returns, the server relays bytes between client and node until either
// side is done, then closes both (pendingUp goes to the node and
// pendingDown to the client first: bytes the handler read past the
// login). A half-close is passed on: when one side stops sending, the
// other's write half is shut and the copy the other way goes on.
//
// Handing off rather than relaying inside Serve frees everything the
// handler held for the login — buffers, parser state, its stack — for
// the life of the session. Serve must return soon after, and must not
// touch either connection again.
func (s *Session) Handoff(protocol string, client, node net.Conn, pendingUp, pendingDown []byte) {
	s.handoff = &handoff{protocol: protocol, client: client, node: node, pendingUp: pendingUp, pendingDown: pendingDown}
}

// HandedOff reports whether Handoff was called: the connections now
// belong to the relay.
func (s *Session) HandedOff() bool { return s.handoff != nil }

// handoff is a logged-in session waiting for its relay.
type handoff struct {
	protocol               string
	client, node           net.Conn
	pendingUp, pendingDown []byte
}

// startRelay relays h until both directions are done or ctx ends, then
// calls done. It does not block.
func (c *Core) startRelay(ctx context.Context, h *handoff, done func()) {
	r := &relay{core: c, protocol: h.protocol, client: h.client, node: h.node,
		idle: c.limits.IdleTimeout, parkAfter: c.limits.ParkAfter, done: done}
	r.touch()
	r.live.Store(2)
	r.dirs[0] = direction{r: r, dst: h.node, src: h.client, n: &r.up, fd: -1}
	r.dirs[1] = direction{r: r, dst: h.client, src: h.node, n: &r.down, fd: -1}
	if r.parkAfter > 0 {
		for i := range r.dirs {
			r.dirs[i].fd = parkableFD(r.dirs[i].src)
		}
	}
	h.client.SetDeadline(time.Time{})
	h.node.SetDeadline(time.Time{})
	if r.idle > 0 {
		r.timer = time.AfterFunc(r.idle, r.checkIdle)
	}
	r.stop = context.AfterFunc(ctx, r.abort)
	go func() {
		// The login's leftovers first, in order, then the copies.
		if !r.writePending(h.node, h.pendingUp, &r.up) || !r.writePending(h.client, h.pendingDown, &r.down) {
			r.abort()
			r.dirs[0].finish()
			r.dirs[1].finish()
			return
		}
		go r.dirs[1].run()
		r.dirs[0].run()
	}()
}

func (r *relay) writePending(dst net.Conn, b []byte, n *atomic.Int64) bool {
	if len(b) == 0 {
		return true
	}
	m, err := dst.Write(b)
	n.Add(int64(m))
	return err == nil
}

func (r *relay) touch() { r.last.Store(time.Now().UnixNano()) }

func (r *relay) idleFor() time.Duration { return time.Since(time.Unix(0, r.last.Load())) }

// checkIdle runs when the idle timeout may have passed.
func (r *relay) checkIdle() {
	if d := r.idleFor(); d < r.idle {
		r.timer.Reset(r.idle - d)
		return
	}
	r.abort()
}

// abort cuts the session: parked directions are taken out of the epoll
// set and finished here, running ones fail on the closed sockets.
func (r *relay) abort() {
	var parked []*direction
	p := theParker()
	p.mu.Lock()
	if !r.aborted {
		r.aborted = true
		for i := range r.dirs {
			if d := &r.dirs[i]; d.parked {
				p.remove(d)
				parked = append(parked, d)
			}
		}
	}
	p.mu.Unlock()
	r.close()
	for _, d := range parked {
		d.finish()
	}
}

func (r *relay) close() {
	r.closeOnce.Do(func() {
		r.client.Close()
		r.node.Close()
	})
}

// run copies until src is done, or parks when src goes quiet.
func (d *direction) run() {
	for {
		if d.fd >= 0 {
			d.src.SetReadDeadline(time.Now().Add(d.r.parkAfter))
		}
		lr := &io.LimitedReader{R: d.src, N: chunk}
		m, err := io.Copy(d.dst, lr)
		if m > 0 {
			d.n.Add(m)
			d.r.touch()
		}
		if err == nil && lr.N == 0 {
			continue // a full chunk: more may follow
		}
		var ne net.Error
		if d.fd >= 0 && errors.As(err, &ne) && ne.Timeout() {
			if m > 0 {
				continue // moved bytes just before the deadline
			}
			if theParker().park(d) {
				return // a fresh goroutine resumes when src is readable
			}
		}
		break
	}
	// src is done (EOF, error, or the session was cut): pass the
	// half-close on so the node (or client) sees the end of the stream.
	// Without a half-close the session is over: abort, so that the other
	// direction is taken out of the epoll set if parked, never left there.
	if cw, ok := d.dst.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
		d.r.abort()
	}
	d.finish()
}

// finish marks d done; the last direction closes the session.
func (d *direction) finish() {
	r := d.r
	if r.live.Add(-1) != 0 {
		return
	}
	r.close()
	if r.timer != nil {
		r.timer.Stop()
	}
	r.stop()
	r.core.obs.Relayed(r.protocol, r.up.Load(), r.down.Load())
	r.done()
}

// parkableFD is c's descriptor when c may park: plain TCP only.
func parkableFD(c net.Conn) int {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return -1
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	if rc.Control(func(s uintptr) { fd = int(s) }) != nil {
		return -1
	}
	return fd
}
