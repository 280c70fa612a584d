package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
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
