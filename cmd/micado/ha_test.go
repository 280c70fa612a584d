package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// leaderNode returns the manager that leads, as `micado nodes` says.
func (c *testCluster) leaderNode() (manager.MemberView, []manager.MemberView) {
	c.t.Helper()
	var ns []manager.MemberView
	if err := json.Unmarshal([]byte(c.mustMicado("nodes", "--json")), &ns); err != nil {
		c.t.Fatal(err)
	}
	var ms []manager.MemberView
	var l manager.MemberView
	for _, n := range ns {
		if n.Kind == wire.KindManager {
			ms = append(ms, n)
			if n.Leader {
				l = n
			}
		}
	}
	return l, ms
}

// containerName is the Docker container of a node of the cluster.
func (c *testCluster) containerName(node string) string { return "micado-" + c.name + "-" + node }

// TestManagersAndConsulServersFailOver: with three managers and three
// Consul servers, kill -9 of the leading manager is ridden out by the
// CLI (a launch right after it succeeds once a standby leads), nothing
// that ran is lost, the old leader comes back as a standby, and killing a
// Consul server (the client agent the managers talk to stays) changes
// nothing a user sees.
func TestManagersAndConsulServersFailOver(t *testing.T) {
	c := newTestCluster(t, "--managers", "3", "--consul-servers", "3", "--workers", "2", "--roles", "app", "--provider", "none")
	ctx := context.Background()
	if st := c.state(); len(st.Managers) != 3 {
		t.Fatalf("cluster.json lists %d managers", len(st.Managers))
	}
	l, ms := c.leaderNode()
	if len(ms) != 3 || l.Name == "" || l.Term == 0 {
		t.Fatalf("managers %+v, leader %+v", ms, l)
	}
	out := c.mustMicado("nodes")
	if !strings.Contains(out, "MANAGER") || !strings.Contains(out, "leader") || strings.Count(out, "standby") != 2 {
		t.Fatalf("nodes table:\n%s", out)
	}
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "web", "--replicas", "2", "--memory", "64MiB", "--port", "8080", "--health-path", "/health")

	// kill -9 the leader: the next command waits for a standby to lead.
	if err := c.dc.ContainerKill(ctx, c.containerName(l.Name), "KILL"); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "api", "--memory", "32MiB", "--port", "8080", "--health-path", "/health")
	t.Logf("a launch right after kill -9 of the leader %s succeeded after %s", l.Name, time.Since(killed).Round(100*time.Millisecond))
	l2, _ := c.leaderNode()
	if l2.Name == "" || l2.Name == l.Name || l2.Term <= l.Term {
		t.Fatalf("after the kill: leader %+v (was %+v)", l2, l)
	}
	eventually(t, time.Minute, "web and api pass", func() (bool, string) {
		pass := map[string]int{}
		for _, x := range c.ps() {
			if x.State == manager.StateRunning && x.Health == "passing" {
				pass[x.Service]++
			}
		}
		return pass["web"] == 2 && pass["api"] == 1, fmt.Sprint(pass)
	})
	if n := len(c.appContainers("web")); n != 2 {
		t.Fatalf("Docker runs %d web containers after the failover", n)
	}
	// The old leader comes back and stands by.
	if err := c.dc.ContainerStart(ctx, c.containerName(l.Name), container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "three managers, one leader", func() (bool, string) {
		l3, ms := c.leaderNode()
		alive := 0
		for _, m := range ms {
			if m.Status == "alive" {
				alive++
			}
		}
		return alive == 3 && l3.Name == l2.Name, fmt.Sprintf("%+v", ms)
	})

	// A Consul server dies: Raft keeps its quorum, nothing changes.
	if err := c.dc.ContainerKill(ctx, c.containerName("consul-2"), "KILL"); err != nil {
		t.Fatal(err)
	}
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "db", "--memory", "32MiB", "--port", "8080", "--health-path", "/health")
	c.mustMicado("stop", "api")
	eventually(t, time.Minute, "web and db pass, api is gone, with one Consul server down", func() (bool, string) {
		pass := map[string]int{}
		for _, x := range c.ps() {
			if x.State == manager.StateRunning && x.Health == "passing" {
				pass[x.Service]++
			}
			if x.Service == "api" {
				return false, "api is still recorded"
			}
		}
		return pass["web"] == 2 && pass["db"] == 1, fmt.Sprint(pass)
	})
	// The events say who decided, and terms only grew.
	var evs []manager.Event
	if err := json.Unmarshal([]byte("["+strings.Join(strings.Split(strings.TrimSpace(c.mustMicado("events", "--json", "-n", "1000")), "\n"), ",")+"]"), &evs); err != nil {
		t.Fatal(err)
	}
	checkOneLeaderAtATime(t, evs)
}

// checkOneLeaderAtATime fails when the event log shows two managers acting
// at once: in the order of the log and in time, the term never goes back.
func checkOneLeaderAtATime(t *testing.T, evs []manager.Event) {
	t.Helper()
	if len(evs) == 0 {
		t.Fatal("no events to check")
	}
	var term uint64
	var by string
	leaders := map[string]bool{}
	for _, e := range evs {
		if e.Term < term {
			t.Fatalf("event %d (%s by %s in term %d) follows events of term %d by %s: two managers acted at once", e.Seq, e.Kind, e.Manager, e.Term, term, by)
		}
		term, by = e.Term, e.Manager
		leaders[e.Manager] = true
	}
	t.Logf("%d events by %d managers, terms growing", len(evs), len(leaders))
}
