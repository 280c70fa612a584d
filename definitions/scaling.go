package definitions

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"gopkg.in/yaml.v3"
)

// Limits of a scaling policy.
const (
	// MaxCPUTarget bounds the cpu target: a replica is asked to keep at
	// most one core busy on average (docker stats' 100%); a target above
	// it would let a saturated replica look on target.
	MaxCPUTarget = 100
	// MaxQueryLength bounds a PromQL query kept in a policy.
	MaxQueryLength = 4096
	// MaxWindows bounds the scheduled windows of one policy.
	MaxWindows = 16
	// MaxWindowDuration bounds one scheduled window: a week, the longest
	// period a cron expression repeats with.
	MaxWindowDuration = 7 * 24 * time.Hour
	// MaxStabilization bounds the scale-down stabilization window, as
	// Kubernetes bounds its own.
	MaxStabilization = time.Hour
)

// Scaling is a service's scaling policy: the scaling field of a service in
// a definition file, the --min/--max/--cpu… flags of `micado launch`, and
// the policy the manager keeps per service. One type for all three, so a
// policy means the same wherever it is written. Its fields:
//
//   - min, max (required): the replicas the service keeps, 1 ≤ min ≤ max ≤
//     1000.
//   - cpu (optional): target mean CPU per replica in % of one core, as
//     docker stats shows it ("60%", or 60), above 0% and at most 100%.
//   - memory (optional): target mean memory used per replica, in % of its
//     memory request ("70%"), at most 100%.
//   - query, per_replica (optional, together): a PromQL query read from the
//     manager's --prometheus and the value each replica should carry: the
//     service gets ceil(value / per_replica) replicas.
//   - stabilization (optional): how long the load must stay low before
//     replicas are removed, a duration ("5m"); default 5m.
//   - schedule (optional): known busy (or quiet) windows, a list of
//     [Window].
//
// At least one of cpu, memory, query or schedule must be given. The
// manager computes desired = ceil(current × value / target) per metric and
// takes the largest; see coordinator.DecideScale.
type Scaling struct {
	Min           int      `json:"min"`
	Max           int      `json:"max"`
	CPU           float64  `json:"cpu,omitempty"`
	Memory        float64  `json:"memory,omitempty"`
	Query         string   `json:"query,omitempty"`
	PerReplica    float64  `json:"per_replica,omitempty"`
	Stabilization string   `json:"stabilization,omitempty"`
	Schedule      []Window `json:"schedule,omitempty"`
}

// Window is one entry of a policy's schedule: from every time the cron
// expression fires, for duration, the service keeps at least min (and at
// most max) replicas. Fields:
//
//   - cron (required): a standard 5-field cron expression ("0 8 * * 1-5"),
//     or a descriptor such as @daily, in the manager's time zone (UTC).
//   - duration (required): how long the window lasts, e.g. 10h; at most a
//     week.
//   - min, max (at least one): the bounds that hold during the window.
type Window struct {
	Cron     string `json:"cron"`
	Duration string `json:"duration"`
	Min      int    `json:"min,omitempty"`
	Max      int    `json:"max,omitempty"`
}

var scalingFields = []string{"min", "max", "cpu", "memory", "query", "per_replica", "stabilization", "schedule"}
var windowFields = []string{"cron", "duration", "min", "max"}

// cronParser reads standard 5-field expressions and descriptors (@daily).
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseCron parses a window's cron expression.
func ParseCron(spec string) (cron.Schedule, error) {
	s, err := cronParser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("%q is not a cron expression (minute hour day-of-month month day-of-week, e.g. \"0 8 * * 1-5\"): %v", spec, err)
	}
	return s, nil
}

// ParsePercent reads a percentage: "60%", "60" or "12.5%".
func ParsePercent(s string) (float64, error) {
	t := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "%"))
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%q is not a percentage (e.g. 60%%)", s)
	}
	return v, nil
}

// StabilizationWindow returns the stabilization duration, 0 when not set
// (the manager then uses its default). Call on a validated policy.
func (s *Scaling) StabilizationWindow() time.Duration {
	d, _ := time.ParseDuration(s.Stabilization)
	return d
}

// WindowDuration returns a window's duration. Call on a validated policy.
func (w *Window) WindowDuration() time.Duration {
	d, _ := time.ParseDuration(w.Duration)
	return d
}

