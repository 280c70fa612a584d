package main

import (
	"encoding/json"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/micado-scale/micado/manager"
)

// BenchmarkAutoscaleReaction measures how fast micado answers a load step:
// from the moment a load generator starts burning CPU in the one replica
// of a service (cpu target 50%, min 1, max 4) until a second replica
// passes its check in Consul. Between iterations the load stops and the
// service returns to one replica (stabilization 10 s) and stays there 15 s
// longer than the metric window. The path measured:
// the worker's 2 s stats sample, the manager's 5 s autoscale loop with its
// 10 s metric window, placement, the container's start and its first
// passing check. Reports the median (reaction-ms) and the slowest
// (reaction-max-ms) of the iterations.
// Run: go test -run '^$' -bench AutoscaleReaction -benchtime 5x ./cmd/micado
func BenchmarkAutoscaleReaction(b *testing.B) {
	c := newTestCluster(b, "--workers", "2", "--roles", "app", "--worker-memory", "1GiB", "--provider", "none")
	cl := c.consulClient(b)
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "web", "--memory", "64MiB", "--port", "8080",
		"--health-path", "/health", "--min", "1", "--max", "4", "--cpu", "50%", "--stabilization", "10s")
	passingN := func() int {
		es, _, err := cl.Health().Service("web", "", true, nil)
		if err != nil {
			return -1
		}
		return len(es)
	}
	policy := func() manager.PolicyView {
		var v manager.PolicyView
		if out, _, err := c.micado("autoscale", "web", "--json"); err == nil {
			_ = json.Unmarshal([]byte(out), &v)
		}
		return v
	}
	waitUntil := func(d time.Duration, what string, cond func() bool) {
		deadline := time.Now().Add(d)
		for !cond() {
			if time.Now().After(deadline) {
				b.Fatalf("timed out after %s waiting until %s", d, what)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	var took []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// Quiet: one replica, its CPU measured low.
		waitUntil(3*time.Minute, "web is back to one quiet replica", func() bool {
			v := policy()
			return v.Replicas == 1 && passingN() == 1 && len(v.Metrics) == 1 && !v.Metrics[0].Missing && v.Metrics[0].Value < 25
		})
		// A steady state: the scale-down settled for longer than the
		// metric window, as before a real load step.
		time.Sleep(15 * time.Second)
		b.StartTimer()
		start := time.Now()
		load := startLoad(cl, "web", 2, 200)
		waitUntil(2*time.Minute, "a second replica passes", func() bool { return passingN() >= 2 })
		took = append(took, time.Since(start))
		b.StopTimer()
		load.stop()
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "reaction-ms")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "reaction-max-ms")
	b.Logf("load step → second replica passing: %v", took)
}

// BenchmarkAutoscaleSteady counts the scale changes micado makes under a
// steady load with noise: one client burns CPU in the replicas of a
// service (cpu target 40%, min 1, max 8, the default 5 min
// stabilization) with requests of 80 to 120 ms each (±20% around 100 ms)
// and random pauses, about 0.8 of a core in all. After 2 minutes to settle,
// it counts the service's scale changes (autoscale events that changed the
// replicas) over 10 minutes: changes-10m, goal 0.
// Run: go test -run '^$' -bench AutoscaleSteady -benchtime 1x -timeout 30m ./cmd/micado
func BenchmarkAutoscaleSteady(b *testing.B) {
	c := newTestCluster(b, "--workers", "2", "--roles", "app", "--worker-memory", "1GiB", "--provider", "none")
	cl := c.consulClient(b)
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "web", "--memory", "64MiB", "--port", "8080",
		"--health-path", "/health", "--min", "1", "--max", "8", "--cpu", "40%")
	changes := func() (n int, last string) {
		out, _, err := c.micado("events", "--json")
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var e manager.Event
			if json.Unmarshal([]byte(line), &e) != nil || e.Kind != manager.EventAutoscale || e.Subject != "web" {
				continue
			}
			if _, _, ok := parseArrow(e.Message); ok {
				n++
				last = e.Message
			}
		}
		return n, last
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		load := startNoisyLoad(cl, "web", 100, 0.2)
		time.Sleep(2 * time.Minute)
		before, _ := changes()
		v := manager.PolicyView{}
		if out, _, err := c.micado("autoscale", "web", "--json"); err == nil {
			_ = json.Unmarshal([]byte(out), &v)
		}
		time.Sleep(10 * time.Minute)
		after, last := changes()
		load.stop()
		b.ReportMetric(float64(after-before), "changes-10m")
		b.ReportMetric(float64(v.Replicas), "replicas")
		if len(v.Metrics) > 0 {
			b.ReportMetric(v.Metrics[0].Value, "cpu-pct")
		}
		b.Logf("settled at %d replicas (cpu %.1f%% per replica); %d changes in 10 min; last: %s", v.Replicas, v.Metrics[0].Value, after-before, last)
	}
}
