package daemon

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/memberlist"
	"github.com/micado-scale/micado/internal/simagents"
	"github.com/micado-scale/micado/internal/testconsul"
	"github.com/micado-scale/micado/internal/wire"
	. "github.com/micado-scale/micado/manager"
)

// The benchmarks of the manager at scale run a real manager process
// (daemon.StartWith: real Consul dev agent as journal and lock, real
// memberlist, the real HTTP API and agent client) in this process, and
// simulated workers (internal/simagents: one listener, an address of its
// own for each worker on 127.1.x.y, answering at once). Workers enter the
// manager's membership table through its memberlist event delegate, as
// gossip would deliver them.

var benchRoles = []string{"proxy", "app", "db"}

// benchSeed is worker w's share of nContainers running containers:
// container i runs on worker i mod nWorkers. The manager's records and
// the simulated workers are built from it alike.
func benchSeed(nWorkers, nContainers, w int) []wire.ContainerInfo {
	var out []wire.ContainerInfo
	for i := w; i < nContainers; i += nWorkers {
		c := benchRecord(nWorkers, i)
		out = append(out, wire.ContainerInfo{ID: c.ContainerID, Instance: c.Name, Service: c.Service, Image: c.Image,
			Node: c.Node, Memory: c.Memory, State: "running", Address: c.Address, Ports: c.Bindings, Generation: c.Generation})
	}
	return out
}

// benchRecord is container i's desired-state record: realistic sizes
// (image references, environment, two ports, a placement reason). Each
// role has 20 services of 32 to 512MiB per replica, each in 7 versions
// of its image (a rolling update's worth).
func benchRecord(nWorkers, i int) *Container {
	j := i % nWorkers
	role := benchRoles[j%len(benchRoles)]
	sn := (i/nWorkers)%20 + 1
	svc := fmt.Sprintf("%s-svc%d", role, sn)
	created := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	return &Container{
		Name: fmt.Sprintf("%s-%d", svc, i+1),
		Spec: &Spec{Service: svc, Image: "registry.example.com/shop/" + svc + ":1.4." + strconv.Itoa(i%7),
			Tags: []string{"role=" + role}, Memory: int64(32+(sn*7919+(j%3)*101)%481) << 20,
			Ports: []wire.Port{{Container: 8080, Protocol: "tcp"}, {Container: 9090, Protocol: "tcp"}},
			Env:   map[string]string{"APP_ENV": "production", "LOG_LEVEL": "info", "DB_URL": "postgres://db.service.consul:5432/shop"},
			Check: Check{Type: "tcp"}},
		State: StateRunning, Node: simagents.WorkerName(j), ContainerID: fmt.Sprintf("%064x", uint64(i)*0x9e3779b97f4a7c15),
		Placement: fmt.Sprintf("placed %s-%d on %s: role=%s, 9.5GiB free", svc, i+1, simagents.WorkerName(j), role),
		Address:   simagents.IP(j).String(), Bindings: []wire.Binding{{Container: 8080, Protocol: "tcp", Host: 30000 + i%20000}, {Container: 9090, Protocol: "tcp", Host: 50000 + i%10000}},
		Generation: i % 3, CreatedAt: created, UpdatedAt: created,
	}
}

func benchTags(i int) []string { return []string{"role=" + benchRoles[i%len(benchRoles)]} }

// TestMain also runs the simulated workers as a process of their own
// (MICADO_SIMAGENTS=workers,containers), so that a benchmark measures the
// manager's memory alone.
func TestMain(m *testing.M) {
	if spec := os.Getenv("MICADO_SIMAGENTS"); spec != "" {
		var nw, nc int
		fmt.Sscanf(spec, "%d,%d", &nw, &nc)
		s, err := simagents.New(nw, benchTags, 16<<30, func(i int) []wire.ContainerInfo { return benchSeed(nw, nc, i) })
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(s.Port())
		_, _ = io.Copy(io.Discard, os.Stdin) // until the parent goes
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startSimProcess runs the simulated workers in a child process and
// returns their port.
func startSimProcess(b *testing.B, nWorkers, nContainers int) int {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("MICADO_SIMAGENTS=%d,%d", nWorkers, nContainers))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("simulated workers: %v", err)
	}
	port, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		b.Fatalf("simulated workers said %q", line)
	}
	return port
}

