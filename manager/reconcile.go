package manager

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"
)

// unknownWorkerGrace is how long after it began to follow gossip a
// manager waits for a worker that holds containers to show up before it
// places them elsewhere: long enough for live workers to rejoin (they
// retry every few seconds), short enough that a worker lost while no
// manager watched does not hold its containers for long.
const unknownWorkerGrace = 20 * time.Second

// repairs is what one reconciliation decided, as data: decideRepairs
// computes it from memory alone, and execute carries it out.
type repairs struct {
	finishStops   []string        // records marked stopping: deregister, stop, forget
	rollbackMoves []string        // moves a crashed leader left unfinished
	requeue       []requeueAction // containers whose worker is gone
	restart       []string        // running records whose copy vanished
	start         []string        // starting records to start (again)
	adopt         []adoptAction   // copies that run as the record expects, not yet recorded
	register      []string        // running records whose registration is missing
	stopCopies    []stopAction    // copies no record asks for
	deregister    []string        // registrations no record asks for
	placePending  bool            // pending containers wait
}

type requeueAction struct {
	name, node string
	generation int
	why        string
}

type adoptAction struct {
	name, node string
	copy       copyInfo
}

type stopAction struct {
	name, node, api string
	generation      int
}

// empty reports whether nothing needs doing.
func (r *repairs) empty() bool {
	return len(r.finishStops)+len(r.rollbackMoves)+len(r.requeue)+len(r.restart)+len(r.start)+len(r.adopt)+
		len(r.register)+len(r.stopCopies)+len(r.deregister) == 0 && !r.placePending
}

// reconcileView is everything a reconciliation decides on.
type reconcileView struct {
	containers []*Container                // every record, sorted
	lookup     func(string) *Container     // one record by name
	workers    map[string]member           // every worker gossip knows, alive or dead
	observed   map[string]*observation     // the workers whose containers are known now
	registered map[string]string           // registration service ID → container
	moving     func(container string) bool // a move of this container is in progress
	// following is how long this manager has followed gossip.
	following time.Duration
}

// decideRepairs compares the desired state with what the workers run and
// what is registered, and says what to repair:
//   - a container that should run but does not is started again, or placed
//     on another worker when its worker is gone;
//   - a copy that runs but is not recorded is adopted when it is the one
//     the record expects, otherwise stopped;
//   - a running container without its registration is registered again,
//     and a registration with no container is removed;
//   - stops and moves interrupted by a crash are finished or rolled back.
//
// It does no I/O and changes nothing.
func decideRepairs(v reconcileView) repairs {
	var r repairs
	for _, c := range v.containers {
		switch c.State {
		case StateStopping:
			r.finishStops = append(r.finishStops, c.Name)
		case StatePending:
			r.placePending = true
		case StateStarting, StateRunning:
			if c.Move != nil {
				if !v.moving(c.Name) {
					r.rollbackMoves = append(r.rollbackMoves, c.Name)
				}
				continue
			}
			w, known := v.workers[c.Node]
			if !known || w.Status != statusAlive {
				switch {
				case known:
					r.requeue = append(r.requeue, requeueAction{name: c.Name, node: c.Node, generation: c.Generation,
						why: "worker " + c.Node + " is " + w.Status})
				case v.following > unknownWorkerGrace:
					// The worker died while no manager watched: gossip will
					// never report it, so it would hold the container for ever.
					r.requeue = append(r.requeue, requeueAction{name: c.Name, node: c.Node, generation: c.Generation,
						why: "worker " + c.Node + " has not been seen since the manager started"})
				}
				continue
			}
			ob, reached := v.observed[c.Node]
			if !reached {
				continue // cannot tell; try next round
			}
			var mine *copyInfo
			for i, cp := range ob.copies[c.Name] {
				if cp.Generation == c.Generation && cp.Running {
					mine = &ob.copies[c.Name][i]
				}
			}
			switch {
			case mine == nil && c.State == StateRunning:
				r.restart = append(r.restart, c.Name)
			case mine == nil:
				r.start = append(r.start, c.Name)
			case c.State == StateStarting || c.ContainerID != mine.ID:
				r.adopt = append(r.adopt, adoptAction{name: c.Name, node: c.Node, copy: *mine})
			default:
				if _, ok := v.registered[c.ServiceID()]; !ok {
					r.register = append(r.register, c.Name)
				}
			}
		}
	}
	// Copies nobody asked for.
	for node, ob := range v.observed {
		for name, copies := range ob.copies {
			c := v.lookup(name)
			for _, cp := range copies {
				if c != nil && copyWanted(c, node, cp.Generation) {
					continue
				}
				r.stopCopies = append(r.stopCopies, stopAction{name: name, node: node, api: ob.api, generation: cp.Generation})
			}
		}
	}
	// Registrations with no container behind them.
	for id, name := range v.registered {
		c := v.lookup(name)
		if c != nil && (c.State == StateRunning || c.State == StateStarting) &&
			(isServiceID(id, c.Name, c.Generation) || (c.Move != nil && isServiceID(id, c.Name, c.Move.Generation))) {
			continue
		}
		if v.moving(name) {
			continue
		}
		r.deregister = append(r.deregister, id)
	}
	return r
}

