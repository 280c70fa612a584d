package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func repoFile(t *testing.T, rel string) string {
	t.Helper()
	p := filepath.Join("..", "..", rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDeployThreeTierApplication(t *testing.T) {
	c := newTestCluster(t, "--workers", "3", "--roles", "proxy,app,db", "--worker-memory", "1GiB")
	webshop := repoFile(t, "definitions/webshop.yaml")

	t.Run("a file with errors changes nothing", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(bad, []byte("application: bad\nservices:\n  web:\n    image: micado/demo-web\n    role: app\n    memory: 12XB\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		kv := c.kvCount()
		_, errOut, err := c.micado("deploy", bad)
		if err == nil || !strings.Contains(errOut, "bad.yaml:6: services.web.memory:") {
			t.Fatalf("deploy of a bad file: %v %s", err, errOut)
		}
		if c.kvCount() != kv || strings.Contains(c.mustMicado("apps"), "bad") {
			t.Fatal("a bad file changed the cluster")
		}
		if _, errOut, err := c.micado("validate", bad); err == nil || !strings.Contains(errOut, "'12XB' is not a size") {
			t.Fatalf("validate: %v %s", err, errOut)
		}
	})

	t.Run("deploy starts the services in dependency order", func(t *testing.T) {
		out, errOut, err := c.micado("deploy", webshop)
		if err != nil {
			t.Fatalf("deploy: %v\n%s\n%s", err, out, errOut)
		}
		// db (level 0) passed before app started, app before proxy.
		first := map[string]time.Time{}
		for _, x := range c.ps() {
			if t0, ok := first[x.Service]; !ok || x.CreatedAt.Before(t0) {
				first[x.Service] = x.CreatedAt
			}
		}
		if !(first["webshop-db"].Before(first["webshop-app"]) && first["webshop-app"].Before(first["webshop-proxy"])) {
			t.Fatalf("start order %v", first)
		}
		if !strings.Contains(c.mustMicado("apps"), "webshop") {
			t.Fatal("apps does not list webshop")
		}
		st := c.mustMicado("status", "webshop")
		if !strings.Contains(st, "deployed") || !strings.Contains(st, "2/2") {
			t.Fatalf("status: %s", st)
		}
	})

	proxyURL := func(t *testing.T) string {
		es := passing(t, c.consul(), "webshop-proxy")
		if len(es) != 1 {
			t.Fatalf("%d passing proxies", len(es))
		}
		return fmt.Sprintf("http://%s:%d/", es[0].Service.Address, es[0].Service.Port)
	}
	backends := func(t *testing.T, n int) map[string]bool {
		seen := map[string]bool{}
		cl := &http.Client{Timeout: 5 * time.Second}
		for range n {
			resp, err := cl.Get(proxyURL(t))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == 200 {
				seen[resp.Header.Get("X-Served-By")] = true
			}
		}
		return seen
	}

	t.Run("the proxy spreads requests across the application instances", func(t *testing.T) {
		eventually(t, 30*time.Second, "answers from both app instances through the proxy", func() (bool, string) {
			seen := backends(t, 10)
			return len(seen) >= 2, fmt.Sprint(seen)
		})
	})

	t.Run("redeploying scales the application up and down", func(t *testing.T) {
		def, _ := os.ReadFile(webshop)
		dir := t.TempDir()
		for _, n := range []int{3, 1} {
			changed := strings.Replace(string(def), "replicas: 2", fmt.Sprintf("replicas: %d", n), 1)
			if changed == string(def) {
				t.Fatal("webshop.yaml has no 'replicas: 2' line to change")
			}
			f := filepath.Join(dir, "webshop.yaml")
			if err := os.WriteFile(f, []byte(changed), 0o600); err != nil {
				t.Fatal(err)
			}
			dbBefore := c.appContainers("webshop-db")[0].ID
			c.mustMicado("deploy", f)
			if got := len(passing(t, c.consul(), "webshop-app")); got != n {
				t.Fatalf("%d app instances pass, want %d", got, n)
			}
			if got := len(c.appContainers("webshop-app")); got != n {
				t.Fatalf("docker runs %d app containers, want %d", got, n)
			}
			if c.appContainers("webshop-db")[0].ID != dbBefore {
				t.Fatal("an unchanged service was replaced")
			}
		}
		eventually(t, 30*time.Second, "the proxy follows the scaled-down application", func() (bool, string) {
			seen := backends(t, 6)
			return len(seen) == 1, fmt.Sprint(seen)
		})
	})

	t.Run("a changed setting replaces the containers, make before break", func(t *testing.T) {
		def, _ := os.ReadFile(webshop)
		changed := strings.Replace(strings.Replace(string(def), "replicas: 2", "replicas: 1", 1), `MESSAGE: "webshop"`, `MESSAGE: "webshop v2"`, 1)
		f := filepath.Join(t.TempDir(), "webshop.yaml")
		if err := os.WriteFile(f, []byte(changed), 0o600); err != nil {
			t.Fatal(err)
		}
		old := c.appContainers("webshop-app")
		if len(old) != 1 {
			t.Fatalf("%d app containers before", len(old))
		}
		c.mustMicado("deploy", f)
		now := c.appContainers("webshop-app")
		if len(now) != 1 || now[0].ID == old[0].ID {
			t.Fatalf("app containers after the change: %d, same as before: %v", len(now), len(now) == 1 && now[0].ID == old[0].ID)
		}
		// The proxy follows Consul once a second: until then it may still
		// try the old, stopped copy.
		eventually(t, 30*time.Second, "the proxy answers with the new setting", func() (bool, string) {
			resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(proxyURL(t))
			if err != nil {
				return false, err.Error()
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode == 200 && strings.Contains(string(b), "webshop v2"), resp.Status + " " + string(b)
		})
	})

	t.Run("undeploy removes the application", func(t *testing.T) {
		c.mustMicado("undeploy", "webshop")
		if n := len(c.appContainers("")); n != 0 {
			t.Fatalf("%d containers left", n)
		}
		if c.kvCount() != 0 {
			t.Fatal("desired state left")
		}
		if _, errOut, err := c.micado("status", "webshop"); err == nil || !strings.Contains(errOut, "no application named webshop") {
			t.Fatalf("status after undeploy: %v %s", err, errOut)
		}
	})
}

func TestDeployThatFailsHalfwayReportsWhy(t *testing.T) {
	// No db worker, and scale-out may only create proxy and app workers:
	// db can never run, so app and proxy never start.
	c := newTestCluster(t, "--workers", "2", "--roles", "proxy,app", "--worker-memory", "1GiB")
	out, errOut, err := c.micado("deploy", repoFile(t, "definitions/webshop.yaml"))
	if err == nil {
		t.Fatalf("deploy succeeded without a db worker: %s", out)
	}
	for _, want := range []string{"deploy of webshop failed", "service db", "role=db"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("error lacks %q: %s", want, errOut)
		}
	}
	st := c.mustMicado("status", "webshop")
	for _, want := range []string{"db", "failed", "app", "waiting", "waits for db"} {
		if !strings.Contains(st, want) {
			t.Errorf("status lacks %q:\n%s", want, st)
		}
	}
}

// TestDeployComposeApplication deploys the web shop written as a Compose
// file: it must behave as webshop.yaml does.
func TestDeployComposeApplication(t *testing.T) {
	c := newTestCluster(t, "--workers", "3", "--roles", "proxy,app,db", "--worker-memory", "1GiB")
	out, errOut, err := c.micado("deploy", repoFile(t, "definitions/webshop.compose.yaml"))
	if err != nil {
		t.Fatalf("deploy: %v\n%s\n%s", err, out, errOut)
	}
	if strings.Contains(errOut, "warning:") {
		t.Errorf("warnings for the example: %s", errOut)
	}
	first := map[string]time.Time{}
	for _, x := range c.ps() {
		if t0, ok := first[x.Service]; !ok || x.CreatedAt.Before(t0) {
			first[x.Service] = x.CreatedAt
		}
	}
	if !(first["webshop-db"].Before(first["webshop-app"]) && first["webshop-app"].Before(first["webshop-proxy"])) {
		t.Fatalf("start order %v", first)
	}
	st := c.mustMicado("status", "webshop")
	if !strings.Contains(st, "deployed") || !strings.Contains(st, "2/2") || !strings.Contains(st, "webshop.compose.yaml") {
		t.Fatalf("status: %s", st)
	}
	eventually(t, 30*time.Second, "answers from both app instances through the proxy", func() (bool, string) {
		es := passing(t, c.consul(), "webshop-proxy")
		if len(es) != 1 {
			return false, fmt.Sprintf("%d passing proxies", len(es))
		}
		seen := map[string]bool{}
		cl := &http.Client{Timeout: 5 * time.Second}
		for range 10 {
			resp, err := cl.Get(fmt.Sprintf("http://%s:%d/", es[0].Service.Address, es[0].Service.Port))
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			if resp.StatusCode == 200 {
				seen[resp.Header.Get("X-Served-By")] = true
			}
		}
		return len(seen) >= 2, fmt.Sprint(seen)
	})
	c.mustMicado("undeploy", "webshop")
}
