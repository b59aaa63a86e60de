package config

import (
	"net/netip"
	"time"
)

// Affinity defaults.
const (
	defaultLearnLogins     = 3
	defaultLearnTTL        = time.Hour
	defaultLearnBar        = time.Hour
	defaultLearnMaxEntries = 10000
	defaultVerifyOneIn     = 8
	maxAffinityPrefixes    = 65536 // per family, as the data plane's tries
)

// affinity checks the affinity section: static prefixes (valid, canonical,
// unique, of a defined island) and the learning settings.
func (c *checker) affinity(r *rawAffinity) {
	pa := path{"affinity"}
	a := &c.cfg.Affinity
	*a = Affinity{Learn: AffinityLearn{Logins: defaultLearnLogins, TTL: defaultLearnTTL, Bar: defaultLearnBar, MaxEntries: defaultLearnMaxEntries,
		VerifyOneIn: defaultVerifyOneIn},
		Line: c.keyLine(pa)}
	if r == nil {
		return
	}
	sp := pa.add("static")
	seen := map[netip.Prefix]int{}
	perFamily := [2]int{}
	for i, rp := range r.Static {
		ip := sp.add(i)
		if c.badSelf(ip) {
			continue
		}
		line := c.line(ip)
		x := AffinityPrefix{Island: rp.Island, Line: line}
		pp := ip.add("prefix")
		switch p, err := netip.ParsePrefix(rp.Prefix); {
		case c.bad(pp):
		case rp.Prefix == "":
			c.errorf(line, "affinity.static[%d]: prefix is missing; write the clients' prefix, such as 192.0.2.0/24 or 2001:db8:c::/64", i)
		case err != nil:
			c.errorf(c.line(pp), "affinity.static[%d]: %q is not a prefix; write address/length, such as 192.0.2.0/24 (a single address is /32 or /128)", i, rp.Prefix)
		case p.Addr().Zone() != "" || p.Addr().Is4In6():
			c.errorf(c.line(pp), "affinity.static[%d]: %q is not a plain IPv4 or IPv6 prefix; drop the zone or write the IPv4 form", i, rp.Prefix)
		case p != p.Masked():
			c.errorf(c.line(pp), "affinity.static[%d]: %s has host bits set; write %s (the prefix's first address)", i, p, p.Masked())
		default:
			x.Prefix = p
			if first, dup := seen[p]; dup {
				c.errorf(c.line(pp), "affinity.static[%d]: %s is already listed on line %d; a prefix has one island — remove one of them", i, p, first)
			}
			seen[p] = c.line(pp)
			fam := 0
			if p.Addr().Is6() {
				fam = 1
			}
			if perFamily[fam]++; perFamily[fam] == maxAffinityPrefixes+1 {
				c.errorf(c.line(pp), "affinity.static: more than %d prefixes of one family; the data plane holds %d, aggregate them", maxAffinityPrefixes, maxAffinityPrefixes)
			}
		}
		islp := ip.add("island")
		switch {
		case c.bad(islp):
		case rp.Island == "":
			c.errorf(line, "affinity.static[%d]: island is missing; write the island these clients go to%s", i, c.islandChoices(" (", ")"))
		case c.namesOK:
			if _, ok := c.islandLine[rp.Island]; !ok {
				c.errorf(c.line(islp), "affinity.static[%d]: island %q is not defined under islands; define it or use one of%s", i, rp.Island, c.islandChoices(" ", ""))
			}
		}
		a.Static = append(a.Static, x)
	}
	if r.Learn == nil {
		return
	}
	lp := pa.add("learn")
	l := &a.Learn
	l.Enabled = r.Learn.Enabled
	c.intSettings(lp, []intSetting{
		{"logins", r.Learn.Logins, &l.Logins, 2, 1000, "", "consecutive logins into one island before an address is learned"},
		{"max_entries", r.Learn.MaxEntries, &l.MaxEntries, 1, maxAffinityPrefixes, "", "learned addresses at most"},
	})
	if vp := lp.add("verify_one_in"); r.Learn.VerifyOneIn != nil && !c.bad(vp) {
		v := *r.Learn.VerifyOneIn
		l.VerifyOneIn = v
		if v < 0 || v > 1<<15 || (v != 0 && v&(v-1) != 0) {
			c.errorf(c.line(vp), "affinity.learn.verify_one_in: %d is not a power of two up to 32768; use 8 (one new flow in 8 from a learned address still goes through the proxy, which notices a login into another island), or 0 to never verify", v)
		}
	}
	c.durSettings(lp, []durSetting{
		{"ttl", r.Learn.TTL, &l.TTL, time.Minute, 7 * 24 * time.Hour, "how long a learned address keeps its island"},
		{"bar", r.Learn.Bar, &l.Bar, time.Minute, 7 * 24 * time.Hour, "how long an address with a conflict is not learned again"},
	})
}
