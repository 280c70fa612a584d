package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/micado-scale/micado/internal/wire"
)

// Journal key prefixes.
const (
	containersPrefix = "containers/"
	instancesPrefix  = "instances/"
	appsPrefix       = "apps/"
	policiesPrefix   = "scaling/"
	membersPrefix    = "members/"
	eventsPrefix     = "events/"
	batchesPrefix    = "batches/"
)

// ErrNotFound is returned for a record that does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned when a record to create already exists.
var ErrExists = errors.New("already exists")

// Store holds the desired state in memory, with the indexes its readers
// need, and journals every change. Reads never do I/O: they return the
// immutable records under a read lock. Changes go through Update, which
// runs on the store's single commit goroutine: concurrent updates are
// batched into one journal transaction (check-and-set on every record it
// changes, fenced by the leader lock), and memory changes only once the
// journal has accepted them, with the indexes it returned.
//
// A Store lives for one term of leadership: it is loaded when the manager
// becomes the leader and dropped when it stops leading.
type Store struct {
	j      Journal
	fence  Fence
	maxOps int // data ops per commit: the journal's limit less the fence
	log    *slog.Logger

	mu         sync.RWMutex
	containers map[string]*Container
	byService  map[string]map[string]*Container
	byNode     map[string]map[string]*Container
	ledger     map[string]ledgerEntry // memory promised to each worker
	pending    map[string]*Container
	counts     map[State]int
	names      []string // container names, naturally sorted; nil when stale
	instances  map[string]*InstanceRecord
	apps       map[string]*AppRecord
	policies   map[string]*PolicyRecord
	members    map[string]string
	specs      map[string]*Spec       // one copy of each distinct spec
	strings    map[string]string      // one copy of worker names, addresses and states
	unsettled  map[string]*Container  // records not simply running or failed: checked every round
	dirty      map[string]struct{}    // records changed since the last takeDirty
	held       map[string]ledgerEntry // promises of records being written (hold)
	heldNames  map[string]int         // names and services of records being written

	reqs     chan *updateReq
	next     *updateReq         // carried over to the next batch
	flying   map[string]*flight // records of the transactions in flight
	landed   chan *flight       // transactions that returned
	inFlight int                // transactions in flight
	fenced   bool               // the journal refused our fence: we were deposed
	// onFenced is called once when the journal refuses the fence.
	onFenced func()
}

// ledgerEntry is what the desired state has promised one worker.
type ledgerEntry struct {
	reserved int64
	count    int
}

func newStore(j Journal, fence Fence, log *slog.Logger) *Store {
	max := j.MaxOps()
	if fence.Key != "" {
		max--
	}
	return &Store{
		j: j, fence: fence, maxOps: max, log: log,
		containers: map[string]*Container{}, byService: map[string]map[string]*Container{},
		byNode: map[string]map[string]*Container{}, ledger: map[string]ledgerEntry{},
		pending: map[string]*Container{}, counts: map[State]int{}, instances: map[string]*InstanceRecord{},
		unsettled: map[string]*Container{}, dirty: map[string]struct{}{},
		apps: map[string]*AppRecord{}, policies: map[string]*PolicyRecord{}, members: map[string]string{}, specs: map[string]*Spec{}, strings: map[string]string{},
		reqs: make(chan *updateReq, 1024),
	}
}

