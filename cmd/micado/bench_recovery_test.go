package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// BenchmarkWorkerLossRecovery measures how long a service takes to come
// back after the worker holding its replicas dies with its containers:
// from `docker kill` of the worker container (and of the application
// containers it started, siblings on the host engine) until every replica
// passes its Consul check on the other workers, polled every 100 ms.
// Each iteration runs on a fresh cluster (three 1GiB app workers, binpack
// so that all replicas sit on one worker), set up and torn down outside
// the timer. Beside recovery-ms it reports, as medians of milliseconds
// after the kill, where the time went: the first memberlist suspicion of
// the worker (any member), the first member marking it failed, the
// manager declaring it lost, the manager's first failed call to the dead
// worker's agent (list-failed), the first requeue, and the last replica
// started and registered.
// Run: go test -run '^$' -bench WorkerLossRecovery -benchtime 3x ./cmd/micado
func BenchmarkWorkerLossRecovery(b *testing.B) {
	const replicas = 3
	const service = "rec"
	phases := map[string][]time.Duration{}
	var recovery []time.Duration
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		c := newTestCluster(b, "--workers", "3", "--roles", "app", "--worker-memory", "1GiB", "--strategy", "binpack")
		c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", service, "--replicas", strconv.Itoa(replicas),
			"--memory", "64MiB", "--port", "8080", "--health-path", "/health")
		ctx := context.Background()

		// The victim: the worker that holds most replicas.
		byNode := map[string]int{}
		for _, a := range c.appContainers(service) {
			byNode[a.Labels[wire.LabelNode]]++
		}
		victim := ""
		for n, k := range byNode {
			if k > byNode[victim] || (k == byNode[victim] && n < victim) {
				victim = n
			}
		}
		var victimID string
		var others []string
		for _, w := range c.workerContainers() {
			if w.Labels[wire.LabelNode] == victim {
				victimID = w.ID
			} else {
				others = append(others, w.ID)
			}
		}
		if victimID == "" {
			b.Fatalf("no worker container for %s", victim)
		}
		onVictim := c.nodeAppContainers(victim)
		cl := c.consulClient(b)

		b.StartTimer()
		kill := time.Now()
		if err := c.dc.ContainerKill(ctx, victimID, "KILL"); err != nil {
			b.Fatalf("kill worker %s: %v", victim, err)
		}
		for _, a := range onVictim {
			if err := c.dc.ContainerKill(ctx, a.ID, "KILL"); err != nil {
				b.Fatalf("kill %s: %v", a.Names, err)
			}
		}
		var done time.Time
		last := ""
		for deadline := kill.Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			es, _, err := cl.Health().Service(service, "", true, nil)
			if err != nil {
				last = err.Error()
				continue
			}
			n := 0
			for _, e := range es {
				if e.Service.Meta[manager.MetaNode] != victim {
					n++
				}
			}
			if n == replicas {
				done = time.Now()
				break
			}
			last = fmt.Sprintf("%d of %d passing elsewhere", n, replicas)
		}
		b.StopTimer()
		if done.IsZero() {
			b.Fatalf("%s did not recover within 3 minutes after %s died: %s", service, victim, last)
		}
		recovery = append(recovery, done.Sub(kill))

		// Where the time went, from the manager's events and the members'
		// logs (all containers share the host clock).
		tl, listErr := c.recoveryTimeline(victim, service, kill, others)
		tl["recovery"] = done.Sub(kill)
		for k, d := range tl {
			phases[k] = append(phases[k], d)
		}
		b.Logf("iteration %d: %s (held %d of %d replicas) killed; %s", i, victim, byNode[victim], replicas, formatTimeline(tl))
		if listErr != "" {
			b.Logf("  the manager's call to the dead worker failed with: %s", listErr)
		}
		// The killed worker must stay dead: a restart would measure a rejoin.
		if ci, err := c.dc.ContainerInspect(ctx, victimID); err == nil && ci.State != nil && ci.State.Running {
			b.Logf("warning: worker %s was restarted by Docker (restart count %d)", victim, ci.RestartCount)
		}

		c.micado("down")
		tctx, cancel := context.WithTimeout(ctx, time.Minute)
		if _, err := teardown(tctx, c.dc, c.name); err != nil {
			b.Logf("teardown %s: %v", c.name, err)
		}
		cancel()
	}
	b.ReportMetric(medianMS(recovery), "recovery-ms")
	for _, k := range []string{"suspect", "failed", "dead", "list-failed", "requeue", "started"} {
		if len(phases[k]) > 0 {
			b.ReportMetric(medianMS(phases[k]), k+"-ms")
		}
	}
}

