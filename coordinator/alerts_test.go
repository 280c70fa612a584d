package coordinator

import (
	"maps"
	"strings"
	"testing"
	"time"
)

// uw is a worker of role with cpu (fraction of its cores) and memory use
// usedMiB of capMiB.
func uw(name, role string, cpu float64, usedMiB, capMiB int64) Worker {
	return Worker{Name: name, Tags: []string{"role=" + role}, Capacity: capMiB * mib, Used: usedMiB * mib, CPUUsed: cpu}
}

func TestRoleAlerts(t *testing.T) {
	lim := UsageLimit{CPU: 0.8, Memory: 0.9, For: 2 * time.Minute}
	t0 := scaleNow
	hotApp := []Worker{
		uw("a1", "app", 0.95, 100, 1000), uw("a2", "app", 0.85, 100, 1000),
		uw("d1", "db", 0.1, 950, 1000), uw("d2", "db", 0.1, 900, 1000),
		// Neither draining nor booting workers count.
		func() Worker { w := uw("a3", "app", 0, 0, 1000); w.Draining = true; return w }(),
		func() Worker { w := uw("a4", "app", 0, 0, 1000); w.Booting = true; return w }(),
	}

	// First seen above: pending, not firing.
	alerts, since := RoleAlerts(lim, hotApp, nil, t0)
	if len(alerts) != 2 {
		t.Fatalf("alerts %+v", alerts)
	}
	a, m := alerts[0], alerts[1]
	if a.Role != "app" || a.Metric != UsageCPU || a.Firing || !a.Since.Equal(t0) || a.Limit != 0.8 || a.Value < 0.899 || a.Value > 0.901 {
		t.Errorf("app cpu: %+v", a)
	}
	if a.Reason != "role=app: 90% cpu on average over 2 workers, above the 80% limit for 0s (alert after 2m0s)" {
		t.Errorf("reason %q", a.Reason)
	}
	if m.Role != "db" || m.Metric != UsageMemory || m.Firing || m.Value != 0.925 {
		t.Errorf("db memory: %+v", m)
	}
	want := map[string]time.Time{"app/cpu": t0, "db/memory": t0}
	if !maps.Equal(since, want) {
		t.Errorf("since %v, want %v", since, want)
	}

	// Still above, not yet for long enough.
	alerts, since = RoleAlerts(lim, hotApp, since, t0.Add(119*time.Second))
	if len(alerts) != 2 || alerts[0].Firing || alerts[1].Firing {
		t.Fatalf("fired early: %+v", alerts)
	}
	// Above for For: fires, Since unchanged.
	in := maps.Clone(since)
	alerts, since = RoleAlerts(lim, hotApp, since, t0.Add(2*time.Minute))
	if len(alerts) != 2 || !alerts[0].Firing || !alerts[1].Firing || !alerts[0].Since.Equal(t0) {
		t.Fatalf("did not fire after For: %+v", alerts)
	}
	if alerts[0].Reason != "role=app: 90% cpu on average over 2 workers, above the 80% limit for 2m0s" {
		t.Errorf("reason %q", alerts[0].Reason)
	}
	if !maps.Equal(in, since) {
		t.Errorf("since changed: %v → %v", in, since)
	}

	// app cools down: its alert and its since go; db keeps firing.
	cooled := append([]Worker(nil), hotApp...)
	cooled[0].CPUUsed = 0.7
	before := maps.Clone(since)
	alerts, since = RoleAlerts(lim, cooled, since, t0.Add(3*time.Minute))
	if len(alerts) != 1 || alerts[0].Role != "db" || !alerts[0].Firing {
		t.Fatalf("after app cooled: %+v", alerts)
	}
	if _, ok := since["app/cpu"]; ok {
		t.Errorf("app/cpu still tracked: %v", since)
	}
	if !maps.Equal(before, in) {
		t.Errorf("RoleAlerts changed the map it was given")
	}

	// app goes back above: the wait starts over.
	alerts, since = RoleAlerts(lim, hotApp, since, t0.Add(4*time.Minute))
	if len(alerts) != 2 || alerts[0].Firing || !alerts[0].Since.Equal(t0.Add(4*time.Minute)) {
		t.Fatalf("after app went back above: %+v", alerts)
	}
	_ = since
}

