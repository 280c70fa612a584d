package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/micado-scale/micado/manager"
)

// requireChromium finds the headless browser the dashboard test drives, or
// fails (never skips) saying how to get it.
func requireChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatalf("the dashboard test needs chromium (headless) and found none on PATH: run `make tools`")
	return ""
}

// headless runs one headless Chromium in a fresh profile (removed after)
// on url with the extra flags, in dir, and returns its stdout.
func headless(t *testing.T, chrome, dir, url string, flags ...string) string {
	t.Helper()
	profile, err := os.MkdirTemp("", "micado-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(profile)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-extensions",
		"--user-data-dir=" + profile, "--virtual-time-budget=8000",
	}, flags...)
	cmd := exec.CommandContext(ctx, chrome, append(args, url)...)
	cmd.Dir = dir
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(flags, " "), err, lastLines(errOut.String(), 20))
	}
	return out.String()
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// between returns the first match of re's group 1 in s, or "".
func between(s string, re string) string {
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if m == nil {
		return ""
	}
	return m[1]
}

// dashboardProblems checks the rendered dashboard and lists what is wrong.
func dashboardProblems(dom, cluster, token string) []string {
	var bad []string
	want := func(ok bool, format string, a ...any) {
		if !ok {
			bad = append(bad, fmt.Sprintf(format, a...))
		}
	}
	role := func(r string) string {
		return between(dom, `(?s)<section class="role" data-role="`+r+`">(.*?)</section>`)
	}
	worker := func(w string) string {
		return between(dom, `(?s)<article class="worker" data-worker="`+w+`"[^>]*>(.*?)</article>`)
	}
	want(strings.Contains(dom, "cluster "+cluster), "the header does not name cluster %s", cluster)
	want(!strings.Contains(dom, "needs the cluster"), "the page asks for a token although the URL carries one")
	want(!strings.Contains(dom, token), "the token appears in the page")

	// The autoscaling section: a card with a chart of scaled's last hour
	// (at least one point, its replicas drawn), the workers per role, and
	// no hint that no service has a policy.
	auto := between(dom, `(?s)<section id="autoscale-panel"(.*?)</section>`)
	want(strings.Contains(auto, `<article class="scaled" data-service="scaled" data-off="false">`), "the autoscaling section has no card for scaled")
	want(strings.Contains(auto, "autoscale on") && strings.Contains(auto, "min 1 · max 3"), "scaled's card does not show autoscale on, min 1 and max 3")
	want(strings.Contains(auto, "cpu target 80%") || strings.Contains(auto, "/ target 80%"), "scaled's card does not show its cpu target of 80%%")
	chart := between(dom, `(?s)(<svg class="chart" data-service="scaled" data-points="[1-9]\d*".*?</svg>)`)
	want(strings.Contains(chart, `<polyline class="l-replicas" points="`) && strings.Contains(chart, `class="dot d-replicas"`), "no chart of scaled's replicas with at least one point")
	roles := between(dom, `(?s)(<svg class="chart roles-chart" data-chart="roles" data-points="[1-9]\d*".*?</svg>)`)
	want(strings.Contains(roles, `data-series="proxy"`) && strings.Contains(roles, `data-series="app"`), "the workers per role chart has no line for proxy and app")
	want(!strings.Contains(auto, "No service has a scaling policy"), "the autoscaling section says no service has a policy")

	proxy, app := role("proxy"), role("app")
	want(strings.Contains(proxy, `data-worker="w-1"`) && !strings.Contains(proxy, `data-worker="w-2"`), "w-1 (only) is not under role=proxy")
	want(strings.Contains(app, `data-worker="w-2"`) && !strings.Contains(app, `data-worker="w-1"`), "w-2 (only) is not under role=app")

	w1, w2 := worker("w-1"), worker("w-2")
	want(strings.Contains(w1, `data-container="demo-web-1" data-state="running" data-health="passing"`), "demo-web-1 is not shown running and passing on w-1")
	want(strings.Contains(w1, `data-container="scaled-1" data-state="running"`), "scaled-1 is not shown running on w-1")
	want(strings.Contains(w2, `data-container="api-1" data-state="running"`) && strings.Contains(w2, `data-container="api-2" data-state="running"`), "api-1 and api-2 are not shown on w-2")
	want(!strings.Contains(w1+w2, "big-1"), "the pending big-1 is shown on a worker")
	// Memory: capacity, reserved (2 × 64MiB on w-1, 400MiB on w-2), used,
	// and the bar's reserved part in proportion.
	for _, f := range []struct{ in, name, what string }{
		{w1, "w-1", "reserved <b>128MiB</b>"}, {w1, "w-1", "of <b>1GiB</b>"}, {w1, "w-1", "free <b>793.6MiB</b>"},
		{w1, "w-1", `class="fig fig-used">used <b>`}, {w1, "w-1", `class="bar-reserved" style="width: 12.5%;"`},
		{w2, "w-2", "reserved <b>400MiB</b>"}, {w2, "w-2", "of <b>1GiB</b>"}, {w2, "w-2", `class="bar-used`},
	} {
		want(strings.Contains(f.in, f.what), "%s does not show %q", f.name, f.what)
	}

	pending := between(dom, `(?s)<section id="pending-panel"(.*?)</section>`)
	want(strings.Contains(pending, `data-container="big-1" data-state="pending"`), "big-1 is not among the pending requests")
	want(strings.Contains(pending, "no worker fits big-1 (role=app, 1GiB)"), "big-1's placement reason is not shown")
	want(strings.Contains(pending, `<div class="waiting">waiting: the cluster has reached its limit of 2 instances</div>`), "what big-1 waits for (the instance limit) is not shown")

	events := between(dom, `(?s)<ol id="events"[^>]*>(.*?)</ol>`)
	want(strings.Count(events, `<li class="event"`) >= 3, "fewer than 3 events are shown")
	want(regexp.MustCompile(`data-kind="placed">.*?<span class="subject">demo-web-1</span><span class="msg">placed demo-web-1 on w-1`).MatchString(events), "the event that placed demo-web-1 is not shown")
	want(strings.Contains(events, `data-kind="pending"`), "no pending event is shown")
	return bad
}

