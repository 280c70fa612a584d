package manager

import (
	"context"
	"sync"
	"time"

	"github.com/micado-scale/micado/internal/wire"
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
	relist        []string        // workers to list again: their list lacks what adopting needs
	register      []string        // running records whose registration is missing
	stopCopies    []stopAction    // copies no record asks for
	deregister    []regKey        // registrations no record asks for
	placePending  bool            // pending containers wait
}

type requeueAction struct {
	name, node string
	generation int
	why        string
}

type adoptAction struct {
	name, node string
	copy       wire.ContainerInfo
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
	containers []*Container                       // the records to check (every record, in a full round)
	lookup     func(string) *Container            // one record by name
	workers    map[string]member                  // every worker gossip knows, alive or dead
	observed   map[string]*observation            // the workers whose containers are known now
	scan       map[string]*observation            // the workers whose copies are checked for orphans
	onNode     func(string) map[string]*Container // the records on one worker
	registered *regSet                            // registered copies
	regsKnown  bool                               // registered was compared with the registry at least once
	// regScan names containers whose registrations to check beyond those
	// of the records checked: registrations of containers with no record.
	regScan []string
	moving  func(container string) bool // a move of this container is in progress
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
	// Records come grouped by worker: look each worker up once.
	var (
		lastNode               = "\x00"
		lastW                  member
		lastKnown, lastReached bool
		lastOb                 *observation
	)
	for _, c := range v.containers {
		// Its registrations: one look-up finds them all.
		v.registered.of(c.Name, func(k regKey) {
			if !v.regsKnown {
				return
			}
			if (c.State == StateRunning || c.State == StateStarting) &&
				(k.gen == c.Generation || (c.Move != nil && k.gen == c.Move.Generation)) {
				return
			}
			if !v.moving(c.Name) {
				r.deregister = append(r.deregister, k)
			}
		})
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
			if c.Node != lastNode {
				lastNode = c.Node
				lastW, lastKnown = v.workers[c.Node]
				lastOb, lastReached = v.observed[c.Node]
			}
			w, known := lastW, lastKnown
			if !known || w.Status != MemberAlive {
				switch {
				case known:
					r.requeue = append(r.requeue, requeueAction{name: c.Name, node: c.Node, generation: c.Generation,
						why: "worker " + c.Node + " is " + string(w.Status)})
				case v.following > unknownWorkerGrace:
					// The worker died while no manager watched: gossip will
					// never report it, so it would hold the container for ever.
					r.requeue = append(r.requeue, requeueAction{name: c.Name, node: c.Node, generation: c.Generation,
						why: "worker " + c.Node + " has not been seen since the manager started"})
				}
				continue
			}
			ob, reached := lastOb, lastReached
			if !reached {
				continue // cannot tell; try next round
			}
			var mine *copyInfo
			if cp, ok := ob.copies[c.Name]; ok && cp.Generation == c.Generation && cp.Running {
				mine = &cp
			}
			for i, cp := range ob.extra[c.Name] {
				if cp.Generation == c.Generation && cp.Running {
					mine = &ob.extra[c.Name][i]
				}
			}
			switch {
			case mine == nil && c.State == StateRunning:
				r.restart = append(r.restart, c.Name)
			case mine == nil:
				r.start = append(r.start, c.Name)
			case c.State == StateStarting || c.idHash != mine.idHash:
				if mine.detail == nil {
					// The record changed since the list: list again.
					r.relist = append(r.relist, c.Node)
					continue
				}
				r.adopt = append(r.adopt, adoptAction{name: c.Name, node: c.Node, copy: *mine.detail})
			default:
				if v.regsKnown && !v.registered.has(regKey{c.Name, c.Generation}) {
					r.register = append(r.register, c.Name)
				}
			}
		}
	}
	// Copies nobody asked for. A worker's own records are looked up in its
	// small index first.
	for node, ob := range v.scan {
		own := v.onNode(node)
		for name, cp := range ob.copies {
			c := own[name]
			if c == nil {
				c = v.lookup(name)
			}
			check := func(cp copyInfo) {
				if c == nil || !copyWanted(c, node, cp.Generation) {
					r.stopCopies = append(r.stopCopies, stopAction{name: name, node: node, api: ob.api, generation: cp.Generation})
				}
			}
			check(cp)
			for _, more := range ob.extra[name] {
				check(more)
			}
		}
	}
	// Registrations of containers that have no record (those of a record
	// are checked with it, in its slice of the rounds).
	for _, n := range v.regScan {
		if !v.regsKnown || v.lookup(n) != nil || v.moving(n) {
			continue
		}
		v.registered.of(n, func(k regKey) { r.deregister = append(r.deregister, k) })
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

// Rounds. A round checks what changed since the last one (records
// written, workers listed anew or changed status, registrations made or
// lost), the records that are not settled (pending, starting, stopping,
// moving), and one slice in rollSlices of everything else: every record,
// worker and registration is compared at least once every rollSlices
// rounds (two minutes), and no round does more than a slice of that work,
// so an idle round of 100,000 containers stays short. A full round, all
// at once, starts a term, follows many changes at once, and ends the
// grace of workers not seen since the manager started.
const rollSlices = 24

// reconcile runs one round: observe, decide, act.
func (l *leader) reconcile(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	// Observe first, then read the desired state: a container or a
	// registration is only ever created after its record is written, so
	// anything observed that has no record is truly an orphan.
	observed := l.observe(ctx)
	following := time.Since(l.m.started)
	full := l.rounds == 0 || (following > unknownWorkerGrace && !l.graceChecked)
	// What changed, taken before the state is read: a change after this
	// is taken by the next round.
	dRecs, dObs, dMem, dRegs := l.store.takeDirty(), l.m.obs.takeDirty(), l.m.members.takeDirty(), l.m.regs.takeDirty()
	workers := map[string]member{}
	for _, w := range l.m.members.workers() {
		workers[w.Name] = w
	}
	// Many changes at once (a new term, a registry that came back): check
	// everything.
	if n := len(dRecs) + len(dRegs); n > 1000 && n > l.store.Len()/10 {
		full = true
	}
	slice := l.roll % rollSlices
	if slice == 0 || l.rollRegs == nil {
		l.rollRegs = l.m.regs.names()
		nodes := map[string]bool{}
		for n := range workers {
			nodes[n] = true
		}
		for _, n := range l.store.Nodes() {
			nodes[n] = true // a worker gossip no longer knows
		}
		l.rollWorkers = l.rollWorkers[:0]
		for n := range nodes {
			l.rollWorkers = append(l.rollWorkers, n)
		}
	}
	part := func(n int) (int, int) { return n * slice / rollSlices, n * (slice + 1) / rollSlices }
	var r repairs
	checked := 0
	decideStart := time.Now()
	// Decide under the store's read lock and the registrations' lock: no
	// copy of 100,000 records, and no I/O.
	l.store.view(func(sv storeView) {
		// A worker whose containers changed since its list was taken (a
		// start answered meanwhile) cannot be judged this round: its list
		// may lack a copy the records, read after the list, already count
		// as running. The load report changes before the record does, so
		// checking it after taking the records is enough.
		for name, ob := range observed {
			if w, ok := workers[name]; ok && w.Load.Digest != 0 && !ob.fresh(w.Load) {
				delete(observed, name)
			}
		}
		v := reconcileView{lookup: sv.get, onNode: sv.nodeRecords, workers: workers, observed: observed, moving: l.isMoving, following: following}
		if full {
			v.containers = l.store.allLocked()
			v.scan = observed
			// Registrations of containers with no record are left to the
			// slices of the next rounds.
		} else {
			seen := map[string]bool{}
			add := func(c *Container) {
				if c != nil && !seen[c.Name] {
					seen[c.Name] = true
					v.containers = append(v.containers, c)
				}
			}
			sv.unsettled(add)
			for n := range dRecs {
				add(sv.get(n))
			}
			for n := range dRegs {
				add(sv.get(n))
			}
			v.scan = map[string]*observation{}
			lo, hi := part(len(l.rollWorkers))
			for _, node := range l.rollWorkers[lo:hi] {
				sv.onNode(node, add)
				if ob, ok := observed[node]; ok {
					v.scan[node] = ob
				}
			}
			for _, d := range []map[string]struct{}{dObs, dMem} {
				for node := range d {
					sv.onNode(node, add)
					if ob, ok := observed[node]; ok {
						v.scan[node] = ob
					}
				}
			}
			v.regScan = []string{}
			regSeen := map[string]bool{}
			scanRegs := func(n string) {
				if !regSeen[n] {
					regSeen[n] = true
					v.regScan = append(v.regScan, n)
				}
			}
			lo, hi = part(len(l.rollRegs))
			for _, n := range l.rollRegs[lo:hi] {
				scanRegs(n)
			}
			for n := range seen {
				scanRegs(n)
			}
			for n := range dRegs {
				scanRegs(n)
			}
			for n := range dRecs {
				scanRegs(n) // deleted records among them
			}
		}
		l.m.regs.view(func(set *regSet, known bool) {
			v.registered, v.regsKnown = set, known
			r = decideRepairs(v)
		})
		checked = len(v.containers)
		r.placePending = r.placePending || sv.pending()
	})
	if full {
		l.graceChecked = following > unknownWorkerGrace
	} else {
		l.roll++
	}
	decided := time.Since(decideStart)
	l.execute(ctx, r)
	l.reconcileInstances(ctx)
	l.reconcileApps(ctx)
	l.rounds++
	took := time.Since(start)
	l.m.metrics.reconciled(took)
	l.m.log.Debug("reconciled", "full", full, "checked", checked, "listed", len(dObs), "took", took, "decide", decided,
		"observed", len(observed))
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
	for _, n := range r.relist {
		l.m.obs.forget(n)
	}
	l.registerAll(ctx, r.register)
	if len(r.stopCopies) > 0 {
		l.stopCopies(ctx, r.stopCopies)
	}
	for _, k := range r.deregister {
		m.log.Info("removing a stale registration", "service_id", serviceID(k.name, k.gen))
		l.deregister(ctx, k.name, k.gen)
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
	l.m.regs.add(c.Name, c.Generation)
	return nil
}

// deregister removes the registration of a container's copy and forgets
// it.
func (l *leader) deregister(ctx context.Context, name string, gen int) {
	id := serviceID(name, gen)
	if err := l.m.deps.Registry.Deregister(ctx, id); err != nil {
		l.m.log.Warn("deregister failed", "service_id", id, "err", err)
		return
	}
	l.m.regs.drop(name, gen)
}

// syncRegistry compares the remembered registrations with the
// registry's, every registrySyncInterval or sooner when the health watch
// suggests one was lost, on a goroutine of its own (listing 100,000
// registrations takes longer than a reconciliation should). What it finds
// different, the next rounds repair.
func (l *leader) syncRegistry(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if now := time.Now(); l.m.regs.due(now) {
			lctx, cancel := context.WithTimeout(ctx, time.Minute)
			ids, err := l.m.deps.Registry.List(lctx)
			cancel()
			switch {
			case err != nil && ctx.Err() == nil:
				l.m.log.Warn("cannot list the registry", "err", err)
			case err == nil:
				l.m.regs.replace(ids, now)
				l.kick()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// adoptRunning records a copy that runs as the record expects.
func (l *leader) adoptRunning(ctx context.Context, name, node string, cp wire.ContainerInfo) {
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
	l.deregister(ctx, name, gen)
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
			if c.State == StateRunning && c.Check.Type != "none" && c.HostPort() != 0 && l.m.regs.registered(c.Name, c.Generation) {
				if _, ok := h[c.ServiceID()]; !ok {
					l.m.regs.markStale()
					l.kick()
					break
				}
			}
		}
	}
}
