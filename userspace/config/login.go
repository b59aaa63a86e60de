package config

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	pathpkg "path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file checks what the login proxy reads: the proxy and directory
// sections, islands[].proxy and the services with routing login.

// Defaults of the proxy and directory sections.
const (
	defaultHostname        = "atoll"
	defaultPreLoginTimeout = 60 * time.Second
	defaultMaxLine         = 8192
	defaultMaxLiteral      = 8192
	defaultMaxBadCommands  = 10
	defaultMaxLoginTries   = 3
	defaultMaxConnsPerSrc  = 50
	defaultThreshold       = 5
	defaultWindow          = 10 * time.Minute
	defaultBaseDelay       = time.Second
	defaultMaxDelay        = 30 * time.Second
	defaultDialTimeout     = 5 * time.Second
	defaultMaxMessageSize  = 50 << 20
	defaultMaxRecipients   = 100
	defaultLDAPTimeout     = 2 * time.Second
	defaultPoolSize        = 4
	defaultPositiveTTL     = 5 * time.Minute
	defaultNegativeTTL     = time.Minute
	defaultStaleTTL        = time.Hour
)

// Limits of the proxy and directory sections.
const (
	minIdleTimeout = 30 * time.Minute
	maxMaxDelay    = 10 * time.Minute
	maxLDAPURLs    = 8
	maxSecretSize  = 64 << 10
	day            = 24 * time.Hour
)

