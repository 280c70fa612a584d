package manager

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/coordinator"
)

// Event kinds: every decision the manager takes, and what befell the
// cluster.
const (
	EventPlaced      = "placed"       // a container got a worker
	EventPending     = "pending"      // a container waits, and why
	EventRunning     = "running"      // a container started and was registered
	EventFailed      = "failed"       // a container cannot run, and why
	EventStopped     = "stopped"      // a container was stopped by the user
	EventScaleOut    = "scale-out"    // an instance was asked of the cloud
	EventJoined      = "joined"       // a worker joined
	EventWorkerLost  = "worker-lost"  // a worker died or left unannounced
	EventRequeued    = "requeued"     // a container of a lost worker goes elsewhere
	EventScaleIn     = "scale-in"     // a worker was chosen for scale-in
	EventSkipped     = "skipped"      // a worker was kept at scale-in, and why
	EventMoved       = "moved"        // a container moved make-before-break
	EventTerminated  = "terminated"   // an instance was terminated
	EventInstanceErr = "instance-err" // the cloud could not make an instance
	EventRecovered   = "recovered"    // reconciliation repaired something
)

// Event is one decision with its reason, as `micado events` shows it.
type Event struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Subject string    `json:"subject"` // the container, worker or instance
	Message string    `json:"message"`
}

func (e Event) String() string {
	return fmt.Sprintf("%s  %-12s %-14s %s", e.Time.Local().Format("15:04:05.000"), e.Kind, e.Subject, e.Message)
}

// Defaults for the event log.
const (
	// DefaultEventsKept is how many recent events the manager keeps, in
	// memory and in Consul KV, so they survive a manager restart.
	DefaultEventsKept = 1000
	// maxEventWait bounds a long poll for new events.
	maxEventWait = 60 * time.Second
)

// eventLog keeps the recent events in a ring and persists them to Consul
// KV (micado/<cluster>/events/<seq>) in the background: recording never
// blocks a decision on Consul. Safe for concurrent use.
type eventLog struct {
	mu     sync.Mutex
	ring   []Event
	keep   int
	seq    uint64
	notify chan struct{} // closed and replaced on every new event

	kv     *api.KV
	prefix string
	queue  chan Event
	log    *slog.Logger
	now    func() time.Time
	onAdd  func(Event) // metrics hook
}

func newEventLog(kv *api.KV, cluster string, keep int, log *slog.Logger) *eventLog {
	if keep <= 0 {
		keep = DefaultEventsKept
	}
	return &eventLog{keep: keep, notify: make(chan struct{}), kv: kv, prefix: "micado/" + cluster + "/events/",
		queue: make(chan Event, 4096), log: log, now: time.Now}
}

func eventKey(seq uint64) string { return fmt.Sprintf("%020d", seq) }

// load reads the events an earlier manager left, so numbering continues
// and `micado events` shows history across restarts.
func (l *eventLog) load(ctx context.Context) error {
	pairs, _, err := l.kv.List(l.prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("read events from Consul KV: %w", err)
	}
	evs := make([]Event, 0, len(pairs))
	for _, p := range pairs {
		var e Event
		if json.Unmarshal(p.Value, &e) == nil && e.Seq > 0 {
			evs = append(evs, e)
		}
	}
	sort.Slice(evs, func(i, j int) bool { return evs[i].Seq < evs[j].Seq })
	if len(evs) > l.keep {
		evs = evs[len(evs)-l.keep:]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ring = evs
	if len(evs) > 0 {
		l.seq = evs[len(evs)-1].Seq
	}
	return nil
}

// add records an event; the message is formatted like fmt.Sprintf.
func (l *eventLog) add(kind, subject, format string, args ...any) Event {
	l.mu.Lock()
	l.seq++
	e := Event{Seq: l.seq, Time: l.now().UTC(), Kind: kind, Subject: subject, Message: fmt.Sprintf(format, args...)}
	l.ring = append(l.ring, e)
	// Trim in one copy once twice as many are held, not on every event.
	if len(l.ring) >= 2*l.keep {
		l.ring = append(l.ring[:0:0], l.ring[len(l.ring)-l.keep:]...)
	}
	close(l.notify)
	l.notify = make(chan struct{})
	onAdd := l.onAdd
	l.mu.Unlock()
	if onAdd != nil {
		onAdd(e)
	}
	select {
	case l.queue <- e:
	default:
		l.log.Warn("event log queue full; event kept in memory only", "seq", e.Seq)
	}
	return e
}

// since returns the events after seq (at most limit, the newest), and a
// channel closed when another one arrives.
func (l *eventLog) since(seq uint64, limit int) ([]Event, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ring := l.ring
	if len(ring) > l.keep {
		ring = ring[len(ring)-l.keep:]
	}
	i := sort.Search(len(ring), func(i int) bool { return ring[i].Seq > seq })
	out := append([]Event(nil), ring[i:]...)
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, l.notify
}

// wait returns the events after seq, waiting up to d for one to arrive.
func (l *eventLog) wait(ctx context.Context, seq uint64, limit int, d time.Duration) []Event {
	evs, ch := l.since(seq, limit)
	if len(evs) > 0 || d <= 0 {
		return evs
	}
	select {
	case <-ch:
	case <-time.After(d):
	case <-ctx.Done():
	}
	evs, _ = l.since(seq, limit)
	return evs
}

// persist writes queued events to Consul KV and prunes old ones, until
// ctx ends.
func (l *eventLog) persist(ctx context.Context) {
	written := 0
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-l.queue:
			b, _ := json.Marshal(e)
			if _, err := l.kv.Put(&api.KVPair{Key: l.prefix + eventKey(e.Seq), Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil && ctx.Err() == nil {
				l.log.Debug("cannot persist event", "seq", e.Seq, "err", err)
			}
			written++
			if written%100 == 0 {
				l.prune(ctx, e.Seq)
			}
		}
	}
}

// prune deletes persisted events older than the newest keep.
func (l *eventLog) prune(ctx context.Context, newest uint64) {
	if newest <= uint64(l.keep) {
		return
	}
	keys, _, err := l.kv.Keys(l.prefix, "", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return
	}
	for _, k := range keys {
		n, err := strconv.ParseUint(k[len(l.prefix):], 10, 64)
		if err == nil && n <= newest-uint64(l.keep) {
			_, _ = l.kv.Delete(k, (&api.WriteOptions{}).WithContext(ctx))
		}
	}
}

// event records a decision with its reason. Safe before Run wired the log.
func (m *Manager) event(kind, subject, format string, args ...any) {
	if m.events != nil {
		m.events.add(kind, subject, format, args...)
	}
}

// skipEvents records why workers stay at scale-in, once per change of
// reason: a round every minute would otherwise repeat them all.
func (m *Manager) skipEvents(skips []coordinator.Skip) {
	m.cons.stateMu.Lock()
	var fresh []coordinator.Skip
	if m.cons.lastSkip == nil {
		m.cons.lastSkip = map[string]string{}
	}
	for _, s := range skips {
		if m.cons.lastSkip[s.Worker] != s.Reason {
			m.cons.lastSkip[s.Worker] = s.Reason
			fresh = append(fresh, s)
		}
	}
	m.cons.stateMu.Unlock()
	for _, s := range fresh {
		m.event(EventSkipped, s.Worker, "kept at scale-in: %s", s.Reason)
	}
}
