package coordinator

import (
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// consNow is the fixed "now" of the consolidation tests.
var consNow = time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC)

// res is a relocatable resident of memMiB MiB.
func res(name string, memMiB int64, tags ...string) Resident {
	return Resident{Name: name, Tags: tags, Memory: memMiB * mib, Relocatable: true}
}

// pinnedRes is a resident consolidation may not move.
func pinnedRes(name string, memMiB int64, tags ...string) Resident {
	r := res(name, memMiB, tags...)
	r.Relocatable = false
	return r
}

// cn is a node of capMiB MiB holding rs, tagged tags, that joined an hour
// ago and has been unneeded for five minutes: every waiting rule passes.
// Reserved (and Used) are the sum of its residents.
func cn(name string, capMiB int64, tags []string, rs ...Resident) ScaleInWorker {
	n := ScaleInWorker{
		Worker:        Worker{Name: name, Tags: tags, Capacity: capMiB * mib, Containers: len(rs)},
		JoinedAt:      consNow.Add(-time.Hour),
		UnneededSince: consNow.Add(-5 * time.Minute),
		Residents:     rs,
	}
	for _, r := range rs {
		n.Reserved += r.Memory
	}
	n.Used = n.Reserved
	return n
}

// filler is a node whose reservation (reservedMiB) is not broken down into
// residents: it is above any threshold used here, so it is only ever a
// target for moves.
func filler(name string, capMiB, reservedMiB int64, tags ...string) ScaleInWorker {
	n := cn(name, capMiB, tags)
	n.Reserved, n.Used = reservedMiB*mib, reservedMiB*mib
	return n
}

func with(n ScaleInWorker, f func(*ScaleInWorker)) ScaleInWorker { f(&n); return n }

// noHeadroomCons is the default scale-in with no headroom, so that the
// memory figures of the cases stay round.
func noHeadroomCons() ConsolidateOptions {
	o := DefaultConsolidateOptions()
	o.Placement.Headroom = 0
	return o
}

// errorHelper is what checkPlanShape needs of *testing.T and *rapid.T.
type errorHelper interface {
	Helper()
	Errorf(format string, args ...any)
}

type mv struct{ c, from, to string }

func movesOf(p ConsolidationPlan) []mv {
	var out []mv
	for _, m := range p.Moves {
		out = append(out, mv{m.Container, m.From, m.To})
	}
	return out
}

// checkPlanShape checks what holds for every plan: each worker appears
// exactly once in Remove, Replace or Skipped, moves come only from removed
// workers and carry the resident's memory, every resident of a removed
// worker moves exactly once, and no removed worker is a target.
func checkPlanShape(t errorHelper, nodes []ScaleInWorker, p ConsolidationPlan) {
	t.Helper()
	seen := map[string]int{}
	for _, w := range p.Remove {
		seen[w]++
	}
	for _, rp := range p.Replace {
		seen[rp.Worker]++
	}
	for _, s := range p.Skipped {
		seen[s.Worker]++
		if s.Reason == "" {
			t.Errorf("worker %s skipped without a reason", s.Worker)
		}
	}
	byName := map[string]*ScaleInWorker{}
	for i := range nodes {
		byName[nodes[i].Name] = &nodes[i]
		if seen[nodes[i].Name] != 1 {
			t.Errorf("worker %s appears %d times in Remove, Replace and Skipped, want once", nodes[i].Name, seen[nodes[i].Name])
		}
	}
	if len(seen) != len(nodes) {
		t.Errorf("Remove, Replace and Skipped name %d workers, the cluster has %d", len(seen), len(nodes))
	}
	removed := map[string]bool{}
	for _, w := range p.Remove {
		removed[w] = true
	}
	moved := map[string]int{}
	for _, m := range p.Moves {
		if !removed[m.From] {
			t.Errorf("move %s from %s, which is not removed", m.Container, m.From)
		}
		if removed[m.To] {
			t.Errorf("move %s to %s, which is removed", m.Container, m.To)
		}
		if m.Reason == "" {
			t.Errorf("move %s has no reason", m.Container)
		}
		moved[m.From+"/"+m.Container]++
		var found bool
		if n := byName[m.From]; n != nil {
			for _, r := range n.Residents {
				if r.Name == m.Container {
					found = true
					if r.Memory != m.Memory {
						t.Errorf("move %s carries %d bytes, resident has %d", m.Container, m.Memory, r.Memory)
					}
				}
			}
		}
		if !found {
			t.Errorf("move %s: no such resident on %s", m.Container, m.From)
		}
	}
	for _, w := range p.Remove {
		for _, r := range byName[w].Residents {
			if moved[w+"/"+r.Name] != 1 {
				t.Errorf("%s on removed %s moves %d times, want once", r.Name, w, moved[w+"/"+r.Name])
			}
		}
	}
}

