package manager

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/worker"
	"github.com/robfig/cron/v3"
)

// Scale-in defaults beyond the coordinator's.
const (
	// DefaultConsolidateSchedule runs a round every minute.
	DefaultConsolidateSchedule = "@every 1m"
	// DefaultMoveTimeout bounds one make-before-break move: starting the
	// new copy and waiting for its Consul check to pass.
	DefaultMoveTimeout = 2 * time.Minute
	// DefaultRevalidateDelay: an unattended round decides, waits this
	// long, decides again on a fresh snapshot, and acts only if both
	// agree (karpenter does the same), so a plan made on a passing dip or
	// a stale gossip view is dropped.
	DefaultRevalidateDelay = 5 * time.Second
)

// ConsolidateRequest is the body of POST /v1/consolidate.
type ConsolidateRequest struct {
	DryRun bool `json:"dry_run,omitempty"`
}

// ConsolidateResult reports one round.
type ConsolidateResult struct {
	Manual  bool                          `json:"manual"`
	DryRun  bool                          `json:"dry_run"`
	Plan    coordinator.ConsolidationPlan `json:"plan"`
	Actions []string                      `json:"actions"`
	Outcome string                        `json:"outcome"` // nothing-to-do, planned, removed, aborted, failed
	Error   string                        `json:"error,omitempty"`
}

// consolidator holds the state that lasts between rounds.
type consolidator struct {
	mu            sync.Mutex // one round at a time
	stateMu       sync.Mutex
	unneededSince map[string]time.Time
	draining      map[string]string // worker → why
	moving        map[string]bool   // containers being moved now
	lastSkip      map[string]string // worker → the reason last recorded for keeping it
}

func (m *Manager) isMoving(name string) bool {
	m.cons.stateMu.Lock()
	defer m.cons.stateMu.Unlock()
	return m.cons.moving[name]
}

func (m *Manager) isDraining(node string) bool {
	m.cons.stateMu.Lock()
	defer m.cons.stateMu.Unlock()
	_, ok := m.cons.draining[node]
	return ok
}

func (m *Manager) setDraining(node, why string) {
	m.cons.stateMu.Lock()
	defer m.cons.stateMu.Unlock()
	if why == "" {
		delete(m.cons.draining, node)
	} else {
		m.cons.draining[node] = why
	}
}

// startCron schedules unattended rounds; it returns a stop function.
func (m *Manager) startCron(ctx context.Context) (func(), error) {
	s := m.cfg.ConsolidateSchedule
	if s == "" || s == "off" || m.cfg.Provider == nil {
		return func() {}, nil
	}
	c := cron.New()
	if _, err := c.AddFunc(s, func() {
		res := m.Consolidate(ctx, false, false)
		if res.Outcome != "nothing-to-do" {
			m.log.Info("consolidation round", "outcome", res.Outcome, "remove", res.Plan.Remove, "error", res.Error)
		}
	}); err != nil {
		return nil, fmt.Errorf("consolidation schedule %q: %w", s, err)
	}
	c.Start()
	return func() { <-c.Stop().Done() }, nil
}

// nodes builds consolidation's view of the workers: the placement
// snapshot plus age, unneeded-since and the containers on each.
func (m *Manager) consolidationInput(ctx context.Context) ([]coordinator.Node, []*Container, error) {
	recs, err := m.store.list(ctx)
	if err != nil {
		return nil, nil, err
	}
	insts, err := m.store.instances(ctx)
	if err != nil {
		return nil, nil, err
	}
	joined := map[string]time.Time{}
	for _, in := range insts {
		if !in.JoinedAt.IsZero() {
			joined[in.Name] = in.JoinedAt
		}
	}
	snap := m.snapshot(recs)
	residents := map[string][]coordinator.Resident{}
	for _, c := range recs {
		if c.Node == "" || (c.State != StateRunning && c.State != StateStarting && c.State != StateStopping) {
			continue
		}
		// A container that is not running yet, or is being stopped,
		// cannot be moved now: it pins its worker for this round.
		reloc := !c.Pinned && c.State == StateRunning && c.Move == nil
		residents[c.Node] = append(residents[c.Node], coordinator.Resident{Name: c.Name, Tags: c.Tags, Memory: c.Memory, Relocatable: reloc})
	}
	m.cons.stateMu.Lock()
	defer m.cons.stateMu.Unlock()
	nodes := make([]coordinator.Node, 0, len(snap.Workers))
	for _, w := range snap.Workers {
		n := coordinator.Node{Worker: w, UnneededSince: m.cons.unneededSince[w.Name], Residents: residents[w.Name]}
		if mem, ok := m.members.get(w.Name); ok {
			n.JoinedAt = mem.FirstSeen
			if mem.Load.Started > 0 {
				n.JoinedAt = time.Unix(mem.Load.Started, 0)
			}
		}
		if t, ok := joined[w.Name]; ok && t.After(n.JoinedAt) {
			n.JoinedAt = t
		}
		nodes = append(nodes, n)
	}
	return nodes, recs, nil
}

