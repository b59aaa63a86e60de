package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// path locates an item in the file: mapping keys (string) and sequence
// indexes (int), from the top of the document.
type path []any

func (pa path) add(elems ...any) path {
	out := make(path, 0, len(pa)+len(elems))
	return append(append(out, pa...), elems...)
}

// key is the path's identity in the poisoned set.
func (pa path) key() string {
	var b strings.Builder
	for _, e := range pa {
		fmt.Fprintf(&b, "%v\x00", e)
	}
	return b.String()
}

// dotted renders a path as in messages: "health.tls.ca_file",
// "interfaces[0]".
func (pa path) dotted() string {
	var b strings.Builder
	for _, e := range pa {
		switch e := e.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", e)
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(e)
		}
	}
	return b.String()
}

// entry is one node of the document tree, as found by a walk that does not
// follow aliases.
type entry struct {
	path  path
	node  *yaml.Node
	isKey bool
}

// parser holds one Parse: the file, its tree, the problems found, and the
// paths whose decoded values cannot be trusted (they already have an
// error), so that no check reports a consequence of another problem.
type parser struct {
	file     string
	data     []byte
	top      *yaml.Node // the document's mapping
	entries  []entry
	errs     Errors
	poisoned map[string]bool
	used     map[*yaml.Node]bool
}

func newParser(file string, data []byte) *parser {
	return &parser{file: file, data: data, poisoned: map[string]bool{}, used: map[*yaml.Node]bool{}}
}

