package manager

import (
	"context"
	"sync"
	"time"

	"github.com/micado-scale/micado/worker"
)

// unknownWorkerGrace is how long after its start the manager waits for a
// worker that holds containers to show up in gossip before it places them
// elsewhere: long enough for live workers to rejoin (they retry every few
// seconds), short enough that a worker lost during a manager outage does
// not hold its containers for long.
const unknownWorkerGrace = 20 * time.Second

// reconcile compares the desired state (Consul KV) with what the workers
// run and what Consul has registered, and repairs the difference:
//   - a container that should run but does not is started again, or placed
//     on another worker when its worker is gone;
//   - a copy that runs but is not recorded is adopted when it is the one
//     the record expects, otherwise stopped (an orphan);
//   - a running container without its registration is registered again
//     (after a Consul restart), and a registration with no container is
//     removed;
//   - stops interrupted by a crash are finished.
func (m *Manager) reconcile(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// Observe first, then read the desired state: a container or a
	// registration is only ever created after its record is written, so
	// anything observed that has no record is truly an orphan.
	actual, reached := m.observe(ctx)
	regs, err := m.reg.services(ctx)
	if err != nil {
		return err
	}
	recs, err := m.store.list(ctx)
	if err != nil {
		return err
	}
	byName := map[string]*Container{}
	var pending []*Container
	for _, c := range recs {
		byName[c.Name] = c
		switch c.State {
		case StateStopping:
			go func(name string) {
				if err := m.stopOne(context.WithoutCancel(ctx), name); err != nil {
					m.log.Warn("stop incomplete; will retry", "container", name, "err", err)
				}
			}(c.Name)
		case StatePending:
			pending = append(pending, c)
		case StateStarting, StateRunning:
			if c.Move != nil {
				if !m.isMoving(c.Name) {
					// A move interrupted by a manager restart: roll it back;
					// the old copy never stopped.
					go m.rollbackMove(context.WithoutCancel(ctx), c.Name, "the manager restarted during the move")
				}
				continue
			}
			w, known := m.members.get(c.Node)
			if !known || w.Status != "alive" {
				switch {
				case known:
					if m.requeue(ctx, c, "worker "+c.Node+" is "+w.Status) {
						m.log.Warn("worker is gone; placing its container again", "container", c.Name, "worker", c.Node)
						m.event(EventRequeued, c.Name, "worker %s is %s; placing it again", c.Node, w.Status)
						pending = append(pending, c)
					}
				case time.Since(m.started) > unknownWorkerGrace:
					// The worker died while no manager was watching: gossip
					// will never report it, so it would hold the container
					// for ever.
					if m.requeue(ctx, c, "worker "+c.Node+" has not been seen since the manager started") {
						m.log.Warn("worker not seen since the manager started; placing its container again", "container", c.Name, "worker", c.Node)
						m.event(EventRequeued, c.Name, "worker %s has not been seen since the manager started; placing it again", c.Node)
						pending = append(pending, c)
					}
				}
				continue
			}
			if !reached[c.Node] {
				continue // cannot tell; try next round
			}
			copies := actual[c.Name]
			var mine *worker.ContainerInfo
			for i := range copies {
				if copies[i].Node == c.Node && copies[i].Generation == c.Generation && copies[i].State == "running" {
					mine = &copies[i]
				}
			}
			switch {
			case mine == nil:
				if c.State == StateRunning {
					m.log.Warn("container is missing from its worker; starting it again", "container", c.Name, "worker", c.Node)
					m.event(EventRecovered, c.Name, "missing from %s; starting it again", c.Node)
					_, _ = m.store.update(ctx, c.Name, func(c *Container) error {
						if c.State != StateRunning {
							return ErrConflict
						}
						c.State = StateStarting
						c.Reason = "container disappeared from " + c.Node
						return nil
					})
				}
				go m.start(context.WithoutCancel(ctx), c.Name)
			case c.State == StateStarting || c.ContainerID != mine.ID:
				m.adoptRunning(ctx, c.Name, *mine)
			default:
				if _, ok := regs[c.ServiceID()]; !ok {
					m.log.Info("registration missing; registering again", "container", c.Name)
					m.event(EventRecovered, c.Name, "its Consul registration was missing; registered again")
					if err := m.reg.register(ctx, c); err != nil {
						m.log.Warn("register failed", "container", c.Name, "err", err)
					}
				}
			}
		}
	}
	m.reconcileInstances(ctx)
	m.reconcileApps(ctx)
	if len(pending) > 0 {
		m.placePending(ctx)
	}
	// Copies nobody asked for: stop them.
	for name, copies := range actual {
		c := byName[name]
		for _, cp := range copies {
			// A copy of an older generation on the same worker is stale too:
			// the worker was cut off, its container placed again, and the
			// new copy landed on the same worker once it came back.
			if c != nil && cp.Node == c.Node && (cp.Generation == c.Generation || c.State == StateStopping) &&
				(c.State == StateRunning || c.State == StateStarting || c.State == StateStopping) {
				continue
			}
			if c != nil && c.Move != nil && cp.Node == c.Move.Node && cp.Generation == c.Move.Generation {
				continue // the new copy of a move in progress
			}
			if c != nil && c.State == StatePending {
				continue
			}
			w, ok := m.members.get(cp.Node)
			if !ok || w.Load.API == "" || !m.claim(name) {
				continue
			}
			m.log.Warn("stopping a copy that is not desired", "container", name, "worker", cp.Node)
			m.event(EventRecovered, name, "stopped a copy on %s (generation %d) that is not desired", cp.Node, cp.Generation)
			if _, err := m.agents.Stop(ctx, w.Load.API, name, cp.Generation); err != nil {
				m.log.Warn("stop orphan failed", "container", name, "err", err)
			}
			m.release(name)
		}
	}
	// Registrations with no running container behind them.
	valid := map[string]bool{}
	for _, c := range recs {
		switch c.State {
		case StateRunning, StateStarting:
			valid[c.ServiceID()] = true
			if c.Move != nil {
				valid[serviceID(c.Name, c.Move.Generation)] = true
			}
		}
	}
	for id, svc := range regs {
		if valid[id] || m.isMoving(svc.Meta[MetaInstance]) {
			continue
		}
		m.log.Info("removing a stale registration", "service_id", id)
		_ = m.reg.deregister(ctx, id)
	}
	return nil
}