func TestPlanConsolidation(t *testing.T) {
	app, db := []string{"role=app"}, []string{"role=db"}
	cases := []struct {
		name  string
		nodes []ScaleInWorker
		opts  func(*ConsolidateOptions)
		// remove is the exact Remove list (nil and empty are the same).
		remove []string
		// moves, when not nil, is the exact list of moves.
		moves []mv
		// skipped maps a worker to a part of its skip reason.
		skipped map[string]string
		// unneeded, when not nil, is the exact Unneeded list.
		unneeded []string
	}{
		{
			name: "candidate: least reserved memory first",
			nodes: []ScaleInWorker{
				cn("c", 1000, app, res("c1", 300, app...)),
				cn("a", 1000, app, res("a1", 200, app...)),
				cn("b", 1000, app, res("b1", 100, app...)),
				filler("big", 10000, 6000, app...),
			},
			remove: []string{"b"},
			moves:  []mv{{"b1", "b", "big"}},
			// The default budget: a tenth of role=app's 4 workers, rounded up.
			skipped:  map[string]string{"a": "the disruption budget of role=app is used up (1 of its 4 workers may drain at once: 10% of 4 workers, rounded up)", "c": "disruption budget", "big": "receives moved containers this round"},
			unneeded: []string{"b", "a", "c"},
		},
		{
			name: "candidate: equal reservation, less actual use first",
			nodes: []ScaleInWorker{
				with(cn("a", 1000, app, res("a1", 200, app...)), func(n *ScaleInWorker) { n.Used = 150 * mib }),
				with(cn("b", 1000, app, res("b1", 200, app...)), func(n *ScaleInWorker) { n.Used = 50 * mib }),
				filler("big", 10000, 6000, app...),
			},
			remove:  []string{"b"},
			moves:   []mv{{"b1", "b", "big"}},
			skipped: map[string]string{"a": "disruption budget"},
		},
		{
			name: "candidate: equal reservation and use, the younger worker first",
			nodes: []ScaleInWorker{
				with(cn("a", 1000, app, res("a1", 200, app...)), func(n *ScaleInWorker) { n.JoinedAt = consNow.Add(-30 * time.Minute) }),
				with(cn("b", 1000, app, res("b1", 200, app...)), func(n *ScaleInWorker) { n.JoinedAt = consNow.Add(-3 * time.Hour) }),
				filler("big", 10000, 6000, app...),
			},
			remove:  []string{"a"},
			moves:   []mv{{"a1", "a", "big"}},
			skipped: map[string]string{"b": "disruption budget"},
		},
		{
			name: "candidate: all equal, the smaller name first",
			nodes: []ScaleInWorker{
				cn("n2", 1000, app, res("x", 200, app...)),
				cn("n1", 1000, app, res("y", 200, app...)),
				filler("big", 10000, 6000, app...),
			},
			remove:  []string{"n1"},
			moves:   []mv{{"y", "n1", "big"}},
			skipped: map[string]string{"n2": "disruption budget"},
		},
		{
			// The threshold is a hint (issue 13): "under" is tried first
			// although its container is larger, and "over" goes too, since
			// its container fits.
			name: "threshold: a hint only: under it first, over it goes too when its containers fit",
			nodes: []ScaleInWorker{
				cn("over", 1000, app, res("over1", 600, app...)),
				cn("under", 2000, app, res("under1", 700, app...)),
				filler("big", 10000, 5000, app...),
			},
			opts:     func(o *ConsolidateOptions) { o.Budget = Budget{Percent: 1} },
			remove:   []string{"under", "over"},
			moves:    []mv{{"under1", "under", "big"}, {"over1", "over", "big"}},
			skipped:  map[string]string{"big": "receives moved containers this round"},
			unneeded: []string{"under", "over"},
		},
		{
			name: "threshold: a worker above it is emptied when its containers fit",
			nodes: []ScaleInWorker{
				cn("w", 1000, app, res("w1", 300, app...)),
				filler("big", 10000, 6000, app...),
			},
			opts:     func(o *ConsolidateOptions) { o.Threshold = 0.25 },
			remove:   []string{"w"},
			moves:    []mv{{"w1", "w", "big"}},
			unneeded: []string{"w"},
		},
		{
			name: "waiting: a worker younger than DelayAfterAdd stays but is unneeded",
			nodes: []ScaleInWorker{
				with(cn("young", 1000, app), func(n *ScaleInWorker) { n.JoinedAt = consNow.Add(-5 * time.Minute) }),
				cn("old", 1000, app),
			},
			remove:  []string{"old"},
			skipped: map[string]string{"young": "joined 5m0s ago; scale-in waits 10m0s after scale-out"},
			// Workers too young to go come last in the repack.
			unneeded: []string{"old", "young"},
		},
		{
			name: "waiting: Manual ignores DelayAfterAdd",
			nodes: []ScaleInWorker{
				with(cn("young", 1000, app, res("y1", 100, app...)), func(n *ScaleInWorker) { n.JoinedAt = consNow.Add(-time.Minute) }),
				filler("big", 10000, 6000, app...),
			},
			opts:   func(o *ConsolidateOptions) { o.Manual = true },
			remove: []string{"young"},
			moves:  []mv{{"y1", "young", "big"}},
		},
		{
			name: "waiting: never seen unneeded, or not for long enough",
			nodes: []ScaleInWorker{
				with(cn("zero", 1000, app), func(n *ScaleInWorker) { n.UnneededSince = time.Time{} }),
				with(cn("recent", 1000, app), func(n *ScaleInWorker) { n.UnneededSince = consNow.Add(-time.Minute) }),
				with(cn("exact", 1000, app), func(n *ScaleInWorker) { n.UnneededSince = consNow.Add(-2 * time.Minute) }),
			},
			remove: []string{"exact"},
			skipped: map[string]string{
				"zero":   "unneeded for 0s; must be for 2m0s",
				"recent": "unneeded for 1m0s; must be for 2m0s",
			},
			unneeded: []string{"exact", "recent", "zero"},
		},
		{
			name: "waiting: Manual ignores UnneededSince",
			nodes: []ScaleInWorker{
				with(cn("zero", 1000, app), func(n *ScaleInWorker) { n.UnneededSince = time.Time{} }),
				with(cn("recent", 1000, app), func(n *ScaleInWorker) { n.UnneededSince = consNow.Add(-time.Second) }),
			},
			opts:   func(o *ConsolidateOptions) { o.Manual = true },
			remove: []string{"recent", "zero"},
		},
		{
			name: "safety: a draining worker is skipped, even when Manual",
			nodes: []ScaleInWorker{
				with(cn("d", 1000, app), func(n *ScaleInWorker) { n.Draining = true }),
				cn("e", 1000, app),
			},
			opts:     func(o *ConsolidateOptions) { o.Manual = true },
			remove:   []string{"e"},
			skipped:  map[string]string{"d": "already draining"},
			unneeded: []string{"e"},
		},
		{
			name: "safety: a non-relocatable resident keeps its worker, even when Manual",
			nodes: []ScaleInWorker{
				cn("p", 1000, db, res("db-cache", 50, db...), pinnedRes("db-primary", 100, db...)),
				filler("big", 10000, 6000, db...),
			},
			opts:     func(o *ConsolidateOptions) { o.Manual = true },
			skipped:  map[string]string{"p": "db-primary is not relocatable"},
			unneeded: []string{},
		},
		{
			name: "safety: MinPerRole keeps the last workers of a role",
			nodes: []ScaleInWorker{
				cn("db1", 1000, db),
				cn("db2", 1000, db),
			},
			opts: func(o *ConsolidateOptions) { o.MinPerRole = map[string]int{"db": 2}; o.Manual = true },
			skipped: map[string]string{
				"db1": "one of the last 2 workers of role=db (minimum 2)",
				"db2": "one of the last 2 workers of role=db (minimum 2)",
			},
			unneeded: []string{},
		},
		{
			name: "safety: two empty workers of a role with minimum 1, only one goes",
			nodes: []ScaleInWorker{
				cn("app2", 1000, app),
				cn("app1", 1000, app),
				cn("db1", 1000, db),
			},
			opts:     func(o *ConsolidateOptions) { o.MinPerRole = map[string]int{"app": 1} },
			remove:   []string{"app1", "db1"},
			skipped:  map[string]string{"app2": "one of the last 1 workers of role=app (minimum 1)"},
			unneeded: []string{"app1", "db1"},
		},
		{
			name: "safety: MinPerRole counts the workers removed earlier in the round",
			nodes: []ScaleInWorker{
				cn("a1", 1000, app), cn("a2", 1000, app), cn("a3", 1000, app), cn("a4", 1000, app),
			},
			opts:    func(o *ConsolidateOptions) { o.MinPerRole = map[string]int{"app": 2} },
			remove:  []string{"a1", "a2"},
			skipped: map[string]string{"a3": "one of the last 2 workers", "a4": "one of the last 2 workers"},
		},
		{
			name: "safety: MinPerRole does not count workers already draining away",
			nodes: []ScaleInWorker{
				with(cn("db1", 1000, db), func(n *ScaleInWorker) { n.Draining = true }),
				cn("db2", 1000, db),
			},
			opts:     func(o *ConsolidateOptions) { o.MinPerRole = map[string]int{"db": 1} },
			skipped:  map[string]string{"db1": "already draining", "db2": "one of the last 1 workers of role=db (minimum 1)"},
			unneeded: []string{},
		},
		{
			name: "fit: residents need role=db and the only other free worker is role=app",
			nodes: []ScaleInWorker{
				cn("db1", 1000, db, res("pg", 200, db...)),
				filler("db2", 1000, 950, db...),
				filler("app1", 10000, 6000, app...),
			},
			skipped: map[string]string{
				"db1": "its containers cannot all move: no worker fits pg (role=db, 200MiB): 1 worker lacks role=db; 1 worker has too little free memory (most: 50MiB on db2)",
			},
			// Unneeded lists only workers that could be emptied.
			unneeded: []string{},
		},
		{
			name: "fit: enough free memory in total, but no single worker holds the largest container",
			nodes: []ScaleInWorker{
				cn("x", 2000, app, res("big", 600, app...), res("small", 100, app...)),
				filler("y", 1000, 600, app...),
				filler("z", 1000, 600, app...),
			},
			skipped:  map[string]string{"x": "its containers cannot all move: no worker fits big"},
			unneeded: []string{},
		},
		{
			name: "fit: two residents never count on the same free memory",
			nodes: []ScaleInWorker{
				cn("x", 2000, app, res("r1", 300, app...), res("r2", 300, app...)),
				filler("y", 1000, 600, app...),
				filler("z", 1000, 600, app...),
			},
			remove: []string{"x"},
			moves:  []mv{{"r1", "x", "y"}, {"r2", "x", "z"}},
		},
		{
			name: "fit: one worker with room for one of two residents",
			nodes: []ScaleInWorker{
				cn("x", 2000, app, res("r1", 300, app...), res("r2", 300, app...)),
				filler("y", 1000, 500, app...),
			},
			// The largest fits, not both: the room in all says so at once.
			skipped: map[string]string{"x": "its containers cannot all move: they need 600MiB, and the workers that stay and carry their tags have 500MiB free in all"},
		},
		{
			name: "fit: headroom is not free memory",
			nodes: []ScaleInWorker{
				cn("x", 1000, app, res("r", 400, app...)),
				filler("y", 1000, 550, app...),
			},
			opts:    func(o *ConsolidateOptions) { o.Placement.Headroom = 0.10 },
			skipped: map[string]string{"x": "its containers cannot all move"},
		},
		{
			name: "fit: draining workers take no moved containers",
			nodes: []ScaleInWorker{
				cn("x", 1000, app, res("r", 100, app...)),
				with(filler("d", 10000, 6000, app...), func(n *ScaleInWorker) { n.Draining = true }),
			},
			skipped: map[string]string{"x": "its containers cannot all move: no worker fits r (role=app, 100MiB): 1 worker is draining", "d": "already draining"},
		},
		{
			// Moves pack whatever the launch strategy (issue 13).
			name: "fit: under spread too, moves go to the least free memory that fits, largest container first",
			nodes: []ScaleInWorker{
				cn("x", 4000, app, res("s", 100, app...), res("l", 300, app...)),
				filler("y", 1000, 600, app...),
				filler("z", 2000, 1500, app...),
			},
			remove: []string{"x"},
			moves:  []mv{{"l", "x", "y"}, {"s", "x", "y"}},
		},
		{
			name: "fit: binpack moves to the least free memory that fits",
			nodes: []ScaleInWorker{
				cn("x", 4000, app, res("s", 100, app...), res("l", 300, app...)),
				filler("y", 1000, 600, app...),
				filler("z", 2000, 1500, app...),
			},
			opts:   func(o *ConsolidateOptions) { o.Placement.Strategy = StrategyBinpack },
			remove: []string{"x"},
			moves:  []mv{{"l", "x", "y"}, {"s", "x", "y"}},
		},
		{
			name: "round: one non-empty worker, all empty ones, least utilized first",
			nodes: []ScaleInWorker{
				cn("n2", 1000, app, res("n2a", 200, app...)),
				cn("n1", 1000, app, res("n1a", 100, app...)),
				cn("e2", 1000, app),
				cn("e1", 2000, app),
				filler("big", 10000, 6000, app...),
			},
			remove:   []string{"e1", "e2", "n1"},
			moves:    []mv{{"n1a", "n1", "big"}},
			skipped:  map[string]string{"n2": "the disruption budget of role=app is used up (1 of its 5 workers may drain at once"},
			unneeded: []string{"e1", "e2", "n1", "n2"},
		},
		{
			name: "round: MaxNonEmpty 0 leaves the round to the budget (one of 3 workers)",
			nodes: []ScaleInWorker{
				cn("n1", 1000, app, res("n1a", 100, app...)),
				cn("n2", 1000, app, res("n2a", 200, app...)),
				filler("big", 10000, 6000, app...),
			},
			opts:    func(o *ConsolidateOptions) { o.MaxNonEmpty = 0 },
			remove:  []string{"n1"},
			moves:   []mv{{"n1a", "n1", "big"}},
			skipped: map[string]string{"n2": "disruption budget"},
		},
		{
			name: "round: MaxNonEmpty 1 caps a round the budget allows more",
			nodes: []ScaleInWorker{
				cn("n1", 1000, app, res("n1a", 100, app...)),
				cn("n2", 1000, app, res("n2a", 200, app...)),
				filler("big", 10000, 6000, app...),
			},
			opts:    func(o *ConsolidateOptions) { o.MaxNonEmpty = 1; o.Budget = Budget{Workers: 5} },
			remove:  []string{"n1"},
			moves:   []mv{{"n1a", "n1", "big"}},
			skipped: map[string]string{"n2": "only 1 worker with containers is drained per round"},
		},
		{
			name: "round: a budget of 2 workers drains two in one round",
			nodes: []ScaleInWorker{
				cn("n1", 1000, app, res("n1a", 100, app...)),
				cn("n2", 1000, app, res("n2a", 200, app...)),
				cn("n3", 1000, app, res("n3a", 300, app...)),
				filler("big", 10000, 6000, app...),
			},
			opts:    func(o *ConsolidateOptions) { o.Budget = Budget{Workers: 2} },
			remove:  []string{"n1", "n2"},
			moves:   []mv{{"n1a", "n1", "big"}, {"n2a", "n2", "big"}},
			skipped: map[string]string{"n3": "the disruption budget of role=app is used up (2 of its 4 workers may drain at once: at most 2)"},
		},
		{
			name: "round: the smaller of the two allowances applies",
			nodes: []ScaleInWorker{
				cn("n1", 1000, app, res("n1a", 100, app...)),
				cn("n2", 1000, app, res("n2a", 200, app...)),
				cn("n3", 1000, app, res("n3a", 300, app...)),
				filler("big", 10000, 6000, app...),
			},
			opts:    func(o *ConsolidateOptions) { o.Budget = Budget{Workers: 3, Percent: 0.5} },
			remove:  []string{"n1", "n2"},
			moves:   []mv{{"n1a", "n1", "big"}, {"n2a", "n2", "big"}},
			skipped: map[string]string{"n3": "(2 of its 4 workers may drain at once: 50% of 4 workers, rounded up)"},
		},
		{
			name: "round: workers already draining use up the budget",
			nodes: []ScaleInWorker{
				cn("n1", 1000, app, res("n1a", 100, app...)),
				with(cn("d", 1000, app, res("da", 100, app...)), func(n *ScaleInWorker) { n.Draining = true }),
				cn("e", 1000, app),
				filler("big", 10000, 6000, app...),
			},
			opts:    func(o *ConsolidateOptions) { o.Budget = Budget{Workers: 1} },
			remove:  []string{"e"},
			skipped: map[string]string{"n1": "disruption budget", "d": "already draining"},
		},
		{
			// The residents need zone=b, which only y and z have.
			name: "round: MaxNonEmpty 2 drains two, on memory the first did not take",
			nodes: []ScaleInWorker{
				cn("n1", 1000, app, res("n1a", 300, "role=app", "zone=b")),
				cn("n2", 1000, app, res("n2a", 350, "role=app", "zone=b")),
				filler("y", 1000, 600, "role=app", "zone=b"),
				filler("z", 1000, 600, "role=app", "zone=b"),
			},
			opts:   func(o *ConsolidateOptions) { o.MaxNonEmpty = 2; o.Budget = Budget{Percent: 1} },
			remove: []string{"n1", "n2"},
			// Placed together, largest first: n2a takes y (the smaller
			// name of two equal fits), n1a the room left on z.
			moves: []mv{{"n1a", "n1", "z"}, {"n2a", "n2", "y"}},
		},
		{
			name: "round: a candidate that cannot move does not use up the round",
			nodes: []ScaleInWorker{
				cn("n1", 1000, db, res("pg", 100, db...)),
				cn("n2", 1000, app, res("web", 200, app...)),
				filler("big", 10000, 6000, app...),
			},
			remove:   []string{"n2"},
			moves:    []mv{{"web", "n2", "big"}},
			skipped:  map[string]string{"n1": "cannot all move"},
			unneeded: []string{"n2"},
		},
		{
			name: "round: a worker receiving moved containers is not removed in the same round",
			nodes: []ScaleInWorker{
				cn("n1", 1000, db, res("pg", 100, db...)),
				cn("n2", 4000, db, res("pg2", 1200, db...)),
				filler("f", 1000, 950, db...),
			},
			opts:     func(o *ConsolidateOptions) { o.MaxNonEmpty = 5; o.Budget = Budget{Percent: 1} },
			remove:   []string{"n1"},
			moves:    []mv{{"pg", "n1", "n2"}},
			skipped:  map[string]string{"n2": "receives moved containers this round", "f": "950MiB of its reservation belongs to no container it lists"},
			unneeded: []string{"n1"},
		},
		{
			name: "round: an empty worker removed this round takes no moved containers",
			nodes: []ScaleInWorker{
				cn("e", 8000, app),
				cn("n", 1000, app, res("web", 300, app...)),
			},
			remove: []string{"e"},
			skipped: map[string]string{
				"n": "its containers cannot all move: no worker fits web (role=app, 300MiB): the cluster has no workers",
			},
		},
		{
			name:  "no workers",
			nodes: nil,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := noHeadroomCons()
			if tc.opts != nil {
				tc.opts(&o)
			}
			p := PlanConsolidation(tc.nodes, consNow, o)
			checkPlanShape(t, tc.nodes, p)
			if len(p.Remove)+len(tc.remove) > 0 && !reflect.DeepEqual(p.Remove, tc.remove) {
				t.Errorf("Remove = %q, want %q", p.Remove, tc.remove)
			}
			if tc.moves != nil && !reflect.DeepEqual(movesOf(p), tc.moves) {
				t.Errorf("Moves = %v, want %v", movesOf(p), tc.moves)
			}
			if tc.moves == nil && len(tc.remove) > 0 {
				// Only empty workers were meant to go.
				if len(p.Moves) > 0 {
					t.Errorf("Moves = %v, want none", movesOf(p))
				}
			}
			reasons := map[string]string{}
			for _, s := range p.Skipped {
				reasons[s.Worker] = s.Reason
			}
			for w, want := range tc.skipped {
				got, ok := reasons[w]
				if !ok {
					t.Errorf("%s not skipped; want a reason containing %q", w, want)
					continue
				}
				if !strings.Contains(got, want) {
					t.Errorf("%s skipped with %q, want it to contain %q", w, got, want)
				}
			}
			if tc.unneeded != nil && (len(p.Unneeded)+len(tc.unneeded) > 0) && !reflect.DeepEqual(p.Unneeded, tc.unneeded) {
				t.Errorf("Unneeded = %q, want %q", p.Unneeded, tc.unneeded)
			}
			if t.Failed() {
				t.Logf("plan: %+v", p)
			}
		})
	}
}

