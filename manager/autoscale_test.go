package manager

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions"
)

// scaleClock is the time the simulated agents stamp their samples with
// and the autoscaler's rounds are run at.
type scaleClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *scaleClock) get() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *scaleClock) add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// autoscaleWorld starts a manager whose autoscaler only runs when the test
// calls round, on two app workers.
func autoscaleWorld(t *testing.T) (*world, *testManager, *scaleClock, func() int) {
	w := newWorld(t)
	w.addWorker("w-1", 2<<30, "role=app")
	w.addWorker("w-2", 2<<30, "role=app")
	clock := &scaleClock{now: time.Now()}
	w.agents.clock = clock.get
	cfg := testConfig()
	cfg.AutoscaleInterval = time.Hour
	m := w.start("m1", cfg)
	w.leader()
	return w, m, clock, func() int {
		l := m.current()
		l.autoscaleRound(context.Background(), clock.get())
		members, _ := l.scaleMembers("web")
		return len(members)
	}
}

func webPolicy(min, max int, cpu float64, stab string) *definitions.Scaling {
	return &definitions.Scaling{Min: min, Max: max, CPU: cpu, Stabilization: stab}
}

// The autoscaler follows the measured CPU: up at once, down only after the
// stabilization window, never down while metrics are missing, and every
// change is an event with its inputs.
func TestAutoscaleFollowsCPU(t *testing.T) {
	w, m, clock, round := autoscaleWorld(t)
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB", Ports: []string{"8080"},
		Scaling: webPolicy(1, 6, 50, "1m")}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "web-1 passes", func() bool { return m.passing("web") == 1 })
	if _, ok := w.journal.Get("scaling/web"); !ok {
		t.Fatal("the policy is not in the journal")
	}

	w.agents.setCPU("web", 100)
	if n := round(); n != 2 {
		t.Fatalf("at 100%% CPU against 50%%: %d replicas, want 2", n)
	}
	eventually(t, 5*time.Second, "2 pass", func() bool { return m.passing("web") == 2 })
	// The new replica's samples need a metric window before the next
	// step up.
	clock.add(5 * time.Second)
	if n := round(); n != 2 {
		t.Fatalf("right after a change (settling): %d replicas, want 2", n)
	}
	clock.add(11 * time.Second)
	if n := round(); n != 4 {
		t.Fatalf("still 100%% on 2 replicas: %d replicas, want 4", n)
	}
	eventually(t, 5*time.Second, "4 pass", func() bool { return m.passing("web") == 4 })

	// Within the tolerance nothing changes.
	w.agents.setCPU("web", 53)
	clock.add(5 * time.Second)
	if n := round(); n != 4 {
		t.Fatalf("53%% against 50%%: %d replicas, want 4", n)
	}

	// Low load: nothing goes before the stabilization window has passed.
	w.agents.setCPU("web", 10)
	for i := 0; i < 10; i++ {
		clock.add(5 * time.Second)
		if n := round(); n != 4 {
			t.Fatalf("%ds into low load (window 1m): %d replicas, want 4", 5*(i+1), n)
		}
	}
	// Metrics missing (every worker fails): no scale-down either.
	for _, sw := range w.agents.all() {
		w.agents.mu.Lock()
		sw.fail = fmt.Errorf("stats unavailable")
		w.agents.mu.Unlock()
	}
	clock.add(65 * time.Second)
	if n := round(); n != 4 {
		t.Fatalf("metrics missing: %d replicas, want 4", n)
	}
	var v PolicyView
	if code := m.do("GET", "/v1/autoscale/web", nil, &v); code != 200 || len(v.Metrics) != 1 || !v.Metrics[0].Missing {
		t.Fatalf("GET /v1/autoscale/web with missing metrics: %d %+v", code, v)
	}
	for _, sw := range w.agents.all() {
		w.agents.mu.Lock()
		sw.fail = nil
		w.agents.mu.Unlock()
	}
	// The round with missing metrics recommended keeping 4: a whole
	// window of low load must follow.
	clock.add(5 * time.Second)
	if n := round(); n != 4 {
		t.Fatalf("metrics back, within the window of the missing round: %d replicas, want 4", n)
	}
	for i := 0; i < 10; i++ {
		clock.add(5 * time.Second)
		if n := round(); n != 4 {
			t.Fatalf("%ds after the missing round: %d replicas, want 4", 5*(i+2), n)
		}
	}
	clock.add(5 * time.Second)
	if n := round(); n != 1 {
		t.Fatalf("10%% for a whole minute: %d replicas, want 1", n)
	}
	eventually(t, 5*time.Second, "the extra replicas are stopped", func() bool { return len(w.journalRecords()) == 1 })

	var ups, downs int
	evs, _ := m.events.since(0, 0)
	for _, e := range evs {
		if e.Kind != EventAutoscale {
			continue
		}
		if !strings.Contains(e.Message, "cpu ") || !strings.Contains(e.Message, "target 50%") {
			t.Errorf("event without its inputs: %s", e.Message)
		}
		switch {
		case strings.HasPrefix(e.Message, "1 → 2"), strings.HasPrefix(e.Message, "2 → 4"):
			ups++
		case strings.HasPrefix(e.Message, "4 → 1"):
			downs++
		}
	}
	if ups != 2 || downs != 1 {
		t.Fatalf("autoscale events: %d up, %d down; want 2 and 1", ups, downs)
	}
}

