package manager

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/micado-scale/micado/internal/wire"
)

// When gossip declares a worker dead, its containers are placed again
// elsewhere as a new generation and the old registrations go; when the
// worker comes back with its stale copies, they are stopped.
func TestWorkerDeathRequeuesAndStaleCopiesStop(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 1<<30, "role=app")
	m := w.start("m1", testConfig())
	w.leader()
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB", Ports: []string{"8080"}, Replicas: 2}); code != 202 {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "2 copies pass", func() bool { return m.passing("web") == 2 })
	w2 := w.addWorker("w-2", 1<<30, "role=app")
	w.kill("w-1")
	eventually(t, 5*time.Second, "both copies run on w-2", func() bool {
		n := 0
		for _, c := range m.ps() {
			if c.Node == "w-2" && c.State == StateRunning && c.Generation == 1 && c.Health == HealthPassing {
				n++
			}
		}
		return n == 2
	})
	for _, id := range w.reg.ids() {
		if !strings.HasSuffix(id, ".g1") {
			t.Fatalf("registration %s of the dead worker's copy is left", id)
		}
	}
	// w-1 comes back (a partition healed) with its generation-0 copies.
	w.revive("w-1")
	eventually(t, 5*time.Second, "w-1's stale copies stop", func() bool {
		return len(w.agents.worker("w-1").running(w.agents)) == 0
	})
	if r := w2.running(w.agents); len(r["web-1"]) != 1 || len(r["web-2"]) != 1 {
		t.Fatalf("w-2 runs %v", r)
	}
	var evs []Event
	m.do("GET", "/v1/events", nil, &evs)
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
	}
	if kinds[EventWorkerLost] != 1 || kinds[EventRequeued] != 2 || kinds[EventRecovered] < 2 {
		t.Fatalf("events by kind: %v", kinds)
	}
}

