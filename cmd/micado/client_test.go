package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/micado-scale/micado/manager"
)

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func TestSplitAddrs(t *testing.T) {
	got := splitAddrs(" 10.0.0.5:8080, https://m2:8443/ ,,http://m3:8080")
	want := []string{"http://10.0.0.5:8080", "https://m2:8443", "http://m3:8080"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("splitAddrs: %q, want %q", got, want)
	}
	if len(splitAddrs("")) != 0 {
		t.Fatal("an empty MICADO_ADDR names a manager")
	}
}

// The CLI reaches whichever manager answers: with MICADO_ADDR listing a
// dead manager first, a call lands on the live one, which is tried first
// from then on.
func TestClientReachesTheManagerThatAnswers(t *testing.T) {
	var calls atomic.Int32
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Write([]byte(`{"cluster":"c1","leader":"manager-2"}`))
	}))
	defer live.Close()
	dead := deadAddr(t)
	t.Setenv("MICADO_ADDR", dead+","+live.URL)
	t.Setenv("MICADO_TOKEN", "tok")
	c, err := newClient(&globals{cluster: "c1", home: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var st manager.Status
	if err := c.get(context.Background(), "/v1/status", &st); err != nil {
		t.Fatalf("status with the first manager dead: %v", err)
	}
	if st.Leader != "manager-2" || c.base != live.URL {
		t.Fatalf("status %+v from %s", st, c.base)
	}
	// A write goes to the manager that answered last, never to the dead one.
	if err := c.do(context.Background(), http.MethodPost, "/v1/containers", map[string]string{"image": "x"}, nil); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("the live manager got %d calls, want 2", n)
	}
}

// While no manager leads, standbys answer 503 with Retry-After: the CLI
// waits and tries again until one leads. A refusal (409) is returned at
// once, and with no manager answering at all the call gives up after the
// failover wait, naming what it tried.
func TestClientRidesOutAFailover(t *testing.T) {
	var n atomic.Int32
	standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/containers/taken" {
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"error":"container taken already exists"}`))
			return
		}
		if n.Add(1) <= 3 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"error":"manager-1 is standing by and no manager leads the cluster right now; try again in a few seconds"}`))
			return
		}
		w.Write([]byte(`{"cluster":"c1","leader":"manager-1"}`))
	}))
	defer standby.Close()
	c := &client{base: standby.URL, bases: []string{standby.URL}, http: standby.Client(), failoverWait: 30 * time.Second}
	start := time.Now()
	var st manager.Status
	if err := c.get(context.Background(), "/v1/status", &st); err != nil {
		t.Fatalf("status during a failover: %v", err)
	}
	if st.Leader != "manager-1" || n.Load() != 4 {
		t.Fatalf("status %+v after %d calls", st, n.Load())
	}
	t.Logf("answered after %s", time.Since(start).Round(time.Millisecond))

	before := n.Load()
	err := c.do(context.Background(), http.MethodDelete, "/v1/containers/taken", nil, nil)
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != http.StatusConflict || n.Load() != before {
		t.Fatalf("a refusal: %v (%d more calls)", err, n.Load()-before)
	}

	gone := &client{base: "http://" + deadAddr(t), http: &http.Client{Timeout: time.Second}, failoverWait: time.Second}
	gone.bases = []string{gone.base}
	err = gone.get(context.Background(), "/v1/status", nil)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the micado manager at "+gone.base) {
		t.Fatalf("no manager answering: %v", err)
	}
}