func (p *parser) errorf(line int, format string, args ...any) {
	if line < 1 {
		line = 1
	}
	p.errs = append(p.errs, Error{File: p.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// sortedErrors returns the problems sorted by line (stable), without
// repeats.
func (p *parser) sortedErrors() Errors {
	out := slices.Clone(p.errs)
	slices.SortStableFunc(out, func(a, b Error) int { return a.Line - b.Line })
	return slices.Compact(out)
}

// poison marks a path as unreliable: checks that use it are skipped.
func (p *parser) poison(pa path) { p.poisoned[pa.key()] = true }

// badSelf says whether pa or one of its ancestors is poisoned.
func (p *parser) badSelf(pa path) bool {
	for i := 0; i <= len(pa); i++ {
		if p.poisoned[pa[:i].key()] {
			return true
		}
	}
	return false
}

// bad says whether pa, an ancestor or a descendant of it is poisoned.
func (p *parser) bad(pa path) bool {
	if p.badSelf(pa) {
		return true
	}
	prefix := pa.key()
	for k := range p.poisoned {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

// decode parses the file into its tree and the raw structs. It reports
// syntax errors, unknown keys, duplicate keys and wrong types. ok is false
// when nothing more can be checked.
func (p *parser) decode() (raw *rawConfig, ok bool) {
	dec := yaml.NewDecoder(bytes.NewReader(p.data))
	var doc yaml.Node
	err := dec.Decode(&doc)
	if errors.Is(err, io.EOF) {
		p.errorf(1, "the file is empty; write at least islands: and services: (see deploy/atoll.example.yaml)")
		return nil, false
	}
	if err != nil {
		p.syntaxError(err)
		return nil, false
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.syntaxError(err)
	default:
		line := extra.Line
		if len(extra.Content) > 0 {
			line = extra.Content[0].Line
		}
		p.errorf(line, "a second YAML document starts here; atoll reads one document: merge it into the first or remove it")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		p.errorf(1, "the file is empty; write at least islands: and services: (see deploy/atoll.example.yaml)")
		return nil, false
	}
	top := doc.Content[0]
	if top.Kind == yaml.AliasNode && top.Alias != nil {
		top = top.Alias
	}
	switch {
	case top.Kind == yaml.ScalarNode && top.ShortTag() == "!!null":
		p.errorf(top.Line, "the file is empty; write at least islands: and services: (see deploy/atoll.example.yaml)")
		return nil, false
	case top.Kind != yaml.MappingNode:
		p.errorf(top.Line, "the file holds %s, not a mapping; write top-level keys (dataplane:, health:, metrics:, api:, proxy:, directory:, islands:, services:)", describeKind(top))
		return nil, false
	}
	p.top = top
	p.index(top, nil)

	raw = &rawConfig{}
	strict := yaml.NewDecoder(bytes.NewReader(p.data))
	strict.KnownFields(true)
	err = strict.Decode(raw)
	var te *yaml.TypeError
	switch {
	case errors.As(err, &te):
		for _, msg := range te.Errors {
			p.decoderError(msg)
		}
	case err != nil:
		line, msg := splitYAMLError(err)
		p.errorf(line, "%s; fix the YAML", msg)
		return nil, false
	}
	p.walkTypes(top, reflect.TypeFor[rawConfig](), nil)
	return raw, true
}

// index records every node of the tree with its path (aliases are not
// followed: an error about an anchored value is reported where it is
// written).
func (p *parser) index(n *yaml.Node, pa path) {
	p.entries = append(p.entries, entry{path: pa, node: n})
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kp := pa.add(k.Value)
			p.entries = append(p.entries, entry{path: kp, node: k, isKey: true})
			p.index(v, kp)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p.index(c, pa.add(i))
		}
	}
}

var (
	reYAMLLine   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	reUnmarshal  = regexp.MustCompile("(?s)^line (\\d+): cannot unmarshal (\\S+)(?: `(.*)`)? into (.+)$")
	reNotFound   = regexp.MustCompile(`^line (\d+): field (.+) not found in type (\S+)$`)
	reDupKey     = regexp.MustCompile(`(?s)^line (\d+): mapping key (".*") already defined at line (\d+)$`)
	reAlreadySet = regexp.MustCompile(`^line (\d+): field (.+) already set in type (\S+)$`)
	reLine       = regexp.MustCompile(`(?s)^line (\d+): (.*)$`)
)

// splitYAMLError takes "yaml: line N: msg" apart.
func splitYAMLError(err error) (int, string) {
	s := err.Error()
	if m := reYAMLLine.FindStringSubmatch(s); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n, m[2]
	}
	return 1, strings.TrimPrefix(s, "yaml: ")
}

func (p *parser) syntaxError(err error) {
	line, msg := splitYAMLError(err)
	hint := "check the indentation, colons and quoting here or on the line above"
	if tab := p.tabLine(line); tab > 0 {
		line, hint = tab, "YAML does not allow tabs for indentation: indent with spaces"
	}
	p.errorf(line, "YAML syntax error: %s; %s", msg, hint)
}

// tabLine returns the line near line n (yaml.v3 reports some errors on the
// line before) that is indented with a tab, or 0.
func (p *parser) tabLine(n int) int {
	lines := strings.Split(string(p.data), "\n")
	for _, l := range []int{n, n + 1, n - 1} {
		if i := l - 1; i >= 0 && i < len(lines) && strings.HasPrefix(strings.TrimLeft(lines[i], " "), "\t") {
			return l
		}
	}
	return 0
}

// decoderError rewrites one of yaml.v3's type errors into a message naming
// the item, and poisons what it concerns.
func (p *parser) decoderError(msg string) {
	if m := reUnmarshal.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		e := p.locateValue(line, m[2], m[3])
		if e == nil {
			p.errorf(line, "a value has the wrong type (%s); fix it", msg)
			return
		}
		p.poison(e.path)
		p.errorf(line, "%s: got %s, but it must be %s", p.describe(e.path), describeValue(e.node), p.want(e.path, m[4], e.node))
		return
	}
	if m := reNotFound.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		e := p.locateKey(line, m[2])
		if e == nil {
			p.errorf(line, "unknown key %q; remove it", m[2])
			return
		}
		container := e.path[:len(e.path)-1]
		known := knownKeys(container)
		where := p.container(container)
		if slices.Contains(known, m[2]) {
			// The key belongs here, so the mapping was also decoded
			// elsewhere, through an alias.
			p.errorf(line, "key %q %s does not fit where an alias (*name) reuses this mapping; do not reuse it there", m[2], where)
			return
		}
		if s := suggest(m[2], known); s != "" {
			if _, v := p.lookup(container.add(s)); v == nil {
				// The misspelt key is meant: what it says is not known.
				p.poison(container.add(s))
			}
			p.errorf(line, "unknown key %q %s; did you mean %q?", m[2], where, s)
		} else {
			p.errorf(line, "unknown key %q %s; remove it (the keys here are: %s)", m[2], where, strings.Join(known, ", "))
		}
		return
	}
	if m := reDupKey.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		key, err := strconv.Unquote(m[2])
		if err != nil {
			key = m[2]
		}
		first, _ := strconv.Atoi(m[3])
		p.duplicateKey(line, key, first)
		return
	}
	if m := reAlreadySet.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		p.duplicateKey(line, m[2], 0)
		return
	}
	if m := reLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		p.errorf(line, "%s; fix it", m[2])
		return
	}
	p.errorf(1, "%s; fix it", msg)
}

