package config

import "time"

// The raw* types are the file as written: what yaml.v3 decodes strictly
// (KnownFields) before validation. A pointer is nil when its key is absent,
// so a default can be told from a written zero; a string "" counts as
// absent.

type rawConfig struct {
	Dataplane *rawDataplane `yaml:"dataplane"`
	Health    *rawHealth    `yaml:"health"`
	Metrics   *rawMetrics   `yaml:"metrics"`
	API       *rawAPI       `yaml:"api"`
	Islands   []rawIsland   `yaml:"islands"`
	Services  []rawService  `yaml:"services"`
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

type rawIsland struct {
	Name  string    `yaml:"name"`
	Nodes []rawNode `yaml:"nodes"`
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
