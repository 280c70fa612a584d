package coordinator

import (
	"math"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// scaleNow is the fixed "now" of the autoscaling tests: a Monday, 09:00 UTC.
var scaleNow = time.Date(2025, 3, 10, 9, 0, 0, 0, time.UTC)

// daily is a fake cron schedule: every day at h:m UTC (the coordinator
// cannot import robfig/cron).
type daily struct{ h, m int }

func (d daily) Next(t time.Time) time.Time {
	t = t.UTC()
	c := time.Date(t.Year(), t.Month(), t.Day(), d.h, d.m, 0, 0, time.UTC)
	if !c.After(t) {
		c = c.AddDate(0, 0, 1)
	}
	return c
}

// never has no activation, like a cron spec for 30 February.
type never struct{}

func (never) Next(time.Time) time.Time { return time.Time{} }

func cpuAt(v float64, reported int) MetricValue {
	return MetricValue{Name: MetricCPU, Value: v, Reported: reported}
}

func missingMetric(name string) MetricValue { return MetricValue{Name: name, Missing: true} }

// lowHistory is a history that lets a drop to n through at once: the
// only recommendation in the stabilization window is n, and the replicas
// have not changed for minutes.
func lowHistory(n, cur int) []Recommendation {
	return []Recommendation{
		{At: scaleNow.Add(-7 * time.Minute), Replicas: cur, Current: cur, Ready: cur},
		{At: scaleNow.Add(-4 * time.Minute), Replicas: n, Current: cur, Ready: cur},
	}
}

func TestDecideScale(t *testing.T) {
	cpu60 := []MetricTarget{{Name: MetricCPU, Target: 60}}
	pol := func(min, max int, ms ...MetricTarget) ScalePolicy {
		if len(ms) == 0 {
			ms = cpu60
		}
		return ScalePolicy{Min: min, Max: max, Metrics: ms}
	}
	workday := ScheduleWindow{Spec: "0 8 * * *", Schedule: daily{8, 0}, Duration: 10 * time.Hour, Min: 6}
	night := ScheduleWindow{Spec: "0 20 * * *", Schedule: daily{20, 0}, Duration: 12 * time.Hour, Max: 4}
	cases := []struct {
		name     string
		p        ScalePolicy
		in       ScaleInput
		desired  int
		proposed int
		metric   string
		clamp    string
		reason   string // a part of the reason
	}{
		{
			name: "within tolerance: nothing changes", p: pol(1, 20),
			in:      ScaleInput{Current: 4, Ready: 4, Metrics: []MetricValue{cpuAt(63, 4)}},
			desired: 4, proposed: 4, metric: "cpu", clamp: "within tolerance",
			reason: "cpu at 63% per replica (target 60%) is within 10% of the target: keeping 4 replicas",
		},
		{
			name: "up: ceil(current × ratio)", p: pol(1, 20),
			in:      ScaleInput{Current: 3, Ready: 3, Metrics: []MetricValue{cpuAt(90, 3)}},
			desired: 5, proposed: 5, metric: "cpu",
			reason: "cpu at 90% per replica (target 60%) asks for 5 replicas: scaling up from 3 to 5",
		},
		{
			name: "up: float error does not add a replica", p: pol(1, 20),
			in:      ScaleInput{Current: 5, Ready: 5, Metrics: []MetricValue{cpuAt(72, 5)}},
			desired: 6, proposed: 6, metric: "cpu",
		},
		{
			name: "up: at most 4 more from a small count", p: pol(1, 100),
			in:      ScaleInput{Current: 2, Ready: 2, Metrics: []MetricValue{cpuAt(600, 2)}},
			desired: 6, proposed: 20, metric: "cpu", clamp: "step limit 4",
			reason: "asks for 20 replicas: scaling up from 2 to 6 (step limit 4: at most 4 more per decision)",
		},
		{
			name: "up: at most doubling from a large count", p: pol(1, 100),
			in:      ScaleInput{Current: 10, Ready: 10, Metrics: []MetricValue{cpuAt(300, 10)}},
			desired: 20, proposed: 50, metric: "cpu", clamp: "step limit 10",
		},
		{
			name: "up: max wins", p: pol(1, 12),
			in:      ScaleInput{Current: 10, Ready: 10, Metrics: []MetricValue{cpuAt(120, 10)}},
			desired: 12, proposed: 20, metric: "cpu", clamp: "max 12",
			reason: "scaling up from 10 to 12 (max 12)",
		},
		{
			name: "bounds: a current above max is corrected at once", p: pol(1, 20),
			in:      ScaleInput{Current: 30, Ready: 30, Metrics: []MetricValue{cpuAt(60, 30)}},
			desired: 20, proposed: 30, metric: "cpu", clamp: "max 20",
		},
		{
			name: "bounds: a service at 0 goes to min", p: pol(2, 20),
			in:      ScaleInput{Current: 0, Metrics: []MetricValue{missingMetric("cpu")}},
			desired: 2, proposed: 0, clamp: "min 2",
			reason: "no usable metric (cpu missing): scaling up from 0 to 2 (min 2)",
		},
		{
			name: "bounds: a service at 0 with a query load", p: pol(1, 20, MetricTarget{Name: MetricQuery, Target: 100}),
			in:      ScaleInput{Current: 0, Metrics: []MetricValue{{Name: MetricQuery, Value: 350}}},
			desired: 4, proposed: 4, metric: "query",
		},
		{
			name: "missing: no scale-down", p: pol(1, 20, MetricTarget{Name: MetricCPU, Target: 60}, MetricTarget{Name: MetricMemory, Target: 80}),
			in:      ScaleInput{Current: 5, Ready: 5, Metrics: []MetricValue{cpuAt(10, 5), missingMetric("memory")}, History: lowHistory(1, 5)},
			desired: 5, proposed: 1, metric: "cpu", clamp: "metrics missing: no scale-down",
			reason: "cpu at 10% per replica (target 60%) with memory missing asks for 1 replica: keeping 5 replicas (no scale-down while a metric is missing)",
		},
		{
			name: "missing: the others still scale up", p: pol(1, 20, MetricTarget{Name: MetricCPU, Target: 60}, MetricTarget{Name: MetricMemory, Target: 80}),
			in:      ScaleInput{Current: 4, Ready: 4, Metrics: []MetricValue{cpuAt(120, 4), missingMetric("memory")}},
			desired: 8, proposed: 8, metric: "cpu",
		},
		{
			name: "missing: all of them keeps current", p: pol(1, 20),
			in:      ScaleInput{Current: 7, Ready: 7, Metrics: []MetricValue{missingMetric("cpu")}, History: lowHistory(1, 7)},
			desired: 7, proposed: 7,
			reason: "no usable metric (cpu missing): keeping 7 replicas",
		},
		{
			name: "missing: fewer values than metrics", p: pol(1, 20),
			in:      ScaleInput{Current: 3, Ready: 3, History: lowHistory(1, 3)},
			desired: 3, proposed: 3,
		},
		{
			name: "missing: no replica reported", p: pol(1, 20),
			in:      ScaleInput{Current: 3, Ready: 3, Metrics: []MetricValue{cpuAt(10, 0)}, History: lowHistory(1, 3)},
			desired: 3, proposed: 3,
		},
		{
			name: "missing: NaN", p: pol(1, 20),
			in:      ScaleInput{Current: 3, Ready: 3, Metrics: []MetricValue{cpuAt(math.NaN(), 3)}, History: lowHistory(1, 3)},
			desired: 3, proposed: 3,
		},
		{
			name: "down: the first decision waits a full window", p: pol(1, 20),
			in:      ScaleInput{Current: 6, Ready: 6, Metrics: []MetricValue{cpuAt(20, 6)}},
			desired: 6, proposed: 2, metric: "cpu", clamp: "stabilization 5m0s",
			reason: "asks for 2 replicas: keeping 6 replicas (stabilization 5m0s: 6 was recommended within the last 5m0s)",
		},
		{
			name: "down: to the highest recommendation of the window", p: pol(1, 20),
			in: ScaleInput{Current: 6, Ready: 6, Metrics: []MetricValue{cpuAt(20, 6)}, History: []Recommendation{
				{At: scaleNow.Add(-6 * time.Minute), Replicas: 9, Current: 6, Ready: 6},
				{At: scaleNow.Add(-4 * time.Minute), Replicas: 5, Current: 6, Ready: 6},
				{At: scaleNow.Add(-time.Minute), Replicas: 3, Current: 6, Ready: 6},
			}},
			desired: 5, proposed: 2, metric: "cpu", clamp: "stabilization 5m0s",
			reason: "scaling down from 6 to 5 (stabilization 5m0s: 5 was recommended",
		},
		{
			name: "down: low for the whole window", p: pol(1, 20),
			in:      ScaleInput{Current: 6, Ready: 6, Metrics: []MetricValue{cpuAt(20, 6)}, History: lowHistory(2, 6)},
			desired: 2, proposed: 2, metric: "cpu",
			reason: "cpu at 20% per replica (target 60%) asks for 2 replicas: scaling down from 6 to 2",
		},
		{
			name: "down: min wins over the metrics", p: pol(3, 20),
			in:      ScaleInput{Current: 6, Ready: 6, Metrics: []MetricValue{cpuAt(20, 6)}, History: lowHistory(2, 6)},
			desired: 3, proposed: 2, metric: "cpu", clamp: "min 3",
		},
		{
			name: "metrics: the largest proposal wins", p: pol(1, 20, MetricTarget{Name: MetricCPU, Target: 60}, MetricTarget{Name: MetricQuery, Target: 100}),
			in:      ScaleInput{Current: 4, Ready: 4, Metrics: []MetricValue{cpuAt(75, 4), {Name: MetricQuery, Value: 750}}},
			desired: 8, proposed: 8, metric: "query",
			reason: "query at 750 (target 100 per replica) asks for 8 replicas: scaling up from 4 to 8",
		},
		{
			name: "query: ceil(value / target)", p: pol(1, 20, MetricTarget{Name: MetricQuery, Target: 100}),
			in:      ScaleInput{Current: 6, Ready: 6, Metrics: []MetricValue{{Name: MetricQuery, Value: 1250}}},
			desired: 12, proposed: 13, metric: "query", clamp: "step limit 6",
		},
		{
			name: "query: within tolerance", p: pol(1, 20, MetricTarget{Name: MetricQuery, Target: 100}),
			in:      ScaleInput{Current: 10, Ready: 10, Metrics: []MetricValue{{Name: MetricQuery, Value: 1080}}},
			desired: 10, proposed: 10, metric: "query", clamp: "within tolerance",
		},
		{
			name: "memory: percent of the request", p: pol(1, 20, MetricTarget{Name: MetricMemory, Target: 50}),
			in:      ScaleInput{Current: 2, Ready: 2, Metrics: []MetricValue{{Name: MetricMemory, Value: 90, Reported: 2}}},
			desired: 4, proposed: 4, metric: "memory",
			reason: "memory at 90% of the request per replica (target 50%) asks for 4 replicas",
		},
		{
			name: "unreported replicas: idle for a scale-up, which they undo", p: pol(1, 20),
			in:      ScaleInput{Current: 5, Ready: 3, Metrics: []MetricValue{cpuAt(90, 3)}},
			desired: 5, proposed: 5, metric: "cpu", clamp: "within tolerance",
			reason: "cpu at 90% per replica on 3 of 5 replicas (target 60%) is within 10% of the target",
		},
		{
			name: "unreported replicas: idle for a scale-up", p: pol(1, 20),
			in:      ScaleInput{Current: 4, Ready: 3, Metrics: []MetricValue{cpuAt(120, 3)}},
			desired: 6, proposed: 6, metric: "cpu",
		},
		{
			name: "unreported replicas: at target for a scale-down", p: pol(1, 20),
			in:      ScaleInput{Current: 4, Ready: 4, Metrics: []MetricValue{cpuAt(30, 2)}, History: lowHistory(1, 4)},
			desired: 3, proposed: 3, metric: "cpu",
		},
		{
			name: "unreported replicas: at target for a scale-down, which they undo", p: pol(1, 20),
			in:      ScaleInput{Current: 10, Ready: 10, Metrics: []MetricValue{cpuAt(30, 1)}, History: lowHistory(1, 10)},
			desired: 10, proposed: 10, metric: "cpu", clamp: "within tolerance",
		},
		{
			name: "more replicas reporting than desired: the total load counts", p: pol(1, 20),
			in:      ScaleInput{Current: 3, Ready: 4, Metrics: []MetricValue{cpuAt(90, 4)}},
			desired: 6, proposed: 6, metric: "cpu",
		},
		{
			name: "settling: no scale-up while the samples predate the last change", p: pol(1, 20),
			in: ScaleInput{Current: 6, Ready: 6, Metrics: []MetricValue{cpuAt(150, 6)}, History: []Recommendation{
				{At: scaleNow.Add(-10 * time.Second), Replicas: 3, Current: 3, Ready: 3},
				{At: scaleNow.Add(-5 * time.Second), Replicas: 6, Current: 3, Ready: 3},
			}},
			desired: 6, proposed: 15, metric: "cpu", clamp: "settling",
			reason: "keeping 6 replicas (settling: the replicas changed 0s ago, within the 10s metric window)",
		},
		{
			name: "settling: over once the window holds only new samples", p: pol(1, 20),
			in: ScaleInput{Current: 6, Ready: 6, Metrics: []MetricValue{cpuAt(150, 6)}, History: []Recommendation{
				{At: scaleNow.Add(-15 * time.Second), Replicas: 6, Current: 3, Ready: 3},
				{At: scaleNow.Add(-10 * time.Second), Replicas: 6, Current: 6, Ready: 6},
				{At: scaleNow.Add(-5 * time.Second), Replicas: 6, Current: 6, Ready: 6},
			}},
			desired: 12, proposed: 15, metric: "cpu", clamp: "step limit 6",
		},
		{
			name: "settling: readiness counts as a change", p: pol(1, 20),
			in: ScaleInput{Current: 6, Ready: 6, Metrics: []MetricValue{cpuAt(150, 6)}, History: []Recommendation{
				{At: scaleNow.Add(-15 * time.Second), Replicas: 6, Current: 6, Ready: 3},
				{At: scaleNow.Add(-5 * time.Second), Replicas: 6, Current: 6, Ready: 6},
			}},
			desired: 6, proposed: 15, metric: "cpu", clamp: "settling",
			reason: "the replicas changed 5s ago",
		},
		{
			name:    "schedule: an open window raises min",
			p:       ScalePolicy{Min: 1, Max: 20, Metrics: cpu60, Windows: []ScheduleWindow{workday}},
			in:      ScaleInput{Current: 3, Ready: 3, Metrics: []MetricValue{cpuAt(60, 3)}},
			desired: 6, proposed: 3, metric: "cpu", clamp: `schedule "0 8 * * *" min 6`,
			reason: `cpu at 60% per replica (target 60%) asks for 3 replicas: scaling up from 3 to 6 (schedule "0 8 * * *" min 6)`,
		},
		{
			name:    "schedule: a closed window changes nothing",
			p:       ScalePolicy{Min: 1, Max: 20, Metrics: cpu60, Windows: []ScheduleWindow{night}},
			in:      ScaleInput{Current: 8, Ready: 8, Metrics: []MetricValue{cpuAt(60, 8)}},
			desired: 8, proposed: 8, metric: "cpu", clamp: "within tolerance",
		},
		{
			name:    "schedule: an open window lowers max",
			p:       ScalePolicy{Min: 1, Max: 20, Metrics: cpu60, Windows: []ScheduleWindow{night}},
			in:      ScaleInput{Current: 8, Ready: 8, Metrics: []MetricValue{cpuAt(60, 8)}, Now: scaleNow.Add(12 * time.Hour)},
			desired: 4, proposed: 8, metric: "cpu", clamp: `schedule "0 20 * * *" max 4`,
		},
		{
			name: "schedule: conflicting windows, the higher minimum wins",
			p: ScalePolicy{Min: 1, Max: 20, Metrics: cpu60, Windows: []ScheduleWindow{
				{Spec: "a", Schedule: daily{8, 0}, Duration: time.Hour, Max: 3},
				{Spec: "b", Schedule: daily{8, 30}, Duration: time.Hour, Min: 5},
			}},
			in:      ScaleInput{Current: 8, Ready: 8, Metrics: []MetricValue{cpuAt(60, 8)}, Now: scaleNow.Add(-20 * time.Minute)},
			desired: 5, proposed: 8, metric: "cpu", clamp: `schedule "b" min 5`,
		},
		{
			name: "no metrics: the bounds alone", p: ScalePolicy{Min: 2, Max: 5},
			in:      ScaleInput{Current: 1, Ready: 1},
			desired: 2, proposed: 1, clamp: "min 2",
			reason: "no metric configured: scaling up from 1 to 2 (min 2)",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := c.in
			if in.Now.IsZero() {
				in.Now = scaleNow
			}
			d := DecideScale(c.p, in)
			if d.Desired != c.desired || d.Proposed != c.proposed || d.Metric != c.metric || d.Clamp != c.clamp {
				t.Errorf("desired %d proposed %d metric %q clamp %q, want %d %d %q %q\nreason: %s",
					d.Desired, d.Proposed, d.Metric, d.Clamp, c.desired, c.proposed, c.metric, c.clamp, d.Reason)
			}
			if !strings.Contains(d.Reason, c.reason) {
				t.Errorf("reason %q\nwant it to contain %q", d.Reason, c.reason)
			}
			if n := len(d.History); n == 0 || !d.History[n-1].At.Equal(in.Now) {
				t.Errorf("history does not end with this decision: %+v", d.History)
			}
		})
	}
}

