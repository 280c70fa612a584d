package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/memberlist"
	"github.com/micado-scale/micado/internal/gossip"
	"github.com/micado-scale/micado/internal/testconsul"
	"github.com/micado-scale/micado/internal/testnet"
	"github.com/micado-scale/micado/internal/wire"
	. "github.com/micado-scale/micado/manager"
)

func startConsulWithACL(tb testing.TB, mgmt string) string {
	return testconsul.StartWithACL(tb, mgmt).Addr
}

func startConsul(tb testing.TB) string { return testconsul.Start(tb).Addr }

func freePort(tb testing.TB) int { return testnet.FreePort(tb) }

func postLaunch(tb testing.TB, base string, req LaunchRequest) (int, []byte) {
	tb.Helper()
	b, _ := json.Marshal(req)
	resp, err := http.Post(base+"/v1/containers", "application/json", bytes.NewReader(b))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// consulCall is one request the manager made to Consul.
type consulCall struct {
	Method, Path, Token string
}

// tokenRecorder is a reverse proxy in front of Consul that records the
// ACL token of every request passing through it.
type tokenRecorder struct {
	mu    sync.Mutex
	calls []consulCall
}

func (r *tokenRecorder) start(tb testing.TB, consulAddr string) string {
	target, _ := url.Parse("http://" + consulAddr)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		tok := req.Header.Get("X-Consul-Token")
		if tok == "" {
			tok = strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")
		}
		if tok == "" {
			tok = req.URL.Query().Get("token")
		}
		r.mu.Lock()
		r.calls = append(r.calls, consulCall{req.Method, req.URL.Path, tok})
		r.mu.Unlock()
		rp.ServeHTTP(w, req)
	}))
	tb.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func (r *tokenRecorder) snapshot() []consulCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]consulCall(nil), r.calls...)
}

// fakeAgent is a worker: a memberlist member with the cluster key that
// gossips a load report, and an agent API that demands the agent token
// and "runs" containers in memory, so the manager places, starts and
// registers containers without Docker.
type fakeAgent struct {
	name  string
	token string
	addr  string // agent API host:port
	meta  []byte
	ml    *memberlist.Memberlist

	mu         sync.Mutex
	containers map[string]wire.ContainerInfo
	refused    int // requests without the agent token
}

func (a *fakeAgent) NodeMeta(int) []byte                    { return a.meta }
func (a *fakeAgent) NotifyMsg([]byte)                       {}
func (a *fakeAgent) GetBroadcasts(int, int) [][]byte        { return nil }
func (a *fakeAgent) LocalState(bool) []byte                 { return nil }
func (a *fakeAgent) MergeRemoteState([]byte, bool)          {}
func (a *fakeAgent) writeJSON(w http.ResponseWriter, v any) { _ = json.NewEncoder(w).Encode(v) }