func (m *Manager) consolidateOptions(manual bool) coordinator.ConsolidateOptions {
	o := m.cfg.Consolidate
	o.Placement = m.cfg.Placement
	o.Manual = manual
	return o
}

// Consolidate runs one scale-in round: plan on a snapshot, revalidate on
// a fresh one, then drain the chosen workers make-before-break and
// terminate them. Manual rounds skip the waiting rules, never the safety
// rules; dry runs only plan.
func (m *Manager) Consolidate(ctx context.Context, manual, dryRun bool) ConsolidateResult {
	res := ConsolidateResult{Manual: manual, DryRun: dryRun}
	defer func() { m.metrics.round(res.Outcome) }()
	if m.cfg.Provider == nil {
		res.Outcome, res.Error = "failed", "scale-in needs a cloud provider to terminate workers (--provider)"
		return res
	}
	if !m.cons.mu.TryLock() {
		res.Outcome, res.Error = "failed", "a consolidation round is already running"
		return res
	}
	defer m.cons.mu.Unlock()
	plan, err := m.planRound(ctx, manual, !dryRun)
	res.Plan = plan
	if err != nil {
		res.Outcome, res.Error = "failed", err.Error()
		return res
	}
	if !dryRun {
		m.skipEvents(plan.Skipped)
	}
	if len(plan.Remove) == 0 {
		res.Outcome = "nothing-to-do"
		return res
	}
	if dryRun {
		res.Outcome = "planned"
		for _, mv := range plan.Moves {
			res.Actions = append(res.Actions, fmt.Sprintf("would move %s from %s to %s", mv.Container, mv.From, mv.To))
		}
		for _, w := range plan.Remove {
			res.Actions = append(res.Actions, "would terminate "+w)
		}
		return res
	}
	if !manual && m.cfg.RevalidateDelay > 0 {
		select {
		case <-ctx.Done():
			res.Outcome, res.Error = "aborted", ctx.Err().Error()
			return res
		case <-time.After(m.cfg.RevalidateDelay):
		}
		again, err := m.planRound(ctx, manual, false)
		if err != nil || !samePlan(plan, again) {
			res.Outcome = "aborted"
			res.Error = "the plan changed on a fresh snapshot; trying again next round"
			return res
		}
	}
	for _, w := range plan.Remove {
		var moves []coordinator.Move
		for _, mv := range plan.Moves {
			if mv.From == w {
				moves = append(moves, mv)
			}
		}
		drainStart := time.Now()
		acts, err := m.drain(ctx, w, moves)
		m.metrics.scaledIn(err, time.Since(drainStart))
		res.Actions = append(res.Actions, acts...)
		if err != nil {
			res.Outcome, res.Error = "failed", err.Error()
			return res
		}
	}
	res.Outcome = "removed"
	return res
}

func (m *Manager) planRound(ctx context.Context, manual, track bool) (coordinator.ConsolidationPlan, error) {
	nodes, _, err := m.consolidationInput(ctx)
	if err != nil {
		return coordinator.ConsolidationPlan{}, err
	}
	now := time.Now()
	plan := coordinator.PlanConsolidation(nodes, now, m.consolidateOptions(manual))
	if track {
		m.cons.stateMu.Lock()
		still := map[string]bool{}
		for _, n := range plan.Unneeded {
			still[n] = true
			if _, ok := m.cons.unneededSince[n]; !ok {
				m.cons.unneededSince[n] = now
			}
		}
		for n := range m.cons.unneededSince {
			if !still[n] {
				delete(m.cons.unneededSince, n)
			}
		}
		m.cons.stateMu.Unlock()
	}
	return plan, nil
}

func samePlan(a, b coordinator.ConsolidationPlan) bool {
	if strings.Join(a.Remove, ",") != strings.Join(b.Remove, ",") || len(a.Moves) != len(b.Moves) {
		return false
	}
	for i := range a.Moves {
		if a.Moves[i].Container != b.Moves[i].Container || a.Moves[i].To != b.Moves[i].To {
			return false
		}
	}
	return true
}