func TestRoleAlertsEdges(t *testing.T) {
	// Exactly at the limit is not above it.
	ws := []Worker{uw("a", "app", 0.8, 900, 1000)}
	if alerts, _ := RoleAlerts(UsageLimit{CPU: 0.8, Memory: 0.9}, ws, nil, scaleNow); len(alerts) != 0 {
		t.Errorf("at the limit: %+v", alerts)
	}
	// Off: nothing, and an empty map.
	if alerts, since := RoleAlerts(UsageLimit{}, ws, map[string]time.Time{"app/cpu": scaleNow}, scaleNow); len(alerts) != 0 || len(since) != 0 {
		t.Errorf("off: %+v %v", alerts, since)
	}
	// For 0 is DefaultAlertFor; workers without a role are a role too;
	// a value just above the limit shows the decimal that tells them apart.
	ws = []Worker{{Name: "x", CPUUsed: 0.804, Capacity: 1000}}
	first := scaleNow.Add(-DefaultAlertFor)
	alerts, _ := RoleAlerts(UsageLimit{CPU: 0.8}, ws, map[string]time.Time{"/cpu": first}, scaleNow)
	if len(alerts) != 1 || !alerts[0].Firing || alerts[0].Role != "" {
		t.Fatalf("%+v", alerts)
	}
	if r := alerts[0].Reason; r != "workers without a role: 80.4% cpu on average over 1 worker, above the 80% limit for 2m0s" {
		t.Errorf("reason %q", r)
	}
	// A since in the future (clock went back) restarts the wait.
	alerts, since := RoleAlerts(UsageLimit{CPU: 0.5}, ws, map[string]time.Time{"/cpu": scaleNow.Add(time.Hour)}, scaleNow)
	if alerts[0].Firing || !since["/cpu"].Equal(scaleNow) {
		t.Errorf("%+v %v", alerts, since)
	}
}

func TestUsageLimit(t *testing.T) {
	lim := UsageLimit{CPU: 0.8, Memory: 0.9}
	for _, c := range []struct {
		w    Worker
		want bool
	}{
		{uw("a", "app", 0.81, 0, 1000), true},
		{uw("a", "app", 0.8, 900, 1000), false},
		{uw("a", "app", 0.1, 901, 1000), true},
		{Worker{Name: "no capacity", Used: 10}, false},
	} {
		if got := lim.Hot(&c.w); got != c.want {
			t.Errorf("Hot(%+v) = %v", c.w, got)
		}
	}
	if (UsageLimit{Memory: 0.9}).Hot(&Worker{CPUUsed: 1, Capacity: 1}) {
		t.Errorf("CPU limit off, still hot by CPU")
	}
	for _, c := range []struct {
		l    UsageLimit
		want string
	}{
		{UsageLimit{CPU: 1.5}, "usage limit cpu 1.5"},
		{UsageLimit{Memory: -0.1}, "usage limit memory -0.1"},
		{UsageLimit{For: -time.Second}, "usage limit for -1s"},
	} {
		if err := c.l.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want %q", c.l, err, c.want)
		}
	}
	if err := lim.Validate(); err != nil {
		t.Errorf("Validate(%+v) = %v", lim, err)
	}
}

func hot(w Worker) Worker { w.Hot = true; return w }

