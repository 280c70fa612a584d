package coordinator

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Scale-in defaults. Each carries the reason for its value.
const (
	// DefaultScaleDownUtilizationThreshold: only a worker with less than
	// half of its memory reserved is worth emptying (cluster-autoscaler's
	// default too).
	DefaultScaleDownUtilizationThreshold = 0.5
	// DefaultScaleDownDelayAfterAdd keeps a new worker for 10 minutes: the
	// load that made us scale out often comes back.
	DefaultScaleDownDelayAfterAdd = 10 * time.Minute
	// DefaultScaleDownUnneededTime: a worker must be removable for 2
	// minutes in a row before it goes, so a short dip removes nothing.
	DefaultScaleDownUnneededTime = 2 * time.Minute
	// DefaultMaxNonEmptyPerRound drains one worker with containers per
	// round, so a mistake moves little; empty workers may go together.
	DefaultMaxNonEmptyPerRound = 1
)

// Resident is a container on a worker, as consolidation sees it.
type Resident struct {
	Name        string
	Tags        []string // worker tags it requires
	Memory      int64
	Relocatable bool
}

// Node is a worker with what consolidation needs beyond placement.
type Node struct {
	Worker
	JoinedAt time.Time
	// UnneededSince is when the worker was first seen removable in an
	// unbroken run of rounds; zero if it was not removable last round.
	UnneededSince time.Time
	Residents     []Resident
}

// ConsolidateOptions tune scale-in.
type ConsolidateOptions struct {
	Placement     Options
	Threshold     float64
	DelayAfterAdd time.Duration
	UnneededTime  time.Duration
	// MinPerRole keeps at least this many workers of a role.
	MinPerRole  map[string]int
	MaxNonEmpty int
	// Manual rounds (asked for by a user) skip the waiting rules (delay
	// after scale-out, unneeded for a while), never the safety rules.
	Manual bool
	// UsageLimit (zero = off) keeps a worker whose removal would push the
	// real use of its role's remaining workers above the limit (its For
	// is not used here).
	UsageLimit UsageLimit
}

// DefaultConsolidateOptions returns the defaults above.
func DefaultConsolidateOptions() ConsolidateOptions {
	return ConsolidateOptions{
		Placement: DefaultOptions(), Threshold: DefaultScaleDownUtilizationThreshold,
		DelayAfterAdd: DefaultScaleDownDelayAfterAdd, UnneededTime: DefaultScaleDownUnneededTime,
		MaxNonEmpty: DefaultMaxNonEmptyPerRound,
	}
}

// Move relocates one container.
type Move struct {
	Container string `json:"container"`
	Memory    int64  `json:"memory"`
	From      string `json:"from"`
	To        string `json:"to"`
	Reason    string `json:"reason"`
}

// Skip says why a worker is not removed this round.
type Skip struct {
	Worker string `json:"worker"`
	Reason string `json:"reason"`
}

// ConsolidationPlan is what one round should do.
type ConsolidationPlan struct {
	// Remove lists the workers to drain and terminate, least utilized first.
	Remove []string `json:"remove"`
	// Moves relocate every container of the workers in Remove.
	Moves []Move `json:"moves"`
	// Unneeded lists every worker that passes the safety rules and the
	// threshold now, waiting rules aside: the caller tracks since when.
	Unneeded []string `json:"unneeded"`
	// Skipped gives every other worker's reason.
	Skipped []Skip `json:"skipped"`
}

// Utilization is the fraction of a worker's capacity that is reserved.
func Utilization(w *Worker) float64 {
	if w.Capacity <= 0 {
		return 1
	}
	return float64(w.Reserved) / float64(w.Capacity)
}

