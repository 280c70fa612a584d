package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// Consolidation to the fewest, cheapest instances, unattended: three
// 1GiB workers hold one replica each; one round drains two of them
// together (the budget allows it), and the next replaces the last by a
// cheaper 512MiB instance, make before break. The service never has
// fewer passing replicas than it had.
func TestConsolidationRepacksAndReplacesUnattended(t *testing.T) {
	c := newTestCluster(t, "--workers", "3", "--roles", "app", "--worker-memory", "1GiB",
		"--instance-types", "small=512MiB,large=1GiB", "--instance-prices", "small=0.01,large=0.02",
		"--consolidate-schedule", "@every 5s", "--scale-in-delay", "0s", "--unneeded-time", "5s",
		"--min-per-role", "app=1", "--drain-budget", "100%")
	cl := c.consul()
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "web", "--memory", "100MiB", "--port", "8080",
		"--health-path", "/health", "--replicas", "3")

	var mu sync.Mutex
	minPassing := 99
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if es, _, err := cl.Health().Service("web", "", true, nil); err == nil {
				mu.Lock()
				minPassing = min(minPassing, len(es))
				mu.Unlock()
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	workers := func() []manager.MemberView {
		var ns, out []manager.MemberView
		if err := json.Unmarshal([]byte(c.mustMicado("nodes", "--json")), &ns); err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if n.Kind == wire.KindWorker && n.Status == "alive" {
				out = append(out, n)
			}
		}
		return out
	}
	eventually(t, 4*time.Minute, "one small worker holds all three replicas", func() (bool, string) {
		ws := workers()
		ok := len(ws) == 1 && ws[0].Capacity == 512<<20 && len(passing(t, cl, "web")) == 3
		desc := ""
		for _, w := range ws {
			desc += fmt.Sprintf("%s(%d MiB, %d containers) ", w.Name, w.Capacity>>20, w.Containers)
		}
		return ok, desc
	})
	mu.Lock()
	lowest := minPassing
	mu.Unlock()
	if lowest < 3 {
		t.Errorf("web had only %d passing replicas at some point during consolidation", lowest)
	}
	// The events: two workers drained in one round (their scale-in events
	// come before either is terminated), then a replacement with its saving.
	var out string
	var drains, terms []manager.Event
	replaced := false
	eventually(t, time.Minute, "the replacement is recorded with its saving", func() (bool, string) {
		out = c.mustMicado("events", "--json")
		return strings.Contains(out, "replaced by a small instance: saves $0.01/h"), ""
	})
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e manager.Event
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		switch {
		case e.Kind == manager.EventScaleIn && strings.HasPrefix(e.Message, "draining for scale-in"):
			drains = append(drains, e)
		case e.Kind == manager.EventTerminated && strings.Contains(e.Message, "drained and terminated"):
			terms = append(terms, e)
		case e.Kind == manager.EventTerminated && strings.Contains(e.Message, "replaced by a small instance: saves $0.01/h"):
			replaced = true
		}
	}
	if len(drains) < 2 || len(terms) < 2 {
		t.Fatalf("%d drains and %d terminations, want at least 2 of each:\n%s", len(drains), len(terms), out)
	}
	// One round drains its workers one after the other, both planned at
	// once: the second drain starts as soon as the first worker is
	// terminated, not a round later (rounds are 5 s apart, plus the 5 s
	// revalidation delay).
	if gap := drains[1].Time.Sub(terms[0].Time); gap < 0 || gap > 3*time.Second {
		t.Errorf("the second drain began %s after the first termination: not one round", gap)
	}
	if !replaced {
		t.Fatalf("no event shows the replacement and its saving:\n%s", out)
	}
}
