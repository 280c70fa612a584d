package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"
	"github.com/micado-scale/micado/internal/testnet"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// requireTool finds a test tool that `make tools` installs, or fails the
// test (never skips) saying so.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run `make tools` (or `make test`, which installs it): %v", name, err)
	}
	return p
}

// TestMetricsScrapedByPrometheus runs a small cluster, checks that the
// manager's and every worker's /metrics pass `promtool check metrics`,
// then has a real Prometheus scrape them (the manager with the API token
// from a credentials file) and asks its query API what the cluster looks
// like.
func TestMetricsScrapedByPrometheus(t *testing.T) {
	promBin, promtool := requireTool(t, "prometheus"), requireTool(t, "promtool")
	c := newTestCluster(t, "--workers", "2", "--roles", "proxy,app", "--worker-memory", "512MiB", "--provider", "none")
	st := c.state()
	tokenB, err := os.ReadFile(st.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tokenB))
	mgr, err := url.Parse(st.Manager)
	if err != nil || mgr.Scheme != "http" || mgr.Hostname() != "127.0.0.1" {
		t.Fatalf("manager address %q is not http on loopback (%v)", st.Manager, err)
	}

	c.mustMicado("launch", "micado/demo-web", "--role", "proxy", "--name", "web", "--memory", "64MiB", "--port", "8080")

	// The workers' agent APIs, each checked to be on this cluster's own
	// Docker network before anything is pointed at it.
	ni, err := c.dc.NetworkInspect(context.Background(), st.Network, network.InspectOptions{})
	if err != nil || len(ni.IPAM.Config) == 0 {
		t.Fatalf("inspect network %s: %v", st.Network, err)
	}
	subnet, err := netip.ParsePrefix(ni.IPAM.Config[0].Subnet)
	if err != nil {
		t.Fatal(err)
	}
	var nodes []manager.MemberView
	if err := json.Unmarshal([]byte(c.mustMicado("nodes", "--json")), &nodes); err != nil {
		t.Fatal(err)
	}
	workerAPI := map[string]string{}
	var workerTargets []string
	for _, n := range nodes {
		if n.Kind == wire.KindManager {
			continue
		}
		ap, err := netip.ParseAddrPort(n.API)
		if err != nil || !subnet.Contains(ap.Addr()) {
			t.Fatalf("worker %s's API %q is not on the cluster network %s", n.Name, n.API, subnet)
		}
		workerAPI[n.Name] = n.API
		workerTargets = append(workerTargets, n.API)
	}
	if len(workerTargets) != 2 {
		t.Fatalf("%d workers, want 2: %+v", len(workerTargets), nodes)
	}

	hc := &http.Client{Timeout: 10 * time.Second}
	scrape := func(u, auth string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v (can this host reach the cluster's Docker network?)", u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	promtoolCheck := func(what, text string) {
		t.Helper()
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics on %s: %v\n%s", what, err, out)
		}
	}

	t.Run("manager /metrics needs the token and passes promtool", func(t *testing.T) {
		for _, auth := range []string{"", "Bearer wrong"} {
			if code, body := scrape(st.Manager+"/metrics", auth); code != http.StatusUnauthorized || strings.Contains(body, "micado_") {
				t.Errorf("manager /metrics with %q: %d %.200s, want 401 and no metrics", auth, code, body)
			}
		}
		code, body := scrape(st.Manager+"/metrics", "Bearer "+token)
		if code != http.StatusOK {
			t.Fatalf("manager /metrics: %d %s", code, body)
		}
		for _, want := range []string{`micado_containers{state="running"} 1`, `micado_workers{role="proxy",state="alive"} 1`} {
			if !strings.Contains(body, want) {
				t.Errorf("manager metrics lack %q", want)
			}
		}
		if strings.Contains(body, token) {
			t.Fatal("the manager's metrics carry the API token")
		}
		promtoolCheck("the manager", body)
	})

	t.Run("worker /metrics is open, tells no secret and passes promtool", func(t *testing.T) {
		for name, api := range workerAPI {
			code, body := scrape("http://"+api+"/metrics", "")
			if code != http.StatusOK {
				t.Fatalf("%s /metrics: %d %s", name, code, body)
			}
			if !strings.Contains(body, fmt.Sprintf("worker=%q", name)) || !strings.Contains(body, "micado_worker_memory_bytes") {
				t.Errorf("%s metrics lack its info or memory:\n%.500s", name, body)
			}
			if strings.Contains(body, token) {
				t.Fatalf("%s's metrics carry the API token", name)
			}
			// Commands still need the agent token.
			if code, _ := scrape("http://"+api+"/v1/containers", ""); code != http.StatusUnauthorized {
				t.Errorf("%s /v1/containers without the agent token: %d, want 401", name, code)
			}
			promtoolCheck(name, body)
		}
	})

	// A real Prometheus, on loopback, scraping every second.
	dir := t.TempDir()
	port := loopbackPort(t) // loopbackPort: consultoken_test.go
	promAddr := "127.0.0.1:" + strconv.Itoa(port)
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: micado-manager
    authorization:
      credentials_file: %q
    static_configs:
      - targets: [%q]
  - job_name: micado-workers
    static_configs:
      - targets: [%s]
