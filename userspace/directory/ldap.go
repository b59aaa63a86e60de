package directory

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"
	"golang.org/x/sync/singleflight"
)

// Cache results, as reported to an Observer: exactly one per Lookup.
const (
	// CacheHit: a fresh positive entry answered.
	CacheHit = "hit"
	// CacheNegativeHit: a fresh negative entry answered (ErrUnknownUser).
	CacheNegativeHit = "negative_hit"
	// CacheMiss: the lookup went to LDAP (whatever came of it, except…).
	CacheMiss = "miss"
	// CacheStale: …it went to LDAP, no server answered, and an expired
	// positive entry was served (Result.Stale).
	CacheStale = "stale"
)

// Observer is told how each lookup was answered (CacheHit, …); metrics.
type Observer interface {
	CacheResult(result string)
}

// Defaults of LDAPOptions.
const (
	DefaultLDAPTimeout = 2 * time.Second
	DefaultPoolSize    = 4
	DefaultPositiveTTL = 5 * time.Minute
	DefaultNegativeTTL = time.Minute
	DefaultStaleTTL    = time.Hour
	DefaultMaxEntries  = 100000
	DefaultRetryAfter  = 30 * time.Second
)

// LDAPOptions configure an LDAP directory. For the durations, 0 means the
// default and a negative value means off (a TTL of 0: not cached, never
// served stale).
type LDAPOptions struct {
	// URLs are the servers, ldap://HOST[:PORT] or ldaps://HOST[:PORT],
	// tried in order for each lookup; the first that answers wins. A
	// server that failed is tried after the others for RetryAfter.
	URLs []string
	// StartTLS upgrades ldap:// connections before the bind (ldaps:// ones
	// speak TLS from the start).
	StartTLS bool
	// TLSConfig verifies the servers (RootCAs, ServerName…) for ldaps://
	// and StartTLS; nil means the system roots. Without a ServerName, each
	// server is verified against its URL's host.
	TLSConfig *tls.Config
	// BindDN is bound as, with the password in PasswordFile; "" binds
	// anonymously (then PasswordFile must be "" too).
	BindDN string
	// PasswordFile is read by NewLDAP and Reload; a trailing newline is
	// trimmed; it must not be empty.
	PasswordFile string
	// BaseDN is searched (scope subtree).
	BaseDN string
	// Filter finds a user's entry: %u is the user's name, %n the part
	// before its last '@' (the whole name without one), %d the part after
	// it ("" without one), %% a '%'. Each is escaped with
	// ldap.EscapeFilter. Example: (|(uid=%u)(mail=%u)).
	Filter string
	// Attribute of the user's entry holding the island's name.
	Attribute string
	// Timeout bounds one attempt on one server: dial, TLS, bind and
	// search (default 2s). A lookup's ctx deadline bounds it too.
	Timeout time.Duration
	// PoolSize is the number of idle bound connections kept per server
	// (default 4); more are opened when more lookups run at once.
	PoolSize int
	// PositiveTTL: how long a found island is served from the cache
	// (default 5m).
	PositiveTTL time.Duration
	// NegativeTTL: how long an unknown user is (default 1m).
	NegativeTTL time.Duration
	// StaleTTL: how long after its expiry a positive entry may still be
	// served while no server answers (default 1h).
	StaleTTL time.Duration
	// MaxEntries bounds the cache (default 100000); when full, the entry
	// written longest ago goes.
	MaxEntries int
	// RetryAfter: a server that failed (down, timing out, refusing the
	// bind) goes to the end of the order for this long (default 30s), so
	// a hung first server does not cost every lookup a Timeout.
	RetryAfter time.Duration
}

// CacheStats are the LDAP directory's counters since NewLDAP.
type CacheStats struct {
	Entries      int    // entries held now (positive and negative)
	Hits         uint64 // lookups answered by a fresh positive entry
	NegativeHits uint64 // lookups answered by a fresh negative entry
	Misses       uint64 // lookups that went to LDAP (including the stale ones)
	Stale        uint64 // lookups answered by a stale entry, no server answering
	Unavailable  uint64 // lookups that ended in ErrUnavailable
	Searches     uint64 // searches sent to servers
	Evictions    uint64 // live entries dropped because the cache was full
}

