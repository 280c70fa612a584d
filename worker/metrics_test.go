package worker

import (
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/micado-scale/micado/internal/wire"
)

// TestAgentMetricsAreOpenAndTellNoSecret: /metrics answers without the
// agent token (giving Prometheus the token would give it command of the
// worker), shows the load report's figures, passes Prometheus's linter,
// and carries neither the token nor the cluster key.
func TestAgentMetricsAreOpenAndTellNoSecret(t *testing.T) {
	key := randomKey(t)
	a := &Agent{cfg: Config{Cluster: "c1", Name: "w-7", Tags: []string{"role=app", "disk=ssd"}, Memory: 1 << 30, ClusterKey: key},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), token: wire.AgentToken(key)}
	a.load = wire.Load{Kind: wire.KindWorker, Reserved: 200 << 20, Used: 5 << 20, Containers: 2, CPU: 0.25}
	// Two copies of web-1 (make before break) are summed; web-2's CPU is
	// not known yet.
	a.stats = &statsCollector{last: map[string]wire.ContainerStats{
		"a": {Instance: "web-1", Service: "web", Generation: 1, CPU: 40, HasCPU: true, Memory: 1 << 20},
		"b": {Instance: "web-1", Service: "web", Generation: 2, CPU: 10, HasCPU: true, Memory: 2 << 20},
		"c": {Instance: "web-2", Service: "web", Memory: 3 << 20},
	}}
	h := a.routes()
	a.metrics.started(nil)
	a.metrics.stopped(false, nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics without the token: %d %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	for _, want := range []string{
		`micado_worker_info{cluster="c1",role="app",worker="w-7"} 1`,
		`micado_worker_memory_bytes{kind="capacity"} 1.073741824e+09`,
		`micado_worker_memory_bytes{kind="reserved"} 2.097152e+08`,
		`micado_worker_containers 2`,
		`micado_worker_cpu_ratio 0.25`,
		"micado_worker_cpu_load ",
		`micado_worker_container_cpu_percent{instance="web-1",service="web"} 50`,
		`micado_worker_container_memory_bytes{instance="web-1",service="web"} 3.145728e+06`,
		`micado_worker_container_memory_bytes{instance="web-2",service="web"} 3.145728e+06`,
		`micado_worker_container_starts_total{outcome="ok"} 1`,
		`micado_worker_container_stops_total{outcome="not_found"} 1`,
		`micado_worker_gossip_members{kind="manager"} 0`,
		"go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, `micado_worker_container_cpu_percent{instance="web-2"`) {
		t.Error("metrics carry a CPU figure for a container sampled only once")
	}
	if strings.Contains(body, a.token) || strings.Contains(body, base64.StdEncoding.EncodeToString(key)) {
		t.Fatal("metrics carry the agent token or the cluster key")
	}
	if problems, err := testutil.GatherAndLint(a.metrics.reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}
