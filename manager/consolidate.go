package manager

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/coordinator"
	"github.com/robfig/cron/v3"
)

// Scale-in defaults beyond the coordinator's.
const (
	// DefaultConsolidateSchedule runs a round every minute.
	DefaultConsolidateSchedule = "@every 1m"
	// DefaultMoveTimeout bounds one make-before-break move: starting the
	// new copy and waiting for its Consul check to pass.
	DefaultMoveTimeout = 2 * time.Minute
	// DefaultDrainDeadline bounds the draining of one worker: a drain
	// still moving containers after it rolls the move in progress back
	// and keeps the worker, so a stuck drain never holds a worker half
	// empty (and its moves' capacity reserved) for long.
	DefaultDrainDeadline = 10 * time.Minute
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

func (l *leader) isMoving(name string) bool {
	l.cons.stateMu.Lock()
	defer l.cons.stateMu.Unlock()
	return l.cons.moving[name]
}

func (l *leader) isDraining(node string) bool {
	l.cons.stateMu.Lock()
	defer l.cons.stateMu.Unlock()
	_, ok := l.cons.draining[node]
	return ok
}

func (l *leader) setDraining(node, why string) {
	l.cons.stateMu.Lock()
	defer l.cons.stateMu.Unlock()
	if why == "" {
		delete(l.cons.draining, node)
	} else {
		l.cons.draining[node] = why
	}
}

// startCron schedules unattended rounds for the term; it returns a stop
// function that waits for a running round.
func (l *leader) startCron() (func(), error) {
	m := l.m
	s := m.cfg.ConsolidateSchedule
	if s == "" || s == "off" || m.cfg.Provider == nil {
		return func() {}, nil
	}
	c := cron.New()
	if _, err := c.AddFunc(s, func() {
		if l.ctx.Err() != nil {
			return
		}
		res := l.Consolidate(l.ctx, false, false)
		if res.Outcome != "nothing-to-do" {
			m.log.Info("consolidation round", "outcome", res.Outcome, "remove", res.Plan.Remove, "error", res.Error)
		}
	}); err != nil {
		return nil, fmt.Errorf("consolidation schedule %q: %w", s, err)
	}
	c.Start()
	return func() { <-c.Stop().Done() }, nil
}

// consolidationInput builds consolidation's view of the workers: the
// placement snapshot plus age, unneeded-since and the containers on each.
func (l *leader) consolidationInput() []coordinator.ScaleInWorker {
	m := l.m
	joined := map[string]time.Time{}
	inst := map[string]*InstanceRecord{}
	for _, in := range l.store.Instances() {
		inst[in.Name] = in
		if !in.JoinedAt.IsZero() {
			joined[in.Name] = in.JoinedAt
		}
	}
	snap := l.snapshot()
	residents := map[string][]coordinator.Resident{}
	for _, w := range snap.Workers {
		for _, c := range l.store.OnNode(w.Name) {
			if !c.State.holdsMemory() {
				continue
			}
			// A container that is not running yet, or is being stopped,
			// cannot be moved now: it pins its worker for this round.
			reloc := !c.Pinned && c.State == StateRunning && c.Move == nil
			residents[c.Node] = append(residents[c.Node], coordinator.Resident{Name: c.Name, Tags: c.Tags, Memory: c.Memory, Relocatable: reloc})
		}
	}
	l.cons.stateMu.Lock()
	defer l.cons.stateMu.Unlock()
	nodes := make([]coordinator.ScaleInWorker, 0, len(snap.Workers))
	for _, w := range snap.Workers {
		w.Price = m.priceOf(w.Name, w.Capacity, inst)
		n := coordinator.ScaleInWorker{Worker: w, UnneededSince: l.cons.unneededSince[w.Name], Residents: residents[w.Name]}
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
	return nodes
}

func (m *Manager) consolidateOptions(manual bool) coordinator.ConsolidateOptions {
	o := m.cfg.Consolidate
	o.Placement = m.cfg.Placement
	o.Manual = manual
	// Never empty a worker if that would push its role above the node
	// usage limits (the alert would then ask for it back).
	o.UsageLimit = m.cfg.NodeAlert
	// Workers may be replaced by a cheaper type only where types have
	// prices: without them no replacement can be shown to save.
	for _, t := range m.coordTypes() {
		if t.Price > 0 {
			o.Types = m.coordTypes()
			break
		}
	}
	return o
}

// Consolidate runs one scale-in round: plan on a snapshot, revalidate on
// a fresh one, then drain the chosen workers make-before-break and
// terminate them. Manual rounds skip the waiting rules, never the safety
// rules; dry runs only plan.
func (l *leader) Consolidate(ctx context.Context, manual, dryRun bool) ConsolidateResult {
	m := l.m
	res := ConsolidateResult{Manual: manual, DryRun: dryRun}
	defer func() { m.metrics.round(res.Outcome) }()
	if m.cfg.Provider == nil {
		res.Outcome, res.Error = "failed", "scale-in needs a cloud provider to terminate workers (--provider)"
		return res
	}
	if !l.cons.mu.TryLock() {
		res.Outcome, res.Error = "failed", "a consolidation round is already running"
		return res
	}
	defer l.cons.mu.Unlock()
	plan := l.planRound(manual, !dryRun)
	res.Plan = plan
	if !dryRun {
		l.skipEvents(plan.Skipped)
	}
	if len(plan.Remove) == 0 && len(plan.Replace) == 0 {
		res.Outcome = "nothing-to-do"
		return res
	}
	if dryRun {
		res.Outcome = "planned"
		for _, mv := range plan.Moves {
			res.Actions = append(res.Actions, fmt.Sprintf("would move %s from %s to %s", mv.Container, mv.From, mv.To))
		}
		for _, w := range plan.Remove {
			res.Actions = append(res.Actions, "would terminate "+w+savingText(removalSaving(plan, w)))
		}
		for _, r := range plan.Replace {
			res.Actions = append(res.Actions, fmt.Sprintf("would replace %s by a new %s instance and move %d containers to it%s",
				r.Worker, r.Type.Name, len(r.Containers), savingText(r.Saving)))
		}
		if plan.SavingPerHour > 0 {
			res.Actions = append(res.Actions, "would save "+coordinator.FormatPrice(plan.SavingPerHour)+" in all")
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
		again := l.planRound(manual, false)
		if !samePlan(plan, again) {
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
		acts, err := l.drain(ctx, w, moves)
		m.metrics.scaledIn(err, time.Since(drainStart))
		res.Actions = append(res.Actions, acts...)
		if err != nil {
			res.Outcome, res.Error = "failed", err.Error()
			return res
		}
		if sv := removalSaving(plan, w); sv > 0 {
			m.event(EventTerminated, w, "scale-in saves %s", coordinator.FormatPrice(sv))
		}
	}
	for _, r := range plan.Replace {
		start := time.Now()
		acts, err := l.replace(ctx, r)
		m.metrics.scaledIn(err, time.Since(start))
		res.Actions = append(res.Actions, acts...)
		if err != nil {
			res.Outcome, res.Error = "failed", err.Error()
			return res
		}
		m.event(EventTerminated, r.Worker, "replaced by a %s instance: saves %s", r.Type.Name, coordinator.FormatPrice(r.Saving))
	}
	res.Outcome = "removed"
	return res
}

// removalSaving is what removing worker w saves per hour, from the plan.
func removalSaving(p coordinator.ConsolidationPlan, w string) float64 {
	for _, r := range p.Removals {
		if r.Worker == w {
			return r.Saving
		}
	}
	return 0
}

func savingText(v float64) string {
	if v <= 0 {
		return ""
	}
	return " (saves " + coordinator.FormatPrice(v) + ")"
}

func (l *leader) planRound(manual, track bool) coordinator.ConsolidationPlan {
	nodes := l.consolidationInput()
	now := time.Now()
	plan := coordinator.PlanConsolidation(nodes, now, l.m.consolidateOptions(manual))
	if ws := l.m.cfg.ConsolidateWindows; !manual && len(ws) > 0 && len(coordinator.ActiveWindows(ws, now)) == 0 {
		plan = emptyOnly(plan, ws)
	}
	if track {
		l.cons.stateMu.Lock()
		still := map[string]bool{}
		for _, n := range plan.Unneeded {
			still[n] = true
			if _, ok := l.cons.unneededSince[n]; !ok {
				l.cons.unneededSince[n] = now
			}
		}
		for n := range l.cons.unneededSince {
			if !still[n] {
				delete(l.cons.unneededSince, n)
			}
		}
		l.cons.stateMu.Unlock()
	}
	return plan
}

// emptyOnly keeps from a plan only what disrupts nothing: the removal of
// workers with no container to move. The others wait for a maintenance
// window, and say so.
func emptyOnly(p coordinator.ConsolidationPlan, ws []coordinator.ScheduleWindow) coordinator.ConsolidationPlan {
	movesFrom := map[string]bool{}
	for _, mv := range p.Moves {
		movesFrom[mv.From] = true
	}
	specs := make([]string, len(ws))
	for i, w := range ws {
		specs[i] = fmt.Sprintf("%q for %s", w.Spec, w.Duration)
	}
	out := p
	out.Remove, out.Moves, out.Removals, out.Replace, out.SavingPerHour = nil, nil, nil, nil, 0
	for _, r := range p.Replace {
		out.Skipped = append(out.Skipped, coordinator.Skip{Worker: r.Worker,
			Reason: "its replacement by a cheaper instance moves containers, and unattended moves wait for a maintenance window (" + strings.Join(specs, ", ") + ")"})
	}
	for _, w := range p.Remove {
		if movesFrom[w] {
			out.Skipped = append(out.Skipped, coordinator.Skip{Worker: w,
				Reason: "its containers would move, and unattended moves wait for a maintenance window (" + strings.Join(specs, ", ") + ")"})
			continue
		}
		out.Remove = append(out.Remove, w)
		for _, r := range p.Removals {
			if r.Worker == w {
				out.Removals = append(out.Removals, r)
				out.SavingPerHour += r.Saving
			}
		}
	}
	return out
}

func samePlan(a, b coordinator.ConsolidationPlan) bool {
	if strings.Join(a.Remove, ",") != strings.Join(b.Remove, ",") || len(a.Moves) != len(b.Moves) || len(a.Replace) != len(b.Replace) {
		return false
	}
	for i := range a.Replace {
		if a.Replace[i].Worker != b.Replace[i].Worker || a.Replace[i].Type.Name != b.Replace[i].Type.Name {
			return false
		}
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
func (l *leader) drain(ctx context.Context, node string, moves []coordinator.Move) ([]string, error) {
	m := l.m
	var acts []string
	l.setDraining(node, "scale-in")
	m.log.Info("draining for scale-in", "worker", node, "moves", len(moves))
	m.event(EventScaleIn, node, "draining for scale-in: %d containers to move", len(moves))
	dctx, cancel := context.WithTimeoutCause(ctx, m.cfg.DrainDeadline,
		fmt.Errorf("the drain deadline of %s passed", m.cfg.DrainDeadline))
	defer cancel()
	for _, mv := range moves {
		if err := l.move(dctx, mv); err != nil {
			if cause := context.Cause(dctx); cause != nil && ctx.Err() == nil {
				err = fmt.Errorf("%w (%w)", err, cause)
			}
			l.setDraining(node, "")
			err = fmt.Errorf("moving %s from %s to %s failed, so %s stays: %w", mv.Container, mv.From, mv.To, node, err)
			m.log.Warn("scale-in aborted", "worker", node, "err", err)
			m.event(EventSkipped, node, "scale-in aborted: %v", err)
			return acts, err
		}
		acts = append(acts, fmt.Sprintf("moved %s from %s to %s", mv.Container, mv.From, mv.To))
	}
	// Nothing new was placed there while draining; check it is empty.
	for _, c := range l.store.OnNode(node) {
		if c.State != StateFailed {
			l.setDraining(node, "")
			return acts, fmt.Errorf("%s still holds %s; not terminating it", node, c.Name)
		}
	}
	if err := l.terminate(ctx, node); err != nil {
		l.setDraining(node, "")
		return acts, err
	}
	l.setDraining(node, "")
	l.cons.stateMu.Lock()
	delete(l.cons.unneededSince, node)
	l.cons.stateMu.Unlock()
	acts = append(acts, "terminated "+node)
	m.log.Info("scaled in", "worker", node)
	m.event(EventTerminated, node, "scaled in: drained and terminated")
	return acts, nil
}

// terminate lets the worker leave the gossip cluster, then has the cloud
// terminate its instance and forgets it.
func (l *leader) terminate(ctx context.Context, node string) error {
	m := l.m
	if !l.claim("instance:" + node) {
		return fmt.Errorf("%s is busy with another operation", node)
	}
	defer l.release("instance:" + node)
	// Mark it first: a leader that crashes from here on is succeeded by
	// one that finishes the termination (the worker may already have left).
	in, known := l.store.Instance(node)
	wasMarked := known && in.State == InstanceTerminating
	if known && !wasMarked {
		err := l.store.Update(ctx, func(tx *Tx) error {
			if cur := tx.Instance(node); cur != nil {
				cur.State = InstanceTerminating
				tx.PutInstance(cur)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("record the termination of %s: %w", node, err)
		}
	}
	if !l.acting() {
		return ErrNotLeader
	}
	if w, ok := m.members.get(node); ok && w.Load.API != "" {
		if err := l.agents.Leave(ctx, w.Load.API); err != nil {
			m.log.Warn("worker did not leave cleanly", "worker", node, "err", err)
		}
	}
	id := ""
	if known {
		id = in.ID
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
	forget := func() error {
		if err := l.store.Update(ctx, func(tx *Tx) error { tx.DeleteInstance(node); return nil }); err != nil {
			return err
		}
		m.members.forget(node)
		m.obs.forget(node)
		return nil
	}
	if id == "" && wasMarked {
		// An earlier leader terminated it and stopped before forgetting it.
		return forget()
	}
	if id == "" {
		return fmt.Errorf("no instance of the cloud is named %s; cannot terminate it", node)
	}
	if err := m.cfg.Provider.Terminate(ctx, id); err != nil && !errors.Is(err, cloudapi.ErrNotFound) {
		return fmt.Errorf("terminate %s: %w", node, err)
	}
	return forget()
}

// finishTermination terminates an instance marked terminating by a
// leader that did not finish, or one whose worker is lost, once no
// container is recorded on it.
func (l *leader) finishTermination(ctx context.Context, node string) {
	for _, c := range l.store.OnNode(node) {
		if c.State.holdsMemory() {
			l.m.log.Info("not terminating yet: a container is still recorded on it", "instance", node, "container", c.Name)
			return
		}
	}
	if err := l.terminate(ctx, node); err != nil {
		if ctx.Err() == nil {
			l.m.log.Warn("termination incomplete; will retry", "instance", node, "err", err)
		}
		return
	}
	l.m.log.Info("terminated", "instance", node)
}

// move relocates one running container make-before-break: start the new
// copy on the target, register it, wait until its check passes, and only
// then switch the record, deregister and stop the old copy.
func (l *leader) move(ctx context.Context, mv coordinator.Move) error {
	m := l.m
	name := mv.Container
	if err := l.claimWait(ctx, name); err != nil {
		return err
	}
	defer l.release(name)
	l.cons.stateMu.Lock()
	l.cons.moving[name] = true
	l.cons.stateMu.Unlock()
	defer func() {
		l.cons.stateMu.Lock()
		delete(l.cons.moving, name)
		l.cons.stateMu.Unlock()
	}()
	// Disruption guard: a service with a replica that should pass but
	// does not is not disturbed further; moves are make-before-break and
	// one at a time, so a healthy service never has fewer passing
	// replicas during them.
	if cur, ok := l.store.Container(name); ok {
		if why := l.degraded(cur.Service, name); why != "" {
			return fmt.Errorf("%s is not moved now: %s", name, why)
		}
	}
	c, err := l.store.Modify(ctx, name, func(c *Container) error {
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
		l.undoMove(context.WithoutCancel(ctx), c)
		return err
	}
	target, ok := m.members.get(mv.To)
	if !ok || target.Status != MemberAlive || target.Load.API == "" {
		return fail(fmt.Errorf("target %s is not alive", mv.To))
	}
	mctx, cancel := context.WithTimeout(ctx, m.cfg.MoveTimeout)
	defer cancel()
	info, err := l.agents.Start(mctx, target.Load.API, l.m.startRequest(c, c.Move.Generation))
	if err != nil {
		return fail(fmt.Errorf("start the new copy: %w", err))
	}
	next := c.clone()
	next.Move = nil
	adopt(next, info.Node, info.ID, info.Address, info.Ports)
	next.Generation = c.Move.Generation
	next.Placement = "moved from " + mv.From + " for scale-in: " + mv.Reason
	if err := l.register(mctx, next); err != nil {
		return fail(err)
	}
	if next.Check.Type != "none" {
		if err := l.waitPassing(mctx, next.ServiceID()); err != nil {
			return fail(fmt.Errorf("the new copy on %s did not pass its check: %w", mv.To, err))
		}
	}
	old := c
	if _, err := l.store.Modify(ctx, name, func(r *Container) error {
		if r.Move == nil || r.Move.Generation != next.Generation {
			return errors.New("the move was cancelled")
		}
		*r = *next.clone()
		return nil
	}); err != nil {
		return fail(err)
	}
	// The new copy passes and the record points at it: break the old one.
	l.deregister(ctx, old.Name, old.Generation)
	if w, ok := m.members.get(old.Node); ok && w.Load.API != "" {
		if _, err := l.agents.Stop(ctx, w.Load.API, name, old.Generation); err != nil {
			m.log.Warn("stop old copy; reconciliation will retry", "container", name, "err", err)
		}
	}
	m.log.Info("moved", "container", name, "from", old.Node, "to", next.Node)
	m.event(EventMoved, name, "moved from %s to %s: the new copy passed before the old one stopped", old.Node, next.Node)
	return nil
}

// degraded says why a service is short of passing replicas (leaving out
// the container about to move), or "" when every other running replica
// passes.
func (l *leader) degraded(service, except string) string {
	want, passing := 0, 0
	for _, c := range l.store.Service(service) {
		if c.Name == except || c.State != StateRunning {
			continue
		}
		want++
		if l.health(c) == HealthPassing {
			passing++
		}
	}
	if passing < want {
		return fmt.Sprintf("service %s has %d of its other %d running replicas passing", service, passing, want)
	}
	return ""
}

// undoMove stops a move's new copy and clears the mark; the old copy
// never stopped.
func (l *leader) undoMove(ctx context.Context, c *Container) {
	m := l.m
	if c.Move == nil {
		return
	}
	l.deregister(ctx, c.Name, c.Move.Generation)
	if w, ok := m.members.get(c.Move.Node); ok && w.Load.API != "" {
		_, _ = l.agents.Stop(ctx, w.Load.API, c.Name, c.Move.Generation)
	}
	gen := c.Move.Generation
	_, _ = l.store.Modify(ctx, c.Name, func(r *Container) error {
		if r.Move == nil || r.Move.Generation != gen {
			return errStateChanged
		}
		r.Move = nil
		return nil
	})
}

// rollbackMove undoes a move found in the records but not in progress.
func (l *leader) rollbackMove(ctx context.Context, name, why string) {
	if !l.claim(name) {
		return
	}
	defer l.release(name)
	c, ok := l.store.Container(name)
	if !ok || c.Move == nil {
		return
	}
	l.m.log.Warn("rolling back an unfinished move", "container", name, "to", c.Move.Node, "why", why)
	l.undoMove(ctx, c)
}

// waitPassing waits until the registry says the service ID passes (from
// the health watch: no call of its own).
func (l *leader) waitPassing(ctx context.Context, id string) error {
	for {
		h, changed := l.m.regs.healthWait(id)
		if h == HealthPassing {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not passing: %w", ctx.Err())
		case <-changed:
		}
	}
}