// copyWanted reports whether the desired state asks for the copy of c of
// the given generation on node.
func copyWanted(c *Container, node string, gen int) bool {
	switch {
	case c.State == StatePending:
		// Placed again soon; an older copy goes once the new one exists
		// (its generation will then be older than the record's).
		return true
	case c.Move != nil && node == c.Move.Node && gen == c.Move.Generation:
		return true // the new copy of a move in progress
	case node != c.Node:
		return false
	case c.State == StateStopping:
		return true // stopOne removes every copy
	case c.State == StateRunning || c.State == StateStarting:
		// A copy of another generation on the same worker is stale: the
		// worker was cut off, its container placed again, and the new
		// copy landed on the same worker once it came back.
		return gen == c.Generation
	}
	return false
}

// isServiceID reports whether id is serviceID(name, gen), without
// building it.
func isServiceID(id, name string, gen int) bool {
	if gen == 0 {
		return id == name
	}
	rest, ok := strings.CutPrefix(id, name)
	if !ok {
		return false
	}
	rest, ok = strings.CutPrefix(rest, ".g")
	return ok && rest == strconv.Itoa(gen)
}

// reconcile runs one round: observe, decide, act.
func (l *leader) reconcile(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	l.syncRegistry(ctx)
	// Observe first, then read the desired state: a container or a
	// registration is only ever created after its record is written, so
	// anything observed that has no record is truly an orphan.
	observed := l.observe(ctx)
	containers := l.store.All()
	// A worker whose containers changed since its list was taken (a start
	// answered meanwhile) cannot be judged this round: its list may lack a
	// copy the records, read after the list, already count as running. The
	// load report changes before the record does, so checking it after
	// reading the records is enough.
	workers := map[string]member{}
	for _, w := range l.m.members.workers() {
		workers[w.Name] = w
		if ob, ok := observed[w.Name]; ok && w.Load.Digest != 0 && !ob.fresh(w.Load) {
			delete(observed, w.Name)
		}
	}
	v := reconcileView{
		containers: containers,
		lookup: func(n string) *Container {
			c, _ := l.store.Container(n)
			return c
		},
		workers:    workers,
		observed:   observed,
		registered: l.m.regs.snapshot(),
		moving:     l.isMoving,
		following:  time.Since(l.m.started),
	}
	r := decideRepairs(v)
	l.execute(ctx, r)
	l.reconcileInstances(ctx)
	l.reconcileApps(ctx)
	l.rounds++
	l.m.metrics.reconciled(time.Since(start))
	return nil
}