func (p *parser) duplicateKey(line int, key string, first int) {
	e := p.locateKey(line, key)
	if e == nil {
		p.errorf(line, "key %q is written twice; remove one of them", key)
		return
	}
	container := e.path[:len(e.path)-1]
	p.poison(container)
	if first == 0 {
		first = p.keyLine(e.path)
	}
	p.errorf(line, "duplicate key %q %s (first at line %d); remove one of them", key, p.container(container), first)
}

// truncated shortens a scalar as yaml.v3 does in its messages.
func truncated(v string) string {
	if len(v) > 10 {
		return v[:7] + "..."
	}
	return v
}

// locateValue finds the (not yet used) value node a type error is about.
func (p *parser) locateValue(line int, tag, value string) *entry {
	match := func(e *entry, strict bool) bool {
		if e.isKey || e.node.Line != line || p.used[e.node] {
			return false
		}
		if !strict {
			return true
		}
		if e.node.Tag != tag {
			return false
		}
		if e.node.Kind == yaml.ScalarNode {
			return truncated(e.node.Value) == value
		}
		return true
	}
	for _, strict := range []bool{true, false} {
		for i := range p.entries {
			if e := &p.entries[i]; match(e, strict) {
				p.used[e.node] = true
				return e
			}
		}
	}
	return nil
}

// locateKey finds the (not yet used) key node named key on line.
func (p *parser) locateKey(line int, key string) *entry {
	for i := range p.entries {
		e := &p.entries[i]
		if e.isKey && e.node.Line == line && e.node.Value == key && !p.used[e.node] {
			p.used[e.node] = true
			return e
		}
	}
	return nil
}

// lookup returns the key and value nodes at pa (following aliases and
// merge keys); nil when absent.
func (p *parser) lookup(pa path) (key, val *yaml.Node) {
	val = p.top
	for _, e := range pa {
		val = resolve(val)
		if val == nil {
			return nil, nil
		}
		switch e := e.(type) {
		case string:
			key, val = mappingGet(val, e, 0)
		case int:
			if val.Kind != yaml.SequenceNode || e >= len(val.Content) {
				return nil, nil
			}
			key, val = nil, val.Content[e]
		}
		if val == nil {
			return nil, nil
		}
	}
	return key, resolve(val)
}

func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func mappingGet(m *yaml.Node, name string, depth int) (key, val *yaml.Node) {
	if m == nil || m.Kind != yaml.MappingNode || depth > 10 {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == name && m.Content[i].ShortTag() != "!!merge" {
			return m.Content[i], m.Content[i+1]
		}
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].ShortTag() != "!!merge" {
			continue
		}
		v := resolve(m.Content[i+1])
		var srcs []*yaml.Node
		if v != nil && v.Kind == yaml.SequenceNode {
			srcs = v.Content
		} else {
			srcs = []*yaml.Node{v}
		}
		for _, s := range srcs {
			if k, v := mappingGet(resolve(s), name, depth+1); v != nil {
				return k, v
			}
		}
	}
	return nil, nil
}

// line is the line of the item at pa: its key for a mapping value, the
// node itself for a sequence entry; the nearest written ancestor if pa is
// absent; 1 for the top.
func (p *parser) line(pa path) int {
	for i := len(pa); i > 0; i-- {
		k, v := p.lookup(pa[:i])
		switch {
		case k != nil:
			return k.Line
		case v != nil:
			return v.Line
		}
	}
	return 1
}