// load reads the whole journal into memory, rolls back the unfinished
// batches a crashed leader left, and returns the persisted events and
// the records that hold them.
func (s *Store) load(ctx context.Context) ([]Event, []eventChunk, error) {
	pairs, err := s.j.Load(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read the desired state: %w", err)
	}
	var events []Event
	var chunks []eventChunk
	var batches []Pair
	s.mu.Lock()
	for _, p := range pairs {
		switch {
		case strings.HasPrefix(p.Key, containersPrefix):
			c, err := s.decodeContainer(p)
			if err != nil {
				s.mu.Unlock()
				return nil, nil, err
			}
			s.insert(c)
		case strings.HasPrefix(p.Key, instancesPrefix):
			var in InstanceRecord
			if err := json.Unmarshal(p.Value, &in); err != nil {
				s.mu.Unlock()
				return nil, nil, fmt.Errorf("instance record %s is damaged: %w", p.Key, err)
			}
			in.index = p.Index
			s.instances[in.Name] = &in
		case strings.HasPrefix(p.Key, appsPrefix):
			var a AppRecord
			if err := json.Unmarshal(p.Value, &a); err != nil {
				s.mu.Unlock()
				return nil, nil, fmt.Errorf("application record %s is damaged: %w", p.Key, err)
			}
			a.index = p.Index
			s.apps[a.Name] = &a
		case strings.HasPrefix(p.Key, policiesPrefix):
			var pr PolicyRecord
			if err := json.Unmarshal(p.Value, &pr); err != nil {
				s.mu.Unlock()
				return nil, nil, fmt.Errorf("scaling policy record %s is damaged: %w", p.Key, err)
			}
			pr.index = p.Index
			s.policies[pr.Service] = &pr
		case strings.HasPrefix(p.Key, membersPrefix):
			s.members[strings.TrimPrefix(p.Key, membersPrefix)] = string(p.Value)
		case strings.HasPrefix(p.Key, eventsPrefix):
			evs := decodeEventChunk(p.Value)
			if len(evs) > 0 {
				events = append(events, evs...)
				chunks = append(chunks, eventChunk{key: p.Key, last: evs[len(evs)-1].Seq})
			}
		case strings.HasPrefix(p.Key, batchesPrefix):
			batches = append(batches, p)
		}
	}
	s.mu.Unlock()
	for _, b := range batches {
		if err := s.rollbackBatch(ctx, b); err != nil {
			return nil, nil, err
		}
	}
	sort.Slice(events, func(i, j int) bool { return events[i].Seq < events[j].Seq })
	sort.Slice(chunks, func(i, j int) bool { return chunks[i].last < chunks[j].last })
	return events, chunks, nil
}

// decodeContainer reads a container record and shares its spec with the
// records that have the same one.
func (s *Store) decodeContainer(p Pair) (*Container, error) {
	var c Container
	if err := json.Unmarshal(p.Value, &c); err != nil {
		return nil, fmt.Errorf("desired state record %s is damaged: %w", p.Key, err)
	}
	if c.Spec == nil {
		c.Spec = &Spec{}
	}
	c.Spec = s.intern(c.Spec)
	c.index = p.Index
	// Many records name the same worker and address, and a handful of
	// states: keep one copy of each string.
	c.Node, c.Address, c.State = s.internString(c.Node), s.internString(c.Address), State(s.internString(string(c.State)))
	if len(c.Bindings) > 0 {
		c.Bindings = append(make([]wire.Binding, 0, len(c.Bindings)), c.Bindings...) // no spare capacity
	}
	return &c, nil
}

// internString returns the one copy of a short, often repeated string.
// Call with s.mu held.
func (s *Store) internString(v string) string {
	if v == "" {
		return ""
	}
	if have, ok := s.strings[v]; ok {
		return have
	}
	s.strings[v] = v
	return v
}

// intern returns the one copy of spec kept in memory. Call with s.mu held.
func (s *Store) intern(spec *Spec) *Spec {
	b, err := json.Marshal(spec)
	if err != nil {
		return spec
	}
	if have, ok := s.specs[string(b)]; ok {
		return have
	}
	s.specs[string(b)] = spec
	return spec
}

// batchMarker is written before the first part of a change too large for
// one journal transaction, and deleted with its last part: a marker found
// at load means the change was never complete, and it is rolled back.
type batchMarker struct {
	Keys []string `json:"keys"`
}

func (s *Store) rollbackBatch(ctx context.Context, marker Pair) error {
	var m batchMarker
	_ = json.Unmarshal(marker.Value, &m)
	present, err := s.j.Read(ctx, m.Keys)
	if err != nil {
		return fmt.Errorf("roll back an unfinished launch: %w", err)
	}
	ops := make([]Op, 0, len(present)+1)
	for _, p := range present {
		ops = append(ops, Op{Verb: OpDeleteCAS, Key: p.Key, Index: p.Index})
	}
	ops = append(ops, Op{Verb: OpDeleteCAS, Key: marker.Key, Index: marker.Index})
	for start := 0; start < len(ops); start += s.maxOps {
		if _, err := s.j.Commit(ctx, s.fence, ops[start:min(start+s.maxOps, len(ops))]); err != nil {
			return fmt.Errorf("roll back an unfinished launch: %w", err)
		}
	}
	s.mu.Lock()
	for _, p := range present {
		if name, ok := strings.CutPrefix(p.Key, containersPrefix); ok {
			if c, ok := s.containers[name]; ok {
				s.remove(c)
			}
		}
		if name, ok := strings.CutPrefix(p.Key, policiesPrefix); ok {
			delete(s.policies, name)
		}
	}
	s.mu.Unlock()
	if s.log != nil {
		s.log.Warn("rolled back a launch a stopped leader left unfinished", "records", len(present))
	}
	return nil
}

// insert adds or replaces the record of c.Name. Call with s.mu held.
func (s *Store) insert(c *Container) {
	if old, ok := s.containers[c.Name]; ok {
		s.unindex(old)
	} else {
		s.names = nil
	}
	s.containers[c.Name] = c
	s.index(c)
}

