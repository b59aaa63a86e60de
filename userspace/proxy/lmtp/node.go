package lmtp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	smtp "github.com/emersion/go-smtp"

	"github.com/atoll-lb/atoll/userspace/proxy"
)

// nodeBuf is the read buffer toward a node before go-smtp takes over:
// also the longest reply line accepted there.
const nodeBuf = 4096

// envelope is what every island's transaction shares.
type envelope struct {
	from string
	utf8 bool
	helo string // the client's LHLO name
}

// nodeFailure is a failure before the node accepted any recipient: the
// island's next node may be tried.
type nodeFailure struct{ err error }

func (e *nodeFailure) Error() string { return e.err.Error() }
func (e *nodeFailure) Unwrap() error { return e.err }

func failf(format string, a ...any) error { return &nodeFailure{fmt.Errorf(format, a...)} }

// deliverIsland delivers to one island: on the connection an earlier
// transaction of this client session left open to one of the island's
// nodes, if there is one and it still works, else on the island's nodes in
// the order of the first recipient's route, the next one only while the
// previous failed before accepting a recipient. It returns a reply per
// address.
func (c *session) deliverIsland(j *islandJob, env envelope, sp *spool) map[string]reply {
	var res map[string]reply
	if nc := c.takeNode(j, env); nc != nil {
		r, keep, err := c.transact(nc, j, env, sp)
		if err == nil {
			res = r
			c.keepNode(j.island, nc, keep)
		} else {
			// Most often the node closed the idle connection: not worth
			// a warning, a fresh connection follows.
			c.log.Debug("lmtp: kept node connection failed, dialing anew", "island", j.island, "node", nc.name, "err", err)
			nc.close(false)
		}
	}
	for _, n := range j.route.Nodes {
		if res != nil {
			break
		}
		r, err := c.tryNode(j, n, env, sp)
		if err == nil {
			res = r
			break
		}
		c.log.Warn("lmtp: node failed before accepting a recipient", "island", j.island, "node", n.Name, "addr", n.Addr, "err", err)
		if c.ctx.Err() != nil {
			break
		}
	}
	if res == nil {
		res = map[string]reply{}
		for _, a := range j.addrs {
			res[a] = reply{Code: 451, Enh: "4.4.1", Lines: []string{fmt.Sprintf("<%s> No server of island %s could take the message, try again later", a, j.island)}, NodeFailed: true}
		}
	}
	for _, a := range j.addrs {
		rp := res[a]
		result := ResultDeferred
		switch {
		case rp.NodeFailed:
			result = ResultNodeFailed
		case rp.Code/100 == 2:
			result = ResultDelivered
		case rp.Code/100 == 5:
			result = ResultRejected
		}
		c.observe(j.island, result)
	}
	return res
}

// nodeConn is an LMTP session with a node that has greeted and answered
// LHLO (and XCLIENT): between transactions of one client session it is
// kept, per island, so an MTA that sends many messages on one connection
// (Postfix's connection cache) does not cost a node connection each.
type nodeConn struct {
	name  string // the node's
	helo  string // the client's LHLO name it was opened for (XCLIENT HELO=)
	sc    *smtp.Client
	conn  net.Conn // the connection go-smtp uses (TLS over raw after STARTTLS)
	raw   net.Conn
	stop  func() bool // unregisters the close on the session's end
	dirty bool        // a MAIL transaction may be open: RSET before the next
}

// close ends the node session, with QUIT when polite.
func (nc *nodeConn) close(polite bool) {
	if polite {
		quit(nc.sc)
	}
	nc.stop()
	nc.raw.Close()
}

// takeNode removes and returns the island's kept connection when it may
// serve this transaction: opened for the same LHLO name, to a node still
// among the island's healthy nodes.
func (c *session) takeNode(j *islandJob, env envelope) *nodeConn {
	c.nodesMu.Lock()
	nc := c.nodes[j.island]
	delete(c.nodes, j.island)
	c.nodesMu.Unlock()
	if nc == nil {
		return nil
	}
	if nc.helo == env.helo {
		for _, n := range j.route.Nodes {
			if n.Name == nc.name {
				return nc
			}
		}
	}
	c.closeLater(nc)
	return nil
}

