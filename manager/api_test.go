package manager

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The read API, served from memory: nodes (workers and managers, the
// leader marked), one container or a service, filters on the server,
// explain, events with their query, and the errors that name the
// problem.
func TestReadAPI(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 1<<30, "role=app")
	w.addWorker("w-2", 1<<30, "role=db")
	m := w.start("m1", testConfig())
	w.leader()
	w.start("m2", testConfig())
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB", Replicas: 2}); code != 202 {
		t.Fatalf("launch: %d %s", code, msg)
	}
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "db", Role: "db", Memory: "64MiB"}); code != 202 {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "all run", func() bool { return m.passing("web") == 2 && m.passing("db") == 1 })

	var ns []MemberView
	if code := m.do("GET", "/v1/nodes", nil, &ns); code != 200 || len(ns) != 4 {
		t.Fatalf("nodes: %d %+v", code, ns)
	}
	leaders := 0
	for _, n := range ns {
		if n.Kind == "manager" && n.Leader {
			leaders++
			if n.Name != "m1" || n.Term == 0 || n.LeaderSince.IsZero() {
				t.Fatalf("leader entry %+v", n)
			}
		}
		if n.Name == "w-1" && (n.Containers != 2 || n.Reserved != 128<<20 || n.Free <= 0) {
			t.Fatalf("w-1: %+v", n)
		}
	}
	if leaders != 1 {
		t.Fatalf("%d leaders in %+v", leaders, ns)
	}
	var cs []ContainerView
	for q, want := range map[string]int{"": 3, "?service=web": 2, "?node=w-2": 1, "?state=running": 3, "?state=pending": 0, "?service=web&node=w-2": 0} {
		if code := m.do("GET", "/v1/containers"+q, nil, &cs); code != 200 || len(cs) != want {
			t.Fatalf("GET /v1/containers%s: %d, %d containers, want %d", q, code, len(cs), want)
		}
	}
	var e ErrorBody
	for q, want := range map[string]string{"?state=bogus": "not a container state", "?zone=a": "unknown query parameter", "?service=a&service=b": "given 2 times"} {
		if code := m.do("GET", "/v1/containers"+q, nil, &e); code != 400 || !strings.Contains(e.Error, want) {
			t.Fatalf("GET /v1/containers%s: %d %q", q, code, e.Error)
		}
	}
	if code := m.do("GET", "/v1/containers/web-1", nil, &cs); code != 200 || len(cs) != 1 || cs[0].Health != HealthPassing {
		t.Fatalf("one container: %d %+v", code, cs)
	}
	if code := m.do("GET", "/v1/containers/web", nil, &cs); code != 200 || len(cs) != 2 {
		t.Fatalf("a service: %d %+v", code, cs)
	}
	if code := m.do("GET", "/v1/containers/nope", nil, &e); code != 404 || !strings.Contains(e.Error, "no container or service named nope") {
		t.Fatalf("missing: %d %q", code, e.Error)
	}
	var ex []Explanation
	if code := m.do("GET", "/v1/containers/web/explain", nil, &ex); code != 200 || len(ex) != 2 {
		t.Fatalf("explain: %d %+v", code, ex)
	}
	for _, x := range ex {
		if x.Node != "w-1" || !strings.HasPrefix(x.Now, "placed ") || len(x.Workers) != 2 {
			t.Fatalf("explanation %+v", x)
		}
		for _, v := range x.Workers {
			if v.Worker == "w-2" && (v.Fits || v.Filter != "tags") {
				t.Fatalf("w-2's verdict on web: %+v", v)
			}
		}
	}
	if code := m.do("GET", "/v1/containers/nope/explain", nil, &e); code != 404 {
		t.Fatalf("explain of nothing: %d", code)
	}
	var evs []Event
	if code := m.do("GET", "/v1/events?limit=2", nil, &evs); code != 200 || len(evs) != 2 {
		t.Fatalf("events: %d %d", code, len(evs))
	}
	last := evs[1].Seq
	got := make(chan []Event, 1)
	go func() {
		var more []Event
		m.do("GET", "/v1/events?since="+itoa(int(last))+"&wait=5s", nil, &more)
		got <- more
	}()
	time.Sleep(100 * time.Millisecond)
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "late", Role: "app", Memory: "8MiB"}); code != 202 {
		t.Fatalf("launch: %d %s", code, msg)
	}
	select {
	case more := <-got:
		if len(more) == 0 || more[0].Seq <= last {
			t.Fatalf("long poll: %+v", more)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll did not return on a new event")
	}
	for q, want := range map[string]string{"?since=x": "not a sequence number", "?limit=-1": "not a non-negative number", "?wait=2h": "must be a duration", "?foo=1": "unknown query parameter"} {
		if code := m.do("GET", "/v1/events"+q, nil, &e); code != 400 || !strings.Contains(e.Error, want) {
			t.Fatalf("events%s: %d %q", q, code, e.Error)
		}
	}
	var st Status
	if code := m.do("GET", "/v1/status", nil, &st); code != 200 || st.Containers != 4 || st.Workers != 2 || st.Managers != 2 {
		t.Fatalf("status: %d %+v", code, st)
	}
	if code := m.do("GET", "/v1/nothing", nil, &e); code != 404 || !strings.Contains(e.Error, "no API endpoint GET /v1/nothing") {
		t.Fatalf("unknown path: %d %q", code, e.Error)
	}
}

