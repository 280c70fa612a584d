package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// loadGen burns CPU in a service's replicas through their published
// ports: conc clients call GET /burn?ms=N round-robin over the passing
// replicas Consul lists, until stopped.
type loadGen struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	ok     int
}

func startLoad(cl *consul.Client, service string, conc, burnMS int) *loadGen {
	ctx, cancel := context.WithCancel(context.Background())
	g := &loadGen{cancel: cancel}
	client := &http.Client{Timeout: 10 * time.Second}
	var mu sync.Mutex
	var addrs []string
	refresh := func() {
		es, _, err := cl.Health().Service(service, "", true, nil)
		if err != nil {
			return
		}
		var as []string
		for _, e := range es {
			as = append(as, fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port))
		}
		mu.Lock()
		addrs = as
		mu.Unlock()
	}
	refresh()
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				refresh()
			}
		}
	}()
	for i := 0; i < conc; i++ {
		g.wg.Add(1)
		go func(i int) {
			defer g.wg.Done()
			for n := i; ctx.Err() == nil; n++ {
				mu.Lock()
				as := addrs
				mu.Unlock()
				if len(as) == 0 {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s/burn?ms=%d", as[n%len(as)], burnMS), nil)
				if r, err := client.Do(req); err == nil {
					r.Body.Close()
					g.mu.Lock()
					g.ok++
					g.mu.Unlock()
				} else {
					time.Sleep(50 * time.Millisecond)
				}
			}
		}(i)
	}
	return g
}

// startNoisyLoad is one client burning CPU in a service's replicas with
// requests of ms±noise milliseconds and random pauses of up to a fifth of
// that, so the load varies around its mean.
func startNoisyLoad(cl *consul.Client, service string, ms int, noise float64) *loadGen {
	ctx, cancel := context.WithCancel(context.Background())
	g := &loadGen{cancel: cancel}
	client := &http.Client{Timeout: 10 * time.Second}
	rng := rand.New(rand.NewPCG(1, 2))
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		var addrs []string
		var refreshed time.Time
		for n := 0; ctx.Err() == nil; n++ {
			if time.Since(refreshed) > time.Second {
				if es, _, err := cl.Health().Service(service, "", true, nil); err == nil {
					addrs = addrs[:0]
					for _, e := range es {
						addrs = append(addrs, fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port))
					}
				}
				refreshed = time.Now()
			}
			if len(addrs) == 0 {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			burn := int(float64(ms) * (1 + noise*(2*rng.Float64()-1)))
			req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s/burn?ms=%d", addrs[n%len(addrs)], burn), nil)
			if r, err := client.Do(req); err == nil {
				r.Body.Close()
				g.mu.Lock()
				g.ok++
				g.mu.Unlock()
			}
			time.Sleep(time.Duration(rng.Float64() * float64(ms) / 5 * float64(time.Millisecond)))
		}
	}()
	return g
}

func (g *loadGen) stop() int {
	g.cancel()
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ok
}

// timelinePoint is the cluster as the test saw it at one moment.
type timelinePoint struct {
	at       time.Duration
	replicas int
	passing  int
	workers  int
	cpu      float64
	missing  bool
	phase    string
}

func (p timelinePoint) String() string {
	cpu := fmt.Sprintf("%5.1f%%", p.cpu)
	if p.missing {
		cpu = "    - "
	}
	return fmt.Sprintf("%6.0fs  %-5s replicas %d (passing %d)  workers %d  cpu/replica %s", p.at.Seconds(), p.phase, p.replicas, p.passing, p.workers, cpu)
}