// drain empties one worker make-before-break and terminates it. If any
// move fails, the new copies are stopped, the draining mark is cleared,
// and the error says why.
func (m *Manager) drain(ctx context.Context, node string, moves []coordinator.Move) ([]string, error) {
	var acts []string
	m.setDraining(node, "scale-in")
	m.log.Info("draining for scale-in", "worker", node, "moves", len(moves))
	m.event(EventScaleIn, node, "draining for scale-in: %d containers to move", len(moves))
	for _, mv := range moves {
		if err := m.move(ctx, mv); err != nil {
			m.setDraining(node, "")
			err = fmt.Errorf("moving %s from %s to %s failed, so %s stays: %w", mv.Container, mv.From, mv.To, node, err)
			m.log.Warn("scale-in aborted", "worker", node, "err", err)
			m.event(EventSkipped, node, "scale-in aborted: %v", err)
			return acts, err
		}
		acts = append(acts, fmt.Sprintf("moved %s from %s to %s", mv.Container, mv.From, mv.To))
	}
	// Nothing new was placed there while draining; check it is empty.
	recs, err := m.store.list(ctx)
	if err != nil {
		m.setDraining(node, "")
		return acts, err
	}
	for _, c := range recs {
		if c.Node == node && c.State != StateFailed {
			m.setDraining(node, "")
			return acts, fmt.Errorf("%s still holds %s; not terminating it", node, c.Name)
		}
	}
	if err := m.terminate(ctx, node); err != nil {
		m.setDraining(node, "")
		return acts, err
	}
	m.setDraining(node, "")
	m.cons.stateMu.Lock()
	delete(m.cons.unneededSince, node)
	m.cons.stateMu.Unlock()
	acts = append(acts, "terminated "+node)
	m.log.Info("scaled in", "worker", node)
	m.event(EventTerminated, node, "scaled in: drained and terminated")
	return acts, nil
}

// terminate lets the worker leave the gossip cluster, then has the cloud
// terminate its instance and forgets it.
func (m *Manager) terminate(ctx context.Context, node string) error {
	if !m.claim("instance:" + node) {
		return fmt.Errorf("%s is busy with another operation", node)
	}
	defer m.release("instance:" + node)
	// Mark it first: a manager that crashes from here on finishes the
	// termination when it restarts (the worker may already have left).
	insts, err := m.store.instances(ctx)
	if err != nil {
		return err
	}
	wasMarked := false
	for _, in := range insts {
		wasMarked = wasMarked || (in.Name == node && in.State == InstanceTerminating)
		if in.Name == node && in.State != InstanceTerminating {
			in.State = InstanceTerminating
			if err := m.store.putInstance(ctx, in); err != nil {
				return fmt.Errorf("record the termination of %s: %w", node, err)
			}
		}
	}
	if w, ok := m.members.get(node); ok && w.Load.API != "" {
		if err := m.agents.Leave(ctx, w.Load.API); err != nil {
			m.log.Warn("worker did not leave cleanly", "worker", node, "err", err)
		}
	}
	id := ""
	for _, in := range insts {
		if in.Name == node {
			id = in.ID
		}
	}
	if id == "" {
		cloud, err := m.cfg.Provider.List(ctx, m.cfg.Cluster)
		if err != nil {
			return fmt.Errorf("find %s's instance: %w", node, err)
		}
		for _, ci := range cloud {
			if ci.Name == node {
				id = ci.ID
			}
		}
	}
	if id == "" && wasMarked {
		// An earlier manager terminated it and crashed before forgetting it.
		_ = m.store.deleteInstance(ctx, node)
		m.members.forget(node)
		return nil
	}
	if id == "" {
		return fmt.Errorf("no instance of the cloud is named %s; cannot terminate it", node)
	}
	if err := m.cfg.Provider.Terminate(ctx, id); err != nil && !errors.Is(err, cloudapi.ErrNotFound) {
		return fmt.Errorf("terminate %s: %w", node, err)
	}
	_ = m.store.deleteInstance(ctx, node)
	m.members.forget(node)
	return nil
}

// finishTermination terminates an instance marked terminating by a
// manager that did not finish, or one whose worker is lost, once no
// container is recorded on it.
func (m *Manager) finishTermination(ctx context.Context, node string) {
	recs, err := m.store.list(ctx)
	if err != nil {
		return
	}
	for _, c := range recs {
		if c.Node == node && (c.State == StateStarting || c.State == StateRunning || c.State == StateStopping) {
			m.log.Info("not terminating yet: a container is still recorded on it", "instance", node, "container", c.Name)
			return
		}
	}
	if err := m.terminate(ctx, node); err != nil {
		m.log.Warn("termination incomplete; will retry", "instance", node, "err", err)
		return
	}
	m.log.Info("terminated", "instance", node)
}

