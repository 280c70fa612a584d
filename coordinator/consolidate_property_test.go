package coordinator

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"
)

var consRoles = []string{"app", "db", "proxy", ""}

// genConsCluster draws a small cluster where consolidation has choices to
// make: mixed roles and zones, workers from empty to full (reservations
// are the sum of their residents and never above capacity less headroom),
// some draining, some with a container that may not move, some young, some
// not unneeded for long.
func genConsCluster(t *rapid.T, headroom float64) []ScaleInWorker {
	n := rapid.IntRange(0, 14).Draw(t, "nodes")
	names := rapid.Permutation([]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}).Draw(t, "names")
	nodes := make([]ScaleInWorker, 0, n)
	c := 0
	for i := 0; i < n; i++ {
		role := rapid.SampledFrom(consRoles).Draw(t, "role")
		var tags []string
		if role != "" {
			tags = append(tags, "role="+role)
		}
		if rapid.Bool().Draw(t, "zoned") {
			tags = append(tags, "zone="+rapid.SampledFrom([]string{"a", "b"}).Draw(t, "zone"))
		}
		capMiB := rapid.SampledFrom([]int64{512, 1024, 2048, 4096}).Draw(t, "capacity")
		w := Worker{Name: fmt.Sprintf("w%02d", names[i]), Tags: tags, Capacity: capMiB * mib}
		// Prices: unknown, or per GiB-hour with a discount for the larger.
		if rapid.Bool().Draw(t, "priced") {
			w.Price = float64(capMiB) / 1024 * rapid.SampledFrom([]float64{0.04, 0.05, 0.06}).Draw(t, "price-per-gib")
		}
		usable := w.Capacity - int64(float64(w.Capacity)*headroom)
		// Fill to a drawn share of the usable memory.
		fill := rapid.SampledFrom([]float64{0, 0, 0.1, 0.2, 0.3, 0.45, 0.5, 0.7, 0.9, 1}).Draw(t, "fill")
		var rs []Resident
		for k := 0; k < 8 && float64(w.Reserved) < fill*float64(usable); k++ {
			m := rapid.Int64Range(1, 16).Draw(t, "memory") * 32 * mib
			if w.Reserved+m > usable {
				break
			}
			// A resident needs a subset of its worker's tags.
			var rt []string
			for _, tg := range tags {
				if rapid.IntRange(0, 3).Draw(t, "needs-tag") > 0 {
					rt = append(rt, tg)
				}
			}
			rs = append(rs, Resident{
				Name:        fmt.Sprintf("c%03d", c),
				Tags:        rt,
				Memory:      m,
				Relocatable: rapid.IntRange(0, 9).Draw(t, "relocatable") > 0,
			})
			c++
			w.Reserved += m
		}
		w.Containers = len(rs)
		w.Used = rapid.Int64Range(0, w.Reserved).Draw(t, "used")
		w.CPUUsed = rapid.SampledFrom([]float64{0, 0.1, 0.3, 0.5, 0.7, 0.9}).Draw(t, "cpu-used")
		w.Hot = rapid.IntRange(0, 4).Draw(t, "hot") == 0
		w.Draining = rapid.IntRange(0, 9).Draw(t, "draining") == 0
		nd := ScaleInWorker{
			Worker:    w,
			JoinedAt:  consNow.Add(-time.Duration(rapid.IntRange(0, 60).Draw(t, "age-min")) * time.Minute),
			Residents: rs,
		}
		if rapid.IntRange(0, 3).Draw(t, "unneeded") > 0 {
			nd.UnneededSince = consNow.Add(-time.Duration(rapid.IntRange(0, 300).Draw(t, "unneeded-s")) * time.Second)
		}
		nodes = append(nodes, nd)
	}
	return nodes
}