// TestPlanConsolidationMoveReason checks a move's full record.
func TestPlanConsolidationMoveReason(t *testing.T) {
	nodes := []ScaleInWorker{
		cn("x", 1000, []string{"role=app"}, res("web.1", 100, "role=app")),
		filler("y", 2000, 1200, "role=app"),
	}
	p := PlanConsolidation(nodes, consNow, noHeadroomCons())
	want := []Move{{Container: "web.1", Memory: 100 * mib, From: "x", To: "y", Reason: "placed web.1 on y: role=app, 800MiB free"}}
	if !reflect.DeepEqual(p.Moves, want) {
		t.Errorf("Moves = %+v\nwant    %+v", p.Moves, want)
	}
}

// TestPlanConsolidationDoesNotChangeInput checks that the nodes passed in
// are left as they were.
func TestPlanConsolidationDoesNotChangeInput(t *testing.T) {
	app := []string{"role=app"}
	nodes := []ScaleInWorker{
		cn("e", 1000, app),
		cn("x", 2000, app, res("r1", 300, app...), res("r2", 300, app...)),
		filler("y", 1000, 600, app...),
		filler("z", 1000, 600, app...),
	}
	before := cloneNodes(nodes)
	o := noHeadroomCons()
	o.MaxNonEmpty = 3
	p := PlanConsolidation(nodes, consNow, o)
	if len(p.Moves) != 2 {
		t.Fatalf("want 2 moves, got %+v", p)
	}
	if !reflect.DeepEqual(nodes, before) {
		t.Errorf("PlanConsolidation changed its input:\n%+v\nwas\n%+v", nodes, before)
	}
}