func startFakeAgent(tb testing.TB, name string, key []byte, join string) *fakeAgent {
	tb.Helper()
	a := &fakeAgent{name: name, token: wire.AgentToken(key), containers: map[string]wire.ContainerInfo{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/containers", func(w http.ResponseWriter, r *http.Request) {
		var req wire.StartRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, `{"error":"bad body"}`, http.StatusBadRequest)
			return
		}
		info := wire.ContainerInfo{ID: "c-" + req.Instance, Name: req.Instance, Instance: req.Instance, Service: req.Service, App: req.App,
			Image: req.Image, Node: a.name, Memory: req.Memory, State: "running", Address: "127.0.0.1", Generation: req.Generation, Created: time.Now()}
		a.mu.Lock()
		a.containers[req.Instance] = info
		a.mu.Unlock()
		a.writeJSON(w, info)
	})
	mux.HandleFunc("GET /v1/containers", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		out := []wire.ContainerInfo{}
		for _, c := range a.containers {
			out = append(out, c)
		}
		a.mu.Unlock()
		a.writeJSON(w, out)
	})
	mux.HandleFunc("DELETE /v1/containers/{instance}", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		_, found := a.containers[r.PathValue("instance")]
		delete(a.containers, r.PathValue("instance"))
		a.mu.Unlock()
		a.writeJSON(w, map[string]bool{"found": found})
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+a.token {
			a.mu.Lock()
			a.refused++
			a.mu.Unlock()
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	tb.Cleanup(srv.Close)
	a.addr = strings.TrimPrefix(srv.URL, "http://")
	a.meta, _ = wire.Load{Kind: wire.KindWorker, Tags: []string{"role=app"}, Capacity: 1 << 30, API: a.addr, Started: time.Now().Unix()}.Encode()
	mc := gossip.Config(name, "127.0.0.1", freePort(tb), "127.0.0.1", key, slog.New(slog.NewTextHandler(io.Discard, nil)))
	mc.Delegate = a
	ml, err := memberlist.Create(mc)
	if err != nil {
		tb.Fatal(err)
	}
	a.ml = ml
	tb.Cleanup(func() { _ = ml.Shutdown() })
	if _, err := ml.Join([]string{join}); err != nil {
		tb.Fatalf("fake worker cannot join the manager: %v", err)
	}
	return a
}

// aclManager is a manager run in this process against a given Consul.
type aclManager struct {
	base   string
	gossip string
	key    []byte
	logs   *testnet.LogBuffer
	done   chan error
	cancel context.CancelFunc
}

func startACLManager(tb testing.TB, consulAddr, token string) *aclManager {
	tb.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	gossipPort := freePort(tb)
	cfg := Config{
		Cluster: "acl", ClusterKey: key, ConsulAddr: consulAddr, ConsulToken: token,
		BindAddr: "127.0.0.1", AdvertiseAddr: "127.0.0.1", BindPort: gossipPort,
		APIAddr: "127.0.0.1:" + strconv.Itoa(freePort(tb)), ConsulWait: 20 * time.Second,
		ReconcileInterval: time.Second, ConsolidateSchedule: "off",
	}
	m := &aclManager{base: "http://" + cfg.APIAddr, gossip: "127.0.0.1:" + strconv.Itoa(gossipPort), key: key, logs: &testnet.LogBuffer{}, done: make(chan error, 1)}
	cfg.Logger = slog.New(slog.NewTextHandler(m.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { m.done <- Run(ctx, cfg) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case <-m.done:
		case <-time.After(30 * time.Second):
		}
	})
	return m
}

// waitUp waits for the API, or returns Run's error.
func (m *aclManager) waitUp(tb testing.TB) error {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-m.done:
			m.done <- err
			return fmt.Errorf("manager stopped: %w", err)
		default:
		}
		if resp, err := http.Get(m.base + "/v1/status"); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatalf("manager API did not come up; log:\n%s", m.logs.String())
	return nil
}