// Off: decisions are computed and shown, not applied; scale by hand works
// within min and max; a bad policy changes nothing; stopping the service
// removes its policy.
func TestAutoscaleOffScaleAndBadPolicies(t *testing.T) {
	w, m, clock, round := autoscaleWorld(t)
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB",
		Scaling: webPolicy(2, 5, 50, "")}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "min 2 replicas pass", func() bool { return m.passing("web") == 2 })

	off := true
	var v PolicyView
	if code := m.do("PUT", "/v1/autoscale/web", AutoscaleChange{Off: &off}, &v); code != 200 || !v.Off {
		t.Fatalf("autoscale off: %d %+v", code, v)
	}
	w.agents.setCPU("web", 100)
	if n := round(); n != 2 {
		t.Fatalf("autoscaling off: %d replicas, want 2", n)
	}
	if code := m.do("GET", "/v1/autoscale/web", nil, &v); code != 200 || v.Last == nil || v.Last.Desired != 4 || v.Last.Applied {
		t.Fatalf("the decision is not shown unapplied: %+v", v.Last)
	}

	// By hand, within the policy.
	if code := m.do("POST", "/v1/services/web/scale", ScaleRequest{Replicas: 3}, &v); code != 200 {
		t.Fatalf("scale 3: %d", code)
	}
	eventually(t, 5*time.Second, "3 pass", func() bool { return m.passing("web") == 3 })
	var e ErrorBody
	if code := m.do("POST", "/v1/services/web/scale", ScaleRequest{Replicas: 9}, &e); code != 400 || !strings.Contains(e.Error, "outside web's scaling policy (min 2, max 5)") {
		t.Fatalf("scale 9 beyond max 5: %d %s", code, e.Error)
	}

	// Bad policies are refused and change nothing.
	before := fmt.Sprint(w.desiredKeys(), w.journal.Keys(policiesPrefix))
	for _, tc := range []struct {
		s    definitions.Scaling
		want string
	}{
		{definitions.Scaling{Min: 5, Max: 2, CPU: 50}, "min: 5 is above max 2"},
		{definitions.Scaling{Min: 1, Max: 2}, "needs a metric to scale on"},
		{definitions.Scaling{Min: 1, Max: 2, CPU: 150}, "cpu: must be above 0% and at most 100%"},
		{definitions.Scaling{Min: 1, Max: 2, Memory: 120}, "memory: must be above 0% and at most 100%"},
		{definitions.Scaling{Min: 1, Max: 2, Query: "up", PerReplica: 10}, "the manager has no Prometheus"},
		{definitions.Scaling{Min: 1, Max: 2, Query: "sum(rate(x[1m])", PerReplica: 10}, `has an unclosed "("`},
		{definitions.Scaling{Min: 1, Max: 2, Schedule: []definitions.Window{{Cron: "61 * * * *", Duration: "1h", Min: 2}}}, "is not a cron expression"},
	} {
		s := tc.s
		if code := m.do("PUT", "/v1/autoscale/web", AutoscaleChange{Scaling: &s}, &e); code != 400 || !strings.Contains(e.Error, tc.want) {
			t.Errorf("policy %+v: %d %q, want 400 with %q", s, code, e.Error, tc.want)
		}
		code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "other", Role: "app", Scaling: &s})
		if code != 400 || !strings.Contains(msg, tc.want) {
			t.Errorf("launch with policy %+v: %d %q, want 400 with %q", s, code, msg, tc.want)
		}
	}
	if after := fmt.Sprint(w.desiredKeys(), w.journal.Keys(policiesPrefix)); after != before {
		t.Fatalf("refused policies changed the journal:\n%s\n%s", before, after)
	}

	// A new policy for the launched service, on again.
	on := false
	v = PolicyView{}
	if code := m.do("PUT", "/v1/autoscale/web", AutoscaleChange{Off: &on, Scaling: webPolicy(1, 8, 25, "")}, &v); code != 200 || v.Off || v.Scaling.Max != 8 {
		t.Fatalf("new policy: %d %+v", code, v)
	}
	clock.add(5 * time.Second)
	if n := round(); n != 7 {
		t.Fatalf("100%% against 25%% on 3 replicas: %d, want 3 + the step limit of 4", n)
	}
	eventually(t, 5*time.Second, "7 pass", func() bool { return m.passing("web") == 7 })
	clock.add(11 * time.Second)
	round()
	clock.add(11 * time.Second)
	if n := round(); n != 8 {
		t.Fatalf("still 100%% against 25%%: %d, want max 8", n)
	}

	var stopped map[string][]string
	if code := m.do("DELETE", "/v1/containers/web", nil, &stopped); code != 200 {
		t.Fatalf("stop: %d", code)
	}
	if keys := w.journal.Keys(policiesPrefix); len(keys) != 0 {
		t.Fatalf("the policy outlived its service: %v", keys)
	}
	if code := m.do("GET", "/v1/autoscale/web", nil, &e); code != 404 {
		t.Fatalf("GET /v1/autoscale/web after stop: %d", code)
	}
}

