package manager

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
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
	"github.com/micado-scale/micado/worker"
)

// BenchmarkManagerMemory5000x100k measures the resident memory of a real
// manager (in this process, with a fresh Consul dev agent) whose members
// table holds 5,000 alive workers and whose desired state in Consul KV
// holds 100,000 running containers, after it ran a few reconciliation
// rounds, listed containers and nodes through its API and placed a
// launch. It reports rss-mb (VmRSS of this process after a GC) and
// heap-mb (HeapInuse). The process also holds the benchmark's own small
// data (worker names, counters, the Consul client); nothing is subtracted.
//
// The workers are simulated: they are put into the members table as
// gossip would (members.upsert, which also records them in Consul KV as a
// join does) with a load report whose agent API address is a closed port
// on a loopback address of its own. So the manager treats them as alive
// workers with an API (they take part in placement and in reconcile's
// observation), and every call to an agent is refused at once: reconcile
// cannot tell what they run, leaves their containers alone and tries again
// next round, and a launch's start fails and stays "starting" for a later
// round. Real agents would answer each round with their container lists
// (100,000 entries in all), which this benchmark does not hold.
func BenchmarkManagerMemory5000x100k(b *testing.B) {
	for range b.N {
		benchManagerMemory(b, 5000, 100_000)
	}
}

var benchRoles = []string{"proxy", "app", "db"}

