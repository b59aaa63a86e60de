// Package api is atoll's local admin API: JSON over HTTP on a unix socket
// (mode 0600, so only root and the socket's owner reach it). The `atoll`
// CLI is its client: status, drain, undrain, reload, flows.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Status is the whole picture `atoll status` shows.
type Status struct {
	Version    string            `json:"version"`
	Config     string            `json:"config"`
	StartedAt  time.Time         `json:"started_at"`
	Dataplane  string            `json:"dataplane"`
	Interfaces []string          `json:"interfaces"`
	PinPath    string            `json:"pin_path"`
	Services   []Service         `json:"services"`
	Outcomes   map[string]uint64 `json:"outcomes,omitempty"`
	Conntrack  Conntrack         `json:"conntrack"`
	Drained    []string          `json:"drained"`
	LastReload *Reload           `json:"last_reload,omitempty"`
}

// Conntrack counts tracked flows.
type Conntrack struct {
	V4 int `json:"v4"`
	V6 int `json:"v6"`
}

// Reload is the outcome of the last reload.
type Reload struct {
	At    time.Time `json:"at"`
	OK    bool      `json:"ok"`
	Error string    `json:"error,omitempty"`
}

// Counters are traffic counters.
type Counters struct {
	Packets  uint64 `json:"packets"`
	Bytes    uint64 `json:"bytes"`
	NewFlows uint64 `json:"new_flows"`
}

// Service is one data-plane service (a service's VIP of one family).
type Service struct {
	Name       string         `json:"name"`
	ID         uint32         `json:"id"`
	VIP        netip.AddrPort `json:"vip"`
	Protocol   string         `json:"protocol"`
	Forwarding string         `json:"forwarding"`
	Routing    string         `json:"routing"`
	Island     string         `json:"island,omitempty"`
	RingSize   int            `json:"ring_size"`
	Counters   Counters       `json:"counters"`
	Nodes      []Node         `json:"nodes"`
}

// Node is one node of a service.
type Node struct {
	Name      string     `json:"name"`
	Island    string     `json:"island"`
	Address   netip.Addr `json:"address"`
	BackendID uint32     `json:"backend_id"`
	Weight    uint32     `json:"weight"`
	State     string     `json:"state"`  // data plane: up, draining, down
	Health    string     `json:"health"` // checks: up, down, unknown
	Drained   bool       `json:"drained"`
	Checks    []Check    `json:"checks"`
	Counters  Counters   `json:"counters"`
}

// Check is the latest result of one health check target.
type Check struct {
	Path      string    `json:"path"` // direct, vip4, vip6
	State     string    `json:"state"`
	LastError string    `json:"last_error,omitempty"`
	LatencyMs float64   `json:"latency_ms"`
	LastCheck time.Time `json:"last_check"`
}

// Flow is one conntrack entry.
type Flow struct {
	Client  netip.AddrPort `json:"client"`
	VIP     netip.AddrPort `json:"vip"`
	Service string         `json:"service"`
	Node    string         `json:"node"`
	Local   bool           `json:"local"`
	AgeSec  float64        `json:"age_s"`
}

// Backend is what the API serves; the daemon implements it.
type Backend interface {
	Status() (Status, error)
	Drain(node string) error
	Undrain(node string) error
	Reload() error
	Flows(max int) ([]Flow, error)
}

// ErrNotFound is returned (and mapped to 404) for unknown nodes.
var ErrNotFound = errors.New("not found")

type errorBody struct {
	Error string `json:"error"`
}

// Handler returns the API's HTTP handler.
func Handler(b Backend) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := b.Status()
		reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/nodes/{node}/drain", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"drained": r.PathValue("node")}, b.Drain(r.PathValue("node")))
	})
	mux.HandleFunc("POST /v1/nodes/{node}/undrain", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"undrained": r.PathValue("node")}, b.Undrain(r.PathValue("node")))
	})
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]bool{"reloaded": true}, b.Reload())
	})
	mux.HandleFunc("GET /v1/flows", func(w http.ResponseWriter, r *http.Request) {
		max := 100
		if s := r.URL.Query().Get("max"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				reply(w, nil, fmt.Errorf("%w: max must be a number >= 0", errBadRequest))
				return
			}
			max = n
		}
		flows, err := b.Flows(max)
		reply(w, flows, err)
	})
	return mux
}

var errBadRequest = errors.New("bad request")

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, ErrNotFound):
			code = http.StatusNotFound
		case errors.Is(err, errBadRequest):
			code = http.StatusBadRequest
		}
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(errorBody{Error: err.Error()})
		return
	}
	json.NewEncoder(w).Encode(v)
}

// Listen opens the unix socket (mode 0600), replacing a stale one.
func Listen(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("api: %s is in use: is another atoll running?", socket)
	}
	_ = os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("api: listen on %s: %w", socket, err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api: %w", err)
	}
	return ln, nil
}

// Serve serves the API on ln until ctx is done.
func Serve(ctx context.Context, ln net.Listener, b Backend, log *slog.Logger) error {
	srv := &http.Server{Handler: Handler(b), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Client talks to a running atoll over its socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the API on socket.
func NewClient(socket string) *Client {
	return &Client{
		socket: socket,
		hc: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			}},
		},
	}
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://atoll"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach atoll at %s (is `atoll run` running?): %w", c.socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			if resp.StatusCode == http.StatusNotFound {
				return fmt.Errorf("%w: %s", ErrNotFound, e.Error)
			}
			return errors.New(e.Error)
		}
		return fmt.Errorf("atoll answered %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(body, out)
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/status", &st)
	return st, err
}

// Drain drains a node: it keeps its flows and gets no new ones.
func (c *Client) Drain(ctx context.Context, node string) error {
	return c.do(ctx, http.MethodPost, "/v1/nodes/"+node+"/drain", nil)
}

// Undrain puts a drained node back.
func (c *Client) Undrain(ctx context.Context, node string) error {
	return c.do(ctx, http.MethodPost, "/v1/nodes/"+node+"/undrain", nil)
}

// Reload makes the daemon re-read its config file.
func (c *Client) Reload(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/reload", nil)
}

// Flows fetches up to max conntrack entries.
func (c *Client) Flows(ctx context.Context, max int) ([]Flow, error) {
	var f []Flow
	err := c.do(ctx, http.MethodGet, "/v1/flows?max="+strconv.Itoa(max), &f)
	return f, err
}
