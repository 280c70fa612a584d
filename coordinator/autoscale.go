package coordinator

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Autoscaling defaults. Each carries the reason for its value.
const (
	// DefaultTolerance is the Kubernetes HPA's: a ratio within 10% of 1
	// changes nothing, so measurement noise never moves replicas.
	DefaultTolerance = 0.10
	// DefaultStabilization is the HPA's scale-down window: replicas go down
	// only after the load stayed low for 5 minutes, so the dip between two
	// bursts removes nothing that the next burst would need again.
	DefaultStabilization = 5 * time.Minute
	// DefaultMetricWindow is how far back each container's samples are
	// averaged before deciding: 10 s holds five 2-s samples, which smooths
	// noise and still reacts within seconds.
	DefaultMetricWindow = 10 * time.Second
	// DefaultMaxStepUp: one decision adds at most max(4, current) replicas
	// (the HPA's default policy: 4 pods or 100%), so one wild sample cannot
	// multiply a service, while a real surge still doubles it each time.
	DefaultMaxStepUp = 4
	// MaxReplicas bounds a policy's max: beyond any service micado is
	// sized for, it catches a typo (10000) before it asks the cloud for
	// hundreds of instances.
	MaxReplicas = 1000
	// MaxCPUTarget is 100%: a replica is asked to keep at most one core
	// busy on average (as definitions.MaxCPUTarget).
	MaxCPUTarget = 100
	// MaxStabilization is the HPA's bound too: a longer window keeps
	// unneeded replicas, and their instances, for hours.
	MaxStabilization = time.Hour
	// MaxWindowDuration: a schedule window lasts at most 7 days, the
	// longest period cron schedules repeat on; longer is a mistake.
	MaxWindowDuration = 7 * 24 * time.Hour
)

// Metric names a policy may use.
const (
	// MetricCPU targets a percentage of one core per replica.
	MetricCPU = "cpu"
	// MetricMemory targets a percentage of each replica's memory request.
	MetricMemory = "memory"
	// MetricQuery targets a value per replica of a query's total.
	MetricQuery = "query"
)

// Schedule says when a window opens. robfig/cron's cron.Schedule satisfies
// it; Next returns the first activation strictly after t, or the zero time
// when there is none.
type Schedule interface{ Next(time.Time) time.Time }

// ScheduleWindow changes the bounds of a policy for Duration after each
// activation of Schedule.
type ScheduleWindow struct {
	Spec     string // the cron text, for reasons
	Schedule Schedule
	Duration time.Duration
	Min, Max int // 0 = no bound
}

// MetricTarget is one metric a policy scales on.
type MetricTarget struct {
	// Name is "cpu" (target % of one core per replica), "memory" (target
	// % of the memory request) or "query" (target value per replica).
	Name   string
	Target float64
}

// ScalePolicy is how one service scales by load.
type ScalePolicy struct {
	Min, Max      int
	Metrics       []MetricTarget
	Stabilization time.Duration // 0 → DefaultStabilization
	Tolerance     float64       // 0 → DefaultTolerance
	Windows       []ScheduleWindow
	// Window is the caller's metric window (0 → DefaultMetricWindow): a
	// scale-up waits until the replicas have been unchanged that long, so
	// that no sample behind the metric is from before the last change.
	Window time.Duration
}

