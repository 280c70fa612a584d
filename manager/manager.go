// Package manager is micado's manager: a memberlist member that sees every
// worker's load, keeps the desired state in memory with Consul KV as its
// journal, places containers through the coordinator, commands worker
// agents, registers every running container in Consul, and serves the
// versioned JSON API (/v1) that the CLI uses. It is the paper's
// coordination interface API plus its microservices discovery and
// execution layer.
//
// Several managers may run for one cluster: the one that holds the leader
// lock acts (a leader, one term at a time), the others stand by, follow
// gossip, and forward the API to the leader. This package holds the
// manager's logic behind small seams it owns (Journal, Lock, Registry,
// Agents, Gossip); manager/consul implements them on Consul and
// manager/daemon wires a manager process together.
package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/internal/wire"
)

// Gossip is the manager's memberlist membership, as the manager uses it.
type Gossip interface {
	// Join contacts the given members ("host:port").
	Join(addrs []string) (int, error)
	// Addr is the gossip address new workers join ("host:port").
	Addr() string
}

// Deps are the manager's connections to the world.
type Deps struct {
	Journal  Journal
	Lock     Lock
	Registry Registry
	Agents   Agents
	Gossip   Gossip // nil: no gossip (tests feed the members table)
	// Forward carries API calls a standby forwards to the leader (nil:
	// http.DefaultTransport).
	Forward http.RoundTripper
}

// Manager is one manager process: always a gossip member that follows
// the workers' load, and the leader of the cluster while it holds the
// lock.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	deps    Deps
	members *members
	obs     *observer
	regs    *regCache
	events  *eventLog
	metrics *metrics
	started time.Time // when this process began to follow gossip
	// discoveryToken is the Consul token of linked containers
	// (Config.ConsulDiscoveryTokenFile); never logged nor stored.
	discoveryToken string

	holder holderCache // the lock's holder, as a standby last read it
	prom   *PromSource // the Prometheus scaling queries read; nil when none

	mu   sync.Mutex
	lead *leader // nil while standing by
}

// New builds a manager; Run makes it work.
func New(cfg Config, deps Deps) (*Manager, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if deps.Journal == nil || deps.Lock == nil || deps.Registry == nil || deps.Agents == nil {
		return nil, errors.New("manager needs a journal, a lock, a registry and agents")
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, deps: deps, members: newMembers(cfg.NodeName),
		obs: newObserver(), regs: newRegCache(), started: time.Now()}
	if cfg.ConsulDiscoveryTokenFile != "" {
		tok, err := ReadDiscoveryToken(cfg.ConsulDiscoveryTokenFile)
		if err != nil {
			return nil, err
		}
		m.discoveryToken = tok
	}
	m.events = newEventLog(cfg.EventsKept, m.log)
	m.metrics = newMetrics(m)
	m.events.onAdd = m.metrics.event
	m.members.onJoin = m.memberJoined
	m.members.onDead = m.memberDied
	if cfg.Prometheus != "" {
		p, err := NewPromSource(cfg.Prometheus)
		if err != nil {
			return nil, fmt.Errorf("--prometheus: %w", err)
		}
		m.prom = p
	}
	return m, nil
}

// GossipEvents is memberlist's event delegate for this manager: the
// membership table. memberlist calls it from its own goroutines.
func (m *Manager) GossipEvents() memberlist.EventDelegate { return m.members }

// GossipDelegate is memberlist's delegate for this manager: it serves
// meta as the node metadata and takes the load reports agents send
// directly.
func (m *Manager) GossipDelegate(meta []byte) memberlist.Delegate {
	return &managerDelegate{meta: meta, members: m.members}
}

// ApplyLoad takes the load report an agent returned with an answer (addr
// is the agent API address it came from).
func (m *Manager) ApplyLoad(addr string, l wire.Load) { m.members.applyLoad(addr, l) }