func genConsOptions(t *rapid.T) ConsolidateOptions {
	o := DefaultConsolidateOptions()
	o.Placement = Options{
		Headroom: rapid.SampledFrom([]float64{0, 0.1, 0.25}).Draw(t, "headroom"),
		Strategy: rapid.SampledFrom([]Strategy{StrategySpread, StrategyBinpack}).Draw(t, "strategy"),
	}
	o.Threshold = rapid.SampledFrom([]float64{0.3, 0.5, 0.5, 0.7, 1.01}).Draw(t, "threshold")
	o.MaxNonEmpty = rapid.IntRange(0, 4).Draw(t, "max-non-empty")
	o.Budget = Budget{
		Workers: rapid.SampledFrom([]int{0, 0, 1, 2, 3}).Draw(t, "budget-workers"),
		Percent: rapid.SampledFrom([]float64{0, 0.1, 0.3, 0.5, 1}).Draw(t, "budget-percent"),
	}
	o.MinSaving = rapid.SampledFrom([]float64{0, 0, 0.01, 0.05, 0.2}).Draw(t, "min-saving")
	if rapid.Bool().Draw(t, "types") {
		o.Types = []InstanceType{
			{Name: "s", Memory: 512 * mib, Price: rapid.SampledFrom([]float64{0, 0.02, 0.03}).Draw(t, "price-s")},
			{Name: "m", Memory: 1024 * mib, Price: rapid.SampledFrom([]float64{0, 0.04, 0.06}).Draw(t, "price-m")},
			{Name: "l", Memory: 2048 * mib, Price: rapid.SampledFrom([]float64{0.08, 0.1}).Draw(t, "price-l")},
		}
	}
	o.Manual = rapid.IntRange(0, 3).Draw(t, "manual") == 0
	if rapid.Bool().Draw(t, "usage-limit") {
		o.UsageLimit = UsageLimit{
			CPU:    rapid.SampledFrom([]float64{0, 0.4, 0.6, 0.8}).Draw(t, "limit-cpu"),
			Memory: rapid.SampledFrom([]float64{0, 0.3, 0.5, 0.8}).Draw(t, "limit-memory"),
		}
	}
	if rapid.Bool().Draw(t, "min-per-role") {
		o.MinPerRole = map[string]int{}
		for _, r := range consRoles {
			if k := rapid.IntRange(0, 3).Draw(t, "min-"+r); k > 0 {
				o.MinPerRole[r] = k
			}
		}
	}
	return o
}

