package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/micado-scale/micado/internal/wire"
)

// TestCPUPercent: Δ CPU time / Δ wall-clock time × 100, in % of one core.
func TestCPUPercent(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		prev, cur cpuSample
		want      float64
		ok        bool
	}{
		{"half a core", cpuSample{1e9, t0}, cpuSample{1e9 + 1e9, t0.Add(2 * time.Second)}, 50, true},
		{"one core", cpuSample{5e9, t0}, cpuSample{5e9 + 2e9, t0.Add(2 * time.Second)}, 100, true},
		{"two cores", cpuSample{0, t0}, cpuSample{4e9, t0.Add(2 * time.Second)}, 200, true},
		{"idle", cpuSample{7e9, t0}, cpuSample{7e9, t0.Add(time.Second)}, 0, true},
		{"uneven interval", cpuSample{0, t0}, cpuSample{150e6, t0.Add(1500 * time.Millisecond)}, 10, true},
		{"no previous sample", cpuSample{}, cpuSample{3e9, t0}, 0, false},
		{"same instant", cpuSample{1e9, t0}, cpuSample{2e9, t0}, 0, false},
		{"clock went back", cpuSample{1e9, t0}, cpuSample{2e9, t0.Add(-time.Second)}, 0, false},
		{"counter went back (restart)", cpuSample{9e9, t0}, cpuSample{1e6, t0.Add(2 * time.Second)}, 0, false},
	} {
		got, ok := cpuPercent(tc.prev, tc.cur)
		if ok != tc.ok || math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: cpuPercent = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestCPURatio(t *testing.T) {
	for _, tc := range []struct{ pct, cpus, want float64 }{
		{50, 2, 0.25}, {100, 1, 1}, {150, 4, 0.375}, {300, 2, 1}, {0, 2, 0}, {40, 0, 0}, {100, 3, 0.333},
	} {
		if got := cpuRatio(tc.pct, tc.cpus); got != tc.want {
			t.Errorf("cpuRatio(%v, %v) = %v, want %v", tc.pct, tc.cpus, got, tc.want)
		}
	}
}

// fakeDocker stands in for the engine: containers and their CPU counters.
type fakeDocker struct {
	mu       sync.Mutex
	cs       []wire.ContainerInfo
	total    map[string]uint64
	now      time.Time
	fail     map[string]bool
	inFlight atomic.Int32
	maxSeen  atomic.Int32
	delay    time.Duration
}

func (f *fakeDocker) list(context.Context) ([]wire.ContainerInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]wire.ContainerInfo(nil), f.cs...), nil
}

func (f *fakeDocker) sample(_ context.Context, id string) (containerSample, error) {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxSeen.Load()
		if n <= m || f.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(f.delay)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail[id] {
		return containerSample{}, errors.New("engine busy")
	}
	return containerSample{cpu: cpuSample{f.total[id], f.now}, memory: 10 << 20, limit: 64 << 20}, nil
}

// advance moves the fake clock by d, each container using pct % of a core.
func (f *fakeDocker) advance(d time.Duration, pct map[string]float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	for id, p := range pct {
		f.total[id] += uint64(p / 100 * float64(d.Nanoseconds()))
	}
}

func TestStatsCollectorRounds(t *testing.T) {
	f := &fakeDocker{
		cs: []wire.ContainerInfo{
			{ID: "id-busy", Instance: "web-1", Service: "web", App: "shop", Generation: 2, State: "running", Memory: 64 << 20},
			{ID: "id-idle", Instance: "web-2", Service: "web", State: "running", Memory: 64 << 20},
			{ID: "id-gone", Instance: "db-1", Service: "db", State: "exited", Memory: 64 << 20},
		},
		total: map[string]uint64{"id-busy": 123e9, "id-idle": 4e9},
		now:   time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		fail:  map[string]bool{},
	}
	s := &statsCollector{list: f.list, sample: f.sample}
	if err := s.collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	cs, _ := s.snapshot()
	if len(cs) != 2 || cs[0].Instance != "web-1" || cs[0].HasCPU || cs[1].HasCPU || cs[0].Memory != 10<<20 || cs[0].Limit != 64<<20 {
		t.Fatalf("first round = %+v, want web-1 and web-2 with memory and no CPU yet", cs)
	}

	f.advance(2*time.Second, map[string]float64{"id-busy": 150, "id-idle": 1})
	if err := s.collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	cs, _ = s.snapshot()
	want := wire.ContainerStats{Instance: "web-1", Service: "web", App: "shop", Generation: 2, CPU: 150, Memory: 10 << 20, Limit: 64 << 20, At: f.now, HasCPU: true}
	if cs[0] != want || !cs[1].HasCPU || cs[1].CPU != 1 {
		t.Fatalf("second round = %+v, want %+v and web-2 at 1%%", cs, want)
	}

	// A failed sample keeps the last figures and counter; the next good
	// one measures over both intervals.
	f.fail["id-busy"] = true
	f.advance(2*time.Second, map[string]float64{"id-busy": 50})
	if err := s.collect(context.Background()); err == nil || !strings.Contains(err.Error(), "engine busy") {
		t.Fatalf("round with a failed sample: %v", err)
	}
	if cs, _ = s.snapshot(); cs[0] != want {
		t.Fatalf("after a failed sample web-1 = %+v, want the last figures %+v", cs[0], want)
	}
	f.fail["id-busy"] = false
	f.advance(2*time.Second, map[string]float64{"id-busy": 100})
	_ = s.collect(context.Background())
	if cs, _ = s.snapshot(); cs[0].CPU != 75 {
		t.Fatalf("after the failure web-1 CPU = %v, want 75 (50 then 100 over 4 s)", cs[0].CPU)
	}

	// A container that is gone is forgotten, CPU counter included.
	f.cs = f.cs[1:]
	_ = s.collect(context.Background())
	if cs, _ = s.snapshot(); len(cs) != 1 || cs[0].Instance != "web-2" || len(s.prev) != 1 {
		t.Fatalf("after web-1 left: %+v (%d counters kept)", cs, len(s.prev))
	}
}