// TestPlanConsolidationOrderIndependent checks that the plan does not
// depend on the order of the nodes.
func TestPlanConsolidationOrderIndependent(t *testing.T) {
	app, db := []string{"role=app"}, []string{"role=db"}
	nodes := []ScaleInWorker{
		cn("e1", 1000, app),
		cn("e2", 1000, db),
		cn("n1", 1000, app, res("a", 200, app...)),
		cn("n2", 1000, app, res("b", 200, app...)),
		cn("n3", 1000, db, res("c", 300, db...)),
		filler("f1", 2000, 1200, app...),
		filler("f2", 2000, 1200, db...),
	}
	o := noHeadroomCons()
	o.MaxNonEmpty = 2
	o.MinPerRole = map[string]int{"db": 1}
	want := PlanConsolidation(nodes, consNow, o)
	if len(want.Remove) == 0 {
		t.Fatalf("nothing removed: %+v", want)
	}
	for k := 0; k < 20; k++ {
		perm := slices.Clone(nodes)
		// A fixed sequence of rotations and swaps.
		perm = append(perm[k%len(perm):], perm[:k%len(perm)]...)
		i, j := k%len(perm), (k*3+1)%len(perm)
		perm[i], perm[j] = perm[j], perm[i]
		got := PlanConsolidation(perm, consNow, o)
		if !reflect.DeepEqual(got.Remove, want.Remove) || !reflect.DeepEqual(got.Moves, want.Moves) || !reflect.DeepEqual(got.Unneeded, want.Unneeded) {
			t.Fatalf("order %d: plan %+v\nwant %+v", k, got, want)
		}
		gs, ws := slices.Clone(got.Skipped), slices.Clone(want.Skipped)
		cmp := func(a, b Skip) int { return strings.Compare(a.Worker, b.Worker) }
		slices.SortFunc(gs, cmp)
		slices.SortFunc(ws, cmp)
		if !reflect.DeepEqual(gs, ws) {
			t.Fatalf("order %d: skipped %+v\nwant %+v", k, gs, ws)
		}
	}
}

