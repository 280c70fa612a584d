package definitions

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/micado-scale/micado/definitions/bytesize"
	"gopkg.in/yaml.v3"
)

// The patterns of the format. micado-app.schema.json repeats them; keep
// both in step.
var (
	appNameRe       = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$`)
	serviceNameRe   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$`)
	roleRe          = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)
	tagRe           = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}=[a-zA-Z0-9_.-]{1,63}$`)
	envNameRe       = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	durationRe      = regexp.MustCompile(`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`)
	httpPathRe      = regexp.MustCompile(`^/[!-~]*$`)
	yamlErrRe       = regexp.MustCompile(`^yaml: line ([0-9]+): (.*)$`)
	unknownAnchorRe = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)
	plainKeyRe      = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
)

var (
	topFields     = []string{"application", "services"}
	serviceFields = []string{"image", "role", "tags", "memory", "replicas", "ports", "env", "depends_on", "links", "pinned", "scaling"}
	portFields    = []string{"port", "protocol", "check"}
	checkFields   = []string{"http", "tcp", "interval"}
)

// ParseFile reads and checks the definition file at path. Problems name the
// file as path was given. An error reading the file is returned as it is;
// problems in it are returned as [Problems].
func ParseFile(path string) (*App, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse reads and checks an application infrastructure definition (see
// [App] for the format). file names the data in problems and in App.File.
// When anything is wrong Parse returns a nil App and every problem it found
// as [Problems], sorted by line; it never panics, whatever data holds.
func Parse(file string, data []byte) (*App, error) {
	p := &parser{file: file, merged: map[*yaml.Node][]entry{}, active: map[*yaml.Node]bool{}}
	app := p.parseAll(data)
	if len(p.probs) > 0 {
		sortProblems(p.probs)
		return nil, p.probs
	}
	return app, nil
}

// maxSteps bounds the values Parse reads. A file without aliases has far
// fewer (at most one per two bytes); aliases can make a small file stand for
// a huge one, and Parse gives up on those.
const maxSteps = 2 << 20

// tooManySteps is what the parser panics with when it reaches maxSteps.
type tooManySteps struct{}

type parser struct {
	file  string
	probs Problems
	steps int // values read so far
	// merged memoizes the entries of mappings (with merge keys applied),
	// so that a mapping merged many times is read once.
	merged map[*yaml.Node][]entry
	// active holds the mappings whose entries are being read, to catch
	// merges that contain themselves.
	active map[*yaml.Node]bool
}

// entry is one key: value pair of a mapping.
type entry struct {
	name string
	key  *yaml.Node // for its line
	val  *yaml.Node // as written: it may be an alias
}

func (p *parser) report(line int, path, format string, args ...any) {
	p.probs = append(p.probs, Problem{File: p.file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// step counts n values read and gives up past maxSteps.
func (p *parser) step(n int) {
	p.steps += n
	if p.steps > maxSteps {
		panic(tooManySteps{})
	}
}

func (p *parser) parseAll(data []byte) *App {
	return p.bounded(func() *App { return p.parse(data) })
}

// bounded runs parse, turning the panic of a file that stands for more than
// maxSteps values into a problem.
func (p *parser) bounded(parse func() *App) (app *App) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(tooManySteps); !ok {
				panic(r)
			}
			p.report(0, "", "the file uses aliases too heavily: it stands for more than %d values", maxSteps)
			app = nil
		}
	}()
	return parse()
}

func (p *parser) parse(data []byte) *App {
	if len(data) > MaxFileSize {
		p.report(0, "", "the file is %d bytes, more than the limit of %s", len(data), bytesize.Format(MaxFileSize))
		return nil
	}
	root := p.decode(data)
	if root == nil {
		return nil
	}
	return p.app(root)
}

// app reads and checks the application whose root mapping is root. It is
// the whole of the format's rules after YAML decoding, shared with
// [ParseCompose], which builds such a root from a Compose file.
func (p *parser) app(root *yaml.Node) *App {
	n := deref(root)
	if n.Kind != yaml.MappingNode {
		p.report(root.Line, "", "the file must be a mapping with application and services, not %s", describe(n))
		return nil
	}
	app := &App{File: p.file}
	f, _ := p.fields(root, "", topFields, "")
	if e, ok := f["application"]; ok {
		if s, ok := p.str(e.val, "application", false); ok {
			if err := CheckAppName(s); err == nil {
				app.Name = s
			} else {
				p.report(e.val.Line, "application", "%v", err)
			}
		}
	} else {
		p.report(n.Line, "application", "is required (the application's name, e.g. application: webshop)")
	}
	if e, ok := f["services"]; ok {
		app.Services = p.services(e.val, "services")
	} else {
		p.report(n.Line, "services", "is required (a mapping of service names to services)")
	}
	return app
}

// decode reads the one YAML document of data and returns its root node, or
// nil after reporting why there is none.
func (p *parser) decode(data []byte) (root *yaml.Node) {
	defer func() {
		// yaml.v3 turns its own failures into errors; this is for
		// anything it does not.
		if r := recover(); r != nil {
			p.report(0, "", "invalid YAML: %v", r)
			root = nil
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var first, second *yaml.Node
	for second == nil {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			p.yamlError(err, data)
			return nil
		}
		switch {
		case first == nil:
			first = &doc
		case !emptyDoc(&doc):
			second = &doc
		}
	}
	if second != nil {
		p.report(docLine(second), "", "the file holds more than one YAML document (---): keep one application per file")
		if emptyDoc(first) {
			return nil
		}
		// Check the first document all the same.
	} else if first == nil || emptyDoc(first) {
		p.report(1, "", "the file is empty: it needs application and services")
		return nil
	}
	return first.Content[0]
}

func emptyDoc(doc *yaml.Node) bool {
	if len(doc.Content) == 0 {
		return true
	}
	n := doc.Content[0]
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func docLine(doc *yaml.Node) int {
	if len(doc.Content) > 0 && doc.Content[0].Line > 0 {
		return doc.Content[0].Line
	}
	return doc.Line
}

func (p *parser) yamlError(err error, data []byte) {
	msg, line := err.Error(), 0
	if m := yamlErrRe.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	if m := unknownAnchorRe.FindStringSubmatch(msg); m != nil && line == 0 {
		// yaml.v3 does not say where the alias is: find its first use.
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			line = bytes.Count(data[:i], []byte("\n")) + 1
		}
	}
	if strings.Contains(msg, "found character that cannot start any token") && bytes.ContainsRune(data, '\t') {
		msg += " (indent with spaces: YAML does not allow tabs)"
	}
	p.report(line, "", "invalid YAML: %s", msg)
}

// deref follows aliases to the node they stand for.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	if n == nil || n.Kind == yaml.AliasNode {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null"}
	}
	return n
}

// describe names the kind of a node for messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "empty"
		case "!!str":
			return "a string"
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "true or false"
		}
		return "a single value"
	}
	return "something else"
}

// join appends a key to a path: services + app = services.app. Keys that
// are not plain words are quoted: services["a b"].
func join(path, key string) string {
	if !plainKeyRe.MatchString(key) {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// q quotes a value from the file for a message: '12XB'.
func q(s string) string {
	if r := []rune(s); len(r) > 60 {
		s = string(r[:57]) + "..."
	}
	if strings.ContainsAny(s, "'\\") || strconv.Quote(s) != `"`+s+`"` {
		return strconv.Quote(s)
	}
	return "'" + s + "'"
}

// entries returns the key: value pairs of mapping m, with merge keys (<<)
// applied: the mapping's own keys first, in order, then the merged ones it
// does not have. It reports keys that are not strings and keys defined
// twice.
func (p *parser) entries(m *yaml.Node, path string) []entry {
	if es, ok := p.merged[m]; ok {
		return es
	}
	if p.active[m] {
		p.report(m.Line, join(path, "<<"), "the merge contains the mapping it is in")
		return nil
	}
	p.active[m] = true
	defer delete(p.active, m)
	p.step(len(m.Content)/2 + 1)
	var out []entry
	first := map[string]int{}
	var merges []*yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		kraw, v := m.Content[i], m.Content[i+1]
		k := deref(kraw)
		if k.Kind != yaml.ScalarNode {
			p.report(kraw.Line, path, "keys must be strings, not %s", describe(k))
			continue
		}
		if l, dup := first[k.Value]; dup {
			p.report(kraw.Line, join(path, k.Value), "defined twice (first at line %d)", l)
			continue
		}
		first[k.Value] = kraw.Line
		switch k.ShortTag() {
		case "!!merge":
			merges = append(merges, v)
		case "!!str":
			out = append(out, entry{name: k.Value, key: kraw, val: v})
		default:
			p.report(kraw.Line, join(path, k.Value), "names must be strings (quote it: %s)", strconv.Quote(k.Value))
		}
	}
	for _, v := range merges {
		var srcs []*yaml.Node
		switch mv := deref(v); mv.Kind {
		case yaml.MappingNode:
			srcs = []*yaml.Node{mv}
		case yaml.SequenceNode:
			for _, it := range mv.Content {
				if it := deref(it); it.Kind == yaml.MappingNode {
					srcs = append(srcs, it)
				} else {
					p.report(v.Line, join(path, "<<"), "merge needs a mapping or a list of mappings, not a list holding %s", describe(it))
					srcs = nil
					break
				}
			}
		default:
			p.report(v.Line, join(path, "<<"), "merge needs a mapping or a list of mappings, not %s", describe(mv))
		}
		for _, src := range srcs {
			for _, e := range p.entries(src, path) {
				if _, ok := first[e.name]; !ok {
					first[e.name] = e.key.Line
					out = append(out, e)
				}
			}
		}
	}
	p.merged[m] = out
	return out
}

// fields reads the mapping raw at path and returns its known fields by
// name, reporting every unknown one. what is added to the message when raw
// is not a mapping.
func (p *parser) fields(raw *yaml.Node, path string, known []string, what string) (map[string]entry, bool) {
	n := deref(raw)
	if n.Kind != yaml.MappingNode {
		p.report(raw.Line, path, "must be a mapping%s", what)
		return nil, false
	}
	out := map[string]entry{}
	es := p.entries(n, path)
	p.step(len(es) + 1)
	for _, e := range es {
		switch {
		case slices.Contains(known, e.name):
			out[e.name] = e
		case path == "" && strings.HasPrefix(e.name, "x-"):
			// Extension fields at the top level hold anchors.
		default:
			p.report(e.key.Line, join(path, e.name), "unknown field%s", suggest(e.name, known, "known fields"))
		}
	}
	return out, true
}

// suggest proposes the known name closest to name: " (did you mean X?)",
// or lists them all when none is close.
func suggest(name string, known []string, what string) string {
	norm := func(s string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s))
	}
	if len(known) > 100 {
		return ""
	}
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(norm(name), norm(k)); d < bestD && 2*d <= len(norm(name)) {
			best, bestD = k, d
		}
	}
	if best == "" {
		for _, k := range known {
			if l := strings.ToLower(name); len(k) >= 3 && strings.HasPrefix(l, k) || len(l) >= 3 && strings.HasPrefix(k, l) {
				best = k
				break
			}
		}
	}
	switch {
	case best != "":
		return " (did you mean " + best + "?)"
	case len(known) == 0 || len(known) > 12:
		return ""
	}
	return " (" + what + ": " + strings.Join(known, ", ") + ")"
}

func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 64 || len(rb) > 64 {
		if a == b {
			return 0
		}
		return 64
	}
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// str reads a string value. emptyOK allows "".
func (p *parser) str(raw *yaml.Node, path string, emptyOK bool) (string, bool) {
	n := deref(raw)
	if n.Kind != yaml.ScalarNode {
		p.report(raw.Line, path, "must be a string")
		return "", false
	}
	switch tag := n.ShortTag(); {
	case tag == "!!str":
		if n.Value == "" && !emptyOK {
			p.report(raw.Line, path, "is empty")
			return "", false
		}
		return n.Value, true
	case tag == "!!null" && emptyOK:
		p.report(raw.Line, path, `must be a string (write "" for an empty value)`)
	case tag == "!!null":
		p.report(raw.Line, path, "is empty")
	case tag == "!!int" || tag == "!!float" || tag == "!!bool" || tag == "!!timestamp":
		p.report(raw.Line, path, "must be a string (quote it: %s)", strconv.Quote(n.Value))
	default:
		p.report(raw.Line, path, "must be a string")
	}
	return "", false
}

// number reads a whole number from lo to hi.
func (p *parser) number(raw *yaml.Node, path string, lo, hi int) (int, bool) {
	n := deref(raw)
	var v any
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") || n.Decode(&v) != nil {
		p.report(raw.Line, path, "must be a number")
		return 0, false
	}
	var i int64
	switch x := v.(type) {
	case int:
		i = int64(x)
	case int64:
		i = x
	case uint64:
		i = math.MaxInt64
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) || x != math.Trunc(x) {
			p.report(raw.Line, path, "must be a whole number, not %s", q(n.Value))
			return 0, false
		}
		i = int64(max(min(x, 1e18), -1e18))
	default:
		p.report(raw.Line, path, "must be a number")
		return 0, false
	}
	if i < int64(lo) || i > int64(hi) {
		p.report(raw.Line, path, "must be from %d to %d, not %s", lo, hi, n.Value)
		return 0, false
	}
	return int(i), true
}

func (p *parser) boolean(raw *yaml.Node, path string) (bool, bool) {
	n := deref(raw)
	var b bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
		p.report(raw.Line, path, "must be true or false")
		return false, false
	}
	return b, true
}

// list reads a list and returns its items as written.
func (p *parser) list(raw *yaml.Node, path string) ([]*yaml.Node, bool) {
	n := deref(raw)
	if n.Kind != yaml.SequenceNode {
		p.report(raw.Line, path, "must be a list")
		return nil, false
	}
	p.step(len(n.Content) + 1)
	return n.Content, true
}

func (p *parser) services(raw *yaml.Node, path string) []Service {
	n := deref(raw)
	if n.Kind != yaml.MappingNode {
		p.report(raw.Line, path, "must be a mapping of service names to services")
		return nil
	}
	es := p.entries(n, path)
	if len(es) == 0 {
		if len(n.Content) == 0 {
			p.report(raw.Line, path, "needs at least one service")
		}
		return nil
	}
	var names []string
	known := map[string]bool{}
	for _, e := range es {
		names = append(names, e.name)
		known[e.name] = true
	}
	deps := map[string][]string{}
	depLine := map[[2]string]int{}
	depPath := map[[2]string]string{}
	var out []Service
	for _, e := range es {
		s, refs := p.service(e, path, known)
		out = append(out, s)
		deps[s.Name] = s.DependsOn
		for _, r := range refs {
			k := [2]string{s.Name, r.to}
			if _, ok := depLine[k]; !ok {
				depLine[k], depPath[k] = r.line, r.path
			}
		}
	}
	for _, c := range dependencyCycles(names, deps) {
		k := [2]string{c[0], c[1]}
		p.report(depLine[k], depPath[k], "depends_on cycle: %s", strings.Join(c, " -> "))
	}
	return out
}

// ref is a depends_on entry, for reporting cycles.
type ref struct {
	to   string
	line int
	path string
}

func (p *parser) service(e entry, path string, names map[string]bool) (Service, []ref) {
	path = join(path, e.name)
	s := Service{Name: e.name, Line: e.key.Line, Memory: DefaultMemory, Replicas: 1}
	if !serviceNameRe.MatchString(e.name) {
		p.report(e.key.Line, path, "%s is not a valid service name: use 1 to 40 lowercase letters, digits and '-', starting and ending with a letter or digit", q(e.name))
	}
	f, ok := p.fields(e.val, path, serviceFields, " (a service needs at least image and role)")
	if !ok {
		return s, nil
	}
	if v, ok := f["image"]; ok {
		if img, ok := p.str(v.val, path+".image", false); ok {
			if err := checkImage(img); err == nil {
				s.Image = img
			} else {
				p.report(v.val.Line, path+".image", "%s is not a valid image reference: %v (e.g. micado/demo-web or registry:5000/team/app:1.2)", q(img), err)
			}
		}
	} else {
		p.report(e.key.Line, path+".image", "is required")
	}
	if v, ok := f["role"]; ok {
		if role, ok := p.str(v.val, path+".role", false); ok {
			if roleRe.MatchString(role) {
				s.Role = role
			} else {
				p.report(v.val.Line, path+".role", "%s is not a valid role: use up to 63 letters, digits, '.', '_' and '-'", q(role))
			}
		}
	} else {
		p.report(e.key.Line, path+".role", "is required (the worker role, e.g. role: app)")
	}
	if v, ok := f["tags"]; ok {
		s.Tags = p.tags(v.val, path+".tags")
	}
	if v, ok := f["memory"]; ok {
		if m, ok := p.memory(v.val, path+".memory"); ok {
			s.Memory = m
		}
	}
	if v, ok := f["replicas"]; ok {
		if r, ok := p.number(v.val, path+".replicas", 0, MaxReplicas); ok {
			s.Replicas = r
		}
	}
	if v, ok := f["ports"]; ok {
		s.Ports = p.ports(v.val, path+".ports")
	}
	if v, ok := f["env"]; ok {
		s.Env = p.env(v.val, path+".env")
	}
	var refs []ref
	if v, ok := f["depends_on"]; ok {
		s.DependsOn, refs = p.references(v.val, path+".depends_on", e.name, names, "a service cannot depend on itself")
	}
	if v, ok := f["links"]; ok {
		s.Links, _ = p.references(v.val, path+".links", e.name, names, "a service cannot link to itself")
	}
	if v, ok := f["pinned"]; ok {
		s.Pinned, _ = p.boolean(v.val, path+".pinned")
	}
	if v, ok := f["scaling"]; ok {
		if s.Scaling = p.scaling(v.val, path+".scaling"); s.Scaling != nil {
			if r, given := f["replicas"]; !given {
				s.Replicas = s.Scaling.Min
			} else if s.Replicas < s.Scaling.Min || s.Replicas > s.Scaling.Max {
				p.report(r.val.Line, path+".replicas", "%d is outside the scaling policy's min %d and max %d", s.Replicas, s.Scaling.Min, s.Scaling.Max)
			}
		}
	}
	return s, refs
}

func (p *parser) tags(raw *yaml.Node, path string) []string {
	items, _ := p.list(raw, path)
	var out []string
	keys := map[string]int{}
	for i, it := range items {
		ip := index(path, i)
		t, ok := p.str(it, ip, false)
		if !ok {
			continue
		}
		if !tagRe.MatchString(t) {
			p.report(it.Line, ip, "%s is not a valid tag: use key=value with letters, digits, '.', '_' and '-'", q(t))
			continue
		}
		k, _, _ := strings.Cut(t, "=")
		if k == "role" {
			p.report(it.Line, ip, "give the role with the field role, not as a tag")
			continue
		}
		if l, dup := keys[k]; dup {
			p.report(it.Line, ip, "tag %s is given twice (first at line %d)", k, l)
			continue
		}
		keys[k] = it.Line
		out = append(out, t)
	}
	return out
}

func (p *parser) memory(raw *yaml.Node, path string) (int64, bool) {
	n := deref(raw)
	var v int64
	switch {
	case n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str":
		b, err := bytesize.Parse(n.Value)
		var e *bytesize.Error
		switch {
		case errors.As(err, &e) && strings.Contains(e.Reason, "at least one byte"):
			b = 0 // reported below as under the minimum
		case errors.As(err, &e):
			p.report(raw.Line, path, "%s is not a size: %s", q(n.Value), e.Reason)
			return 0, false
		}
		v = int64(b)
	case n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int":
		var x any
		if n.Decode(&x) != nil {
			p.report(raw.Line, path, "%s is not a size", q(n.Value))
			return 0, false
		}
		switch x := x.(type) {
		case int:
			v = int64(x)
		case int64:
			v = x
		default:
			v = math.MaxInt64
		}
		if v > math.MaxInt64/2 {
			p.report(raw.Line, path, "%s is too large", q(n.Value))
			return 0, false
		}
	case n.Kind == yaml.ScalarNode && n.ShortTag() == "!!float":
		p.report(raw.Line, path, "%s is not a size", q(n.Value))
		return 0, false
	default:
		p.report(raw.Line, path, "must be a size such as 64MiB")
		return 0, false
	}
	if v < MinMemory {
		p.report(raw.Line, path, "%s is below the minimum of 6MiB", q(n.Value))
		return 0, false
	}
	return v, true
}

func (p *parser) ports(raw *yaml.Node, path string) []PortSpec {
	items, _ := p.list(raw, path)
	var out []PortSpec
	seen := map[string]int{}
	for i, it := range items {
		ip := index(path, i)
		f, ok := p.fields(it, ip, portFields, " (e.g. - port: 8080)")
		if !ok {
			continue
		}
		ps := PortSpec{Protocol: "tcp"}
		portOK, protoOK := false, true
		if v, ok := f["port"]; ok {
			ps.Port, portOK = p.number(v.val, ip+".port", 1, 65535)
		} else {
			p.report(it.Line, ip+".port", "is required")
		}
		if v, ok := f["protocol"]; ok {
			var proto string
			if proto, protoOK = p.str(v.val, ip+".protocol", false); protoOK {
				if proto == "tcp" || proto == "udp" {
					ps.Protocol = proto
				} else {
					p.report(v.val.Line, ip+".protocol", "%s is not a protocol: use tcp or udp", q(proto))
					protoOK = false
				}
			}
		}
		if portOK && protoOK {
			key := strconv.Itoa(ps.Port) + "/" + ps.Protocol
			if l, dup := seen[key]; dup {
				p.report(f["port"].val.Line, ip+".port", "port %s is listed twice (first at line %d)", key, l)
			} else {
				seen[key] = f["port"].val.Line
			}
		}
		if v, ok := f["check"]; ok {
			ps.Check = p.check(v.val, ip+".check")
			switch {
			case i > 0:
				p.report(v.key.Line, ip+".check", "only the first port may have a check: Consul checks a container through its first port")
			case ps.Protocol == "udp" && protoOK:
				p.report(v.key.Line, ip+".check", "a check needs a tcp port")
			}
		}
		out = append(out, ps)
	}
	return out
}

func (p *parser) check(raw *yaml.Node, path string) *CheckSpec {
	f, ok := p.fields(raw, path, checkFields, " with http: /path or tcp: true")
	if !ok {
		return nil
	}
	c := &CheckSpec{}
	h, hasHTTP := f["http"]
	t, hasTCP := f["tcp"]
	if hasHTTP {
		if s, ok := p.str(h.val, path+".http", false); ok {
			if httpPathRe.MatchString(s) {
				c.HTTP = s
			} else {
				p.report(h.val.Line, path+".http", "%s is not a path: it starts with / and has no spaces", q(s))
			}
		}
	}
	if hasTCP {
		if b, ok := p.boolean(t.val, path+".tcp"); ok {
			if b {
				c.TCP = true
			} else {
				p.report(t.val.Line, path+".tcp", "must be true (leave out the check for none)")
			}
		}
	}
	switch {
	case hasHTTP && hasTCP:
		p.report(raw.Line, path, "give one of http or tcp, not both")
	case !hasHTTP && !hasTCP:
		p.report(raw.Line, path, "needs http: /path or tcp: true")
	}
	if v, ok := f["interval"]; ok {
		if s, ok := p.str(v.val, path+".interval", false); ok {
			d, err := time.ParseDuration(s)
			if !durationRe.MatchString(s) || err != nil || d < time.Second || d > 10*time.Minute {
				p.report(v.val.Line, path+".interval", "%s is not a valid interval: use a duration from 1s to 10m, e.g. 5s", q(s))
			} else {
				c.Interval = s
			}
		}
	}
	return c
}

func (p *parser) env(raw *yaml.Node, path string) map[string]string {
	n := deref(raw)
	if n.Kind != yaml.MappingNode {
		p.report(raw.Line, path, "must be a mapping of variable names to values")
		return nil
	}
	var out map[string]string
	es := p.entries(n, path)
	p.step(len(es) + 1)
	for _, e := range es {
		ep := join(path, e.name)
		switch {
		case !envNameRe.MatchString(e.name):
			p.report(e.key.Line, ep, "%s is not a valid environment variable name: use letters, digits and '_', not starting with a digit", q(e.name))
		case strings.HasPrefix(e.name, "MICADO_"):
			p.report(e.key.Line, ep, "%s is reserved: micado sets MICADO_* variables itself", e.name)
		}
		if v, ok := p.str(e.val, ep, true); ok {
			if out == nil {
				out = map[string]string{}
			}
			out[e.name] = v
		}
	}
	return out
}

// references reads depends_on or links: names of other services.
func (p *parser) references(raw *yaml.Node, path, self string, names map[string]bool, selfMsg string) ([]string, []ref) {
	items, _ := p.list(raw, path)
	var out []string
	var refs []ref
	seen := map[string]int{}
	for i, it := range items {
		ip := index(path, i)
		s, ok := p.str(it, ip, false)
		if !ok {
			continue
		}
		switch l, dup := seen[s]; {
		case dup:
			p.report(it.Line, ip, "%s is listed twice (first at line %d)", q(s), l)
			continue
		case s == self:
			p.report(it.Line, ip, "%s", selfMsg)
			continue
		case !names[s]:
			var others []string
			if len(names) <= 100 {
				for n := range names {
					if n != self {
						others = append(others, n)
					}
				}
				sort.Strings(others)
			}
			p.report(it.Line, ip, "unknown service %s%s", q(s), suggest(s, others, "services are"))
			continue
		}
		seen[s] = it.Line
		out = append(out, s)
		refs = append(refs, ref{to: s, line: it.Line, path: ip})
	}
	return out, refs
}

// checkImage checks an image reference as Docker reads it (package
// github.com/distribution/reference): "micado/demo-web",
// "registry:5000/team/app:1.2", "app@sha256:…".
func checkImage(img string) error {
	if strings.TrimSpace(img) != img {
		return errors.New("it has spaces around it")
	}
	_, err := reference.ParseNormalizedNamed(img)
	return err
}

// CheckAppName checks an application's name, in a file or in a URL: a DNS
// label of 1 to 48 lowercase letters, digits and '-'.
func CheckAppName(name string) error {
	if !appNameRe.MatchString(name) {
		return fmt.Errorf("%s is not a valid application name: use 1 to 48 lowercase letters, digits and '-', starting and ending with a letter or digit", q(name))
	}
	return nil
}
