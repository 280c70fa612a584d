package coordinator

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// DefaultAlertFor is how long a role must stay above its usage limit
// before the alert fires: 2 minutes outlasts a deploy, a cron job or a
// garbage collection burst, yet a real overload is reported well before
// anyone would notice it otherwise (Prometheus alerting rules commonly
// use the same "for: 2m").
const DefaultAlertFor = 2 * time.Minute

// Metric names of usage alerts (RoleAlert.Metric and the keys of since).
const (
	UsageCPU    = "cpu"
	UsageMemory = "memory"
)

// UsageLimit is the real use (not reservations) above which a worker is
// hot, a role raises an alert, and consolidation keeps its workers.
type UsageLimit struct {
	CPU    float64       // fraction 0..1 of a worker's cores; 0 = off
	Memory float64       // fraction 0..1 of a worker's capacity really used; 0 = off
	For    time.Duration // how long a role must stay above before an alert fires; 0 → DefaultAlertFor
}

// Off reports whether neither limit is set.
func (l UsageLimit) Off() bool { return l.CPU <= 0 && l.Memory <= 0 }

// Validate checks the limit; every error names the field and the value.
func (l UsageLimit) Validate() error {
	if !(l.CPU >= 0 && l.CPU <= 1) {
		return fmt.Errorf("usage limit cpu %v: must be a fraction from 0 (off) to 1", l.CPU)
	}
	if !(l.Memory >= 0 && l.Memory <= 1) {
		return fmt.Errorf("usage limit memory %v: must be a fraction from 0 (off) to 1", l.Memory)
	}
	if l.For < 0 {
		return fmt.Errorf("usage limit for %s: must not be negative", l.For)
	}
	return nil
}

// Hot reports whether w's own real use is above the limit: its CPUUsed
// above CPU, or its Used/Capacity above Memory. The manager uses it to set
// Worker.Hot.
func (l UsageLimit) Hot(w *Worker) bool {
	if l.CPU > 0 && above(w.CPUUsed, l.CPU) {
		return true
	}
	return l.Memory > 0 && w.Capacity > 0 && above(float64(w.Used)/float64(w.Capacity), l.Memory)
}

// RoleAlert is one role whose mean real use is above the limit: pending
// (Firing false) until it has been above for the limit's For.
type RoleAlert struct {
	Role   string    `json:"role"`
	Metric string    `json:"metric"` // UsageCPU or UsageMemory
	Value  float64   `json:"value"`  // the role's mean use, fraction 0..1
	Limit  float64   `json:"limit"`
	Since  time.Time `json:"since"` // first seen above, in this unbroken run
	Firing bool      `json:"firing"`
	Reason string    `json:"reason"`
}

// roleUse is the real use of one role's serving workers.
type roleUse struct {
	workers   int
	cpu       float64 // sum of CPUUsed
	used, cap int64   // sums of Used and Capacity
}

// RoleAlerts evaluates the mean real use of each role's workers (those
// neither draining nor booting; the role is the "role=" tag, "" for none)
// against limit. CPU is the plain mean of the workers' CPUUsed (a worker's
// size in cores is not known here); memory is the role's total Used over
// its total Capacity. since carries, per "role/metric" key, when that role
// first went above the limit; the caller keeps the returned map between
// calls (since itself is not changed). A key is dropped as soon as its
// role is back at or under the limit, so the next rise starts the wait
// over. An alert fires once its role has been above for limit.For
// (0 → DefaultAlertFor). Alerts, pending ones included, come sorted by
// role then metric.
func RoleAlerts(limit UsageLimit, workers []Worker, since map[string]time.Time, now time.Time) ([]RoleAlert, map[string]time.Time) {
	next := map[string]time.Time{}
	if limit.Off() {
		return nil, next
	}
	wait := limit.For
	if wait <= 0 {
		wait = DefaultAlertFor
	}
	roles := map[string]*roleUse{}
	for i := range workers {
		w := &workers[i]
		if w.Draining || w.Booting {
			continue
		}
		r := roles[RoleOf(w.Tags)]
		if r == nil {
			r = &roleUse{}
			roles[RoleOf(w.Tags)] = r
		}
		r.workers++
		r.cpu += w.CPUUsed
		r.used += w.Used
		r.cap += w.Capacity
	}
	names := make([]string, 0, len(roles))
	for role := range roles {
		names = append(names, role)
	}
	sort.Strings(names)
	var out []RoleAlert
	for _, role := range names {
		r := roles[role]
		check := func(metric string, value, lim float64) {
			if lim <= 0 || math.IsNaN(value) || !above(value, lim) {
				return
			}
			key := role + "/" + metric
			from, ok := since[key]
			if !ok || from.After(now) {
				from = now
			}
			next[key] = from
			a := RoleAlert{Role: role, Metric: metric, Value: value, Limit: lim, Since: from, Firing: now.Sub(from) >= wait}
			above := now.Sub(from).Round(time.Second)
			vs, ls := pcts(value, lim)
			head := fmt.Sprintf("%s: %s %s on average over %s, above the %s limit for %s",
				roleLabel(role), vs, metric, plural(r.workers, "worker"), ls, above)
			if a.Firing {
				a.Reason = head
			} else {
				a.Reason = head + " (alert after " + wait.String() + ")"
			}
			out = append(out, a)
		}
		check(UsageCPU, r.cpu/float64(r.workers), limit.CPU)
		if r.cap > 0 {
			check(UsageMemory, float64(r.used)/float64(r.cap), limit.Memory)
		}
	}
	return out, next
}

// above reports whether a use is above a limit by more than float
// rounding (1e-9), so that 0.1+0.2+0.3 of three workers is not above 0.6
// of two, and the answer does not depend on the order of a sum.
func above(v, lim float64) bool { return v > lim+1e-9 }

// roleLabel names a role in reasons: "role=app", or "workers without a
// role".
func roleLabel(role string) string {
	if role == "" {
		return "workers without a role"
	}
	return "role=" + role
}

// pct renders a fraction as a whole percentage ("85%").
func pct(f float64) string { return fmt.Sprintf("%.0f%%", f*100) }

// pcts renders a value and the limit it is above as percentages, with as
// many decimals (up to 2) as it takes to tell them apart: "80.4%" and
// "80%", never "80%" above "80%".
func pcts(v, lim float64) (string, string) {
	for prec := 0; prec < 2; prec++ {
		if a, b := fmt.Sprintf("%.*f", prec, v*100), fmt.Sprintf("%.*f", prec, lim*100); a != b {
			return a + "%", pct(lim)
		}
	}
	return fmt.Sprintf("%.2f%%", v*100), pct(lim)
}

// plural renders "1 worker", "3 workers".
func plural(n int, one string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %ss", n, one)
}
