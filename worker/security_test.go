package worker

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/micado-scale/micado/internal/gossip"
	"github.com/micado-scale/micado/internal/wire"
)

// syncBuffer is a log sink written by memberlist's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// TestGossipRejectsNodesWithoutTheClusterKey runs a member configured as
// the manager configures itself (GossipConfig with the cluster key and
// its logger) on loopback, and nodes with no key and with a wrong key
// that try to join it: they cannot, the manager side never sees them, and
// its log says why in one clear line naming the peer. A node with the key
// joins, so the setup is not what stops the others.
func TestGossipRejectsNodesWithoutTheClusterKey(t *testing.T) {
	key := randomKey(t)
	var logs syncBuffer
	mgrLog := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mc := gossip.Config("manager", "127.0.0.1", freeTCPPort(t), "127.0.0.1", key, mgrLog)
	mgr, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mgr.Shutdown() }()
	mgrAddr := mgr.LocalNode().Address()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	sees := func(name string) bool {
		for _, n := range mgr.Members() {
			if n.Name == name {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		name   string
		key    []byte
		reason string
	}{
		{"no-key", nil, "it sent unencrypted gossip: it has no cluster key"},
		{"wrong-key", randomKey(t), "its gossip is encrypted with another key: it has a wrong cluster key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(logs.String())
			wc := gossip.Config("intruder-"+tc.name, "127.0.0.1", freeTCPPort(t), "127.0.0.1", tc.key, quiet)
			intruder, err := memberlist.Create(wc)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = intruder.Shutdown() }()
			n, err := intruder.Join([]string{mgrAddr})
			if err == nil || n != 0 {
				t.Fatalf("a node with %s joined the cluster: contacted %d, err %v", tc.name, n, err)
			}
			t.Logf("join refused: %v", err)
			// The worker's own log line explains the failure too.
			if h := gossip.JoinHint(err); !strings.Contains(h, "cluster's key") {
				t.Errorf("join hint for %v: %q", err, h)
			}
			// The line must name the peer: the intruder's loopback address.
			want := regexp.MustCompile(`level=WARN msg="` + gossip.MsgGossipRejected + `" from=127\.0\.0\.1:\d+ reason="` + regexp.QuoteMeta(tc.reason) + `" component=memberlist`)
			deadline := time.Now().Add(5 * time.Second)
			for !want.MatchString(logs.String()[before:]) {
				if time.Now().After(deadline) {
					t.Fatalf("the manager's log has no clear line for the rejected node; log:\n%s", logs.String()[before:])
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("manager logged: %s", firstMatchLine(logs.String()[before:], gossip.MsgGossipRejected))
			// Give gossip time to spread anything it would, then check the
			// manager side never saw the node.
			time.Sleep(time.Second)
			if sees(wc.Name) || mgr.NumMembers() != 1 {
				t.Fatalf("the manager sees %d members, the intruder among them: %v", mgr.NumMembers(), sees(wc.Name))
			}
			if strings.Contains(logs.String()[before:], "level=ERROR") {
				t.Errorf("the rejection is also logged as a raw error:\n%s", logs.String()[before:])
			}
		})
	}

	// Control: a node with the cluster key joins and is seen.
	before := len(logs.String())
	gc := gossip.Config("worker-ok", "127.0.0.1", freeTCPPort(t), "127.0.0.1", key, quiet)
	good, err := memberlist.Create(gc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = good.Shutdown() }()
	if n, err := good.Join([]string{mgrAddr}); err != nil || n != 1 {
		t.Fatalf("a node with the key cannot join: %d %v", n, err)
	}
	waitFor(t, 5*time.Second, "the manager sees the worker with the key", func() bool { return sees("worker-ok") })
	if strings.Contains(logs.String()[before:], gossip.MsgGossipRejected) {
		t.Fatalf("a node with the key was reported as rejected:\n%s", logs.String()[before:])
	}
}

func firstMatchLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// TestAgentAPIRefusesCallersWithoutTheToken checks every command of the
// agent API without Docker: without the token derived from the cluster
// key (none, a wrong one, another cluster's, the right one sent as a
// different scheme) the answer is 401 with a JSON error and the command
// never runs (the agent here has no engine and no gossip: running one
// would panic). Only the health probe and /metrics (metrics_test.go) are
// open.
func TestAgentAPIRefusesCallersWithoutTheToken(t *testing.T) {
	key := randomKey(t)
	a := &Agent{cfg: Config{Name: "w-auth"}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), token: wire.AgentToken(key)}
	h := a.routes()
	routes := []struct{ method, path, body string }{
		{http.MethodGet, "/v1/load", ""},
		{http.MethodGet, "/v1/containers", ""},
		{http.MethodPost, "/v1/containers", `{"instance":"x-1","service":"x","image":"busybox","memory":67108864}`},
		{http.MethodDelete, "/v1/containers/x-1", ""},
		{http.MethodDelete, "/v1/containers/x-1?generation=0", ""},
		{http.MethodPost, "/v1/leave", ""},
	}
	other := wire.AgentToken(randomKey(t))
	for _, auth := range []string{"", "Bearer", "Bearer ", "Bearer wrong", "Bearer " + other, "Basic " + wire.AgentToken(key), "bearer " + wire.AgentToken(key), "Bearer " + wire.AgentToken(key)[:63]} {
		for _, r := range routes {
			req := httptest.NewRequest(r.method, r.path, strings.NewReader(r.body))
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var body struct{ Error string }
			if rec.Code != http.StatusUnauthorized || json.Unmarshal(rec.Body.Bytes(), &body) != nil || body.Error == "" {
				t.Errorf("%s %s with Authorization %q: %d %s, want 401 with a JSON error", r.method, r.path, auth, rec.Code, rec.Body)
			}
		}
	}
	// With the token the command runs (load needs neither engine nor gossip).
	req := httptest.NewRequest(http.MethodGet, "/v1/load", nil)
	req.Header.Set("Authorization", "Bearer "+wire.AgentToken(key))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("load with the token: %d %s", rec.Code, rec.Body)
	}
	// The health probe is open and tells nothing but the node name.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/health", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("health: %d %s", rec.Code, rec.Body)
	}
}