func TestDashboard(t *testing.T) {
	chrome := requireChromium(t)
	// Two workers of 1GiB and at most 2 instances: a request for 1GiB
	// fits on neither and scale-out may not add a third, so it stays
	// pending with its reason.
	c := newTestCluster(t, "--workers", "2", "--roles", "proxy,app", "--worker-memory", "1GiB", "--max-instances", "2")
	st := c.state()
	tok, err := os.ReadFile(st.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))

	c.mustMicado("launch", "micado/demo-web", "--role", "proxy", "--memory", "64MiB", "--port", "8080")
	// A service with a scaling policy, for the autoscaling section; idle,
	// it stays at its min of 1.
	c.mustMicado("launch", "micado/demo-web", "--name", "scaled", "--role", "proxy", "--memory", "64MiB", "--port", "8080",
		"--min", "1", "--max", "3", "--cpu", "80%")
	c.mustMicado("launch", "micado/demo-web", "--name", "api", "--role", "app", "--memory", "200MiB", "--replicas", "2", "--port", "8080", "--health-path", "/health")
	c.mustMicado("launch", "micado/demo-web", "--name", "big", "--role", "app", "--memory", "1GiB", "--port", "8080", "--detach")
	eventually(t, time.Minute, "big-1 waits for the instance limit", func() (bool, string) {
		for _, x := range c.ps() {
			if x.Name == "big-1" {
				return x.State == manager.StatePending && strings.Contains(x.Reason, "limit of 2 instances"), string(x.State) + ": " + x.Reason
			}
		}
		return false, "no big-1"
	})

	// The autoscaler (every 5 s) has drawn at least one point of scaled's
	// hour and of the workers per role.
	eventually(t, 30*time.Second, "the autoscaler has a point of scaled's last hour", func() (bool, string) {
		req, err := http.NewRequest(http.MethodGet, st.Manager+"/v1/autoscale?history=1", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var v manager.AutoscaleView
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return false, resp.Status + ": " + err.Error()
		}
		for _, p := range v.Policies {
			if p.Service == "scaled" {
				return len(p.Series) > 0 && len(v.Roles["proxy"]) > 0 && len(v.Roles["app"]) > 0,
					fmt.Sprintf("%d points of scaled, %d of role proxy, %d of role app", len(p.Series), len(v.Roles["proxy"]), len(v.Roles["app"]))
			}
		}
		return false, fmt.Sprintf("no policy for scaled among %d", len(v.Policies))
	})

	var url string
	t.Run("micado dashboard prints the URL with the token in its fragment", func(t *testing.T) {
		url = strings.TrimSpace(c.mustMicado("dashboard", "--print"))
		if want := st.Manager + "/ui/#token=" + token; url != want {
			t.Fatalf("dashboard --print = %q, want %q", url, want)
		}
		out, errOut, err := c.micado("dashboard")
		if err != nil || strings.TrimSpace(out) != url || !strings.Contains(errOut, "keep it private") {
			t.Fatalf("dashboard: %v\nstdout: %s\nstderr: %s", err, out, errOut)
		}
	})
	if url == "" {
		t.FailNow()
	}

	t.Run("the page is served without the token, the API is not", func(t *testing.T) {
		for _, x := range []struct {
			path string
			code int
		}{{"/ui/", http.StatusOK}, {"/ui/app.js", http.StatusOK}, {"/v1/nodes", http.StatusUnauthorized}, {"/v1/containers", http.StatusUnauthorized}, {"/v1/events", http.StatusUnauthorized}} {
			resp, err := http.Get(st.Manager + x.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != x.code {
				t.Errorf("GET %s without token: %s, want %d", x.path, resp.Status, x.code)
			}
			if x.code != http.StatusOK && bytes.Contains(b, []byte("demo-web")) {
				t.Errorf("GET %s without token leaked data: %s", x.path, b)
			}
		}
	})

	dir := t.TempDir()
	t.Run("headless Chromium renders autoscaling charts, workers by role, containers, memory, pending reasons and events", func(t *testing.T) {
		var dom string
		var bad []string
		for try := 0; try < 3; try++ { // a slow first poll gets another go
			dom = headless(t, chrome, dir, url, "--dump-dom")
			if bad = dashboardProblems(dom, c.name, token); len(bad) == 0 {
				break
			}
			t.Logf("try %d: %s", try+1, strings.Join(bad, "; "))
		}
		if len(bad) > 0 {
			_ = os.WriteFile(filepath.Join(dir, "dashboard.html"), []byte(dom), 0o644)
			t.Fatalf("the dashboard is wrong:\n- %s\nrendered DOM:\n%s", strings.Join(bad, "\n- "), dom)
		}
	})

	t.Run("a screenshot", func(t *testing.T) {
		shot := filepath.Join(dir, "dashboard.png")
		headless(t, chrome, dir, url, "--hide-scrollbars", "--window-size=1280,900", "--screenshot="+shot)
		f, err := os.Open(shot)
		if err != nil {
			t.Fatalf("no screenshot: %v", err)
		}
		defer f.Close()
		cfg, err := png.DecodeConfig(f)
		if err != nil || cfg.Width != 1280 || cfg.Height != 900 {
			t.Fatalf("screenshot: %dx%d, %v; want a 1280x900 PNG", cfg.Width, cfg.Height, err)
		}
		// MICADO_DASHBOARD_PNG=docs/dashboard.png keeps a copy (the README's).
		if keep := os.Getenv("MICADO_DASHBOARD_PNG"); keep != "" {
			b, err := os.ReadFile(shot)
			if err == nil {
				err = os.WriteFile(keep, b, 0o644)
			}
			if err != nil {
				t.Fatalf("keep the screenshot: %v", err)
			}
			t.Logf("screenshot kept at %s", keep)
		}
	})

	t.Run("without a token the page says how to get the URL", func(t *testing.T) {
		dom := headless(t, chrome, dir, st.Manager+"/", "--dump-dom") // / redirects to /ui/
		for _, want := range []string{"needs the cluster", "<pre>micado dashboard</pre>", `data-state="off"`} {
			if !strings.Contains(dom, want) {
				t.Errorf("the page without a token lacks %q:\n%s", want, dom)
			}
		}
		if strings.Contains(dom, "demo-web-1") {
			t.Errorf("the page without a token shows cluster data")
		}
	})
}