// A worker that is not hot wins over a hot one under both strategies,
// whatever the memory; the strategy ranks within each group; a hot worker
// is used when no other fits, and the reason says so.
func TestPlaceHot(t *testing.T) {
	cases := []struct {
		name    string
		workers []Worker
		opts    Options
		want    string
		reason  string
	}{
		{
			name:    "spread: a cool worker with less free memory wins",
			workers: []Worker{hot(wk("big", 8000, 0)), wk("small", 2000, 0)},
			opts:    DefaultOptions(), want: "small",
		},
		{
			name:    "binpack: a cool worker with more free memory wins",
			workers: []Worker{hot(wk("tight", 1000, 0)), wk("roomy", 8000, 0)},
			opts:    binpack(), want: "roomy",
		},
		{
			name:    "spread ranks among the cool ones",
			workers: []Worker{hot(wk("h", 9000, 0)), wk("c1", 2000, 0), wk("c2", 3000, 0)},
			opts:    DefaultOptions(), want: "c2",
		},
		{
			name:    "binpack ranks among the hot ones when no cool one fits",
			workers: []Worker{hot(wk("h1", 2000, 0)), hot(wk("h2", 3000, 0)), wk("c", 200, 0), draining(wk("d", 9000, 0))},
			opts:    binpack(), want: "h1",
			reason: "(above the usage limit, but no cooler worker fits)",
		},
		{
			name:    "a hot worker that lacks a tag is no choice",
			workers: []Worker{hot(wk("h", 2000, 0)), wk("c", 2000, 0, "role=app")},
			opts:    DefaultOptions(), want: "c",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := req("web.1", 500)
			if c.name == "a hot worker that lacks a tag is no choice" {
				r = req("web.1", 500, "role=app")
			}
			d := placeAllWays(t, &Snapshot{Workers: c.workers}, r, c.opts)
			if d.Worker != c.want {
				t.Errorf("placed on %q, want %q: %s", d.Worker, c.want, d.Reason)
			}
			if c.reason != "" && !strings.Contains(d.Reason, c.reason) {
				t.Errorf("reason %q, want %q", d.Reason, c.reason)
			}
			if c.reason == "" && strings.Contains(d.Reason, "usage limit") {
				t.Errorf("reason %q mentions the usage limit", d.Reason)
			}
		})
	}
	// A Placer keeps the preference through commits: the cool worker
	// takes requests until it is full, then the hot one does.
	p := NewPlacer(&Snapshot{Workers: []Worker{hot(wk("h", 10000, 0)), wk("c", 1000, 0)}}, Options{Strategy: StrategySpread})
	var got []string
	for i := 0; i < 4; i++ {
		d := p.Place(req("x", 400))
		p.Commit(d)
		got = append(got, d.Worker)
	}
	if strings.Join(got, ",") != "c,c,h,h" {
		t.Errorf("placements %v, want c,c,h,h", got)
	}
}