// The numbers of a decision reach the caller.
func TestDecideScaleValueTarget(t *testing.T) {
	p := ScalePolicy{Min: 1, Max: 10, Metrics: []MetricTarget{{Name: MetricCPU, Target: 60}}}
	d := DecideScale(p, ScaleInput{Current: 2, Ready: 2, Metrics: []MetricValue{cpuAt(93.5, 2)}, Now: scaleNow})
	if d.Value != 93.5 || d.Target != 60 || d.Metric != "cpu" {
		t.Fatalf("%+v", d)
	}
}

// History is pruned to the windows and never shares the caller's array.
func TestDecideScaleHistory(t *testing.T) {
	p := ScalePolicy{Min: 1, Max: 10, Metrics: []MetricTarget{{Name: MetricCPU, Target: 60}}}
	old := []Recommendation{
		{At: scaleNow.Add(-time.Hour), Replicas: 9, Current: 3, Ready: 3},
		{At: scaleNow.Add(-6 * time.Minute), Replicas: 9, Current: 3, Ready: 3},
		{At: scaleNow.Add(-time.Minute), Replicas: 3, Current: 3, Ready: 3},
	}
	orig := append([]Recommendation(nil), old...)
	d := DecideScale(p, ScaleInput{Current: 3, Ready: 3, Metrics: []MetricValue{cpuAt(60, 3)}, History: old, Now: scaleNow})
	if len(d.History) != 2 || !d.History[0].At.Equal(old[2].At) || !d.History[1].At.Equal(scaleNow) {
		t.Fatalf("history %+v", d.History)
	}
	for i := range old {
		if old[i] != orig[i] {
			t.Fatalf("DecideScale changed its input history")
		}
	}
	// A clock that went back: a recommendation "from the future" counts
	// as made now, so it still holds a drop.
	future := []Recommendation{{At: scaleNow.Add(time.Hour), Replicas: 8, Current: 8, Ready: 8}}
	d = DecideScale(p, ScaleInput{Current: 8, Ready: 8, Metrics: []MetricValue{cpuAt(10, 8)}, History: future, Now: scaleNow})
	if d.Desired != 8 || d.History[0].At != scaleNow {
		t.Fatalf("%+v", d)
	}
}

