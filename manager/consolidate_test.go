package manager

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions"
)

// consolidationWorld has two app workers known to the cloud, with one
// container each; the consolidator can empty one into the other.
func consolidationWorld(t *testing.T) (*world, *testManager) {
	w := newWorld(t)
	for _, n := range []string{"w-1", "w-2"} {
		w.addWorker(n, 1<<30, "role=app")
		w.cloud.listed = append(w.cloud.listed, cloudapi.Instance{ID: "i-" + n, Name: n, Cluster: "mt", State: cloudapi.StateRunning})
	}
	cfg := scaleConfig()
	cfg.Provider = w.cloud
	m := w.start("m1", cfg)
	w.leader()
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB", Ports: []string{"8080"}, Replicas: 2}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "web passes on both workers", func() bool { return m.passing("web") == 2 })
	return w, m
}

// A manual round drains the least utilized worker make before break (the
// new copy passes before the old one stops) and terminates it; a dry run
// changes nothing; every skipped worker has a reason.
func TestConsolidateDrainsAndTerminates(t *testing.T) {
	w, m := consolidationWorld(t)
	before := w.desiredKeys()
	var dry ConsolidateResult
	if code := m.do("POST", "/v1/consolidate", ConsolidateRequest{DryRun: true}, &dry); code != 200 || dry.Outcome != "planned" || len(dry.Plan.Remove) != 1 {
		t.Fatalf("dry run: %d %+v", code, dry)
	}
	if !strings.HasPrefix(dry.Actions[0], "would move web-") {
		t.Fatalf("dry-run actions: %v", dry.Actions)
	}
	if after := w.desiredKeys(); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("a dry run changed the journal: %v → %v", before, after)
	}
	var res ConsolidateResult
	if code := m.do("POST", "/v1/consolidate", nil, &res); code != 200 || res.Outcome != "removed" {
		t.Fatalf("round: %d %+v", code, res)
	}
	gone := res.Plan.Remove[0]
	kept := "w-1"
	if gone == "w-1" {
		kept = "w-2"
	}
	for _, c := range m.ps() {
		if c.Node != kept || c.State != StateRunning || c.Health != HealthPassing {
			t.Fatalf("after the round: %+v", c)
		}
	}
	w.cloud.mu.Lock()
	terminated := append([]string(nil), w.cloud.terminated...)
	w.cloud.mu.Unlock()
	if len(terminated) != 1 || terminated[0] != "i-"+gone {
		t.Fatalf("terminated %v, want i-%s", terminated, gone)
	}
	if _, ok := m.current().store.Instance(gone); ok {
		t.Fatalf("the instance record of %s is left", gone)
	}
	var evs []Event
	m.do("GET", "/v1/events", nil, &evs)
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
	}
	if kinds[EventScaleIn] != 1 || kinds[EventMoved] != 1 || kinds[EventTerminated] != 1 {
		t.Fatalf("events by kind: %v", kinds)
	}
	// Nothing more to do: the last worker holds a container that cannot go.
	if code := m.do("POST", "/v1/consolidate", nil, &res); code != 200 || res.Outcome != "nothing-to-do" || len(res.Plan.Skipped) != 1 {
		t.Fatalf("second round: %d %+v", code, res)
	}
}

// A move whose new copy never passes is rolled back: the new copy stops,
// the old one never did, and the worker stays.
func TestConsolidateRollsBackAMoveThatDoesNotPass(t *testing.T) {
	w, m := consolidationWorld(t)
	m.cfg.MoveTimeout = 300 * time.Millisecond
	w.reg.mu.Lock()
	w.reg.critical["web-1.g1"], w.reg.critical["web-2.g1"] = true, true
	w.reg.mu.Unlock()
	var res ConsolidateResult
	if code := m.do("POST", "/v1/consolidate", nil, &res); code != 200 || res.Outcome != "failed" || !strings.Contains(res.Error, "did not pass its check") {
		t.Fatalf("round: %d %+v", code, res)
	}
	eventually(t, 5*time.Second, "both original copies run, no new one", func() bool {
		n := 0
		for _, sw := range w.agents.all() {
			for _, gens := range sw.running(w.agents) {
				for _, g := range gens {
					if g != 0 {
						return false
					}
					n++
				}
			}
		}
		return n == 2 && m.passing("web") == 2
	})
	for _, c := range m.ps() {
		if c.Move != nil {
			t.Fatalf("a move mark is left: %+v", c)
		}
	}
	if m.current().isDraining("w-1") || m.current().isDraining("w-2") {
		t.Fatal("a draining mark is left")
	}
}

