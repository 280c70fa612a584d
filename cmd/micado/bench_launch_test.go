package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
	consul "github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// benchLabel marks the containers BenchmarkLaunchVsDockerRun makes by
// hand, beside the cluster and component labels that teardown uses.
const benchLabel = "io.micado.bench"

// BenchmarkLaunchVsDockerRun compares, on one local cluster, `micado
// launch` of one small web container until it passes in Consul with doing
// the same by hand: Docker ContainerCreate + ContainerStart on the
// cluster network with the port published on a free host port (as a
// worker does), then an agent service registration in Consul with the
// check the manager would register (HTTP, 2 s interval, 2 s timeout), and
// polling Consul every 100 ms until it passes. The two run interleaved,
// in pairs (at least 5), alternating which goes first; each pair's
// containers are removed outside the timings. It reports the medians of
// both (micado-ms, docker-ms) and of the per-pair ratios (ratio). Consul
// runs a new check first after a random stagger of up to its interval
// (0-2 s), in both paths alike, so single ratios scatter widely; the
// per-pair ratio of the deterministic part, command start until
// registered in Consul, is reported as registered-ratio. To show where
// the time goes it also reports medians of milliseconds after the start:
// for micado the manager's placed event (CLI start, API, placement, KV
// write), the worker's "started container" log line (agent start call),
// the manager's running event (agent answer, KV update, Consul
// registration) and the first check result; by hand the container
// started, registered and the first check result; and the time of one
// `micado ps --json` (CLI start and one API call).
// Run: go test -run '^$' -bench LaunchVsDockerRun -benchtime 5x ./cmd/micado
func BenchmarkLaunchVsDockerRun(b *testing.B) {
	b.StopTimer()
	c := newTestCluster(b, "--workers", "1", "--roles", "app", "--worker-memory", "1GiB")
	st := c.state()
	cl := c.consulClient(b)
	ctx := context.Background()
	b.Cleanup(func() {
		// What a failed run may leave: the cluster's teardown removes the
		// containers too (they carry its labels), and Consul with them.
		f := filters.NewArgs(filters.Arg("label", wire.LabelCluster+"="+c.name), filters.Arg("label", benchLabel))
		cs, _ := c.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
		for _, x := range cs {
			_ = cl.Agent().ServiceDeregister(x.Labels[benchLabel])
			_ = c.dc.ContainerRemove(ctx, x.ID, container.RemoveOptions{Force: true})
		}
	})

	pairs := max(b.N, 5)
	var micadoT, dockerT []time.Duration
	var ratios, regRatios []float64
	ph := map[string][]time.Duration{}
	for i := 0; i < pairs; i++ {
		var m, d time.Duration
		var mp, dp map[string]time.Duration
		var mh, dh string
		if i%2 == 0 {
			m, mp, mh = c.launchByMicado(b, cl, "l"+strconv.Itoa(i))
			d, dp, dh = c.launchByHand(b, cl, st, "d"+strconv.Itoa(i))
		} else {
			d, dp, dh = c.launchByHand(b, cl, st, "d"+strconv.Itoa(i))
			m, mp, mh = c.launchByMicado(b, cl, "l"+strconv.Itoa(i))
		}
		micadoT, dockerT = append(micadoT, m), append(dockerT, d)
		ratios = append(ratios, float64(m)/float64(d))
		if mp["running"] > 0 && dp["registered"] > 0 {
			regRatios = append(regRatios, float64(mp["running"])/float64(dp["registered"]))
		}
		for k, v := range mp {
			ph["micado-"+k] = append(ph["micado-"+k], v)
		}
		for k, v := range dp {
			ph["docker-"+k] = append(ph["docker-"+k], v)
		}
		psStart := time.Now()
		c.mustMicado("ps", "--json")
		ph["cli-ps"] = append(ph["cli-ps"], time.Since(psStart))
		b.Logf("pair %d: micado %dms (%s; check %s), by hand %dms (%s; check %s), ratio %.2f", i, m.Milliseconds(), formatTimeline(mp), mh,
			d.Milliseconds(), formatTimeline(dp), dh, float64(m)/float64(d))

		c.mustMicado("stop", "l"+strconv.Itoa(i))
		c.removeByHand(b, cl, "d"+strconv.Itoa(i))
	}
	b.ReportMetric(0, "ns/op") // the timings are the metrics below
	b.ReportMetric(medianMS(micadoT), "micado-ms")
	b.ReportMetric(medianMS(dockerT), "docker-ms")
	b.ReportMetric(medianF(ratios), "ratio")
	if len(regRatios) > 0 {
		// The part without Consul's random first-check delay: command
		// start until registered, micado against by hand.
		b.ReportMetric(medianF(regRatios), "registered-ratio")
	}
	for _, k := range []string{"micado-placed", "micado-worker-started", "micado-running", "micado-first-check", "docker-started", "docker-registered", "docker-first-check", "cli-ps"} {
		if len(ph[k]) > 0 {
			b.ReportMetric(medianMS(ph[k]), k+"-ms")
		}
	}
}