// TestManagerUsesTheConsulTokenForEveryCall runs a real Consul with ACLs
// on and default_policy deny, and a manager with the management token
// behind a proxy that records the token of every Consul request: launch,
// placement, start, registration, listing and stop all work, and every
// single request the manager made carried the token.
func TestManagerUsesTheConsulTokenForEveryCall(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
	const mgmt = "5f1c0a1e-6d0b-4d7e-9c1a-0b7e2f3a4c5d"
	consulAddr := startConsulWithACL(t, mgmt)
	admin, _ := api.NewClient(&api.Config{Address: consulAddr, Token: mgmt})
	rec := &tokenRecorder{}
	m := startACLManager(t, rec.start(t, consulAddr), mgmt)
	if err := m.waitUp(t); err != nil {
		t.Fatalf("%v; log:\n%s", err, m.logs.String())
	}
	w := startFakeAgent(t, "w-acl", m.key, m.gossip)

	// A container is launched, placed on the worker, started and
	// registered in Consul's catalog.
	eventuallyACL(t, 20*time.Second, "the launch is accepted once the worker is seen", func() bool {
		code, _ := postLaunch(t, m.base, LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB"})
		return code == http.StatusAccepted
	})
	eventuallyACL(t, 20*time.Second, "web-1 runs and is registered in Consul", func() bool {
		es, _, err := admin.Catalog().Service("web", "", nil)
		return err == nil && len(es) == 1 && es[0].ServiceID == "web-1" && es[0].ServiceMeta[MetaCluster] == "acl"
	})
	var cs []ContainerView
	getJSON(t, m.base+"/v1/containers", &cs)
	if len(cs) != 1 || cs[0].State != StateRunning || cs[0].Node != "w-acl" {
		t.Fatalf("containers: %+v", cs)
	}
	if p, _, err := admin.KV().Get("micado/acl/containers/web-1", nil); err != nil || p == nil {
		t.Fatalf("the desired state is not in Consul KV: %v", err)
	}
	// Stopping deregisters and forgets it.
	req, _ := http.NewRequest(http.MethodDelete, m.base+"/v1/containers/web", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stop: %d %s", resp.StatusCode, b)
	}
	eventuallyACL(t, 10*time.Second, "web is deregistered and its record deleted", func() bool {
		es, _, err := admin.Catalog().Service("web", "", nil)
		keys, _, err2 := admin.KV().Keys("micado/acl/containers/", "", nil)
		return err == nil && err2 == nil && len(es) == 0 && len(keys) == 0
	})
	// An application deploys through the same client.
	def := "application: shop\nservices:\n  api:\n    image: micado/demo-web\n    role: app\n    memory: 32MiB\n"
	dreq, _ := json.Marshal(DeployRequest{File: "shop.yaml", Definition: def})
	resp, err = http.Post(m.base+"/v1/apps", "application/json", bytes.NewReader(dreq))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("deploy: %d %s", resp.StatusCode, b)
	}
	eventuallyACL(t, 20*time.Second, "the application is deployed", func() bool {
		var st AppStatus
		getJSON(t, m.base+"/v1/apps/shop", &st)
		return st.State == AppDeployed
	})
	// Let a few reconciliation rounds run with something to reconcile.
	time.Sleep(2500 * time.Millisecond)
	w.mu.Lock()
	refused := w.refused
	w.mu.Unlock()
	if refused != 0 {
		t.Errorf("the fake worker refused %d requests without the agent token", refused)
	}

	calls := rec.snapshot()
	paths := map[string]int{}
	for _, c := range calls {
		if c.Token != mgmt {
			t.Errorf("Consul call without the manager's token: %s %s (token %q)", c.Method, c.Path, c.Token)
		}
		p := c.Path
		for _, pre := range []string{"/v1/kv/", "/v1/agent/service/register", "/v1/agent/service/deregister/", "/v1/catalog/service/", "/v1/health/service/", "/v1/session/destroy/", "/v1/session/renew/"} {
			if strings.HasPrefix(p, pre) {
				p = pre + "…"
			}
		}
		paths[c.Method+" "+p]++
	}
	var seen []string
	for p, n := range paths {
		seen = append(seen, fmt.Sprintf("%s ×%d", p, n))
	}
	sort.Strings(seen)
	t.Logf("%d Consul calls, all with the token:\n  %s", len(calls), strings.Join(seen, "\n  "))
	for _, want := range []string{"PUT /v1/kv/…", "GET /v1/kv/…", "PUT /v1/agent/service/register…", "PUT /v1/agent/service/deregister/…", "PUT /v1/txn",
		"GET /v1/health/state/any", "GET /v1/agent/services", "PUT /v1/session/create", "PUT /v1/session/destroy/…"} {
		if paths[want] == 0 {
			t.Errorf("the manager never made %s: the proof does not cover it", want)
		}
	}
	for _, bad := range []string{"Permission denied", "ACL not found", "response code: 403"} {
		if strings.Contains(m.logs.String(), bad) {
			t.Errorf("the manager's log mentions %q:\n%s", bad, m.logs.String())
		}
	}

	// The manager also logs, in one clear line, a node that tries to join
	// its gossip without the cluster key, and never lists it.
	intruderCfg := gossip.Config("intruder", "127.0.0.1", freePort(t), "127.0.0.1", nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	intruder, err := memberlist.Create(intruderCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = intruder.Shutdown() }()
	if n, err := intruder.Join([]string{m.gossip}); err == nil || n != 0 {
		t.Fatalf("a node without the cluster key joined the manager: %d %v", n, err)
	}
	eventuallyACL(t, 5*time.Second, "the manager logs the rejected node", func() bool {
		return strings.Contains(m.logs.String(), `level=WARN msg="rejected gossip from a node without the cluster key" from=127.0.0.1:`)
	})
	var nodes []MemberView
	getJSON(t, m.base+"/v1/nodes", &nodes)
	for _, n := range nodes {
		if n.Name == "intruder" {
			t.Fatalf("the manager lists the node without the key: %+v", nodes)
		}
	}
}

// TestManagerRefusesToStartWithoutAUsableConsulToken: against Consul with
// ACLs on, a manager with no token, an unknown token, or a token that
// may only read refuses to start with an error that names the ACL problem
// and what to do, and writes nothing.
func TestManagerRefusesToStartWithoutAUsableConsulToken(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
	const mgmt = "0a6b7c8d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
	consulAddr := startConsulWithACL(t, mgmt)
	admin, _ := api.NewClient(&api.Config{Address: consulAddr, Token: mgmt})
	pol, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: "micado-read", Rules: `key_prefix "micado/" { policy = "read" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ro, _, err := admin.ACL().TokenCreate(&api.ACLToken{Description: "read only", Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Tokens that may do everything but one thing the manager needs.
	partial := func(name, rules string) string {
		t.Helper()
		p, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok.SecretID
	}
	const kvSession = `key_prefix "micado/acl/" { policy = "write" }
session_prefix "" { policy = "write" }
`
	noServiceWrite := partial("micado-no-service-write", kvSession+`node_prefix "" { policy = "read" }
service_prefix "" { policy = "read" }`)
	noNodeRead := partial("micado-no-node-read", kvSession+`service_prefix "" { policy = "write" }`)
	noServiceRead := partial("micado-no-service-read", kvSession+`node_prefix "" { policy = "read" }`)
	for _, tc := range []struct {
		name, token string
		want        []string
	}{
		{"none", "", []string{"consul ACL:", "has ACLs on and the manager has no token", "CONSUL_HTTP_TOKEN", "--consul-token-file", `key_prefix "micado/acl/" write`, "Permission denied"}},
		{"unknown", "4d3c2b1a-0000-4000-8000-000000000000", []string{"consul ACL:", "does not know the manager's token", "ACL not found"}},
		{"read-only", ro.SecretID, []string{"consul ACL:", "the manager's token may not write keys under micado/acl/", "lacks permission 'key:write'"}},
		{"no service write", noServiceWrite, []string{"consul ACL:", `the manager's token may not register services (service_prefix "" write)`, "lacks permission 'service:write'"}},
		{"no node read", noNodeRead, []string{"consul ACL:", `the manager's token may not read nodes (node_prefix "" read)`, "X-Consul-Results-Filtered-By-ACLs"}},
		{"no service read", noServiceRead, []string{"consul ACL:", `the manager's token may not read services (service_prefix "" read)`, "X-Consul-Results-Filtered-By-ACLs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startACLManager(t, consulAddr, tc.token)
			var err error
			select {
			case err = <-m.done:
				m.done <- err
			case <-time.After(30 * time.Second):
				t.Fatalf("the manager started without a usable Consul token; log:\n%s", m.logs.String())
			}
			if err == nil {
				t.Fatal("Run returned no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			t.Logf("Run: %v", err)
			if resp, err := http.Get(m.base + "/v1/status"); err == nil {
				resp.Body.Close()
				t.Error("the manager serves its API without Consul access")
			}
		})
	}
	if keys, _, err := admin.KV().Keys("micado/", "", nil); err != nil || len(keys) != 0 {
		t.Fatalf("managers that could not start wrote %v (%v)", keys, err)
	}
	if svcs, err := admin.Agent().Services(); err != nil || len(svcs) != 0 {
		t.Fatalf("the access check left services registered: %v (%v)", svcs, err)
	}
	// The same Consul with the management token: the manager starts.
	m := startACLManager(t, consulAddr, mgmt)
	if err := m.waitUp(t); err != nil {
		t.Fatalf("%v; log:\n%s", err, m.logs.String())
	}
}

func eventuallyACL(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v in %s", u, err, b)
	}
}
