package maps

import "github.com/atoll-lb/atoll/bpf"

// Limits mirrored from bpf/consts.h; TestConstsMatchObject checks them
// against the compiled object.
const (
	// MaxServices is the number of service ids (0..MaxServices-1).
	MaxServices = 256
	// MaxIslands is the number of island ids (0..MaxIslands-1).
	MaxIslands = 64
	// MaxRings is the size of the outer rings map: one slot per
	// (service, island).
	MaxRings = MaxServices * MaxIslands
	// RetiredAll is retired_traffic's entry for every removed backend.
	RetiredAll = MaxServices
	// MaxBackends is the number of backend ids (0..MaxBackends-1).
	MaxBackends = 4096
	// MaxVIPAddrs is the size of the vip_addrs map.
	MaxVIPAddrs = MaxServices * 2
	// VIPFilterLog2 is log2 of the VIP filter's bits.
	VIPFilterLog2 = 12
	// FlowCacheLog2 is log2 of the flow cache's entries per CPU.
	FlowCacheLog2 = 12
	// FlowCacheSize is the number of flow cache entries per CPU.
	FlowCacheSize = 1 << FlowCacheLog2
	// SvcTableLog2 is log2 of the services table's slots.
	SvcTableLog2 = 12
	// SvcTableSize is the number of services table slots.
	SvcTableSize = 1 << SvcTableLog2
	// MaxAffinity is the number of client prefixes per family.
	MaxAffinity = 65536
	// DefaultConntrackSize is the conntrack size compiled into the object;
	// the loader usually sets its own.
	DefaultConntrackSize = 65536
)

// Address families as stored in the maps (the kernel's AF_INET, AF_INET6).
const (
	familyV4 = 2
	familyV6 = 10
)

// ForwardMode is how a service's packets reach a node.
type ForwardMode uint8

// Forwarding modes (bpf/consts.h FWD_*).
const (
	// ForwardL2DSR rewrites the destination MAC to the node's: the node
	// must be on the LB's L2 segment and hold the VIP on lo.
	ForwardL2DSR ForwardMode = 1
	// ForwardIPIP wraps the packet in an outer IPv4/IPv6 header to the
	// node, which decapsulates it.
	ForwardIPIP ForwardMode = 2
)

// String returns the config name of the mode.
func (f ForwardMode) String() string {
	switch f {
	case ForwardL2DSR:
		return "l2dsr"
	case ForwardIPIP:
		return "ipip"
	}
	return "unknown"
}

// RouteMode is how a service picks a node's island.
type RouteMode uint8

// Routing modes (bpf/consts.h ROUTE_*).
const (
	// RouteIsland: the VIP belongs to one island; Maglev over its nodes.
	RouteIsland RouteMode = 1
	// RouteLogin: the front door; the island is known after login, so new
	// flows go to the local proxy.
	RouteLogin RouteMode = 2
)

// String returns the config name of the mode.
func (r RouteMode) String() string {
	switch r {
	case RouteIsland:
		return "island"
	case RouteLogin:
		return "login"
	}
	return "unknown"
}

// BackendState is a node's state in the data plane.
type BackendState uint8

// Backend states (bpf/consts.h BE_*).
const (
	// StateUnused marks a free backend slot.
	StateUnused BackendState = 0
	// StateUp takes new flows and keeps its own.
	StateUp BackendState = 1
	// StateDraining keeps its flows and takes no new ones.
	StateDraining BackendState = 2
	// StateDown loses its flows: they are re-placed on their next packet.
	StateDown BackendState = 3
)

// String returns the state's name.
func (s BackendState) String() string {
	switch s {
	case StateUnused:
		return "unused"
	case StateUp:
		return "up"
	case StateDraining:
		return "draining"
	case StateDown:
		return "down"
	}
	return "unknown"
}

// Conntrack entry flags (bpf/consts.h CT_F_*).
const (
	// CTLocal marks a flow owned by the local stack (the proxy).
	CTLocal = 1
)

// Stat is one reason counted in the stats map.
type Stat = bpf.BalancerStat