// medianF is the median of xs (sorted in place).
func medianF(xs []float64) float64 {
	sort.Float64s(xs)
	n := len(xs)
	return (xs[(n-1)/2] + xs[n/2]) / 2
}

// launchByMicado runs `micado launch` of one container named name until
// it passes (the CLI waits), confirms that in Consul, and returns the
// command's wall time with the manager's placed and running events as
// times after the command started.
func (c *testCluster) launchByMicado(b *testing.B, cl *consul.Client, name string) (time.Duration, map[string]time.Duration, string) {
	start := time.Now()
	cw := watchCheck(cl, "micado:"+name+"-1", start)
	b.StartTimer()
	_, errOut, err := c.micado("launch", "micado/demo-web", "--role", "app", "--memory", "64MiB", "--port", "8080",
		"--health-path", "/health", "--name", name)
	took := time.Since(start)
	b.StopTimer()
	ph := map[string]time.Duration{}
	hist := cw.stop(ph)
	if err != nil {
		b.Fatalf("micado launch %s: %v\n%s", name, err, errOut)
	}
	es, _, err := cl.Health().Service(name, "", true, nil)
	if err != nil || len(es) != 1 {
		b.Fatalf("after micado launch, Consul has %d passing %s (err %v), want 1", len(es), name, err)
	}
	for _, l := range c.jsonLogs("micado-"+c.name+"-w-1", start) {
		if l.Msg == "started container" && l.Instance == name+"-1" {
			ph["worker-started"] = l.Time.Sub(start)
		}
	}
	out, _, err := c.micado("events", "--json", "-n", "50")
	if err == nil {
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			var e manager.Event
			if json.Unmarshal(sc.Bytes(), &e) != nil || e.Subject != name+"-1" {
				continue
			}
			switch e.Kind {
			case manager.EventPlaced:
				ph["placed"] = e.Time.Sub(start)
			case manager.EventRunning:
				ph["running"] = e.Time.Sub(start)
			}
		}
	}
	return took, ph, hist
}