// An application's scaling policies are written with its record, a new
// deploy keeps the replicas the autoscaler reached, and undeploy removes
// the policies.
func TestAutoscaleApplication(t *testing.T) {
	w, m, clock, _ := autoscaleWorld(t)
	def := func(max int) string {
		return fmt.Sprintf(`application: shop
services:
  web:
    image: micado/demo-web
    role: app
    memory: 64MiB
    scaling: {min: 2, max: %d, cpu: 50%%}
`, max)
	}
	var st AppStatus
	if code := m.do("POST", "/v1/apps", DeployRequest{File: "shop.yaml", Definition: def(6)}, &st); code != 200 && code != 202 {
		t.Fatalf("deploy: %d", code)
	}
	eventually(t, 10*time.Second, "shop is deployed", func() bool {
		a, ok := m.current().store.App("shop")
		return ok && a.State == AppDeployed
	})
	if _, ok := w.journal.Get("scaling/shop-web"); !ok {
		t.Fatal("the application's policy is not in the journal")
	}
	w.agents.setCPU("shop-web", 100)
	l := m.current()
	l.autoscaleRound(context.Background(), clock.add(5*time.Second))
	eventually(t, 5*time.Second, "4 replicas of shop-web pass", func() bool { return m.passing("shop-web") == 4 })

	// Deploying again with a lower max keeps the reached count within it.
	if code := m.do("POST", "/v1/apps", DeployRequest{File: "shop.yaml", Definition: def(3)}, &st); code != 200 && code != 202 {
		t.Fatalf("deploy again: %d", code)
	}
	eventually(t, 10*time.Second, "shop-web converges to the new max 3", func() bool {
		a, _ := m.current().store.App("shop")
		members, _ := m.current().scaleMembers("shop-web")
		return a.State == AppDeployed && len(members) == 3
	})
	var e ErrorBody
	if code := m.do("PUT", "/v1/autoscale/shop-web", AutoscaleChange{Scaling: webPolicy(1, 9, 50, "")}, &e); code != 409 || !strings.Contains(e.Error, "definition file") {
		t.Fatalf("changing an application's policy by hand: %d %s", code, e.Error)
	}
	if code := m.do("DELETE", "/v1/apps/shop", nil, nil); code != 200 && code != 202 && code != 204 {
		t.Fatalf("undeploy: %d", code)
	}
	eventually(t, 10*time.Second, "the policy goes with the application", func() bool {
		return len(w.journal.Keys(policiesPrefix)) == 0 && len(w.journal.Keys(appsPrefix)) == 0
	})
}

