package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// backend is a fake app server that answers with its own name.
type backend struct {
	name string
	srv  *httptest.Server
	host string
	port string
}

func (b *backend) addr() string { return net.JoinHostPort(b.host, b.port) }

func newBackend(t *testing.T, name string) *backend {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s %s", name, r.Method, r.URL.RequestURI(), body)
	}))
	t.Cleanup(srv.Close)
	host, port, err := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	return &backend{name: name, srv: srv, host: host, port: port}
}

// fakeConsul serves /v1/health/service/<name>?passing=true on 127.0.0.1 with
// entries shaped like real Consul's (extra fields included, as Consul sends).
type fakeConsul struct {
	t       *testing.T
	srv     *httptest.Server
	service string

	mu      sync.Mutex
	entries []map[string]any
	status  int    // answer with this status instead of the entries when not 0
	token   string // last X-Consul-Token seen
	require string // when set, only this token sees the entries
}

func newFakeConsul(t *testing.T, service string) *fakeConsul {
	t.Helper()
	c := &fakeConsul{t: t, service: service}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *fakeConsul) serve(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.token = r.Header.Get("X-Consul-Token")
	if r.Method != http.MethodGet || r.URL.Path != "/v1/health/service/"+c.service {
		http.NotFound(w, r)
		return
	}
	if c.require != "" && c.token != c.require {
		// What Consul with ACLs (default deny) answers a token that may
		// not read the service: no error, an empty list.
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Consul-Results-Filtered-By-ACLs", "true")
		_, _ = w.Write([]byte("[]\n"))
		return
	}
	if r.URL.Query().Get("passing") != "true" {
		c.t.Errorf("consul asked without passing=true: %s", r.URL)
	}
	if c.status != 0 {
		http.Error(w, "rpc error making call: No cluster leader", c.status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Consul-Index", "42")
	entries := c.entries
	if entries == nil {
		entries = []map[string]any{}
	}
	_ = json.NewEncoder(w).Encode(entries)
}

// addr is the fake's host:port without a scheme, as micado sets CONSUL_HTTP_ADDR.
func (c *fakeConsul) addr() string { return strings.TrimPrefix(c.srv.URL, "http://") }

// set makes the listed backends the passing instances. The first one gives its
// address in Service.Address; the others only in Node.Address, which Consul
// clients must fall back to.
func (c *fakeConsul) set(bs ...*backend) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries = nil
	for i, b := range bs {
		svcAddr := b.host
		if i > 0 {
			svcAddr = ""
		}
		var port int
		fmt.Sscan(b.port, &port)
		c.entries = append(c.entries, map[string]any{
			"Node": map[string]any{
				"ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": "w-" + b.name,
				"Address": b.host, "Datacenter": "dc1",
				"TaggedAddresses": map[string]string{"lan": b.host, "wan": b.host},
				"Meta":            map[string]string{}, "CreateIndex": 7, "ModifyIndex": 9,
			},
			"Service": map[string]any{
				"ID": c.service + "-" + b.name, "Service": c.service, "Tags": []string{"role=app"},
				"Address": svcAddr, "Meta": nil, "Port": port,
				"Weights":           map[string]int{"Passing": 1, "Warning": 1},
				"EnableTagOverride": false, "CreateIndex": 11, "ModifyIndex": 11,
			},
			"Checks": []map[string]any{{
				"Node": "w-" + b.name, "CheckID": "service:" + c.service + "-" + b.name,
				"Name": "Service check", "Status": "passing", "ServiceID": c.service + "-" + b.name,
			}},
		})
	}
}

func (c *fakeConsul) fail(status int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status = status
}

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// start builds a proxy from the environment m and serves it.
func start(t *testing.T, m map[string]string) (*proxy, *httptest.Server) {
	t.Helper()
	cfg, err := loadConfig(env(m))
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	p := newProxy(cfg)
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return p, srv
}

func do(t *testing.T, srv *httptest.Server, method, path, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, string(b)
}

func get(t *testing.T, srv *httptest.Server, path string) (*http.Response, string) {
	t.Helper()
	return do(t, srv, http.MethodGet, path, "")
}

// hits sends n requests to / and counts them per backend name, checking that
// X-Micado-Backend names the backend that answered.
func hits(t *testing.T, srv *httptest.Server, n int, byAddr map[string]string) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		resp, body := get(t, srv, "/")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET / = %d %q, want 200", resp.StatusCode, body)
		}
		name, _, _ := strings.Cut(body, " ")
		if hdr := resp.Header.Get("X-Micado-Backend"); byAddr[hdr] != name {
			t.Errorf("X-Micado-Backend = %q, but %q answered", hdr, name)
		}
		got[name]++
	}
	return got
}