// Without a provider, a round says why it cannot run.
func TestConsolidateWithoutAProvider(t *testing.T) {
	w := newWorld(t)
	m := w.start("m1", testConfig())
	w.leader()
	var res ConsolidateResult
	if code := m.do("POST", "/v1/consolidate", nil, &res); code != http.StatusConflict || !strings.Contains(res.Error, "needs a cloud provider") {
		t.Fatalf("round without a provider: %d %+v", code, res)
	}
}

// The cron schedule runs unattended rounds while the manager leads.
func TestUnattendedRoundsRunOnSchedule(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 1<<30, "role=app")
	w.cloud.listed = []cloudapi.Instance{{ID: "i-w-1", Name: "w-1", Cluster: "mt"}}
	cfg := scaleConfig()
	cfg.Provider = w.cloud
	cfg.ConsolidateSchedule = "@every 1s"
	cfg.Consolidate.Threshold = 0.5
	cfg.Consolidate.DelayAfterAdd = time.Hour
	m := w.start("m1", cfg)
	w.leader()
	eventually(t, 5*time.Second, "a round ran and recorded why w-1 stays", func() bool {
		var evs []Event
		m.do("GET", "/v1/events", nil, &evs)
		for _, e := range evs {
			if e.Kind == EventSkipped && e.Subject == "w-1" {
				return true
			}
		}
		return false
	})
}

// A service with a running replica that does not pass is not disturbed
// by a move; a drain past its deadline rolls the move in progress back.
func TestConsolidateDisruptionGuards(t *testing.T) {
	w, m := consolidationWorld(t)
	// web-1 and web-2 run on different workers; make the one that stays
	// fail its check: moving the other would leave web with none passing.
	var dry ConsolidateResult
	if code := m.do("POST", "/v1/consolidate", ConsolidateRequest{DryRun: true}, &dry); code != 200 || len(dry.Plan.Moves) != 1 {
		t.Fatalf("dry run: %d %+v", code, dry)
	}
	moving := dry.Plan.Moves[0].Container
	other := "web-1"
	if moving == "web-1" {
		other = "web-2"
	}
	w.reg.mu.Lock()
	w.reg.critical[other] = true
	w.reg.bump()
	w.reg.mu.Unlock()
	eventually(t, 5*time.Second, "the manager sees "+other+" failing", func() bool { return m.passing("web") == 1 })
	var res ConsolidateResult
	if code := m.do("POST", "/v1/consolidate", nil, &res); code != 200 || res.Outcome != "failed" ||
		!strings.Contains(res.Error, "is not moved now: service web has 0 of its other 1 running replicas passing") {
		t.Fatalf("round with a degraded service: %d %+v", code, res)
	}
	w.reg.mu.Lock()
	delete(w.reg.critical, other)
	w.reg.critical[moving+".g1"] = true // the new copy never passes
	w.reg.bump()
	w.reg.mu.Unlock()
	eventually(t, 5*time.Second, "both pass again", func() bool { return m.passing("web") == 2 })
	m.cfg.MoveTimeout = time.Minute
	m.cfg.DrainDeadline = 300 * time.Millisecond
	if code := m.do("POST", "/v1/consolidate", nil, &res); code != 200 || res.Outcome != "failed" || !strings.Contains(res.Error, "the drain deadline of 300ms passed") {
		t.Fatalf("round past the drain deadline: %d %+v", code, res)
	}
	eventually(t, 5*time.Second, "the move is rolled back", func() bool {
		for _, c := range m.ps() {
			if c.Move != nil {
				return false
			}
		}
		return m.passing("web") == 2
	})
}