// TestPlanConsolidationProperties checks, on random clusters:
//
//	(a) after the plan's moves, no worker that remains is over-committed
//	    (reserved ≤ capacity − headroom for every target, the others
//	    unchanged), and every moved container's tags are on its target,
//	    which is not draining;
//	(b) every removed worker's residents all move, each exactly once, and
//	    no removed worker is a target;
//	(c) no removed or replaced worker holds a container that may not
//	    move or is draining; no role goes under MinPerRole; unless Manual,
//	    removed and replaced workers are old and unneeded for long enough;
//	    at most MaxNonEmpty of them hold containers; per role, the workers
//	    draining with containers, already or by this plan, stay within the
//	    budget; with a UsageLimit, a role that lost workers keeps its load
//	    within the limit over the workers left;
//	(d) the plan never costs more: each replacement's type is cheaper than
//	    its worker by its Saving, at least MinSaving, and holds the
//	    worker's reservations with headroom; a removed worker with
//	    containers and a known price saves at least MinSaving; the
//	    savings add up to SavingPerHour.
func TestPlanConsolidationProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		o := genConsOptions(t)
		nodes := genConsCluster(t, o.Placement.Headroom)
		before := cloneNodes(nodes)
		p := PlanConsolidation(nodes, consNow, o)
		checkPlanShape(t, nodes, p)
		if !slicesEqualNodes(nodes, before) {
			t.Fatalf("PlanConsolidation changed its input")
		}

		byName := map[string]*ScaleInWorker{}
		for i := range nodes {
			byName[nodes[i].Name] = &nodes[i]
		}
		removed := map[string]bool{}
		for _, w := range p.Remove {
			removed[w] = true
		}
		replaced := map[string]Replacement{}
		for _, rp := range p.Replace {
			replaced[rp.Worker] = rp
		}

		// (a) Apply the moves.
		reserved := map[string]int64{}
		for _, nd := range nodes {
			reserved[nd.Name] = nd.Reserved
		}
		targets := map[string]bool{}
		for _, m := range p.Moves {
			to := byName[m.To]
			if to == nil {
				t.Fatalf("move %s to unknown worker %q", m.Container, m.To)
			}
			if m.To == m.From {
				t.Errorf("move %s from %s to itself", m.Container, m.From)
			}
			if to.Draining {
				t.Errorf("move %s to draining %s", m.Container, m.To)
			}
			var tags []string
			for _, r := range byName[m.From].Residents {
				if r.Name == m.Container {
					tags = r.Tags
				}
			}
			if !to.HasTags(tags) {
				t.Errorf("move %s (needs %v) to %s, which has %v", m.Container, tags, m.To, to.Tags)
			}
			reserved[m.To] += m.Memory
			targets[m.To] = true
		}
		for _, nd := range nodes {
			if removed[nd.Name] || !targets[nd.Name] {
				continue
			}
			if limit := nd.Capacity - o.Placement.HeadroomBytes(&nd.Worker); reserved[nd.Name] > limit {
				t.Errorf("%s over-committed after the moves: %d reserved, %d allowed", nd.Name, reserved[nd.Name], limit)
			}
			if _, ok := replaced[nd.Name]; ok {
				t.Errorf("%s receives moves and is replaced", nd.Name)
			}
		}

		// (b) Removed workers are emptied and take nothing.
		for _, w := range p.Remove {
			if targets[w] {
				t.Errorf("removed %s is also a move target", w)
			}
		}

		// (c) Safety and the rules of a round.
		nonEmpty := 0
		removedOfRole := map[string]int{}
		drainsOfRole := map[string]int{}
		gone := append(slices.Clone(p.Remove), slices.Collect(maps.Keys(replaced))...)
		for _, w := range gone {
			nd := byName[w]
			if nd.Draining {
				t.Errorf("removed or replaced %s is draining", w)
			}
			if r := pinned(nd.Residents); r != "" {
				t.Errorf("removed or replaced %s holds %s, which may not move", w, r)
			}
			if !o.Manual {
				if consNow.Sub(nd.JoinedAt) < o.DelayAfterAdd {
					t.Errorf("removed or replaced %s joined %s ago", w, consNow.Sub(nd.JoinedAt))
				}
				if nd.UnneededSince.IsZero() || consNow.Sub(nd.UnneededSince) < o.UnneededTime {
					t.Errorf("removed or replaced %s unneeded since %v only", w, nd.UnneededSince)
				}
			}
			if len(nd.Residents) > 0 {
				nonEmpty++
				drainsOfRole[RoleOf(nd.Tags)]++
			}
		}
		for _, w := range p.Remove {
			removedOfRole[RoleOf(byName[w].Tags)]++
		}
		if o.MaxNonEmpty > 0 && nonEmpty > o.MaxNonEmpty {
			t.Errorf("%d non-empty workers drained, at most %d", nonEmpty, o.MaxNonEmpty)
		}
		budget := o.Budget
		if budget == (Budget{}) {
			budget = DefaultBudget()
		}
		size, draining := map[string]int{}, map[string]int{}
		for _, nd := range nodes {
			size[RoleOf(nd.Tags)]++
			if nd.Draining && (nd.Reserved > 0 || nd.Containers > 0) {
				draining[RoleOf(nd.Tags)]++
			}
		}
		for role, n := range drainsOfRole {
			if allow := budget.Allowance(size[role]); draining[role]+n > allow {
				t.Errorf("role %q: %d workers draining already and %d more planned, budget %d", role, draining[role], n, allow)
			}
		}
		serving := map[string]int{}
		for _, nd := range nodes {
			if !nd.Draining {
				serving[RoleOf(nd.Tags)]++
			}
		}
		if lim := o.UsageLimit; !lim.Off() {
			type load struct {
				cpu       float64
				used, cap int64
				left      int
			}
			loads := map[string]*load{}
			for _, nd := range nodes {
				r := RoleOf(nd.Tags)
				if loads[r] == nil {
					loads[r] = &load{}
				}
				l := loads[r]
				l.cpu += nd.CPUUsed
				l.used += nd.Used
				if !nd.Draining && !nd.Booting && !removed[nd.Name] {
					l.left++
					l.cap += nd.Capacity
					if rp, ok := replaced[nd.Name]; ok {
						l.cap += rp.Type.Memory - nd.Capacity
						l.cpu += nd.CPUUsed*float64(nd.Capacity)/float64(rp.Type.Memory) - nd.CPUUsed
					}
				}
			}
			for role, n := range removedOfRole {
				l := loads[role]
				if n == 0 {
					continue
				}
				if l.left == 0 {
					if lim.CPU > 0 && l.cpu > 0 || lim.Memory > 0 && l.used > 0 {
						t.Errorf("role %q: every worker removed, load remains", role)
					}
					continue
				}
				if cpu := l.cpu / float64(l.left); lim.CPU > 0 && above(cpu, lim.CPU) {
					t.Errorf("role %q: %d workers removed, %.2f CPU on the %d left, limit %.2f", role, n, cpu, l.left, lim.CPU)
				}
				if mem := float64(l.used) / float64(l.cap); lim.Memory > 0 && above(mem, lim.Memory) {
					t.Errorf("role %q: %d workers removed, %.2f memory use on the %d left, limit %.2f", role, n, mem, l.left, lim.Memory)
				}
			}
		}
		for role, min := range o.MinPerRole {
			if left := serving[role] - removedOfRole[role]; removedOfRole[role] > 0 && left < min {
				t.Errorf("role %q: %d of %d workers removed, %d left, minimum %d", role, removedOfRole[role], serving[role], left, min)
			}
		}

		// (d) Cost.
		total, cost := 0.0, 0.0
		if len(p.Removals) != len(p.Remove) {
			t.Fatalf("%d removals for %d removed workers", len(p.Removals), len(p.Remove))
		}
		for k, rm := range p.Removals {
			nd := byName[p.Remove[k]]
			if rm.Worker != nd.Name || rm.Saving != max(nd.Price, 0) || rm.Moves != len(nd.Residents) || rm.Reason == "" {
				t.Errorf("removal %+v of %s (price %v, %d residents)", rm, nd.Name, nd.Price, len(nd.Residents))
			}
			if len(nd.Residents) > 0 && nd.Price > 0 && nd.Price < o.MinSaving-1e-9 {
				t.Errorf("%s removed, saving %v under the minimum %v", nd.Name, nd.Price, o.MinSaving)
			}
			total += rm.Saving
			cost -= nd.Price
		}
		for _, rp := range p.Replace {
			nd := byName[rp.Worker]
			if nd == nil {
				t.Fatalf("replacement of unknown %q", rp.Worker)
			}
			if rp.Type.Price <= 0 || nd.Price <= 0 || rp.Type.Price >= nd.Price {
				t.Errorf("%s (price %v) replaced by %s at %v", nd.Name, nd.Price, rp.Type.Name, rp.Type.Price)
			}
			if d := nd.Price - rp.Type.Price; math.Abs(rp.Saving-d) > 1e-9 || rp.Saving < o.MinSaving-1e-9 {
				t.Errorf("%s replaced saving %v, prices say %v, minimum %v", nd.Name, rp.Saving, d, o.MinSaving)
			}
			if o.Placement.Usable(rp.Type) < nd.Reserved {
				t.Errorf("%s (%d reserved) replaced by %s (%d usable)", nd.Name, nd.Reserved, rp.Type.Name, o.Placement.Usable(rp.Type))
			}
			if !slices.Equal(rp.Tags, nd.Tags) || len(rp.Containers) != len(nd.Residents) || rp.Reason == "" {
				t.Errorf("replacement %+v of %+v", rp, nd.Worker)
			}
			total += rp.Saving
			cost += rp.Type.Price - nd.Price
		}
		if cost > 1e-9 {
			t.Errorf("the plan raises the cost by %v per hour", cost)
		}
		if math.Abs(total-p.SavingPerHour) > 1e-9 {
			t.Errorf("SavingPerHour %v, the actions add up to %v", p.SavingPerHour, total)
		}

		// Unneeded: every removed or replaced worker, and only workers that
		// pass the safety rules.
		unneeded := map[string]bool{}
		for _, w := range p.Unneeded {
			if unneeded[w] {
				t.Errorf("%s twice in Unneeded", w)
			}
			unneeded[w] = true
			nd := byName[w]
			if nd.Draining || pinned(nd.Residents) != "" {
				t.Errorf("%s is unneeded but fails a safety rule", w)
			}
		}
		for _, w := range gone {
			if !unneeded[w] {
				t.Errorf("removed or replaced %s is not in Unneeded", w)
			}
		}
	})
}