// keyLine is the line of the key at pa, or 0 if it is not written.
func (p *parser) keyLine(pa path) int {
	k, v := p.lookup(pa)
	switch {
	case k != nil:
		return k.Line
	case v != nil:
		return v.Line
	}
	return 0
}

// seqLen is the number of entries written under pa (0 if it is not a
// sequence).
func (p *parser) seqLen(pa path) int {
	_, v := p.lookup(pa)
	if v == nil || v.Kind != yaml.SequenceNode {
		return 0
	}
	return len(v.Content)
}

// itemName is the name written in the mapping at pa, "" if none.
func (p *parser) itemName(pa path) string {
	_, v := p.lookup(pa.add("name"))
	if v == nil || v.Kind != yaml.ScalarNode {
		return ""
	}
	return v.Value
}

// subject splits pa into the item it is in ("service imap-a", "node x",
// "island a"; "" outside items) and the rest of the path.
func (p *parser) subject(pa path) (string, path) {
	named := func(kind string, item path, rest path) (string, path) {
		if n := p.itemName(item); n != "" {
			if !reLooseName.MatchString(n) {
				n = strconv.Quote(n)
			}
			return kind + " " + n, rest
		}
		return item.dotted(), rest
	}
	switch {
	case len(pa) >= 4 && pa[0] == "islands" && pa[2] == "nodes" && isInt(pa[1]) && isInt(pa[3]):
		return named("node", pa[:4], pa[4:])
	case len(pa) >= 2 && pa[0] == "islands" && isInt(pa[1]):
		return named("island", pa[:2], pa[2:])
	case len(pa) >= 2 && pa[0] == "services" && isInt(pa[1]):
		return named("service", pa[:2], pa[2:])
	}
	return "", pa
}

var reLooseName = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

func isInt(e any) bool { _, ok := e.(int); return ok }

// describe names the item at pa for the start of a message:
// "dataplane.source_v4", "service imap-a: port", "node x".
func (p *parser) describe(pa path) string {
	subj, rest := p.subject(pa)
	switch {
	case subj != "" && len(rest) > 0:
		return subj + ": " + rest.dotted()
	case subj != "":
		return subj
	case len(rest) > 0:
		return rest.dotted()
	}
	return "the top level"
}

// container says where a key is: "in health", "in health of service x",
// "at the top level".
func (p *parser) container(pa path) string {
	subj, rest := p.subject(pa)
	switch {
	case subj != "" && len(rest) > 0:
		return "in " + rest.dotted() + " of " + subj
	case subj != "":
		return "in " + subj
	case len(rest) > 0:
		return "in " + rest.dotted()
	}
	return "at the top level"
}

func describeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	return "a single value (" + strconv.Quote(truncated(n.Value)) + ")"
}

// describeValue renders a written value for "got ...".
func describeValue(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.AliasNode:
		return "an alias (*" + n.Value + ")"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:37] + "..."
	}
	switch n.ShortTag() {
	case "!!null":
		return "nothing"
	case "!!str":
		if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
			if _, err := strconv.ParseInt(strings.ReplaceAll(v, "_", ""), 0, 64); err == nil {
				return strconv.Quote(v) + " (a quoted string: remove the quotes)"
			}
		}
		return strconv.Quote(v)
	case "!!int", "!!float", "!!bool":
		return v
	}
	return strconv.Quote(v) + " (" + n.ShortTag() + ")"
}

