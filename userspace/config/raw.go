package config

import "time"

// The raw* types are the file as written: what yaml.v3 decodes strictly
// (KnownFields) before validation. A pointer is nil when its key is absent,
// so a default can be told from a written zero; a string "" counts as
// absent.

type rawAffinity struct {
	Static []rawAffinityPrefix `yaml:"static"`
	Learn  *rawAffinityLearn   `yaml:"learn"`
}

type rawAffinityPrefix struct {
	Prefix string `yaml:"prefix"`
	Island string `yaml:"island"`
}

type rawAffinityLearn struct {
	Enabled     bool           `yaml:"enabled"`
	Logins      *int           `yaml:"logins"`
	TTL         *time.Duration `yaml:"ttl"`
	Bar         *time.Duration `yaml:"bar"`
	MaxEntries  *int           `yaml:"max_entries"`
	VerifyOneIn *int           `yaml:"verify_one_in"`
}

type rawConfig struct {
	Dataplane *rawDataplane `yaml:"dataplane"`
	Health    *rawHealth    `yaml:"health"`
	Metrics   *rawMetrics   `yaml:"metrics"`
	API       *rawAPI       `yaml:"api"`
	Proxy     *rawProxy     `yaml:"proxy"`
	Directory *rawDirectory `yaml:"directory"`
	Islands   []rawIsland   `yaml:"islands"`
	Services  []rawService  `yaml:"services"`
	Affinity  *rawAffinity  `yaml:"affinity"`
}

type rawDataplane struct {
	Mode          string   `yaml:"mode"`
	Interfaces    []string `yaml:"interfaces"`
	PinPath       *string  `yaml:"pin_path"`
	ConntrackSize *uint32  `yaml:"conntrack_size"`
	RingSize      *uint32  `yaml:"ring_size"`
	HashSeed      *uint32  `yaml:"hash_seed"`
	SourceV4      string   `yaml:"source_v4"`
	SourceV6      string   `yaml:"source_v6"`
}

type rawHealth struct {
	Interval    *time.Duration `yaml:"interval"`
	Timeout     *time.Duration `yaml:"timeout"`
	Jitter      *time.Duration `yaml:"jitter"`
	Rise        *int           `yaml:"rise"`
	Fall        *int           `yaml:"fall"`
	Concurrency *int           `yaml:"concurrency"`
	TLS         *rawHealthTLS  `yaml:"tls"`
}

type rawHealthTLS struct {
	CAFile             string `yaml:"ca_file"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
	ServerName         string `yaml:"server_name"`
}

type rawMetrics struct {
	Listen *string `yaml:"listen"`
}

type rawAPI struct {
	Socket *string `yaml:"socket"`
}

type rawProxy struct {
	Hostname                string           `yaml:"hostname"`
	TLS                     *rawProxyTLS     `yaml:"tls"`
	RequireTLS              bool             `yaml:"require_tls"`
	PreLoginTimeout         *time.Duration   `yaml:"pre_login_timeout"`
	IdleTimeout             *time.Duration   `yaml:"idle_timeout"`
	MaxLine                 *int             `yaml:"max_line"`
	MaxLiteral              *int             `yaml:"max_literal"`
	MaxBadCommands          *int             `yaml:"max_bad_commands"`
	MaxLoginTries           *int             `yaml:"max_login_tries"`
	MaxConnectionsPerSource *int             `yaml:"max_connections_per_source"`
	AuthThrottle            *rawAuthThrottle `yaml:"auth_throttle"`
	SourceAddresses         []string         `yaml:"source_addresses"`
	DialTimeout             *time.Duration   `yaml:"dial_timeout"`
	LMTP                    *rawProxyLMTP    `yaml:"lmtp"`
}

type rawProxyLMTP struct {
	MaxMessageSize *int `yaml:"max_message_size"`
	MaxRecipients  *int `yaml:"max_recipients"`
}

type rawProxyTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

type rawAuthThrottle struct {
	Threshold *int           `yaml:"threshold"`
	Window    *time.Duration `yaml:"window"`
	BaseDelay *time.Duration `yaml:"base_delay"`
	MaxDelay  *time.Duration `yaml:"max_delay"`
}

type rawDirectory struct {
	Static string    `yaml:"static"`
	LDAP   *rawLDAP  `yaml:"ldap"`
	Names  *rawNames `yaml:"names"`
}

type rawLDAP struct {
	URLs               []string       `yaml:"urls"`
	StartTLS           bool           `yaml:"start_tls"`
	CAFile             string         `yaml:"ca_file"`
	InsecureSkipVerify bool           `yaml:"insecure_skip_verify"`
	BindDN             string         `yaml:"bind_dn"`
	PasswordFile       string         `yaml:"password_file"`
	BaseDN             string         `yaml:"base_dn"`
	Filter             string         `yaml:"filter"`
	Attribute          string         `yaml:"attribute"`
	Timeout            *time.Duration `yaml:"timeout"`
	PoolSize           *int           `yaml:"pool_size"`
	Cache              *rawLDAPCache  `yaml:"cache"`
}

type rawLDAPCache struct {
	PositiveTTL *time.Duration `yaml:"positive_ttl"`
	NegativeTTL *time.Duration `yaml:"negative_ttl"`
	StaleTTL    *time.Duration `yaml:"stale_ttl"`
}

type rawNames struct {
	Lowercase     *bool  `yaml:"lowercase"`
	DefaultDomain string `yaml:"default_domain"`
	NodeLogin     string `yaml:"node_login"`
}

type rawIsland struct {
	Name  string          `yaml:"name"`
	Proxy *rawIslandProxy `yaml:"proxy"`
	Nodes []rawNode       `yaml:"nodes"`
}

type rawIslandProxy struct {
	ClientAddress string `yaml:"client_address"`
	TLS           string `yaml:"tls"`
}

type rawNode struct {
	Name      string            `yaml:"name"`
	Addresses []string          `yaml:"addresses"`
	Weight    *uint32           `yaml:"weight"`
	Ports     map[string]uint16 `yaml:"ports"`
}

type rawService struct {
	Name       string            `yaml:"name"`
	VIPs       []string          `yaml:"vips"`
	Port       *uint16           `yaml:"port"`
	Protocol   string            `yaml:"protocol"`
	Forwarding string            `yaml:"forwarding"`
	Routing    string            `yaml:"routing"`
	Island     string            `yaml:"island"`
	Health     *rawServiceHealth `yaml:"health"`
}

type rawServiceHealth struct {
	Check      string `yaml:"check"`
	TLS        string `yaml:"tls"`
	ThroughVIP *bool  `yaml:"through_vip"`
}
