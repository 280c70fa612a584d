package manager

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/memberlist"
	"github.com/micado-scale/micado/worker"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsCollectors checks the collect-on-scrape gauges against a
// members table and desired state the test sets up (real Consul dev
// agent, no workers, no Docker), that the output passes Prometheus's
// linter, and that the counters move when decisions are recorded.
func TestMetricsCollectors(t *testing.T) {
	addr := startConsul(t)
	cl, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{members: newMembers("manager"), store: newStore(cl, "metrics-unit"),
		cons: consolidator{draining: map[string]string{"w-2": "scale-in"}}}
	m.metrics = newMetrics(m)
	node := func(name string, l worker.Load) *memberlist.Node {
		b, err := l.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return &memberlist.Node{Name: name, Meta: b}
	}
	m.members.upsert(node("manager", worker.Load{Kind: worker.KindManager, API: "10.0.0.1:8080"}), "alive")
	m.members.upsert(node("w-1", worker.Load{Kind: worker.KindWorker, Tags: []string{"role=proxy"}, Capacity: 1 << 30, Reserved: 64 << 20, Used: 10 << 20, API: "10.0.0.2:7070"}), "alive")
	m.members.upsert(node("w-2", worker.Load{Kind: worker.KindWorker, Tags: []string{"role=app"}, Capacity: 512 << 20, API: "10.0.0.3:7070"}), "alive")
	m.members.upsert(node("w-3", worker.Load{Kind: worker.KindWorker, Tags: []string{"role=app"}, Capacity: 512 << 20, API: "10.0.0.4:7070"}), "dead")

	ctx := context.Background()
	now := time.Now().UTC()
	recs := []*Container{
		// The desired state promises w-1 more than it reports: reserved
		// is the larger of the two.
		{Name: "web-1", Service: "web", Image: "x", Tags: []string{"role=proxy"}, Memory: 64 << 20, State: StateRunning, Node: "w-1", CreatedAt: now},
		{Name: "web-2", Service: "web", Image: "x", Tags: []string{"role=proxy"}, Memory: 100 << 20, State: StateStarting, Node: "w-1", CreatedAt: now},
		{Name: "big-1", Service: "big", Image: "x", Tags: []string{"role=db"}, Memory: 1 << 30, State: StatePending, CreatedAt: now, PendingSince: now.Add(-90 * time.Second)},
		{Name: "bad-1", Service: "bad", Image: "x", Tags: []string{"role=app"}, Memory: 64 << 20, State: StateFailed, CreatedAt: now},
	}
	if err := m.store.createAll(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if err := m.store.putInstance(ctx, &Instance{Name: "w-db-abc123", Type: "small", Memory: 2 << 30, Tags: []string{"role=db"}, State: InstanceRequested, RequestedAt: now}); err != nil {
		t.Fatal(err)
	}

	want := `
# HELP micado_workers Workers by role and state: alive (takes containers), draining (being emptied for scale-in), booting (an instance asked of the cloud whose worker has not joined), dead (gossip lost it).
# TYPE micado_workers gauge
micado_workers{role="app",state="alive"} 0
micado_workers{role="app",state="booting"} 0
micado_workers{role="app",state="dead"} 1
micado_workers{role="app",state="draining"} 1
micado_workers{role="db",state="alive"} 0
micado_workers{role="db",state="booting"} 1
micado_workers{role="db",state="dead"} 0
micado_workers{role="db",state="draining"} 0
micado_workers{role="proxy",state="alive"} 1
micado_workers{role="proxy",state="booting"} 0
micado_workers{role="proxy",state="dead"} 0
micado_workers{role="proxy",state="draining"} 0
# HELP micado_worker_memory_bytes Memory of each alive worker: kind=capacity (offered to containers), reserved (the larger of what it reports and what the desired state promised it), used (what its containers really use).
# TYPE micado_worker_memory_bytes gauge
micado_worker_memory_bytes{kind="capacity",role="app",worker="w-2"} 5.36870912e+08
micado_worker_memory_bytes{kind="capacity",role="proxy",worker="w-1"} 1.073741824e+09
micado_worker_memory_bytes{kind="reserved",role="app",worker="w-2"} 0
micado_worker_memory_bytes{kind="reserved",role="proxy",worker="w-1"} 1.71966464e+08
micado_worker_memory_bytes{kind="used",role="app",worker="w-2"} 0
micado_worker_memory_bytes{kind="used",role="proxy",worker="w-1"} 1.048576e+07
# HELP micado_containers Container records in the desired state, by state.
# TYPE micado_containers gauge
micado_containers{state="failed"} 1
micado_containers{state="pending"} 1
micado_containers{state="running"} 1
micado_containers{state="starting"} 1
micado_containers{state="stopping"} 0
# HELP micado_pending_containers Containers waiting for a worker (held for scale-out, or requeued).
# TYPE micado_pending_containers gauge
micado_pending_containers 1
# HELP micado_gossip_members Members of the gossip cluster as the manager sees them, by kind (worker, manager) and status (alive, dead).
# TYPE micado_gossip_members gauge
micado_gossip_members{kind="manager",status="alive"} 1
micado_gossip_members{kind="manager",status="dead"} 0
micado_gossip_members{kind="worker",status="alive"} 2
micado_gossip_members{kind="worker",status="dead"} 1
# HELP micado_store_up 1 when this scrape could read the desired state from Consul KV, else 0 (and the container and booting-worker figures are left out).
# TYPE micado_store_up gauge
micado_store_up 1
`
	if err := testutil.GatherAndCompare(m.metrics.reg, strings.NewReader(want),
		"micado_workers", "micado_worker_memory_bytes", "micado_containers", "micado_pending_containers", "micado_gossip_members", "micado_store_up"); err != nil {
		t.Fatal(err)
	}
	// The oldest pending container has waited about 90 s.
	mfs, err := m.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "micado_pending_wait_seconds" {
			if v := mf.GetMetric()[0].GetGauge().GetValue(); v < 89 || v > 120 {
				t.Errorf("micado_pending_wait_seconds = %v, want about 90", v)
			}
		}
	}
	if problems, err := testutil.GatherAndLint(m.metrics.reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}

	// Counters and histograms move with the decisions.
	el := newEventLog(cl.KV(), "metrics-unit", 10, slog.New(slog.NewTextHandler(io.Discard, nil)))
	el.onAdd = m.metrics.event
	el.add(EventPlaced, "web-1", "placed")
	el.add(EventPlaced, "web-2", "placed")
	m.metrics.placed("launch", 50*time.Microsecond)
	m.metrics.instanceJoined(3 * time.Second)
	m.metrics.scaleOutInstance("requested")
	m.metrics.scaledIn(nil, 20*time.Second)
	m.metrics.round("removed")
	if got := testutil.ToFloat64(m.metrics.events.WithLabelValues(EventPlaced)); got != 2 {
		t.Errorf("micado_events_total{kind=placed} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.metrics.scaleOut.WithLabelValues("joined")); got != 1 {
		t.Errorf("joined = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.metrics.rounds.WithLabelValues("removed")); got != 1 {
		t.Errorf("rounds removed = %v, want 1", got)
	}
	if n := testutil.CollectAndCount(m.metrics.placement); n != len(placementSources) {
		t.Errorf("%d placement series, want %d", n, len(placementSources))
	}
	var nilMetrics *metrics // a manager built without Run records nothing and does not panic
	nilMetrics.placed("launch", time.Second)
	nilMetrics.event(Event{Kind: EventPlaced})
}

// TestMetricsNeedTheAPIToken: /metrics is part of the API, and a request
// without the token gets 401 and nothing else.
func TestMetricsNeedTheAPIToken(t *testing.T) {
	base, _ := testManager(t, Config{APIToken: "metrics-token"})
	get := func(auth string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, auth := range []string{"", "Bearer wrong", "Basic metrics-token"} {
		if code, body := get(auth); code != http.StatusUnauthorized || strings.Contains(body, "micado_") {
			t.Errorf("GET /metrics with %q: %d %s, want 401 and no metrics", auth, code, body)
		}
	}
	code, body := get("Bearer metrics-token")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics with the token: %d %s", code, body)
	}
	for _, want := range []string{"micado_store_up 1", `micado_gossip_members{kind="manager",status="alive"} 1`, "micado_events_total", "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