func TestActiveWindows(t *testing.T) {
	at := func(h, m, s int) time.Time { return time.Date(2025, 3, 10, h, m, s, 0, time.UTC) }
	w := ScheduleWindow{Spec: "0 8 * * *", Schedule: daily{8, 0}, Duration: time.Hour, Min: 3}
	overnight := ScheduleWindow{Spec: "0 23 * * *", Schedule: daily{23, 0}, Duration: 2 * time.Hour, Max: 2}
	allDay := ScheduleWindow{Spec: "0 0 * * *", Schedule: daily{0, 0}, Duration: 24 * time.Hour, Min: 2}
	cases := []struct {
		name string
		w    ScheduleWindow
		now  time.Time
		want bool
	}{
		{"just before it opens", w, at(7, 59, 59), false},
		{"as it opens", w, at(8, 0, 0), true},
		{"inside", w, at(8, 30, 0), true},
		{"the last instant", w, at(8, 59, 59).Add(999 * time.Millisecond), true},
		{"as it closes", w, at(9, 0, 0), false},
		{"after", w, at(12, 0, 0), false},
		{"across midnight, before", overnight, at(22, 59, 0), false},
		{"across midnight, evening", overnight, at(23, 30, 0), true},
		{"across midnight, next morning", overnight, at(0, 59, 0), true},
		{"across midnight, closed", overnight, at(1, 0, 0), false},
		{"24h: always", allDay, at(13, 0, 0), true},
		{"24h: at its activation", allDay, at(0, 0, 0), true},
		{"no activation ever", ScheduleWindow{Schedule: never{}, Duration: time.Hour, Min: 1}, at(8, 0, 0), false},
		{"no schedule", ScheduleWindow{Duration: time.Hour, Min: 1}, at(8, 0, 0), false},
		{"no duration", ScheduleWindow{Schedule: daily{8, 0}, Min: 1}, at(8, 0, 0), false},
	}
	for _, c := range cases {
		got := len(ActiveWindows([]ScheduleWindow{c.w}, c.now)) == 1
		if got != c.want {
			t.Errorf("%s: active at %s = %v, want %v", c.name, c.now.Format("15:04:05.000"), got, c.want)
		}
	}
	if got := ActiveWindows([]ScheduleWindow{w, overnight, allDay}, at(8, 15, 0)); len(got) != 2 || got[0].Spec != w.Spec || got[1].Spec != allDay.Spec {
		t.Errorf("%+v", got)
	}
}