// benchManager starts a manager against Consul at consulAddr.
func benchManager(b *testing.B, consulAddr string, opts Options, tweak func(*Config)) (*Process, string) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	var logw io.Writer = io.Discard
	if f := os.Getenv("MICADO_BENCH_LOG"); f != "" {
		out, err := os.Create(f)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { out.Close() })
		logw = out
	}
	cfg := Config{Cluster: "bench", NodeName: "m1", ClusterKey: key, ConsulAddr: consulAddr,
		BindAddr: "127.0.0.1", AdvertiseAddr: "127.0.0.1", BindPort: freePort(b),
		APIAddr: "127.0.0.1:" + strconv.Itoa(freePort(b)), ConsolidateSchedule: "off",
		Logger: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: benchLogLevel()}))}
	if tweak != nil {
		tweak(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p, err := StartWith(ctx, cfg, opts)
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); _ = p.Wait() })
	base := "http://" + p.API
	deadline := time.Now().Add(5 * time.Minute)
	for !p.Manager.IsLeader() {
		if time.Now().After(deadline) {
			b.Fatal("the manager did not lead within 5 minutes")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p, base
}

func benchLogLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("MICADO_BENCH_LOG_LEVEL"))); err != nil {
		return slog.LevelWarn
	}
	return l
}

// join puts simulated workers into the manager's membership table as
// gossip would.
func join(b *testing.B, p *Process, n int, load func(i int) wire.Load) {
	ev := p.Manager.GossipEvents()
	for i := range n {
		meta, err := load(i).Encode()
		if err != nil {
			b.Fatal(err)
		}
		ev.NotifyJoin(&memberlist.Node{Name: simagents.WorkerName(i), Addr: simagents.IP(i), Port: 7946, Meta: meta, State: memberlist.StateAlive})
	}
}

// metric reads one value of the manager's /metrics ("" labels: the only
// series).
func metric(b *testing.B, base, name string) float64 {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return -1
}

// noRegistry stands in for Consul's catalog where the benchmark measures
// the path without it (registering 100,000 services in one Consul agent
// is a figure of its own): it remembers registrations in memory.
type noRegistry struct {
	n   atomic.Int64
	mu  sync.Mutex
	ids map[string]string
}

func (r *noRegistry) Register(_ context.Context, reg Registration) error {
	r.n.Add(1)
	r.mu.Lock()
	if r.ids == nil {
		r.ids = map[string]string{}
	}
	r.ids[reg.ID] = reg.Meta[MetaInstance]
	r.mu.Unlock()
	return nil
}

func (r *noRegistry) Deregister(_ context.Context, id string) error {
	r.mu.Lock()
	delete(r.ids, id)
	r.mu.Unlock()
	return nil
}

func (r *noRegistry) List(context.Context) (map[string]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]string, len(r.ids))
	for k, v := range r.ids {
		out[k] = v
	}
	return out, nil
}
func (r *noRegistry) Health(ctx context.Context, _ uint64, wait time.Duration) (map[string]string, uint64, error) {
	select {
	case <-ctx.Done():
	case <-time.After(wait):
	}
	return map[string]string{}, 1, ctx.Err()
}

// BenchmarkThroughput100kOn5000 launches 100,000 containers (100 services
// of 1,000 replicas, four clients at once) through the real manager path
// (HTTP API → placement → journal in Consul KV → agent start calls →
// journal) onto 5,000 simulated workers, and reports containers per
// second from the first request until every one runs. Registration in
// Consul is left out (noRegistry); BenchmarkConsulRegistrations measures
// it.
func BenchmarkThroughput100kOn5000(b *testing.B) {
	for range b.N {
		benchThroughput(b, 5000, 100, 1000)
	}
}

func benchThroughput(b *testing.B, nWorkers, services, replicas int) {
	consul := testconsul.Start(b)
	sim, err := simagents.New(nWorkers, benchTags, 16<<30, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(sim.Close)
	reg := &noRegistry{}
	p, base := benchManager(b, consul.Addr, Options{Registry: reg}, nil)
	join(b, p, nWorkers, sim.Load)
	time.Sleep(2 * time.Second) // the first round lists every worker
	total := services * replicas
	start := time.Now()
	var wg sync.WaitGroup
	work := make(chan int)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				role := benchRoles[s%3]
				body, _ := json.Marshal(LaunchRequest{Image: "registry.example.com/shop/svc:1", Name: fmt.Sprintf("s%d", s), Role: role,
					Memory: "64MiB", Ports: []string{"8080"}, Replicas: replicas})
				resp, err := http.Post(base+"/v1/containers", "application/json", bytes.NewReader(body))
				if err != nil {
					b.Error(err)
					return
				}
				out, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					b.Errorf("launch s%d: %d %s", s, resp.StatusCode, out)
				}
			}
		}()
	}
	for s := range services {
		work <- s
	}
	close(work)
	wg.Wait()
	accepted := time.Since(start)
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if n := metric(b, base, `micado_containers{state="running"}`); n >= float64(total) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("not all %d containers run after 10 minutes", total)
		}
		time.Sleep(250 * time.Millisecond)
	}
	took := time.Since(start)
	b.Logf("%d containers on %d workers: all accepted after %s, all running after %s (%d start calls, %d registrations)",
		total, nWorkers, accepted.Round(time.Millisecond), took.Round(time.Millisecond), sim.Starts(), reg.n.Load())
	b.ReportMetric(float64(total)/took.Seconds(), "containers/s")
	b.ReportMetric(took.Seconds(), "seconds")
}