// execute carries out what decideRepairs decided.
func (l *leader) execute(ctx context.Context, r repairs) {
	m := l.m
	for _, n := range r.finishStops {
		l.spawn(func(ctx context.Context) {
			if err := l.stopOne(ctx, n); err != nil && ctx.Err() == nil {
				m.log.Warn("stop incomplete; will retry", "container", n, "err", err)
			}
		})
	}
	for _, n := range r.rollbackMoves {
		l.spawn(func(ctx context.Context) { l.rollbackMove(ctx, n, "the leader changed during the move") })
	}
	requeued := 0
	for _, q := range r.requeue {
		if l.requeue(ctx, q.name, q.node, q.generation, q.why) {
			m.log.Warn("worker is gone; placing its container again", "container", q.name, "worker", q.node)
			m.event(EventRequeued, q.name, "%s; placing it again", q.why)
			requeued++
		}
	}
	for _, n := range r.restart {
		c, ok := l.store.Container(n)
		if !ok {
			continue
		}
		m.log.Warn("container is missing from its worker; starting it again", "container", n, "worker", c.Node)
		m.event(EventRecovered, n, "missing from %s; starting it again", c.Node)
		_, err := l.store.Modify(ctx, n, func(c *Container) error {
			if c.State != StateRunning {
				return ErrConflict
			}
			c.State = StateStarting
			c.Reason = "container disappeared from " + c.Node
			return nil
		})
		if err == nil {
			l.spawn(func(ctx context.Context) { l.start(ctx, n) })
		}
	}
	for _, n := range r.start {
		l.spawn(func(ctx context.Context) { l.start(ctx, n) })
	}
	for _, a := range r.adopt {
		l.adoptRunning(ctx, a.name, a.node, a.copy)
	}
	l.registerAll(ctx, r.register)
	if len(r.stopCopies) > 0 {
		l.stopCopies(ctx, r.stopCopies)
	}
	for _, id := range r.deregister {
		m.log.Info("removing a stale registration", "service_id", id)
		l.deregister(ctx, id)
	}
	if r.placePending || requeued > 0 {
		l.placePending(ctx)
	}
}

// stopCopies stops copies that no record asks for. A deposed leader must
// never do it on a stale view, so the lease is checked, and the fence
// proven against the journal, first.
func (l *leader) stopCopies(ctx context.Context, stops []stopAction) {
	if !l.acting() || l.store.checkFence(ctx) != nil {
		return
	}
	m := l.m
	for _, s := range stops {
		if !l.claim(s.name) {
			continue
		}
		m.log.Warn("stopping a copy that is not desired", "container", s.name, "worker", s.node)
		m.event(EventRecovered, s.name, "stopped a copy on %s (generation %d) that is not desired", s.node, s.generation)
		if _, err := l.agents.Stop(ctx, s.api, s.name, s.generation); err != nil {
			m.log.Warn("stop of a copy that is not desired failed", "container", s.name, "err", err)
		}
		l.release(s.name)
	}
}

// registerAll registers again running containers whose registration is
// missing (after a registry restart: possibly all of them), a few at a
// time.
func (l *leader) registerAll(ctx context.Context, names []string) {
	if len(names) == 0 {
		return
	}
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, n := range names {
		c, ok := l.store.Container(n)
		if !ok || c.State != StateRunning {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			l.m.log.Info("registration missing; registering again", "container", c.Name)
			l.m.event(EventRecovered, c.Name, "its registration was missing; registered again")
			if err := l.register(ctx, c); err != nil {
				l.m.log.Warn("register failed", "container", c.Name, "err", err)
			}
		}()
	}
	wg.Wait()
}

// register registers c's current copy and remembers it.
func (l *leader) register(ctx context.Context, c *Container) error {
	reg := registrationFor(l.m.cfg.Cluster, c)
	if err := l.m.deps.Registry.Register(ctx, reg); err != nil {
		return err
	}
	l.m.regs.add(reg.ID, c.Name)
	return nil
}

// deregister removes a registration and forgets it.
func (l *leader) deregister(ctx context.Context, id string) {
	if err := l.m.deps.Registry.Deregister(ctx, id); err != nil {
		l.m.log.Warn("deregister failed", "service_id", id, "err", err)
		return
	}
	l.m.regs.drop(id)
}