func cloneNodes(ns []ScaleInWorker) []ScaleInWorker {
	out := slices.Clone(ns)
	for i := range out {
		out[i].Tags = slices.Clone(out[i].Tags)
		out[i].Residents = slices.Clone(out[i].Residents)
		for j := range out[i].Residents {
			out[i].Residents[j].Tags = slices.Clone(out[i].Residents[j].Tags)
		}
	}
	return out
}

// TestPlanConsolidationReplace checks replacement by a cheaper type, the
// minimum saving and the savings the plan reports.
// TestBudgetAllowance checks how a budget turns into a number of workers.
func TestBudgetAllowance(t *testing.T) {
	for _, c := range []struct {
		b    Budget
		n    int
		want int
	}{
		{Budget{Percent: 0.1}, 3, 1},
		{Budget{Percent: 0.1}, 30, 3}, // 0.1·30 is 3.0000000000000004 in floating point
		{Budget{Percent: 0.1}, 31, 4},
		{Budget{Percent: 0.1}, 0, 0},
		{Budget{Workers: 2}, 100, 2},
		{Budget{Workers: 2, Percent: 0.5}, 3, 2},
		{Budget{Workers: 5, Percent: 0.5}, 3, 2},
		{Budget{Percent: 1}, 7, 7},
		{Budget{}, 7, math.MaxInt},
	} {
		if got := c.b.Allowance(c.n); got != c.want {
			t.Errorf("%+v.Allowance(%d) = %d, want %d", c.b, c.n, got, c.want)
		}
	}
}