// Validate checks the policy; every error names the field and its value.
// Min is at least 1: a service scaled by load needs a replica to measure
// (and a query of zero would otherwise stop it for good).
func (p ScalePolicy) Validate() error {
	if p.Min < 1 {
		return fmt.Errorf("min %d: must be at least 1", p.Min)
	}
	if p.Max < p.Min {
		return fmt.Errorf("max %d: must be at least min %d", p.Max, p.Min)
	}
	if p.Max > MaxReplicas {
		return fmt.Errorf("max %d: must be at most %d", p.Max, MaxReplicas)
	}
	seen := map[string]bool{}
	for i, m := range p.Metrics {
		f := "metrics[" + strconv.Itoa(i) + "]"
		t := m.Target
		switch m.Name {
		case MetricCPU:
			if !(t > 0 && t <= MaxCPUTarget) {
				return fmt.Errorf("%s.target %v for cpu: must be a percentage of one core, more than 0 and at most %d", f, t, MaxCPUTarget)
			}
		case MetricMemory:
			if !(t > 0 && t <= 100) {
				return fmt.Errorf("%s.target %v for memory: must be a percentage of the memory request, more than 0 and at most 100", f, t)
			}
		case MetricQuery:
			if !(t > 0 && !math.IsInf(t, 1)) {
				return fmt.Errorf("%s.target %v for query: must be a finite value per replica, more than 0", f, t)
			}
		default:
			return fmt.Errorf("%s.name %q: must be %s, %s or %s", f, m.Name, MetricCPU, MetricMemory, MetricQuery)
		}
		// Several queries may each have their own text; cpu or memory twice
		// is a mistake.
		if m.Name != MetricQuery && seen[m.Name] {
			return fmt.Errorf("%s.name %q: given twice", f, m.Name)
		}
		seen[m.Name] = true
	}
	if p.Stabilization < 0 || p.Stabilization > MaxStabilization {
		return fmt.Errorf("stabilization %s: must be from 0 (default %s) to %s", p.Stabilization, DefaultStabilization, MaxStabilization)
	}
	if !(p.Tolerance >= 0 && p.Tolerance < 1) {
		return fmt.Errorf("tolerance %v: must be at least 0 (default %v) and under 1", p.Tolerance, DefaultTolerance)
	}
	if p.Window < 0 || p.Window > MaxStabilization {
		return fmt.Errorf("window %s: must be from 0 (default %s) to %s", p.Window, DefaultMetricWindow, MaxStabilization)
	}
	for i, w := range p.Windows {
		f := fmt.Sprintf("windows[%d] (%q)", i, w.Spec)
		switch {
		case w.Schedule == nil:
			return fmt.Errorf("%s.schedule: missing", f)
		case w.Duration <= 0 || w.Duration > MaxWindowDuration:
			return fmt.Errorf("%s.duration %s: must be more than 0 and at most %s", f, w.Duration, MaxWindowDuration)
		case w.Min < 0:
			return fmt.Errorf("%s.min %d: must not be negative (0 = no bound)", f, w.Min)
		case w.Max < 0:
			return fmt.Errorf("%s.max %d: must not be negative (0 = no bound)", f, w.Max)
		case w.Min == 0 && w.Max == 0:
			return fmt.Errorf("%s: sets neither min nor max", f)
		case w.Min > p.Max:
			return fmt.Errorf("%s.min %d: above the policy's max %d", f, w.Min, p.Max)
		case w.Max > 0 && w.Max < p.Min:
			return fmt.Errorf("%s.max %d: below the policy's min %d", f, w.Max, p.Min)
		case w.Max > 0 && w.Min > w.Max:
			return fmt.Errorf("%s.min %d: above its max %d", f, w.Min, w.Max)
		}
	}
	return nil
}

func (p ScalePolicy) stabilization() time.Duration {
	if p.Stabilization <= 0 {
		return DefaultStabilization
	}
	return p.Stabilization
}

func (p ScalePolicy) tolerance() float64 {
	if p.Tolerance <= 0 {
		return DefaultTolerance
	}
	return p.Tolerance
}

func (p ScalePolicy) window() time.Duration {
	if p.Window <= 0 {
		return DefaultMetricWindow
	}
	return p.Window
}

// MetricValue is one policy metric as measured.
type MetricValue struct {
	Name string
	// Value is, for cpu and memory, the mean per reporting replica over
	// the window (see ReplicaMean); for a query, the query's total.
	Value float64
	// Reported counts the replicas that had samples (cpu, memory).
	Reported int
	// Missing: no usable value.
	Missing bool
}

// Recommendation is what the metrics asked for at one decision.
type Recommendation struct {
	At       time.Time
	Replicas int
	// Current and Ready are the decision's input: a change between two
	// recommendations tells a later decision that its samples may still
	// describe the replicas before the change.
	Current, Ready int
}

// ScaleInput is one service's state at a decision.
type ScaleInput struct {
	Current int              // replicas desired now
	Ready   int              // running and passing (a change holds scale-ups for one metric window)
	Metrics []MetricValue    // one per policy metric, same order (matched by position)
	History []Recommendation // what DecideScale returned as History last time (nil at first)
	Now     time.Time
}