// Problems returns every problem of the policy, each "field: message"
// with the field as the definition format names it. None means valid.
func (s *Scaling) Problems() []string {
	var out []string
	bad := func(field, format string, a ...any) {
		out = append(out, field+": "+fmt.Sprintf(format, a...))
	}
	if s.Min < 1 || s.Min > MaxReplicas {
		bad("min", "must be from 1 to %d, not %d", MaxReplicas, s.Min)
	}
	if s.Max < 1 || s.Max > MaxReplicas {
		bad("max", "must be from 1 to %d, not %d", MaxReplicas, s.Max)
	}
	if s.Min >= 1 && s.Max >= 1 && s.Min > s.Max {
		bad("min", "%d is above max %d", s.Min, s.Max)
	}
	if s.CPU != 0 && (s.CPU < 0 || s.CPU > MaxCPUTarget || math.IsNaN(s.CPU)) {
		bad("cpu", "must be above 0%% and at most %d%% (of one core per replica), not %g%%", MaxCPUTarget, s.CPU)
	}
	if s.Memory != 0 && (s.Memory < 0 || s.Memory > 100 || math.IsNaN(s.Memory)) {
		bad("memory", "must be above 0%% and at most 100%% of the memory request, not %g%%", s.Memory)
	}
	switch {
	case s.Query != "" && s.PerReplica == 0:
		bad("per_replica", "is required with query (the value of the query each replica should carry)")
	case s.Query == "" && s.PerReplica != 0:
		bad("query", "is required with per_replica")
	case s.PerReplica < 0 || math.IsNaN(s.PerReplica) || math.IsInf(s.PerReplica, 0):
		bad("per_replica", "must be above 0, not %g", s.PerReplica)
	}
	if s.Query != "" {
		if len(s.Query) > MaxQueryLength {
			bad("query", "is %d characters long, more than %d", len(s.Query), MaxQueryLength)
		} else if err := QuerySyntax(s.Query); err != nil {
			bad("query", "%v", err)
		}
	}
	if s.Stabilization != "" {
		d, err := time.ParseDuration(s.Stabilization)
		switch {
		case err != nil:
			bad("stabilization", "%q is not a duration (e.g. 5m)", s.Stabilization)
		case d < 0 || d > MaxStabilization:
			bad("stabilization", "must be from 0s to %s, not %s", MaxStabilization, s.Stabilization)
		}
	}
	if len(s.Schedule) > MaxWindows {
		bad("schedule", "has %d windows, more than %d", len(s.Schedule), MaxWindows)
	}
	for i, w := range s.Schedule {
		f := "schedule[" + strconv.Itoa(i) + "]"
		if w.Cron == "" {
			bad(f+".cron", "is required")
		} else if _, err := ParseCron(w.Cron); err != nil {
			bad(f+".cron", "%v", err)
		}
		if w.Duration == "" {
			bad(f+".duration", "is required (how long the window lasts, e.g. 10h)")
		} else if d, err := time.ParseDuration(w.Duration); err != nil {
			bad(f+".duration", "%q is not a duration (e.g. 10h)", w.Duration)
		} else if d <= 0 || d > MaxWindowDuration {
			bad(f+".duration", "must be above 0s and at most 168h, not %s", w.Duration)
		}
		if w.Min == 0 && w.Max == 0 {
			bad(f, "needs min or max (the bound that holds during the window)")
		}
		if w.Min < 0 || w.Min > MaxReplicas {
			bad(f+".min", "must be from 1 to %d, not %d", MaxReplicas, w.Min)
		} else if w.Min > s.Max && s.Max >= 1 {
			bad(f+".min", "%d is above the policy's max %d", w.Min, s.Max)
		}
		if w.Max < 0 || w.Max > MaxReplicas {
			bad(f+".max", "must be from 1 to %d, not %d", MaxReplicas, w.Max)
		} else if w.Max != 0 && w.Max < s.Min {
			bad(f+".max", "%d is below the policy's min %d", w.Max, s.Min)
		}
		if w.Min != 0 && w.Max != 0 && w.Min > w.Max {
			bad(f+".min", "%d is above the window's max %d", w.Min, w.Max)
		}
	}
	if s.CPU == 0 && s.Memory == 0 && s.Query == "" && len(s.Schedule) == 0 {
		bad("scaling", "needs a metric to scale on: cpu, memory, query with per_replica, or a schedule")
	}
	return out
}

// Validate returns the policy's problems as one error, nil when valid.
func (s *Scaling) Validate() error {
	if p := s.Problems(); len(p) > 0 {
		return fmt.Errorf("scaling policy: %s", strings.Join(p, "; "))
	}
	return nil
}

