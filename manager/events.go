package manager

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

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
	EventLeader      = "leader"       // a manager began to lead the cluster
)

// Event is one decision with its reason, as `micado events` shows it.
type Event struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Subject string    `json:"subject"` // the container, worker or instance
	Message string    `json:"message"`
	// Manager and Term say which manager decided, in which term of
	// leadership: only one manager acts at a time, and terms only grow.
	Manager string `json:"manager,omitempty"`
	Term    uint64 `json:"term,omitempty"`
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

// eventLog keeps the recent events in a ring and, while this manager
// leads, persists them to the journal (events/<seq>) in the background,
// fenced like every other write: recording never blocks a decision, and a
// deposed leader's events never land. Safe for concurrent use.
type eventLog struct {
	mu      sync.Mutex
	ring    []Event
	keep    int
	seq     uint64
	manager string
	term    uint64
	notify  chan struct{} // closed and replaced on every new event
	queue   chan Event
	log     *slog.Logger
	now     func() time.Time
	onAdd   func(Event) // metrics hook
	// chunks are the event records in the journal, oldest first.
	chunks []eventChunk
}

// eventChunk is one journal record of events: every event the log wrote
// at once (events/<seq of the first>), so a busy manager writes one
// record, not one per event.
type eventChunk struct {
	key  string
	last uint64 // sequence number of its newest event
}

// Event chunks' limits.
const (
	// maxChunkEvents and maxChunkBytes bound one record of events, well
	// below Consul's 512 KiB per value.
	maxChunkEvents = 1000
	maxChunkBytes  = 128 << 10
)

func newEventLog(keep int, log *slog.Logger) *eventLog {
	if keep <= 0 {
		keep = DefaultEventsKept
	}
	return &eventLog{keep: keep, notify: make(chan struct{}), queue: make(chan Event, 4096), log: log, now: time.Now}
}

func eventKey(seq uint64) string { return eventsPrefix + fmt.Sprintf("%020d", seq) }

// decodeEventChunk reads one journal record of events: a JSON array (a
// chunk) or, as older managers wrote them, one event.
func decodeEventChunk(b []byte) []Event {
	var evs []Event
	if json.Unmarshal(b, &evs) == nil {
		return evs
	}
	var e Event
	if json.Unmarshal(b, &e) == nil && e.Seq > 0 {
		return []Event{e}
	}
	return nil
}

// reset starts a term: the events an earlier leader left (oldest first)
// become the ring, numbering continues after them, and new events carry
// this manager's name and term. chunks are the journal's event records.
func (l *eventLog) reset(evs []Event, chunks []eventChunk, manager string, term uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.chunks = append(l.chunks[:0], chunks...)
	if len(evs) > l.keep {
		evs = evs[len(evs)-l.keep:]
	}
	l.ring = append([]Event(nil), evs...)
	if len(evs) > 0 {
		l.seq = max(l.seq, evs[len(evs)-1].Seq)
	}
	l.manager, l.term = manager, term
	for {
		select {
		case <-l.queue: // events of an earlier term never written
		default:
			return
		}
	}
}

// add records an event; the message is formatted like fmt.Sprintf.
func (l *eventLog) add(kind, subject, format string, args ...any) Event {
	l.mu.Lock()
	l.seq++
	e := Event{Seq: l.seq, Time: l.now().UTC(), Kind: kind, Subject: subject, Message: fmt.Sprintf(format, args...),
		Manager: l.manager, Term: l.term}
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

// persist writes queued events to the journal, as few records as it can
// (one per batch, up to maxChunkEvents), and deletes the records whose
// events are all beyond the newest keep, until ctx (the term) ends; then
// it writes what is left while the lock may still be ours (a clean stop;
// a deposed leader's fence refuses it).
func (l *eventLog) persist(ctx context.Context, j Journal, fence Fence) {
	for {
		var batch []Event
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			for {
				evs := l.take(nil)
				if len(evs) == 0 || !l.writeChunk(fctx, j, fence, evs) {
					break
				}
			}
			cancel()
			return
		case e := <-l.queue:
			batch = append(batch, e)
		}
		// Not cancelled with the term: a batch taken from the queue is
		// written (or fenced), never dropped half way.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
		l.writeChunk(cctx, j, fence, l.take(batch))
		cancel()
		l.prune(ctx, j, fence)
	}
}

// take adds what is queued to batch, up to one chunk.
func (l *eventLog) take(batch []Event) []Event {
	for len(batch) < maxChunkEvents {
		select {
		case e := <-l.queue:
			batch = append(batch, e)
		default:
			return batch
		}
	}
	return batch
}

// writeChunk writes events as one record (or a few, if large); it
// reports whether it wrote something.
func (l *eventLog) writeChunk(ctx context.Context, j Journal, fence Fence, evs []Event) bool {
	for len(evs) > 0 {
		n := len(evs)
		b, _ := json.Marshal(evs[:n])
		for len(b) > maxChunkBytes && n > 1 {
			n /= 2
			b, _ = json.Marshal(evs[:n])
		}
		key := eventKey(evs[0].Seq)
		if _, err := j.Commit(ctx, fence, []Op{{Verb: OpSet, Key: key, Value: b}}); err != nil {
			if ctx.Err() == nil {
				l.log.Debug("cannot persist events", "first", evs[0].Seq, "n", n, "err", err)
			}
			return false
		}
		l.mu.Lock()
		l.chunks = append(l.chunks, eventChunk{key: key, last: evs[n-1].Seq})
		l.mu.Unlock()
		evs = evs[n:]
	}
	return true
}

// prune deletes the event records whose events are all older than the
// newest keep.
func (l *eventLog) prune(ctx context.Context, j Journal, fence Fence) {
	l.mu.Lock()
	var old []eventChunk
	if l.seq > uint64(l.keep) {
		limit := l.seq - uint64(l.keep)
		i := 0
		for i < len(l.chunks) && l.chunks[i].last <= limit {
			i++
		}
		old = append(old, l.chunks[:i]...)
		l.chunks = append(l.chunks[:0:0], l.chunks[i:]...)
	}
	l.mu.Unlock()
	max := j.MaxOps() - 1
	for start := 0; start < len(old); start += max {
		var del []Op
		for _, c := range old[start:min(start+max, len(old))] {
			del = append(del, Op{Verb: OpDelete, Key: c.key})
		}
		cctx, cancel := context.WithTimeout(ctx, commitTimeout)
		_, _ = j.Commit(cctx, fence, del)
		cancel()
	}
}

// event records a decision with its reason. Only a leader decides, so a
// standby records nothing.
func (m *Manager) event(kind, subject, format string, args ...any) {
	if m.current() != nil {
		m.events.add(kind, subject, format, args...)
	}
}

// skipEvents records why workers stay at scale-in, once per change of
// reason: a round every minute would otherwise repeat them all.
func (l *leader) skipEvents(skips []coordinator.Skip) {
	l.cons.stateMu.Lock()
	var fresh []coordinator.Skip
	if l.cons.lastSkip == nil {
		l.cons.lastSkip = map[string]string{}
	}
	for _, s := range skips {
		if l.cons.lastSkip[s.Worker] != s.Reason {
			l.cons.lastSkip[s.Worker] = s.Reason
			fresh = append(fresh, s)
		}
	}
	l.cons.stateMu.Unlock()
	for _, s := range fresh {
		l.m.event(EventSkipped, s.Worker, "kept at scale-in: %s", s.Reason)
	}
}
