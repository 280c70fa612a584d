package manager

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/hashicorp/memberlist"
	"github.com/micado-scale/micado/internal/gossip"
	"github.com/micado-scale/micado/internal/wire"
)

// BenchmarkGossip100 and BenchmarkGossip500 run, in one process on
// loopback, a manager-side memberlist configured as the manager configures
// its own (gossip.Config with a cluster key, the members table as
// event delegate, managerDelegate as metadata) and N worker-side
// memberlists with the same GossipConfig whose delegate serves a
// wire.Load as node metadata, as the worker agent does. Once the manager
// sees every agent alive and every agent sees the whole cluster, they
// measure:
//
//   - all-seen-ms: every agent changes its load (Reserved), sends it to
//     the manager (gossip.SendLoad) and calls UpdateNode, as the agent
//     does on a change; the time from the first
//     change until the manager's members table shows the new load of the
//     last agent;
//   - bytes-per-sec-per-agent: what the agents send (UDP packets and TCP
//     streams, counted above memberlist's transport, so encrypted and
//     compressed payload without IP/UDP/TCP headers), per agent and per
//     second, over 10 s with no change followed by the update phase.
//
// Every member runs in this process on a 2-core machine, so CPU contention
// between 501 memberlists is part of the figures.
func BenchmarkGossip100(b *testing.B) { benchGossip(b, 100) }

// BenchmarkGossip500: see BenchmarkGossip100.
func BenchmarkGossip500(b *testing.B) { benchGossip(b, 500) }

// gossipSteady is the period with no change over which traffic is counted.
const gossipSteady = 10 * time.Second

func benchGossip(b *testing.B, n int) {
	raiseFileLimit(b, uint64(4*n+256))
	// 501 members share one heap and two cores here: the garbage
	// collector would take about 40% of the CPU (real agents, each with
	// its own small heap on its own machine, hardly notice it) and starve
	// their timers. Collect only when the heap reaches 3GiB.
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(3 << 30))
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	for range b.N {
		runGossipBench(b, n)
	}
}

