package coordinator

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/micado-scale/micado/definitions/bytesize"
)

// Scale-in defaults. Each carries the reason for its value.
const (
	// DefaultScaleDownUtilizationThreshold: workers with less than half of
	// their memory reserved are tried first (cluster-autoscaler's
	// threshold). It is a hint, not a limit: a fuller worker is emptied
	// too when its containers fit on the others, since that frees a worker
	// all the same, and a threshold would leave a fragmented cluster at
	// about 1.5 times the workers a fresh packing needs.
	DefaultScaleDownUtilizationThreshold = 0.5
	// DefaultScaleDownDelayAfterAdd keeps a new worker for 10 minutes: the
	// load that made us scale out often comes back.
	DefaultScaleDownDelayAfterAdd = 10 * time.Minute
	// DefaultScaleDownUnneededTime: a worker must be removable for 2
	// minutes in a row before it goes, so a short dip removes nothing.
	DefaultScaleDownUnneededTime = 2 * time.Minute
	// DefaultMaxNonEmptyPerRound is 0, no cap for the whole cluster: the
	// per-role disruption budget bounds a round, so a fragmented cluster is
	// repacked in a few rounds instead of one round per worker.
	DefaultMaxNonEmptyPerRound = 0
	// DefaultBudgetPercent lets a tenth of a role's workers, rounded up,
	// drain at once (Karpenter's default budget): a small role still
	// drains one worker at a time, and a bad plan disrupts a tenth of a
	// role at most.
	DefaultBudgetPercent = 0.10
	// DefaultMinSaving is 0, any saving: the waiting rules and the budget
	// already bound churn, and prices are often unknown (0).
	DefaultMinSaving = 0.0
	// maxPlanWork bounds the placements one round tries, about 0.2 s on
	// one core (0.4–0.5 µs a placement, its undo included; a round at
	// 5,000 workers and 100,000 containers takes about 110,000): beyond it
	// the remaining candidates are kept, with a reason, until the next
	// round, so a round's time stays bounded whatever the cluster.
	maxPlanWork = 400_000
)

// Resident is a container on a worker, as consolidation sees it.
type Resident struct {
	Name        string
	Tags        []string // worker tags it requires
	Memory      int64
	Relocatable bool
}

// ScaleInWorker is a worker with what consolidation needs beyond placement.
type ScaleInWorker struct {
	Worker
	JoinedAt time.Time
	// UnneededSince is when the worker was first seen removable in an
	// unbroken run of rounds; zero if it was not removable last round.
	UnneededSince time.Time
	Residents     []Resident
}

// Budget bounds how many workers of one role drain at once: the workers
// already draining count, and so do those this round removes or replaces
// that hold containers. An empty worker drains nothing and disrupts
// nothing, so it is outside the budget. With both fields set, the smaller
// allowance applies (as with several Karpenter budgets). The zero Budget
// means DefaultBudget.
type Budget struct {
	// Workers is the most workers of a role draining at once (0: no such
	// limit).
	Workers int `json:"workers,omitempty"`
	// Percent is the most workers of a role draining at once as a share of
	// the role's workers, a fraction (0.10 = 10%) rounded up, so that a
	// role may always drain one (0: no such limit).
	Percent float64 `json:"percent,omitempty"`
}

// DefaultBudget returns the budget used when none is given.
func DefaultBudget() Budget { return Budget{Percent: DefaultBudgetPercent} }

// Allowance returns how many of a role's n workers may drain at once.
func (b Budget) Allowance(n int) int {
	a := math.MaxInt
	if b.Workers > 0 {
		a = b.Workers
	}
	if b.Percent > 0 {
		a = min(a, int(math.Ceil(b.Percent*float64(n)-1e-9)))
	}
	return a
}

// describe renders the budget for reasons: "10% of 4 workers", "3".
func (b Budget) describe(n int) string {
	switch {
	case b.Percent > 0 && (b.Workers <= 0 || b.Allowance(n) < b.Workers):
		return fmt.Sprintf("%s of %s, rounded up", pct(b.Percent), plural(n, "worker"))
	default:
		return "at most " + strconv.Itoa(b.Workers)
	}
}

