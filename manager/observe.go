package manager

import (
	"context"
	"hash/fnv"
	"sync"
	"time"

	"github.com/micado-scale/micado/internal/wire"
)

// Observation bounds.
const (
	// listTimeout bounds one call listing a worker's containers: agents
	// answer in milliseconds, and one dead worker must not hold up a
	// reconciliation.
	listTimeout = 2 * time.Second
	// listConcurrency bounds the lists in flight, so that a new leader of
	// thousands of workers does not open thousands of connections at once.
	listConcurrency = 64
)

// copyInfo is one container copy a worker runs, as its agent listed it:
// what reconciliation needs, no more (a leader of 100,000 containers
// keeps one of these for each). The whole of what the agent said is kept
// only for a copy that its record does not describe yet (to adopt it).
type copyInfo struct {
	Generation int
	Running    bool
	idHash     uint64              // hashID of the container's ID
	detail     *wire.ContainerInfo // nil when the record knew the copy
}

// hashID sums up a container ID (64 hex digits) in 8 bytes.
func hashID(id string) uint64 {
	if id == "" {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(id))
	return h.Sum64()
}

// observation is what one worker ran when its agent last listed it.
type observation struct {
	api     string // the agent it came from
	started int64  // the agent's run (Load.Started)
	digest  uint64 // wire.ContainersDigest of the list
	at      time.Time
	copies  map[string]copyInfo   // by container name: its copy (the first, when it has several)
	extra   map[string][]copyInfo // its further copies (rare: a stale generation, a move)
}

// add records one copy of the container name.
func (o *observation) add(name string, cp copyInfo) {
	if _, ok := o.copies[name]; !ok {
		o.copies[name] = cp
		return
	}
	if o.extra == nil {
		o.extra = map[string][]copyInfo{}
	}
	o.extra[name] = append(o.extra[name], cp)
}

// observer keeps every worker's containers as last listed, and lists a
// worker again only when the digest in its load report no longer matches
// the list (its containers changed), so an idle reconciliation of
// thousands of workers calls none of them. Agents that report no digest
// are listed every round. Safe for concurrent use.
type observer struct {
	mu       sync.Mutex
	byWorker map[string]*observation
	dirty    map[string]struct{} // workers listed anew (or forgotten) since takeDirty
}

func newObserver() *observer {
	return &observer{byWorker: map[string]*observation{}, dirty: map[string]struct{}{}}
}

// takeDirty returns the workers listed anew or forgotten since it was
// last called.
func (o *observer) takeDirty() map[string]struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	d := o.dirty
	o.dirty = map[string]struct{}{}
	return d
}

// fresh reports whether the list of worker w still describes it: it came
// from the same agent run and matches the digest of its latest report.
func (o *observation) fresh(l wire.Load) bool {
	return o != nil && o.api == l.API && o.started == l.Started && l.Digest != 0 && o.digest == l.Digest
}

// get returns the observation of a worker if it is fresh for load l.
func (o *observer) get(name string, l wire.Load) (*observation, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ob := o.byWorker[name]
	return ob, ob.fresh(l)
}

// forget drops a worker's observation (it left or was lost).
func (o *observer) forget(name string) {
	o.mu.Lock()
	delete(o.byWorker, name)
	o.dirty[name] = struct{}{}
	o.mu.Unlock()
}

func (o *observer) put(name string, ob *observation) {
	o.mu.Lock()
	o.byWorker[name] = ob
	o.dirty[name] = struct{}{}
	o.mu.Unlock()
}

// refresh lists, in parallel, every alive worker whose observation is not
// fresh, and waits for the answers (each bounded by listTimeout). It
// returns the workers whose containers are known now, with what they run.
func (l *leader) observe(ctx context.Context) map[string]*observation {
	out := map[string]*observation{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, listConcurrency)
	for _, w := range l.m.members.workers() {
		if w.Status != MemberAlive || w.Load.API == "" {
			continue
		}
		if ob, ok := l.m.obs.get(w.Name, w.Load); ok {
			mu.Lock()
			out[w.Name] = ob
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func(w member) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			lctx, cancel := context.WithTimeout(ctx, listTimeout)
			defer cancel()
			cs, err := l.agents.List(lctx, w.Load.API)
			if err != nil {
				if ctx.Err() == nil {
					l.m.log.Warn("cannot list a worker's containers", "worker", w.Name, "err", err)
				}
				return
			}
			ob := &observation{api: w.Load.API, started: w.Load.Started, digest: wire.ContainersDigest(cs),
				at: time.Now(), copies: make(map[string]copyInfo, len(cs))}
			for i := range cs {
				c := &cs[i]
				cp := copyInfo{Generation: c.Generation, Running: c.State == "running", idHash: hashID(c.ID)}
				name := c.Instance
				if rec, ok := l.store.Container(c.Instance); ok {
					name = rec.Name // share the record's string
					if rec.idHash != cp.idHash {
						d := *c
						cp.detail = &d
					}
				} else {
					d := *c
					cp.detail = &d
				}
				ob.add(name, cp)
			}
			l.m.obs.put(w.Name, ob)
			mu.Lock()
			out[w.Name] = ob
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	return out
}
