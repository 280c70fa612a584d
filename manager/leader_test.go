package manager

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// One manager leads; a standby forwards the API to it, takes over when
// the leader goes, finds the whole desired state, and the deposed leader
// can change nothing: its journal writes are fenced and the workers refuse
// its commands once the new leader has spoken to them.
func TestFailoverToAStandby(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 1<<30, "role=app")
	w.addWorker("w-2", 1<<30, "role=app")
	m1 := w.start("m1", testConfig())
	if w.leader() != m1 {
		t.Fatal("the first manager does not lead")
	}
	m2 := w.start("m2", testConfig())
	if m2.IsLeader() {
		t.Fatal("two managers lead")
	}
	// The standby forwards: a launch through m2 is done by m1.
	if code, msg := m2.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB", Ports: []string{"8080"}, Replicas: 2}); code != http.StatusAccepted {
		t.Fatalf("launch through the standby: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "2 copies pass (seen through the standby)", func() bool { return m2.passing("web") == 2 })
	var st Status
	if m2.do("GET", "/v1/status", nil, &st); st.Leader != "m1" || st.Containers != 2 || st.Term == 0 {
		t.Fatalf("status through the standby: %+v", st)
	}
	oldTerm := st.Term

	// The leader is deposed (its session expired, gossip declared it
	// dead) and cannot take the lock again for now: the standby leads with
	// the state it loads from the journal.
	w.lock.Pause("m1")
	w.lock.Break()
	eventually(t, 5*time.Second, "m2 leads", func() bool { return m2.IsLeader() })
	eventually(t, 5*time.Second, "m1 stands by", func() bool { return !m1.IsLeader() })
	w.lock.Resume("m1")
	if m2.do("GET", "/v1/status", nil, &st); st.Leader != "m2" || st.Containers != 2 || st.Term <= oldTerm {
		t.Fatalf("status after the failover: %+v", st)
	}
	if n := m2.passing("web"); n != 2 {
		t.Fatalf("after the failover %d copies pass", n)
	}
	// Through the old leader, now a standby, the new one answers.
	if m1.do("GET", "/v1/status", nil, &st); st.Leader != "m2" {
		t.Fatalf("the old leader forwards to %q", st.Leader)
	}
	// A stale leader's write is fenced.
	stale := newStore(w.journal, Fence{Key: "leader", Session: "m1#1"}, testLog())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go stale.run(ctx)
	if _, _, err := stale.load(ctx); err != nil {
		t.Fatal(err)
	}
	err := stale.Update(ctx, func(tx *Tx) error {
		c := tx.Container("web-1")
		c.State = StateStopping
		tx.Put(c)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "no longer the leader") {
		t.Fatalf("a deposed leader's write: %v", err)
	}
	// A stale leader's command is refused by a worker the new leader has
	// commanded.
	if code, msg := m2.launch(LaunchRequest{Image: "micado/demo-web", Name: "api", Role: "app", Memory: "64MiB", Replicas: 2}); code != http.StatusAccepted {
		t.Fatalf("launch after the failover: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "api runs", func() bool { return m2.passing("api") == 2 })
	old := termAgents{a: w.agents, term: oldTerm}
	for _, sw := range w.agents.all() {
		if _, err := old.Stop(ctx, sw.api, "web-1", -1); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("worker %s obeyed a deposed leader: %v", sw.name, err)
		}
	}
	// The events say who decided, in which term, and terms only grow.
	var evs []Event
	m2.do("GET", "/v1/events", nil, &evs)
	checkEventTerms(t, evs)
	leaders := map[string]bool{}
	for _, e := range evs {
		if e.Kind == EventLeader {
			leaders[e.Manager] = true
		}
	}
	if !leaders["m1"] || !leaders["m2"] {
		t.Fatalf("leader events: %v", leaders)
	}
}

// checkEventTerms fails if two managers acted at once: in the order of the
// log, the term never goes back.
func checkEventTerms(t *testing.T, evs []Event) {
	t.Helper()
	var term uint64
	var by string
	for _, e := range evs {
		if e.Term < term {
			t.Fatalf("event %d (%s by %s, term %d) came after events of term %d by %s", e.Seq, e.Kind, e.Manager, e.Term, term, by)
		}
		term, by = e.Term, e.Manager
	}
}

// A leader whose lease lapses (its session could not be renewed) stops
// acting at once, before the lock says it is lost, and stands for the
// lock again.
func TestLeaderStepsDownWhenItsLeaseLapses(t *testing.T) {
	w := newWorld(t)
	m := w.start("m1", testConfig())
	w.leader()
	w.lock.Expire()
	eventually(t, 5*time.Second, "a new term", func() bool { return w.lock.Holder().Term >= 2 && m.IsLeader() })
}

// A standby that sees the leader die in gossip deposes it at once.
func TestStandbyDeposesALeaderGossipDeclaredDead(t *testing.T) {
	w := newWorld(t)
	m1 := w.start("m1", testConfig())
	w.leader()
	m2 := w.start("m2", testConfig())
	m1.cancel() // m1 stops acting without releasing (its process is gone)
	m2.members.NotifyLeave(memberNode("m1"))
	eventually(t, 5*time.Second, "m2 leads", func() bool { return m2.IsLeader() })
}

// With no leader it can reach, a standby answers 503 with Retry-After,
// never a wrong answer.
func TestStandbyWithoutAReachableLeaderAsksToRetry(t *testing.T) {
	check := func(m *testManager, want string) {
		t.Helper()
		resp, err := http.Get(m.base + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e ErrorBody
		_ = json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(e.Error, want) {
			t.Fatalf("standby: %d %q, want 503 saying %q", resp.StatusCode, e.Error, want)
		}
	}
	// The lock is held by a manager gossip does not know.
	w := newWorld(t)
	ghost, err := w.lock.For("ghost").Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ghost.Release(context.Background()) }()
	m := w.start("m1", testConfig())
	check(m, "not reachable through gossip")

	// The leader's API does not answer.
	w2 := newWorld(t)
	l := w2.start("m1", testConfig())
	w2.leader()
	s := w2.start("m2", testConfig())
	l.srv.Close()
	check(s, "cannot reach the leader")
}