// TestStatsCollectorSamplesConcurrently: 30 containers taking 100 ms each
// to sample fit in far less than 30 × 100 ms, never more than
// statsParallel at once.
func TestStatsCollectorSamplesConcurrently(t *testing.T) {
	f := &fakeDocker{total: map[string]uint64{}, now: time.Now(), fail: map[string]bool{}, delay: 100 * time.Millisecond}
	for i := range 30 {
		f.cs = append(f.cs, wire.ContainerInfo{ID: fmt.Sprint("id-", i), Instance: fmt.Sprint("web-", i), Service: "web", State: "running"})
	}
	s := &statsCollector{list: f.list, sample: f.sample}
	start := time.Now()
	if err := s.collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if cs, _ := s.snapshot(); len(cs) != 30 {
		t.Fatalf("%d containers sampled, want 30", len(cs))
	}
	if m := f.maxSeen.Load(); m > statsParallel || m < 2 {
		t.Fatalf("%d samples in flight at once, want 2..%d", m, statsParallel)
	}
	if took > 2*time.Second {
		t.Fatalf("30 samples took %s", took)
	}
	t.Logf("30 samples of 100 ms took %s, at most %d at once", took, f.maxSeen.Load())
}

// TestStatsEndpoint: GET /v1/stats needs the agent token and sums up the
// last round against the cores the worker offers.
func TestStatsEndpoint(t *testing.T) {
	key := randomKey(t)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := &Agent{cfg: Config{Cluster: "c1", Name: "w-3", Memory: 1 << 30, CPUs: 2, ClusterKey: key},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), token: wire.AgentToken(key),
		stats: &statsCollector{at: at, last: map[string]wire.ContainerStats{
			"b": {Instance: "web-2", Service: "web", CPU: 30, HasCPU: true, Memory: 20 << 20, Limit: 64 << 20, At: at},
			"a": {Instance: "web-1", Service: "web", CPU: 120, HasCPU: true, Memory: 30 << 20, Limit: 64 << 20, At: at},
			"c": {Instance: "web-3", Service: "web", Memory: 5 << 20, Limit: 64 << 20, At: at},
		}}}
	srv := httptest.NewServer(a.routes())
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	resp, err := http.Get(srv.URL + "/v1/stats")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /v1/stats without the token: %d, want 401", resp.StatusCode)
	}
	if _, err := wire.NewClient(randomKey(t)).Stats(context.Background(), addr); err == nil {
		t.Fatal("GET /v1/stats with another cluster's token succeeded")
	}
	st, err := wire.NewClient(key).Stats(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "w-3" || st.CPUs != 2 || st.CPU != 0.75 || st.Memory != 55<<20 || st.Capacity != 1<<30 || !st.At.Equal(at) ||
		len(st.Containers) != 3 || st.Containers[0].Instance != "web-1" || st.Containers[2].HasCPU {
		b, _ := json.Marshal(st)
		t.Fatalf("stats = %s", b)
	}
}