// QuerySyntax checks what can be checked of a PromQL query without a
// Prometheus: it is not empty and its brackets and quotes are balanced.
// The manager asks its Prometheus to parse it before accepting it.
func QuerySyntax(q string) error {
	if strings.TrimSpace(q) == "" {
		return fmt.Errorf("is empty")
	}
	var stack []byte
	var quote byte
	for i := 0; i < len(q); i++ {
		c := q[i]
		if quote != 0 {
			switch {
			case c == '\\' && quote != '`':
				i++
			case c == quote:
				quote = 0
			}
			continue
		}
		switch c {
		case '"', '\'', '`':
			quote = c
		case '(', '[', '{':
			stack = append(stack, c)
		case ')', ']', '}':
			open := map[byte]byte{')': '(', ']': '[', '}': '{'}[c]
			if len(stack) == 0 || stack[len(stack)-1] != open {
				return fmt.Errorf("%q has an unbalanced %q at character %d", q, string(c), i+1)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if quote != 0 {
		return fmt.Errorf("%q has an unclosed %c quote", q, quote)
	}
	if len(stack) > 0 {
		return fmt.Errorf("%q has an unclosed %q", q, string(stack[len(stack)-1]))
	}
	return nil
}

// scaling reads a service's scaling field.
func (p *parser) scaling(raw *yaml.Node, path string) *Scaling {
	f, ok := p.fields(raw, path, scalingFields, "")
	if !ok {
		return nil
	}
	s := &Scaling{}
	line := map[string]int{"scaling": raw.Line}
	for name, e := range f {
		line[name] = e.val.Line
	}
	valid := true
	if v, ok := f["min"]; ok {
		s.Min, ok = p.number(v.val, path+".min", 1, MaxReplicas)
		valid = valid && ok
	} else {
		p.report(raw.Line, path+".min", "is required (the fewest replicas)")
		valid = false
	}
	if v, ok := f["max"]; ok {
		s.Max, ok = p.number(v.val, path+".max", 1, MaxReplicas)
		valid = valid && ok
	} else {
		p.report(raw.Line, path+".max", "is required (the most replicas)")
		valid = false
	}
	pct := func(name string) float64 {
		v, ok := f[name]
		if !ok {
			return 0
		}
		n := deref(v.val)
		if n.Kind == yaml.ScalarNode && (n.ShortTag() == "!!int" || n.ShortTag() == "!!float" || n.ShortTag() == "!!str") {
			if x, err := ParsePercent(n.Value); err == nil {
				if x <= 0 {
					p.report(v.val.Line, path+"."+name, "must be above 0%%, not %s (leave it out to not scale on %s)", q(n.Value), name)
					valid = false
				}
				return x
			}
		}
		p.report(v.val.Line, path+"."+name, "%s is not a percentage (e.g. 60%%)", q(n.Value))
		valid = false
		return 0
	}
	s.CPU, s.Memory = pct("cpu"), pct("memory")
	if v, ok := f["query"]; ok {
		s.Query, ok = p.str(v.val, path+".query", false)
		valid = valid && ok
	}
	if v, ok := f["per_replica"]; ok {
		n := deref(v.val)
		var x float64
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") || n.Decode(&x) != nil {
			p.report(v.val.Line, path+".per_replica", "must be a number")
			valid = false
		}
		s.PerReplica = x
	}
	if v, ok := f["stabilization"]; ok {
		s.Stabilization, ok = p.str(v.val, path+".stabilization", false)
		valid = valid && ok
	}
	if v, ok := f["schedule"]; ok {
		items, ok := p.list(v.val, path+".schedule")
		valid = valid && ok
		for i, it := range items {
			wp := index(path+".schedule", i)
			wf, ok := p.fields(it, wp, windowFields, "")
			if !ok {
				valid = false
				continue
			}
			w := Window{}
			line["schedule["+strconv.Itoa(i)+"]"] = it.Line
			for name, e := range wf {
				line["schedule["+strconv.Itoa(i)+"]."+name] = e.val.Line
				switch name {
				case "cron", "duration":
					v, ok := p.str(e.val, wp+"."+name, false)
					valid = valid && ok
					if name == "cron" {
						w.Cron = v
					} else {
						w.Duration = v
					}
				case "min", "max":
					n, ok := p.number(e.val, wp+"."+name, 1, MaxReplicas)
					valid = valid && ok
					if name == "min" {
						w.Min = n
					} else {
						w.Max = n
					}
				}
			}
			s.Schedule = append(s.Schedule, w)
		}
	}
	if !valid {
		return nil
	}
	for _, prob := range s.Problems() {
		field, msg, _ := strings.Cut(prob, ": ")
		l, ok := line[field]
		if !ok {
			l = raw.Line
		}
		fp := path
		if field != "scaling" {
			fp = path + "." + field
		}
		p.report(l, fp, "%s", msg)
	}
	return s
}