// ConsolidateOptions tune scale-in.
type ConsolidateOptions struct {
	// Placement gives the headroom moves keep; its Strategy is not used:
	// moves always pack (best fit), whatever the strategy for launches.
	Placement Options
	// Threshold is a hint: workers whose utilization is under it are tried
	// first. A fuller worker is emptied too when its containers fit on the
	// others.
	Threshold     float64
	DelayAfterAdd time.Duration
	UnneededTime  time.Duration
	// MinPerRole keeps at least this many workers of a role.
	MinPerRole map[string]int
	// MaxNonEmpty caps the workers with containers drained (removed or
	// replaced) per round in the whole cluster; 0 = no cap but the Budget.
	MaxNonEmpty int
	// Manual rounds (asked for by a user) skip the waiting rules (delay
	// after scale-out, unneeded for a while), never the safety rules.
	Manual bool
	// UsageLimit (zero = off) keeps a worker whose removal would push the
	// real use of its role's remaining workers above the limit (its For
	// is not used here).
	UsageLimit UsageLimit
	// Budget bounds the workers of a role draining at once; zero means
	// DefaultBudget. It is a safety rule: Manual rounds keep it.
	Budget Budget
	// MinSaving, per hour in the currency of Worker.Price: a worker with
	// containers and a known price is removed only if that saves at least
	// this much, and any worker is replaced only if that does, so that
	// containers are not moved for pennies. 0: any saving.
	MinSaving float64
	// Types are the instance types a worker may be replaced by: a worker
	// that is kept, whose containers all fit a cheaper type (headroom
	// included), is replaced by it (nil: no replacement). Only types and
	// workers with a price are considered.
	Types []InstanceType
}