// PlanConsolidation picks the workers to remove this round. Candidates go
// least utilized first (by reserved memory; ties: actual use, then the
// younger worker, then name). A worker is never removed while it is
// draining, holds a container that is not relocatable, or is one of the
// last workers of its role under MinPerRole; it is removed only if its
// utilization is under Threshold, and (unless Manual) it is older than
// DelayAfterAdd and has been unneeded for UnneededTime. A worker with
// containers is removed only if all of them fit on the remaining workers,
// placed together with the placement code, largest first. With a
// UsageLimit, a worker is kept when its role's load would be too much for
// the role's remaining workers (see roleLoad.guard).
func PlanConsolidation(nodes []Node, now time.Time, o ConsolidateOptions) ConsolidationPlan {
	var plan ConsolidationPlan
	if o.MaxNonEmpty == 0 {
		o.MaxNonEmpty = DefaultMaxNonEmptyPerRound
	}
	order := make([]int, len(nodes))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		x, y := &nodes[order[a]], &nodes[order[b]]
		ux, uy := Utilization(&x.Worker), Utilization(&y.Worker)
		if ux != uy {
			return ux < uy
		}
		if x.Used != y.Used {
			return x.Used < y.Used
		}
		if !x.JoinedAt.Equal(y.JoinedAt) {
			return x.JoinedAt.After(y.JoinedAt)
		}
		return x.Name < y.Name
	})
	// Workers already draining are on their way out: counting them toward
	// MinPerRole would let a role fall below its minimum once they go.
	perRole := map[string]int{}
	for i := range nodes {
		if !nodes[i].Draining {
			perRole[RoleOf(nodes[i].Tags)]++
		}
	}
	loads := roleLoads(nodes, order)
	removed := map[string]bool{}
	targets := map[string]bool{}
	// base is the remaining cluster: reservations include every move
	// planned so far, so two moves never count on the same free memory.
	base := make([]Worker, len(nodes))
	for i := range nodes {
		base[i] = nodes[i].Worker
	}
	nonEmpty := 0
	for _, i := range order {
		n := &nodes[i]
		skip := func(format string, a ...any) {
			plan.Skipped = append(plan.Skipped, Skip{Worker: n.Name, Reason: fmt.Sprintf(format, a...)})
		}
		role := RoleOf(n.Tags)
		u := Utilization(&n.Worker)
		if n.Draining {
			skip("already draining")
			continue
		}
		if targets[n.Name] {
			skip("receives moved containers this round")
			continue
		}
		if u >= o.Threshold {
			skip("utilization %.2f is not under %.2f", u, o.Threshold)
			continue
		}
		if r := pinned(n.Residents); r != "" {
			skip("%s is not relocatable", r)
			continue
		}
		if min := o.MinPerRole[role]; min > 0 && perRole[role] <= min {
			skip("one of the last %d workers of role=%s (minimum %d)", perRole[role], role, min)
			continue
		}
		if why := loads[role].guard(o.UsageLimit, role, &n.Worker); why != "" {
			skip("%s", why)
			continue
		}
		plan.Unneeded = append(plan.Unneeded, n.Name)
		if !o.Manual {
			if age := now.Sub(n.JoinedAt); age < o.DelayAfterAdd {
				skip("joined %s ago; scale-in waits %s after scale-out", age.Round(time.Second), o.DelayAfterAdd)
				continue
			}
			if n.UnneededSince.IsZero() || now.Sub(n.UnneededSince) < o.UnneededTime {
				since := time.Duration(0)
				if !n.UnneededSince.IsZero() {
					since = now.Sub(n.UnneededSince)
				}
				skip("unneeded for %s; must be for %s", since.Round(time.Second), o.UnneededTime)
				continue
			}
		}
		if len(n.Residents) == 0 {
			removed[n.Name] = true
			perRole[role]--
			loads[role].remove(&n.Worker)
			plan.Remove = append(plan.Remove, n.Name)
			continue
		}
		if nonEmpty >= o.MaxNonEmpty {
			skip("only %d worker with containers is drained per round", o.MaxNonEmpty)
			continue
		}
		moves, newBase, why := simulate(base, n, removed, o.Placement)
		if why != "" {
			skip("its containers cannot all move: %s", why)
			continue
		}
		base = newBase
		nonEmpty++
		removed[n.Name] = true
		perRole[role]--
		loads[role].remove(&n.Worker)
		for _, m := range moves {
			targets[m.To] = true
		}
		plan.Remove = append(plan.Remove, n.Name)
		plan.Moves = append(plan.Moves, moves...)
	}
	return plan
}

// roleLoad is the real use of one role, for the usage guard. The load
// counts every worker of the role, draining ones included (what runs on
// them moves to the others too); the workers left to carry it are those
// that serve: neither draining nor booting, nor removed this round.
type roleLoad struct {
	cpu     float64 // sum of CPUUsed, fractions of each worker's cores
	used    int64   // sum of Used, bytes
	serving int     // workers left to carry the load
	cap     int64   // their total Capacity
}