// remove drops c's record. Call with s.mu held.
func (s *Store) remove(c *Container) {
	old, ok := s.containers[c.Name]
	if !ok {
		return
	}
	s.unindex(old)
	delete(s.containers, c.Name)
	s.names = nil
}

func (s *Store) index(c *Container) {
	c.idHash = hashID(c.ContainerID)
	s.dirty[c.Name] = struct{}{}
	if (c.State != StateRunning && c.State != StateFailed) || c.Move != nil {
		s.unsettled[c.Name] = c
	}
	addTo(s.byService, c.Service, c)
	if c.Node != "" {
		addTo(s.byNode, c.Node, c)
	}
	if c.State.holdsMemory() {
		if c.Node != "" {
			s.promise(c.Node, c.Memory, 1)
		}
		if c.Move != nil && c.Move.Node != "" {
			s.promise(c.Move.Node, c.Memory, 1)
		}
	}
	if c.State == StatePending {
		s.pending[c.Name] = c
	}
	s.counts[c.State]++
}

func (s *Store) unindex(c *Container) {
	s.dirty[c.Name] = struct{}{}
	delete(s.unsettled, c.Name)
	delFrom(s.byService, c.Service, c.Name)
	if c.Node != "" {
		delFrom(s.byNode, c.Node, c.Name)
	}
	if c.State.holdsMemory() {
		if c.Node != "" {
			s.promise(c.Node, -c.Memory, -1)
		}
		if c.Move != nil && c.Move.Node != "" {
			s.promise(c.Move.Node, -c.Memory, -1)
		}
	}
	delete(s.pending, c.Name)
	if s.counts[c.State]--; s.counts[c.State] == 0 {
		delete(s.counts, c.State)
	}
}

func (s *Store) promise(node string, mem int64, n int) {
	e := s.ledger[node]
	e.reserved += mem
	e.count += n
	if e.count == 0 && e.reserved == 0 {
		delete(s.ledger, node)
		return
	}
	s.ledger[node] = e
}

func addTo(idx map[string]map[string]*Container, key string, c *Container) {
	m := idx[key]
	if m == nil {
		m = map[string]*Container{}
		idx[key] = m
	}
	m[c.Name] = c
}

func delFrom(idx map[string]map[string]*Container, key, name string) {
	if m := idx[key]; m != nil {
		delete(m, name)
		if len(m) == 0 {
			delete(idx, key)
		}
	}
}

// --- Reads. Every record returned is shared and must not be changed. ---

// Container returns one record.
func (s *Store) Container(name string) (*Container, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.containers[name]
	return c, ok
}

// sortedNames returns the container names, naturally sorted, sorting
// them again only after a record was created or deleted.
func (s *Store) sortedNames() []string {
	s.mu.RLock()
	names := s.names
	s.mu.RUnlock()
	if names != nil {
		return names
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.names == nil {
		s.names = make([]string, 0, len(s.containers))
		for n := range s.containers {
			s.names = append(s.names, n)
		}
		sort.Slice(s.names, func(i, j int) bool { return naturalLess(s.names[i], s.names[j]) })
	}
	return s.names
}

// All returns every container, naturally sorted by name.
func (s *Store) All() []*Container {
	names := s.sortedNames()
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.inOrderLocked(names)
}

// inOrderLocked returns the records of names that exist, in that order.
// Call with s.mu held.
func (s *Store) inOrderLocked(names []string) []*Container {
	out := make([]*Container, 0, len(names))
	for _, n := range names {
		if c, ok := s.containers[n]; ok {
			out = append(out, c)
		}
	}
	return out
}

// takeDirty returns the names of the records changed since it was last
// called.
func (s *Store) takeDirty() map[string]struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.dirty
	s.dirty = map[string]struct{}{}
	return d
}

// storeView is the store as a reconciliation reads it, under its read
// lock.
type storeView struct {
	s *Store
}

// get returns one record.
func (v storeView) get(name string) *Container { return v.s.containers[name] }

// onNode calls fn with every record on a worker.
func (v storeView) onNode(node string, fn func(*Container)) {
	for _, c := range v.s.byNode[node] {
		fn(c)
	}
}

// nodeRecords returns the records on one worker (do not change the map).
func (v storeView) nodeRecords(node string) map[string]*Container { return v.s.byNode[node] }

// unsettled calls fn with every record that is not simply running or
// failed.
func (v storeView) unsettled(fn func(*Container)) {
	for _, c := range v.s.unsettled {
		fn(c)
	}
}