// ScaleDecision is how many replicas a service should have, and why.
type ScaleDecision struct {
	Desired int
	// Proposed is what the metrics alone ask for, before stabilization,
	// the step limit and the bounds.
	Proposed int
	// Metric drove Proposed ("" when none did); Value and Target are its.
	Metric        string
	Value, Target float64
	// Clamp is what bounded Desired, "" if nothing: "max 12", "min 2",
	// "schedule \"0 8 * * 1-5\" min 4", "stabilization 5m0s", "step limit 4",
	// "settling", "metrics missing: no scale-down", "within tolerance".
	Clamp string
	// Reason is one sentence for `micado explain`, with the numbers.
	Reason string
	// History is to be passed back next time (pruned to the windows).
	History []Recommendation
}

// ActiveWindows returns the windows open at now: those with an activation
// t ≤ now such that now < t+Duration, i.e. Schedule.Next(now−Duration) ≤
// now. A window without a schedule, or whose schedule has no next
// activation (the zero time), is never open.
func ActiveWindows(ws []ScheduleWindow, now time.Time) []ScheduleWindow {
	var out []ScheduleWindow
	for _, w := range ws {
		if w.Schedule == nil || w.Duration <= 0 {
			continue
		}
		if t := w.Schedule.Next(now.Add(-w.Duration)); !t.IsZero() && !t.After(now) {
			out = append(out, w)
		}
	}
	return out
}

// Sample is one measurement of one container.
type Sample struct {
	At    time.Time
	Value float64
}

// WindowMean is the mean of the samples with now−window < At ≤ now
// (non-finite values skipped); false when there are none.
func WindowMean(samples []Sample, now time.Time, window time.Duration) (float64, bool) {
	from := now.Add(-window)
	var sum float64
	n := 0
	for _, s := range samples {
		if s.At.After(from) && !s.At.After(now) && finite(s.Value) {
			sum += s.Value
			n++
		}
	}
	if n == 0 {
		return 0, false
	}
	return sum / float64(n), true
}

// ReplicaMean is the MetricValue of a cpu or memory metric: the WindowMean
// of each replica's samples, averaged over the replicas that had any
// (Reported); Missing when none had.
func ReplicaMean(name string, replicas [][]Sample, now time.Time, window time.Duration) MetricValue {
	mv := MetricValue{Name: name}
	var sum float64
	for _, ss := range replicas {
		if m, ok := WindowMean(ss, now, window); ok {
			sum += m
			mv.Reported++
		}
	}
	if mv.Reported == 0 {
		mv.Missing = true
		return mv
	}
	mv.Value = sum / float64(mv.Reported)
	return mv
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// proposal is what one metric asks for.
type proposal struct {
	name          string
	value, target float64
	replicas      int
	missing       bool
	within        bool   // within tolerance: asks for the current count
	clause        string // "cpu at 92% per replica (target 60%)"
}

// propose works out what metric m, measured as v, asks for with cur
// replicas, the HPA's way: ratio = value/target, and a ratio within tol
// of 1 asks for cur. cpu and memory ask for ceil(total load / target),
// the total load being the mean times the replicas that reported; the
// basis is max(cur, reported). Replicas without samples (starting, or
// just not measured) count as idle when the ratio says up and as at the
// target when it says down; when that brings the ratio back within the
// tolerance, or across 1, the metric asks for cur. A query asks for
// ceil(value/target), with ratio value/(target×cur).
func propose(m MetricTarget, v MetricValue, ok bool, cur int, tol float64) proposal {
	pr := proposal{name: m.Name, target: m.Target, replicas: cur}
	if !ok || v.Missing || !finite(v.Value) || m.Target <= 0 {
		pr.missing = true
		pr.clause = m.Name + " missing"
		return pr
	}
	val := math.Max(v.Value, 0)
	pr.value = val
	switch m.Name {
	case MetricQuery:
		pr.clause = fmt.Sprintf("query at %s (target %s per replica)", num(val), num(m.Target))
		need := val / m.Target
		if cur > 0 && math.Abs(need/float64(cur)-1) <= tol || cur == 0 && need == 0 {
			pr.within = true
			return pr
		}
		pr.replicas = ceilReplicas(need)
		return pr
	default: // cpu, memory
		if v.Reported <= 0 {
			pr.missing = true
			pr.clause = m.Name + " missing (no replica reported)"
			return pr
		}
		unit := "% per replica"
		if m.Name == MetricMemory {
			unit = "% of the request per replica"
		}
		basis := max(cur, v.Reported)
		on := ""
		if v.Reported < basis {
			on = fmt.Sprintf(" on %d of %d replicas", v.Reported, basis)
		}
		pr.clause = fmt.Sprintf("%s at %s%s%s (target %s%%)", m.Name, num(val), unit, on, num(m.Target))
		ratio := val / m.Target
		if math.Abs(ratio-1) <= tol {
			pr.within = true
			return pr
		}
		load := val * float64(v.Reported)
		if ratio < 1 {
			load += float64(basis-v.Reported) * m.Target
		}
		adj := load / (float64(basis) * m.Target)
		if ratio > 1 && adj <= 1+tol || ratio < 1 && adj >= 1-tol {
			pr.within = true
			return pr
		}
		pr.replicas = ceilReplicas(load / m.Target)
		return pr
	}
}

// ceilReplicas rounds x up to whole replicas, with a slack of 1e-9 so
// that float error (6.000000000000001) does not add one; it is capped far
// above MaxReplicas so that a wild value cannot overflow.
func ceilReplicas(x float64) int {
	const capAt = 1 << 20
	if !(x < capAt) {
		return capAt
	}
	return int(math.Max(math.Ceil(x-1e-9), 0))
}

// num renders a measurement compactly: "92", "0.35", "1250".
func num(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.FormatFloat(f, 'f', 0, 64)
	}
	if math.Abs(f) >= 10 {
		return strconv.FormatFloat(f, 'f', 0, 64)
	}
	return strconv.FormatFloat(f, 'g', 2, 64)
}