func runGossipBench(b *testing.B, n int) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	key := make([]byte, 32)
	_, _ = rand.Read(key)

	// The manager's side, as manager.Run builds it.
	mem := newMembers("manager")
	mcfg := gossip.Config("manager", "127.0.0.1", 0, "127.0.0.1", key, quiet)
	mtr := newCountingTransport(b, mcfg)
	mcfg.Transport = mtr
	mcfg.Events = mem
	mdel := &managerDelegate{members: mem}
	mdel.meta, _ = wire.Load{Kind: wire.KindManager, API: "127.0.0.1:8080"}.Encode()
	mcfg.Delegate = mdel
	mgr, err := memberlist.Create(mcfg)
	if err != nil {
		b.Fatalf("manager memberlist: %v", err)
	}
	b.Cleanup(func() { _ = mgr.Shutdown() })
	join := []string{mgr.LocalNode().Address()}

	// The agents.
	var sent atomic.Int64 // bytes sent by all agents
	agents := make([]*gossipAgent, n)
	started := time.Now().Unix()
	for i := range agents {
		name := "w-" + strconv.Itoa(i+1)
		a := &gossipAgent{load: wire.Load{
			Kind: wire.KindWorker, Tags: []string{"role=app"}, Capacity: 4 << 30,
			Reserved: int64(i%8) << 28, Used: int64(i%8) << 27, CPU: 0.25, Containers: i % 8,
			API: "127.0.0.1:" + strconv.Itoa(20000+i), Started: started, Seq: 1,
		}}
		a.meta, _ = a.load.Encode()
		cfg := gossip.Config(name, "127.0.0.1", 0, "127.0.0.1", key, quiet)
		tr := newCountingTransport(b, cfg)
		tr.sent = &sent
		cfg.Transport = tr
		cfg.Delegate = a
		if a.ml, err = memberlist.Create(cfg); err != nil {
			b.Fatalf("agent %s memberlist: %v", name, err)
		}
		ml := a.ml
		b.Cleanup(func() { _ = ml.Shutdown() })
		agents[i] = a
	}
	// Agents join the manager a few at a time, as they would boot.
	joinStart := time.Now()
	if os.Getenv("MICADO_BENCH_PROGRESS") != "" {
		stop := make(chan struct{})
		defer close(stop)
		go gossipProgress(stop, joinStart, mem, agents, &sent)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, a := range agents {
		wg.Add(1)
		sem <- struct{}{}
		go func(a *gossipAgent) {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := a.ml.Join(join); err != nil {
				b.Errorf("join: %v", err)
			}
		}(a)
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	aliveInTable := func() int {
		c := 0
		for _, w := range mem.workers() {
			if w.Status == "alive" {
				c++
			}
		}
		return c
	}
	waitFor(b, 3*time.Minute, func() bool { return aliveInTable() == n }, func() string {
		return strconv.Itoa(aliveInTable()) + " of " + strconv.Itoa(n) + " agents alive in the manager's table"
	})
	joined := time.Since(joinStart)
	// Let the join settle: every agent knows every member, and no member
	// has anything left to gossip, so the steady period is steady.
	converged := func() int {
		c := 0
		for _, a := range agents {
			if a.ml.NumMembers() == n+1 {
				c++
			}
		}
		return c
	}
	waitFor(b, 5*time.Minute, func() bool { return converged() == n }, func() string {
		return strconv.Itoa(converged()) + " of " + strconv.Itoa(n) + " agents see the whole cluster"
	})
	all := []*memberlist.Memberlist{mgr}
	for _, a := range agents {
		all = append(all, a.ml)
	}
	if queuedBroadcasts(all) < 0 {
		b.Fatal("cannot read memberlist's gossip queue: adapt queuedBroadcasts to this memberlist version")
	}
	waitFor(b, 5*time.Minute, func() bool { return queuedBroadcasts(all) == 0 }, func() string {
		return strconv.Itoa(queuedBroadcasts(all)) + " gossip messages still queued"
	})
	b.Logf("%d agents: all alive in the manager's table %v after the first join; every agent sees all %d members and nothing is left to gossip after %v",
		n, joined.Round(time.Millisecond), n+1, time.Since(joinStart).Round(time.Millisecond))

	// Steady period: no change.
	steadyFrom, steadyBytes0, steadyCPU0 := time.Now(), sent.Load(), cpuTime()
	time.Sleep(gossipSteady)
	steadyDur, steadyBytes, steadyCPU := time.Since(steadyFrom), sent.Load()-steadyBytes0, cpuTime()-steadyCPU0

	// Every agent changes its load and gossips it at once.
	updBytes0, updCPU0 := sent.Load(), cpuTime()
	want := make(map[string]int64, n)
	for i, a := range agents {
		a.mu.Lock()
		want[a.ml.LocalNode().Name] = a.load.Reserved + int64(i%4+1)<<26
		a.mu.Unlock()
	}
	var timeouts atomic.Int64
	first := time.Now()
	for _, a := range agents {
		wg.Add(1)
		go func(a *gossipAgent) {
			defer wg.Done()
			meta := a.change(want[a.ml.LocalNode().Name])
			// As the agent's refreshLoad does: straight to the manager,
			// and gossiped.
			_ = gossip.SendLoad(a.ml, a.ml.LocalNode().Name, meta)
			if err := a.ml.UpdateNode(time.Second); err != nil {
				timeouts.Add(1) // the agent only logs this at debug level
			}
		}(a)
	}
	unseen := make(map[string]bool, n)
	for name := range want {
		unseen[name] = true
	}
	var last time.Time
	var half time.Duration
	deadline := first.Add(5 * time.Minute)
	for len(unseen) > 0 {
		for name := range unseen {
			if w, ok := mem.get(name); ok && w.Load.Reserved == want[name] {
				delete(unseen, name)
			}
		}
		last = time.Now()
		if half == 0 && len(unseen) <= n/2 {
			half = last.Sub(first)
		}
		if len(unseen) == 0 {
			break
		}
		if last.After(deadline) {
			b.Fatalf("after %v the manager still shows the old load of %d of %d agents", last.Sub(first).Round(time.Millisecond), len(unseen), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	allSeen := last.Sub(first)
	seenBytes, seenCPU := sent.Load()-updBytes0, cpuTime()-updCPU0
	wg.Wait()
	// The updates cost traffic until every member stopped retransmitting them.
	waitFor(b, 5*time.Minute, func() bool { return queuedBroadcasts(all) == 0 }, func() string {
		return strconv.Itoa(queuedBroadcasts(all)) + " gossip messages still queued after the updates"
	})
	updDur, updBytes := time.Since(first), sent.Load()-updBytes0

	perAgent := func(bytes int64, d time.Duration) float64 { return float64(bytes) / float64(n) / d.Seconds() }
	b.Logf("%d agents: half the updates seen after %v, all after %v; UpdateNode timed out (1 s) for %d of %d agents",
		n, half.Round(time.Millisecond), allSeen.Round(time.Millisecond), timeouts.Load(), n)
	b.Logf("%d agents: steady %.0f B/s per agent over %v; updates until all seen %.0f B/s per agent over %v; until nothing left to gossip %.0f B/s per agent over %v (%.0f bytes per agent for the update)",
		n, perAgent(steadyBytes, steadyDur), steadyDur.Round(time.Millisecond), perAgent(seenBytes, allSeen), allSeen.Round(time.Millisecond),
		perAgent(updBytes, updDur), updDur.Round(time.Millisecond), float64(updBytes-int64(float64(steadyBytes)/steadyDur.Seconds()*updDur.Seconds()))/float64(n))
	b.Logf("CPU of the whole process (2 cores at most): steady %.2f cores, until all seen %.2f cores; manager sent %d bytes in all",
		steadyCPU.Seconds()/steadyDur.Seconds(), seenCPU.Seconds()/allSeen.Seconds(), mtr.total())
	b.ReportMetric(float64(allSeen.Microseconds())/1000, "all-seen-ms")
	b.ReportMetric(perAgent(steadyBytes+updBytes, steadyDur+updDur), "bytes-per-sec-per-agent")

	for _, a := range agents {
		_ = a.ml.Shutdown()
	}
	_ = mgr.Shutdown()
}

// queuedBroadcasts is how many gossip messages the members still have to
// send. memberlist keeps its queue unexported; this reads it (v0.6.0)
// through reflection and counts -1 for a member where it cannot.
func queuedBroadcasts(mls []*memberlist.Memberlist) int {
	total := 0
	for _, ml := range mls {
		f := reflect.ValueOf(ml).Elem().FieldByName("broadcasts")
		if !f.IsValid() || f.Type() != reflect.TypeFor[*memberlist.TransmitLimitedQueue]() {
			return -1
		}
		q := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(*memberlist.TransmitLimitedQueue)
		total += q.NumQueued()
	}
	return total
}

// waitFor polls cond until it holds or the time is up.
func waitFor(b *testing.B, limit time.Duration, cond func() bool, what func() string) {
	b.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("after %v: %s", limit, what())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// gossipAgent is the worker agent's gossip side: its load report as node
// metadata (worker.Agent's NodeMeta, without Docker behind it).
type gossipAgent struct {
	ml   *memberlist.Memberlist
	mu   sync.Mutex
	load wire.Load
	meta []byte
}

// change sets a new reserved memory, as the agent's refreshLoad does when
// its containers change.
func (a *gossipAgent) change(reserved int64) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.load.Reserved = reserved
	a.load.Containers++
	a.load.Seq++
	a.meta, _ = a.load.Encode()
	return a.meta
}

func (a *gossipAgent) NodeMeta(limit int) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.meta) > limit {
		return nil
	}
	return append([]byte(nil), a.meta...)
}
func (a *gossipAgent) NotifyMsg([]byte)                {}
func (a *gossipAgent) GetBroadcasts(int, int) [][]byte { return nil }
func (a *gossipAgent) LocalState(bool) []byte          { return nil }
func (a *gossipAgent) MergeRemoteState([]byte, bool)   {}

// countingTransport is memberlist's NetTransport counting the bytes its
// member sends: UDP packets (WriteTo) and what it writes on TCP streams,
// both the ones it dials and the ones it accepts (push/pull answers).
type countingTransport struct {
	*memberlist.NetTransport
	sent    *atomic.Int64 // shared counter (the agents'), or own
	own     atomic.Int64
	streams chan net.Conn
	done    chan struct{} // Shutdown began
	stopped chan struct{} // NetTransport shut down
	once    sync.Once
}

var _ memberlist.NodeAwareTransport = (*countingTransport)(nil)

// newCountingTransport binds a NetTransport on cfg's address and a free
// port (TCP and UDP alike, retrying as memberlist does) and sets cfg's
// ports to it.
func newCountingTransport(b *testing.B, cfg *memberlist.Config) *countingTransport {
	b.Helper()
	var nt *memberlist.NetTransport
	var err error
	for range 10 {
		if nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{cfg.BindAddr}, BindPort: 0, Logger: cfg.Logger}); err == nil {
			break
		}
	}
	if err != nil {
		b.Fatalf("transport: %v", err)
	}
	cfg.BindPort = nt.GetAutoBindPort()
	cfg.AdvertisePort = cfg.BindPort
	t := &countingTransport{NetTransport: nt, streams: make(chan net.Conn), done: make(chan struct{}), stopped: make(chan struct{})}
	t.sent = &t.own
	go func() {
		for {
			select {
			case c := <-nt.StreamCh():
				select {
				case t.streams <- &countingConn{Conn: c, t: t}:
				case <-t.done:
					// Shutting down: NetTransport's accept loop may be
					// blocked handing over a stream, and its Shutdown waits
					// for that loop; keep draining until it returned.
					_ = c.Close()
				}
			case <-t.stopped:
				return
			}
		}
	}()
	return t
}