// syncRegistry compares the remembered registrations with the
// registry's, every registrySyncInterval or sooner when the health watch
// suggests one was lost.
func (l *leader) syncRegistry(ctx context.Context) {
	now := time.Now()
	if !l.m.regs.due(now) {
		return
	}
	ids, err := l.m.deps.Registry.List(ctx)
	if err != nil {
		l.m.log.Warn("cannot list the registry", "err", err)
		return
	}
	l.m.regs.replace(ids, now)
}

// adoptRunning records a copy that runs as the record expects.
func (l *leader) adoptRunning(ctx context.Context, name, node string, cp copyInfo) {
	if !l.claim(name) {
		return
	}
	defer l.release(name)
	c, err := l.store.Modify(ctx, name, func(c *Container) error {
		if (c.State != StateStarting && c.State != StateRunning) || c.Node != node {
			return ErrConflict
		}
		adopt(c, node, cp.ID, cp.Address, cp.Ports)
		return nil
	})
	if err != nil {
		return
	}
	l.m.log.Info("adopted a running copy", "container", name, "worker", c.Node)
	if err := l.register(ctx, c); err != nil {
		l.m.log.Warn("register failed", "container", name, "err", err)
	}
}

// requeue puts a container whose worker is gone back to pending, as a new
// generation. Only a record still on that worker is changed, so the
// dead-worker handler and a reconciliation may both try it.
func (l *leader) requeue(ctx context.Context, name, node string, gen int, why string) bool {
	_, err := l.store.Modify(ctx, name, func(c *Container) error {
		if c.Node != node || c.Generation != gen || (c.State != StateRunning && c.State != StateStarting) || c.Move != nil {
			return ErrConflict
		}
		setPending(c, why)
		c.Generation++
		return nil
	})
	if err != nil {
		return false
	}
	l.deregister(ctx, serviceID(name, gen))
	return true
}

// setPending makes c wait for a worker again.
func setPending(c *Container, why string) {
	c.State = StatePending
	c.Reason = why
	c.Node = ""
	c.ContainerID = ""
	c.Address = ""
	c.Bindings = nil
	c.UpdatedAt = time.Now().UTC()
	c.PendingSince = c.UpdatedAt
}

// workerDied places the containers of a worker memberlist declared dead
// at once, without waiting for the next reconciliation.
func (l *leader) workerDied(ctx context.Context, node string) {
	l.m.obs.forget(node)
	n := 0
	for _, c := range l.store.OnNode(node) {
		if c.Move != nil || (c.State != StateRunning && c.State != StateStarting) {
			continue
		}
		if l.requeue(ctx, c.Name, node, c.Generation, "worker "+node+" is dead") {
			l.m.log.Warn("worker is gone; placing its container again", "container", c.Name, "worker", node)
			l.m.event(EventRequeued, c.Name, "worker %s is dead; placing it again", node)
			n++
		}
	}
	if n > 0 {
		l.placePending(ctx)
	}
}

// watchHealth keeps the health of the cluster's registrations in memory,
// from the registry's blocking watch: reads of health never call it. A
// running container whose check vanished suggests a lost registration.
func (l *leader) watchHealth(ctx context.Context) {
	var index uint64
	for ctx.Err() == nil {
		h, next, err := l.m.deps.Registry.Health(ctx, index, healthWait)
		if err != nil {
			if ctx.Err() == nil {
				l.m.log.Debug("health watch", "err", err)
				l.m.regs.markStale() // the registry may have restarted
				sleepCtx(ctx, time.Second)
			}
			index = 0
			continue
		}
		if next < index {
			l.m.regs.markStale() // the registry's index went back: it restarted
		}
		index = next
		l.m.regs.setHealth(h)
		for _, c := range l.store.All() {
			if c.State == StateRunning && c.Check.Type != "none" && c.HostPort() != 0 && l.m.regs.registered(c.ServiceID()) {
				if _, ok := h[c.ServiceID()]; !ok {
					l.m.regs.markStale()
					l.kick()
					break
				}
			}
		}
	}
}
