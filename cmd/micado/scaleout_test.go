package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// workerContainers lists the worker-agent containers of the cluster.
func (c *testCluster) workerContainers() []container.Summary {
	c.t.Helper()
	f := filters.NewArgs(filters.Arg("label", wire.LabelCluster+"="+c.name), filters.Arg("label", wire.LabelComponent+"=worker"))
	cs, err := c.dc.ContainerList(context.Background(), container.ListOptions{All: true, Filters: f})
	if err != nil {
		c.t.Fatal(err)
	}
	return cs
}

func TestScaleOutWithTheDockerProvider(t *testing.T) {
	c := newTestCluster(t, "--workers", "1", "--roles", "proxy", "--worker-memory", "512MiB")
	cl := c.consul()

	t.Run("launching more than fits starts a new worker; held replicas run there", func(t *testing.T) {
		out, errOut, err := c.micado("launch", "micado/demo-web", "--role", "proxy", "--memory", "200MiB", "--replicas", "4", "--port", "8080")
		if err != nil {
			t.Fatalf("launch: %v\n%s\n%s", err, out, errOut)
		}
		if !strings.Contains(errOut, "waiting for instance w-proxy-") || !strings.Contains(errOut, "to join") {
			t.Errorf("launch did not show what it waits for:\n%s", errOut)
		}
		es := passing(t, cl, "demo-web")
		if len(es) != 4 {
			t.Fatalf("%d demo-web instances pass, want 4", len(es))
		}
		byNode := map[string]int{}
		for _, e := range es {
			for _, tag := range e.Service.Tags {
				if n, ok := strings.CutPrefix(tag, "node="); ok {
					byNode[n]++
				}
			}
		}
		if byNode["w-1"] != 2 || len(byNode) != 2 {
			t.Fatalf("replicas by node %v: want 2 on w-1 and 2 on one new worker", byNode)
		}
		ws := c.workerContainers()
		if len(ws) != 2 {
			t.Fatalf("%d worker containers, want 2", len(ws))
		}
		var ns []manager.MemberView
		if err := json.Unmarshal([]byte(c.mustMicado("nodes", "--json")), &ns); err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if n.Kind == wire.KindManager {
				continue
			}
			if n.Status != "alive" || !contains(n.Tags, "role=proxy") {
				t.Errorf("node %+v", n)
			}
		}
	})

	t.Run("a request that fits on an instance on its way does not ask for another", func(t *testing.T) {
		before := len(c.workerContainers())
		// Both workers now hold 400MiB of their 460.8 usable. The first
		// launch needs one new instance with room to spare; the second
		// fits into that instance while it boots.
		c.mustMicado("launch", "micado/demo-web", "--role", "proxy", "--name", "a", "--memory", "300MiB", "--port", "8080", "--detach")
		ps := c.ps()
		for _, x := range ps {
			if x.Service == "a" && (x.State != manager.StatePending || !strings.Contains(x.Reason, "waiting for instance")) {
				t.Errorf("a detached held launch shows %s: %s", x.State, x.Reason)
			}
		}
		c.mustMicado("launch", "micado/demo-web", "--role", "proxy", "--name", "b", "--memory", "100MiB", "--port", "8080")
		eventually(t, 2*time.Minute, "a and b pass", func() (bool, string) {
			a, b := passing(t, cl, "a"), passing(t, cl, "b")
			return len(a) == 1 && len(b) == 1, fmt.Sprintf("a %d b %d", len(a), len(b))
		})
		if got := len(c.workerContainers()); got != before+1 {
			t.Fatalf("%d worker containers, want %d: the second request asked for another instance", got, before+1)
		}
	})

	t.Run("events and explain say what happened and why", func(t *testing.T) {
		events := func() []manager.Event {
			var evs []manager.Event
			for _, line := range strings.Split(strings.TrimSpace(c.mustMicado("events", "--json")), "\n") {
				var e manager.Event
				if err := json.Unmarshal([]byte(line), &e); err != nil {
					t.Fatalf("events --json line %q: %v", line, err)
				}
				evs = append(evs, e)
			}
			return evs
		}
		find := func(evs []manager.Event, kind, subject, text string) bool {
			for _, e := range evs {
				if e.Kind == kind && strings.HasPrefix(e.Subject, subject) && strings.Contains(e.Message, text) {
					return true
				}
			}
			return false
		}
		evs := events()
		for _, want := range []struct{ kind, subject, text string }{
			{manager.EventPlaced, "demo-web-1", "w-1"},
			{manager.EventPending, "demo-web-3", "asking the cloud for an instance"},
			{manager.EventScaleOut, "w-proxy-", "instance (role=proxy"},
			{manager.EventJoined, "w-proxy-", "joined"},
			{manager.EventRunning, "demo-web-4", "registered in Consul"},
		} {
			if !find(evs, want.kind, want.subject, want.text) {
				t.Errorf("no %s event for %s saying %q in:\n%s", want.kind, want.subject, want.text, c.mustMicado("events"))
			}
		}
		for i := 1; i < len(evs); i++ {
			if evs[i].Seq <= evs[i-1].Seq {
				t.Fatalf("events out of order: %d after %d", evs[i].Seq, evs[i-1].Seq)
			}
		}
		if out := c.mustMicado("events", "-n", "3"); strings.Count(out, "\n") != 3 {
			t.Errorf("events -n 3 printed:\n%s", out)
		}

		// explain: where a replica runs, and why not elsewhere.
		var where string
		for _, x := range c.ps() {
			if x.Name == "demo-web-3" {
				where = x.Node
			}
		}
		out := c.mustMicado("explain", "demo-web-3")
		for _, want := range []string{"demo-web-3 is running on " + where, "Placed there because:", "WORKER", "w-1", "rejected by memory"} {
			if !strings.Contains(out, want) {
				t.Errorf("explain demo-web-3 lacks %q:\n%s", want, out)
			}
		}
		if _, errOut, err := c.micado("explain", "nosuch"); err == nil || !strings.Contains(errOut, "no container or service named nosuch") {
			t.Errorf("explain of an unknown name: %v %s", err, errOut)
		}
		if _, errOut, err := c.micado("events", "-n", "-2"); err == nil || !strings.Contains(errOut, "--last (-n) -2 must not be negative") {
			t.Errorf("events -n -2: %v %s", err, errOut)
		}

		// --follow prints new events as they happen.
		last := evs[len(evs)-1].Seq
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		follow := exec.CommandContext(ctx, micadoBin, "events", "--follow", "--since", fmt.Sprint(last))
		follow.Env = append(os.Environ(), "MICADO_HOME="+c.home, "MICADO_CLUSTER="+c.name, "MICADO_ADDR=", "MICADO_TOKEN=")
		var buf syncBuffer
		follow.Stdout = &buf
		if err := follow.Start(); err != nil {
			t.Fatal(err)
		}
		c.mustMicado("stop", "b")
		eventually(t, 30*time.Second, "events --follow shows the stop", func() (bool, string) {
			return strings.Contains(buf.String(), "stopped") && strings.Contains(buf.String(), "b-1"), buf.String()
		})
		cancel()
		_ = follow.Wait()

		// Events survive a manager restart: they are kept in Consul KV.
		mgr := "micado-" + c.name + "-manager"
		if err := c.dc.ContainerKill(context.Background(), mgr, "KILL"); err != nil {
			t.Fatal(err)
		}
		if err := c.dc.ContainerStart(context.Background(), mgr, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "the restarted manager still lists the earlier events", func() (bool, string) {
			out, errOut, err := c.micado("events", "--json")
			return err == nil && strings.Contains(out, `"kind":"scale-out"`) && strings.Contains(out, `"subject":"b-1"`), out + errOut
		})
	})

	t.Run("a request no instance type can hold fails at once", func(t *testing.T) {
		kv := c.kvCount()
		_, errOut, err := c.micado("launch", "micado/demo-web", "--role", "proxy", "--name", "huge", "--memory", "3GiB")
		if err == nil || !strings.Contains(errOut, "more than any instance type can hold") {
			t.Fatalf("huge launch: %v %s", err, errOut)
		}
		if c.kvCount() != kv {
			t.Fatal("a refused launch changed the desired state")
		}
	})
}

