package manager

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions"
)

// The dashboard's static files are served without the token; nothing else
// is, and the page fetches nothing from another origin.
func TestDashboardRoutes(t *testing.T) {
	m := &Manager{cfg: Config{Cluster: "ui", APIToken: "secret"}}
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path, token string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	for _, f := range []struct{ path, ctype, has string }{
		{"/ui/", "text/html", `<script src="app.js"`},
		{"/ui/app.js", "javascript", "Authorization"},
		{"/ui/style.css", "text/css", ".bar-used"},
		{"/ui/favicon.svg", "image/svg+xml", "<svg"},
	} {
		resp, body := do(http.MethodGet, f.path, "")
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), f.ctype) || !strings.Contains(body, f.has) {
			t.Errorf("GET %s without token: %s %q, body lacks %q", f.path, resp.Status, resp.Header.Get("Content-Type"), f.has)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "connect-src 'self'") || !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", f.path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no nosniff", f.path)
		}
	}
	if resp, _ := do(http.MethodHead, "/ui/", ""); resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD /ui/: %s", resp.Status)
	}

	for _, r := range []struct{ path, location string }{{"/", "/ui/"}, {"/ui", "/ui/"}} {
		resp, _ := do(http.MethodGet, r.path, "")
		if resp.StatusCode/100 != 3 || resp.Header.Get("Location") != r.location {
			t.Errorf("GET %s: %s to %q, want a redirect to %s", r.path, resp.Status, resp.Header.Get("Location"), r.location)
		}
	}
	if resp, _ := do(http.MethodGet, "/ui/nope.js", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /ui/nope.js: %s, want 404", resp.Status)
	}

	// Everything else still needs the token, whatever the path looks like.
	for _, r := range []struct{ method, path string }{
		{http.MethodGet, "/v1/status"}, {http.MethodGet, "/v1/nodes"}, {http.MethodGet, "/v1/containers"},
		{http.MethodGet, "/v1/events"}, {http.MethodGet, "/v1/autoscale?history=1"}, {http.MethodGet, "/metrics"}, {http.MethodPost, "/ui/"},
		{http.MethodDelete, "/ui/app.js"}, {http.MethodPost, "/"}, {http.MethodGet, "/v1/ui/"}, {http.MethodGet, "/uix"},
	} {
		for _, token := range []string{"", "wrong"} {
			resp, body := do(r.method, r.path, token)
			if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "API token") {
				t.Errorf("%s %s with token %q: %s %s, want 401", r.method, r.path, token, resp.Status, body)
			}
		}
	}
	// A path that climbs out of /ui/ is cleaned first: a redirect, no data.
	for _, p := range []string{"/ui/../v1/nodes", "/ui/%2e%2e/v1/nodes", "/ui//v1/nodes"} {
		resp, body := do(http.MethodGet, p, "")
		if resp.StatusCode == http.StatusOK && strings.Contains(body, `"capacity"`) {
			t.Errorf("GET %s without token served data: %s", p, body)
		}
	}

	// Nothing is fetched from elsewhere: no absolute URL in the page's files
	// (but the SVG namespace name, in favicon.svg's xmlns and the script's
	// createElementNS, which is never fetched).
	err := fs.WalkDir(uiFiles, "ui", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := uiFiles.ReadFile(p)
		if err != nil {
			return err
		}
		s := strings.ReplaceAll(string(b), "http://www.w3.org/2000/svg", "")
		for _, bad := range []string{"http://", "https://", "src=\"//", "href=\"//", "@import"} {
			if strings.Contains(s, bad) {
				t.Errorf("%s refers to another origin (%q)", p, bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The autoscaling section: the script polls GET /v1/autoscale?history=1,
// draws its charts as SVG node by node and never parses a string as HTML
// (service names, reasons and errors come from users); the page and the
// stylesheet have its place and its styles.
func TestDashboardAutoscaleSection(t *testing.T) {
	read := func(name string) string {
		t.Helper()
		b, err := uiFiles.ReadFile("ui/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	js, html, css := read("app.js"), read("index.html"), read("style.css")
	for _, f := range []struct{ file, body, has string }{
		{"index.html", html, `id="autoscale-panel"`},
		{"index.html", html, `<div id="autoscale">`},
		{"app.js", js, "'/v1/autoscale?history=1'"},
		{"app.js", js, "document.createElementNS(SVG_NS"},
		{"app.js", js, "'data-service': p.service"},
		{"app.js", js, "'data-chart': 'roles'"},
		{"app.js", js, "No service has a scaling policy: "},
		{"app.js", js, "micado launch … --min 2 --max 10 --cpu 60%"},
		{"style.css", css, "svg.chart"},
		{"style.css", css, ".l-replicas"},
		{"style.css", css, ".l-target"},
	} {
		if !strings.Contains(f.body, f.has) {
			t.Errorf("%s lacks %q", f.file, f.has)
		}
	}
	// No HTML parsing, no code from strings, no inline handlers: the page's
	// CSP forbids the latter anyway, the former would run API strings.
	for name, body := range map[string]string{"app.js": js, "index.html": html} {
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser", "createContextualFragment", "eval(", "new Function", " onclick=", " onerror=", " onload="} {
			if strings.Contains(body, bad) {
				t.Errorf("%s uses %q", name, bad)
			}
		}
	}
}

// The fields of GET /v1/autoscale that the dashboard reads keep their
// names: a rename in the API would leave the charts empty, silently.
func TestDashboardAutoscaleFields(t *testing.T) {
	at := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	d := &ScaleDecisionView{At: at, Current: 3, Desired: 4, Proposed: 4, Metric: "cpu", Clamp: "max", Reason: "cpu above target", Applied: true}
	v := AutoscaleView{
		Interval: "5s",
		Policies: []PolicyView{{
			Service: "web", App: "shop", Scaling: definitions.Scaling{Min: 2, Max: 12, CPU: 60, Query: "q", PerReplica: 10}, Off: true, Replicas: 3, Ready: 3,
			Metrics: []MetricView{{Name: "cpu", Value: 72.5, Target: 60, Reported: 3, Missing: true, Error: "e"}},
			Windows: []string{"0 8 * * 1-5"}, Last: d, LastChange: d,
			Series: []SeriesPoint{{T: at.Unix(), Replicas: 3, Desired: 4, Value: 72.5, Target: 60, Missing: true}},
		}},
		Alerts: []coordinator.RoleAlert{{Role: "app", Metric: "cpu", Value: .9, Limit: .8, Since: at, Firing: true, Reason: "r"}},
		Limit:  coordinator.UsageLimit{CPU: .8, Memory: .85, For: 2 * time.Minute},
		Roles:  map[string][]RolePoint{"app": {{T: at.Unix(), Workers: 2, Booting: 1}}},
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Interval *string `json:"interval"`
		Policies []map[string]json.RawMessage
		Alerts   []map[string]json.RawMessage
		Limit    map[string]json.RawMessage
		Roles    map[string][]map[string]json.RawMessage
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	has := func(what string, m map[string]json.RawMessage, keys ...string) {
		t.Helper()
		for _, k := range keys {
			if _, ok := m[k]; !ok {
				t.Errorf("%s has no %q in %s", what, k, b)
			}
		}
	}
	if got.Interval == nil || len(got.Policies) != 1 || len(got.Alerts) != 1 || len(got.Roles["app"]) != 1 {
		t.Fatalf("GET /v1/autoscale: %s", b)
	}
	p := got.Policies[0]
	has("a policy", p, "service", "app", "scaling", "off", "replicas", "ready", "metrics", "windows", "last", "last_change", "series")
	var sc map[string]json.RawMessage
	var metrics, series []map[string]json.RawMessage
	var last map[string]json.RawMessage
	for _, x := range []struct {
		raw json.RawMessage
		dst any
	}{{p["scaling"], &sc}, {p["metrics"], &metrics}, {p["series"], &series}, {p["last"], &last}} {
		if err := json.Unmarshal(x.raw, x.dst); err != nil {
			t.Fatal(err)
		}
	}
	has("a policy's scaling", sc, "min", "max", "cpu", "query", "per_replica")
	has("a metric", metrics[0], "name", "value", "target", "reported", "missing", "error")
	has("a series point", series[0], "t", "replicas", "desired", "value", "target", "missing")
	has("a decision", last, "at", "current", "desired", "metric", "clamp", "reason", "applied")
	has("an alert", got.Alerts[0], "role", "metric", "value", "limit", "since", "firing", "reason")
	has("the usage limit", got.Limit, "CPU", "Memory", "For") // no json tags: Go's names; For in nanoseconds
	has("a role point", got.Roles["app"][0], "t", "workers", "booting")
	js, err := uiFiles.ReadFile("ui/app.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, use := range []string{"v.policies", "v.roles", "v.alerts", "v.limit", "v.interval", "p.series", "p.last_change", "q.desired", "q.missing",
		"q.booting", "lim.CPU", "lim.For", "a.firing", "sc.per_replica"} {
		if !strings.Contains(string(js), use) {
			t.Errorf("app.js no longer reads %s", use)
		}
	}
}
