package main

// LMTP messages per second through atoll's LMTP router (issue 5) against
// direct LMTP to the same Dovecot node, on loopback. The router is
// userspace/proxy/lmtp's handler served by the proxy core in this
// process (`atoll run` does not serve LMTP services yet), with a static
// directory placing every recipient on island a, whose only node is the
// Dovecot. Each client keeps one LMTP connection and sends transactions
// back to back (LHLO once; MAIL, RCPT × n, DATA of a 10 KiB message,
// one reply per recipient), as an MTA does.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/directory"
	"github.com/atoll-lb/atoll/userspace/proxy"
	"github.com/atoll-lb/atoll/userspace/proxy/lmtp"
)

// LMTPResult is the "LMTP router" section.
type LMTPResult struct {
	Dovecot     string    `json:"dovecot"`
	MessageSize int       `json:"message_bytes"`
	Concurrency int       `json:"concurrency"`
	MaxMessages int       `json:"max_messages_per_measurement"`
	MaxSeconds  float64   `json:"max_seconds_per_measurement"`
	Runs        int       `json:"runs"`
	Rows        []LMTPRow `json:"rows"`
}

// LMTPRow is one recipient count.
type LMTPRow struct {
	Recipients int    `json:"recipients"`
	Router     Spread `json:"router_messages_per_s"`
	Direct     Spread `json:"direct_messages_per_s"`
	Ratio      Spread `json:"ratio"` // router ÷ direct, per run
	OK         int    `json:"messages_ok"`
	Errors     int    `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
}

// lmtpNodes is the router's view of the one island.
type lmtpNodes struct{ node netip.AddrPort }

func (n lmtpNodes) Nodes(service, island string) []proxy.NodeInfo {
	return []proxy.NodeInfo{{Name: "node-a", Addr: n.node, Healthy: true}}
}

func (n lmtpNodes) Island(island string) (proxy.IslandSettings, bool) {
	return proxy.IslandSettings{ClientAddr: proxy.ClientAddrNone, NodeTLS: proxy.NodeTLSNone}, island == "a"
}

func runLMTP(quick bool, runs int, progress func(string)) (*LMTPResult, error) {
	res := &LMTPResult{MessageSize: 10 << 10, Concurrency: 8, MaxMessages: 20000, MaxSeconds: 5, Runs: runs}
	if quick {
		res.MaxSeconds = 2
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the LMTP benchmark needs root (Dovecot)")
	}
	res.Dovecot = versionOf("dovecot", "--version")
	tmp, err := os.MkdirTemp("", "atoll-bench-lmtp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	users := map[string]string{}
	var rcpts []string
	for i := range 5 {
		u := fmt.Sprintf("rcpt%d@bench.test", i)
		users[u] = "pw"
		rcpts = append(rcpts, u)
	}
	progress("lmtp: starting Dovecot")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := peer.StartDovecot(ctx, peer.DovecotOptions{
		Dir: filepath.Join(tmp, "dovecot"), Name: "lmtp-bench", Listen: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Ports: peer.DovecotPorts{IMAP: -1, LMTP: 0, POP3: -1, IMAPS: -1, POP3S: -1, LMTPS: -1},
		Users: users,
	})
	if err != nil {
		return nil, err
	}
	defer d.Stop()
	direct := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(d.Ports.LMTP))

	dir, err := directory.ParseStatic("bench", []byte("* a\n"))
	if err != nil {
		return nil, err
	}
	core := proxy.NewCore(proxy.Options{
		Directory: dir, Nodes: lmtpNodes{node: direct}, MaxConnsPerSource: -1,
		Throttle: proxy.ThrottleSettings{Threshold: -1}, Hostname: "bench.atoll", DialTimeout: 5 * time.Second,
		Log: discardLog(),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		core.Serve(sctx, ln, proxy.Listener{Service: "lmtp", Handler: lmtp.NewHandler(lmtp.Options{}), Protocol: "lmtp",
			Refuse: "421 4.7.0 Too many connections\r\n"})
	}()
	defer func() {
		stop()
		<-served
	}()
	router := ln.Addr().(*net.TCPAddr).AddrPort()
	msg := lmtpMessage(res.MessageSize)

	for _, n := range []int{1, 5} {
		row := LMTPRow{Recipients: n}
		// Warm up both ways.
		for _, a := range []netip.AddrPort{direct, router} {
			if l := lmtpLoad(a, rcpts[:n], msg, res.Concurrency, 50, 10*time.Second); l.errors > 0 {
				return nil, fmt.Errorf("LMTP warm-up to %v: %v", a, l.firstErr)
			}
		}
		var r, dr []float64
		for i := range runs {
			progress(fmt.Sprintf("lmtp %d recipient(s) run %d/%d", n, i+1, runs))
			var got [2]loginLoad
			for _, j := range order(i) {
				a := []netip.AddrPort{router, direct}[j]
				got[j] = lmtpLoad(a, rcpts[:n], msg, res.Concurrency, res.MaxMessages, time.Duration(res.MaxSeconds*float64(time.Second)))
				row.OK += got[j].ok
				row.Errors += got[j].errors
				if got[j].firstErr != nil && row.FirstError == "" {
					row.FirstError = got[j].firstErr.Error()
				}
				if got[j].ok == 0 {
					return nil, fmt.Errorf("LMTP to %v: nothing delivered: %v", a, got[j].firstErr)
				}
			}
			r, dr = append(r, got[0].perSecond()), append(dr, got[1].perSecond())
		}
		row.Router, row.Direct, row.Ratio = spread(r), spread(dr), ratioRuns(r, dr)
		res.Rows = append(res.Rows, row)
	}
	return res, nil
}

// lmtpMessage is a message of about size bytes, dot-stuffing free, with
// the terminating ".".
func lmtpMessage(size int) []byte {
	var b strings.Builder
	b.WriteString("From: bench@example.org\r\nTo: rcpt@bench.test\r\nSubject: atoll LMTP bench\r\n\r\n")
	line := strings.Repeat("0123456789abcdef", 4) + "0123456789ab\r\n" // 78 bytes
	for b.Len() < size {
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return []byte(b.String())
}

// lmtpLoad delivers msg to rcpts over conc connections, back to back,
// until maxN transactions started or maxDur passed; ok counts messages
// every recipient of which was accepted.
func lmtpLoad(addr netip.AddrPort, rcpts []string, msg []byte, conc, maxN int, maxDur time.Duration) loginLoad {
	var (
		next, ok, bad atomic.Int64
		once          sync.Once
		firstErr      error
		wg            sync.WaitGroup
	)
	fail := func(err error) {
		bad.Add(1)
		once.Do(func() { firstErr = err })
	}
	start := time.Now()
	deadline := start.Add(maxDur)
	for range conc {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", addr.String(), 10*time.Second)
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			c.SetDeadline(deadline.Add(30 * time.Second))
			r := bufio.NewReader(c)
			w := bufio.NewWriterSize(c, 32<<10)
			if err := lmtpReply(r, "220"); err != nil {
				fail(err)
				return
			}
			fmt.Fprintf(w, "LHLO bench.example.org\r\n")
			w.Flush()
			if err := lmtpReply(r, "250"); err != nil {
				fail(err)
				return
			}
			for next.Add(1) <= int64(maxN) && time.Now().Before(deadline) {
				if err := lmtpTransaction(r, w, rcpts, msg); err != nil {
					fail(err)
					return
				}
				ok.Add(1)
			}
			fmt.Fprintf(w, "QUIT\r\n")
			w.Flush()
			io.Copy(io.Discard, r)
		})
	}
	wg.Wait()
	return loginLoad{ok: int(ok.Load()), errors: int(bad.Load()), elapsed: time.Since(start), firstErr: firstErr}
}

func lmtpTransaction(r *bufio.Reader, w *bufio.Writer, rcpts []string, msg []byte) error {
	fmt.Fprintf(w, "MAIL FROM:<bench@example.org>\r\n")
	w.Flush()
	if err := lmtpReply(r, "250"); err != nil {
		return err
	}
	for _, rc := range rcpts {
		fmt.Fprintf(w, "RCPT TO:<%s>\r\n", rc)
		w.Flush()
		if err := lmtpReply(r, "250"); err != nil {
			return fmt.Errorf("RCPT %s: %w", rc, err)
		}
	}
	fmt.Fprintf(w, "DATA\r\n")
	w.Flush()
	if err := lmtpReply(r, "354"); err != nil {
		return err
	}
	w.Write(msg)
	w.Flush()
	for range rcpts {
		if err := lmtpReply(r, "250"); err != nil {
			return fmt.Errorf("after DATA: %w", err)
		}
	}
	return nil
}

// lmtpReply reads one (possibly multi-line) reply, which must start with
// want.
func lmtpReply(r *bufio.Reader, want string) error {
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(l, want) {
			return fmt.Errorf("LMTP: %q (want %s)", strings.TrimSpace(l), want)
		}
		if len(l) < 4 || l[3] != '-' {
			return nil
		}
	}
}

// discardLog is a logger that drops everything (the router's per-message
// logs would cost more than the routing).
func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func lmtpMarkdown(r *LMTPResult) string {
	var b strings.Builder
	b.WriteString("## LMTP router (loopback, issue 5)\n\n")
	fmt.Fprintf(&b, "atoll's LMTP router (`userspace/proxy/lmtp` served by the proxy core in the bench process; static directory, one island whose only node is a private Dovecot %s) against direct LMTP to that Dovecot. %d connections, each sending transactions back to back (LHLO once; MAIL, RCPT × n, DATA of a %d KiB message, one reply per recipient), at most %d messages or %.0f s per measurement; median of %d runs, ratio router ÷ direct per run (which goes first alternates). Through the router every recipient is looked up in the directory and the message is spooled whole before the node sees it; the router keeps its node connection between the transactions of one client connection, as the direct client does.\n\n",
		r.Dovecot, r.Concurrency, r.MessageSize>>10, r.MaxMessages, r.MaxSeconds, r.Runs)
	b.WriteString("| recipients | router msg/s | min–max | direct msg/s | min–max | ratio | min–max | failed |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.Rows {
		fmt.Fprintf(&b, "| %d | %.0f | %.0f–%.0f | %.0f | %.0f–%.0f | %.2f× | %.2f–%.2f | %d |\n", x.Recipients,
			x.Router.Median, x.Router.Min, x.Router.Max, x.Direct.Median, x.Direct.Min, x.Direct.Max, x.Ratio.Median, x.Ratio.Min, x.Ratio.Max, x.Errors)
	}
	b.WriteString("\n")
	return b.String()
}