// Consolidation keeps a worker when its role's remaining workers would
// carry too much.
func TestPlanConsolidationUsageGuard(t *testing.T) {
	app := []string{"role=app"}
	cpuNode := func(name string, cpu float64, rs ...Resident) ScaleInWorker {
		n := cn(name, 1000, app, rs...)
		n.CPUUsed = cpu
		return n
	}
	cases := []struct {
		name    string
		nodes   []ScaleInWorker
		limit   UsageLimit
		remove  []string
		skipped map[string]string
	}{
		{
			name:   "off: empty workers go, whatever the load",
			nodes:  []ScaleInWorker{cpuNode("a", 0.1, res("a1", 100, app...)), cpuNode("b", 0.8), cpuNode("c", 0.8)},
			remove: []string{"b", "c"},
		},
		{
			// (0.1+0.8+0.8)/2 = 85%.
			name:    "cpu: would push the rest above the limit",
			nodes:   []ScaleInWorker{cpuNode("a", 0.1, res("a1", 100, app...)), cpuNode("b", 0.8, res("b1", 600, app...)), cpuNode("c", 0.8, res("c1", 600, app...))},
			limit:   UsageLimit{CPU: 0.8},
			skipped: map[string]string{"a": "would push role=app to 85% CPU, above the 80% limit"},
		},
		{
			// (0.1+0.6+0.6)/2 = 65%.
			name:   "cpu: under the limit after the move",
			nodes:  []ScaleInWorker{cpuNode("a", 0.1, res("a1", 100, app...)), cpuNode("b", 0.6, res("b1", 600, app...)), cpuNode("c", 0.6, res("c1", 600, app...))},
			limit:  UsageLimit{CPU: 0.8},
			remove: []string{"a"},
		},
		{
			// Removing empty e1 leaves (0.5·3)/3 = 50%; removing e2 too
			// would make it 75% > 70%.
			name: "cpu: counts the workers removed earlier in the round",
			nodes: []ScaleInWorker{cpuNode("e1", 0), cpuNode("e2", 0),
				cpuNode("b", 0.5, res("b1", 600, app...)), cpuNode("c", 0.5, res("c1", 600, app...)), cpuNode("d", 0.5, res("d1", 600, app...))},
			limit:   UsageLimit{CPU: 0.7},
			remove:  []string{"e1", "e2"},
			skipped: map[string]string{},
		},
		{
			name: "cpu: the second empty worker would overload",
			nodes: []ScaleInWorker{cpuNode("e1", 0), cpuNode("e2", 0),
				cpuNode("b", 0.75, res("b1", 600, app...)), cpuNode("c", 0.75, res("c1", 600, app...)), cpuNode("d", 0.75, res("d1", 600, app...))},
			limit:   UsageLimit{CPU: 0.7},
			remove:  []string{"e1"},
			skipped: map[string]string{"e2": "would push role=app to 75% CPU, above the 70% limit"},
		},
		{
			// Used (a: 100, b, c: 600 each) over the capacity left (2000) = 65%.
			name:    "memory: would push the rest above the limit",
			nodes:   []ScaleInWorker{cpuNode("a", 0, res("a1", 100, app...)), cpuNode("b", 0, res("b1", 600, app...)), cpuNode("c", 0, res("c1", 600, app...))},
			limit:   UsageLimit{Memory: 0.6},
			skipped: map[string]string{"a": "would push role=app to 65% memory use, above the 60% limit"},
		},
		{
			name: "draining workers' load counts, they carry nothing",
			nodes: []ScaleInWorker{cpuNode("a", 0, res("a1", 100, app...)), cpuNode("b", 0.5, res("b1", 600, app...)), cpuNode("c", 0.5, res("c1", 600, app...)),
				with(cpuNode("d", 0.6), func(n *ScaleInWorker) { n.Draining = true })},
			limit:   UsageLimit{CPU: 0.75},
			skipped: map[string]string{"a": "would push role=app to 80% CPU, above the 75% limit", "d": "already draining"},
		},
		{
			name:    "the last worker of a role with load stays",
			nodes:   []ScaleInWorker{cpuNode("a", 0.05), with(cpuNode("x", 0.9, res("x1", 100, "role=db")), func(n *ScaleInWorker) { n.Tags = []string{"role=db"} })},
			limit:   UsageLimit{CPU: 0.8},
			skipped: map[string]string{"a": "would leave role=app no worker to carry its load"},
		},
		{
			name:   "other roles do not count",
			nodes:  []ScaleInWorker{cpuNode("a", 0.1, res("a1", 100, app...)), cpuNode("b", 0.5, res("b1", 600, app...)), with(cpuNode("x", 0.99, res("x1", 100, "role=db")), func(n *ScaleInWorker) { n.Tags = []string{"role=db"} })},
			limit:  UsageLimit{CPU: 0.8},
			remove: []string{"a"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := noHeadroomCons()
			o.MaxNonEmpty = 1
			o.UsageLimit = c.limit
			p := PlanConsolidation(c.nodes, consNow, o)
			checkPlanShape(t, c.nodes, p)
			if strings.Join(p.Remove, ",") != strings.Join(c.remove, ",") {
				t.Errorf("remove %v, want %v; skipped %+v", p.Remove, c.remove, p.Skipped)
			}
			got := map[string]string{}
			for _, s := range p.Skipped {
				got[s.Worker] = s.Reason
			}
			for w, part := range c.skipped {
				if !strings.Contains(got[w], part) {
					t.Errorf("%s skipped for %q, want %q", w, got[w], part)
				}
			}
			// A worker kept by the guard is not unneeded: its wait
			// starts over once the load allows its removal.
			for _, u := range p.Unneeded {
				if strings.HasPrefix(got[u], "would ") {
					t.Errorf("%s is in Unneeded but kept by the usage guard", u)
				}
			}
		})
	}
}