// roleLoads sums in the candidates' order, which does not depend on the
// order of nodes, so that float rounding cannot make the plan depend on it.
func roleLoads(nodes []Node, order []int) map[string]*roleLoad {
	m := map[string]*roleLoad{}
	for _, i := range order {
		w := &nodes[i].Worker
		l := m[RoleOf(w.Tags)]
		if l == nil {
			l = &roleLoad{}
			m[RoleOf(w.Tags)] = l
		}
		l.cpu += w.CPUUsed
		l.used += w.Used
		if serves(w) {
			l.serving++
			l.cap += w.Capacity
		}
	}
	return m
}

func serves(w *Worker) bool { return !w.Draining && !w.Booting }

// remove takes w out of the workers that carry the load (its load stays:
// it moves to the others).
func (l *roleLoad) remove(w *Worker) {
	if serves(w) {
		l.serving--
		l.cap -= w.Capacity
	}
}

// guard returns why removing w would overload its role, or "". Kept
// simple, as if the role's workers were of one size: the CPU after is the
// role's total CPUUsed over the number of workers left, the memory after
// is its total Used over the Capacity left; each must stay at or under
// its limit.
func (l *roleLoad) guard(lim UsageLimit, role string, w *Worker) string {
	if lim.Off() {
		return ""
	}
	left, capLeft := l.serving, l.cap
	if serves(w) {
		left, capLeft = left-1, capLeft-w.Capacity
	}
	if left <= 0 || capLeft <= 0 {
		if (lim.CPU > 0 && l.cpu > 0) || (lim.Memory > 0 && l.used > 0) {
			return "would leave " + roleLabel(role) + " no worker to carry its load"
		}
		return ""
	}
	if cpu := l.cpu / float64(left); lim.CPU > 0 && above(cpu, lim.CPU) {
		v, ls := pcts(cpu, lim.CPU)
		return fmt.Sprintf("would push %s to %s CPU, above the %s limit", roleLabel(role), v, ls)
	}
	if mem := float64(l.used) / float64(capLeft); lim.Memory > 0 && above(mem, lim.Memory) {
		v, ls := pcts(mem, lim.Memory)
		return fmt.Sprintf("would push %s to %s memory use, above the %s limit", roleLabel(role), v, ls)
	}
	return ""
}

func pinned(rs []Resident) string {
	for _, r := range rs {
		if !r.Relocatable {
			return r.Name
		}
	}
	return ""
}

// simulate places every resident of n on the workers that remain (not n,
// not removed), together and largest first.
func simulate(base []Worker, n *Node, removed map[string]bool, o Options) ([]Move, []Worker, string) {
	var rest []Worker
	for _, w := range base {
		if w.Name != n.Name && !removed[w.Name] {
			rest = append(rest, w)
		}
	}
	reqs := make([]Request, len(n.Residents))
	for i, r := range n.Residents {
		reqs[i] = Request{Name: r.Name, Tags: r.Tags, Memory: r.Memory}
	}
	p := NewPlacer(&Snapshot{Workers: rest}, o)
	idx := make([]int, len(reqs))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		if reqs[idx[a]].Memory != reqs[idx[b]].Memory {
			return reqs[idx[a]].Memory > reqs[idx[b]].Memory
		}
		return reqs[idx[a]].Name < reqs[idx[b]].Name
	})
	var moves []Move
	var fails []string
	for _, i := range idx {
		d := p.Place(reqs[i])
		if !d.Placed() {
			// One container that cannot move is enough to keep the
			// worker; stop here rather than explain every other one.
			fails = append(fails, d.Reason)
			break
		}
		p.Commit(d)
		moves = append(moves, Move{Container: reqs[i].Name, Memory: reqs[i].Memory, From: n.Name, To: d.Worker, Reason: d.Reason})
	}
	if len(fails) > 0 {
		return nil, nil, strings.Join(fails, "; ")
	}
	// Carry the new reservations over to the full list.
	after := map[string]Worker{}
	for _, w := range p.Snapshot().Workers {
		after[w.Name] = w
	}
	out := make([]Worker, len(base))
	for i, w := range base {
		if a, ok := after[w.Name]; ok {
			out[i] = a
		} else {
			out[i] = w
		}
	}
	return moves, out, ""
}