// BenchmarkManagerMemory5000x100k measures the resident memory of a
// manager whose desired state holds 100,000 running containers on 5,000
// workers, after it loaded them from Consul KV, reconciled, and served
// API traffic (every container, every node, a launch of 20). The
// simulated workers run in a child process, so VmRSS is the manager's
// (with the Go test harness and the benchmark's small data). It also
// reports the mean time of an idle reconciliation round at that size.
func BenchmarkManagerMemory5000x100k(b *testing.B) {
	for range b.N {
		benchMemory(b, 5000, 100_000)
	}
}

func benchMemory(b *testing.B, nWorkers, nContainers int) {
	consul := testconsul.Start(b)
	cl := consul.Client(b, "")
	t0 := time.Now()
	writeRecords(b, cl.KV(), "micado/bench/", nWorkers, nContainers)
	b.Logf("wrote %d container records to Consul KV in %s", nContainers, time.Since(t0).Round(time.Millisecond))
	port := startSimProcess(b, nWorkers, nContainers)
	loads := make([]wire.Load, nWorkers)
	for i := range nWorkers {
		cs := benchSeed(nWorkers, nContainers, i)
		l := wire.Load{Kind: wire.KindWorker, Tags: benchTags(i), Capacity: 16 << 30, Started: 1, Seq: 1,
			API: net.JoinHostPort(simagents.IP(i).String(), strconv.Itoa(port)), Digest: wire.ContainersDigest(cs)}
		for _, c := range cs {
			l.Reserved += c.Memory
			l.Containers++
		}
		loads[i] = l
	}
	runtime.GC()
	t0 = time.Now()
	reg := &noRegistry{ids: map[string]string{}}
	for i := range nContainers {
		c := benchRecord(nWorkers, i)
		reg.ids[c.ServiceID()] = c.Name
	}
	p, base := benchManager(b, consul.Addr, Options{Registry: reg}, nil)
	b.Logf("the manager loaded the desired state and leads after %s", time.Since(t0).Round(time.Millisecond))
	join(b, p, nWorkers, func(i int) wire.Load { return loads[i] })
	rounds := func() float64 { return metric(b, base, "micado_reconcile_duration_seconds_count") }
	r0 := rounds()
	deadline := time.Now().Add(5 * time.Minute)
	for rounds() < r0+3 {
		time.Sleep(900 * time.Millisecond)
		if time.Now().After(deadline) {
			b.Fatal("three reconciliation rounds did not complete in 5 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Idle rounds, nothing to repair, once the manager has followed gossip
	// for longer than its grace for unknown workers (its last full
	// round): one cycle of slices, a minute.
	if wait := 25*time.Second - time.Since(t0); wait > 0 {
		time.Sleep(wait)
	}
	s0, c0 := metric(b, base, "micado_reconcile_duration_seconds_sum"), rounds()
	time.Sleep(62 * time.Second)
	s1, c1 := metric(b, base, "micado_reconcile_duration_seconds_sum"), rounds()
	idle := (s1 - s0) / (c1 - c0) * 1000
	b.Logf("idle reconciliation rounds: %.0f, mean %.1f ms", c1-c0, idle)
	// API traffic.
	for _, path := range []string{"/v1/containers", "/v1/nodes", "/v1/status", "/v1/apps", "/metrics"} {
		t0 := time.Now()
		resp, err := http.Get(base + path)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		b.Logf("GET %s: %d bytes in %s", path, n, time.Since(t0).Round(time.Millisecond))
	}
	body, _ := json.Marshal(LaunchRequest{Image: "micado/demo-web", Name: "extra", Role: "app", Memory: "64MiB", Ports: []string{"8080"}, Replicas: 20})
	resp, err := http.Post(base+"/v1/containers", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b.Fatalf("launch: %d", resp.StatusCode)
	}
	time.Sleep(6 * time.Second)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, peak := procStatus(b, "VmRSS"), procStatus(b, "VmHWM")
	mib := func(n uint64) float64 { return float64(n) / (1 << 20) }
	b.Logf("after GC: VmRSS %.1f MiB (peak %.1f MiB), HeapInuse %.1f MiB, goroutines %d",
		mib(uint64(rss)), mib(uint64(peak)), mib(ms.HeapInuse), runtime.NumGoroutine())
	if f := os.Getenv("MICADO_BENCH_HEAPPROFILE"); f != "" {
		if out, err := os.Create(f); err == nil {
			_ = pprof.WriteHeapProfile(out)
			out.Close()
		}
	}
	debug.FreeOSMemory()
	b.Logf("after returning free memory to the OS: VmRSS %.1f MiB", mib(uint64(procStatus(b, "VmRSS"))))
	b.ReportMetric(mib(uint64(rss)), "rss-mb")
	b.ReportMetric(mib(ms.HeapInuse), "heap-mb")
	b.ReportMetric(idle, "reconcile-ms")
}

// writeRecords writes the benchmark's records in transactions of 64, four
// at a time.
func writeRecords(b *testing.B, kv *api.KV, prefix string, nWorkers, nContainers int) {
	work := make(chan int)
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for start := range work {
				var ops api.KVTxnOps
				for i := start; i < min(start+64, nContainers); i++ {
					c := benchRecord(nWorkers, i)
					v, _ := json.Marshal(c)
					ops = append(ops, &api.KVTxnOp{Verb: api.KVSet, Key: prefix + "containers/" + c.Name, Value: v})
				}
				ok, resp, _, err := kv.Txn(ops, nil)
				if err == nil && !ok {
					err = fmt.Errorf("transaction refused: %v", resp.Errors)
				}
				if err != nil {
					failed.Store(err)
				}
			}
		}()
	}
	for start := 0; start < nContainers; start += 64 {
		work <- start
	}
	close(work)
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		b.Fatalf("write records: %v", err)
	}
}