func getBackends(t *testing.T, srv *httptest.Server) []string {
	t.Helper()
	resp, body := get(t, srv, "/backends")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /backends = %d %q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("/backends Content-Type = %q", ct)
	}
	var list []string
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("decoding /backends %q: %v", body, err)
	}
	return list
}

func TestRoundRobinThroughConsul(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	consul := newFakeConsul(t, "demo-web")
	consul.set(a, b)
	p, srv := start(t, map[string]string{
		"MICADO_LINKS":      "demo-web,demo-db",
		"CONSUL_HTTP_ADDR":  consul.addr(),
		"CONSUL_HTTP_TOKEN": "s3cret",
	})
	if err := p.refresh(context.Background()); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	consul.mu.Lock()
	token := consul.token
	consul.mu.Unlock()
	if token != "s3cret" {
		t.Errorf("X-Consul-Token = %q, want s3cret", token)
	}

	byAddr := map[string]string{a.addr(): "a", b.addr(): "b"}
	got := hits(t, srv, 6, byAddr)
	if got["a"] != 3 || got["b"] != 3 {
		t.Errorf("hits = %v, want 3 each", got)
	}

	// Consecutive requests alternate.
	_, first := get(t, srv, "/")
	_, second := get(t, srv, "/")
	if first[:1] == second[:1] {
		t.Errorf("two consecutive requests both went to %q", first[:1])
	}

	// Method, path, query and body reach the backend unchanged.
	resp, body := do(t, srv, http.MethodPost, "/orders/7?x=1&y=2", "payload")
	if resp.StatusCode != http.StatusOK || !strings.HasSuffix(body, " POST /orders/7?x=1&y=2 payload") {
		t.Errorf("POST = %d %q", resp.StatusCode, body)
	}
}

func TestHealthAndBackends(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	consul := newFakeConsul(t, "api")
	p, srv := start(t, map[string]string{"UPSTREAM": "api", "CONSUL_HTTP_ADDR": consul.addr()})

	// Healthy even before Consul answered and with no backend at all.
	if resp, body := get(t, srv, "/health"); resp.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("/health = %d %q, want 200 \"ok\"", resp.StatusCode, body)
	}
	if list := getBackends(t, srv); len(list) != 0 {
		t.Errorf("/backends before refresh = %v, want []", list)
	}
	if _, body := get(t, srv, "/backends"); strings.TrimSpace(body) != "[]" {
		t.Errorf("/backends body = %q, want []", body)
	}

	consul.set(a, b)
	if err := p.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{a.addr(), b.addr()}
	slices.Sort(want)
	if list := getBackends(t, srv); !slices.Equal(list, want) {
		t.Errorf("/backends = %v, want %v", list, want)
	}
	if resp, body := get(t, srv, "/health"); resp.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("/health = %d %q, want 200 \"ok\"", resp.StatusCode, body)
	}
	if resp, _ := get(t, srv, "/health"); resp.Header.Get("X-Micado-Backend") != "" {
		t.Errorf("/health was proxied")
	}
}

