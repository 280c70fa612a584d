package manager

import (
	"context"
	"fmt"
	"time"

	"github.com/micado-scale/micado/coordinator"
)

// replace swaps a worker for a cheaper instance that holds its
// containers: the new instance is recorded and asked of the cloud, the
// old worker is marked draining at once (nothing new goes there), and
// once the new worker has joined, every container moves to it make
// before break and the old instance is terminated. If the new worker
// does not join in time or a move fails, the old worker stays (its
// containers never stopped) and the new one, empty, is terminated.
func (l *leader) replace(ctx context.Context, r coordinator.Replacement) ([]string, error) {
	m := l.m
	old, ok := m.members.get(r.Worker)
	if !ok || old.Status != MemberAlive {
		return nil, fmt.Errorf("%s is not alive", r.Worker)
	}
	tags := r.Tags
	if len(tags) == 0 {
		tags = old.Load.Tags
	}
	in := m.newInstance(r.Type, tags, time.Now())
	if err := l.recordInstance(ctx, in); err != nil {
		return nil, fmt.Errorf("record the replacement of %s: %w", r.Worker, err)
	}
	l.setDraining(r.Worker, "replacement")
	m.metrics.scaleOutInstance("requested")
	m.event(EventScaleIn, r.Worker, "replacing it by %s (%s): %s", in.Name, in.Type, r.Reason)
	acts := []string{fmt.Sprintf("asked for %s (%s) to replace %s", in.Name, in.Type, r.Worker)}
	giveUp := func(err error) ([]string, error) {
		l.setDraining(r.Worker, "")
		// A new instance that holds nothing goes now (one that never
		// joined goes at its join timeout); one that already received
		// containers stays, for consolidation to judge later.
		if _, joined := m.members.get(in.Name); joined && len(l.store.OnNode(in.Name)) == 0 {
			_ = l.terminate(context.WithoutCancel(ctx), in.Name)
		}
		m.event(EventSkipped, r.Worker, "replacement aborted: %v", err)
		return acts, err
	}
	l.createInstance(ctx, in.Name)
	deadline := time.Now().Add(m.cfg.JoinTimeout)
	for {
		w, ok := m.members.get(in.Name)
		if ok && w.Status == MemberAlive && w.Load.API != "" {
			break
		}
		if _, ok := l.store.Instance(in.Name); !ok || time.Now().After(deadline) {
			return giveUp(fmt.Errorf("the new instance %s did not join", in.Name))
		}
		select {
		case <-ctx.Done():
			return giveUp(ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	acts = append(acts, in.Name+" joined")
	// Every container of the old worker goes to the new one, placed by
	// the same filters as any container (tags, memory with headroom).
	snap := l.snapshot()
	var target []coordinator.Worker
	for _, w := range snap.Workers {
		if w.Name == in.Name {
			target = append(target, w)
		}
	}
	var reqs []coordinator.Request
	for _, c := range l.store.OnNode(r.Worker) {
		if c.State.holdsMemory() {
			reqs = append(reqs, c.Request())
		}
	}
	if len(reqs) != len(r.Containers) {
		return giveUp(fmt.Errorf("%s holds %d containers now, the plan had %d", r.Worker, len(reqs), len(r.Containers)))
	}
	var moves []coordinator.Move
	for _, d := range coordinator.PlaceAll(&coordinator.Snapshot{Workers: target}, reqs, m.cfg.Placement) {
		if !d.Placed() {
			return giveUp(fmt.Errorf("%s does not fit on %s: %s", d.Request.Name, in.Name, d.Reason))
		}
		moves = append(moves, coordinator.Move{Container: d.Request.Name, Memory: d.Request.Memory, From: r.Worker, To: in.Name, Reason: "replacement of " + r.Worker})
	}
	more, err := l.drain(ctx, r.Worker, moves)
	acts = append(acts, more...)
	if err != nil {
		return giveUp(err)
	}
	return acts, nil
}