func TestWindowMean(t *testing.T) {
	s := func(sec int, v float64) Sample {
		return Sample{At: scaleNow.Add(time.Duration(sec) * time.Second), Value: v}
	}
	samples := []Sample{s(-10, 1000), s(-8, 10), s(-2, 20), s(0, 30), s(1, 5000), s(-4, math.NaN())}
	if m, ok := WindowMean(samples, scaleNow, 10*time.Second); !ok || m != 20 {
		t.Errorf("WindowMean = %v, %v; want 20 (the sample at now−window is out, the one at now in)", m, ok)
	}
	if _, ok := WindowMean(samples, scaleNow.Add(-20*time.Second), 10*time.Second); ok {
		t.Errorf("WindowMean of an empty window reported a value")
	}
	mv := ReplicaMean("cpu", [][]Sample{{s(-2, 40), s(0, 60)}, {s(-1, 80)}, {s(-60, 100)}, nil}, scaleNow, DefaultMetricWindow)
	if mv.Missing || mv.Reported != 2 || mv.Value != 65 || mv.Name != "cpu" {
		t.Errorf("ReplicaMean = %+v, want 65 from 2 replicas", mv)
	}
	if mv := ReplicaMean("cpu", [][]Sample{nil}, scaleNow, DefaultMetricWindow); !mv.Missing {
		t.Errorf("ReplicaMean without samples = %+v, want missing", mv)
	}
}