// procStatus reads a size field (VmRSS, VmHWM) of /proc/self/status.
func procStatus(b *testing.B, field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// BenchmarkIdleConsulRequests counts the requests an idle manager of a
// 100-container cluster (10 simulated workers, Consul as journal, lock and
// registry) makes to Consul in one minute, through a recording proxy;
// then the same with 1,000 containers, and with 1,000 containers and five
// dashboards open (each polling status, nodes, containers and events every
// 1.5 s, as the page does). It reports requests per minute for each.
func BenchmarkIdleConsulRequests(b *testing.B) {
	for range b.N {
		consul := testconsul.Start(b)
		rec := &tokenRecorder{}
		proxy := rec.start(b, consul.Addr)
		sim, err := simagents.New(10, benchTags, 16<<30, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(sim.Close)
		p, base := benchManager(b, proxy, Options{}, nil)
		join(b, p, 10, sim.Load)
		launch := func(name string, n int) {
			// No port, so no check: the simulated workers run nothing a
			// check could reach, and failing checks would only add noise.
			body, _ := json.Marshal(LaunchRequest{Image: "micado/demo-web", Name: name, Role: "app", Memory: "16MiB", Replicas: n})
			resp, err := http.Post(base+"/v1/containers", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				b.Fatalf("launch %s: %d", name, resp.StatusCode)
			}
		}
		// The workers have the app role one in three: launch onto those.
		launch("web", 100)
		count := func(what string, d time.Duration, during func(stop <-chan struct{})) float64 {
			time.Sleep(30 * time.Second) // settle: starts, registrations
			n0 := len(rec.snapshot())
			stop := make(chan struct{})
			var wg sync.WaitGroup
			if during != nil {
				wg.Add(1)
				go func() { defer wg.Done(); during(stop) }()
			}
			time.Sleep(d)
			close(stop)
			wg.Wait()
			calls := rec.snapshot()[n0:]
			paths := map[string]int{}
			for _, c := range calls {
				p := c.Path
				for _, pre := range []string{"/v1/kv/", "/v1/session/renew/", "/v1/agent/service/"} {
					if strings.HasPrefix(p, pre) {
						p = pre + "…"
					}
				}
				paths[c.Method+" "+p]++
			}
			perMin := float64(len(calls)) / d.Minutes()
			b.Logf("%s: %.0f Consul requests per minute: %v", what, perMin, paths)
			return perMin
		}
		idle100 := count("100 containers, idle", time.Minute, nil)
		launch("more", 900)
		idle1000 := count("1,000 containers, idle", time.Minute, nil)
		dash := count("1,000 containers, five dashboards open", time.Minute, func(stop <-chan struct{}) {
			var wg sync.WaitGroup
			for range 5 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					t := time.NewTicker(1500 * time.Millisecond)
					defer t.Stop()
					for {
						for _, path := range []string{"/v1/status", "/v1/nodes", "/v1/containers", "/v1/events?limit=50"} {
							if resp, err := http.Get(base + path); err == nil {
								_, _ = io.Copy(io.Discard, resp.Body)
								resp.Body.Close()
							}
						}
						select {
						case <-stop:
							return
						case <-t.C:
						}
					}
				}()
			}
			wg.Wait()
		})
		b.ReportMetric(idle100, "req/min-100")
		b.ReportMetric(idle1000, "req/min-1000")
		b.ReportMetric(dash, "req/min-1000-dashboards")
	}
}