// Outside every maintenance window an unattended plan keeps only the
// removal of empty workers; the others say why they wait.
func TestEmptyOnlyOutsideMaintenanceWindows(t *testing.T) {
	sch, err := definitions.ParseCron("0 2 * * *")
	if err != nil {
		t.Fatal(err)
	}
	ws := []coordinator.ScheduleWindow{{Spec: "0 2 * * *", Schedule: sch, Duration: 3 * time.Hour}}
	plan := coordinator.ConsolidationPlan{Remove: []string{"w-1", "w-2"},
		Moves: []coordinator.Move{{Container: "web-1", From: "w-2", To: "w-3"}}}
	got := emptyOnly(plan, ws)
	if fmt.Sprint(got.Remove) != "[w-1]" || len(got.Moves) != 0 || len(got.Skipped) != 1 || got.Skipped[0].Worker != "w-2" ||
		!strings.Contains(got.Skipped[0].Reason, `wait for a maintenance window ("0 2 * * *" for 3h0m0s)`) {
		t.Fatalf("emptyOnly: %+v", got)
	}
	if active := coordinator.ActiveWindows(ws, time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)); len(active) != 1 {
		t.Fatal("03:00 is inside the 02:00 + 3h window")
	}
	if active := coordinator.ActiveWindows(ws, time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)); len(active) != 0 {
		t.Fatal("06:00 is outside the 02:00 + 3h window")
	}
}

// A worker whose containers fit a cheaper type is replaced: the new
// instance is asked for, the containers move to it make before break,
// the old instance is terminated, and the saving is shown.
func TestConsolidateReplacesByACheaperType(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 2<<30, "role=app")
	w.cloud.listed = append(w.cloud.listed, cloudapi.Instance{ID: "i-w-1", Name: "w-1", Cluster: "mt", State: cloudapi.StateRunning})
	cfg := scaleConfig()
	cfg.Provider = w.cloud
	cfg.InstanceTypes = []cloudapi.InstanceType{{Name: "small", Memory: 512 << 20, Price: 0.01}, {Name: "large", Memory: 2 << 30, Price: 0.04}}
	cfg.Consolidate = coordinator.DefaultConsolidateOptions()
	cfg.Consolidate.MinPerRole = map[string]int{"app": 1}
	// A joining instance: the fake cloud's create makes its worker join.
	w.cloud.onCreate = func(spec cloudapi.Spec) {
		go w.addWorker(spec.Name, 512<<20, "role=app")
		w.cloud.mu.Lock()
		w.cloud.listed = append(w.cloud.listed, cloudapi.Instance{ID: "i-" + spec.Name, Name: spec.Name, Cluster: "mt", State: cloudapi.StateRunning})
		w.cloud.mu.Unlock()
	}
	m := w.start("m1", cfg)
	w.leader()
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB", Ports: []string{"8080"}, Replicas: 2}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "web passes", func() bool { return m.passing("web") == 2 })

	var dry ConsolidateResult
	if code := m.do("POST", "/v1/consolidate", ConsolidateRequest{DryRun: true}, &dry); code != 200 || dry.Outcome != "planned" || len(dry.Plan.Replace) != 1 {
		t.Fatalf("dry run: %d %+v", code, dry)
	}
	if got := strings.Join(dry.Actions, "\n"); !strings.Contains(got, "would replace w-1 by a new small instance and move 2 containers to it (saves $0.03/h)") {
		t.Fatalf("dry-run actions:\n%s", got)
	}
	var res ConsolidateResult
	if code := m.do("POST", "/v1/consolidate", nil, &res); code != 200 || res.Outcome != "removed" {
		t.Fatalf("round: %d %+v", code, res)
	}
	var newNode string
	for _, c := range m.ps() {
		if c.Node == "w-1" || c.State != StateRunning || c.Health != HealthPassing || c.Generation != 1 {
			t.Fatalf("after the replacement: %+v", c)
		}
		newNode = c.Node
	}
	if in, ok := m.current().store.Instance(newNode); !ok || in.Type != "small" {
		t.Fatalf("the new worker %s is not a small instance: %+v", newNode, in)
	}
	w.cloud.mu.Lock()
	terminated := append([]string(nil), w.cloud.terminated...)
	w.cloud.mu.Unlock()
	if fmt.Sprint(terminated) != "[i-w-1]" {
		t.Fatalf("terminated %v, want [i-w-1]", terminated)
	}
	evs, _ := m.events.since(0, 0)
	saved := false
	for _, e := range evs {
		if e.Kind == EventTerminated && e.Subject == "w-1" && strings.Contains(e.Message, "saves $0.03/h") {
			saved = true
		}
	}
	if !saved {
		t.Fatal("no event shows the saving")
	}
}