func TestScalePolicyValidate(t *testing.T) {
	good := func() ScalePolicy {
		return ScalePolicy{Min: 2, Max: 10, Metrics: []MetricTarget{{Name: MetricCPU, Target: 60}, {Name: MetricQuery, Target: 100}, {Name: MetricQuery, Target: 5}},
			Windows: []ScheduleWindow{{Spec: "0 8 * * 1-5", Schedule: daily{8, 0}, Duration: 10 * time.Hour, Min: 4, Max: 8}}}
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("good policy: %v", err)
	}
	cases := []struct {
		name string
		mod  func(*ScalePolicy)
		want string
	}{
		{"min 0", func(p *ScalePolicy) { p.Min = 0 }, "min 0: must be at least 1"},
		{"max below min", func(p *ScalePolicy) { p.Max = 1 }, "max 1: must be at least min 2"},
		{"max too large", func(p *ScalePolicy) { p.Max = 5000 }, "max 5000: must be at most 1000"},
		{"cpu target 0", func(p *ScalePolicy) { p.Metrics[0].Target = 0 }, "metrics[0].target 0 for cpu"},
		{"cpu target too large", func(p *ScalePolicy) { p.Metrics[0].Target = 10000 }, "metrics[0].target 10000 for cpu"},
		{"cpu target NaN", func(p *ScalePolicy) { p.Metrics[0].Target = math.NaN() }, "metrics[0].target NaN for cpu"},
		{"memory above 100", func(p *ScalePolicy) { p.Metrics[0] = MetricTarget{Name: MetricMemory, Target: 120} }, "metrics[0].target 120 for memory"},
		{"query negative", func(p *ScalePolicy) { p.Metrics[1].Target = -1 }, "metrics[1].target -1 for query"},
		{"query infinite", func(p *ScalePolicy) { p.Metrics[1].Target = math.Inf(1) }, "metrics[1].target +Inf for query"},
		{"unknown metric", func(p *ScalePolicy) { p.Metrics[1].Name = "rps" }, `metrics[1].name "rps": must be cpu, memory or query`},
		{"cpu twice", func(p *ScalePolicy) { p.Metrics[1] = MetricTarget{Name: MetricCPU, Target: 50} }, `metrics[1].name "cpu": given twice`},
		{"negative stabilization", func(p *ScalePolicy) { p.Stabilization = -time.Second }, "stabilization -1s"},
		{"long stabilization", func(p *ScalePolicy) { p.Stabilization = 2 * time.Hour }, "stabilization 2h0m0s"},
		{"tolerance 1", func(p *ScalePolicy) { p.Tolerance = 1 }, "tolerance 1"},
		{"negative window", func(p *ScalePolicy) { p.Window = -time.Second }, "window -1s"},
		{"window without schedule", func(p *ScalePolicy) { p.Windows[0].Schedule = nil }, `windows[0] ("0 8 * * 1-5").schedule: missing`},
		{"window duration 0", func(p *ScalePolicy) { p.Windows[0].Duration = 0 }, `windows[0] ("0 8 * * 1-5").duration 0s`},
		{"window longer than a week", func(p *ScalePolicy) { p.Windows[0].Duration = 8 * 24 * time.Hour }, `.duration 192h0m0s: must be more than 0 and at most 168h0m0s`},
		{"window min negative", func(p *ScalePolicy) { p.Windows[0].Min = -1 }, `.min -1: must not be negative`},
		{"window max negative", func(p *ScalePolicy) { p.Windows[0].Max = -1 }, `.max -1: must not be negative`},
		{"window sets nothing", func(p *ScalePolicy) { p.Windows[0].Min, p.Windows[0].Max = 0, 0 }, `sets neither min nor max`},
		{"window min above max", func(p *ScalePolicy) { p.Windows[0].Min = 11; p.Windows[0].Max = 0 }, `.min 11: above the policy's max 10`},
		{"window max below min", func(p *ScalePolicy) { p.Windows[0].Min = 0; p.Windows[0].Max = 1 }, `.max 1: below the policy's min 2`},
		{"window min above its max", func(p *ScalePolicy) { p.Windows[0].Min = 9 }, `.min 9: above its max 8`},
	}
	for _, c := range cases {
		p := good()
		c.mod(&p)
		err := p.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate() = %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

// genScalePolicy draws a valid policy with small numbers, so that bounds,
// windows and metrics interact often.
func genScalePolicy(t *rapid.T) ScalePolicy {
	p := ScalePolicy{Min: rapid.IntRange(1, 5).Draw(t, "min")}
	p.Max = p.Min + rapid.IntRange(0, 30).Draw(t, "max-extra")
	names := rapid.SliceOfNDistinct(rapid.SampledFrom([]string{MetricCPU, MetricMemory, MetricQuery}), 0, 3, func(s string) string { return s }).Draw(t, "metrics")
	for _, n := range names {
		target := rapid.SampledFrom([]float64{50, 60, 80, 100}).Draw(t, "target")
		p.Metrics = append(p.Metrics, MetricTarget{Name: n, Target: target})
	}
	p.Stabilization = rapid.SampledFrom([]time.Duration{0, time.Minute, 5 * time.Minute}).Draw(t, "stabilization")
	p.Tolerance = rapid.SampledFrom([]float64{0, 0.05, 0.2}).Draw(t, "tolerance")
	for i := rapid.IntRange(0, 2).Draw(t, "windows"); i > 0; i-- {
		w := ScheduleWindow{
			Spec:     "w",
			Schedule: daily{rapid.IntRange(0, 23).Draw(t, "hour"), rapid.SampledFrom([]int{0, 30}).Draw(t, "minute")},
			Duration: time.Duration(rapid.IntRange(1, 30).Draw(t, "duration-h")) * time.Hour / 2,
		}
		if rapid.Bool().Draw(t, "window-min") {
			w.Min = rapid.IntRange(p.Min, p.Max).Draw(t, "wmin")
		}
		if w.Min == 0 || rapid.Bool().Draw(t, "window-max") {
			w.Max = rapid.IntRange(max(p.Min, w.Min), p.Max).Draw(t, "wmax")
		}
		p.Windows = append(p.Windows, w)
	}
	if err := p.Validate(); err != nil {
		t.Fatalf("generated an invalid policy: %v", err)
	}
	return p
}

// genMetrics draws one value per policy metric around its target (so
// that tolerance, ups and downs all happen), some missing.
func genMetrics(t *rapid.T, p ScalePolicy, cur int) []MetricValue {
	var out []MetricValue
	for _, m := range p.Metrics {
		if rapid.IntRange(0, 3).Draw(t, "missing") == 0 {
			out = append(out, MetricValue{Name: m.Name, Missing: true})
			continue
		}
		f := rapid.Float64Range(0, 3).Draw(t, "load")
		mv := MetricValue{Name: m.Name, Value: f * m.Target, Reported: max(cur-rapid.IntRange(0, 2).Draw(t, "unreported"), 0)}
		if m.Name == MetricQuery {
			mv.Value *= float64(cur)
		}
		out = append(out, mv)
	}
	return out
}

// bounds is the reference for the bounds at now: the policy's, narrowed
// by the open windows, the higher minimum winning.
func bounds(p ScalePolicy, now time.Time) (int, int) {
	lo, hi := p.Min, p.Max
	for _, w := range p.Windows {
		if w.Schedule.Next(now.Add(-w.Duration)).After(now) {
			continue
		}
		lo = max(lo, w.Min)
		if w.Max > 0 {
			hi = min(hi, w.Max)
		}
	}
	return lo, max(hi, lo)
}

// TestDecideScaleProperties checks single decisions on random inputs:
//
//	(a) the result is within the bounds, windows applied;
//	(b) every metric within tolerance (and all replicas reporting) changes
//	    nothing unless the bounds force it;
//	(c) a missing metric never lowers a count that is within the bounds;
//	(d) a scale-up adds at most max(DefaultMaxStepUp, current), unless the
//	    minimum forces more;
//	(e) a drop never goes below a recommendation of the stabilization
//	    window, and needs one in it;
//	(f) History ends with this decision and keeps nothing older than the
//	    windows;
//	(g) and it does drop when every recommendation of the window, this
//	    one included, is under the current count (and the bounds allow).
func TestDecideScaleProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := genScalePolicy(t)
		now := scaleNow.Add(time.Duration(rapid.IntRange(0, 24*60).Draw(t, "minute-of-day")) * time.Minute)
		cur := rapid.IntRange(0, p.Max+5).Draw(t, "current")
		in := ScaleInput{Current: cur, Ready: rapid.IntRange(0, cur).Draw(t, "ready"), Now: now}
		within := rapid.IntRange(0, 3).Draw(t, "within") == 0 && cur > 0
		if within {
			tol := p.tolerance()
			for _, m := range p.Metrics {
				f := 1 + rapid.Float64Range(-tol*0.99, tol*0.99).Draw(t, "near")
				v := MetricValue{Name: m.Name, Value: f * m.Target, Reported: cur}
				if m.Name == MetricQuery {
					v.Value *= float64(cur)
				}
				in.Metrics = append(in.Metrics, v)
			}
		} else {
			in.Metrics = genMetrics(t, p, cur)
		}
		// Half the time the history is low, so that drops happen.
		top := p.Max + 5
		if rapid.Bool().Draw(t, "low-history") {
			top = rapid.IntRange(0, cur).Draw(t, "history-top")
		}
		for i := rapid.IntRange(0, 6).Draw(t, "history"); i > 0; i-- {
			in.History = append(in.History, Recommendation{
				At:       now.Add(-time.Duration(rapid.IntRange(0, 600).Draw(t, "age-s")) * time.Second),
				Replicas: rapid.IntRange(0, top).Draw(t, "rec"),
				Current:  cur, Ready: in.Ready,
			})
		}
		d := DecideScale(p, in)
		lo, hi := bounds(p, now)
		inBounds := cur >= lo && cur <= hi
		if d.Desired < lo || d.Desired > hi {
			t.Fatalf("(a) desired %d outside [%d, %d]: %s", d.Desired, lo, hi, d.Reason)
		}
		if within && inBounds && d.Desired != cur {
			t.Fatalf("(b) within tolerance, desired %d != current %d: %s", d.Desired, cur, d.Reason)
		}
		anyMissing := false
		for _, m := range in.Metrics {
			anyMissing = anyMissing || m.Missing
		}
		if anyMissing && inBounds && d.Desired < cur {
			t.Fatalf("(c) a metric is missing, yet %d → %d: %s", cur, d.Desired, d.Reason)
		}
		if step := max(DefaultMaxStepUp, cur); d.Desired > max(cur+step, lo) {
			t.Fatalf("(d) %d → %d, more than %d up (min %d): %s", cur, d.Desired, step, lo, d.Reason)
		}
		if d.Desired < cur && cur <= hi {
			stab := p.stabilization()
			seen := false
			for _, h := range in.History {
				if h.At.After(now.Add(-stab)) {
					seen = true
					if h.Replicas > d.Desired && d.Desired >= lo {
						t.Fatalf("(e) dropped to %d with %d recommended %s ago: %s", d.Desired, h.Replicas, now.Sub(h.At), d.Reason)
					}
				}
			}
			if !seen {
				t.Fatalf("(e) dropped %d → %d with no recommendation in the window: %s", cur, d.Desired, d.Reason)
			}
		}
		if n := len(d.History); n == 0 || !d.History[n-1].At.Equal(now) {
			t.Fatalf("(f) history does not end now: %+v", d.History)
		}
		highest, seen := d.History[len(d.History)-1].Replicas, false
		for _, h := range in.History {
			if h.At.After(now.Add(-p.stabilization())) {
				highest, seen = max(highest, h.Replicas), true
			}
		}
		if seen && highest < cur && cur > lo && cur <= hi && d.Desired >= cur {
			t.Fatalf("(g) every recommendation of the window is at most %d, yet %d → %d: %s", highest, cur, d.Desired, d.Reason)
		}
		for _, h := range d.History {
			if !h.At.After(now.Add(-max(p.stabilization(), 2*p.window()))) {
				t.Fatalf("(f) history keeps %s, older than the windows", h.At)
			}
		}
		if d.Reason == "" {
			t.Fatalf("no reason")
		}
	})
}