// DecideScale decides how many replicas a service should have, the way
// the Kubernetes HPA does:
//
//  1. Each metric proposes a count (see propose); the largest proposal
//     wins. When a metric is missing, the service does not scale down
//     (the others may still scale it up); with none usable it keeps
//     Current. This recommendation goes into History.
//  2. Up at once; down only to the highest recommendation of the
//     stabilization window, i.e. after the load stayed low for the whole
//     window. When no recommendation is in the window (first decision,
//     or none for longer than the window), Current counts as one, as the
//     HPA does for a new autoscaler, so a drop still waits a full window.
//  3. A scale-up waits while the replicas (Current or Ready) changed less
//     than the policy's metric window ago: the samples behind the metrics
//     still describe the load split over the replicas before the change,
//     and acting on them would overshoot. Then it adds at most
//     max(DefaultMaxStepUp, Current) replicas.
//  4. The bounds come last and win over everything: min and max, raised
//     and lowered by the schedule windows open at Now (when two windows
//     conflict, the higher minimum wins). A Current outside them is
//     corrected at once, and a service at 0 goes to at least min.
func DecideScale(p ScalePolicy, in ScaleInput) ScaleDecision {
	stab, tol, win := p.stabilization(), p.tolerance(), p.window()
	cur, ready, now := max(in.Current, 0), max(in.Ready, 0), in.Now
	d := ScaleDecision{Proposed: cur}

	// 1. What the metrics ask for.
	var best *proposal
	var missing []string
	props := make([]proposal, len(p.Metrics))
	for i, m := range p.Metrics {
		var v MetricValue
		ok := i < len(in.Metrics)
		if ok {
			v = in.Metrics[i]
		}
		props[i] = propose(m, v, ok, cur, tol)
		pr := &props[i]
		if pr.missing {
			missing = append(missing, pr.name)
			continue
		}
		if best == nil || pr.replicas > best.replicas {
			best = pr
		}
	}
	var clause string
	switch {
	case best != nil:
		d.Proposed, d.Metric, d.Value, d.Target = best.replicas, best.name, best.value, best.target
		clause = best.clause
		if len(missing) > 0 {
			clause += " with " + strings.Join(missing, ", ") + " missing"
		}
	case len(missing) > 0:
		clause = "no usable metric (" + strings.Join(missing, ", ") + " missing)"
	default:
		clause = "no metric configured"
	}
	// why explains Clamp in the reason.
	var why string
	rec := d.Proposed
	if len(missing) > 0 && rec < cur {
		rec = cur
		d.Clamp, why = "metrics missing: no scale-down", "no scale-down while a metric is missing"
	} else if best != nil && best.within && rec == cur {
		d.Clamp = "within tolerance"
	}

	// 2. Stabilization.
	keep := max(stab, 2*win)
	hist := make([]Recommendation, 0, len(in.History)+1)
	highest, inWindow := rec, false
	for _, h := range in.History {
		if h.At.After(now) {
			h.At = now // a clock that went back: count it as made now
		}
		if !h.At.After(now.Add(-keep)) {
			continue
		}
		hist = append(hist, h)
		if h.At.After(now.Add(-stab)) {
			inWindow = true
			highest = max(highest, h.Replicas)
		}
	}
	saved := rec
	if !inWindow {
		highest = max(highest, cur)
		saved = max(rec, cur) // the seed, carried by this entry
	}
	desired := max(cur, rec)
	if desired > highest {
		desired = highest
	}
	if rec < cur && desired > rec {
		d.Clamp = "stabilization " + stab.String()
		why = fmt.Sprintf("%s: %d was recommended within the last %s", d.Clamp, highest, stab)
	}

	// 3. Settling, then the step limit.
	if desired > cur {
		if since, changed := replicasChanged(in.History, cur, ready, now); changed && since < win {
			desired = cur
			d.Clamp = "settling"
			why = fmt.Sprintf("settling: the replicas changed %s ago, within the %s metric window", since.Round(time.Second), win)
		} else if step := max(DefaultMaxStepUp, cur); desired > cur+step {
			desired = cur + step
			d.Clamp = "step limit " + strconv.Itoa(step)
			why = fmt.Sprintf("%s: at most %d more per decision", d.Clamp, step)
		}
	}

	// 4. Bounds.
	lo, hi := max(p.Min, 0), p.Max
	if hi <= 0 {
		hi = MaxReplicas
	}
	loBy, hiBy := "min "+strconv.Itoa(lo), "max "+strconv.Itoa(hi)
	for _, w := range ActiveWindows(p.Windows, now) {
		if w.Min > lo {
			lo, loBy = w.Min, fmt.Sprintf("schedule %q min %d", w.Spec, w.Min)
		}
		if w.Max > 0 && w.Max < hi {
			hi, hiBy = w.Max, fmt.Sprintf("schedule %q max %d", w.Spec, w.Max)
		}
	}
	if hi < lo {
		hi, hiBy = lo, loBy // the higher minimum wins over a lower maximum
	}
	if desired < lo {
		desired, d.Clamp, why = lo, loBy, loBy
	} else if desired > hi {
		desired, d.Clamp, why = hi, hiBy, hiBy
	}
	d.Desired = desired

	d.History = append(hist, Recommendation{At: now, Replicas: saved, Current: cur, Ready: ready})
	d.Reason = scaleReason(clause, d, cur, tol, why)
	return d
}