func TestNoBackendIs503(t *testing.T) {
	consul := newFakeConsul(t, "demo-web")
	p, srv := start(t, map[string]string{"UPSTREAM": "demo-web", "CONSUL_HTTP_ADDR": consul.addr()})
	if err := p.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, srv, "/anything")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status = %d, want 503", resp.StatusCode)
	}
	line := strings.TrimSuffix(body, "\n")
	if strings.Contains(line, "\n") || !strings.Contains(line, "demo-web") || !strings.Contains(line, "no passing instance") {
		t.Errorf("body = %q, want one line naming demo-web and the reason", body)
	}

	// Without Consul and without static addresses.
	_, srv2 := start(t, map[string]string{"UPSTREAM": "demo-web"})
	resp, body = get(t, srv2, "/")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "DEMO_WEB_ADDRS") {
		t.Errorf("without consul: %d %q, want 503 naming DEMO_WEB_ADDRS", resp.StatusCode, body)
	}
}

func TestFallbackToStaticAddrs(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	byAddr := map[string]string{a.addr(): "a", b.addr(): "b"}
	static := a.addr() + ", " + b.addr() + ","

	t.Run("consul down", func(t *testing.T) {
		down := httptest.NewServer(http.NotFoundHandler())
		downAddr := strings.TrimPrefix(down.URL, "http://")
		down.Close() // nothing listens there any more

		p, srv := start(t, map[string]string{
			"UPSTREAM":         "demo-web",
			"CONSUL_HTTP_ADDR": downAddr,
			"DEMO_WEB_ADDRS":   static,
		})
		if err := p.refresh(context.Background()); err == nil {
			t.Fatal("refresh against a closed port succeeded")
		}
		if got := hits(t, srv, 4, byAddr); got["a"] != 2 || got["b"] != 2 {
			t.Errorf("hits = %v, want 2 each", got)
		}
	})

	t.Run("consul unset", func(t *testing.T) {
		p, srv := start(t, map[string]string{
			"MICADO_LINKS":   "demo-web",
			"DEMO_WEB_ADDRS": static,
		})
		if err := p.refresh(context.Background()); err != nil {
			t.Fatalf("refresh without consul: %v", err)
		}
		if got := hits(t, srv, 4, byAddr); got["a"] != 2 || got["b"] != 2 {
			t.Errorf("hits = %v, want 2 each", got)
		}
	})
}

func TestFailedRefreshKeepsLastGoodList(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	consul := newFakeConsul(t, "demo-web")
	consul.set(a, b)
	p, srv := start(t, map[string]string{"UPSTREAM": "demo-web", "CONSUL_HTTP_ADDR": consul.addr()})
	if err := p.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	consul.fail(http.StatusInternalServerError)
	err := p.refresh(context.Background())
	if err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("refresh against a failing consul = %v, want a 500 error", err)
	}
	if list := getBackends(t, srv); len(list) != 2 {
		t.Errorf("backends after a failed refresh = %v, want both kept", list)
	}
	byAddr := map[string]string{a.addr(): "a", b.addr(): "b"}
	if got := hits(t, srv, 2, byAddr); got["a"] != 1 || got["b"] != 1 {
		t.Errorf("hits = %v, want 1 each", got)
	}
}