// TestDecideScaleSequence runs random loads through a sequence of
// decisions, 5 s apart, each applying the last (Ready follows at once),
// and checks against its own record of recommendations that a drop only
// happens once every recommendation of the whole stabilization window is
// at or under the new count, and never before one full window has passed
// since the first decision.
func TestDecideScaleSequence(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := genScalePolicy(t)
		p.Windows = nil // bounds move with windows; (a) covers them
		stab := p.stabilization()
		type rec struct {
			at time.Time
			n  int
		}
		var recs []rec
		cur := rapid.IntRange(p.Min, p.Max).Draw(t, "start")
		var hist []Recommendation
		start := scaleNow
		level := rapid.Float64Range(0, 3).Draw(t, "level")
		for i := 0; i < 150; i++ {
			now := start.Add(time.Duration(i) * 5 * time.Second)
			if rapid.IntRange(0, 20).Draw(t, "shift") == 0 {
				level = rapid.Float64Range(0, 3).Draw(t, "level")
			}
			var ms []MetricValue
			for _, m := range p.Metrics {
				v := MetricValue{Name: m.Name, Value: level * m.Target, Reported: cur}
				if m.Name == MetricQuery {
					v.Value *= float64(cur)
				}
				v.Missing = rapid.IntRange(0, 30).Draw(t, "missing") == 0
				ms = append(ms, v)
			}
			d := DecideScale(p, ScaleInput{Current: cur, Ready: cur, Metrics: ms, History: hist, Now: now})
			recs = append(recs, rec{now, d.History[len(d.History)-1].Replicas})
			if d.Desired < cur {
				if now.Sub(start) < stab {
					t.Fatalf("step %d: dropped %d → %d after %s, before one window (%s)", i, cur, d.Desired, now.Sub(start), stab)
				}
				for _, r := range recs {
					if r.at.After(now.Add(-stab)) && r.n > d.Desired && d.Desired > p.Min {
						t.Fatalf("step %d: dropped to %d while %d was recommended %s ago", i, d.Desired, r.n, now.Sub(r.at))
					}
				}
			}
			cur, hist = d.Desired, d.History
		}
	})
}
