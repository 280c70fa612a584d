package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

func get(t *testing.T, srv *httptest.Server, path string) (*http.Response, string) {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", path, err)
	}
	return resp, string(body)
}

func TestHandler(t *testing.T) {
	id := identity{Hostname: "box1", Service: "web", Instance: "web-2", Node: "node-a"}
	srv := httptest.NewServer(newHandler(id, ""))
	defer srv.Close()

	t.Run("root", func(t *testing.T) {
		resp, body := get(t, srv, "/")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d, want 200", resp.StatusCode)
		}
		if want := "hello from box1 (web)\n"; body != want {
			t.Errorf("body = %q, want %q", body, want)
		}
		if got := resp.Header.Get("X-Served-By"); got != "box1" {
			t.Errorf("X-Served-By = %q, want box1", got)
		}
	})

	t.Run("health", func(t *testing.T) {
		resp, body := get(t, srv, "/health")
		if resp.StatusCode != http.StatusOK || body != "ok" {
			t.Errorf("got %d %q, want 200 \"ok\"", resp.StatusCode, body)
		}
	})

	t.Run("whoami", func(t *testing.T) {
		resp, body := get(t, srv, "/whoami")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d, want 200", resp.StatusCode)
		}
		var got identity
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("decoding %q: %v", body, err)
		}
		if got != id {
			t.Errorf("whoami = %+v, want %+v", got, id)
		}
	})

	t.Run("unknown path", func(t *testing.T) {
		resp, _ := get(t, srv, "/nope")
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("status = %d, want 404", resp.StatusCode)
		}
	})
}

func TestMessagePrefix(t *testing.T) {
	srv := httptest.NewServer(newHandler(identity{Hostname: "h", Service: "s"}, "Hi!"))
	defer srv.Close()
	if _, body := get(t, srv, "/"); body != "Hi! hello from h (s)\n" {
		t.Errorf("body = %q", body)
	}
}

func TestIdentityFromEnv(t *testing.T) {
	t.Setenv("MICADO_SERVICE", "")
	t.Setenv("MICADO_INSTANCE", "i-1")
	t.Setenv("MICADO_NODE", "n-1")
	id := identityFromEnv()
	if id.Service != "demo-web" || id.Instance != "i-1" || id.Node != "n-1" || id.Hostname == "" {
		t.Errorf("identityFromEnv() = %+v", id)
	}
}

// cpuTime is the CPU time this process has used so far.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestBurn(t *testing.T) {
	srv := httptest.NewServer(newHandler(identity{Hostname: "box1", Service: "web"}, ""))
	defer srv.Close()

	cpu0, start := cpuTime(t), time.Now()
	resp, body := get(t, srv, "/burn?ms=300")
	took, used := time.Since(start), cpuTime(t)-cpu0
	if resp.StatusCode != http.StatusOK || body != "burned 300 ms on box1\n" {
		t.Fatalf("GET /burn?ms=300 = %d %q", resp.StatusCode, body)
	}
	if took < 300*time.Millisecond {
		t.Errorf("/burn?ms=300 answered after %s", took)
	}
	// Busy, not asleep: nearly all of the 300 ms is CPU time (leave room
	// for a machine that is busy with other tests).
	if used < 100*time.Millisecond {
		t.Errorf("/burn?ms=300 used %s of CPU, want most of 300 ms", used)
	}
	t.Logf("/burn?ms=300 took %s and %s of CPU", took, used)

	for q, want := range map[string]string{
		"":                "missing ms",
		"?ms=":            "missing ms",
		"?ms=abc":         `ms="abc" is not a whole number`,
		"?ms=1.5":         `ms="1.5" is not a whole number`,
		"?ms=0":           "ms=0 is out of range",
		"?ms=-3":          "ms=-3 is out of range",
		"?ms=10001":       "ms=10001 is out of range",
		"?ms=99999999999": "ms=99999999999 is out of range",
	} {
		resp, body := get(t, srv, "/burn"+q)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("GET /burn%s = %d %q, want 400 saying %q", q, resp.StatusCode, body, want)
		}
	}
}

func TestBurnStopsWhenTheClientLeaves(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	burn(ctx, 10*time.Second)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("burn went on for %s after its context ended", took)
	}
}
