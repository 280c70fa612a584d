package manager

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/internal/testnet"
	"github.com/micado-scale/micado/internal/testprom"
)

// startDemoProxy builds and runs the demo proxy image's program on
// loopback in front of backend, and returns its address.
func startDemoProxy(t *testing.T, backend string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "demo-proxy")
	if out, err := exec.Command("go", "build", "-o", bin, "../images/demo-proxy").CombinedOutput(); err != nil {
		t.Fatalf("build the demo proxy: %v\n%s", err, out)
	}
	port := testnet.FreePort(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "MICADO_SERVICE=shop-proxy", "UPSTREAM=shop-app",
		"SHOP_APP_ADDRS="+backend, "CONSUL_HTTP_ADDR=")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(port)
	eventually(t, 10*time.Second, "the demo proxy answers", func() bool {
		r, err := http.Get("http://" + addr + "/health")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	})
	return addr
}

// A service scaled on a PromQL query over the demo proxy's request rate,
// read from a real Prometheus: the replicas follow the requests up and,
// when they stop, down again.
func TestAutoscaleOnPrometheusQuery(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") }))
	defer backend.Close()
	proxy := startDemoProxy(t, strings.TrimPrefix(backend.URL, "http://"))
	promURL := testprom.Start(t, fmt.Sprintf(`
- job_name: demo-proxy
  static_configs:
    - targets: [%q]
`, proxy))

	w := newWorld(t)
	w.addWorker("w-1", 2<<30, "role=app")
	w.addWorker("w-2", 2<<30, "role=app")
	cfg := testConfig()
	cfg.Prometheus = promURL
	cfg.AutoscaleInterval = time.Second
	m := w.start("m1", cfg)
	w.leader()

	// A query Prometheus cannot parse is refused with its own message,
	// and changes nothing.
	before := fmt.Sprint(w.desiredKeys(), w.journal.Keys(policiesPrefix))
	code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "app", Role: "app",
		Scaling: &definitions.Scaling{Min: 1, Max: 5, Query: "sum(rate(demo_proxy_requests_total))", PerReplica: 5}})
	if code != 400 || !strings.Contains(msg, "expected type range vector") {
		t.Fatalf("a query Prometheus refuses: %d %s", code, msg)
	}
	if after := fmt.Sprint(w.desiredKeys(), w.journal.Keys(policiesPrefix)); after != before {
		t.Fatalf("a refused policy changed the journal: %s → %s", before, after)
	}

	const query = `sum(rate(demo_proxy_requests_total{service="shop-proxy"}[5s]))`
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "app", Role: "app", Memory: "64MiB",
		Scaling: &definitions.Scaling{Min: 1, Max: 5, Query: query, PerReplica: 5, Stabilization: "5s"}}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}

	// About 20 requests a second through the proxy: 4 replicas of 5.
	var sent atomic.Int64
	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if r, err := http.Get("http://" + proxy + "/"); err == nil {
					r.Body.Close()
					sent.Add(1)
				}
			}
		}
	}()
	replicas := func() int {
		members, _ := m.current().scaleMembers("app")
		return len(members)
	}
	eventually(t, 60*time.Second, "the replicas rise to 4 with the request rate", func() bool { return replicas() >= 4 })
	var v PolicyView
	if code := m.do("GET", "/v1/autoscale/app", nil, &v); code != 200 || len(v.Metrics) != 1 || v.Metrics[0].Name != "query" || v.Metrics[0].Value < 10 {
		t.Fatalf("the policy's view: %d %+v", code, v)
	}
	t.Logf("%d requests sent; query value %.1f; %d replicas", sent.Load(), v.Metrics[0].Value, replicas())
	stopLoad()
	eventually(t, 60*time.Second, "the replicas fall back to min 1 once the requests stop", func() bool { return replicas() == 1 })
	evs, _ := m.events.since(0, 0)
	found := false
	for _, e := range evs {
		if e.Kind == EventAutoscale && strings.Contains(e.Message, "query ") && strings.Contains(e.Message, "target 5") {
			found = true
		}
	}
	if !found {
		t.Fatal("no autoscale event shows the query's value against its target")
	}
}