func benchManagerMemory(b *testing.B, nWorkers, nContainers int) {
	consulAddr := startConsul(b)
	cl, err := api.NewClient(&api.Config{Address: consulAddr})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()

	// Desired state: 100,000 running containers spread over the workers.
	t0 := time.Now()
	writeBenchRecords(b, cl.KV(), "micado/mt/", nWorkers, nContainers)
	b.Logf("wrote %d container records to Consul KV in %v", nContainers, time.Since(t0).Round(time.Millisecond))

	// Reach the manager; count its calls to worker agents.
	got := make(chan *Manager, 1)
	var agentCalls atomic.Int64
	runHook = func(m *Manager) {
		m.agents.HTTP.Transport = countingRoundTripper{next: http.DefaultTransport, n: &agentCalls}
		got <- m
	}
	b.Cleanup(func() { runHook = nil })
	base, _ := runManager(b, consulAddr, Config{})
	m := <-got
	runHook = nil
	if os.Getenv("MICADO_BENCH_PROGRESS") != "" {
		stop := make(chan struct{})
		defer close(stop)
		go memoryProgress(stop, func() int64 { return agentCalls.Load() / int64(nWorkers) })
	}

	// Workers join: into the members table as gossip puts them, in
	// batches, each batch waiting until the manager recorded its members
	// in Consul KV (as it does for every join). Batches of 100: the
	// manager writes each join to Consul from a goroutine of its own, and
	// with 250 at once Consul (200 connections per client address by
	// default) answered 429 and the manager lost member records.
	closed := freePort(b) // nothing listens there
	perWorker := make([]int64, nWorkers)
	count := make([]int, nWorkers)
	for i := range nContainers {
		j := i % nWorkers
		perWorker[j] += benchMemory(i)
		count[j]++
	}
	t0 = time.Now()
	const batch = 100
	lost := 0
	for start := 0; start < nWorkers; start += batch {
		for j := start; j < min(start+batch, nWorkers); j++ {
			ip := net.IPv4(127, 1+byte(j/250), byte(1+j%250), 1)
			l := worker.Load{Kind: worker.KindWorker, Tags: []string{"role=" + benchRoles[j%len(benchRoles)]},
				Capacity: 16 << 30, Reserved: perWorker[j], Used: perWorker[j] / 2, CPU: 0.3, Containers: count[j],
				API: net.JoinHostPort(ip.String(), strconv.Itoa(closed)), Started: t0.Unix(), Seq: 1}
			meta, err := l.Encode()
			if err != nil {
				b.Fatal(err)
			}
			m.members.upsert(&memberlist.Node{Name: benchWorkerName(j), Addr: ip, Port: 7946, Meta: meta, State: memberlist.StateAlive}, "alive")
		}
		want := min(start+batch, nWorkers)
		if got := settle(func() int {
			keys, _, err := cl.KV().Keys("micado/mt/members/", "", nil)
			if err != nil {
				return -1
			}
			return len(keys)
		}, want); got < want {
			lost += want - got
			b.Logf("the manager recorded only %d of %d joined members in Consul KV", got, want)
		}
	}
	b.Logf("%d workers joined in %v (%d member records missing in Consul KV)", nWorkers, time.Since(t0).Round(time.Millisecond), lost)

	// A few reconciliation rounds: each begins by asking every alive worker
	// for its containers.
	rounds := func() int64 { return agentCalls.Load() / int64(nWorkers) }
	r0 := rounds()
	waitFor(b, 3*time.Minute, func() bool { return rounds() >= r0+4 }, func() string { return "three reconciliation rounds" })

	// The API: every container, every node, and a launch.
	t0 = time.Now()
	n := getDiscard(b, base+"/v1/containers")
	b.Logf("GET /v1/containers: %d bytes in %v", n, time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	n = getDiscard(b, base+"/v1/nodes")
	b.Logf("GET /v1/nodes: %d bytes in %v", n, time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	code, body := postLaunch(b, base, LaunchRequest{Image: "micado/demo-web", Name: "extra", Role: "app", Memory: "64MiB", Ports: []string{"8080"}, Replicas: 20})
	if code != http.StatusAccepted {
		b.Fatalf("launch: %d %s", code, body)
	}
	b.Logf("launch of 20 replicas: %v", time.Since(t0).Round(time.Millisecond))
	r0 = rounds()
	waitFor(b, 3*time.Minute, func() bool { return rounds() >= r0+2 }, func() string { return "another reconciliation round" })
	if _, err := m.Containers(ctx); err != nil {
		b.Fatal(err)
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, peak := procStatus(b, "VmRSS"), procStatus(b, "VmHWM")
	if f := os.Getenv("MICADO_BENCH_HEAPPROFILE"); f != "" {
		if out, err := os.Create(f); err == nil {
			_ = pprof.WriteHeapProfile(out)
			out.Close()
		}
	}
	mib := func(n uint64) float64 { return float64(n) / (1 << 20) }
	b.Logf("after GC: VmRSS %.1f MiB (peak VmHWM %.1f MiB), HeapInuse %.1f MiB, HeapIdle %.1f MiB of which released %.1f MiB, StackInuse %.1f MiB, goroutines %d",
		mib(uint64(rss)), mib(uint64(peak)), mib(ms.HeapInuse), mib(ms.HeapIdle), mib(ms.HeapReleased), mib(ms.StackInuse), runtime.NumGoroutine())
	evs, _ := m.events.since(0, 0)
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
	}
	b.Logf("%d reconciliation rounds, %d calls to worker agents; events: %d in all, the kept ones by kind %v",
		rounds(), agentCalls.Load(), m.events.seq, kinds)
	// How much of that is heap the runtime keeps but does not use.
	debug.FreeOSMemory()
	b.Logf("after returning free memory to the OS (debug.FreeOSMemory): VmRSS %.1f MiB", mib(uint64(procStatus(b, "VmRSS"))))
	b.ReportMetric(mib(uint64(rss)), "rss-mb")
	b.ReportMetric(mib(ms.HeapInuse), "heap-mb")
}

// memoryProgress prints, every 5 s, the process's memory (set
// MICADO_BENCH_PROGRESS=1 to see it while the benchmark runs).
func memoryProgress(stop chan struct{}, rounds func() int64) {
	from := time.Now()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Fprintf(os.Stderr, "%s %6.1fs HeapInuse %4d MiB, HeapSys %4d MiB, released %4d MiB, goroutines %5d, rounds %d\n",
			time.Now().Format("15:04:05"), time.Since(from).Seconds(), ms.HeapInuse>>20, ms.HeapSys>>20, ms.HeapReleased>>20, runtime.NumGoroutine(), rounds())
	}
}

func benchWorkerName(j int) string { return "w-" + strconv.Itoa(j+1) }

// benchMemory is container i's memory: 32 to 512 MiB.
func benchMemory(i int) int64 { return int64(32+(i*7919)%481) << 20 }

// writeBenchRecords writes realistic running-container records in Consul
// transactions of 64 operations, four at a time. Container i runs on
// worker i mod nWorkers and has that worker's role.
func writeBenchRecords(b *testing.B, kv *api.KV, prefix string, nWorkers, nContainers int) {
	b.Helper()
	created := time.Now().UTC().Add(-time.Hour)
	record := func(i int) (string, []byte) {
		j := i % nWorkers
		role := benchRoles[j%len(benchRoles)]
		svc := fmt.Sprintf("%s-svc%d", role, (i/nWorkers)%20+1)
		ip := fmt.Sprintf("10.%d.%d.%d", 1+j/62500, (j/250)%250, 1+j%250)
		c := Container{
			Name: fmt.Sprintf("%s-%d", svc, i+1), Service: svc, Image: "registry.example.com/shop/" + svc + ":1.4." + strconv.Itoa(i%7),
			Tags: []string{"role=" + role}, Memory: benchMemory(i),
			Ports: []worker.Port{{Container: 8080, Protocol: "tcp"}, {Container: 9090, Protocol: "tcp"}},
			Env:   map[string]string{"APP_ENV": "production", "LOG_LEVEL": "info", "DB_URL": "postgres://db.service.consul:5432/shop"},
			Check: Check{Type: "tcp"},
			State: StateRunning, Node: benchWorkerName(j), ContainerID: fmt.Sprintf("%064x", uint64(i)*0x9e3779b97f4a7c15),
			Placement: fmt.Sprintf("placed %s-%d on %s: role=%s, 9.5 GiB free", svc, i+1, benchWorkerName(j), role),
			Address:   ip, Bindings: []worker.Binding{{Container: 8080, Protocol: "tcp", Host: 30000 + i%20000}, {Container: 9090, Protocol: "tcp", Host: 50000 + i%10000}},
			Generation: i % 3, CreatedAt: created, UpdatedAt: created,
		}
		v, err := json.Marshal(c)
		if err != nil {
			panic(err)
		}
		return c.Name, v
	}
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
					name, v := record(i)
					ops = append(ops, &api.KVTxnOp{Verb: api.KVSet, Key: prefix + "containers/" + name, Value: v})
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

// settle polls count until it reaches want or has not grown for 3 s, and
// returns its last value.
func settle(count func() int, want int) int {
	last, since := -1, time.Now()
	for {
		c := count()
		if c >= want || (c == last && time.Since(since) > 3*time.Second) {
			return c
		}
		if c != last {
			last, since = c, time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// countingRoundTripper counts the manager's requests to worker agents.
type countingRoundTripper struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countingRoundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && r.URL.Path == "/v1/containers" {
		c.n.Add(1)
	}
	return c.next.RoundTrip(r)
}

// getDiscard GETs url, checks for 200 and returns the body's size without
// keeping it.
func getDiscard(b *testing.B, url string) int64 {
	b.Helper()
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %d, %v", url, resp.StatusCode, err)
	}
	return n
}

// procStatus reads a size field (VmRSS, VmHWM) of /proc/self/status, in
// bytes.
func procStatus(b *testing.B, field string) int64 {
	b.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}