// The user story, unattended: a load raises the CPU of a service → its
// replicas rise → they no longer fit and a new instance is created for
// them → the load stops → the replicas fall after the stabilization window
// → the consolidator drains and terminates the extra instance.
func TestAutoscaleUnattendedFromSpikeToQuiet(t *testing.T) {
	c := newTestCluster(t, "--workers", "1", "--roles", "app", "--worker-memory", "512MiB",
		"--consolidate-schedule", "@every 10s", "--scale-in-delay", "0s", "--unneeded-time", "20s", "--min-per-role", "app=1")
	cl := c.consul()
	// 100MiB each: four fit on w-1 (460MiB usable), a fifth needs a new
	// instance. The two cores of the machine carry at most ~200% CPU, so
	// a 20% target asks for up to 10 replicas: max 6 is reached.
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "web", "--memory", "100MiB", "--port", "8080",
		"--health-path", "/health", "--min", "1", "--max", "6", "--cpu", "20%", "--stabilization", "30s")

	start := time.Now()
	var timeline []timelinePoint
	phase := "idle"
	sample := func() timelinePoint {
		var v manager.PolicyView
		p := timelinePoint{at: time.Since(start), phase: phase}
		if out, _, err := c.micado("autoscale", "web", "--json"); err == nil && json.Unmarshal([]byte(out), &v) == nil {
			p.replicas = v.Replicas
			if len(v.Metrics) > 0 {
				p.cpu, p.missing = v.Metrics[0].Value, v.Metrics[0].Missing
			}
		}
		p.passing = len(passing(t, cl, "web"))
		var ns []manager.MemberView
		if out, _, err := c.micado("nodes", "--json"); err == nil && json.Unmarshal([]byte(out), &ns) == nil {
			for _, n := range ns {
				if n.Kind == wire.KindWorker && n.Status == "alive" {
					p.workers++
				}
			}
		}
		timeline = append(timeline, p)
		return p
	}
	defer func() {
		var b strings.Builder
		for _, p := range timeline {
			b.WriteString(p.String() + "\n")
		}
		t.Logf("timeline:\n%s", b.String())
	}()
	waitFor := func(d time.Duration, what string, cond func(timelinePoint) bool) timelinePoint {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			p := sample()
			if cond(p) {
				return p
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out after %s waiting until %s; last: %s", d, what, p)
			}
			time.Sleep(2 * time.Second)
		}
	}

	waitFor(time.Minute, "web-1 passes", func(p timelinePoint) bool { return p.passing == 1 })
	phase = "load"
	load := startLoad(cl, "web", 4, 100)
	defer load.stop()
	up := waitFor(4*time.Minute, "the replicas reach max 6 and pass, on a new instance", func(p timelinePoint) bool {
		return p.replicas == 6 && p.passing == 6 && p.workers == 2
	})
	t.Logf("at max after %s", up.at.Round(time.Second))
	sent := load.stop()
	phase = "quiet"
	t.Logf("%d burn requests served", sent)
	quiet := time.Since(start)
	down := waitFor(3*time.Minute, "the replicas fall back to min 1", func(p timelinePoint) bool { return p.replicas == 1 && p.passing == 1 })
	if wait := down.at - quiet; wait < 30*time.Second {
		t.Errorf("the replicas fell %s after the load stopped, before the 30s stabilization window", wait.Round(time.Second))
	}
	waitFor(3*time.Minute, "the consolidator terminates the extra instance", func(p timelinePoint) bool { return p.workers == 1 })

	// The timeline in order: rise, then a second worker, then the fall
	// after the window, then one worker again.
	var rose, grew bool
	for _, p := range timeline {
		if p.phase == "load" && p.workers == 2 && rose {
			grew = true
		}
		if p.phase == "load" && p.replicas > 1 {
			rose = true
		}
	}
	if !rose || !grew {
		t.Errorf("the timeline does not show the replicas rising (%v) and then a second worker (%v)", rose, grew)
	}
	// Every decision is an event with its inputs.
	out := c.mustMicado("events", "--json")
	ups, downs := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e manager.Event
		if json.Unmarshal([]byte(line), &e) != nil || e.Kind != manager.EventAutoscale || e.Subject != "web" {
			continue
		}
		if !strings.Contains(e.Message, "cpu ") || !strings.Contains(e.Message, "target 20%") {
			t.Errorf("autoscale event without its inputs: %s", e.Message)
		}
		if from, to, ok := parseArrow(e.Message); ok {
			if to > from {
				ups++
			} else {
				downs++
			}
		}
	}
	if ups == 0 || downs == 0 {
		t.Errorf("autoscale events: %d up, %d down", ups, downs)
	}
	expl := c.mustMicado("explain", "web")
	if !strings.Contains(expl, "scaling policy min 1, max 6") || !strings.Contains(expl, "Last change:") {
		t.Errorf("explain web does not say why it has its replicas:\n%s", expl)
	}
}

// parseArrow reads "A → B replicas" at the start of an event message.
func parseArrow(msg string) (int, int, bool) {
	var a, b int
	if _, err := fmt.Sscanf(msg, "%d → %d replicas", &a, &b); err != nil {
		return 0, 0, false
	}
	return a, b, true
}
