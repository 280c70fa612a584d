package manager

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"
)

// Lock decides which manager of a cluster acts: only the holder of the
// lock (the leader) changes the desired state, places, starts, stops and
// scales; the others stand by and forward the API to it. The production
// lock is a Consul session lock on micado/<cluster>/leader
// (manager/consul); MemLock serves tests.
type Lock interface {
	// Acquire blocks until this manager holds the lock, or ctx ends.
	Acquire(ctx context.Context) (Lease, error)
	// Holder reports which manager holds the lock now (Name is "" when
	// none does).
	Holder(ctx context.Context) (Holder, error)
	// Depose ends the hold of the named manager at once, when gossip has
	// declared it dead, so that a standby takes over without waiting for
	// its session to expire. It does nothing if name does not hold the
	// lock. Safe because every write of a deposed leader is fenced.
	Depose(ctx context.Context, name string) error
}

// Holder is the manager that holds the lock.
type Holder struct {
	Name  string    `json:"name"`
	Since time.Time `json:"since"`
	Term  uint64    `json:"term"`
}

// Lease is one hold of the lock: one term of leadership.
type Lease interface {
	// Fence is what every journal commit of this term carries: it fails
	// once the lock is lost.
	Fence() Fence
	// Term grows with every acquisition of the lock, in any manager. It
	// goes with every command to a worker agent, which refuses commands
	// of an older term than one it has already obeyed.
	Term() uint64
	// Lost is closed when the lock is lost (released, deposed, expired).
	Lost() <-chan struct{}
	// Valid reports whether the hold is still certain: it was confirmed
	// within the session TTL. A leader acts on the world only while its
	// lease is valid.
	Valid() bool
	// Release gives the lock up.
	Release(ctx context.Context) error
}

// ErrNotLeader answers work that needs the leader on a manager that is
// not (or no longer) the leader.
var ErrNotLeader = errors.New("this manager is not the leader")

// MemLock is an in-memory Lock shared by the managers of one test, with
// the semantics of the Consul lock: one holder, terms that only grow,
// fences that fail once the hold ends.
type MemLock struct {
	mu      sync.Mutex
	holder  string
	session string
	since   time.Time
	term    uint64
	lost    chan struct{} // closed when the current hold ends
	freed   chan struct{} // closed when the lock becomes free
	now     func() time.Time
	expired map[string]bool // sessions whose lease tests made invalid
	paused  map[string]bool // managers that may not take the lock now
}

// NewMemLock returns a free lock.
func NewMemLock() *MemLock {
	f := make(chan struct{})
	close(f)
	return &MemLock{freed: f, now: time.Now, expired: map[string]bool{}, paused: map[string]bool{}}
}

// Pause keeps the manager name from taking the lock until Resume (tests:
// a manager cut off from the store).
func (l *MemLock) Pause(name string) {
	l.mu.Lock()
	l.paused[name] = true
	l.mu.Unlock()
}

// Resume lets the manager name take the lock again.
func (l *MemLock) Resume(name string) {
	l.mu.Lock()
	delete(l.paused, name)
	l.mu.Unlock()
}

// For returns the lock as the manager name sees it.
func (l *MemLock) For(name string) Lock { return &memLockHandle{l: l, name: name} }

// Holder reports the current holder.
func (l *MemLock) Holder() Holder {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Holder{Name: l.holder, Since: l.since, Term: l.term}
}

// Break ends the current hold, as an expired session would (tests).
func (l *MemLock) Break() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.releaseLocked()
}

// Expire makes the current holder's lease invalid without ending the hold
// yet: the holder must stop acting on its own (tests of leases).
func (l *MemLock) Expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expired[l.session] = true
}

func (l *MemLock) releaseLocked() {
	if l.holder == "" {
		return
	}
	l.holder, l.session = "", ""
	close(l.lost)
	close(l.freed)
}

func (l *MemLock) holds(f Fence) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.session != "" && l.session == f.Session
}

type memLockHandle struct {
	l    *MemLock
	name string
}

func (h *memLockHandle) Acquire(ctx context.Context) (Lease, error) {
	l := h.l
	for {
		l.mu.Lock()
		if l.holder == "" && !l.paused[h.name] {
			l.term++
			l.holder, l.since = h.name, l.now()
			l.session = h.name + "#" + strconv.FormatUint(l.term, 10)
			l.lost, l.freed = make(chan struct{}), make(chan struct{})
			ls := &memLease{l: l, session: l.session, term: l.term, lost: l.lost}
			l.mu.Unlock()
			return ls, nil
		}
		freed := l.freed
		paused := l.paused[h.name]
		l.mu.Unlock()
		if paused {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-freed:
		}
	}
}

func (h *memLockHandle) Holder(context.Context) (Holder, error) { return h.l.Holder(), nil }

func (h *memLockHandle) Depose(_ context.Context, name string) error {
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	if h.l.holder == name {
		h.l.releaseLocked()
	}
	return nil
}

type memLease struct {
	l       *MemLock
	session string
	term    uint64
	lost    chan struct{}
}

func (s *memLease) Fence() Fence          { return Fence{Key: "leader", Session: s.session} }
func (s *memLease) Term() uint64          { return s.term }
func (s *memLease) Lost() <-chan struct{} { return s.lost }
func (s *memLease) Valid() bool {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	return s.l.session == s.session && !s.l.expired[s.session]
}
func (s *memLease) Release(context.Context) error {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	if s.l.session == s.session {
		s.l.releaseLocked()
	}
	return nil
}