// leafWants are the expected values of keys, by key name.
var leafWants = map[string]string{
	"port":                       "a port number from 1 to 65535",
	"weight":                     "a whole number from 0 to 1000 (0 drains the node)",
	"conntrack_size":             "a whole number from 1024 to 67108864",
	"ring_size":                  "a prime number up to 16777213, such as 65537",
	"hash_seed":                  "a 32-bit number, decimal or 0x-hex, such as 0x61746f6c",
	"rise":                       "a whole number from 1 to 100",
	"fall":                       "a whole number from 1 to 100",
	"concurrency":                "a whole number from 1 to 4096",
	"interval":                   "a duration with a unit, such as 2s or 500ms",
	"timeout":                    "a duration with a unit, such as 1s or 500ms",
	"jitter":                     "a duration with a unit, such as 200ms (or 0)",
	"insecure_skip_verify":       "true or false",
	"through_vip":                "true or false",
	"require_tls":                "true or false",
	"start_tls":                  "true or false",
	"lowercase":                  "true or false",
	"pre_login_timeout":          "a duration with a unit, such as 60s",
	"idle_timeout":               "a duration with a unit, such as 2h (0s: none; otherwise 30m or more)",
	"dial_timeout":               "a duration with a unit, such as 5s",
	"max_message_size":           "a number of bytes, such as 52428800",
	"logins":                     "a whole number from 2 to 1000",
	"ttl":                        "a duration with a unit, such as 1h",
	"bar":                        "a duration with a unit, such as 1h",
	"max_entries":                "a whole number from 1 to 65536",
	"enabled":                    "true or false",
	"verify_one_in":              "a power of two, such as 8 (or 0)",
	"max_recipients":             "a number, such as 100",
	"window":                     "a duration with a unit, such as 10m",
	"base_delay":                 "a duration with a unit, such as 1s or 500ms",
	"max_delay":                  "a duration with a unit, such as 30s",
	"positive_ttl":               "a duration with a unit, such as 5m (0s: no caching)",
	"negative_ttl":               "a duration with a unit, such as 1m (0s: no caching)",
	"stale_ttl":                  "a duration with a unit, such as 1h or 168h (0s: never)",
	"max_line":                   "a whole number from 512 to 1048576",
	"max_literal":                "a whole number from 64 to 1048576",
	"max_bad_commands":           "a whole number from 1 to 1000",
	"max_login_tries":            "a whole number from 1 to 100",
	"max_connections_per_source": "a whole number from 1 to 100000, or -1 for no cap",
	"threshold":                  "a whole number from 1 to 10000, or -1 to turn the throttle off",
	"pool_size":                  "a whole number from 1 to 256",
	"islands":                    "a list of islands, each starting with \"- name:\"",
	"nodes":                      "a list of nodes, each starting with \"- name:\"",
	"services":                   "a list of services, each starting with \"- name:\"",
	"ports":                      "a mapping of protocol names to ports, such as {imap: 10143}",
}

// want says what the value at pa must be, from its key and Go type.
func (p *parser) want(pa path, goType string, n *yaml.Node) string {
	if len(pa) >= 2 && pa[len(pa)-2] == "ports" {
		return leafWants["port"]
	}
	if len(pa) > 0 {
		if k, ok := pa[len(pa)-1].(string); ok {
			if w, ok := leafWants[k]; ok {
				return w
			}
		}
	}
	switch {
	case strings.HasPrefix(goType, "[]"):
		if n.Kind == yaml.ScalarNode && n.Value != "" {
			return "a list, such as [" + n.Value + "]"
		}
		return "a list"
	case strings.HasPrefix(goType, "config.raw"), strings.HasPrefix(goType, "map["):
		return "a mapping of keys (key: value)"
	case goType == "string":
		return "a single value, not a list or a mapping"
	case goType == "bool":
		return "true or false"
	case goType == "time.Duration":
		return "a duration with a unit, such as 2s"
	case strings.HasPrefix(goType, "uint"):
		return "a whole number, 0 or more"
	case strings.HasPrefix(goType, "int"):
		return "a whole number"
	}
	return "a " + goType
}