// Run follows the cluster until ctx ends, leading it whenever this
// manager holds the lock.
func (m *Manager) Run(ctx context.Context) error {
	// A lock held in our own name is our previous run's, which died
	// without releasing it (names of managers are unique): end it now
	// rather than wait for its session to expire.
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if h, err := m.deps.Lock.Holder(hctx); err == nil && h.Name == m.cfg.NodeName {
		m.log.Info("the leader lock is held by this manager's previous run; ending it", "term", h.Term)
		if err := m.deps.Lock.Depose(hctx, m.cfg.NodeName); err != nil {
			m.log.Warn("cannot end the previous run's hold; waiting for it to expire", "err", err)
		}
	}
	cancel()
	for ctx.Err() == nil {
		lease, err := m.deps.Lock.Acquire(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			m.log.Warn("cannot take part in the leader election; retrying", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		m.leadTerm(ctx, lease)
	}
	return nil
}

// current returns the leader while this manager leads, else nil.
func (m *Manager) current() *leader {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lead
}

// IsLeader reports whether this manager leads the cluster now.
func (m *Manager) IsLeader() bool { return m.current() != nil }

// leadTerm runs one term of leadership: it loads the desired state,
// starts every task that acts, and returns when the lock is lost, the
// lease lapses, the journal refuses the fence, or ctx ends. All tasks of
// the term end before it returns.
func (m *Manager) leadTerm(ctx context.Context, lease Lease) {
	tctx, cancel := context.WithCancel(wire.WithTerm(ctx, lease.Term()))
	defer cancel()
	l := newLeader(m, tctx, cancel, lease)
	store := newStore(m.deps.Journal, lease.Fence(), m.log)
	store.onFenced = cancel
	lctx, lcancel := context.WithTimeout(tctx, 2*time.Minute)
	events, chunks, err := store.load(lctx)
	lcancel()
	if err != nil {
		m.log.Error("cannot load the desired state; giving the lead up", "err", err)
		_ = lease.Release(context.WithoutCancel(ctx))
		sleepCtx(ctx, 2*time.Second)
		return
	}
	l.store = store
	// Loading 100,000 records takes ten times the memory they keep; give
	// that back to the system now rather than over minutes.
	debug.FreeOSMemory()
	l.spawn(store.run)
	m.events.reset(events, chunks, m.cfg.NodeName, lease.Term())
	// The event log is written until every other task of the term has
	// ended, so their last events are journaled too.
	pctx, pcancel := context.WithCancel(context.WithoutCancel(tctx))
	persisted := make(chan struct{})
	go func() {
		defer close(persisted)
		m.events.persist(pctx, m.deps.Journal, lease.Fence())
	}()
	l.spawn(l.watchLease)
	m.mu.Lock()
	m.lead = l
	m.mu.Unlock()
	m.metrics.leading(true)
	m.log.Info("leading the cluster", "term", lease.Term(), "containers", store.Len())
	m.event(EventLeader, m.cfg.NodeName, "leads the cluster (term %d): %d containers, %d instances, %d applications in the desired state",
		lease.Term(), store.Len(), len(store.Instances()), len(store.Apps()))
	if g := m.deps.Gossip; g != nil {
		// Rejoin the members the journal remembers, in the background: a
		// dead one (the leader just killed) holds a join attempt for
		// memberlist's TCP timeout, and the first round must not wait.
		if known := store.Members(); len(known) > 0 {
			go func() {
				if _, err := g.Join(known); err != nil {
					m.log.Info("no earlier member answered; waiting for workers to join", "tried", len(known))
				}
			}()
		}
	}
	l.spawn(l.syncRegistry)
	l.spawn(l.loop)
	l.spawn(l.watchHealth)
	l.spawn(l.autoscaleLoop)
	if stop, err := l.startCron(); err != nil {
		m.log.Error("consolidation schedule", "err", err)
	} else {
		defer stop()
	}
	<-tctx.Done()
	m.mu.Lock()
	m.lead = nil
	m.mu.Unlock()
	m.metrics.leading(false)
	l.wg.Wait()
	pcancel()
	<-persisted
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	_ = lease.Release(rctx)
	rcancel()
	m.log.Info("no longer leading", "term", lease.Term())
}

// memberJoined is called (on a goroutine of its own) when a member joins
// or comes back.
func (m *Manager) memberJoined(name, addr string) {
	m.log.Info("member joined", "member", name, "addr", addr)
	l := m.current()
	if l == nil {
		return
	}
	m.event(EventJoined, name, "joined the cluster from %s", addr)
	if err := l.store.Update(l.ctx, func(tx *Tx) error { tx.SetMember(name, addr); return nil }); err != nil {
		m.log.Warn("cannot remember member", "member", name, "err", err)
	}
	l.kick()
}

// memberDied is called (on a goroutine of its own) when gossip declares a
// member dead.
func (m *Manager) memberDied(name string) {
	m.log.Warn("member left or failed", "member", name)
	mem, _ := m.members.get(name)
	if mem.Load.Kind == wire.KindManager {
		m.managerDied(name)
		return
	}
	l := m.current()
	if l == nil {
		return
	}
	m.event(EventWorkerLost, name, "memberlist declared it dead")
	if mem.Load.Kind == wire.KindWorker {
		l.spawn(func(ctx context.Context) { l.workerDied(ctx, name) })
	}
	l.kick()
}

// managerDied deposes a dead manager that holds the lock, so that a
// standby leads without waiting for the lock's session to expire. Its
// writes are fenced and its agent commands carry an older term, so a
// manager wrongly declared dead can do no harm; it stands by when it
// notices.
func (m *Manager) managerDied(name string) {
	if name == m.cfg.NodeName {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h, err := m.deps.Lock.Holder(ctx)
	if err != nil || h.Name != name {
		return
	}
	m.log.Warn("the leader is dead to gossip; deposing it", "leader", name)
	if err := m.deps.Lock.Depose(ctx, name); err != nil {
		m.log.Warn("cannot depose the dead leader; its session will expire", "leader", name, "err", err)
	}
}

// leader is this manager during one term of leadership: the desired state
// in memory and every task that acts on it. Every goroutine it starts is
// tracked and ends with the term.
type leader struct {
	m      *Manager
	agents Agents          // the agents, every call carrying the term
	ctx    context.Context // ends with the term
	stop   context.CancelFunc
	lease  Lease
	store  *Store
	since  time.Time
	wg     sync.WaitGroup

	kickCh chan struct{} // asks the loop for a reconciliation now

	placeMu sync.Mutex // serialises placement: read state, decide, write

	busyMu sync.Mutex
	busy   map[string]bool      // containers and instances with an operation in flight
	absent map[string]time.Time // instances whose worker is away, since when

	cons   consolidator
	scaler *autoscaler

	appsMu    sync.Mutex
	deploying map[string]context.CancelFunc // applications being deployed

	rounds       int       // reconciliation rounds completed in this term
	roll         int       // partial rounds so far: which slice comes next
	rollRegs     []string  // the containers with registrations, for this cycle of slices
	rollWorkers  []string  // the workers, for this cycle of slices
	graceChecked bool      // a full round ran after unknownWorkerGrace
	lastSweep    time.Time // when the cloud was last listed for stray instances
}

func newLeader(m *Manager, ctx context.Context, stop context.CancelFunc, lease Lease) *leader {
	return &leader{m: m, agents: termAgents{a: m.deps.Agents, term: lease.Term()}, ctx: ctx, stop: stop, lease: lease, since: time.Now(), kickCh: make(chan struct{}, 1),
		busy: map[string]bool{}, absent: map[string]time.Time{}, deploying: map[string]context.CancelFunc{},
		cons:   consolidator{unneededSince: map[string]time.Time{}, draining: map[string]string{}, moving: map[string]bool{}},
		scaler: newAutoscaler()}
}

// spawn runs fn on a goroutine owned by the term: fn gets the term's
// context and the term waits for it to end.
func (l *leader) spawn(fn func(ctx context.Context)) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		fn(l.ctx)
	}()
}

// watchLease ends the term when the lease can no longer be trusted: a
// leader whose session may have expired must not act, even before the
// lock tells it so.
func (l *leader) watchLease(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.lease.Lost():
			l.m.log.Warn("lost the leader lock; standing by", "term", l.lease.Term())
			l.stop()
			return
		case <-t.C:
			if !l.lease.Valid() {
				l.m.log.Warn("the leader lease could not be renewed in time; standing by", "term", l.lease.Term())
				l.stop()
				return
			}
		}
	}
}