// TestAgentMeasuresContainerCPU runs a real agent against the real Docker
// engine with two demo-web containers, one kept busy through its /burn
// endpoint and one idle: GET /v1/stats soon shows the busy one above half
// a core and the idle one near zero, the gossiped load carries the busy
// one's use as a fraction of the worker's one offered core, and /metrics
// carries the per-container series.
func TestAgentMeasuresContainerCPU(t *testing.T) {
	_, ctx, cluster := dockerForTest(t, "wt")
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	key := randomKey(t)
	addr := "127.0.0.1:" + strconv.Itoa(freeTCPPort(t))
	gossipPort := freeTCPPort(t)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Cluster: cluster, Name: "w-stats", Memory: 512 << 20, CPUs: 1,
			BindAddr: "127.0.0.1", BindPort: gossipPort, AdvertiseAddr: "127.0.0.1",
			APIAddr: addr, PublishAddr: "127.0.0.1", ClusterKey: key,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
	}()
	c := wire.NewClient(key)
	waitFor(t, 20*time.Second, "the agent API answers", func() bool {
		_, err := c.Stats(ctx, addr)
		return err == nil
	})

	hostPort := map[string]int{}
	for _, inst := range []string{"burn-1", "idle-1"} {
		svc, _, _ := strings.Cut(inst, "-")
		info, err := c.Start(ctx, addr, wire.StartRequest{Instance: inst, Service: svc, Image: "micado/demo-web",
			Memory: 64 << 20, Ports: []wire.Port{{Container: 8080}}})
		if err != nil {
			t.Fatal(err)
		}
		hostPort[inst] = info.Ports[0].Host
		url := fmt.Sprintf("http://127.0.0.1:%d/health", hostPort[inst])
		waitFor(t, 10*time.Second, inst+" answers on its host port", func() bool {
			resp, err := http.Get(url)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}

	// Keep burn-1 busy: one request after the other, each burning a
	// second of one core, until the test ends.
	burnURL := fmt.Sprintf("http://127.0.0.1:%d/burn?ms=", hostPort["burn-1"])
	resp, err := http.Get(burnURL + "1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /burn of micado/demo-web: %s; the image predates /burn: run `make images`", resp.Status)
	}
	burnCtx, stopBurn := context.WithCancel(ctx)
	defer stopBurn()
	go func() {
		for burnCtx.Err() == nil {
			req, _ := http.NewRequestWithContext(burnCtx, http.MethodGet, burnURL+"1000", nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}()

	// A busy loop gets at least a fifth of a core even while the other
	// test packages load this 2-core machine (under `go test ./...` it
	// was seen at 28%); an idle server gets almost nothing.
	const busyPct, idlePct = 20, 5
	var last wire.Stats
	find := func(inst string) (wire.ContainerStats, bool) {
		for _, cs := range last.Containers {
			if cs.Instance == inst {
				return cs, true
			}
		}
		return wire.ContainerStats{}, false
	}
	start := time.Now()
	for {
		if last, err = c.Stats(ctx, addr); err != nil {
			t.Fatal(err)
		}
		busy, ok1 := find("burn-1")
		idle, ok2 := find("idle-1")
		if ok1 && ok2 && busy.HasCPU && busy.CPU > busyPct && idle.HasCPU && idle.CPU < idlePct {
			t.Logf("after %s: burn-1 at %.1f%%, idle-1 at %.1f%% of a core; worker at %.3f of its core",
				time.Since(start).Round(time.Millisecond), busy.CPU, idle.CPU, last.CPU)
			if busy.Service != "burn" || busy.Limit != 64<<20 || busy.Memory <= 0 || busy.Memory > busy.Limit || busy.At.IsZero() {
				t.Errorf("burn-1 = %+v", busy)
			}
			// The worker's use is its containers' together, per offered core.
			if sum := (busy.CPU + idle.CPU) / 100; math.Abs(last.CPU-sum) > 0.05 {
				t.Errorf("the worker's CPU %.3f is not its containers' %.3f", last.CPU, sum)
			}
			break
		}
		if time.Since(start) > time.Minute {
			b, _ := json.MarshalIndent(last, "", "  ")
			t.Fatalf("within a minute GET /v1/stats did not show burn-1 above %d%% and idle-1 below %d%% of a core:\n%s", busyPct, idlePct, b)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if last.Node != "w-stats" || last.CPUs != 1 || last.Capacity != 512<<20 || last.CPU <= busyPct/100.0 || last.Memory <= 0 {
		t.Errorf("stats = %+v", last)
	}

	// The gossiped load carries the measured use, as a fraction of the
	// one core the worker offers.
	waitFor(t, 30*time.Second, "the load report carries the CPU use", func() bool {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/load", nil)
		req.Header.Set("Authorization", "Bearer "+wire.AgentToken(key))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var l wire.Load
		return json.NewDecoder(resp.Body).Decode(&l) == nil && l.CPU > busyPct/100.0 && l.CPU <= 1 && l.Used > 0
	})

	resp, err = http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var burnPct float64
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, `micado_worker_container_cpu_percent{instance="burn-1",service="burn"} `); ok {
			burnPct, _ = strconv.ParseFloat(v, 64)
		}
	}
	if burnPct <= busyPct {
		t.Errorf("/metrics: burn-1's micado_worker_container_cpu_percent is %v, want above %d", burnPct, busyPct)
	}
	for _, want := range []string{
		`micado_worker_container_cpu_percent{instance="idle-1",service="idle"} `,
		`micado_worker_container_memory_bytes{instance="burn-1",service="burn"} `,
		`micado_worker_container_memory_bytes{instance="idle-1",service="idle"} `,
		"micado_worker_cpu_ratio ",
	} {
		if !strings.Contains(string(body), "\n"+want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}

	stopBurn()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v", err)
	}
}