func TestScaleOutJoinTimeoutAndSweep(t *testing.T) {
	// New workers run an image that never joins (the demo web server), so
	// every instance asked for times out.
	c := newTestCluster(t, "--workers", "1", "--roles", "proxy", "--worker-memory", "256MiB",
		"--scale-image", "micado/demo-web:latest", "--join-timeout", "10s", "--instance-types", "small=512MiB")
	ctx := context.Background()
	st := c.state()

	// An instance of this cluster that nobody asked for: the sweep removes it.
	stray, err := c.dc.ContainerCreate(ctx, &container.Config{Image: "micado/demo-web:latest",
		Labels: map[string]string{wire.LabelCluster: c.name, wire.LabelComponent: "worker", wire.LabelNode: "w-stray"}},
		&container.HostConfig{}, &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{st.Network: {}}}, nil, "micado-"+c.name+"-w-stray")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.dc.ContainerStart(ctx, stray.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}

	c.mustMicado("launch", "micado/demo-web", "--role", "proxy", "--memory", "300MiB", "--port", "8080", "--detach")
	eventually(t, 3*time.Minute, "the held container fails after its instances never join", func() (bool, string) {
		for _, x := range c.ps() {
			if x.Name == "demo-web-1" {
				return x.State == manager.StateFailed && strings.Contains(x.Reason, "did not join within 10s"), string(x.State) + ": " + x.Reason
			}
		}
		return false, "no record"
	})
	eventually(t, time.Minute, "no instance is left but the first worker", func() (bool, string) {
		ws := c.workerContainers()
		names := []string{}
		for _, w := range ws {
			names = append(names, w.Labels[wire.LabelNode])
		}
		return len(ws) == 1 && ws[0].Labels[wire.LabelNode] == "w-1", strings.Join(names, ",")
	})
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
