package manager

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

const shopV1 = `application: shop
services:
  db:
    image: micado/demo-web
    role: app
    memory: 64MiB
    ports: [{port: 5432, check: {tcp: true}}]
  api:
    image: micado/demo-web
    role: app
    memory: 64MiB
    replicas: 2
    ports: [{port: 8080, check: {http: /health}}]
    depends_on: [db]
    links: [db]
`

// An application deploys in dependency order (api only once db passes,
// told where db is), changes apply only the difference (more replicas; a
// changed setting replaces containers make before break), removed
// services stop, and undeploy removes everything.
func TestDeployApplyUndeploy(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 2<<30, "role=app")
	w.addWorker("w-2", 2<<30, "role=app")
	m := w.start("m1", testConfig())
	w.leader()
	var st AppStatus
	if code := m.do("POST", "/v1/apps", DeployRequest{File: "shop.yaml", Definition: shopV1}, &st); code != http.StatusAccepted || st.Name != "shop" {
		t.Fatalf("deploy: %d %+v", code, st)
	}
	eventually(t, 10*time.Second, "shop is deployed", func() bool {
		m.do("GET", "/v1/apps/shop", nil, &st)
		return st.State == AppDeployed
	})
	for _, s := range st.Services {
		if s.State != "running" || s.Passing != s.Desired {
			t.Fatalf("service %+v", s)
		}
	}
	api, _ := m.current().store.Container("shop-api-1")
	db, _ := m.current().store.Container("shop-db-1")
	if api.CreatedAt.Before(db.CreatedAt) {
		t.Fatal("api was created before db")
	}
	if api.Env["DB_ADDRS"] == "" || api.Env["DB_SERVICE"] != "shop-db" || api.Env["MICADO_LINKS"] != "shop-db" {
		t.Fatalf("api's link environment: %v", api.Env)
	}
	// More api replicas, a changed db setting, then api removed.
	v2 := strings.Replace(strings.Replace(shopV1, "replicas: 2", "replicas: 3", 1), "memory: 64MiB\n    ports: [{port: 5432", "memory: 96MiB\n    ports: [{port: 5432", 1)
	if code := m.do("POST", "/v1/apps", DeployRequest{File: "shop.yaml", Definition: v2}, nil); code != http.StatusAccepted {
		t.Fatalf("deploy v2: %d", code)
	}
	eventually(t, 10*time.Second, "v2 is deployed: 3 api, db replaced", func() bool {
		m.do("GET", "/v1/apps/shop", nil, &st)
		dbs := m.current().store.Service("shop-db")
		return st.State == AppDeployed && len(m.current().store.Service("shop-api")) == 3 && len(dbs) == 1 && dbs[0].Memory == 96<<20
	})
	v3 := shopV1[:strings.Index(shopV1, "  api:")]
	if code := m.do("POST", "/v1/apps", DeployRequest{File: "shop.yaml", Definition: v3}, nil); code != http.StatusAccepted {
		t.Fatalf("deploy v3: %d", code)
	}
	eventually(t, 10*time.Second, "api is stopped", func() bool {
		m.do("GET", "/v1/apps/shop", nil, &st)
		return st.State == AppDeployed && len(m.current().store.Service("shop-api")) == 0
	})
	var apps []AppStatus
	if code := m.do("GET", "/v1/apps", nil, &apps); code != 200 || len(apps) != 1 {
		t.Fatalf("apps: %d %+v", code, apps)
	}
	if code := m.do("DELETE", "/v1/apps/shop", nil, nil); code != 200 {
		t.Fatalf("undeploy: %d", code)
	}
	if n := len(w.journalRecords()); n != 0 || len(w.journal.Keys(appsPrefix)) != 0 {
		t.Fatalf("after undeploy: %d records, apps %v", n, w.journal.Keys(appsPrefix))
	}
	if code := m.do("GET", "/v1/apps/shop", nil, nil); code != http.StatusNotFound {
		t.Fatalf("status of an undeployed app: %d", code)
	}
}

// A deploy that cannot go on stops and says why; bad files and names
// taken by a launched service change nothing.
func TestDeployFailuresAndRefusals(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 1<<30, "role=app")
	cfg := testConfig()
	cfg.ServiceWait = time.Second
	m := w.start("m1", cfg)
	w.leader()
	bad := "application: bad\nservices:\n  x:\n    image: missing/image\n    role: app\n"
	if code := m.do("POST", "/v1/apps", DeployRequest{File: "bad.yaml", Definition: bad}, nil); code != http.StatusAccepted {
		t.Fatalf("deploy: %d", code)
	}
	var st AppStatus
	eventually(t, 10*time.Second, "bad fails with the reason", func() bool {
		m.do("GET", "/v1/apps/bad", nil, &st)
		return st.State == AppFailed && len(st.Services) == 1 && st.Services[0].State == "failed"
	})
	if !strings.Contains(st.Error, "image missing/image is not on this worker") {
		t.Fatalf("error: %q", st.Error)
	}
	var e ErrorBody
	if code := m.do("POST", "/v1/apps", DeployRequest{File: "x.yaml", Definition: "application: Bad Name\n"}, &e); code != http.StatusBadRequest || !strings.Contains(e.Error, "x.yaml:") {
		t.Fatalf("bad file: %d %q", code, e.Error)
	}
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "other-web", Role: "app", Memory: "16MiB"}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	before := strings.Join(w.desiredKeys(), ",")
	clash := "application: other\nservices:\n  web:\n    image: micado/demo-web\n    role: app\n"
	if code := m.do("POST", "/v1/apps", DeployRequest{File: "o.yaml", Definition: clash}, &e); code != http.StatusConflict || !strings.Contains(e.Error, "already uses") {
		t.Fatalf("clash: %d %q", code, e.Error)
	}
	if after := strings.Join(w.desiredKeys(), ","); after != before {
		t.Fatalf("a refused deploy changed the desired state: %s, was %s", after, before)
	}
	for _, p := range []string{"/v1/apps/x%2F..%2F..", "/v1/apps/BAD"} {
		if code := m.do("GET", p, nil, &e); code != http.StatusBadRequest {
			t.Fatalf("GET %s: %d %q", p, code, e.Error)
		}
	}
}

// A deployment a leader change interrupted is resumed by the new leader.
func TestNewLeaderResumesADeployment(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 2<<30, "role=app")
	rec := `{"name":"shop","file":"shop.yaml","state":"deploying","definition":` + jsonString(shopV1) + `}`
	w.journal.Put(appsPrefix+"shop", []byte(rec))
	m := w.start("m1", testConfig())
	w.leader()
	var st AppStatus
	eventually(t, 10*time.Second, "shop is deployed", func() bool {
		m.do("GET", "/v1/apps/shop", nil, &st)
		return st.State == AppDeployed
	})
	// And an undeploy left half done is finished.
	p, _ := w.journal.Get(appsPrefix + "shop")
	undeploying := strings.Replace(string(p.Value), `"state":"deployed"`, `"state":"undeploying"`, 1)
	m.stop()
	w.journal.Put(appsPrefix+"shop", []byte(undeploying))
	m2 := w.start("m2", testConfig())
	eventually(t, 10*time.Second, "shop is undeployed", func() bool {
		return m2.IsLeader() && len(w.journal.Keys(appsPrefix)) == 0 && len(w.journalRecords()) == 0
	})
}

func jsonString(s string) string {
	b := strings.Builder{}
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '\n':
			b.WriteString(`\n`)
		case '"':
			b.WriteString(`\"`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