// LDAP is a Directory backed by LDAP servers, with a cache. Safe for
// concurrent use.
type LDAP struct {
	o       LDAPOptions
	log     *slog.Logger
	obs     Observer
	filter  filterTemplate
	servers []*server
	cache   *cache
	group   singleflight.Group

	base   context.Context // canceled by Close
	cancel context.CancelFunc
	closed atomic.Bool

	pwMu     sync.Mutex
	password string
	pwGen    uint64 // bumped when the password changes: older connections go

	hits, negHits, misses, stale, unavailable, searches atomic.Uint64

	// onSearch, if set (tests), sees every search sent.
	onSearch func(url, filter string)
}

var _ Directory = (*LDAP)(nil)

// server is one URL with its pool of idle bound connections.
type server struct {
	url   string
	addr  string // host:port
	ldaps bool
	tls   *tls.Config // for ldaps:// or StartTLS; nil if neither

	mu       sync.Mutex
	idle     []*conn
	failedAt time.Time // last failure; zero once it answers again
	problem  string    // the failure last logged ("" = answering)
}

// conn is a bound connection.
type conn struct {
	lc  *ldap.Conn
	raw net.Conn // the TCP connection under it: closing it aborts anything
	gen uint64   // password generation it was bound with
}

func (c *conn) close() {
	c.raw.Close()
	c.lc.Close()
}

var reIsland = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// NewLDAP checks the options (URLs, filter, attribute, bind), reads the
// password file and fills in defaults. It does not connect: the first
// lookup does. log may be nil (no logging), obs too.
func NewLDAP(o LDAPOptions, log *slog.Logger, obs Observer) (*LDAP, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		switch {
		case *d == 0:
			*d = v
		case *d < 0:
			*d = 0
		}
	}
	def(&o.Timeout, DefaultLDAPTimeout)
	def(&o.PositiveTTL, DefaultPositiveTTL)
	def(&o.NegativeTTL, DefaultNegativeTTL)
	def(&o.StaleTTL, DefaultStaleTTL)
	def(&o.RetryAfter, DefaultRetryAfter)
	if o.Timeout == 0 {
		return nil, errors.New("directory: LDAP timeout must be positive")
	}
	if o.PoolSize <= 0 {
		o.PoolSize = DefaultPoolSize
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if len(o.URLs) == 0 {
		return nil, errors.New("directory: no LDAP URL")
	}
	if o.BaseDN == "" {
		return nil, errors.New("directory: LDAP base DN is empty")
	}
	if _, err := ldap.ParseDN(o.BaseDN); err != nil {
		return nil, fmt.Errorf("directory: LDAP base DN %q: %w", o.BaseDN, err)
	}
	if o.Attribute == "" {
		return nil, errors.New("directory: LDAP attribute is empty")
	}
	f, err := parseFilter(o.Filter)
	if err != nil {
		return nil, fmt.Errorf("directory: LDAP filter %q %w", o.Filter, err)
	}
	switch {
	case o.BindDN == "" && o.PasswordFile != "":
		return nil, errors.New("directory: LDAP password file without a bind DN")
	case o.BindDN != "" && o.PasswordFile == "":
		return nil, errors.New("directory: LDAP bind DN without a password file")
	}
	l := &LDAP{o: o, log: log, obs: obs, filter: f, cache: newCache(o.MaxEntries)}
	for _, raw := range o.URLs {
		s, err := newServer(raw, o.StartTLS, o.TLSConfig)
		if err != nil {
			return nil, err
		}
		l.servers = append(l.servers, s)
	}
	if o.BindDN != "" {
		pw, err := readPassword(o.PasswordFile)
		if err != nil {
			return nil, err
		}
		l.password = pw
	}
	l.base, l.cancel = context.WithCancel(context.Background())
	return l, nil
}