// TestPlanConsolidationYoungLast checks that a worker too young to go does
// not take, in the repack, the room an older worker needs to go now.
func TestPlanConsolidationYoungLast(t *testing.T) {
	app := []string{"role=app"}
	nodes := []ScaleInWorker{
		with(cn("young", 1000, app, res("y1", 300, app...)), func(n *ScaleInWorker) { n.JoinedAt = consNow.Add(-time.Minute) }),
		cn("old", 1000, app, res("o1", 300, app...)),
		filler("big", 10000, 9600, app...),
	}
	p := PlanConsolidation(nodes, consNow, noHeadroomCons())
	checkPlanShape(t, nodes, p)
	if !reflect.DeepEqual(p.Remove, []string{"old"}) || !reflect.DeepEqual(movesOf(p), []mv{{"o1", "old", "big"}}) {
		t.Errorf("plan %+v, want old emptied into big", p)
	}
}

func TestPlanConsolidationReplace(t *testing.T) {
	app, db := []string{"role=app"}, []string{"role=db"}
	types := []InstanceType{
		{Name: "medium", Memory: 2000 * mib, Price: 0.2},
		{Name: "small", Memory: 1000 * mib, Price: 0.1},
		{Name: "free", Memory: 500 * mib}, // no price: never used
	}
	priced := func(n ScaleInWorker, p float64) ScaleInWorker { n.Price = p; return n }
	type rp struct {
		worker, typ string
		saving      float64
	}
	cases := []struct {
		name     string
		nodes    []ScaleInWorker
		opts     func(*ConsolidateOptions)
		remove   []string
		replace  []rp
		skipped  map[string]string
		unneeded []string
		saving   float64
	}{
		{
			name:     "a worker whose containers cannot move goes to the cheapest type that holds them",
			nodes:    []ScaleInWorker{priced(cn("big", 4000, app, res("a1", 300, app...)), 0.4)},
			replace:  []rp{{"big", "small", 0.3}},
			unneeded: []string{"big"},
			saving:   0.3,
		},
		{
			name:    "headroom counts: 950MiB needs the medium type with 10% headroom",
			nodes:   []ScaleInWorker{priced(cn("big", 4000, app, res("a1", 950, app...)), 0.4)},
			opts:    func(o *ConsolidateOptions) { o.Placement.Headroom = 0.10 },
			replace: []rp{{"big", "medium", 0.2}},
			saving:  0.2,
		},
		{
			name:     "a saving under MinSaving keeps the worker as it is",
			nodes:    []ScaleInWorker{priced(cn("big", 4000, app, res("a1", 300, app...)), 0.4)},
			opts:     func(o *ConsolidateOptions) { o.MinSaving = 0.5 },
			skipped:  map[string]string{"big": "removing it saves $0.4/h, under the minimum saving of $0.5/h"},
			unneeded: []string{},
		},
		{
			name:    "a worker of unknown price is not replaced",
			nodes:   []ScaleInWorker{cn("big", 4000, app, res("a1", 300, app...))},
			skipped: map[string]string{"big": "its containers cannot all move"},
		},
		{
			name:    "a container that may not move keeps its worker as it is",
			nodes:   []ScaleInWorker{priced(cn("big", 4000, db, pinnedRes("pg", 300, db...)), 0.4)},
			skipped: map[string]string{"big": "pg is not relocatable"},
		},
		{
			name:     "waiting rules: unneeded, replaced once it has been for UnneededTime",
			nodes:    []ScaleInWorker{with(priced(cn("big", 4000, app, res("a1", 300, app...)), 0.4), func(n *ScaleInWorker) { n.UnneededSince = time.Time{} })},
			skipped:  map[string]string{"big": "could be replaced by a small (saves $0.3/h); unneeded for 0s; must be for 2m0s"},
			unneeded: []string{"big"},
		},
		{
			name: "the budget: the larger saving first, the other waits its turn",
			nodes: []ScaleInWorker{
				priced(cn("a", 4000, []string{"role=app", "zone=a"}, res("a1", 300, "role=app", "zone=a")), 0.3),
				priced(cn("b", 4000, []string{"role=app", "zone=b"}, res("b1", 300, "role=app", "zone=b")), 0.4),
			},
			opts:     func(o *ConsolidateOptions) { o.Budget = Budget{Workers: 1} },
			replace:  []rp{{"b", "small", 0.3}},
			skipped:  map[string]string{"a": "could be replaced by a small (saves $0.2/h); the disruption budget of role=app is used up"},
			unneeded: []string{"b", "a"},
			saving:   0.3,
		},
		{
			name: "an empty worker kept by MinPerRole is replaced by the cheapest type",
			nodes: []ScaleInWorker{
				priced(cn("e", 4000, app), 0.4),
			},
			opts:     func(o *ConsolidateOptions) { o.MinPerRole = map[string]int{"app": 1} },
			replace:  []rp{{"e", "small", 0.3}},
			unneeded: []string{"e"},
			saving:   0.3,
		},
		{
			name: "the usage guard: a smaller type must not push the role above the limit",
			nodes: []ScaleInWorker{
				with(priced(cn("big", 4000, app, res("a1", 300, app...)), 0.4), func(n *ScaleInWorker) { n.Used = 900 * mib }),
			},
			opts:    func(o *ConsolidateOptions) { o.UsageLimit = UsageLimit{Memory: 0.8} },
			skipped: map[string]string{"big": "would leave role=app no worker to carry its load; a small would push role=app to 90% memory use, above the 80% limit"},
		},
		{
			name: "removals save their worker's price; replacements the difference",
			nodes: []ScaleInWorker{
				priced(cn("n", 1000, app, res("n1", 100, app...)), 0.25),
				priced(cn("e", 1000, app), 0.05),
				priced(filler("f", 10000, 6000, app...), 1),
				priced(cn("d", 4000, db, res("d1", 300, db...)), 0.4),
			},
			opts:     func(o *ConsolidateOptions) { o.Budget = Budget{Percent: 1} },
			remove:   []string{"e", "n"},
			replace:  []rp{{"d", "small", 0.3}},
			skipped:  map[string]string{"f": "receives moved containers this round"},
			unneeded: []string{"e", "n", "d"},
			saving:   0.6,
		},
		{
			name: "MinSaving keeps a worker with containers that saves too little; an empty one goes",
			nodes: []ScaleInWorker{
				priced(cn("n", 1000, app, res("n1", 100, app...)), 0.05),
				priced(cn("e", 1000, app), 0.05),
				priced(filler("f", 10000, 6000, app...), 1),
			},
			opts:    func(o *ConsolidateOptions) { o.MinSaving = 0.1; o.Budget = Budget{Percent: 1} },
			remove:  []string{"e"},
			skipped: map[string]string{"n": "removing it saves $0.05/h, under the minimum saving of $0.1/h"},
			saving:  0.05,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := noHeadroomCons()
			o.Types = types
			if tc.opts != nil {
				tc.opts(&o)
			}
			p := PlanConsolidation(tc.nodes, consNow, o)
			checkPlanShape(t, tc.nodes, p)
			if len(p.Remove)+len(tc.remove) > 0 && !reflect.DeepEqual(p.Remove, tc.remove) {
				t.Errorf("Remove = %q, want %q", p.Remove, tc.remove)
			}
			var got []rp
			for _, r := range p.Replace {
				got = append(got, rp{r.Worker, r.Type.Name, math.Round(r.Saving*1e6) / 1e6})
				if r.Reason == "" {
					t.Errorf("replacement of %s without a reason", r.Worker)
				}
			}
			if len(got)+len(tc.replace) > 0 && !reflect.DeepEqual(got, tc.replace) {
				t.Errorf("Replace = %v, want %v", got, tc.replace)
			}
			reasons := map[string]string{}
			for _, s := range p.Skipped {
				reasons[s.Worker] = s.Reason
			}
			for w, want := range tc.skipped {
				if got, ok := reasons[w]; !ok || !strings.Contains(got, want) {
					t.Errorf("%s skipped with %q, want it to contain %q", w, got, want)
				}
			}
			if tc.unneeded != nil && len(p.Unneeded)+len(tc.unneeded) > 0 && !reflect.DeepEqual(p.Unneeded, tc.unneeded) {
				t.Errorf("Unneeded = %q, want %q", p.Unneeded, tc.unneeded)
			}
			if math.Abs(p.SavingPerHour-tc.saving) > 1e-9 {
				t.Errorf("SavingPerHour = %v, want %v", p.SavingPerHour, tc.saving)
			}
			if t.Failed() {
				t.Logf("plan: %+v", p)
			}
		})
	}
}