// launchByHand does what launch does, directly: create and start the
// container on the cluster network with its port published on a free
// host port, register it in Consul with the manager's check, and wait
// until it passes. It returns the wall time and when the container
// started and was registered.
func (c *testCluster) launchByHand(b *testing.B, cl *consul.Client, st *clusterState, name string) (time.Duration, map[string]time.Duration, string) {
	ctx := context.Background()
	port := nat.Port("8080/tcp")
	cfg := &container.Config{
		Image: "micado/demo-web",
		Env: []string{"MICADO_CLUSTER=" + c.name, "MICADO_NODE=bench", "MICADO_SERVICE=" + name,
			"MICADO_INSTANCE=" + name + "-1"},
		// No io.micado.node label: the worker agent would list the
		// container and the manager stop it as a copy nobody asked for.
		Labels:       map[string]string{wire.LabelCluster: c.name, wire.LabelComponent: "app", benchLabel: name + "-1"},
		ExposedPorts: nat.PortSet{port: {}},
		Hostname:     name + "-1",
	}
	host := &container.HostConfig{
		PortBindings:  nat.PortMap{port: {{HostIP: "0.0.0.0", HostPort: ""}}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyOnFailure, MaximumRetryCount: 3},
		Resources:     container.Resources{Memory: 64 << 20, MemorySwap: 64 << 20},
	}
	nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{cmp.Or(st.AppsNetwork, st.Network): {}}}
	ph := map[string]time.Duration{}

	start := time.Now()
	cw := watchCheck(cl, "micado:"+name+"-1", start)
	b.StartTimer()
	created, err := c.dc.ContainerCreate(ctx, cfg, host, nc, nil, "micado-"+c.name+"-bench-"+name)
	if err != nil {
		b.Fatalf("create %s: %v", name, err)
	}
	if err := c.dc.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	ci, err := c.dc.ContainerInspect(ctx, created.ID)
	if err != nil {
		b.Fatalf("inspect %s: %v", name, err)
	}
	hostPort := 0
	for _, pb := range ci.NetworkSettings.Ports[port] {
		if pb.HostIP == "" || pb.HostIP == "0.0.0.0" {
			hostPort, _ = strconv.Atoi(pb.HostPort)
		}
	}
	if hostPort == 0 {
		b.Fatalf("%s: no host port published: %v", name, ci.NetworkSettings.Ports)
	}
	ph["started"] = time.Since(start)
	// The manager's registration (manager/registry.go) without its
	// micado-cluster metadata: with it, the manager would remove this
	// registration as one with no container of its own behind it.
	target := net.JoinHostPort(st.Gateway, strconv.Itoa(hostPort))
	reg := &consul.AgentServiceRegistration{
		ID: name + "-1", Name: name, Address: st.Gateway, Port: hostPort,
		Tags: []string{"role=app", "node=bench"},
		Meta: map[string]string{"micado-bench": c.name},
		Check: &consul.AgentServiceCheck{
			CheckID: "micado:" + name + "-1", Name: "micado http check of " + name + "-1",
			HTTP: "http://" + target + "/health", Interval: "2s", Timeout: "2s",
		},
	}
	if err := cl.Agent().ServiceRegister(reg); err != nil {
		b.Fatalf("register %s: %v", name, err)
	}
	ph["registered"] = time.Since(start)
	var end time.Time
	for {
		es, _, err := cl.Health().Service(name, "", true, nil)
		if err == nil && len(es) == 1 {
			end = time.Now()
			break
		}
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("%s does not pass after 2 minutes (err %v)", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.StopTimer()
	return end.Sub(start), ph, cw.stop(ph)
}

// checkWatch follows one Consul check on the agent every 50 ms while a
// launch runs, and records (after start) when its first result came and
// every change of its status: Consul runs the first check after a random
// stagger of up to the check interval.
type checkWatch struct {
	done    chan struct{}
	stopped chan struct{}
	first   time.Duration // 0: no result seen
	changes []string
}

func watchCheck(cl *consul.Client, checkID string, start time.Time) *checkWatch {
	w := &checkWatch{done: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(w.stopped)
		last := ""
		for {
			select {
			case <-w.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			cs, err := cl.Agent().ChecksWithFilter(fmt.Sprintf("CheckID == %q", checkID))
			if err != nil {
				continue
			}
			ch := cs[checkID]
			if ch == nil {
				continue
			}
			if ch.Output != "" && w.first == 0 {
				w.first = time.Since(start)
			}
			if now := ch.Status + ": " + ch.Output; now != last {
				last = now
				change := fmt.Sprintf("%s +%dms", ch.Status, time.Since(start).Milliseconds())
				if out, _, _ := strings.Cut(ch.Output, "\n"); out != "" && ch.Status != consul.HealthPassing {
					change += fmt.Sprintf(" (%.60s)", out)
				}
				w.changes = append(w.changes, change)
			}
		}
	}()
	return w
}

// stop ends the watch, adds the first result's time to ph and returns
// the check's history.
func (w *checkWatch) stop(ph map[string]time.Duration) string {
	close(w.done)
	<-w.stopped
	if w.first > 0 {
		ph["first-check"] = w.first
	}
	return strings.Join(w.changes, ", ")
}

// removeByHand removes what launchByHand made.
func (c *testCluster) removeByHand(b *testing.B, cl *consul.Client, name string) {
	if err := cl.Agent().ServiceDeregister(name + "-1"); err != nil {
		b.Fatalf("deregister %s: %v", name, err)
	}
	if err := c.dc.ContainerRemove(context.Background(), "micado-"+c.name+"-bench-"+name, container.RemoveOptions{Force: true}); err != nil {
		b.Fatalf("remove %s: %v", name, err)
	}
}