// replicasChanged reports whether hist shows (Current, Ready) other than
// (cur, ready), and if so how long ago the present values were first
// seen (0 when only now). hist is in the order it was recorded.
func replicasChanged(hist []Recommendation, cur, ready int, now time.Time) (time.Duration, bool) {
	first := now
	for i := len(hist) - 1; i >= 0; i-- {
		if hist[i].Current != cur || hist[i].Ready != ready {
			return now.Sub(first), true
		}
		if at := hist[i].At; at.Before(first) {
			first = at
		}
	}
	return 0, false
}

// scaleReason is the decision in one sentence: what the metrics ask for,
// what is done, and what bounded it (why).
func scaleReason(clause string, d ScaleDecision, cur int, tol float64, why string) string {
	var b strings.Builder
	b.WriteString(clause)
	switch {
	case d.Clamp == "within tolerance":
		fmt.Fprintf(&b, " is within %s of the target", pct(tol))
	case d.Metric != "":
		fmt.Fprintf(&b, " asks for %s", plural(d.Proposed, "replica"))
	}
	b.WriteString(": ")
	switch {
	case d.Desired > cur:
		fmt.Fprintf(&b, "scaling up from %d to %d", cur, d.Desired)
	case d.Desired < cur:
		fmt.Fprintf(&b, "scaling down from %d to %d", cur, d.Desired)
	default:
		fmt.Fprintf(&b, "keeping %s", plural(cur, "replica"))
	}
	if why != "" {
		b.WriteString(" (" + why + ")")
	}
	return b.String()
}
