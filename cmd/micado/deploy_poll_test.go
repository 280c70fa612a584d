package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/micado-scale/micado/manager"
)

// TestDeployShowsTheLastPollOnly runs `micado deploy --json` against a
// manager that first reports a service starting, with a reason, and then
// running, without one: the final status must not carry the earlier
// poll's reason (the manager omits empty reasons, so decoding every poll
// into one value kept them).
func TestDeployShowsTheLastPollOnly(t *testing.T) {
	var polls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := manager.AppStatus{Name: "shop", File: "shop.yaml", State: manager.AppDeploying,
			Services: []manager.ServiceStatus{{Name: "web", Service: "shop-web", Desired: 1, State: "pending",
				Reasons: []string{"starting: waiting for a worker with role=app"}}}}
		if r.Method == http.MethodGet && polls.Add(1) > 1 {
			st.State = manager.AppDeployed
			st.Services[0] = manager.ServiceStatus{Name: "web", Service: "shop-web", Desired: 1, Running: 1, Passing: 1, State: "running"}
		}
		json.NewEncoder(w).Encode(st)
	}))
	defer srv.Close()
	t.Setenv("MICADO_ADDR", srv.URL)
	t.Setenv("MICADO_TOKEN", "tok")
	file := filepath.Join(t.TempDir(), "shop.yaml")
	if err := os.WriteFile(file, []byte("application: shop\nservices:\n  web:\n    image: micado/demo-web\n    role: app\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := newRoot()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"--home", t.TempDir(), "deploy", file, "--json"})
	if err := root.Execute(); err != nil {
		t.Fatalf("deploy: %v\n%s", err, errOut.String())
	}
	var st manager.AppStatus
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("output is not a status: %v\n%s", err, out.String())
	}
	if polls.Load() < 2 || st.State != manager.AppDeployed || len(st.Services) != 1 || st.Services[0].Passing != 1 {
		t.Fatalf("after %d polls: %+v", polls.Load(), st)
	}
	if len(st.Services[0].Reasons) != 0 || strings.Contains(out.String(), "starting:") {
		t.Fatalf("the final status carries an earlier poll's reasons: %s", out.String())
	}
}