// move relocates one running container make-before-break: start the new
// copy on the target, register it, wait until Consul's check passes, and
// only then switch the record, deregister and stop the old copy.
func (m *Manager) move(ctx context.Context, mv coordinator.Move) error {
	name := mv.Container
	for !m.claim(name) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer m.release(name)
	m.cons.stateMu.Lock()
	m.cons.moving[name] = true
	m.cons.stateMu.Unlock()
	defer func() {
		m.cons.stateMu.Lock()
		delete(m.cons.moving, name)
		m.cons.stateMu.Unlock()
	}()
	c, err := m.store.update(ctx, name, func(c *Container) error {
		if c.State != StateRunning || c.Node != mv.From || c.Move != nil {
			return fmt.Errorf("%s is no longer running on %s", name, mv.From)
		}
		c.Move = &MoveState{Node: mv.To, Generation: c.Generation + 1, Started: time.Now().UTC()}
		return nil
	})
	if err != nil {
		return err
	}
	fail := func(err error) error {
		m.undoMove(context.WithoutCancel(ctx), c)
		return err
	}
	target, ok := m.members.get(mv.To)
	if !ok || target.Status != "alive" || target.Load.API == "" {
		return fail(fmt.Errorf("target %s is not alive", mv.To))
	}
	mctx, cancel := context.WithTimeout(ctx, m.cfg.MoveTimeout)
	defer cancel()
	info, err := m.agents.Start(mctx, target.Load.API, worker.StartRequest{
		Instance: c.Name, Service: c.Service, App: c.App, Image: c.Image, Memory: c.Memory,
		Ports: c.Ports, Env: c.Env, Generation: c.Move.Generation,
	})
	if err != nil {
		return fail(fmt.Errorf("start the new copy: %w", err))
	}
	next := *c
	next.Move = nil
	adopt(&next, info)
	next.Generation = c.Move.Generation
	next.Placement = "moved from " + mv.From + " for scale-in: " + mv.Reason
	if err := m.reg.register(mctx, &next); err != nil {
		return fail(err)
	}
	if next.Check.Type != "none" {
		if err := m.waitPassing(mctx, next.ServiceID()); err != nil {
			return fail(fmt.Errorf("the new copy on %s did not pass its check: %w", mv.To, err))
		}
	}
	old := *c
	if _, err := m.store.update(ctx, name, func(r *Container) error {
		if r.Move == nil || r.Move.Generation != next.Generation {
			return errors.New("the move was cancelled")
		}
		idx := r.index
		*r = next
		r.index = idx
		return nil
	}); err != nil {
		return fail(err)
	}
	// The new copy passes and the record points at it: break the old one.
	if err := m.reg.deregister(ctx, old.ServiceID()); err != nil {
		m.log.Warn("deregister old copy", "container", name, "err", err)
	}
	if w, ok := m.members.get(old.Node); ok && w.Load.API != "" {
		if _, err := m.agents.Stop(ctx, w.Load.API, name, old.Generation); err != nil {
			m.log.Warn("stop old copy; reconciliation will retry", "container", name, "err", err)
		}
	}
	m.log.Info("moved", "container", name, "from", old.Node, "to", next.Node)
	m.event(EventMoved, name, "moved from %s to %s: the new copy passed before the old one stopped", old.Node, next.Node)
	return nil
}

// undoMove stops a move's new copy and clears the mark; the old copy
// never stopped.
func (m *Manager) undoMove(ctx context.Context, c *Container) {
	if c.Move == nil {
		return
	}
	_ = m.reg.deregister(ctx, serviceID(c.Name, c.Move.Generation))
	if w, ok := m.members.get(c.Move.Node); ok && w.Load.API != "" {
		_, _ = m.agents.Stop(ctx, w.Load.API, c.Name, c.Move.Generation)
	}
	gen := c.Move.Generation
	_, _ = m.store.update(ctx, c.Name, func(r *Container) error {
		if r.Move == nil || r.Move.Generation != gen {
			return ErrConflict
		}
		r.Move = nil
		return nil
	})
}

// rollbackMove undoes a move found in the records but not in progress.
func (m *Manager) rollbackMove(ctx context.Context, name, why string) {
	if !m.claim(name) {
		return
	}
	defer m.release(name)
	c, err := m.store.get(ctx, name)
	if err != nil || c.Move == nil {
		return
	}
	m.log.Warn("rolling back an unfinished move", "container", name, "to", c.Move.Node, "why", why)
	m.undoMove(ctx, c)
}

// waitPassing waits until the catalog says the service ID passes.
func (m *Manager) waitPassing(ctx context.Context, id string) error {
	for {
		checks, _, err := m.consul.Health().State(api.HealthAny, (&api.QueryOptions{
			Filter: fmt.Sprintf("ServiceID == %q", id),
		}).WithContext(ctx))
		if err == nil && len(checks) > 0 && checks.AggregatedStatus() == api.HealthPassing {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not passing: %w", ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