// closeLater ends nc politely off the delivery path: a stalled node may
// keep its QUIT answer for up to quit's timeout, which the transaction
// must not wait for. The session's end waits for it (closeNodes).
func (c *session) closeLater(nc *nodeConn) {
	c.closing.Go(func() { nc.close(true) })
}

// keepNode keeps nc for the island's next transaction, or closes it.
func (c *session) keepNode(island string, nc *nodeConn, keep bool) {
	if !keep {
		nc.close(false)
		return
	}
	c.nodesMu.Lock()
	if c.nodes == nil {
		c.nodes = map[string]*nodeConn{}
	}
	old := c.nodes[island]
	c.nodes[island] = nc
	c.nodesMu.Unlock()
	if old != nil {
		c.closeLater(old)
	}
}

// closeNodes ends every kept node session, all at once, and waits for
// those being closed (the client's session is over).
func (c *session) closeNodes() {
	c.nodesMu.Lock()
	nodes := c.nodes
	c.nodes = nil
	c.nodesMu.Unlock()
	for _, nc := range nodes {
		c.closeLater(nc)
	}
	c.closing.Wait()
}

// tryNode runs the island's transaction on a new connection to node n. A
// *nodeFailure error means nothing was accepted there and another node
// may be tried; otherwise every address has a reply (the node's own, or
// 451 4.4.2 for those it had accepted when it failed).
func (c *session) tryNode(j *islandJob, n proxy.Node, env envelope, sp *spool) (map[string]reply, error) {
	nc, err := c.openNode(j, n, env)
	if err != nil {
		return nil, err
	}
	res, keep, err := c.transact(nc, j, env, sp)
	if err != nil {
		nc.close(false)
		return nil, err
	}
	c.keepNode(j.island, nc, keep)
	return res, nil
}