// The API token guards every /v1 path and /metrics; the dashboard's page
// does not need it.
func TestTheAPITokenGuardsEverything(t *testing.T) {
	w := newWorld(t)
	cfg := testConfig()
	cfg.APIToken = "s3cret"
	m := w.start("m1", cfg)
	w.leader()
	for _, p := range []string{"/v1/status", "/v1/nodes", "/v1/containers", "/v1/events", "/metrics"} {
		resp, err := http.Get(m.base + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
			t.Fatalf("GET %s without the token: %d", p, resp.StatusCode)
		}
	}
	if code := m.do("GET", "/metrics", nil, nil); code != 200 {
		t.Fatalf("metrics with the token: %d", code)
	}
	resp, err := http.Get(m.base + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the dashboard page: %d", resp.StatusCode)
	}
}

// The gauges come from memory; a standby reports only gossip and that it
// does not lead; counters move with decisions; the output passes
// Prometheus's linter.
func TestMetrics(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 1<<30, "role=proxy")
	w.addWorker("w-2", 512<<20, "role=app")
	m := w.start("m1", testConfig())
	w.leader()
	s := w.start("m2", testConfig())
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "proxy", Memory: "64MiB", Replicas: 2}); code != 202 {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "web runs", func() bool { return m.passing("web") == 2 })
	w.kill("w-2")
	want := `
# HELP micado_containers Container records in the desired state, by state.
# TYPE micado_containers gauge
micado_containers{state="failed"} 0
micado_containers{state="pending"} 0
micado_containers{state="running"} 2
micado_containers{state="starting"} 0
micado_containers{state="stopping"} 0
# HELP micado_leader 1 while this manager leads the cluster (holds the leader lock), 0 while it stands by.
# TYPE micado_leader gauge
micado_leader 1
# HELP micado_workers Workers by role and state: alive (takes containers), draining (being emptied for scale-in), booting (an instance asked of the cloud whose worker has not joined), dead (gossip lost it).
# TYPE micado_workers gauge
micado_workers{role="app",state="alive"} 0
micado_workers{role="app",state="booting"} 0
micado_workers{role="app",state="dead"} 1
micado_workers{role="app",state="draining"} 0
micado_workers{role="proxy",state="alive"} 1
micado_workers{role="proxy",state="booting"} 0
micado_workers{role="proxy",state="dead"} 0
micado_workers{role="proxy",state="draining"} 0
`
	eventually(t, 5*time.Second, "w-2 is dead to the manager", func() bool { return !m.members.alive("w-2") })
	if err := testutil.GatherAndCompare(m.metrics.reg, strings.NewReader(want), "micado_containers", "micado_leader", "micado_workers"); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.GatherAndLint(m.metrics.reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	if err := testutil.GatherAndCompare(s.metrics.reg, strings.NewReader(`
# HELP micado_leader 1 while this manager leads the cluster (holds the leader lock), 0 while it stands by.
# TYPE micado_leader gauge
micado_leader 0
# HELP micado_store_up 1 when this manager leads and serves the desired state from memory, else 0 (a standby: the container and booting-worker figures are left out; scrape the leader).
# TYPE micado_store_up gauge
micado_store_up 0
`), "micado_leader", "micado_store_up", "micado_containers"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.metrics.events.WithLabelValues(EventRunning)); got != 2 {
		t.Errorf("micado_events_total{kind=running} = %v, want 2", got)
	}
	if n := testutil.CollectAndCount(m.metrics.reconciles); n != 1 {
		t.Errorf("micado_reconcile_duration_seconds: %d series", n)
	}
	var nilMetrics *metrics // records nothing and does not panic
	nilMetrics.placed("launch", time.Second)
	nilMetrics.event(Event{Kind: EventPlaced})
	nilMetrics.leading(true)
}

// Events survive a change of leader: they are journaled (fenced), the new
// leader continues their numbering, and the log keeps only the newest.
func TestEventsAreJournaled(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 1<<30, "role=app")
	cfg := testConfig()
	cfg.EventsKept = 150
	m := w.start("m1", cfg)
	w.leader()
	for i := range 80 {
		if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "s" + itoa(i), Role: "app", Memory: "6MiB"}); code != 202 {
			t.Fatalf("launch: %d %s", code, msg)
		}
	}
	var evs []Event
	eventually(t, 5*time.Second, "over 150 events", func() bool {
		m.do("GET", "/v1/events", nil, &evs)
		return len(evs) == 150 && evs[len(evs)-1].Seq > 150
	})
	// Events are written in chunks of what is queued (one per record when
	// they come slower than the journal takes them, on a loaded machine),
	// and older chunks are deleted.
	eventually(t, 10*time.Second, "the journal keeps about the newest 150", func() bool {
		n := 0
		keys := w.journal.Keys(eventsPrefix)
		for _, k := range keys {
			p, _ := w.journal.Get(k)
			n += len(decodeEventChunk(p.Value))
		}
		return n >= 150 && n < 150+maxChunkEvents
	})
	last := evs[len(evs)-1]
	m.stop()
	m2 := w.start("m2", cfg)
	eventually(t, 5*time.Second, "m2 leads", func() bool { return m2.IsLeader() })
	var evs2 []Event
	m2.do("GET", "/v1/events", nil, &evs2)
	if len(evs2) < 100 {
		t.Fatalf("the new leader has %d events", len(evs2))
	}
	found := false
	for _, e := range evs2 {
		found = found || (e.Seq == last.Seq && e.Message == last.Message && e.Manager == "m1")
	}
	if !found {
		t.Fatalf("event %d of the old leader is lost", last.Seq)
	}
	for _, e := range evs2 {
		if e.Manager != "m2" {
			continue
		}
		if e.Kind != EventLeader || e.Seq <= last.Seq || e.Term <= last.Term {
			t.Fatalf("the new leader's first event: %+v (last of the old one %+v)", e, last)
		}
		break
	}
	checkEventTerms(t, evs2)
	if s := last.String(); !strings.Contains(s, last.Kind) || !strings.Contains(s, last.Subject) {
		t.Fatalf("event text %q", s)
	}
	_ = context.Background
}