func newServer(raw string, startTLS bool, tc *tls.Config) (*server, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("directory: LDAP URL %q: %w", raw, err)
	}
	if u.Scheme != "ldap" && u.Scheme != "ldaps" {
		return nil, fmt.Errorf("directory: LDAP URL %q: want ldap:// or ldaps://", raw)
	}
	if u.Hostname() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("directory: LDAP URL %q: want ldap://HOST[:PORT] or ldaps://HOST[:PORT]", raw)
	}
	port := u.Port()
	if port == "" {
		port = "389"
		if u.Scheme == "ldaps" {
			port = "636"
		}
	} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return nil, fmt.Errorf("directory: LDAP URL %q: bad port", raw)
	}
	s := &server{url: raw, addr: net.JoinHostPort(u.Hostname(), port), ldaps: u.Scheme == "ldaps"}
	if s.ldaps || startTLS {
		if tc == nil {
			s.tls = &tls.Config{}
		} else {
			s.tls = tc.Clone()
		}
		if s.tls.ServerName == "" {
			s.tls.ServerName = u.Hostname()
		}
		if s.tls.MinVersion == 0 {
			s.tls.MinVersion = tls.VersionTLS12
		}
	}
	return s, nil
}

func readPassword(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("directory: LDAP password file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10+1))
	if err != nil {
		return "", fmt.Errorf("directory: LDAP password file: %w", err)
	}
	if len(b) > 64<<10 {
		return "", fmt.Errorf("directory: LDAP password file %s: over 64 KiB", path)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pw == "" {
		// An empty password makes a simple bind unauthenticated, which a
		// server may take as anonymous.
		return "", fmt.Errorf("directory: LDAP password file %s is empty", path)
	}
	return pw, nil
}

// Reload reads the password file again. If the password changed, pooled
// connections bound with the old one are closed. On error the old
// password stays.
func (l *LDAP) Reload() error {
	if l.o.BindDN == "" {
		return nil
	}
	pw, err := readPassword(l.o.PasswordFile)
	if err != nil {
		return err
	}
	l.pwMu.Lock()
	changed := pw != l.password
	if changed {
		l.password = pw
		l.pwGen++
	}
	l.pwMu.Unlock()
	if changed {
		for _, s := range l.servers {
			s.flush()
		}
		l.log.Info("LDAP bind password reloaded", "bind_dn", l.o.BindDN)
	}
	return nil
}

func (l *LDAP) credentials() (string, uint64) {
	l.pwMu.Lock()
	defer l.pwMu.Unlock()
	return l.password, l.pwGen
}

// Close closes every connection and cancels lookups in flight; later
// lookups return ErrUnavailable.
func (l *LDAP) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	l.cancel()
	for _, s := range l.servers {
		s.flush()
	}
	return nil
}

// Stats returns the counters.
func (l *LDAP) Stats() CacheStats {
	n, ev := l.cache.stats()
	return CacheStats{
		Entries: n, Hits: l.hits.Load(), NegativeHits: l.negHits.Load(), Misses: l.misses.Load(),
		Stale: l.stale.Load(), Unavailable: l.unavailable.Load(), Searches: l.searches.Load(), Evictions: ev,
	}
}

func (l *LDAP) observe(result string) {
	switch result {
	case CacheHit:
		l.hits.Add(1)
	case CacheNegativeHit:
		l.negHits.Add(1)
	case CacheMiss:
		l.misses.Add(1)
	case CacheStale:
		l.misses.Add(1)
		l.stale.Add(1)
	}
	if l.obs != nil {
		l.obs.CacheResult(result)
	}
}

// errUnavailable wraps the cause of an ErrUnavailable.
func errUnavailable(cause error) error {
	return fmt.Errorf("%w: %w", ErrUnavailable, cause)
}

// Lookup returns user's island: from the cache while fresh, else from
// the first server that answers (one search per user name in flight,
// shared by concurrent callers). When no server answers — or ctx ends
// first — an expired positive entry younger than expiry+StaleTTL is
// served with Stale set; else ErrUnavailable. A user with no entry, more
// than one, or an entry without a usable island is ErrUnknownUser
// (cached for NegativeTTL; the last two are logged as warnings).
func (l *LDAP) Lookup(ctx context.Context, user string) (Result, error) {
	if l.closed.Load() {
		return Result{}, errUnavailable(errors.New("directory closed"))
	}
	if e, ok := l.cache.get(user, time.Now()); ok && time.Now().Before(e.expires) {
		if e.negative {
			l.observe(CacheNegativeHit)
			return Result{Cached: true}, ErrUnknownUser
		}
		l.observe(CacheHit)
		return Result{Island: e.island, Cached: true}, nil
	}
	ch := l.group.DoChan(user, func() (any, error) { return l.fetch(user) })
	var err error
	select {
	case r := <-ch:
		if r.Err == nil {
			l.observe(CacheMiss)
			return Result{Island: r.Val.(string)}, nil
		}
		err = r.Err
		if errors.Is(err, ErrUnknownUser) {
			l.observe(CacheMiss)
			return Result{}, err
		}
	case <-ctx.Done():
		// The search goes on for whoever else waits, and fills the cache.
		err = errUnavailable(fmt.Errorf("no answer in time: %w", ctx.Err()))
	}
	if e, ok := l.cache.get(user, time.Now()); ok && !e.negative {
		if time.Now().Before(e.expires) { // refreshed meanwhile
			l.observe(CacheHit)
			return Result{Island: e.island, Cached: true}, nil
		}
		l.observe(CacheStale)
		return Result{Island: e.island, Cached: true, Stale: true}, nil
	}
	l.observe(CacheMiss)
	l.unavailable.Add(1)
	return Result{}, err
}

// fetch asks the servers in turn; it caches what the first that answers
// says. The error is ErrUnknownUser or ErrUnavailable (wrapped).
func (l *LDAP) fetch(user string) (string, error) {
	filter := l.filter.expand(user)
	var errs []error
	for _, s := range l.order(time.Now()) {
		if l.base.Err() != nil {
			return "", errUnavailable(errors.New("directory closed"))
		}
		island, err := l.ask(s, user, filter)
		if err == nil || errors.Is(err, ErrUnknownUser) {
			l.answered(s)
			now := time.Now()
			if err == nil {
				l.cache.put(cacheEntry{user: user, island: island,
					expires: now.Add(l.o.PositiveTTL), dead: now.Add(l.o.PositiveTTL + l.o.StaleTTL)}, now)
			} else {
				l.cache.put(cacheEntry{user: user, negative: true,
					expires: now.Add(l.o.NegativeTTL), dead: now.Add(l.o.NegativeTTL)}, now)
			}
			return island, err
		}
		l.failed(s, err)
		errs = append(errs, fmt.Errorf("%s: %w", s.url, err))
	}
	return "", errUnavailable(errors.Join(errs...))
}

// order lists the servers to try: those that have not failed in the last
// RetryAfter in configured order, then the others in configured order.
func (l *LDAP) order(now time.Time) []*server {
	var ok, held []*server
	for _, s := range l.servers {
		s.mu.Lock()
		recent := !s.failedAt.IsZero() && now.Sub(s.failedAt) < l.o.RetryAfter
		s.mu.Unlock()
		if recent {
			held = append(held, s)
		} else {
			ok = append(ok, s)
		}
	}
	return append(ok, held...)
}

// A failure, classified for the log (one line when a server's state
// changes, not one per lookup).
var (
	errBindRefused = errors.New("bind refused")
	errTLS         = errors.New("TLS failed")
)

func (l *LDAP) failed(s *server, err error) {
	problem := "down"
	switch {
	case errors.Is(err, errBindRefused):
		problem = "bind refused"
	case errors.Is(err, errTLS):
		problem = "TLS"
	}
	s.mu.Lock()
	s.failedAt = time.Now()
	changed := s.problem != problem
	s.problem = problem
	s.mu.Unlock()
	if !changed {
		return
	}
	switch problem {
	case "bind refused":
		l.log.Error("LDAP server refuses our bind: a configuration error; check bind_dn and the password file",
			"url", s.url, "bind_dn", l.o.BindDN, "err", err)
		return
	case "TLS":
		l.log.Error("LDAP server's TLS fails: check the CA file and the server's name in its URL",
			"url", s.url, "err", err)
		return
	}
	l.log.Warn("LDAP server does not answer; trying the others", "url", s.url, "err", err)
}

func (l *LDAP) answered(s *server) {
	s.mu.Lock()
	was := s.problem
	s.failedAt, s.problem = time.Time{}, ""
	s.mu.Unlock()
	if was != "" {
		l.log.Info("LDAP server answers again", "url", s.url)
	}
}

// ask runs one attempt on s, bounded by Timeout: a pooled connection
// (or a new one: dial, TLS, bind), then the search. A pooled connection
// that turns out dead (the server restarted, or closed it while idle) is
// replaced by a new one once, within the same Timeout.
func (l *LDAP) ask(s *server, user, filter string) (string, error) {
	ctx, cancel := context.WithTimeout(l.base, l.o.Timeout)
	defer cancel()
	c, pooled, err := l.get(ctx, s)
	if err != nil {
		return "", err
	}
	res, err := l.search(ctx, s, c, filter)
	if err != nil && pooled && !serverResult(err) && ctx.Err() == nil {
		s.flush() // its siblings are likely dead too
		if c, err = l.dial(ctx, s); err != nil {
			return "", err
		}
		res, err = l.search(ctx, s, c, filter)
	}
	switch {
	case ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded):
		l.log.Warn("LDAP: more than one entry matches the user; fix the directory (or the filter): the user is refused, no island is guessed",
			"user", user, "filter", filter, "base_dn", l.o.BaseDN, "url", s.url)
		return "", fmt.Errorf("%w: several entries match", ErrUnknownUser)
	case err != nil:
		return "", err
	}
	switch len(res.Entries) {
	case 0:
		return "", ErrUnknownUser
	case 1:
	default:
		l.log.Warn("LDAP: more than one entry matches the user; fix the directory (or the filter): the user is refused, no island is guessed",
			"user", user, "filter", filter, "base_dn", l.o.BaseDN, "url", s.url,
			"entries", []string{res.Entries[0].DN, res.Entries[1].DN})
		return "", fmt.Errorf("%w: several entries match", ErrUnknownUser)
	}
	e := res.Entries[0]
	vals := e.GetEqualFoldAttributeValues(l.o.Attribute)
	switch {
	case len(vals) == 0:
		l.log.Warn("LDAP: the user's entry has no island attribute; the user is refused",
			"user", user, "dn", e.DN, "attribute", l.o.Attribute, "url", s.url)
		return "", fmt.Errorf("%w: entry without %s", ErrUnknownUser, l.o.Attribute)
	case len(vals) > 1:
		l.log.Warn("LDAP: the user's entry has several islands; the user is refused",
			"user", user, "dn", e.DN, "attribute", l.o.Attribute, "values", vals, "url", s.url)
		return "", fmt.Errorf("%w: several values of %s", ErrUnknownUser, l.o.Attribute)
	case !reIsland.MatchString(vals[0]):
		l.log.Warn("LDAP: the user's island is not a valid island name ([a-z0-9][a-z0-9-]{0,31}); the user is refused",
			"user", user, "dn", e.DN, "attribute", l.o.Attribute, "value", vals[0], "url", s.url)
		return "", fmt.Errorf("%w: invalid island name in %s", ErrUnknownUser, l.o.Attribute)
	}
	return vals[0], nil
}

