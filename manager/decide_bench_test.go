package manager

import (
	"fmt"
	"testing"
	"time"

	"github.com/micado-scale/micado/internal/wire"
)

// benchView builds a reconciliation's view of nWorkers workers running
// nContainers containers, all as recorded: nothing to repair.
func benchView(nWorkers, nContainers int) reconcileView {
	s := newStore(NewMemJournal(nil), Fence{}, nil)
	workers := map[string]member{}
	observed := map[string]*observation{}
	regs := newRegSet(nContainers)
	for j := range nWorkers {
		name := fmt.Sprintf("w-%d", j+1)
		workers[name] = member{Name: name, Status: MemberAlive, Load: wire.Load{Kind: wire.KindWorker, Digest: 1}}
		observed[name] = &observation{copies: map[string]copyInfo{}, digest: 1}
	}
	spec := &Spec{Service: "web", Image: "x", Memory: 1 << 20, Check: Check{Type: "tcp"}}
	for i := range nContainers {
		node := fmt.Sprintf("w-%d", i%nWorkers+1)
		c := &Container{Name: fmt.Sprintf("web-%d", i+1), Spec: spec, State: StateRunning, Node: node,
			ContainerID: fmt.Sprintf("%064x", i), Generation: i % 3}
		s.insert(c)
		observed[node].add(c.Name, copyInfo{Generation: c.Generation, Running: true, idHash: c.idHash})
		regs.add(regKey{c.Name, c.Generation})
	}
	return reconcileView{containers: s.allLocked(), lookup: func(n string) *Container { return s.containers[n] },
		onNode:  func(n string) map[string]*Container { return s.byNode[n] },
		workers: workers, observed: observed, scan: observed, registered: regs, regsKnown: true, moving: func(string) bool { return false },
		following: time.Hour}
}

// BenchmarkDecideRepairs100k is one full reconciliation's decision over
// 100,000 containers on 5,000 workers with nothing to repair.
func BenchmarkDecideRepairs100k(b *testing.B) {
	v := benchView(5000, 100_000)
	b.ResetTimer()
	for range b.N {
		if r := decideRepairs(v); !r.empty() {
			b.Fatalf("repairs: %+v", r)
		}
	}
}
