package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// The fault-injection suite runs a real cluster (Consul, manager, worker
// agents and scaled-out instances as containers on the Docker engine)
// while a user launches and stops services, and injects faults at random
// moments: kill -9 and restart of the manager (at least 20 times), kill,
// pause and network disconnection of workers, and a Consul restart. Once
// the faults stop it waits for the cluster to settle and checks what a
// user relies on: no desired container lost, no duplicate left, no
// instance leaked. It prints a table of what it did and found.

// faultStats counts what the suite injected and found.
type faultStats struct {
	mu       sync.Mutex
	injected map[string]int
	ops      map[string]int
}

func (s *faultStats) fault(kind string) {
	s.mu.Lock()
	s.injected[kind]++
	s.mu.Unlock()
}

func (s *faultStats) op(kind string) {
	s.mu.Lock()
	s.ops[kind]++
	s.mu.Unlock()
}

// intent is what the user was told about one service: acknowledged
// launches must exist with all their replicas; a launch or stop whose
// answer was lost (the manager died) may have happened or not, but never
// half.
type intent struct {
	replicas  int
	memory    int  // MiB per replica
	ambiguous bool // the answer was lost
	stopped   bool // a stop was acknowledged (or possibly happened)
}

func TestFaultInjection(t *testing.T) { runFaultSuite(t, 1) }

// TestFaultInjectionThreeManagers is the same suite with three managers:
// the faults kill -9 whichever manager leads (at least 20 times) and cut
// the leader off the network (from Consul and everything else) twice;
// besides nothing lost, duplicated or leaked, the event log must show
// that two managers never acted at once.
func TestFaultInjectionThreeManagers(t *testing.T) { runFaultSuite(t, 3) }