// The outcome counters, in bpf/consts.h order.
const (
	StatPassNotIP        = bpf.BalancerStatSTAT_PASS_NOT_IP
	StatPassNonVIP       = bpf.BalancerStatSTAT_PASS_NON_VIP
	StatPassMalformed    = bpf.BalancerStatSTAT_PASS_MALFORMED
	StatPassLocal        = bpf.BalancerStatSTAT_PASS_LOCAL
	StatDropMalformed    = bpf.BalancerStatSTAT_DROP_MALFORMED
	StatDropFragment     = bpf.BalancerStatSTAT_DROP_FRAGMENT
	StatDropIPv6ExtHdr   = bpf.BalancerStatSTAT_DROP_IPV6EXTHDR
	StatDropNoBackend    = bpf.BalancerStatSTAT_DROP_NO_BACKEND
	StatDropFIB          = bpf.BalancerStatSTAT_DROP_FIB
	StatDropNoNeigh      = bpf.BalancerStatSTAT_DROP_NO_NEIGH
	StatDropNotOnlink    = bpf.BalancerStatSTAT_DROP_NOT_ONLINK
	StatDropNoSource     = bpf.BalancerStatSTAT_DROP_NO_SOURCE
	StatDropTooBig       = bpf.BalancerStatSTAT_DROP_TOO_BIG
	StatDropHeadroom     = bpf.BalancerStatSTAT_DROP_HEADROOM
	StatFwdNew           = bpf.BalancerStatSTAT_FWD_NEW
	StatFwdEstablished   = bpf.BalancerStatSTAT_FWD_ESTABLISHED
	StatFwdRescheduled   = bpf.BalancerStatSTAT_FWD_RESCHEDULED
	StatICMPPTBForwarded = bpf.BalancerStatSTAT_ICMP_PTB_FORWARDED
	StatICMPPTBSent      = bpf.BalancerStatSTAT_ICMP_PTB_SENT
	StatPassHandoff      = bpf.BalancerStatSTAT_PASS_HANDOFF
	StatPassLocalSocket  = bpf.BalancerStatSTAT_PASS_LOCAL_SOCKET
	StatFwdAffinity      = bpf.BalancerStatSTAT_FWD_AFFINITY
	StatPassProbe        = bpf.BalancerStatSTAT_PASS_PROBE
	StatFwdLearned       = bpf.BalancerStatSTAT_FWD_LEARNED
	NumStats             = int(bpf.BalancerStatSTAT_MAX)
)

// statNames are the metric-friendly names of the Stat values.
var statNames = [NumStats]string{
	StatPassNotIP:        "pass_not_ip",
	StatPassNonVIP:       "pass_non_vip",
	StatPassMalformed:    "pass_malformed",
	StatPassLocal:        "pass_local",
	StatDropMalformed:    "drop_malformed",
	StatDropFragment:     "drop_fragment",
	StatDropIPv6ExtHdr:   "drop_ipv6_exthdr",
	StatDropNoBackend:    "drop_no_backend",
	StatDropFIB:          "drop_fib",
	StatDropNoNeigh:      "drop_no_neigh",
	StatDropNotOnlink:    "drop_not_onlink",
	StatDropNoSource:     "drop_no_source",
	StatDropTooBig:       "drop_too_big",
	StatDropHeadroom:     "drop_headroom",
	StatFwdNew:           "fwd_new",
	StatFwdEstablished:   "fwd_established",
	StatFwdRescheduled:   "fwd_rescheduled",
	StatICMPPTBForwarded: "icmp_ptb_forwarded",
	StatICMPPTBSent:      "icmp_ptb_sent",
	StatPassHandoff:      "pass_handoff",
	StatPassLocalSocket:  "pass_local_socket",
	StatFwdAffinity:      "fwd_affinity",
	StatPassProbe:        "pass_probe",
	StatFwdLearned:       "fwd_learned",
}

// StatName returns the snake_case name of a Stat ("fwd_new"), used in
// metrics and `atoll status`.
func StatName(s Stat) string {
	if int(s) < len(statNames) {
		return statNames[s]
	}
	return "unknown"
}

// DecapStat is one reason counted by decap.c.
type DecapStat = bpf.DecapDecapStat

// The decap counters, in bpf/consts.h order.
const (
	DecapOK        = bpf.DecapDecapStatDECAP_OK
	DecapPass      = bpf.DecapDecapStatDECAP_PASS
	DecapForeign   = bpf.DecapDecapStatDECAP_FOREIGN
	DecapMalformed = bpf.DecapDecapStatDECAP_MALFORMED
	DecapHeadroom  = bpf.DecapDecapStatDECAP_HEADROOM
	NumDecapStats  = int(bpf.DecapDecapStatDECAP_STAT_MAX)
)
