package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/micado-scale/micado/internal/wire"
)

// setupForScaleIn leaves two app workers: w-1 (512MiB) holding web-1
// (200MiB), and a scaled-out medium worker holding api-1 (150MiB),
// which is the least utilized and whose container fits on w-1.
func setupForScaleIn(t *testing.T, c *testCluster, webFlags ...string) string {
	t.Helper()
	c.mustMicado(append([]string{"launch", "micado/demo-web", "--role", "app", "--name", "web", "--replicas", "2", "--memory", "200MiB", "--port", "8080", "--health-path", "/health"}, webFlags...)...)
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "api", "--memory", "150MiB", "--port", "8080", "--health-path", "/health")
	ws := c.workerContainers()
	if len(ws) != 2 {
		t.Fatalf("%d workers after scale-out, want 2", len(ws))
	}
	newWorker := ""
	for _, w := range ws {
		if n := w.Labels[wire.LabelNode]; n != "w-1" {
			newWorker = n
		}
	}
	c.mustMicado("stop", "web-2")
	return newWorker
}

func nodeOf(t *testing.T, c *testCluster, service string) []string {
	var nodes []string
	for _, e := range passing(t, c.consul(), service) {
		for _, tag := range e.Service.Tags {
			if n, ok := strings.CutPrefix(tag, "node="); ok {
				nodes = append(nodes, n)
			}
		}
	}
	return nodes
}

func TestConsolidatorDrainsAndTerminatesUnattended(t *testing.T) {
	c := newTestCluster(t, "--workers", "1", "--roles", "app", "--worker-memory", "512MiB", "--instance-types", "medium=1GiB",
		"--consolidate-schedule", "@every 2s", "--scale-in-delay", "0s", "--unneeded-time", "1s")
	cl := c.consul()

	// While the consolidator works, a poller on the Consul catalog checks
	// that no service ever has fewer passing instances than desired (one
	// each once web-2 is stopped).
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	minPassing := map[string]int{"web": 99, "api": 99}
	samples := 0
	var wg sync.WaitGroup
	startPoller := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				for _, svc := range []string{"web", "api"} {
					es, _, err := cl.Health().Service(svc, "", true, nil)
					if err != nil {
						continue
					}
					mu.Lock()
					minPassing[svc] = min(minPassing[svc], len(es))
					samples++
					mu.Unlock()
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	newWorker := setupForScaleIn(t, c)
	startPoller()
	eventually(t, 3*time.Minute, "the scaled-out worker is drained and terminated", func() (bool, string) {
		ws := c.workerContainers()
		return len(ws) == 1 && ws[0].Labels[wire.LabelNode] == "w-1", fmt.Sprintf("%d workers", len(ws))
	})
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if samples < 20 || minPassing["web"] < 1 || minPassing["api"] < 1 {
		t.Fatalf("during the move: %d samples, fewest passing %v; want at least 1 each", samples, minPassing)
	}
	if got := nodeOf(t, c, "api"); len(got) != 1 || got[0] != "w-1" {
		t.Fatalf("api runs on %v after scale-in, want [w-1] (moved off %s)", got, newWorker)
	}
	if n := len(c.appContainers("api")); n != 1 {
		t.Fatalf("%d api containers, want 1: the old copy must be gone", n)
	}
	eventually(t, 30*time.Second, "nodes no longer lists the terminated worker", func() (bool, string) {
		out := c.mustMicado("nodes")
		return !strings.Contains(out, newWorker), out
	})
}

func TestConsolidateByHand(t *testing.T) {
	c := newTestCluster(t, "--workers", "1", "--roles", "app", "--worker-memory", "512MiB", "--instance-types", "medium=1GiB",
		"--consolidate-schedule", "off")
	// web is pinned, so w-1 itself is never a candidate.
	newWorker := setupForScaleIn(t, c, "--pinned")

	out := c.mustMicado("consolidate", "--dry-run")
	for _, want := range []string{"move api-1", "from " + newWorker + " to w-1", "remove " + newWorker, "dry run: nothing was changed"} {
		if !strings.Contains(out, want) {
			t.Fatalf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if len(c.workerContainers()) != 2 || len(nodeOf(t, c, "api")) != 1 || nodeOf(t, c, "api")[0] != newWorker {
		t.Fatal("a dry run changed the cluster")
	}

	// A pinned container keeps its worker: a safety rule, even by hand.
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "db", "--memory", "50MiB", "--pinned")
	if n := nodeOf(t, c, "db"); len(n) != 1 || n[0] != newWorker {
		t.Fatalf("db placed on %v, want the emptier %s", n, newWorker)
	}
	out = c.mustMicado("consolidate")
	if !strings.Contains(out, "skip "+newWorker+": db-1 is not relocatable") || !strings.Contains(out, "skip w-1: web-1 is not relocatable") || !strings.Contains(out, "nothing to scale in") {
		t.Fatalf("with a pinned container: %s", out)
	}
	c.mustMicado("stop", "db")

	// By hand, the waiting rules (10 min after scale-out) are skipped.
	out = c.mustMicado("consolidate")
	if !strings.Contains(out, "moved api-1 from "+newWorker+" to w-1") || !strings.Contains(out, "terminated "+newWorker) {
		t.Fatalf("consolidate: %s", out)
	}
	if ws := c.workerContainers(); len(ws) != 1 {
		t.Fatalf("%d workers left, want 1", len(ws))
	}
	if n := nodeOf(t, c, "api"); len(n) != 1 || n[0] != "w-1" {
		t.Fatalf("api on %v, want w-1", n)
	}
	// Nothing left to do.
	out = c.mustMicado("consolidate")
	if !strings.Contains(out, "nothing to scale in") {
		t.Fatalf("last worker: %s", out)
	}
}