var (
	clientAddrs = []string{ClientAddrNone, ClientAddrProxy, ClientAddrID}
	nodeTLS     = []string{TLSNone, TLSStartTLS, TLSImplicit}
	nodeLogins  = []string{NodeLoginKeep, NodeLoginStrip}

	// reDomain is a DNS name: dot-separated labels of letters, digits and
	// '-', not starting or ending with '-'.
	reDomain      = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)
	reDottedDigit = regexp.MustCompile(`^[0-9.]+$`)
	reAttribute   = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+)$`)
)

// fmtDur writes a duration as it would be written in the file: 1h, not
// 1h0m0s.
func fmtDur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// isDomain says whether s is a DNS name that is not made of digits and
// dots only (that would be a mistyped IP address).
func isDomain(s string) bool {
	return len(s) <= 253 && reDomain.MatchString(s) && !reDottedDigit.MatchString(s)
}

// machineHostname is the default proxy.hostname.
func machineHostname() string {
	if h, err := os.Hostname(); err == nil && isDomain(h) {
		return h
	}
	return defaultHostname
}

// intSetting is a whole-number key with its range; off, if not "", says
// what -1 means (it is then allowed).
type intSetting struct {
	key      string
	val      *int
	dst      *int
	min, max int
	off      string
	what     string
}

func (c *checker) intSettings(pa path, fs []intSetting) {
	for _, f := range fs {
		if f.val == nil {
			continue
		}
		*f.dst = *f.val
		fp := pa.add(f.key)
		if c.bad(fp) || (*f.val >= f.min && *f.val <= f.max) || (f.off != "" && *f.val == -1) {
			continue
		}
		off := ""
		if f.off != "" {
			off = ", or -1 " + f.off
		}
		c.errorf(c.line(fp), "%s: %d is out of range; use %d to %d%s (%s)", fp.dotted(), *f.val, f.min, f.max, off, f.what)
	}
}

// durSetting is a duration key with its range.
type durSetting struct {
	key      string
	val      *time.Duration
	dst      *time.Duration
	min, max time.Duration
	what     string
}

// durSettings sets and checks durations; it returns the keys that are
// fine (written or not).
func (c *checker) durSettings(pa path, fs []durSetting) map[string]bool {
	ok := map[string]bool{}
	for _, f := range fs {
		fp := pa.add(f.key)
		if c.bad(fp) {
			continue
		}
		ok[f.key] = true
		if f.val == nil {
			continue
		}
		*f.dst = *f.val
		if *f.val < f.min || *f.val > f.max {
			ok[f.key] = false
			c.errorf(c.line(fp), "%s: %s is out of range; use %s to %s (%s)", fp.dotted(), fmtDur(*f.val), fmtDur(f.min), fmtDur(f.max), f.what)
		}
	}
	return ok
}

func (c *checker) proxy(r *rawProxy) {
	pa := path{"proxy"}
	x := &c.cfg.Proxy
	*x = Proxy{Hostname: machineHostname(), PreLoginTimeout: defaultPreLoginTimeout,
		MaxLine: defaultMaxLine, MaxLiteral: defaultMaxLiteral, MaxBadCommands: defaultMaxBadCommands,
		MaxLoginTries: defaultMaxLoginTries, MaxConnectionsPerSource: defaultMaxConnsPerSrc,
		AuthThrottle: AuthThrottle{Threshold: defaultThreshold, Window: defaultWindow, BaseDelay: defaultBaseDelay, MaxDelay: defaultMaxDelay},
		DialTimeout:  defaultDialTimeout, Line: c.keyLine(pa),
		LMTP: ProxyLMTP{MaxMessageSize: defaultMaxMessageSize, MaxRecipients: defaultMaxRecipients}}
	c.proxyTLSKnown = !c.bad(pa.add("tls"))
	if r == nil {
		return
	}

	if hp := pa.add("hostname"); r.Hostname != "" {
		x.Hostname = r.Hostname
		if !c.bad(hp) && !isDomain(r.Hostname) {
			c.errorf(c.line(hp), "proxy.hostname: %q is not a host name; write the name clients know this host by (letters, digits, '-' and '.'), such as mail.example.org", r.Hostname)
		}
	}

	if r.TLS != nil {
		c.proxyTLS(r.TLS, pa.add("tls"))
	}
	if rp := pa.add("require_tls"); r.RequireTLS && !c.bad(rp) {
		x.RequireTLS = true
		if !c.proxyTLSSet && c.proxyTLSKnown {
			c.errorf(c.line(rp), "proxy.require_tls: true needs proxy.tls: without a certificate clients can never log in; set proxy.tls.cert_file and key_file, or remove require_tls")
		}
	}

	c.durSettings(pa, []durSetting{
		{"pre_login_timeout", r.PreLoginTimeout, &x.PreLoginTimeout, time.Second, time.Hour, "how long a client may be idle before it logs in"},
		{"dial_timeout", r.DialTimeout, &x.DialTimeout, 100 * time.Millisecond, time.Minute, "how long the proxy waits for a node to accept"},
	})
	if r.IdleTimeout != nil {
		x.IdleTimeout = *r.IdleTimeout
		ip := pa.add("idle_timeout")
		switch d := x.IdleTimeout; {
		case c.bad(ip), d == 0, d >= minIdleTimeout:
		case d < 0:
			c.errorf(c.line(ip), "proxy.idle_timeout: %s is negative; use 0s (no idle timeout after login) or %s or more", fmtDur(d), fmtDur(minIdleTimeout))
		default:
			c.errorf(c.line(ip), "proxy.idle_timeout: %s is too short: an IMAP client in IDLE stays silent for up to 29 minutes between re-IDLEs (RFC 2177) and its sessions last hours, so this would cut them; use 0s (none: the node's own timeouts apply) or %s or more", fmtDur(d), fmtDur(minIdleTimeout))
		}
	}
	if r.LMTP != nil {
		c.intSettings(pa.add("lmtp"), []intSetting{
			{"max_message_size", r.LMTP.MaxMessageSize, &x.LMTP.MaxMessageSize, 1 << 10, 1 << 30, "", "the largest message the LMTP router accepts, in bytes"},
			{"max_recipients", r.LMTP.MaxRecipients, &x.LMTP.MaxRecipients, 1, 10000, "", "recipients of one LMTP transaction"},
		})
	}
	c.intSettings(pa, []intSetting{
		{"max_line", r.MaxLine, &x.MaxLine, 512, 1 << 20, "", "the longest command line before login, in bytes"},
		{"max_literal", r.MaxLiteral, &x.MaxLiteral, 64, 1 << 20, "", "the longest IMAP literal before login, in bytes"},
		{"max_bad_commands", r.MaxBadCommands, &x.MaxBadCommands, 1, 1000, "", "bad commands before the connection is closed"},
		{"max_login_tries", r.MaxLoginTries, &x.MaxLoginTries, 1, 100, "", "failed logins before the connection is closed"},
		{"max_connections_per_source", r.MaxConnectionsPerSource, &x.MaxConnectionsPerSource, 1, 100000, "for no cap", "connections at once from one client address"},
	})

	if t := r.AuthThrottle; t != nil {
		tp := pa.add("auth_throttle")
		a := &x.AuthThrottle
		c.intSettings(tp, []intSetting{
			{"threshold", t.Threshold, &a.Threshold, 1, 10000, "to turn the throttle off", "failed logins from one address within the window before answers are delayed"},
		})
		ok := c.durSettings(tp, []durSetting{
			{"window", t.Window, &a.Window, time.Second, day, "how long a failed login counts"},
			{"base_delay", t.BaseDelay, &a.BaseDelay, 10 * time.Millisecond, time.Minute, "the first delay; each further failure doubles it"},
		})
		mp := tp.add("max_delay")
		if t.MaxDelay != nil {
			a.MaxDelay = *t.MaxDelay
		}
		switch {
		case c.bad(mp):
		case a.MaxDelay > maxMaxDelay:
			c.errorf(c.line(mp), "proxy.auth_throttle.max_delay: %s is too long; use base_delay (%s) to %s", fmtDur(a.MaxDelay), fmtDur(a.BaseDelay), fmtDur(maxMaxDelay))
		case !ok["base_delay"] || a.MaxDelay >= a.BaseDelay:
		case t.MaxDelay != nil:
			c.errorf(c.line(mp), "proxy.auth_throttle.max_delay: %s is shorter than base_delay %s; make it at least base_delay (up to %s)", fmtDur(a.MaxDelay), fmtDur(a.BaseDelay), fmtDur(maxMaxDelay))
		default:
			c.errorf(c.line(tp.add("base_delay")), "proxy.auth_throttle.base_delay: %s is longer than max_delay %s (the default); set max_delay too, at least as long", fmtDur(a.BaseDelay), fmtDur(a.MaxDelay))
		}
	}

	sp := pa.add("source_addresses")
	c.proxySourcesOK = !c.bad(sp)
	if !c.proxySourcesOK {
		return
	}
	seen := map[netip.Addr]int{}
	for i, s := range r.SourceAddresses {
		l := c.line(sp.add(i))
		a, problem := parseAddr(s)
		if problem != "" {
			c.proxySourcesOK = false
			c.errorf(l, "proxy.source_addresses: %q %s; write an address of this host to dial the nodes from", s, problem)
			continue
		}
		if first, dup := seen[a]; dup {
			c.proxySourcesOK = false
			c.errorf(l, "proxy.source_addresses: %s is listed twice (first at line %d); remove one", a, first)
			continue
		}
		seen[a] = l
		x.SourceAddresses = append(x.SourceAddresses, a)
	}
}

// proxyTLS checks the certificate offered to clients: both files or
// neither, and a pair that loads.
func (c *checker) proxyTLS(r *rawProxyTLS, pa path) {
	t := &c.cfg.Proxy.TLS
	*t = ProxyTLS{CertFile: r.CertFile, KeyFile: r.KeyFile}
	c.proxyTLSSet = r.CertFile != "" || r.KeyFile != ""
	cp, kp := pa.add("cert_file"), pa.add("key_file")
	if c.bad(cp) || c.bad(kp) {
		return
	}
	switch {
	case r.CertFile == "" && r.KeyFile == "":
		return
	case r.KeyFile == "":
		c.errorf(c.line(cp), "proxy.tls: cert_file is set but key_file is not; write key_file: the PEM private key of the certificate (or remove cert_file for no TLS)")
		return
	case r.CertFile == "":
		c.errorf(c.line(kp), "proxy.tls: key_file is set but cert_file is not; write cert_file: the PEM certificate of the key (or remove key_file for no TLS)")
		return
	}
	certOK, keyOK := true, true
	if msg := caFileProblem(r.CertFile); msg != "" {
		certOK = false
		c.errorf(c.line(cp), "proxy.tls.cert_file: %s; write the absolute path of the PEM certificate (chain) to offer clients", msg)
	}
	if msg := readableFileProblem(r.KeyFile); msg != "" {
		keyOK = false
		c.errorf(c.line(kp), "proxy.tls.key_file: %s; write the absolute path of the certificate's PEM private key", msg)
	}
	if !certOK || !keyOK {
		return
	}
	if _, err := tls.LoadX509KeyPair(r.CertFile, r.KeyFile); err != nil {
		c.errorf(c.line(kp), "proxy.tls.key_file: the certificate and key do not load as a pair (%v); give the PEM private key of %s", err, r.CertFile)
	}
}

func (c *checker) directory(r *rawDirectory) {
	pa := path{"directory"}
	d := &c.cfg.Directory
	*d = Directory{Names: Names{Lowercase: true, NodeLogin: NodeLoginKeep}, Line: c.keyLine(pa)}
	if c.badSelf(pa) || d.Line == 0 {
		return
	}
	if r == nil {
		r = &rawDirectory{}
	}
	sp, lp := pa.add("static"), pa.add("ldap")
	ldapWritten := c.keyLine(lp) != 0
	switch {
	case c.bad(sp) || c.badSelf(lp):
	case r.Static == "" && !ldapWritten:
		c.errorf(d.Line, "directory: neither static nor ldap is given; the proxy finds users' islands there: write static: (the path of an island map) or ldap: (the servers to ask)")
	case r.Static != "" && ldapWritten:
		c.errorf(c.line(lp), "directory: static (line %d) and ldap are both given; keep one of them", c.line(sp))
	}

	if r.Static != "" && !c.bad(sp) {
		d.Static = r.Static
		if msg := readableFileProblem(r.Static); msg != "" {
			c.errorf(c.line(sp), "directory.static: %s; write the absolute path of the island map", msg)
		}
	}
	switch {
	case c.badSelf(lp) || !ldapWritten:
	case r.LDAP == nil:
		c.errorf(c.line(lp), "directory.ldap is empty; write at least its urls, base_dn, filter and attribute, or remove it")
	default:
		d.LDAP = c.ldap(r.LDAP, lp)
	}

	n := r.Names
	if n == nil {
		return
	}
	np := pa.add("names")
	if n.Lowercase != nil {
		d.Names.Lowercase = *n.Lowercase
	}
	if dp := np.add("default_domain"); n.DefaultDomain != "" && !c.bad(dp) {
		d.Names.DefaultDomain = n.DefaultDomain
		switch dom := n.DefaultDomain; {
		case strings.HasPrefix(dom, "@"):
			c.errorf(c.line(dp), "directory.names.default_domain: %q starts with '@'; write the domain alone, such as %s (the '@' is added)", dom, strings.TrimLeft(dom, "@"))
		case !isDomain(dom):
			c.errorf(c.line(dp), "directory.names.default_domain: %q is not a domain name; write letters, digits, '-' and '.', such as example.org, or \"\" to append none", dom)
		}
	}
	if lp := np.add("node_login"); n.NodeLogin != "" && !c.bad(lp) {
		d.Names.NodeLogin = n.NodeLogin
		if !slices.Contains(nodeLogins, n.NodeLogin) {
			c.errorf(c.line(lp), "directory.names.node_login: %q is not known%s; use keep (log in to the node with the whole name) or strip (without @domain)", n.NodeLogin, didYouMean(n.NodeLogin, nodeLogins))
		}
	}
}

// didYouMean is " (did you mean "x"?)" for the value of a list nearest to
// s, or "".
func didYouMean(s string, values []string) string {
	if v := suggest(s, values); v != "" {
		return fmt.Sprintf(" (did you mean %q?)", v)
	}
	return ""
}

func (c *checker) ldap(r *rawLDAP, pa path) *LDAP {
	l := &LDAP{URLs: r.URLs, StartTLS: r.StartTLS, CAFile: r.CAFile, InsecureSkipVerify: r.InsecureSkipVerify,
		BindDN: r.BindDN, PasswordFile: r.PasswordFile, BaseDN: r.BaseDN, Filter: r.Filter, Attribute: r.Attribute,
		Timeout: defaultLDAPTimeout, PoolSize: defaultPoolSize,
		PositiveTTL: defaultPositiveTTL, NegativeTTL: defaultNegativeTTL, StaleTTL: defaultStaleTTL}
	ll := c.line(pa)
	field := func(k ...any) path { return pa.add(k...) }

	up := field("urls")
	urlsOK, allLDAPS := false, true
	switch {
	case c.bad(up):
	case len(r.URLs) == 0:
		c.errorf(c.line(up), "directory.ldap.urls: no URL is given; list the LDAP servers, such as [ldap://198.51.100.30, ldaps://ldap2.example.org]")
	case len(r.URLs) > maxLDAPURLs:
		c.errorf(c.line(up), "directory.ldap.urls: %d URLs are given; list at most %d servers", len(r.URLs), maxLDAPURLs)
	default:
		urlsOK = true
		seen := map[string]int{}
		for i, u := range r.URLs {
			el := c.line(up.add(i))
			canon, secure, problem := ldapURL(u)
			if problem != "" {
				urlsOK = false
				c.errorf(el, "directory.ldap.urls: %q %s; write ldap://HOST[:PORT] or ldaps://HOST[:PORT], with an IPv6 address in brackets such as ldap://[2001:db8::30]", u, problem)
				continue
			}
			allLDAPS = allLDAPS && secure
			if first, dup := seen[canon]; dup {
				urlsOK = false
				c.errorf(el, "directory.ldap.urls: %s is the same server as the URL at line %d; remove one", u, first)
				continue
			}
			seen[canon] = el
		}
	}
	if sp := field("start_tls"); r.StartTLS && urlsOK && allLDAPS && !c.bad(sp) {
		c.errorf(c.line(sp), "directory.ldap.start_tls: every URL is ldaps://, which speaks TLS from the first byte, so there is nothing to upgrade; remove start_tls, or list ldap:// URLs")
	}
	if cp := field("ca_file"); r.CAFile != "" && !c.bad(cp) {
		if msg := caFileProblem(r.CAFile); msg != "" {
			c.errorf(c.line(cp), "directory.ldap.ca_file: %s; fix the path, or write \"\" to use the system's roots", msg)
		}
	}

	bp, pp := field("bind_dn"), field("password_file")
	switch {
	case c.bad(bp):
	case r.BindDN != "":
		if msg := dnProblem(r.BindDN); msg != "" {
			c.errorf(c.line(bp), "directory.ldap.bind_dn: %q %s; write the DN to bind as, such as cn=atoll,dc=example,dc=org, or \"\" to bind anonymously", r.BindDN, msg)
		}
		switch {
		case c.bad(pp):
		case r.PasswordFile == "":
			c.errorf(c.line(bp), "directory.ldap: bind_dn is set but password_file is not; write password_file: the absolute path of a file holding the password of %s (or remove bind_dn to bind anonymously)", r.BindDN)
		default:
			if msg := secretFileProblem(r.PasswordFile); msg != "" {
				c.errorf(c.line(pp), "directory.ldap.password_file: %s; write the absolute path of a file holding the password of bind_dn", msg)
			}
		}
	case r.PasswordFile != "" && !c.bad(pp):
		c.errorf(c.line(pp), "directory.ldap.password_file: without bind_dn the bind is anonymous and no password is sent; set bind_dn, or remove password_file")
	}

	switch dp := field("base_dn"); {
	case c.bad(dp):
	case r.BaseDN == "":
		c.errorf(ll, "directory.ldap: base_dn is missing; write the DN users are searched under, such as ou=people,dc=example,dc=org")
	default:
		if msg := dnProblem(r.BaseDN); msg != "" {
			c.errorf(c.line(dp), "directory.ldap.base_dn: %q %s; write the DN users are searched under, such as ou=people,dc=example,dc=org", r.BaseDN, msg)
		}
	}
	switch fp := field("filter"); {
	case c.bad(fp):
	case r.Filter == "":
		c.errorf(ll, "directory.ldap: filter is missing; write the filter that finds a user's entry, such as \"(uid=%%u)\" (%%u is the name the user logs in with)")
	default:
		if msg := filterProblem(r.Filter); msg != "" {
			c.errorf(c.line(fp), "directory.ldap.filter: %q %s", r.Filter, msg)
		}
	}
	switch ap := field("attribute"); {
	case c.bad(ap):
	case r.Attribute == "":
		c.errorf(ll, "directory.ldap: attribute is missing; write the attribute of a user's entry that holds the island's name, such as mailIsland")
	case !reAttribute.MatchString(r.Attribute):
		c.errorf(c.line(ap), "directory.ldap.attribute: %q is not an attribute name; write a name (a letter, then letters, digits or '-'), such as mailIsland, or an OID such as 1.3.6.1.4.1.99999.1", r.Attribute)
	}

	c.durSettings(pa, []durSetting{
		{"timeout", r.Timeout, &l.Timeout, 100 * time.Millisecond, time.Minute, "how long one request to a server may take"},
	})
	c.intSettings(pa, []intSetting{
		{"pool_size", r.PoolSize, &l.PoolSize, 1, 256, "", "connections kept open per server"},
	})
	if rc := r.Cache; rc != nil {
		c.durSettings(field("cache"), []durSetting{
			{"positive_ttl", rc.PositiveTTL, &l.PositiveTTL, 0, day, "how long a user's island is remembered; 0s: not at all"},
			{"negative_ttl", rc.NegativeTTL, &l.NegativeTTL, 0, day, "how long an unknown user is remembered; 0s: not at all"},
			{"stale_ttl", rc.StaleTTL, &l.StaleTTL, 0, 7 * day, "how long an expired entry may still be served while no server answers; 0s: never"},
		})
	}
	return l
}

// ldapURL checks an LDAP server's URL; canon identifies the server
// (scheme, host and port) to find repeats.
func ldapURL(s string) (canon string, secure bool, problem string) {
	u, err := url.Parse(s)
	switch {
	case err != nil && strings.Count(s, ":") > 2 && !strings.Contains(s, "["):
		return "", false, "is not a URL (an IPv6 address needs brackets)"
	case err != nil:
		return "", false, "is not a URL"
	case u.Scheme != "ldap" && u.Scheme != "ldaps":
		return "", false, "does not start with ldap:// or ldaps://"
	case u.Opaque != "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", false, "has more than a server (a user, a DN, attributes or a filter: the DN and filter go under base_dn and filter)"
	case !strings.HasPrefix(u.Host, "[") && strings.Count(u.Host, ":") > 1:
		return "", false, "has an IPv6 address without brackets"
	case u.Hostname() == "":
		return "", false, "has no host"
	case strings.HasSuffix(u.Host, ":"):
		return "", false, "has an empty port"
	}
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return "", false, "has a zone (%" + a.Zone() + "), which atoll cannot use"
		}
		host = a.String()
	} else if strings.HasPrefix(u.Host, "[") || !isDomain(host) {
		return "", false, "has an invalid host"
	}
	port := u.Port()
	if port == "" {
		port = "389"
		if u.Scheme == "ldaps" {
			port = "636"
		}
	} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", false, "has no valid port (1 to 65535)"
	}
	return u.Scheme + "://" + strings.ToLower(host) + ":" + port, u.Scheme == "ldaps", ""
}

// dnProblem checks the outline of a DN: attribute=value pairs separated by
// commas (a backslash escapes the next character).
func dnProblem(dn string) string {
	if strings.IndexFunc(dn, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return "holds a control character"
	}
	var rdns []string
	start := 0
	for i := 0; i < len(dn); i++ {
		switch dn[i] {
		case '\\':
			i++
		case ',':
			rdns = append(rdns, dn[start:i])
			start = i + 1
		}
	}
	rdns = append(rdns, dn[start:])
	for _, rdn := range rdns {
		k, _, ok := strings.Cut(rdn, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return "is not a DN"
		}
	}
	return ""
}

// filterProblem checks an LDAP search filter with the user's name in it;
// the problem names the fix.
func filterProblem(f string) string {
	if !strings.HasPrefix(f, "(") {
		return "does not start with '('; write it in parentheses, such as (uid=%u)"
	}
	depth, name := 0, false
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case '(':
			depth++
		case ')':
			depth--
			switch {
			case depth < 0:
				return "has a ')' without its '('; balance the parentheses"
			case depth == 0 && i != len(f)-1:
				return "goes on after the parenthesis that closes its first '('; combine the parts, such as (|(uid=%u)(mail=%u))"
			}
		case '%':
			if i+1 == len(f) {
				return "ends with a lone '%'; write %% for a '%'"
			}
			i++
			switch f[i] {
			case 'u', 'n', 'd':
				name = true
			case '%':
			default:
				return fmt.Sprintf("holds %%%c, which atoll does not replace; use %%u (the whole name), %%n (the part before '@'), %%d (the domain) or %%%% (a '%%')", f[i])
			}
		}
	}
	if depth > 0 {
		return fmt.Sprintf("has %d '(' more than ')'; balance the parentheses", depth)
	}
	if !name {
		return "holds no %u, %n or %d, so every user would get the same entry; put %u where the user's name goes, such as (uid=%u)"
	}
	return ""
}

// readableFileProblem checks that name is an absolute path to a regular
// file this process can open.
func readableFileProblem(name string) string {
	if !pathpkg.IsAbs(name) {
		return fmt.Sprintf("%q is not an absolute path", name)
	}
	fi, err := os.Stat(name)
	if err != nil {
		return err.Error()
	}
	if !fi.Mode().IsRegular() {
		return fmt.Sprintf("%s is not a regular file", name)
	}
	f, err := os.Open(name)
	if err != nil {
		return err.Error()
	}
	f.Close()
	return ""
}

// secretFileProblem checks a password file: readable, and not empty (an
// empty password makes an LDAP bind unauthenticated, which servers may
// take as anonymous).
func secretFileProblem(name string) string {
	if msg := readableFileProblem(name); msg != "" {
		return msg
	}
	f, err := os.Open(name)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretSize))
	if err != nil {
		return err.Error()
	}
	if strings.TrimRight(string(data), "\r\n") == "" {
		return fmt.Sprintf("%s is empty (an empty password binds without authentication)", name)
	}
	return ""
}

// islandProxy checks islands[].proxy.
func (c *checker) islandProxy(r *rawIslandProxy, pa path) IslandProxy {
	x := IslandProxy{ClientAddress: ClientAddrNone, TLS: TLSNone}
	if r == nil {
		return x
	}
	if cp := pa.add("client_address"); r.ClientAddress != "" && !c.bad(cp) {
		x.ClientAddress = r.ClientAddress
		if !slices.Contains(clientAddrs, r.ClientAddress) {
			c.errorf(c.line(cp), "%s %q is not known%s; use none (the node sees the proxy's address), proxy_protocol (a PROXY v2 header first) or imap_id (IMAP ID x-originating-ip)", c.describe(cp), r.ClientAddress, didYouMean(r.ClientAddress, clientAddrs))
		}
	}
	if tp := pa.add("tls"); r.TLS != "" && !c.bad(tp) {
		x.TLS = r.TLS
		if !slices.Contains(nodeTLS, r.TLS) {
			c.errorf(c.line(tp), "%s %q is not known%s; use none, starttls (STARTTLS/STLS after the greeting) or implicit (TLS from the first byte)", c.describe(tp), r.TLS, didYouMean(r.TLS, nodeTLS))
		}
	}
	return x
}

// loginServices checks what the services with routing login need: a
// protocol to log in with, the directory, and a certificate for implicit
// TLS.
func (c *checker) loginServices() {
	dirMissing := c.cfg.Directory.Line == 0 && !c.badSelf(path{"directory"})
	tlsMissing := !c.proxyTLSSet && c.proxyTLSKnown
	for i, s := range c.cfg.Services {
		m := c.svc[i]
		if !m.routingOK || s.Routing != RouteLogin || !m.protoOK || m.loginIsland {
			continue
		}
		who := c.describe(m.path)
		if s.Protocol == ProtoTCP {
			c.errorf(c.line(m.path.add("routing")), "%s: routing login needs a protocol users log in with (imap, imaps, pop3, pop3s or lmtp), and a tcp service has none; set routing: island and the island that serves it", who)
			continue
		}
		if dirMissing {
			c.errorf(s.Line, "%s: routing login needs a directory section: the proxy must know which island each user is on; add directory: with static: or ldap: (see deploy/atoll.example.yaml)", who)
		}
		if implicitTLS[s.Protocol] && tlsMissing {
			c.errorf(s.Line, "%s: routing login with protocol %s needs proxy.tls: the proxy speaks TLS with these clients from the first byte; set proxy.tls.cert_file and key_file", who, s.Protocol)
		}
	}
}

// proxySources checks that the proxy's source addresses are not VIPs or
// node addresses.
func (c *checker) proxySources() {
	if !c.proxySourcesOK {
		return
	}
	sp := path{"proxy", "source_addresses"}
	for i, a := range c.cfg.Proxy.SourceAddresses {
		l := c.line(sp.add(i))
		if s := c.serviceWithVIP(a); s != nil {
			c.errorf(l, "proxy.source_addresses: %s is a VIP of service %s (line %d); dial the nodes from this host's own address", a, s.Name, s.Line)
			continue
		}
		if n, nl := c.nodeWithAddr(a); n != "" {
			c.errorf(l, "proxy.source_addresses: %s is an address of node %s (line %d); dial the nodes from this host's own address", a, n, nl)
		}
	}
}

func (c *checker) serviceWithVIP(a netip.Addr) *Service {
	for i := range c.cfg.Services {
		if c.svc[i].vipsOK && slices.Contains(c.cfg.Services[i].VIPs, a) {
			return &c.cfg.Services[i]
		}
	}
	return nil
}
