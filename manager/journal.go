package manager

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Journal is the durable record of the desired state. The manager keeps
// the state in memory (Store) and reads the journal whole only when it
// becomes the leader; after that it only writes, and every write is one
// atomic Commit. Consul KV is the production journal (manager/consul);
// MemJournal serves tests and benchmarks.
//
// Keys are relative to the cluster's prefix: "containers/web-1",
// "instances/w-2", "apps/shop", "members/w-1", "events/<seq>",
// "batches/<id>".
//
// Implementations must be safe for concurrent use.
type Journal interface {
	// Load returns every record, with the index of its last change.
	Load(ctx context.Context) ([]Pair, error)
	// Read returns the records of the given keys that exist.
	Read(ctx context.Context, keys []string) ([]Pair, error)
	// Commit applies ops atomically: all or none. It fails with
	// ErrConflict when a check-and-set op finds its record changed, and
	// with ErrFenced when fence is set and the fence key is no longer held
	// by fence.Session (the manager was deposed). It returns the new index
	// of every key it wrote.
	Commit(ctx context.Context, fence Fence, ops []Op) (map[string]uint64, error)
	// MaxOps is the largest number of ops one Commit takes, fence
	// included.
	MaxOps() int
}

// Pair is one journal record.
type Pair struct {
	Key   string
	Value []byte
	Index uint64 // the index of its last change
}

// OpVerb says what an Op does.
type OpVerb uint8

// Journal operations.
const (
	// OpCAS writes Value if the record's index is still Index (0: the
	// record must not exist).
	OpCAS OpVerb = iota
	// OpSet writes Value unconditionally (events, member addresses).
	OpSet
	// OpDeleteCAS deletes the record if its index is still Index.
	OpDeleteCAS
	// OpDelete deletes the record if it exists.
	OpDelete
)

// Op is one change in a Commit.
type Op struct {
	Verb  OpVerb
	Key   string
	Value []byte
	Index uint64
}

// Fence makes a Commit conditional on leadership: it succeeds only while
// Key is locked by Session. The zero Fence commits unconditionally.
type Fence struct {
	Key     string
	Session string
}

// Errors of the journal.
var (
	// ErrConflict: a record changed since it was read (check-and-set).
	ErrConflict = errors.New("changed concurrently")
	// ErrFenced: this manager no longer holds the leader lock.
	ErrFenced = errors.New("this manager is no longer the leader")
)

// MemJournal is an in-memory Journal with Consul's semantics (indexes
// grow with every commit, check-and-set, fences checked against a
// MemLock). Tests use it to run managers without Consul, and can make
// commits fail to simulate a store outage or a crash between writes.
type MemJournal struct {
	mu    sync.Mutex
	data  map[string]Pair
	index uint64
	lock  *MemLock // checks fences; nil: fences always hold
	max   int

	// FailCommit, when set, is called before every commit with its fence
	// and ops; a non-nil error fails the commit (nothing is written).
	FailCommit func(fence Fence, ops []Op) error
	// AfterCommit, when set, is called after every successful commit.
	AfterCommit func(ops []Op)
	commits     int
}

// NewMemJournal returns an empty journal whose fences are checked against
// lock (nil: fences always hold). maxOps defaults to Consul's 128.
func NewMemJournal(lock *MemLock) *MemJournal {
	return &MemJournal{data: map[string]Pair{}, lock: lock, max: 128}
}

// SetMaxOps changes the largest number of ops per commit (tests of
// batching).
func (j *MemJournal) SetMaxOps(n int) { j.mu.Lock(); j.max = n; j.mu.Unlock() }

// MaxOps implements Journal.
func (j *MemJournal) MaxOps() int { j.mu.Lock(); defer j.mu.Unlock(); return j.max }

// Load implements Journal.
func (j *MemJournal) Load(ctx context.Context) ([]Pair, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]Pair, 0, len(j.data))
	for _, p := range j.data {
		out = append(out, clonePair(p))
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Key < out[b].Key })
	return out, nil
}

// Read implements Journal.
func (j *MemJournal) Read(ctx context.Context, keys []string) ([]Pair, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []Pair
	for _, k := range keys {
		if p, ok := j.data[k]; ok {
			out = append(out, clonePair(p))
		}
	}
	return out, nil
}

// Commit implements Journal.
func (j *MemJournal) Commit(ctx context.Context, fence Fence, ops []Op) (map[string]uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if n := len(ops); fence.Key != "" && n+1 > j.max || n > j.max {
		return nil, fmt.Errorf("transaction contains too many operations (%d > %d)", n, j.max)
	}
	if j.FailCommit != nil {
		if err := j.FailCommit(fence, ops); err != nil {
			return nil, err
		}
	}
	if fence.Key != "" && j.lock != nil && !j.lock.holds(fence) {
		return nil, ErrFenced
	}
	if len(ops) == 0 {
		return map[string]uint64{}, nil
	}
	for _, op := range ops {
		cur, ok := j.data[op.Key]
		switch op.Verb {
		case OpCAS, OpDeleteCAS:
			if (op.Index == 0 && ok) || (op.Index != 0 && (!ok || cur.Index != op.Index)) {
				return nil, fmt.Errorf("%w: %s", ErrConflict, op.Key)
			}
		}
	}
	j.index++
	out := map[string]uint64{}
	for _, op := range ops {
		switch op.Verb {
		case OpCAS, OpSet:
			j.data[op.Key] = Pair{Key: op.Key, Value: append([]byte(nil), op.Value...), Index: j.index}
			out[op.Key] = j.index
		case OpDelete, OpDeleteCAS:
			delete(j.data, op.Key)
		}
	}
	j.commits++
	if j.AfterCommit != nil {
		j.AfterCommit(ops)
	}
	return out, nil
}

// Put writes a record directly, as an operator or an older manager would
// have left it (tests).
func (j *MemJournal) Put(key string, value []byte) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.index++
	j.data[key] = Pair{Key: key, Value: append([]byte(nil), value...), Index: j.index}
}

// Get returns one record (tests).
func (j *MemJournal) Get(key string) (Pair, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	p, ok := j.data[key]
	return clonePair(p), ok
}

// Keys returns the keys under prefix, sorted (tests).
func (j *MemJournal) Keys(prefix string) []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []string
	for k := range j.data {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// Commits counts the successful commits (tests of batching).
func (j *MemJournal) Commits() int { j.mu.Lock(); defer j.mu.Unlock(); return j.commits }

func clonePair(p Pair) Pair {
	p.Value = append([]byte(nil), p.Value...)
	return p
}