// typeAt walks the raw types along pa; nil if pa leaves them.
func typeAt(pa path) reflect.Type {
	t := reflect.TypeFor[rawConfig]()
	for _, e := range pa {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch e := e.(type) {
		case int:
			if t.Kind() != reflect.Slice {
				return nil
			}
			t = t.Elem()
		case string:
			switch t.Kind() {
			case reflect.Map:
				t = t.Elem()
			case reflect.Struct:
				f, ok := fieldByTag(t, e)
				if !ok {
					return nil
				}
				t = f.Type
			default:
				return nil
			}
		}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); yamlName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

// knownKeys lists the keys of the mapping at pa, in declaration order.
func knownKeys(pa path) []string {
	t := typeAt(pa)
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for i := 0; i < t.NumField(); i++ {
		out = append(out, yamlName(t.Field(i)))
	}
	return out
}

// suggest returns the known key nearest to s within edit distance 2 (1
// for keys of up to 4 characters, so "a" does not become "api"), the first
// in declaration order on a tie; "" if none is that near.
func suggest(s string, known []string) string {
	limit := 2
	if len(s) <= 4 {
		limit = 1
	}
	best, bestD := "", limit+1
	for _, k := range known {
		if d := editDistance(strings.ToLower(s), k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance of a and b
// (bytes): Levenshtein plus the swap of two neighbours, a common typo.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 20
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// walkTypes finds what yaml.v3 lets through silently: a float written for
// a whole number (it truncates 1.5 to 1), a leading zero (0143 is read as
// octal 99) and an empty list entry (a lone "-", which it drops).
func (p *parser) walkTypes(n *yaml.Node, t reflect.Type, pa path) {
	if n == nil || t == nil {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			var ft reflect.Type
			switch t.Kind() {
			case reflect.Map:
				ft = t.Elem()
			case reflect.Struct:
				if f, ok := fieldByTag(t, k.Value); ok {
					ft = f.Type
				}
			}
			p.walkTypes(v, ft, pa.add(k.Value))
		}
	case yaml.SequenceNode:
		if t.Kind() != reflect.Slice {
			return
		}
		for i, c := range n.Content {
			ep := pa.add(i)
			if c.Kind == yaml.ScalarNode && c.ShortTag() == "!!null" {
				p.poison(ep)
				p.errorf(c.Line, "%s: the entry is empty; remove the lone \"-\" or write the entry", p.describe(ep))
				continue
			}
			p.walkTypes(c, t.Elem(), ep)
		}
	case yaml.ScalarNode:
		switch t.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		default:
			return
		}
		if t == reflect.TypeFor[yaml.Node]() || p.badSelf(pa) || t.String() == "time.Duration" {
			return
		}
		switch n.ShortTag() {
		case "!!float":
			p.poison(pa)
			p.errorf(n.Line, "%s: got %s, but it must be %s", p.describe(pa), n.Value, p.want(pa, t.String(), n))
		case "!!int":
			if reOctal.MatchString(n.Value) {
				p.poison(pa)
				p.errorf(n.Line, "%s: %s has a leading zero, which YAML reads as an octal number; write it without the leading zero (or as 0o... if octal is meant)", p.describe(pa), n.Value)
			}
		}
	}
}

var reOctal = regexp.MustCompile(`^[-+]?0[0-9_]+$`)

// aligned maps the entries of the decoded slice at pa to their indexes in
// the file: yaml.v3 drops the entries it cannot decode. It returns nil when
// the two cannot be matched.
func (p *parser) aligned(pa path, decoded int) []int {
	_, seq := p.lookup(pa)
	if seq == nil {
		if decoded == 0 {
			return []int{}
		}
		return nil
	}
	if seq.Kind == yaml.ScalarNode && seq.ShortTag() == "!!null" && decoded == 0 {
		return []int{}
	}
	if seq.Kind != yaml.SequenceNode {
		return nil
	}
	idx := []int{}
	for i, c := range seq.Content {
		c = resolve(c)
		if c != nil && c.Kind == yaml.MappingNode && !hasDuplicateKeys(c) {
			idx = append(idx, i)
		}
	}
	if len(idx) != decoded {
		return nil
	}
	return idx
}

func hasDuplicateKeys(m *yaml.Node) bool {
	for i := 0; i < len(m.Content); i += 2 {
		for j := i + 2; j < len(m.Content); j += 2 {
			if m.Content[i].Kind == m.Content[j].Kind && m.Content[i].Value == m.Content[j].Value {
				return true
			}
		}
	}
	return false
}
