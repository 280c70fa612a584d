package manager

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/micado-scale/micado/internal/testnet"
	"github.com/micado-scale/micado/internal/wire"
)

// Linked containers get the Consul discovery token in their start
// request, as a read-only file and CONSUL_HTTP_TOKEN_FILE naming it;
// containers without links get neither; and the token is nowhere in the
// records (Consul KV), the API's answers (micado ps --json) or the log.
func TestDiscoveryTokenGoesOnlyToLinkedContainersAtStart(t *testing.T) {
	const secret = "7d1c5e0b-disc-0very-token-0123456789ab"
	file := filepath.Join(t.TempDir(), "discovery-token")
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := newWorld(t)
	w.addWorker("w-1", 2<<30, "role=app")
	cfg := testConfig()
	cfg.ConsulDiscoveryTokenFile = file
	logs := &testnet.LogBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := w.start("m1", cfg)
	w.leader()
	var st AppStatus
	if code := m.do("POST", "/v1/apps", DeployRequest{File: "shop.yaml", Definition: shopV1}, &st); code != http.StatusAccepted {
		t.Fatalf("deploy: %d %+v", code, st)
	}
	eventually(t, 10*time.Second, "shop is deployed", func() bool {
		m.do("GET", "/v1/apps/shop", nil, &st)
		return st.State == AppDeployed
	})

	w.agents.mu.Lock()
	reqs := append([][]byte(nil), w.agents.requests...)
	w.agents.mu.Unlock()
	linked, unlinked := 0, 0
	for _, b := range reqs {
		var r wire.StartRequest
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		switch r.Service {
		case "shop-api":
			linked++
			if len(r.Files) != 1 || r.Files[0].Path != DiscoveryTokenPath || r.Files[0].Mode != 0o444 || string(r.Files[0].Data) != secret {
				t.Errorf("%s: files %v, want the token at %s, mode 0444", r.Instance, r.Files, DiscoveryTokenPath)
			}
			if r.Env["CONSUL_HTTP_TOKEN_FILE"] != DiscoveryTokenPath || r.Env["MICADO_LINKS"] != "shop-db" {
				t.Errorf("%s: env %v", r.Instance, r.Env)
			}
		case "shop-db":
			unlinked++
			if strings.Contains(string(b), `"files"`) || strings.Contains(string(b), secret) || r.Env["CONSUL_HTTP_TOKEN_FILE"] != "" {
				t.Errorf("%s has no links and got the token: %s", r.Instance, b)
			}
		}
		for k, v := range r.Env {
			if strings.Contains(v, secret) {
				t.Errorf("%s: the token is in the environment (%s)", r.Instance, k)
			}
		}
	}
	if linked != 2 || unlinked != 1 {
		t.Fatalf("%d linked and %d unlinked starts, want 2 and 1", linked, unlinked)
	}
	for _, k := range w.desiredKeys() {
		p, _ := w.journal.Get(k)
		if strings.Contains(string(p.Value), secret) {
			t.Errorf("record %s carries the token", k)
		}
	}
	if rec := w.journalRecords()["shop-api-1"]; rec == nil || rec.Env["CONSUL_HTTP_TOKEN_FILE"] != "" {
		t.Errorf("the record of shop-api-1 is %+v: the token file is a start-time matter", rec)
	}
	for _, path := range []string{"/v1/containers", "/v1/apps/shop", "/v1/apps", "/v1/events", "/v1/status"} {
		var raw json.RawMessage
		m.do("GET", path, nil, &raw)
		if strings.Contains(string(raw), secret) {
			t.Errorf("GET %s shows the token", path)
		}
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("the manager logged the token")
	}
}

// A discovery token file that cannot be read, or is empty, stops the
// manager at start with a message naming the flag, and never quotes it.
func TestDiscoveryTokenFileMustBeReadable(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, []byte(" \n"), 0o600)
	for _, tc := range []struct{ file, want string }{
		{filepath.Join(dir, "missing"), "cannot read the Consul discovery token (--consul-discovery-token-file)"},
		{empty, "is empty"},
	} {
		w := newWorld(t)
		cfg := testConfig()
		cfg.ConsulDiscoveryTokenFile = tc.file
		_, err := New(cfg, Deps{Journal: w.journal, Lock: w.lock.For("m"), Registry: w.reg, Agents: w.agents})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.file, err, tc.want)
		}
	}
}