func (t *countingTransport) add(n int) {
	t.sent.Add(int64(n))
	if t.sent != &t.own {
		t.own.Add(int64(n))
	}
}

func (t *countingTransport) total() int64 { return t.own.Load() }

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	at, err := t.NetTransport.WriteTo(b, addr)
	if err == nil {
		t.add(len(b))
	}
	return at, err
}

func (t *countingTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	at, err := t.NetTransport.WriteToAddress(b, a)
	if err == nil {
		t.add(len(b))
	}
	return at, err
}

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := t.NetTransport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, t: t}, nil
}

func (t *countingTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	c, err := t.NetTransport.DialAddressTimeout(a, timeout)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, t: t}, nil
}

func (t *countingTransport) StreamCh() <-chan net.Conn { return t.streams }

func (t *countingTransport) Shutdown() error {
	var err error
	t.once.Do(func() {
		close(t.done)
		err = t.NetTransport.Shutdown()
		close(t.stopped)
	})
	return err
}

// countingConn counts what is written on a stream.
type countingConn struct {
	net.Conn
	t *countingTransport
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.t.add(n)
	return n, err
}

// raiseFileLimit raises the soft limit on open files to at least need (up
// to the hard limit): every memberlist holds a UDP socket, a TCP listener
// and its streams. Go already raises the soft limit to the hard one at
// start on Linux; this only matters where it did not.
func raiseFileLimit(b *testing.B, need uint64) {
	b.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		b.Fatalf("getrlimit: %v", err)
	}
	if rl.Cur >= need {
		return
	}
	if rl.Max < need {
		b.Fatalf("the hard limit on open files is %d; this benchmark needs about %d (raise it with ulimit -Hn)", rl.Max, need)
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		b.Fatalf("setrlimit: %v", err)
	}
}

// gossipProgress prints, every 5 s, what the cluster looks like (set
// MICADO_BENCH_PROGRESS=1 to see it while the benchmark runs).
func gossipProgress(stop chan struct{}, from time.Time, mem *members, agents []*gossipAgent, sent *atomic.Int64) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	last, lastCPU, lastAt := sent.Load(), cpuTime(), time.Now()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		status := map[MemberStatus]int{}
		for _, w := range mem.workers() {
			status[w.Status]++
		}
		conv := 0
		for _, a := range agents {
			if a.ml.NumMembers() == len(agents)+1 {
				conv++
			}
		}
		now, cur, cpu := time.Now(), sent.Load(), cpuTime()
		d := now.Sub(lastAt).Seconds()
		fmt.Fprintf(os.Stderr, "%6.1fs table %v, converged %d/%d, agents send %.0f B/s each, CPU %.2f cores\n",
			now.Sub(from).Seconds(), status, conv, len(agents), float64(cur-last)/float64(len(agents))/d, (cpu-lastCPU).Seconds()/d)
		last, lastCPU, lastAt = cur, cpu, now
	}
}

// cpuTime is the CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