// DefaultConsolidateOptions returns the defaults above.
func DefaultConsolidateOptions() ConsolidateOptions {
	return ConsolidateOptions{
		Placement: DefaultOptions(), Threshold: DefaultScaleDownUtilizationThreshold,
		DelayAfterAdd: DefaultScaleDownDelayAfterAdd, UnneededTime: DefaultScaleDownUnneededTime,
		MaxNonEmpty: DefaultMaxNonEmptyPerRound, Budget: DefaultBudget(), MinSaving: DefaultMinSaving,
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

// Removal is one worker a round removes, with what that saves.
type Removal struct {
	Worker string `json:"worker"`
	// Saving is the worker's price per hour (0 when unknown).
	Saving float64 `json:"saving"`
	// Moves counts its containers, all moved before it goes.
	Moves  int    `json:"moves"`
	Reason string `json:"reason"`
}

// Replacement is a worker to replace by a cheaper instance: create an
// instance of Type carrying Tags, move every container of Worker onto it
// (make before break), then terminate Worker.
type Replacement struct {
	Worker string       `json:"worker"`
	Type   InstanceType `json:"type"`
	Tags   []string     `json:"tags"`
	// Containers names the containers to move, largest first.
	Containers []string `json:"containers"`
	// Saving is the worker's price less the type's, per hour.
	Saving float64 `json:"saving"`
	Reason string  `json:"reason"`
}

// ConsolidationPlan is what one round should do.
type ConsolidationPlan struct {
	// Remove lists the workers to drain and terminate, in the order they
	// were chosen (empty and least utilized first).
	Remove []string `json:"remove"`
	// Moves relocate every container of the workers in Remove, onto
	// workers that stay.
	Moves []Move `json:"moves"`
	// Unneeded lists every worker that the round would remove or replace
	// if the waiting rules (and the budget) allowed it: the caller tracks
	// since when.
	Unneeded []string `json:"unneeded"`
	// Skipped gives every other worker's reason (a worker is in exactly
	// one of Remove, Replace and Skipped).
	Skipped []Skip `json:"skipped"`
	// Removals gives, for each worker of Remove and in its order, what
	// removing it saves and why it can go.
	Removals []Removal `json:"removals"`
	// Replace lists the workers to replace by a cheaper instance.
	Replace []Replacement `json:"replace,omitempty"`
	// SavingPerHour is what the plan saves in all: the removed workers'
	// prices and the replacements' savings (unknown prices count 0).
	SavingPerHour float64 `json:"saving_per_hour"`
}

// Utilization is the fraction of a worker's capacity that is reserved.
func Utilization(w *Worker) float64 {
	if w.Capacity <= 0 {
		return 1
	}
	return float64(w.Reserved) / float64(w.Capacity)
}

// FormatPrice renders a price per hour: "$0.096/h".
func FormatPrice(p float64) string {
	return "$" + strconv.FormatFloat(math.Round(p*1e4)/1e4, 'f', -1, 64) + "/h"
}

// keepKind is the rule that kept a worker, for what may follow in the
// round (a replacement).
type keepKind uint8

const (
	keptNot keepKind = iota
	keptDraining
	keptTarget
	keptPinned
	keptMinPerRole
	keptGuard
	keptSaving
	keptWaiting
	keptBudget
	keptCannotMove
	keptWork
)

// consNode is what a round knows of one node.
type consNode struct {
	role   string
	res    []int32 // residents, largest first, then by name
	moving int64   // Σ resident memory
	pinned string  // why it can never be emptied, or ""
	loaded bool    // holds containers or reservations
	target bool    // receives moves in the planned repack
	// actedTarget: receives moves this round.
	actedTarget bool
	// planned: emptied by the planned repack; victim: removed this round.
	planned bool
	victim  bool
	kind    keepKind
	reason  string
	moves   []trialMove
}

// trialMove is one placement of a trial: resident res of the candidate
// goes to worker to, which had free bytes free before.
type trialMove struct {
	res  int32
	ord  int32 // place of res in the worker's order
	to   int32
	free int64
}

// PlanConsolidation plans one scale-in round for the whole cluster at once.
//
// It first plans the repack: which workers to empty and where each of
// their containers goes. Candidates go in this order: empty workers; then
// those under Threshold (a hint only: a fuller worker is emptied too when
// its containers fit elsewhere); then, when prices are known, the most
// expensive per byte; then by their largest container, smallest first
// (workers of small containers are the easiest to empty and their
// containers fill the holes that workers of large ones leave, as in a
// first-fit-decreasing packing); then by reserved memory over price
// (utilization when no price is known), more expensive, less actually
// used, younger, and by name. The longest prefix of the candidates whose
// containers, taken together largest first, all fit on the workers that
// stay is emptied; then every other candidate is tried alone on the room
// left. Each container goes to the best fit (the least free memory that
// holds it, a worker that is not hot first), whatever the launch strategy;
// containers on workers that stay never move. Round after round, a
// fragmented cluster ends at the worker count of a fresh
// first-fit-decreasing packing (see TestRepackFromFragmented).
//
// A worker is never emptied while it is draining, receives moved
// containers, holds a container that is not relocatable (or reservations
// no listed container accounts for), or is one of the last workers of its
// role under MinPerRole; nor when its role's load would be too much for
// its remaining workers (UsageLimit, see roleLoad.guard), nor when it
// holds containers and a known price under MinSaving. The workers the
// repack empties are Unneeded; those that pass the waiting rules (unless
// Manual: older than DelayAfterAdd, unneeded for UnneededTime) go this
// round, in order, workers with containers within Budget per role and
// MaxNonEmpty per round (empty workers may all go). The others keep the
// room planned for their containers and wait their turn.
//
// Then, with Types, each kept worker that could drain but not go (its
// containers do not fit elsewhere, or its role needs it) is replaced by
// the cheapest type that holds its reservations with headroom, when that
// saves at least MinSaving; the same waiting rules and budget apply.
func PlanConsolidation(nodes []ScaleInWorker, now time.Time, o ConsolidateOptions) ConsolidationPlan {
	if o.Budget == (Budget{}) {
		o.Budget = DefaultBudget()
	}
	r := newRound(nodes, now, o)
	r.repack()
	r.replace()
	return r.finish()
}

// round is one consolidation round in the making.
type round struct {
	nodes []ScaleInWorker
	now   time.Time
	o     ConsolidateOptions
	info  []consNode
	order []int32
	pool  *pool
	// perRole counts the workers of each role that are not draining and
	// not removed, for MinPerRole.
	perRole map[string]int
	loads   map[string]*roleLoad
	// roleSize and budgetLeft: workers of each role, and how many more
	// with containers may drain this round.
	roleSize   map[string]int
	budgetLeft map[string]int
	nonEmpty   int // workers with containers drained this round
	work       int // containers tried so far
	unneeded   []int32
	victims    []int32
	replacing  []Replacement
	replaced   map[int32]bool
}

func newRound(nodes []ScaleInWorker, now time.Time, o ConsolidateOptions) *round {
	r := &round{nodes: nodes, now: now, o: o, info: make([]consNode, len(nodes)),
		perRole: map[string]int{}, roleSize: map[string]int{}, budgetLeft: map[string]int{}, replaced: map[int32]bool{}}
	draining := map[string]int{}
	for i := range nodes {
		n := &nodes[i]
		c := &r.info[i]
		c.role = RoleOf(n.Tags)
		r.roleSize[c.role]++
		if n.Draining {
			if n.Reserved > 0 || n.Containers > 0 || len(n.Residents) > 0 {
				draining[c.role]++
			}
		} else {
			// Workers already draining are on their way out: counting them
			// toward MinPerRole would let a role fall below its minimum
			// once they go.
			r.perRole[c.role]++
		}
		c.res = make([]int32, len(n.Residents))
		for k := range n.Residents {
			c.res[k] = int32(k)
			c.moving += n.Residents[k].Memory
		}
		rs := n.Residents
		slices.SortStableFunc(c.res, func(a, b int32) int {
			if rs[a].Memory != rs[b].Memory {
				if rs[a].Memory > rs[b].Memory {
					return -1
				}
				return 1
			}
			return strings.Compare(rs[a].Name, rs[b].Name)
		})
		c.loaded = len(rs) > 0 || n.Reserved > 0
		if p := pinned(rs); p != "" {
			c.pinned = p + " is not relocatable"
		} else if n.Reserved > c.moving {
			c.pinned = bytesize.Format(n.Reserved-c.moving) + " of its reservation belongs to no container it lists"
		}
	}
	// The average price per byte, summed in name order so that rounding
	// does not depend on the order of nodes.
	byName := make([]int32, len(nodes))
	for i := range byName {
		byName[i] = int32(i)
	}
	slices.SortFunc(byName, func(a, b int32) int { return strings.Compare(nodes[a].Name, nodes[b].Name) })
	var priced float64
	var pricedCap int64
	for _, i := range byName {
		if n := &nodes[i]; n.Price > 0 && n.Capacity > 0 {
			priced += n.Price
			pricedCap += n.Capacity
		}
	}
	for role, size := range r.roleSize {
		r.budgetLeft[role] = max(o.Budget.Allowance(size)-draining[role], 0)
	}
	// The candidates' order. Without prices, score is utilization, as it
	// always was; with prices, it is the memory to move per unit of price
	// saved, a worker without a price valued at the average price per byte.
	perByte := 0.0
	if pricedCap > 0 {
		perByte = priced / float64(pricedCap)
	}
	score := make([]float64, len(nodes))
	under := make([]bool, len(nodes))
	for i := range nodes {
		w := &nodes[i].Worker
		u := Utilization(w)
		under[i] = u < o.Threshold
		score[i] = u
		if perByte > 0 {
			p := w.Price
			if p <= 0 {
				p = float64(w.Capacity) * perByte
			}
			if p > 0 {
				score[i] = float64(w.Reserved) / p
			} else {
				score[i] = math.Inf(1)
			}
		}
	}
	// The largest container of each worker: workers of small containers
	// are the easiest to empty and their containers fill the holes that
	// the workers of large ones leave, so they go first (a fresh
	// first-fit-decreasing packing keeps the large ones apart too).
	largest := make([]int64, len(nodes))
	for i := range nodes {
		for _, res := range nodes[i].Residents {
			largest[i] = max(largest[i], res.Memory)
		}
	}
	// Workers that may not go yet for their age come last: the repack
	// empties workers that can go now into them rather than the reverse.
	young := make([]bool, len(nodes))
	for i := range nodes {
		young[i] = !o.Manual && now.Sub(nodes[i].JoinedAt) < o.DelayAfterAdd
	}
	// With prices, the workers that cost most per byte go first.
	unit := make([]float64, len(nodes))
	for i := range nodes {
		if w := &nodes[i].Worker; w.Price > 0 && w.Capacity > 0 {
			unit[i] = w.Price / float64(w.Capacity)
		} else if perByte > 0 {
			unit[i] = perByte
		}
	}
	r.order = make([]int32, len(nodes))
	for i := range r.order {
		r.order[i] = int32(i)
	}
	slices.SortStableFunc(r.order, func(a, b int32) int {
		x, y := &nodes[a], &nodes[b]
		switch {
		case r.info[a].loaded != r.info[b].loaded:
			return boolFirst(!r.info[a].loaded)
		case young[a] != young[b]:
			return boolFirst(!young[a])
		case under[a] != under[b]:
			return boolFirst(under[a])
		case unit[a] != unit[b]:
			return cmpF(unit[b], unit[a])
		case largest[a] != largest[b]:
			return cmpF(float64(largest[a]), float64(largest[b]))
		case score[a] != score[b]:
			return cmpF(score[a], score[b])
		case x.Price != y.Price:
			return cmpF(y.Price, x.Price)
		case x.Used != y.Used:
			return cmpF(float64(x.Used), float64(y.Used))
		case !x.JoinedAt.Equal(y.JoinedAt):
			if x.JoinedAt.After(y.JoinedAt) {
				return -1
			}
			return 1
		}
		return strings.Compare(x.Name, y.Name)
	})
	r.loads = roleLoads(nodes, r.order)
	r.pool = newPool(nodes, o.Placement)
	return r
}

func boolFirst(a bool) int {
	if a {
		return -1
	}
	return 1
}

func cmpF(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (r *round) keep(i int32, k keepKind, reason string) {
	r.info[i].kind, r.info[i].reason = k, reason
}

// waitReason says which waiting rule keeps n this round, or "".
func (r *round) waitReason(n *ScaleInWorker) string {
	if r.o.Manual {
		return ""
	}
	if age := r.now.Sub(n.JoinedAt); age < r.o.DelayAfterAdd {
		return fmt.Sprintf("joined %s ago; scale-in waits %s after scale-out", age.Round(time.Second), r.o.DelayAfterAdd)
	}
	if n.UnneededSince.IsZero() || r.now.Sub(n.UnneededSince) < r.o.UnneededTime {
		since := time.Duration(0)
		if !n.UnneededSince.IsZero() {
			since = r.now.Sub(n.UnneededSince)
		}
		return fmt.Sprintf("unneeded for %s; must be for %s", since.Round(time.Second), r.o.UnneededTime)
	}
	return ""
}

// drainLimit says why no more workers of role may drain this round, or "".
func (r *round) drainLimit(role string) string {
	if r.o.MaxNonEmpty > 0 && r.nonEmpty >= r.o.MaxNonEmpty {
		return fmt.Sprintf("only %d worker with containers is drained per round", r.o.MaxNonEmpty)
	}
	if r.budgetLeft[role] <= 0 {
		n := r.roleSize[role]
		return fmt.Sprintf("the disruption budget of %s is used up (%d of its %s may drain at once: %s)",
			roleLabel(role), r.o.Budget.Allowance(n), plural(n, "worker"), r.o.Budget.describe(n))
	}
	return ""
}

// repack plans the round. First the repack: the candidates, in order, that
// may be emptied at all (not draining, nothing pinned, saving enough) are
// taken as a prefix, the longest whose containers, pooled largest first,
// all fit best-fit on the workers that stay (MinPerRole and the usage
// guard skip a candidate of the prefix); then every candidate left is
// tried alone on what room remains. The workers so emptied are unneeded;
// those that pass the waiting rules go this round, within the budget.
func (r *round) repack() {
	var elig []int32
	for _, i := range r.order {
		n, c := &r.nodes[i], &r.info[i]
		switch {
		case n.Draining:
			r.keep(i, keptDraining, "already draining")
		case c.pinned != "":
			r.keep(i, keptPinned, c.pinned)
		case c.loaded && r.o.MinSaving > 0 && n.Price > 0 && n.Price < r.o.MinSaving-1e-9:
			r.keep(i, keptSaving, fmt.Sprintf("removing it saves %s, under the minimum saving of %s", FormatPrice(n.Price), FormatPrice(r.o.MinSaving)))
		default:
			elig = append(elig, i)
		}
	}
	pl := &pooled{elig: elig}
	m := r.longestPrefix(pl)
	r.cover(pl, m)
	r.prefix(r.pool, pl, m, true)
	for _, i := range elig {
		n, c := &r.nodes[i], &r.info[i]
		if c.planned {
			continue
		}
		if c.target {
			r.keep(i, keptTarget, "receives moved containers this round")
			continue
		}
		if k, why := r.admit(i, r.perRole, r.loads); why != "" {
			r.keep(i, k, why)
			continue
		}
		if r.work >= maxPlanWork {
			r.keep(i, keptWork, "not tried: this round's planning work is used up; next round tries again")
			continue
		}
		if why := r.try(i); why != "" {
			r.keep(i, keptCannotMove, "its containers cannot all move: "+why)
			continue
		}
		c.planned = true
		r.perRole[c.role]--
		r.loads[c.role].remove(&n.Worker)
		for _, mv := range c.moves {
			r.info[mv.to].target = true
		}
	}
	r.act(elig)
}

// admit says why candidate i may not be emptied given the workers
// planned out so far (perRole, loads), and which rule that is; or "".
func (r *round) admit(i int32, perRole map[string]int, loads map[string]*roleLoad) (keepKind, string) {
	n, c := &r.nodes[i], &r.info[i]
	if min := r.o.MinPerRole[c.role]; min > 0 && perRole[c.role] <= min {
		return keptMinPerRole, fmt.Sprintf("one of the last %d workers of role=%s (minimum %d)", perRole[c.role], c.role, min)
	}
	if why := loads[c.role].guard(r.o.UsageLimit, c.role, &n.Worker); why != "" {
		return keptGuard, why
	}
	return keptNot, ""
}

// pooledItem is one container of a candidate, for the pooled placement of
// a prefix.
type pooledItem struct {
	mem    int64
	pos    int32   // its worker's place in the candidates
	res    int32   // its index in the worker's Residents
	ord    int32   // its place in the worker's order (largest, then name)
	groups []int32 // the pool's groups that carry its tags
}

// pooled holds the containers of the first upto candidates of elig,
// largest first (then by candidate, then in the worker's own order), each
// with the groups it may go to. It grows with the longest prefix tried,
// so a round where little can go does not sort every container.
type pooled struct {
	elig  []int32
	items []pooledItem
	upto  int
}

func cmpPooled(a, b pooledItem) int {
	switch {
	case a.mem != b.mem:
		return cmpF(float64(b.mem), float64(a.mem))
	case a.pos != b.pos:
		return int(a.pos - b.pos)
	}
	return int(a.ord - b.ord)
}

// cover makes items cover the first m candidates.
func (r *round) cover(pl *pooled, m int) {
	if m <= pl.upto {
		return
	}
	var add []pooledItem
	for k := pl.upto; k < m; k++ {
		i := pl.elig[k]
		for o, x := range r.info[i].res {
			res := &r.nodes[i].Residents[x]
			add = append(add, pooledItem{mem: res.Memory, pos: int32(k), res: x, ord: int32(o), groups: r.pool.groupsFor(res.Tags)})
		}
	}
	slices.SortFunc(add, cmpPooled)
	merged := make([]pooledItem, 0, len(pl.items)+len(add))
	a, b := pl.items, add
	for len(a) > 0 && len(b) > 0 {
		if cmpPooled(a[0], b[0]) <= 0 {
			merged, a = append(merged, a[0]), a[1:]
		} else {
			merged, b = append(merged, b[0]), b[1:]
		}
	}
	pl.items = append(append(merged, a...), b...)
	pl.upto = m
}

// longestPrefix finds the longest prefix of elig that prefix accepts,
// doubling then halving, on copies of the pool. The search stops once it
// is within 1/16 of the answer: the candidates after the prefix are then
// tried one by one, which finds most of what a longer prefix would.
func (r *round) longestPrefix(pl *pooled) int {
	n := len(pl.elig)
	if n == 0 {
		return 0
	}
	ok := func(m int) bool {
		if r.work >= maxPlanWork {
			return false
		}
		r.cover(pl, m)
		return r.prefix(r.pool.clone(), pl, m, false)
	}
	good, bad := 0, n+1
	for m := 1; ; m *= 2 {
		m = min(m, n)
		if !ok(m) {
			bad = m
			break
		}
		good = m
		if m == n {
			return m
		}
	}
	for bad-good > max(1, good/16) {
		mid := int(uint(good+bad) >> 1)
		if ok(mid) {
			good = mid
		} else {
			bad = mid
		}
	}
	return good
}

// prefix tries to empty the first m candidates of elig at once on p: each
// is admitted or skipped (MinPerRole, the usage guard) in turn, then the
// containers of those admitted are placed together, largest first, each
// on the best fit. With commit, p is the round's pool and the outcome is
// recorded (m must then be a length that was accepted).
func (r *round) prefix(p *pool, pl *pooled, m int, commit bool) bool {
	elig := pl.elig
	perRole, loads := r.perRole, r.loads
	if !commit {
		perRole = maps.Clone(r.perRole)
		loads = make(map[string]*roleLoad, len(r.loads))
		for k, v := range r.loads {
			cp := *v
			loads[k] = &cp
		}
	}
	in := make([]bool, m)
	for k, i := range elig[:m] {
		c := &r.info[i]
		if k, why := r.admit(i, perRole, loads); why != "" {
			if commit {
				r.keep(i, k, why)
			}
			continue
		}
		in[k] = true
		perRole[c.role]--
		loads[c.role].remove(&r.nodes[i].Worker)
		p.exclude(i)
		if commit {
			c.planned = true
			c.moves = c.moves[:0]
		}
	}
	for _, it := range pl.items {
		if int(it.pos) >= m || !in[it.pos] {
			continue
		}
		r.work++
		to, ok := p.bestIn(it.groups, it.mem)
		if !ok {
			return false
		}
		if commit {
			c := &r.info[elig[it.pos]]
			c.moves = append(c.moves, trialMove{res: it.res, ord: it.ord, to: to, free: p.free[to]})
			r.info[to].target = true
		}
		p.take(to, it.mem)
	}
	if commit {
		// Each worker's moves in its own order: largest first, then name.
		for _, i := range elig[:m] {
			mv := r.info[i].moves
			slices.SortStableFunc(mv, func(a, b trialMove) int { return int(a.ord - b.ord) })
		}
	}
	return true
}

// act decides which planned workers go this round: in order, those that
// pass the waiting rules, within the budget for workers with containers.
// The others stay planned (their room stays kept) and unneeded.
func (r *round) act(elig []int32) {
	for _, i := range elig {
		n, c := &r.nodes[i], &r.info[i]
		if !c.planned {
			continue
		}
		r.unneeded = append(r.unneeded, i)
		if wait := r.waitReason(n); wait != "" {
			r.keep(i, keptWaiting, wait)
			continue
		}
		if c.loaded {
			if limit := r.drainLimit(c.role); limit != "" {
				r.keep(i, keptBudget, limit)
				continue
			}
			r.nonEmpty++
			r.budgetLeft[c.role]--
		}
		c.victim = true
		r.victims = append(r.victims, i)
		for _, mv := range c.moves {
			r.info[mv.to].actedTarget = true
		}
	}
	for i := range r.info {
		c := &r.info[i]
		if !c.target || c.planned {
			continue
		}
		if c.actedTarget {
			r.keep(int32(i), keptTarget, "receives moved containers this round")
		} else {
			r.keep(int32(i), keptTarget, "keeps room for the containers of workers that go in a later round")
		}
	}
}

// try places every resident of i, largest first, on the pool without i.
// On success the placements stay (in info[i].moves); on failure nothing
// changes and the reason is returned.
func (r *round) try(i int32) string {
	n, c := &r.nodes[i], &r.info[i]
	p := r.pool
	p.exclude(i)
	c.moves = c.moves[:0]
	// The largest first: when it fits nowhere, that is the reason. When it
	// fits, all of them must fit in the room left in all, or there is no
	// need to try each.
	if len(c.res) > 1 {
		first := &n.Residents[c.res[0]]
		if _, ok := p.best(first.Tags, first.Memory); ok {
			if room := p.roomFor(n.Residents); room < c.moving {
				p.include(i)
				return fmt.Sprintf("they need %s, and the workers that stay and carry their tags have %s free in all", bytesize.Format(c.moving), bytesize.Format(room))
			}
		}
	}
	for _, k := range c.res {
		res := &n.Residents[k]
		r.work++
		to, ok := p.best(res.Tags, res.Memory)
		if !ok {
			why := p.noFit(&Request{Name: res.Name, Tags: res.Tags, Memory: res.Memory})
			r.undo(i)
			return why
		}
		c.moves = append(c.moves, trialMove{res: k, to: to, free: p.free[to]})
		p.take(to, res.Memory)
	}
	return ""
}

// undo takes back the placements of a trial of i and puts i back.
func (r *round) undo(i int32) {
	n, c := &r.nodes[i], &r.info[i]
	for k := len(c.moves) - 1; k >= 0; k-- {
		m := c.moves[k]
		r.pool.give(m.to, n.Residents[m.res].Memory)
	}
	c.moves = c.moves[:0]
	r.pool.include(i)
}

// replace plans, with Types, the replacement of kept workers by cheaper
// instances: largest saving first, within the same waiting rules and
// budget as removals.
func (r *round) replace() {
	var ts []InstanceType
	for _, t := range r.o.Types {
		if t.Price > 0 && t.Memory > 0 {
			ts = append(ts, t)
		}
	}
	if len(ts) == 0 {
		return
	}
	slices.SortStableFunc(ts, func(a, b InstanceType) int {
		switch {
		case a.Price != b.Price:
			return cmpF(a.Price, b.Price)
		case a.Memory != b.Memory:
			return cmpF(float64(b.Memory), float64(a.Memory))
		}
		return strings.Compare(a.Name, b.Name)
	})
	type cand struct {
		i      int32
		t      InstanceType
		saving float64
	}
	var cands []cand
	for _, i := range r.order {
		n, c := &r.nodes[i], &r.info[i]
		if c.victim || c.target || n.Booting || n.Draining || n.Price <= 0 {
			continue
		}
		// Only a worker that could drain but not go: its containers fit
		// nowhere else, or its role needs it.
		if c.kind != keptCannotMove && c.kind != keptMinPerRole && c.kind != keptGuard {
			continue
		}
		for _, t := range ts {
			if t.Price >= n.Price || r.o.Placement.Usable(t) < n.Reserved {
				continue
			}
			if s := n.Price - t.Price; s >= r.o.MinSaving-1e-9 {
				cands = append(cands, cand{i, t, s})
			}
			break
		}
	}
	sort.SliceStable(cands, func(a, b int) bool { return cands[a].saving > cands[b].saving })
	for _, cd := range cands {
		i, t := cd.i, cd.t
		n, c := &r.nodes[i], &r.info[i]
		l := r.loads[c.role]
		if why := l.guardReplace(r.o.UsageLimit, c.role, &n.Worker, t); why != "" {
			r.keep(i, c.kind, c.reason+"; "+why)
			continue
		}
		r.unneeded = append(r.unneeded, i)
		what := fmt.Sprintf("could be replaced by a %s (saves %s)", t.Name, FormatPrice(cd.saving))
		if wait := r.waitReason(n); wait != "" {
			r.keep(i, keptWaiting, fmt.Sprintf("%s; %s", what, wait))
			continue
		}
		if c.loaded {
			if limit := r.drainLimit(c.role); limit != "" {
				r.keep(i, keptBudget, fmt.Sprintf("%s; %s", what, limit))
				continue
			}
			r.nonEmpty++
			r.budgetLeft[c.role]--
		}
		l.replaceBy(&n.Worker, t)
		r.replaced[i] = true
		rp := Replacement{Worker: n.Name, Type: t, Tags: slices.Clone(n.Tags), Saving: cd.saving}
		for _, k := range c.res {
			rp.Containers = append(rp.Containers, n.Residents[k].Name)
		}
		if len(c.res) == 0 {
			rp.Reason = fmt.Sprintf("it holds nothing but %s needs it: a %s (%s) does for %s less", roleLabel(c.role), t.Name, FormatPrice(t.Price), FormatPrice(cd.saving))
		} else {
			rp.Reason = fmt.Sprintf("its %s (%s) fit on a %s (%s usable after headroom, %s): saves %s",
				plural(len(c.res), "container"), bytesize.Format(n.Reserved), t.Name, bytesize.Format(r.o.Placement.Usable(t)), FormatPrice(t.Price), FormatPrice(cd.saving))
		}
		r.replacing = append(r.replacing, rp)
	}
}

// finish writes the plan.
func (r *round) finish() ConsolidationPlan {
	var plan ConsolidationPlan
	for _, i := range r.victims {
		n, c := &r.nodes[i], &r.info[i]
		plan.Remove = append(plan.Remove, n.Name)
		rm := Removal{Worker: n.Name, Saving: max(n.Price, 0), Moves: len(c.moves)}
		targets := map[int32]bool{}
		for _, m := range c.moves {
			res := &n.Residents[m.res]
			req := Request{Name: res.Name, Tags: res.Tags, Memory: res.Memory}
			to := &r.nodes[m.to].Worker
			plan.Moves = append(plan.Moves, Move{Container: res.Name, Memory: res.Memory, From: n.Name, To: to.Name, Reason: placedReason(&req, to, m.free)})
			targets[m.to] = true
		}
		if len(c.moves) == 0 {
			rm.Reason = "it holds no container"
		} else {
			stay := "1 worker that stays"
			if len(targets) > 1 {
				stay = strconv.Itoa(len(targets)) + " workers that stay"
			}
			rm.Reason = fmt.Sprintf("its %s (%s) fit on %s", plural(len(c.moves), "container"), bytesize.Format(c.moving), stay)
		}
		if n.Price > 0 {
			rm.Reason += "; saves " + FormatPrice(n.Price)
		}
		plan.Removals = append(plan.Removals, rm)
		plan.SavingPerHour += rm.Saving
	}
	plan.Replace = r.replacing
	for _, rp := range r.replacing {
		plan.SavingPerHour += rp.Saving
	}
	for _, i := range r.unneeded {
		plan.Unneeded = append(plan.Unneeded, r.nodes[i].Name)
	}
	for _, i := range r.order {
		if c := &r.info[i]; !c.victim && !r.replaced[i] {
			plan.Skipped = append(plan.Skipped, Skip{Worker: r.nodes[i].Name, Reason: c.reason})
		}
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
func roleLoads(nodes []ScaleInWorker, order []int32) map[string]*roleLoad {
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

// guardReplace returns why replacing w by an instance of t would overload
// its role, or "": the role's memory use over its capacity with t in place
// of w, and its CPU with w's use scaled to t, as if cores went with memory.
func (l *roleLoad) guardReplace(lim UsageLimit, role string, w *Worker, t InstanceType) string {
	if lim.Off() || !serves(w) || l.serving <= 0 || t.Memory <= 0 {
		return ""
	}
	if cpu := (l.cpu - w.CPUUsed + w.CPUUsed*float64(w.Capacity)/float64(t.Memory)) / float64(l.serving); lim.CPU > 0 && above(cpu, lim.CPU) {
		v, ls := pcts(cpu, lim.CPU)
		return fmt.Sprintf("a %s would push %s to %s CPU, above the %s limit", t.Name, roleLabel(role), v, ls)
	}
	if c := l.cap - w.Capacity + t.Memory; c > 0 {
		if mem := float64(l.used) / float64(c); lim.Memory > 0 && above(mem, lim.Memory) {
			v, ls := pcts(mem, lim.Memory)
			return fmt.Sprintf("a %s would push %s to %s memory use, above the %s limit", t.Name, roleLabel(role), v, ls)
		}
	}
	return ""
}

// replaceBy counts t in place of w among the workers carrying the load.
func (l *roleLoad) replaceBy(w *Worker, t InstanceType) {
	if serves(w) && t.Memory > 0 {
		l.cpu += w.CPUUsed*float64(w.Capacity)/float64(t.Memory) - w.CPUUsed
		l.cap += t.Memory - w.Capacity
	}
}
