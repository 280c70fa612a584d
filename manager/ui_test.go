package manager

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
		{http.MethodGet, "/v1/events"}, {http.MethodGet, "/metrics"}, {http.MethodPost, "/ui/"},
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
	// (but the SVG namespace name, which is never fetched).
	err := fs.WalkDir(uiFiles, "ui", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := uiFiles.ReadFile(p)
		if err != nil {
			return err
		}
		s := strings.ReplaceAll(string(b), `xmlns="http://www.w3.org/2000/svg"`, "")
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