func runFaultSuite(t *testing.T, managers int) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	urng := rand.New(rand.NewPCG(seed, 8)) // the user's, in its own goroutine
	c := newTestCluster(t, "--workers", "2", "--roles", "app", "--worker-memory", "512MiB", "--managers", fmt.Sprint(managers),
		"--instance-types", "medium=1GiB", "--max-instances", "6", "--max-per-role", "6", "--join-timeout", "60s",
		"--consolidate-schedule", "@every 4s", "--scale-in-delay", "0s", "--unneeded-time", "2s")
	ctx := context.Background()
	st := &faultStats{injected: map[string]int{}, ops: map[string]int{}}

	byComponent := func(component string) []container.Summary {
		f := filters.NewArgs(filters.Arg("label", wire.LabelCluster+"="+c.name), filters.Arg("label", wire.LabelComponent+"="+component))
		cs, err := c.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	one := func(component string) string {
		cs := byComponent(component)
		if len(cs) != 1 {
			t.Fatalf("%d %s containers, want 1", len(cs), component)
		}
		return cs[0].ID
	}
	consulID := one("consul")
	netName := c.state().Network
	// leaderID is the container of the manager that holds the lock now,
	// as Consul says ("" while none does).
	kv := c.consul().KV()
	leaderID := func() string {
		p, _, err := kv.Get("micado/"+c.name+"/leader", nil)
		if err != nil || p == nil || p.Session == "" {
			return ""
		}
		for _, m := range byComponent("manager") {
			if m.Labels[wire.LabelNode] == string(p.Value) {
				return m.ID
			}
		}
		return ""
	}
	managerID := byComponent("manager")[0].ID

	// The user: launches and stops services, detached, while faults hit.
	var mu sync.Mutex
	intents := map[string]*intent{}
	userCtx, stopUser := context.WithCancel(ctx)
	var userWG sync.WaitGroup
	userWG.Add(1)
	go func() {
		defer userWG.Done()
		n := 0
		for userCtx.Err() == nil {
			mu.Lock()
			live := []string{}
			unsure := []string{} // stopped, but the answer was lost
			used := 0
			for name, in := range intents {
				if !in.stopped {
					live = append(live, name)
				}
				// A stop whose answer was lost may not have happened:
				// count its memory as still in use.
				if !in.stopped || in.ambiguous {
					used += in.replicas * in.memory
				}
				if in.stopped && in.ambiguous {
					unsure = append(unsure, name)
				}
			}
			sort.Strings(live)
			sort.Strings(unsure)
			if len(live) == 0 {
				live = unsure // stop them again to be sure
			}
			mu.Unlock()
			// Requests stay well inside what the instance limit can hold,
			// so that every desired container can run once faults stop.
			replicas, mem := 1+urng.IntN(3), []int{64, 100, 150}[urng.IntN(3)]
			if used+replicas*mem <= 1536 && (len(live) < 5 || (len(live) < 8 && urng.IntN(3) > 0)) {
				n++
				name := fmt.Sprintf("svc%d", n)
				_, _, err := c.micado("launch", "micado/demo-web", "--role", "app", "--name", name, "--replicas", fmt.Sprint(replicas),
					"--memory", fmt.Sprintf("%dMiB", mem), "--port", "8080", "--health-path", "/health", "--detach")
				mu.Lock()
				intents[name] = &intent{replicas: replicas, memory: mem, ambiguous: err != nil}
				mu.Unlock()
				st.op("launch")
			} else if len(live) > 0 {
				name := live[urng.IntN(len(live))]
				_, errOut, err := c.micado("stop", name)
				mu.Lock()
				in := intents[name]
				switch {
				case err == nil || strings.Contains(errOut, "no container or service named"):
					in.ambiguous = false // it is gone now, for sure
				default:
					in.ambiguous = true
				}
				in.stopped = true
				mu.Unlock()
				st.op("stop")
			}
			sleepCtx(userCtx, time.Duration(300+urng.IntN(1200))*time.Millisecond)
		}
	}()

	// The faults.
	managerKills := 0
	workerFaults := []string{"pause", "disconnect", "kill"}
	start := time.Now()
	partitions := 0
	for round := 1; managerKills < 22; round++ {
		time.Sleep(time.Duration(500+rng.IntN(2500)) * time.Millisecond)
		victim := managerID
		if managers > 1 {
			if victim = leaderID(); victim == "" {
				continue // a failover is on its way; strike its winner
			}
		}
		if managers > 1 && round%9 == 0 && partitions < 2 {
			// Cut the leader off: it cannot renew its lease and stops
			// acting; a standby leads; it comes back as a standby.
			injectWorkerFault(t, c, "disconnect", victim, netName, time.Duration(8+rng.IntN(6))*time.Second)
			partitions++
			st.fault("leader cut off the network")
			continue
		}
		if err := c.dc.ContainerKill(ctx, victim, "KILL"); err != nil {
			t.Fatalf("kill -9 the manager: %v", err)
		}
		managerKills++
		if managers > 1 {
			st.fault("leading manager kill -9 + restart")
		} else {
			st.fault("manager kill -9 + restart")
		}
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		startContainer(t, c, victim)

		if round%4 == 0 {
			kind := workerFaults[(round/4-1)%len(workerFaults)]
			ws := byComponent("worker")
			w := ws[rng.IntN(len(ws))]
			injectWorkerFault(t, c, kind, w.ID, netName, time.Duration(6+rng.IntN(6))*time.Second)
			st.fault("worker " + kind)
		}
		if round == 11 {
			if err := c.dc.ContainerRestart(ctx, consulID, container.StopOptions{}); err != nil {
				t.Fatalf("restart consul: %v", err)
			}
			st.fault("consul restart")
		}
	}
	stopUser()
	userWG.Wait()
	faultsDone := time.Now()
	t.Logf("faults injected over %s", faultsDone.Sub(start).Round(time.Second))

	// Settle: every acknowledged service runs all its replicas, each
	// passing in Consul, one copy each; every worker container is an
	// instance the manager knows.
	mu.Lock()
	defer mu.Unlock()
	var last settleReport
	settled := false
	deadline := time.Now().Add(4 * time.Minute)
	for time.Now().Before(deadline) {
		last = c.settleCheck(t, intents)
		if last.ok() {
			settled = true
			break
		}
		time.Sleep(time.Second)
	}
	settle := time.Since(faultsDone)

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "fault-injection suite\t")
	kinds := make([]string, 0, len(st.injected))
	total := 0
	for k, n := range st.injected {
		kinds = append(kinds, k)
		total += n
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(tw, "  faults: %s\t%d\n", k, st.injected[k])
	}
	fmt.Fprintf(tw, "  faults injected\t%d\n", total)
	fmt.Fprintf(tw, "  user operations (launch/stop)\t%d/%d\n", st.ops["launch"], st.ops["stop"])
	fmt.Fprintf(tw, "  services desired at the end\t%d (%d containers)\n", last.services, last.desired)
	fmt.Fprintf(tw, "  desired containers lost\t%d\n", last.lost)
	fmt.Fprintf(tw, "  duplicates left after settling\t%d\n", last.duplicates)
	fmt.Fprintf(tw, "  orphan instances\t%d\n", last.orphans)
	if settled {
		fmt.Fprintf(tw, "  time to settle\t%s\n", settle.Round(100*time.Millisecond))
	} else {
		fmt.Fprintf(tw, "  time to settle\tnot settled after %s\n", settle.Round(time.Second))
	}
	tw.Flush()
	if !settled {
		out, _, _ := c.micado("ps")
		t.Logf("micado ps:\n%s", out)
		out, _, _ = c.micado("nodes")
		t.Logf("micado nodes:\n%s", out)
		for _, m := range byComponent("manager") {
			if logs, err := exec.Command("docker", "logs", "--tail", "100", m.ID).CombinedOutput(); err == nil {
				t.Logf("%s's last log lines:\n%s", m.Labels[wire.LabelNode], logs)
			}
		}
		t.Fatalf("the cluster did not settle: %s", strings.Join(last.problems, "; "))
	}
	if managerKills < 20 {
		t.Fatalf("only %d manager kills", managerKills)
	}
	if managers > 1 {
		// Never two managers acting at once: the journaled events (only a
		// leader's writes land) in the order of the log and of time.
		pairs, _, err := kv.List("micado/"+c.name+"/events/", nil)
		if err != nil {
			t.Fatal(err)
		}
		// The log is journaled in chunks: events/<first seq> holds a JSON
		// array of events.
		var evs []manager.Event
		for _, p := range pairs {
			var chunk []manager.Event
			if err := json.Unmarshal(p.Value, &chunk); err != nil {
				t.Fatalf("event chunk %s: %v", p.Key, err)
			}
			evs = append(evs, chunk...)
		}
		// Every lead starts with a leader event: at least one per kill.
		leads := 0
		for _, e := range evs {
			if e.Kind == manager.EventLeader {
				leads++
			}
		}
		if leads < managerKills {
			t.Fatalf("the journaled event log holds %d events, %d of them leader events, after %d kills of the leader", len(evs), leads, managerKills)
		}
		sort.Slice(evs, func(i, j int) bool { return evs[i].Seq < evs[j].Seq })
		checkOneLeaderAtATime(t, evs)
		sort.SliceStable(evs, func(i, j int) bool { return evs[i].Time.Before(evs[j].Time) })
		checkOneLeaderAtATime(t, evs)
		if partitions < 2 {
			t.Fatalf("only %d partitions of the leader", partitions)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// startContainer starts a container the suite stopped; it may already run
// (a restart policy) or be gone (scale-in terminated it meanwhile).
func startContainer(t *testing.T, c *testCluster, id string) {
	t.Helper()
	if err := c.dc.ContainerStart(context.Background(), id, container.StartOptions{}); err != nil &&
		!strings.Contains(err.Error(), "No such container") && !strings.Contains(err.Error(), "already") {
		t.Fatalf("restart container %.12s: %v", id, err)
	}
}

// injectWorkerFault pauses, disconnects or kills one worker container for
// d, then brings it back. A worker that scale-in removes meanwhile is fine.
func injectWorkerFault(t *testing.T, c *testCluster, kind, id, netName string, d time.Duration) {
	t.Helper()
	ctx := context.Background()
	gone := func(err error) bool { return err != nil && strings.Contains(err.Error(), "No such container") }
	switch kind {
	case "pause":
		if err := c.dc.ContainerPause(ctx, id); err != nil {
			if gone(err) || strings.Contains(err.Error(), "is not running") {
				return
			}
			t.Fatalf("pause worker: %v", err)
		}
		time.Sleep(d)
		if err := c.dc.ContainerUnpause(ctx, id); err != nil && !gone(err) {
			t.Fatalf("unpause worker: %v", err)
		}
	case "disconnect":
		ci, err := c.dc.ContainerInspect(ctx, id)
		if err != nil {
			if gone(err) {
				return
			}
			t.Fatal(err)
		}
		ep := ci.NetworkSettings.Networks[netName]
		if ep == nil {
			return
		}
		if err := c.dc.NetworkDisconnect(ctx, netName, id, true); err != nil {
			if gone(err) {
				return
			}
			t.Fatalf("disconnect worker: %v", err)
		}
		time.Sleep(d)
		// Docker may hand out another address on reconnect: the agent
		// follows it.
		err = c.dc.NetworkConnect(ctx, netName, id, &network.EndpointSettings{Aliases: ep.Aliases})
		if err != nil && !gone(err) {
			t.Fatalf("reconnect worker: %v", err)
		}
	case "kill":
		if err := c.dc.ContainerKill(ctx, id, "KILL"); err != nil {
			if gone(err) || strings.Contains(err.Error(), "is not running") {
				return
			}
			t.Fatalf("kill worker: %v", err)
		}
		time.Sleep(d)
		startContainer(t, c, id)
	}
}

// settleReport is one look at the cluster against the user's intents.
type settleReport struct {
	services, desired         int
	lost, duplicates, orphans int
	unsettled                 int
	problems                  []string
}

func (r settleReport) ok() bool {
	return r.lost == 0 && r.duplicates == 0 && r.orphans == 0 && r.unsettled == 0
}

func (r *settleReport) problem(kind *int, format string, args ...any) {
	*kind++
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

func (c *testCluster) settleCheck(t *testing.T, intents map[string]*intent) settleReport {
	var r settleReport
	ctx := context.Background()
	cl := c.consul()
	// Desired state as the manager holds it.
	var views []manager.ContainerView
	out, _, err := c.micado("ps", "--json")
	if err == nil {
		err = json.Unmarshal([]byte(out), &views)
	}
	if err != nil {
		r.problem(&r.unsettled, "ps: %v", err)
		return r
	}
	records := map[string]int{}
	running := map[string]int{}
	for _, v := range views {
		records[v.Service]++
		if v.State == manager.StateRunning {
			running[v.Service]++
		}
	}
	// What Docker runs.
	f := filters.NewArgs(filters.Arg("label", wire.LabelCluster+"="+c.name), filters.Arg("label", wire.LabelComponent+"=app"))
	apps, err := c.dc.ContainerList(ctx, container.ListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	copies := map[string]int{}
	perService := map[string]int{}
	for _, a := range apps {
		copies[a.Labels[wire.LabelInstance]]++
		perService[a.Labels[wire.LabelService]]++
	}
	for inst, n := range copies {
		if n > 1 {
			r.problem(&r.duplicates, "%s runs %d copies", inst, n)
		}
	}
	for name, in := range intents {
		want := in.replicas
		if in.stopped {
			want = 0
		}
		got := records[name]
		switch {
		case in.ambiguous && (got == 0 || got == in.replicas):
			want = got // either outcome is right, never half
		case got < want:
			r.problem(&r.lost, "%s: %d of %d containers recorded", name, got, want)
			continue
		case got > want:
			r.problem(&r.duplicates, "%s: %d containers recorded, want %d", name, got, want)
			continue
		}
		if want > 0 {
			r.services++
			r.desired += want
		}
		if running[name] != want {
			r.problem(&r.unsettled, "%s: %d of %d running", name, running[name], want)
		}
		if perService[name] > want {
			r.problem(&r.duplicates, "%s: Docker runs %d containers, want %d", name, perService[name], want)
		} else if perService[name] < want {
			r.problem(&r.unsettled, "%s: Docker runs %d containers, want %d", name, perService[name], want)
		}
		es, _, err := cl.Health().Service(name, "", false, nil)
		if err != nil {
			r.problem(&r.unsettled, "consul: %v", err)
			continue
		}
		pass := 0
		for _, e := range es {
			if e.Checks.AggregatedStatus() == "passing" {
				pass++
			}
		}
		if len(es) > want {
			r.problem(&r.duplicates, "%s: %d registrations in Consul, want %d", name, len(es), want)
		} else if pass != want {
			r.problem(&r.unsettled, "%s: %d of %d passing in Consul", name, pass, want)
		}
	}
	for svc := range perService {
		if _, ok := intents[svc]; !ok {
			r.problem(&r.duplicates, "Docker runs %s, which nobody launched", svc)
		}
	}
	// Instances: every worker container is one the manager knows, and
	// every instance the manager knows has a running worker.
	insts, _, err := cl.KV().List("micado/"+c.name+"/instances/", nil)
	if err != nil {
		r.problem(&r.unsettled, "consul: %v", err)
		return r
	}
	known := map[string]bool{}
	for _, p := range insts {
		known[strings.TrimPrefix(p.Key, "micado/"+c.name+"/instances/")] = true
	}
	for _, w := range c.workerContainers() {
		node := w.Labels[wire.LabelNode]
		if !known[node] {
			r.problem(&r.orphans, "worker container %s is no instance the manager knows", node)
		} else if w.State != "running" {
			r.problem(&r.unsettled, "worker %s is %s", node, w.State)
		}
		delete(known, node)
	}
	for node := range known {
		r.problem(&r.unsettled, "instance %s is recorded but has no worker container", node)
	}
	return r
}