`, st.TokenFile, mgr.Host, quoteAll(workerTargets))
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "config", cfgFile).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s\n%s", err, out, cfg)
	}
	var logs testnet.LogBuffer
	prom := exec.Command(promBin, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	prom.Stdout, prom.Stderr = &logs, &logs
	if err := prom.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	t.Cleanup(func() { _ = prom.Process.Kill(); _ = prom.Wait() })

	query := func(q string) []promSample {
		t.Helper()
		resp, err := hc.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var r struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
					Value  [2]any            `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
			t.Fatalf("query %s: %v %s", q, err, r.Error)
		}
		var out []promSample
		for _, s := range r.Data.Result {
			v, _ := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
			out = append(out, promSample{labels: s.Metric, value: v})
		}
		return out
	}
	eventually(t, 60*time.Second, "Prometheus scrapes the manager and both workers", func() (bool, string) {
		up := query(`up`)
		n := 0
		for _, s := range up {
			if s.value == 1 {
				n++
			}
		}
		return n == 3, fmt.Sprintf("up = %v; prometheus log: %s", up, logs.String())
	})

	t.Run("Prometheus sees the cluster as it is", func(t *testing.T) {
		// Workers by role: one proxy and one app worker, both alive.
		byRole := map[string]float64{}
		for _, s := range query(`sum by (role) (micado_workers{job="micado-manager",state="alive"})`) {
			byRole[s.labels["role"]] = s.value
		}
		if byRole["proxy"] != 1 || byRole["app"] != 1 || len(byRole) != 2 {
			t.Errorf("alive workers by role = %v, want proxy 1, app 1", byRole)
		}
		if got := one(t, query(`micado_containers{state="running"}`)); got != 1 {
			t.Errorf("running containers = %v, want 1 (web-1)", got)
		}
		// web-1 (64MiB) runs on w-1: reserved there is at least that, as
		// the manager sees it and as the agent reports it.
		if got := one(t, query(`micado_worker_memory_bytes{job="micado-manager",worker="w-1",kind="reserved"}`)); got < 64<<20 {
			t.Errorf("manager: w-1 reserved = %v, want >= 64MiB", got)
		}
		if got := one(t, query(fmt.Sprintf(`micado_worker_memory_bytes{job="micado-workers",instance=%q,kind="reserved"}`, workerAPI["w-1"]))); got < 64<<20 {
			t.Errorf("agent w-1: reserved = %v, want >= 64MiB", got)
		}
		// The agent's series join the manager's through micado_worker_info.
		if got := one(t, query(`micado_worker_containers * on (instance) group_left (worker) micado_worker_info{worker="w-1"}`)); got != 1 {
			t.Errorf("containers on w-1 (agent) = %v, want 1", got)
		}
		if got := one(t, query(`sum(micado_worker_container_starts_total{outcome="ok"})`)); got < 1 {
			t.Errorf("container starts = %v, want >= 1", got)
		}
		if got := one(t, query(`micado_gossip_members{kind="worker",status="alive"}`)); got != 2 {
			t.Errorf("gossip: %v alive workers, want 2", got)
		}
		if got := one(t, query(`micado_events_total{kind="placed"}`)); got < 1 {
			t.Errorf("placed events = %v, want >= 1", got)
		}
		if got := one(t, query(`micado_placement_duration_seconds_count{source="launch"}`)); got < 1 {
			t.Errorf("placements observed = %v, want >= 1", got)
		}
		if got := one(t, query(`micado_pending_containers`)); got != 0 {
			t.Errorf("pending containers = %v, want 0", got)
		}
	})
}

type promSample struct {
	labels map[string]string
	value  float64
}

// one is the value of a query that must return exactly one series.
func one(t *testing.T, ss []promSample) float64 {
	t.Helper()
	if len(ss) != 1 {
		t.Errorf("query returned %d series, want 1: %v", len(ss), ss)
		return -1
	}
	return ss[0].value
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}