// isAnswer tells the server's answers that leave the connection usable.
func isAnswer(err error) bool {
	return ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded)
}

// serverResult tells an LDAP result from the server (noSuchObject,
// busy…) from a failure of the connection (go-ldap's own codes from
// ErrorNetwork up, or a plain error).
func serverResult(err error) bool {
	var le *ldap.Error
	return errors.As(err, &le) && le.ResultCode < ldap.ErrorNetwork
}

// get takes an idle connection of s, or makes one.
func (l *LDAP) get(ctx context.Context, s *server) (c *conn, pooled bool, err error) {
	_, gen := l.credentials()
	s.mu.Lock()
	for len(s.idle) > 0 {
		c = s.idle[len(s.idle)-1]
		s.idle = s.idle[:len(s.idle)-1]
		if c.gen == gen && !c.lc.IsClosing() {
			s.mu.Unlock()
			return c, true, nil
		}
		go c.close()
	}
	s.mu.Unlock()
	c, err = l.dial(ctx, s)
	return c, false, err
}

// put returns a healthy connection to s's pool, or closes it.
func (l *LDAP) put(s *server, c *conn) {
	_, gen := l.credentials()
	s.mu.Lock()
	if !l.closed.Load() && c.gen == gen && len(s.idle) < l.o.PoolSize && !c.lc.IsClosing() {
		s.idle = append(s.idle, c)
		c = nil
	}
	s.mu.Unlock()
	if c != nil {
		c.close()
	}
}