// Reconciliation repairs what went wrong behind the manager's back: a
// container that vanished is started again, a copy that no record asks
// for is stopped, a copy the record expects is adopted, lost
// registrations are made again and stale ones removed.
func TestReconciliationRepairs(t *testing.T) {
	w := newWorld(t)
	sw := w.addWorker("w-1", 1<<30, "role=app")
	m := w.start("m1", testConfig())
	w.leader()
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB", Ports: []string{"8080"}, Replicas: 2}); code != 202 {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "2 copies pass", func() bool { return m.passing("web") == 2 })
	before, _ := m.current().store.Container("web-1")

	// The container exited.
	w.agents.crash("w-1", "web-1")
	eventually(t, 5*time.Second, "web-1 runs again with a new container", func() bool {
		c, _ := m.current().store.Container("web-1")
		return c.State == StateRunning && c.ContainerID != before.ContainerID && len(sw.running(w.agents)["web-1"]) == 1
	})

	// A copy nobody asked for, started behind the manager's back.
	ctx := context.Background()
	if _, err := w.agents.Start(ctx, sw.api, wire.StartRequest{Instance: "stray-1", Service: "stray", Image: "x", Memory: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the stray copy is stopped", func() bool { return len(sw.running(w.agents)["stray-1"]) == 0 })

	// The registry lost everything (restarted without state), and holds a
	// registration of this cluster that no record asks for.
	w.reg.drop()
	_ = w.reg.Register(ctx, Registration{ID: "ghost-1", Name: "ghost", Meta: map[string]string{MetaCluster: "mt", MetaInstance: "ghost-1"}})
	eventually(t, 5*time.Second, "registrations are made again and the ghost removed", func() bool {
		ids := w.reg.ids()
		return len(ids) == 2 && ids[0] == "web-1" && ids[1] == "web-2"
	})
}

// A manager that starts where another left finds the copy a start made
// before it was recorded (adopts it), finishes an interrupted stop, and
// rolls back an unfinished move (the old copy never stopped).
func TestNewLeaderFinishesWhatTheOldOneLeft(t *testing.T) {
	w := newWorld(t)
	sw := w.addWorker("w-1", 1<<30, "role=app")
	sw2 := w.addWorker("w-2", 1<<30, "role=app")
	now := time.Now().UTC()
	spec := &Spec{Service: "web", Image: "micado/demo-web", Tags: []string{"role=app"}, Memory: 64 << 20, Check: Check{Type: "none"}}
	put := func(c *Container) {
		b, _ := json.Marshal(c)
		w.journal.Put(containersPrefix+c.Name, b)
	}
	ctx := context.Background()
	// web-1: recorded starting, and its copy already runs.
	put(&Container{Name: "web-1", Spec: spec, State: StateStarting, Node: "w-1", CreatedAt: now})
	if _, err := w.agents.Start(ctx, sw.api, wire.StartRequest{Instance: "web-1", Service: "web", Image: "micado/demo-web", Memory: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	// web-2: marked stopping, its copy still runs.
	put(&Container{Name: "web-2", Spec: spec, State: StateStopping, Node: "w-1", CreatedAt: now})
	if _, err := w.agents.Start(ctx, sw.api, wire.StartRequest{Instance: "web-2", Service: "web", Image: "micado/demo-web", Memory: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	// web-3: running on w-1, a move to w-2 half done (the new copy runs).
	info, err := w.agents.Start(ctx, sw.api, wire.StartRequest{Instance: "web-3", Service: "web", Image: "micado/demo-web", Memory: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.agents.Start(ctx, sw2.api, wire.StartRequest{Instance: "web-3", Service: "web", Image: "micado/demo-web", Memory: 64 << 20, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	put(&Container{Name: "web-3", Spec: spec, State: StateRunning, Node: "w-1", ContainerID: info.ID, Address: info.Address,
		Move: &MoveState{Node: "w-2", Generation: 1, Started: now}, CreatedAt: now})

	m := w.start("m1", testConfig())
	w.leader()
	eventually(t, 5*time.Second, "web-1 adopted, web-2 gone, web-3's move rolled back", func() bool {
		recs := w.journalRecords()
		r1, r2, r3 := recs["web-1"], recs["web-2"], recs["web-3"]
		return r1 != nil && r1.State == StateRunning && r1.ContainerID != "" && r2 == nil &&
			r3 != nil && r3.Move == nil && r3.Node == "w-1" &&
			len(sw.running(w.agents)["web-2"]) == 0 && len(sw2.running(w.agents)["web-3"]) == 0
	})
	if n := m.passing("web"); n != 2 {
		t.Fatalf("%d copies pass", n)
	}
}

// A container on a worker no manager has seen since it started (it died
// while none watched) is placed elsewhere once the grace is over.
func TestContainerOnAWorkerNeverSeenIsPlacedAgain(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-2", 1<<30, "role=app")
	spec := &Spec{Service: "web", Image: "micado/demo-web", Tags: []string{"role=app"}, Memory: 64 << 20, Check: Check{Type: "none"}}
	b, _ := json.Marshal(&Container{Name: "web-1", Spec: spec, State: StateRunning, Node: "w-gone", CreatedAt: time.Now()})
	w.journal.Put(containersPrefix+"web-1", b)
	m := w.start("m1", testConfig())
	m.started = time.Now().Add(-time.Hour) // as if it had followed gossip long enough
	eventually(t, 5*time.Second, "web-1 runs on w-2", func() bool {
		c := w.journalRecords()["web-1"]
		return c.Node == "w-2" && c.State == StateRunning && c.Generation == 1
	})
}

// Restart at any point: the leader dies after each journal commit of a
// busy script in turn (launches, a large launch, stops, a worker's death),
// and a new leader takes over. Whatever point it died at: every
// acknowledged launch keeps its containers, every recorded container runs
// exactly once where its record says, nothing runs that no record asks
// for, registrations match, and no half-written batch is left.
func TestLeaderDiesAtAnyCommit(t *testing.T) {
	for k := 1; k <= 200; k++ {
		reached := true
		t.Run(fmt.Sprintf("after-commit-%d", k), func(t *testing.T) { reached = dieAfterCommit(t, k) })
		if !reached {
			t.Logf("the script makes %d commits; the leader died after each", k-1)
			return
		}
	}
	t.Fatal("the script makes more than 200 commits")
}

// dieAfterCommit runs the script with a leader that dies after commit k
// and checks what a new leader makes of it. It returns false when the
// script ends before commit k.
func dieAfterCommit(t *testing.T, k int) bool {
	w := newWorld(t)
	w.journal.SetMaxOps(16) // so a launch of 20 spans several transactions
	for i := 1; i <= 3; i++ {
		w.addWorker(fmt.Sprintf("w-%d", i), 1<<30, "role=app")
	}
	var mu sync.Mutex
	commits, dead := 0, false
	deadTerm := uint64(0)
	w.journal.FailCommit = func(f Fence, ops []Op) error {
		mu.Lock()
		defer mu.Unlock()
		if dead && strings.HasPrefix(f.Session, "m1#") {
			return errBoom // a dead process writes nothing
		}
		return nil
	}
	w.journal.AfterCommit = func(ops []Op) {
		mu.Lock()
		defer mu.Unlock()
		if strings.HasPrefix(ops[0].Key, eventsPrefix) {
			return // the event log does not count
		}
		commits++
		if commits == k {
			dead = true
			deadTerm = w.lock.Holder().Term
		}
	}
	w.agents.refuse = func(term uint64) bool {
		mu.Lock()
		defer mu.Unlock()
		return dead && term == deadTerm // a dead process calls nobody
	}
	m1 := w.start("m1", testConfig())
	w.leader()
	acked := map[string]int{}
	stopped := map[string]bool{}
	script := []func(){
		func() {
			if code, _ := m1.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "32MiB", Ports: []string{"8080"}, Replicas: 3}); code == 202 {
				acked["web"] = 3
			}
		},
		func() {
			if code, _ := m1.launch(LaunchRequest{Image: "micado/demo-web", Name: "big", Role: "app", Memory: "8MiB", Replicas: 20}); code == 202 {
				acked["big"] = 20
			}
		},
		func() {
			// Whether or not it is acknowledged, a stop may have been
			// recorded: the new leader then finishes it.
			stopped["web-2"] = true
			m1.do("DELETE", "/v1/containers/web-2", nil, nil)
		},
		func() { w.kill("w-3") },
		func() {
			if code, _ := m1.launch(LaunchRequest{Image: "micado/demo-web", Name: "api", Role: "app", Memory: "32MiB", Ports: []string{"9090"}, Replicas: 2}); code == 202 {
				acked["api"] = 2
			}
		},
	}
	for _, step := range script {
		step()
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, 10*time.Second, "the script settles", func() bool {
		mu.Lock()
		gone := dead
		mu.Unlock()
		l := m1.current()
		if l == nil || gone {
			return true
		}
		for _, c := range l.store.All() {
			if c.State != StateRunning {
				return false
			}
		}
		return true
	})
	mu.Lock()
	reached := commits >= k
	if !reached {
		dead = true // end the run: nothing more to test
	}
	mu.Unlock()
	if !reached {
		return false
	}
	// The leader is dead: its lock expires, a new manager leads.
	m1.cancel()
	w.lock.Break()
	m2 := w.start("m2", testConfig())
	m2.started = time.Now().Add(-time.Hour)
	eventually(t, 10*time.Second, "m2 leads", func() bool { return m2.IsLeader() })
	w.gossip(w.agents.worker("w-1"))
	w.gossip(w.agents.worker("w-2"))
	last := ""
	deadline := time.Now().Add(15 * time.Second)
	for last = settled(w, m2); last != ""; last = settled(w, m2) {
		if time.Now().After(deadline) {
			t.Fatalf("the cluster did not settle after the leader died: %s", last)
		}
		time.Sleep(20 * time.Millisecond)
	}
	recs := w.journalRecords()
	for svc, n := range acked {
		have := 0
		for _, c := range recs {
			if c.Service == svc && !stopped[c.Name] {
				have++
			}
		}
		want := n
		if svc == "web" && stopped["web-2"] {
			want--
		}
		if have < want {
			t.Fatalf("acknowledged service %s has %d of %d containers after the leader died", svc, have, want)
		}
	}
	return true
}

// settled says what is not yet consistent between the journal, the
// workers and the registry ("" when all is).
func settled(w *world, m *testManager) string {
	if keys := w.journal.Keys(batchesPrefix); len(keys) > 0 {
		return fmt.Sprintf("batch markers %v", keys)
	}
	recs := w.journalRecords()
	running := map[string][]string{} // instance → "node/gen"
	for _, sw := range w.agents.all() {
		if sw.dead {
			continue
		}
		for inst, gens := range sw.running(w.agents) {
			for _, g := range gens {
				running[inst] = append(running[inst], fmt.Sprintf("%s/%d", sw.name, g))
			}
		}
	}
	var problems []string
	for name, c := range recs {
		if c.State != StateRunning {
			problems = append(problems, name+" is "+string(c.State))
			continue
		}
		want := fmt.Sprintf("%s/%d", c.Node, c.Generation)
		if got := running[name]; len(got) != 1 || got[0] != want {
			problems = append(problems, fmt.Sprintf("%s runs as %v, recorded %s", name, got, want))
		}
		if !w.reg.has(c.ServiceID()) {
			problems = append(problems, name+" is not registered")
		}
	}
	for inst := range running {
		if recs[inst] == nil {
			problems = append(problems, inst+" runs with no record")
		}
	}
	if n := len(w.reg.ids()); n != len(recs) {
		problems = append(problems, fmt.Sprintf("%d registrations for %d records", n, len(recs)))
	}
	sort.Strings(problems)
	return strings.Join(problems, "; ")
}

var _ = http.StatusOK