// TestPlanConsolidationPropertyOrder checks that shuffling the nodes does
// not change what is removed or moved.
func TestPlanConsolidationPropertyOrder(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		o := genConsOptions(t)
		nodes := genConsCluster(t, o.Placement.Headroom)
		want := PlanConsolidation(nodes, consNow, o)
		idx := make([]int, len(nodes))
		for i := range idx {
			idx[i] = i
		}
		perm := rapid.Permutation(idx).Draw(t, "perm")
		shuffled := make([]ScaleInWorker, len(nodes))
		for i, j := range perm {
			shuffled[i] = nodes[j]
		}
		got := PlanConsolidation(shuffled, consNow, o)
		if !slices.Equal(got.Remove, want.Remove) || !slices.Equal(got.Unneeded, want.Unneeded) || !slices.Equal(got.Moves, want.Moves) ||
			!slices.EqualFunc(got.Replace, want.Replace, func(a, b Replacement) bool { return a.Worker == b.Worker && a.Type == b.Type }) {
			t.Fatalf("shuffled plan differs:\n%+v\nwant\n%+v", got, want)
		}
		reasons := func(p ConsolidationPlan) map[string]string {
			m := map[string]string{}
			for _, s := range p.Skipped {
				m[s.Worker] = s.Reason
			}
			return m
		}
		if g, w := reasons(got), reasons(want); !maps.Equal(g, w) {
			t.Fatalf("shuffled skip reasons differ:\n%v\nwant\n%v", g, w)
		}
	})
}

func slicesEqualNodes(a, b []ScaleInWorker) bool {
	return slices.EqualFunc(a, b, func(x, y ScaleInWorker) bool {
		return x.Name == y.Name && x.Reserved == y.Reserved && x.Used == y.Used && x.Capacity == y.Capacity &&
			x.Draining == y.Draining && slices.Equal(x.Tags, y.Tags) && x.JoinedAt.Equal(y.JoinedAt) &&
			x.CPUUsed == y.CPUUsed && x.Hot == y.Hot &&
			x.UnneededSince.Equal(y.UnneededSince) &&
			slices.EqualFunc(x.Residents, y.Residents, func(r, s Resident) bool {
				return r.Name == s.Name && r.Memory == s.Memory && r.Relocatable == s.Relocatable && slices.Equal(r.Tags, s.Tags)
			})
	})
}