func TestUnhealthyBackendStopsReceivingTraffic(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	consul := newFakeConsul(t, "demo-web")
	consul.set(a, b)
	p, srv := start(t, map[string]string{
		"UPSTREAM":         "demo-web",
		"CONSUL_HTTP_ADDR": consul.addr(),
		"REFRESH":          "10ms",
	})
	if err := p.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	byAddr := map[string]string{a.addr(): "a", b.addr(): "b"}
	if got := hits(t, srv, 4, byAddr); got["a"] != 2 || got["b"] != 2 {
		t.Fatalf("hits = %v, want 2 each", got)
	}

	// b's check fails: Consul no longer lists it as passing.
	consul.set(a)
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Equal(getBackends(t, srv), []string{a.addr()}) {
		if time.Now().After(deadline) {
			t.Fatalf("backends still %v 5s after b left consul", getBackends(t, srv))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := hits(t, srv, 6, byAddr); got["a"] != 6 {
		t.Errorf("hits = %v, want all 6 on a", got)
	}

	// b passes again and gets its share back.
	consul.set(b, a)
	for len(getBackends(t, srv)) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("b did not come back")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := hits(t, srv, 4, byAddr); got["a"] != 2 || got["b"] != 2 {
		t.Errorf("hits = %v, want 2 each", got)
	}
}

func TestBackendDownIs502(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(dead.URL, "http://")
	dead.Close()
	_, srv := start(t, map[string]string{"UPSTREAM": "demo-web", "DEMO_WEB_ADDRS": addr})
	resp, body := get(t, srv, "/")
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Micado-Backend") != addr {
		t.Errorf("GET / = %d %q (backend %q), want 502 from %s",
			resp.StatusCode, body, resp.Header.Get("X-Micado-Backend"), addr)
	}
}

func TestLoadConfig(t *testing.T) {
	cfg, err := loadConfig(env(map[string]string{
		"MICADO_LINKS":     " demo-web , demo-db",
		"CONSUL_HTTP_ADDR": "micado-c-consul:8500",
		"DEMO_WEB_ADDRS":   "10.0.0.2:8080,10.0.0.1:8080,,10.0.0.2:8080",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream != "demo-web" || cfg.Service != "demo-proxy" || cfg.Port != "8080" || cfg.Refresh != time.Second ||
		cfg.ConsulURL != "http://micado-c-consul:8500" || cfg.StaticVar != "DEMO_WEB_ADDRS" ||
		!slices.Equal(cfg.Static, []string{"10.0.0.1:8080", "10.0.0.2:8080"}) {
		t.Errorf("config = %+v", cfg)
	}

	cfg, err = loadConfig(env(map[string]string{
		"UPSTREAM": "app-tier", "MICADO_LINKS": "other", "PORT": "9000", "REFRESH": "250ms", "MICADO_SERVICE": "front",
		"CONSUL_HTTP_ADDR": "https://consul.example:8501/",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream != "app-tier" || cfg.Service != "front" || cfg.Port != "9000" || cfg.Refresh != 250*time.Millisecond ||
		cfg.ConsulURL != "https://consul.example:8501" || cfg.StaticVar != "APP_TIER_ADDRS" || len(cfg.Static) != 0 {
		t.Errorf("config = %+v", cfg)
	}

	for _, bad := range []map[string]string{
		{},
		{"MICADO_LINKS": " , "},
		{"UPSTREAM": "x", "REFRESH": "soon"},
		{"UPSTREAM": "x", "REFRESH": "0s"},
	} {
		if _, err := loadConfig(env(bad)); err == nil {
			t.Errorf("loadConfig(%v) succeeded", bad)
		}
	}
}

// requestCounts scrapes GET /metrics and returns demo_proxy_requests_total
// by code, checking its type and that every series carries service.
func requestCounts(t *testing.T, srv *httptest.Server, service string) map[string]float64 {
	t.Helper()
	resp, body := get(t, srv, "/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics = %d %q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/metrics Content-Type = %q, want Prometheus text", ct)
	}
	if resp.Header.Get("X-Micado-Backend") != "" {
		t.Error("/metrics was proxied")
	}
	series := regexp.MustCompile(`^demo_proxy_requests_total\{([^}]*)\} (\S+)$`)
	label := regexp.MustCompile(`(\w+)="([^"]*)"`)
	counts := map[string]float64{}
	typed := false
	for line := range strings.SplitSeq(body, "\n") {
		if line == "# TYPE demo_proxy_requests_total counter" {
			typed = true
		}
		m := series.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		labels := map[string]string{}
		for _, l := range label.FindAllStringSubmatch(m[1], -1) {
			labels[l[1]] = l[2]
		}
		if labels["service"] != service || labels["code"] == "" || len(labels) != 2 {
			t.Errorf("series %q: want labels service=%q and code only", line, service)
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("series %q: %v", line, err)
		}
		counts[labels["code"]] = v
	}
	if len(counts) > 0 && !typed {
		t.Errorf("/metrics lacks # TYPE demo_proxy_requests_total counter:\n%s", body)
	}
	return counts
}

func TestMetricsCountProxiedRequests(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	_, srv := start(t, map[string]string{
		"UPSTREAM": "demo-web", "MICADO_SERVICE": "front",
		"DEMO_WEB_ADDRS": a.addr() + "," + b.addr(),
	})
	if got := requestCounts(t, srv, "front"); len(got) != 0 {
		t.Errorf("counts before any request = %v, want none", got)
	}
	hits(t, srv, 3, map[string]string{a.addr(): "a", b.addr(): "b"})
	if resp, _ := do(t, srv, http.MethodPost, "/orders", "x"); resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /orders = %d", resp.StatusCode)
	}
	// The proxy's own endpoints are not counted.
	get(t, srv, "/health")
	get(t, srv, "/backends")
	get(t, srv, "/metrics")
	if got := requestCounts(t, srv, "front"); len(got) != 1 || got["200"] != 4 {
		t.Errorf("counts = %v, want 4 with code 200 only", got)
	}

	// A dead backend (502) and no backend at all (503), with the default
	// service label.
	dead := httptest.NewServer(http.NotFoundHandler())
	deadAddr := strings.TrimPrefix(dead.URL, "http://")
	dead.Close()
	_, srv2 := start(t, map[string]string{"UPSTREAM": "demo-web", "DEMO_WEB_ADDRS": deadAddr})
	get(t, srv2, "/")
	get(t, srv2, "/x")
	_, srv3 := start(t, map[string]string{"UPSTREAM": "demo-web"})
	get(t, srv3, "/")
	if got := requestCounts(t, srv2, "demo-proxy"); len(got) != 1 || got["502"] != 2 {
		t.Errorf("counts with a dead backend = %v, want 2 with code 502", got)
	}
	if got := requestCounts(t, srv3, "demo-proxy"); len(got) != 1 || got["503"] != 1 {
		t.Errorf("counts without a backend = %v, want 1 with code 503", got)
	}
}

// TestConsulTokenFromFile: micado gives a linked container its Consul
// token as a file named by CONSUL_HTTP_TOKEN_FILE; the proxy sends it as
// X-Consul-Token (it wins over CONSUL_HTTP_TOKEN), and a Consul with ACLs
// shows it the backends. Without the token it sees none. An unreadable or
// empty file is a configuration error.
func TestConsulTokenFromFile(t *testing.T) {
	a := newBackend(t, "a")
	consul := newFakeConsul(t, "demo-web")
	consul.set(a)
	consul.require = "d1sc0very"
	file := filepath.Join(t.TempDir(), "micado-consul-token")
	if err := os.WriteFile(file, []byte("d1sc0very\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	p, srv := start(t, map[string]string{
		"MICADO_LINKS":           "demo-web",
		"CONSUL_HTTP_ADDR":       consul.addr(),
		"CONSUL_HTTP_TOKEN_FILE": file,
		"CONSUL_HTTP_TOKEN":      "other",
	})
	if err := p.refresh(context.Background()); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if got := getBackends(t, srv); len(got) != 1 || got[0] != a.addr() {
		t.Fatalf("backends %v, want [%s]", got, a.addr())
	}
	if got := hits(t, srv, 2, map[string]string{a.addr(): "a"}); got["a"] != 2 {
		t.Errorf("hits = %v", got)
	}

	// Without the token, Consul filters the service out: no backend.
	p2, srv2 := start(t, map[string]string{"MICADO_LINKS": "demo-web", "CONSUL_HTTP_ADDR": consul.addr()})
	_ = p2.refresh(context.Background())
	if got := getBackends(t, srv2); len(got) != 0 {
		t.Fatalf("backends without the token: %v", got)
	}

	empty := filepath.Join(t.TempDir(), "empty")
	_ = os.WriteFile(empty, []byte("\n"), 0o444)
	for _, f := range []string{filepath.Join(t.TempDir(), "missing"), empty} {
		_, err := loadConfig(env(map[string]string{"MICADO_LINKS": "demo-web", "CONSUL_HTTP_TOKEN_FILE": f}))
		if err == nil || !strings.Contains(err.Error(), "CONSUL_HTTP_TOKEN_FILE") {
			t.Errorf("token file %s: %v", f, err)
		}
	}
}