// nodeAppContainers lists the application containers one worker started.
func (c *testCluster) nodeAppContainers(node string) []container.Summary {
	c.t.Helper()
	f := filters.NewArgs(filters.Arg("label", wire.LabelCluster+"="+c.name),
		filters.Arg("label", wire.LabelComponent+"=app"), filters.Arg("label", wire.LabelNode+"="+node))
	cs, err := c.dc.ContainerList(context.Background(), container.ListOptions{All: true, Filters: f})
	if err != nil {
		c.t.Fatal(err)
	}
	return cs
}

// recoveryTimeline returns, as durations after kill: suspect (first
// memberlist suspicion of victim in the manager's or a surviving worker's
// log), failed (first "Marking victim as failed"), dead (the manager's
// worker-lost event), list-failed (the manager's first failed call to
// the dead worker's agent, if any), requeue (first requeued replica of service) and
// started (last replica of service running and registered again).
// It also returns the error of that failed call.
func (c *testCluster) recoveryTimeline(victim, service string, kill time.Time, otherWorkers []string) (map[string]time.Duration, string) {
	out := map[string]time.Duration{}
	listErr := ""
	first := func(k string, t time.Time) {
		if t.Before(kill) {
			return
		}
		if d, ok := out[k]; !ok || t.Sub(kill) < d {
			out[k] = t.Sub(kill)
		}
	}
	lastOf := func(k string, t time.Time) {
		if t.Before(kill) {
			return
		}
		if d, ok := out[k]; !ok || t.Sub(kill) > d {
			out[k] = t.Sub(kill)
		}
	}
	for _, id := range append([]string{"micado-" + c.name + "-manager"}, otherWorkers...) {
		for _, l := range c.jsonLogs(id, kill) {
			switch {
			case strings.Contains(l.Msg, "Suspect "+victim+" has failed"):
				first("suspect", l.Time)
			case strings.Contains(l.Msg, "Marking "+victim+" as failed"):
				first("failed", l.Time)
			case l.Msg == "cannot list a worker's containers" && l.Worker == victim:
				// A reconciliation that asked the dead worker before it
				// was declared dead, and waited for the answer.
				if _, seen := out["list-failed"]; !seen {
					listErr = l.Err
				}
				first("list-failed", l.Time)
			}
		}
	}
	out2, _, err := c.micado("events", "--json", "-n", "200")
	if err != nil {
		return out, listErr
	}
	sc := bufio.NewScanner(strings.NewReader(out2))
	for sc.Scan() {
		var e manager.Event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		mine := strings.HasPrefix(e.Subject, service+"-")
		switch {
		case e.Kind == manager.EventWorkerLost && e.Subject == victim:
			first("dead", e.Time)
		case e.Kind == manager.EventRequeued && mine:
			first("requeue", e.Time)
		case e.Kind == manager.EventRunning && mine:
			lastOf("started", e.Time)
		}
	}
	return out, listErr
}

// logLine is one structured log record of a micado daemon.
type logLine struct {
	Time     time.Time `json:"time"`
	Msg      string    `json:"msg"`
	Worker   string    `json:"worker"`
	Err      string    `json:"err"`
	Instance string    `json:"instance"`
}

// jsonLogs reads a daemon container's JSON log records since t.
func (c *testCluster) jsonLogs(id string, since time.Time) []logLine {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc, err := c.dc.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true,
		Since: strconv.FormatInt(since.Add(-time.Second).Unix(), 10)})
	if err != nil {
		return nil
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, rc); err != nil {
		return nil
	}
	var out []logLine
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && !l.Time.IsZero() {
			out = append(out, l)
		}
	}
	return out
}

func formatTimeline(tl map[string]time.Duration) string {
	keys := make([]string, 0, len(tl))
	for k := range tl {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return tl[keys[i]] < tl[keys[j]] })
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s +%dms", k, tl[k].Milliseconds()))
	}
	return strings.Join(parts, ", ")
}

// medianMS is the median of ds in milliseconds (ds is sorted in place).
func medianMS(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	n := len(ds)
	if n%2 == 1 {
		return float64(ds[n/2].Milliseconds())
	}
	return float64((ds[n/2-1] + ds[n/2]).Milliseconds()) / 2
}