func (s *server) flush() {
	s.mu.Lock()
	idle := s.idle
	s.idle = nil
	s.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}

// guard arms ctx to abort whatever c is doing (by closing its TCP
// connection) and sets go-ldap's request timeout to what is left of ctx.
// done reports whether ctx fired.
func guard(ctx context.Context, lc *ldap.Conn, raw net.Conn) (done func() (fired bool)) {
	if dl, ok := ctx.Deadline(); ok && lc != nil {
		lc.SetTimeout(max(time.Until(dl), time.Millisecond))
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	return func() bool { return !stop() }
}

// dial opens, secures and binds a connection to s, within ctx.
func (l *LDAP) dial(ctx context.Context, s *server) (*conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	nc := raw
	if s.ldaps {
		tc := tls.Client(raw, s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("TLS: %w (after %v)", ctx.Err(), l.o.Timeout)
			}
			return nil, fmt.Errorf("%w: %w", errTLS, err)
		}
		nc = tc
	}
	lc := ldap.NewConn(nc, s.ldaps)
	lc.Start()
	c := &conn{lc: lc, raw: raw}
	fail := func(what string, err error) (*conn, error) {
		c.close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (after %v)", ctx.Err(), l.o.Timeout)
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	done := guard(ctx, lc, raw)
	if !s.ldaps && s.tls != nil {
		if err := lc.StartTLS(s.tls); err != nil {
			done()
			return fail("StartTLS", fmt.Errorf("%w: %w", errTLS, err))
		}
	}
	if l.o.BindDN != "" {
		pw, gen := l.credentials()
		c.gen = gen
		if err := lc.Bind(l.o.BindDN, pw); err != nil {
			done()
			if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) || ldap.IsErrorWithCode(err, ldap.LDAPResultInappropriateAuthentication) {
				return fail("bind", fmt.Errorf("%w: %w", errBindRefused, err))
			}
			return fail("bind", err)
		}
	}
	if done() {
		return fail("connect", ctx.Err())
	}
	return c, nil
}

// search sends the lookup's search on c and gives c back to the pool if
// it is still good (closes it otherwise).
func (l *LDAP) search(ctx context.Context, s *server, c *conn, filter string) (*ldap.SearchResult, error) {
	timeLimit := int(math.Ceil(l.o.Timeout.Seconds())) // the server's own bound, in seconds
	req := ldap.NewSearchRequest(l.o.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, timeLimit, false, filter, []string{l.o.Attribute}, nil)
	l.searches.Add(1)
	if l.onSearch != nil {
		l.onSearch(s.url, filter)
	}
	done := guard(ctx, c.lc, c.raw)
	res, err := c.lc.Search(req)
	if done() {
		err = fmt.Errorf("%w (after %v)", ctx.Err(), l.o.Timeout)
	}
	if err == nil || isAnswer(err) {
		l.put(s, c)
		return res, err
	}
	c.close()
	return res, fmt.Errorf("search: %w", err)
}