// pending reports whether a container waits for a worker.
func (v storeView) pending() bool { return len(v.s.pending) > 0 }

// view runs fn under the store's read lock: fn must be quick and must not
// call the store. Writes wait meanwhile.
func (s *Store) view(fn func(storeView)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(storeView{s})
}

// allLocked returns every record, those of one worker together, for a
// caller that holds the read lock.
func (s *Store) allLocked() []*Container {
	out := make([]*Container, 0, len(s.containers))
	for _, cs := range s.byNode {
		for _, c := range cs {
			out = append(out, c)
		}
	}
	for _, c := range s.containers {
		if c.Node == "" {
			out = append(out, c)
		}
	}
	return out
}

// Nodes returns the workers the records name.
func (s *Store) Nodes() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.byNode))
	for n := range s.byNode {
		out = append(out, n)
	}
	return out
}

// Service returns the containers of one service, sorted by name.
func (s *Store) Service(service string) []*Container {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return sortedValues(s.byService[service])
}

// OnNode returns the containers recorded on one worker, sorted by name.
func (s *Store) OnNode(node string) []*Container {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return sortedValues(s.byNode[node])
}

// Pending returns the pending containers, sorted by name.
func (s *Store) Pending() []*Container {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return sortedValues(s.pending)
}

// Len returns the number of container records.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.containers)
}

// Counts returns the number of containers in each state.
func (s *Store) Counts() map[State]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[State]int, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

// Promised returns the memory and the number of containers the desired
// state has promised each worker (starting, running and stopping
// containers, and the new copies of moves).
func (s *Store) Promised() map[string]ledgerEntry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]ledgerEntry, len(s.ledger))
	for k, v := range s.ledger {
		out[k] = v
	}
	for k, v := range s.held {
		e := out[k]
		e.reserved += v.reserved
		e.count += v.count
		out[k] = e
	}
	return out
}

// hold counts new containers placed but not yet written in the promises
// placement sees, and their names and service as taken, so that a
// placement that runs while they are being written neither gives their
// memory away nor takes their names. The caller releases the hold once
// the write is done, whatever its outcome (a committed record then
// carries the promise itself).
func (s *Store) hold(cs []*Container) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held, s.heldNames = map[string]ledgerEntry{}, map[string]int{}
	}
	add := func(sign int) {
		for _, c := range cs {
			if c.Node != "" && c.State.holdsMemory() {
				e := s.held[c.Node]
				e.reserved += int64(sign) * c.Memory
				e.count += sign
				if e.count == 0 {
					delete(s.held, c.Node)
				} else {
					s.held[c.Node] = e
				}
			}
			for _, n := range []string{c.Name, "service:" + c.Service} {
				if s.heldNames[n] += sign; s.heldNames[n] == 0 {
					delete(s.heldNames, n)
				}
			}
		}
	}
	add(1)
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		add(-1)
	}
}

// heldName reports whether a container name (or "service:NAME") is held
// by a write in progress.
func (s *Store) heldName(n string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.heldNames[n] > 0
}

// Instances returns every instance record, sorted by name.
func (s *Store) Instances() []*InstanceRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*InstanceRecord, 0, len(s.instances))
	for _, in := range s.instances {
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].Name, out[j].Name) })
	return out
}

// Instance returns one instance record.
func (s *Store) Instance(name string) (*InstanceRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	in, ok := s.instances[name]
	return in, ok
}

// Apps returns every application record, sorted by name.
func (s *Store) Apps() []*AppRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*AppRecord, 0, len(s.apps))
	for _, a := range s.apps {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// App returns one application record.
func (s *Store) App(name string) (*AppRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.apps[name]
	return a, ok
}

// Policies returns every scaling policy record, sorted by service.
func (s *Store) Policies() []*PolicyRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*PolicyRecord, 0, len(s.policies))
	for _, p := range s.policies {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

// Policy returns the scaling policy record of one service.
func (s *Store) Policy(service string) (*PolicyRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.policies[service]
	return p, ok
}

// Members returns the gossip addresses of the members seen so far.
func (s *Store) Members() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.members))
	for _, a := range s.members {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

func sortedValues(m map[string]*Container) []*Container {
	out := make([]*Container, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].Name, out[j].Name) })
	return out
}

// naturalLess orders "web-2" before "web-10".
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])
		if da && db {
			na, ra := leadingNumber(a)
			nb, rb := leadingNumber(b)
			if na != nb {
				return na < nb
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func leadingNumber(s string) (int, string) {
	n, i := 0, 0
	for i < len(s) && isDigit(s[i]) && i < 9 {
		n = n*10 + int(s[i]-'0')
		i++
	}
	return n, s[i:]
}