// kick asks for a reconciliation soon.
func (l *leader) kick() {
	select {
	case l.kickCh <- struct{}{}:
	default:
	}
}

// loop reconciles at start, every ReconcileInterval and when kicked.
func (l *leader) loop(ctx context.Context) {
	t := time.NewTicker(l.m.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		if err := l.reconcile(ctx); err != nil && ctx.Err() == nil {
			l.m.log.Warn("reconciliation incomplete", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.kickCh:
		}
	}
}

// claim marks a container or instance as busy; it returns false if
// another operation on it is in flight.
func (l *leader) claim(name string) bool {
	l.busyMu.Lock()
	defer l.busyMu.Unlock()
	if l.busy[name] {
		return false
	}
	l.busy[name] = true
	return true
}

func (l *leader) release(name string) {
	l.busyMu.Lock()
	delete(l.busy, name)
	l.busyMu.Unlock()
}

// busyWith reports whether an operation on key is in flight.
func (l *leader) busyWith(key string) bool {
	l.busyMu.Lock()
	defer l.busyMu.Unlock()
	return l.busy[key]
}

// claimWait claims name, waiting while another operation holds it.
func (l *leader) claimWait(ctx context.Context, name string) error {
	for !l.claim(name) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// acting reports whether the leader may act on the world now: its term
// goes on and its lease is valid. Checked before commands whose effect a
// successor could not undo (stopping a copy no record asks for).
func (l *leader) acting() bool { return l.ctx.Err() == nil && l.lease.Valid() }

// snapshot builds the coordinator's view: every alive worker, with the
// larger of what it reports and what the desired state has promised it,
// so that containers being started are never counted as free memory.
func (l *leader) snapshot() *coordinator.Snapshot {
	promised := l.store.Promised()
	s := &coordinator.Snapshot{}
	for _, w := range l.m.members.workers() {
		if w.Status != MemberAlive || w.Load.API == "" {
			continue
		}
		p := promised[w.Name]
		cw := coordinator.Worker{
			Name: w.Name, Tags: w.Load.Tags, Capacity: w.Load.Capacity,
			Reserved: max(w.Load.Reserved, p.reserved), Used: w.Load.Used, CPUUsed: w.Load.CPU,
			Containers: max(w.Load.Containers, p.count), Draining: w.Load.Draining || l.isDraining(w.Name),
		}
		// Above the node usage limits: placement prefers other workers.
		cw.Hot = l.m.cfg.NodeAlert.Hot(&cw)
		s.Workers = append(s.Workers, cw)
	}
	return s
}

// snapshotWithout is snapshot with one container's promise taken off its
// worker: the cluster as if that container were being placed now.
func (l *leader) snapshotWithout(c *Container) *coordinator.Snapshot {
	s := l.snapshot()
	for i := range s.Workers {
		w := &s.Workers[i]
		if c.State.holdsMemory() && (w.Name == c.Node || (c.Move != nil && w.Name == c.Move.Node)) {
			w.Reserved = max(w.Reserved-c.Memory, 0)
			w.Containers = max(w.Containers-1, 0)
		}
	}
	return s
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// errorf is fmt.Errorf, for symmetry with badRequest.
var errorf = fmt.Errorf