// openNode connects to node n and brings the session up to the point
// where a MAIL transaction can start.
func (c *session) openNode(j *islandJob, n proxy.Node, env envelope) (_ *nodeConn, err error) {
	ctx := c.ctx
	host := c.core.Hostname()
	cmdTimeout, dataTimeout := c.opts.commandTimeout(), c.opts.dataTimeout()
	conn, err := c.core.Dial(ctx, j.route, n, c.s.Client, c.s.Local)
	if err != nil {
		return nil, &nodeFailure{err}
	}
	// The session ending (the server stopping) cuts the node too; closing
	// the socket also ends a TLS connection on top of it.
	raw := conn
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer func() {
		if err != nil {
			stop()
			raw.Close()
		}
	}()

	// Greeting, LHLO, STARTTLS and XCLIENT are ours: go-smtp's Client can
	// neither send XCLIENT nor start TLS on a connection it already
	// greeted on.
	t := &nodeText{conn: conn, r: bufio.NewReaderSize(conn, nodeBuf), timeout: cmdTimeout}
	greeting, err := t.read()
	if err != nil {
		return nil, failf("greeting: %w", err)
	}
	if greeting.Code != 220 {
		return nil, failf("greeting %q", greeting.Raw)
	}
	ext, err := t.lhlo(host)
	if err != nil {
		return nil, &nodeFailure{err}
	}
	if j.route.NodeTLS == proxy.NodeTLSStartTLS {
		if _, ok := ext["STARTTLS"]; !ok {
			return nil, failf("the node does not offer STARTTLS")
		}
		rep, err := t.cmd("STARTTLS")
		if err != nil {
			return nil, failf("STARTTLS: %w", err)
		}
		if rep.Code != 220 {
			return nil, failf("STARTTLS refused: %q", rep.Raw)
		}
		if t.r.Buffered() > 0 {
			return nil, failf("STARTTLS: the node sent data before the TLS handshake")
		}
		tc := tls.Client(conn, c.core.NodeTLS(j.route, n))
		tc.SetDeadline(time.Now().Add(cmdTimeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, failf("STARTTLS handshake: %w", err)
		}
		conn = tc
		t = &nodeText{conn: tc, r: bufio.NewReaderSize(tc, nodeBuf), timeout: cmdTimeout}
		if ext, err = t.lhlo(host); err != nil {
			return nil, &nodeFailure{err}
		}
	}
	c.h.caps.record(j.island, n.Name, ext)

	// go-smtp's Client starts by reading a greeting: it is given the
	// node's answer to XCLIENT (a new 220 greeting, after which the node
	// wants LHLO again), or else the node's first greeting once more.
	// Either way it then sends its own LHLO.
	replay, hello := greeting.Raw, host
	if offered, ok := ext["XCLIENT"]; ok {
		if cmd := xclientCommand(offered, c.s.Client, env.helo); cmd != "" {
			rep, err := t.cmd(cmd)
			switch {
			case err != nil:
				return nil, failf("XCLIENT: %w", err)
			case rep.Code == 220:
				// The node now stands for the client: the LHLO that
				// follows names the client too (as Postfix's and nginx's
				// XCLIENT clients do), or it would override HELO= —
				// unless the client's name is not a domain or address
				// literal, which the node could refuse.
				replay = rep.Raw
				if domainLike(env.helo) {
					hello = env.helo
				}
			case rep.Code == 421:
				return nil, failf("XCLIENT: %q", rep.Raw)
			default:
				c.log.Warn("lmtp: node refused XCLIENT; it will see atoll's address", "island", j.island, "node", n.Name, "reply", string(rep.Raw))
			}
		}
	}
	t.conn.SetDeadline(time.Time{})
	sc := smtp.NewClientLMTP(&handoffConn{Conn: conn, r: io.MultiReader(bytes.NewReader(replay), t.r)})
	sc.CommandTimeout, sc.SubmissionTimeout = cmdTimeout, dataTimeout
	if err := sc.Hello(hello); err != nil {
		return nil, failf("LHLO: %w", err)
	}
	return &nodeConn{name: n.Name, helo: env.helo, sc: sc, conn: conn, raw: raw, stop: stop}, nil
}

// transact runs one MAIL transaction on nc. A *nodeFailure error means
// nothing was accepted and nc is unusable; otherwise every address has a
// reply, and keep says whether nc may serve the next transaction.
func (c *session) transact(nc *nodeConn, j *islandJob, env envelope, sp *spool) (_ map[string]reply, keep bool, _ error) {
	sc, conn := nc.sc, nc.conn
	dataTimeout := c.opts.dataTimeout()
	conn.SetDeadline(time.Time{})
	if nc.dirty {
		if err := sc.Reset(); err != nil {
			return nil, false, failf("RSET: %w", err)
		}
	}
	nc.dirty = true
	if env.utf8 {
		if ok, _ := sc.Extension("SMTPUTF8"); !ok {
			return nil, false, failf("the node does not offer SMTPUTF8")
		}
	}
	if err := sc.Mail(env.from, &smtp.MailOptions{Size: sp.Size(), UTF8: env.utf8}); err != nil {
		se := asSMTPError(err)
		if se == nil || se.Code/100 != 5 {
			return nil, false, failf("MAIL: %w", err)
		}
		// A permanent refusal of the sender is the island's answer.
		res := map[string]reply{}
		for _, a := range j.addrs {
			res[a] = relayError(se)
		}
		return res, true, nil
	}

	res := map[string]reply{}
	var accepted []string
	failed := func(addrs []string, err error) (map[string]reply, bool, error) {
		c.log.Warn("lmtp: node failed during delivery", "island", j.island, "node", nc.name, "recipients", addrs, "err", err)
		for _, a := range addrs {
			res[a] = reply{Code: 451, Enh: "4.4.2", Lines: []string{fmt.Sprintf("<%s> The server of island %s failed during delivery, try again later", a, j.island)}, NodeFailed: true}
		}
		return res, false, nil
	}
	for i, a := range j.addrs {
		err := sc.Rcpt(a, nil)
		if err == nil {
			accepted = append(accepted, a)
			continue
		}
		if se := asSMTPError(err); se != nil && se.Code != 421 {
			res[a] = relayError(se)
			continue
		}
		if len(accepted) == 0 {
			return nil, false, failf("RCPT: %w", err)
		}
		return failed(append(accepted, j.addrs[i:]...), err)
	}
	if len(accepted) == 0 {
		return res, true, nil
	}
	w, err := sc.Data()
	if err != nil {
		if se := asSMTPError(err); se != nil && se.Code != 421 {
			for _, a := range accepted {
				res[a] = relayError(se)
			}
			return res, true, nil
		}
		return failed(accepted, fmt.Errorf("DATA: %w", err))
	}
	// go-smtp sets no deadline for the message itself.
	conn.SetDeadline(time.Now().Add(dataTimeout))
	if _, err := io.Copy(w, sp.Reader()); err != nil {
		return failed(accepted, fmt.Errorf("sending the message: %w", err))
	}
	resp, err := w.CloseWithLMTPResponse()
	var perRcpt smtp.LMTPDataError
	errors.As(err, &perRcpt)
	var lost []string
	for _, a := range accepted {
		if ok := resp[a]; ok != nil {
			res[a] = relayOK(ok.StatusText)
		} else if se := perRcpt[a]; se != nil && se.Code != 421 {
			res[a] = relayError(se)
		} else {
			lost = append(lost, a)
		}
	}
	if len(lost) > 0 {
		return failed(lost, fmt.Errorf("after the message: %w", err))
	}
	conn.SetDeadline(time.Time{})
	nc.dirty = false
	c.log.Info("lmtp: delivered", "island", j.island, "node", nc.name, "from", env.from, "recipients", len(j.addrs), "bytes", sp.Size(), "spooled_to_disk", sp.onDisk())
	return res, true, nil
}

// quit ends a node session politely, without waiting long.
func quit(sc *smtp.Client) {
	sc.CommandTimeout = 2 * time.Second
	sc.Quit()
}

func asSMTPError(err error) *smtp.SMTPError {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	return nil
}

// relayError is a node's refusal as a reply to the client: its code, its
// enhanced code (X.0.0 when it gave none) and its text.
func relayError(se *smtp.SMTPError) reply {
	enh := fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	if se.EnhancedCode == smtp.EnhancedCodeNotSet || se.EnhancedCode == smtp.NoEnhancedCode {
		enh = fmt.Sprintf("%d.0.0", se.Code/100)
	}
	return reply{Code: se.Code, Enh: enh, Lines: stripEnhanced(se.Code, strings.Split(se.Message, "\n"))}
}

// relayOK is a node's 250 for a recipient after DATA; go-smtp gives its
// text with the enhanced code still in it.
func relayOK(text string) reply {
	lines := strings.Split(text, "\n")
	enh, _, ok := enhancedCode(250, lines[0])
	if !ok {
		enh = "2.0.0"
	}
	return reply{Code: 250, Enh: enh, Lines: stripEnhanced(250, lines)}
}

// stripEnhanced removes an enhanced code from the start of each line (the
// reply writer puts one on every line).
func stripEnhanced(code int, lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		if _, rest, ok := enhancedCode(code, l); ok {
			l = rest
		}
		out[i] = l
	}
	return out
}

