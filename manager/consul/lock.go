package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/manager"
)

// leaderKey is the lock's key under the cluster's prefix; its value names
// the manager that leads.
const leaderKey = "leader"

// Lock timing, each with its reason.
const (
	// lockDelay: Consul refuses a lock released by an invalidated session
	// for this long. Its default (15 s) guards clients that cannot be
	// fenced; every write of a micado leader is fenced by its session, so
	// a standby may take over at once: none. (consul/api's session Create
	// rounds any delay up to 1 ms, and a standby whose acquire lands
	// inside it is refused, after which consul/api waits a fixed 5 s
	// before it tries again: that happened often on loopback. So the
	// session is created with a raw request that says "0s".)
	lockDelay = "0s"
	// lockWait bounds one blocking read of the lock while waiting for it,
	// so that a manager that shuts down stops waiting soon.
	lockWait = 5 * time.Second
	// monitorRetries lets the leader ride out a short Consul blip (a
	// server restart) without giving the lead up; its lease still lapses
	// if the session cannot be renewed.
	monitorRetries = 5
)

// Lock is the leader lock: a Consul session lock on
// micado/<cluster>/leader whose value is the leading manager's name. The
// manager renews its session itself and treats the lock as held only
// while the last renewal is younger than the TTL (a lease): Consul keeps
// a session for at least its TTL after a renewal, so no other manager can
// hold the lock meanwhile.
type Lock struct {
	c    *api.Client
	key  string
	name string
	ttl  time.Duration
	log  *slog.Logger
}

var _ manager.Lock = (*Lock)(nil)

// NewLock returns the leader lock of cluster as the manager name takes it.
func NewLock(c *api.Client, cluster, name string, ttl time.Duration, log *slog.Logger) *Lock {
	return &Lock{c: c, key: Prefix(cluster) + leaderKey, name: name, ttl: ttl, log: log}
}

// Key is the lock's key in Consul KV.
func (l *Lock) Key() string { return l.key }

// Acquire implements manager.Lock.
func (l *Lock) Acquire(ctx context.Context) (manager.Lease, error) {
	var created struct{ ID string }
	_, err := l.c.Raw().Write("/v1/session/create", map[string]string{
		"Name": "micado manager " + l.name, "TTL": l.ttl.String(), "LockDelay": lockDelay,
		"Behavior": api.SessionBehaviorRelease,
	}, &created, (&api.WriteOptions{}).WithContext(ctx))
	if err == nil && created.ID == "" {
		err = errors.New("Consul answered without a session ID")
	}
	if err != nil {
		return nil, fmt.Errorf("create the leader session: %w", err)
	}
	sid := created.ID
	ls := &lease{l: l, session: sid, lost: make(chan struct{}), renewed: time.Now()}
	rctx, stopRenew := context.WithCancel(context.WithoutCancel(ctx))
	ls.stopRenew = stopRenew
	go ls.renew(rctx)
	lk, err := l.c.LockOpts(&api.LockOptions{Key: l.key, Value: []byte(l.name), Session: sid,
		MonitorRetries: monitorRetries, MonitorRetryTime: time.Second, LockWaitTime: lockWait})
	if err != nil {
		ls.end()
		return nil, err
	}
	lostCh, err := lk.Lock(ctx.Done())
	if err != nil || lostCh == nil {
		ls.end()
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("take the leader lock: %w", err)
	}
	ls.lock = lk
	// The term is the Raft index of our acquisition: it grows with every
	// acquisition by any manager.
	p, _, err := l.c.KV().Get(l.key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil || p == nil || p.Session != sid {
		ls.end()
		if err == nil {
			err = errors.New("the lock changed hands at once")
		}
		return nil, fmt.Errorf("read the leader lock: %w", err)
	}
	ls.term = p.ModifyIndex
	go func() {
		select {
		case <-lostCh:
		case <-ls.lost:
		}
		ls.end()
	}()
	return ls, nil
}

// Holder implements manager.Lock.
func (l *Lock) Holder(ctx context.Context) (manager.Holder, error) {
	p, _, err := l.c.KV().Get(l.key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return manager.Holder{}, err
	}
	if p == nil || p.Session == "" {
		return manager.Holder{}, nil
	}
	return manager.Holder{Name: string(p.Value), Term: p.ModifyIndex}, nil
}

// Depose implements manager.Lock: it destroys the holder's session.
func (l *Lock) Depose(ctx context.Context, name string) error {
	p, _, err := l.c.KV().Get(l.key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return err
	}
	if p == nil || p.Session == "" || string(p.Value) != name {
		return nil
	}
	_, err = l.c.Session().Destroy(p.Session, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// lease is one hold of the lock.
type lease struct {
	l         *Lock
	session   string
	term      uint64
	lock      *api.Lock
	stopRenew context.CancelFunc

	mu      sync.Mutex
	renewed time.Time // when the last successful renewal was sent
	lost    chan struct{}
	ended   bool
}

func (s *lease) Fence() manager.Fence  { return manager.Fence{Key: s.l.key, Session: s.session} }
func (s *lease) Term() uint64          { return s.term }
func (s *lease) Lost() <-chan struct{} { return s.lost }

// Valid implements manager.Lease: the last renewal was sent less than
// 80% of the TTL ago (the rest is margin for clocks and latency).
func (s *lease) Valid() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.ended && time.Since(s.renewed) < s.l.ttl*8/10
}

func (s *lease) Release(ctx context.Context) error {
	s.end()
	_, err := s.l.c.Session().Destroy(s.session, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// end marks the lease lost (once) and stops renewing.
func (s *lease) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.ended = true
	s.stopRenew()
	close(s.lost)
}

// renew renews the session three times per TTL; a session Consul no
// longer knows ends the lease.
func (s *lease) renew(ctx context.Context) {
	t := time.NewTicker(s.l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, s.l.ttl/3)
		e, _, err := s.l.c.Session().Renew(s.session, (&api.WriteOptions{}).WithContext(rctx))
		cancel()
		switch {
		case err != nil:
			if ctx.Err() == nil && s.l.log != nil {
				s.l.log.Warn("cannot renew the leader session", "err", err)
			}
		case e == nil:
			if s.l.log != nil {
				s.l.log.Warn("the leader session is gone")
			}
			s.end()
			return
		default:
			s.mu.Lock()
			s.renewed = sent
			s.mu.Unlock()
		}
	}
}
