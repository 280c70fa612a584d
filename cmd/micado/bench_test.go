package main

import (
	"encoding/json"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/micado-scale/micado/manager"
)

// BenchmarkHeldLaunchDocker measures, with the docker provider on the real
// engine, the time from `micado launch` of a container no worker can hold
// until it passes in Consul, beside the provider's own instance start time
// (create call answered) and the time until the new worker joined.
// Run: go test -run '^$' -bench HeldLaunch -benchtime 5x ./cmd/micado
func BenchmarkHeldLaunchDocker(b *testing.B) {
	c := newBenchCluster(b)
	var total, create, join []time.Duration
	for i := 0; i < b.N; i++ {
		name := "held" + strconv.Itoa(i)
		start := time.Now()
		if _, errOut, err := c.micado("launch", "micado/demo-web", "--role", "proxy", "--name", name, "--memory", "300MiB", "--port", "8080"); err != nil {
			b.Fatalf("launch: %v %s", err, errOut)
		}
		total = append(total, time.Since(start))
		pairs, _, err := c.consulClient(b).KV().List("micado/"+c.name+"/instances/", nil)
		if err != nil {
			b.Fatal(err)
		}
		var newest manager.InstanceRecord
		for _, p := range pairs {
			var in manager.InstanceRecord
			if json.Unmarshal(p.Value, &in) == nil && in.RequestedAt.After(newest.RequestedAt) && !in.CreatedAt.IsZero() {
				newest = in
			}
		}
		create = append(create, newest.CreatedAt.Sub(newest.RequestedAt))
		join = append(join, newest.JoinedAt.Sub(newest.RequestedAt))
	}
	med := func(d []time.Duration) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[len(d)/2].Milliseconds())
	}
	b.ReportMetric(med(total), "launch-to-passing-ms")
	b.ReportMetric(med(create), "provider-create-ms")
	b.ReportMetric(med(join), "request-to-join-ms")
}