// handoffConn is the node connection as go-smtp's Client sees it: reads
// come from r (what our own exchange left buffered, maybe after a
// greeting to replay), everything else is the connection's.
type handoffConn struct {
	net.Conn
	r io.Reader
}

func (h *handoffConn) Read(p []byte) (int, error) { return h.r.Read(p) }

// nodeText is the exchange with a node before go-smtp takes over.
type nodeText struct {
	conn    net.Conn
	r       *bufio.Reader
	timeout time.Duration
}

func (t *nodeText) read() (nodeReply, error) {
	t.conn.SetDeadline(time.Now().Add(t.timeout))
	rep, err := readReply(t.r)
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return rep, err
}

func (t *nodeText) cmd(line string) (nodeReply, error) {
	t.conn.SetDeadline(time.Now().Add(t.timeout))
	if _, err := io.WriteString(t.conn, line+"\r\n"); err != nil {
		return nodeReply{}, err
	}
	return t.read()
}

// lhlo says LHLO and returns the extensions the node offers.
func (t *nodeText) lhlo(host string) (map[string]string, error) {
	rep, err := t.cmd("LHLO " + host)
	if err != nil {
		return nil, fmt.Errorf("LHLO: %w", err)
	}
	if rep.Code != 250 {
		return nil, fmt.Errorf("LHLO refused: %q", rep.Raw)
	}
	return extensions(rep.Lines), nil
}

// domainLike reports whether name can be an LHLO argument a strict
// server accepts: a domain or an address literal.
func domainLike(name string) bool {
	if name == "" || len(name) > 255 {
		return false
	}
	if strings.HasPrefix(name, "[") && strings.HasSuffix(name, "]") {
		lit := strings.TrimPrefix(name[1:len(name)-1], "IPv6:")
		_, err := netip.ParseAddr(lit)
		return err == nil
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