// observe asks every alive worker which containers it runs. It returns
// the copies by instance name and which workers answered.
func (m *Manager) observe(ctx context.Context) (map[string][]worker.ContainerInfo, map[string]bool) {
	var mu sync.Mutex
	actual := map[string][]worker.ContainerInfo{}
	reached := map[string]bool{}
	var wg sync.WaitGroup
	for _, w := range m.members.workers() {
		if w.Status != "alive" || w.Load.API == "" {
			continue
		}
		wg.Add(1)
		go func(w member) {
			defer wg.Done()
			// Agents answer in milliseconds; a short bound keeps one dead
			// worker from holding up the whole round.
			lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			cs, err := m.agents.List(lctx, w.Load.API)
			if err != nil {
				m.log.Warn("cannot list a worker's containers", "worker", w.Name, "err", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			reached[w.Name] = true
			for _, c := range cs {
				actual[c.Instance] = append(actual[c.Instance], c)
			}
		}(w)
	}
	wg.Wait()
	return actual, reached
}

func (m *Manager) adoptRunning(ctx context.Context, name string, info worker.ContainerInfo) {
	if !m.claim(name) {
		return
	}
	defer m.release(name)
	c, err := m.store.update(ctx, name, func(c *Container) error {
		if c.State != StateStarting && c.State != StateRunning {
			return ErrConflict
		}
		adopt(c, info)
		return nil
	})
	if err != nil {
		return
	}
	m.log.Info("adopted a running copy", "container", name, "worker", c.Node)
	if err := m.reg.register(ctx, c); err != nil {
		m.log.Warn("register failed", "container", name, "err", err)
	}
}

// requeue puts a container whose worker is gone back to pending.
// Only a record still on that worker is changed, so the dead-worker
// handler and a reconciliation may both try it.
func (m *Manager) requeue(ctx context.Context, c *Container, why string) bool {
	node, gen := c.Node, c.Generation
	_, err := m.store.update(ctx, c.Name, func(c *Container) error {
		if c.Node != node || c.Generation != gen || (c.State != StateRunning && c.State != StateStarting) {
			return ErrConflict
		}
		c.State = StatePending
		c.Reason = why
		c.Node = ""
		c.ContainerID = ""
		c.Bindings = nil
		c.Generation++
		c.UpdatedAt = time.Now().UTC()
		c.PendingSince = c.UpdatedAt
		return nil
	})
	if err != nil {
		return false
	}
	_ = m.reg.deregister(ctx, serviceID(c.Name, gen))
	return true
}

// workerDied places the containers of a worker memberlist declared dead
// at once, without waiting for the next reconciliation (which may itself
// be waiting on the dead worker's agent).
func (m *Manager) workerDied(ctx context.Context, node string) {
	recs, err := m.store.list(ctx)
	if err != nil {
		return
	}
	n := 0
	for _, c := range recs {
		if c.Node != node || c.Move != nil || (c.State != StateRunning && c.State != StateStarting) {
			continue
		}
		if m.requeue(ctx, c, "worker "+node+" is dead") {
			m.log.Warn("worker is gone; placing its container again", "container", c.Name, "worker", node)
			m.event(EventRequeued, c.Name, "worker %s is dead; placing it again", node)
			n++
		}
	}
	if n > 0 {
		m.placePending(ctx)
	}
}