// A role whose workers stay above the CPU limit for the window gets one
// more instance, although every reservation still fits; placement then
// prefers the cool worker.
func TestNodeUsageAlertScalesOut(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 2<<30, "role=app")
	w.addWorker("w-2", 2<<30, "role=app")
	cfg := scaleConfig()
	cfg.Provider = w.cloud
	cfg.AutoscaleInterval = time.Hour
	cfg.NodeAlert = coordinator.UsageLimit{CPU: 0.8, For: 30 * time.Second}
	m := w.start("m1", cfg)
	w.leader()
	// Placement prefers a worker below the limit even when the hot ones
	// have more free memory.
	w.addWorker("w-3", 512<<20, "role=app")
	w.setWorkerCPU("w-1", 0.95)
	w.setWorkerCPU("w-2", 0.9)
	eventually(t, 5*time.Second, "the manager sees w-3 and the load", func() bool {
		_, ok := m.members.get("w-3")
		mem, _ := m.members.get("w-2")
		return ok && mem.Load.CPU == 0.9
	})
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB", Replicas: 2}); code != http.StatusAccepted {
		t.Fatalf("launch web: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "web runs", func() bool { return m.passing("web") == 2 })
	for _, c := range m.ps() {
		if c.Service == "web" && c.Node != "w-3" {
			t.Fatalf("%s went to the hot worker %s, not to w-3 below the limit", c.Name, c.Node)
		}
	}

	l := m.current()
	now := time.Now()
	w.setWorkerCPU("w-3", 0.9)
	eventually(t, 5*time.Second, "the manager sees w-3 hot", func() bool {
		mem, _ := m.members.get("w-3")
		return mem.Load.CPU == 0.9
	})
	eventually(t, 5*time.Second, "the manager sees the load", func() bool {
		mem, _ := m.members.get("w-2")
		return mem.Load.CPU == 0.9
	})
	l.evaluateAlerts(context.Background(), now)
	l.evaluateAlerts(context.Background(), now.Add(20*time.Second))
	if n := len(w.cloud.created()); n != 0 {
		t.Fatalf("an instance was asked before the window passed: %d", n)
	}
	l.evaluateAlerts(context.Background(), now.Add(31*time.Second))
	eventually(t, 5*time.Second, "one instance is asked for role=app", func() bool { return len(w.cloud.created()) == 1 })
	if tags := w.cloud.created()[0].Tags; fmt.Sprint(tags) != "[role=app]" {
		t.Fatalf("instance tags %v", tags)
	}
	// Still hot, but an instance is on its way: nothing more.
	l.evaluateAlerts(context.Background(), now.Add(70*time.Second))
	if n := len(w.cloud.created()); n != 1 {
		t.Fatalf("%d instances asked while one boots", n)
	}
	found := false
	evs, _ := m.events.since(0, 0)
	for _, e := range evs {
		if e.Kind == EventNodeAlert && strings.Contains(e.Message, "asking the cloud") {
			found = true
		}
	}
	if !found {
		t.Fatal("no node-alert event says an instance was asked")
	}

}

// A scheduled window (a real cron expression) raises the minimum while it
// lasts, with no metric at all.
func TestAutoscaleScheduledWindow(t *testing.T) {
	_, m, clock, round := autoscaleWorld(t)
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB",
		Scaling: &definitions.Scaling{Min: 1, Max: 5, Schedule: []definitions.Window{{Cron: "* * * * *", Duration: "2m", Min: 3}}}}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "web-1 passes", func() bool { return m.passing("web") == 1 })
	if n := round(); n != 3 {
		t.Fatalf("inside the window (min 3): %d replicas", n)
	}
	var v PolicyView
	if code := m.do("GET", "/v1/autoscale/web", nil, &v); code != 200 || len(v.Windows) != 1 || v.Windows[0] != "* * * * *" ||
		v.Last == nil || !strings.Contains(v.Last.Clamp, `schedule "* * * * *" min 3`) {
		t.Fatalf("the view does not show the window: %d %+v %+v", code, v.Windows, v.Last)
	}
	clock.add(time.Second)
	if n := round(); n != 3 {
		t.Fatalf("still inside: %d replicas", n)
	}
}
