package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// commitTimeout bounds one journal transaction: Consul answers in
// milliseconds; a store that does not answer in this long is treated as
// unavailable and the update fails (callers retry or report it).
const commitTimeout = 30 * time.Second

// Tx is one update of the desired state: the records it reads and the
// changes it stages. Reads see the state as the batch the update joins
// has already changed it. Nothing is visible to readers of the Store
// until the journal has accepted the batch.
type Tx struct {
	s     *Store
	up    *Tx // the batch this update joins; nil for the batch itself
	conts map[string]*Container
	insts map[string]*InstanceRecord
	apps  map[string]*AppRecord
	pols  map[string]*PolicyRecord
	mems  map[string]string
	// touched records whether a key was staged (a nil value is a delete).
	touched map[string]bool
}

func newTx(s *Store, up *Tx) *Tx {
	return &Tx{s: s, up: up, conts: map[string]*Container{}, insts: map[string]*InstanceRecord{},
		apps: map[string]*AppRecord{}, pols: map[string]*PolicyRecord{}, mems: map[string]string{}, touched: map[string]bool{}}
}

// peek returns the current record of name without copying it.
func (tx *Tx) peek(name string) *Container {
	for t := tx; t != nil; t = t.up {
		if t.touched[containersPrefix+name] {
			return t.conts[name]
		}
	}
	return tx.s.containers[name]
}

// Container returns a copy of the record of name that the update may
// change and Put back, or nil if there is none.
func (tx *Tx) Container(name string) *Container {
	if c := tx.peek(name); c != nil {
		return c.clone()
	}
	return nil
}

// Put stages c as the new record of c.Name.
func (tx *Tx) Put(c *Container) {
	tx.conts[c.Name] = c
	tx.touched[containersPrefix+c.Name] = true
}

// Create stages a new record; it fails with ErrExists if the name is
// taken.
func (tx *Tx) Create(c *Container) error {
	if tx.peek(c.Name) != nil {
		return fmt.Errorf("container %s: %w", c.Name, ErrExists)
	}
	tx.Put(c)
	return nil
}

// Delete stages the removal of the record of name.
func (tx *Tx) Delete(name string) {
	tx.conts[name] = nil
	tx.touched[containersPrefix+name] = true
}

// Instance returns a copy of an instance record, or nil.
func (tx *Tx) Instance(name string) *InstanceRecord {
	for t := tx; t != nil; t = t.up {
		if t.touched[instancesPrefix+name] {
			if in := t.insts[name]; in != nil {
				cp := *in
				return &cp
			}
			return nil
		}
	}
	if in, ok := tx.s.instances[name]; ok {
		cp := *in
		return &cp
	}
	return nil
}

// PutInstance stages an instance record.
func (tx *Tx) PutInstance(in *InstanceRecord) {
	tx.insts[in.Name] = in
	tx.touched[instancesPrefix+in.Name] = true
}

// DeleteInstance stages the removal of an instance record.
func (tx *Tx) DeleteInstance(name string) {
	tx.insts[name] = nil
	tx.touched[instancesPrefix+name] = true
}

// App returns a copy of an application record, or nil.
func (tx *Tx) App(name string) *AppRecord {
	for t := tx; t != nil; t = t.up {
		if t.touched[appsPrefix+name] {
			if a := t.apps[name]; a != nil {
				cp := *a
				return &cp
			}
			return nil
		}
	}
	if a, ok := tx.s.apps[name]; ok {
		cp := *a
		return &cp
	}
	return nil
}

// PutApp stages an application record.
func (tx *Tx) PutApp(a *AppRecord) {
	tx.apps[a.Name] = a
	tx.touched[appsPrefix+a.Name] = true
}

// DeleteApp stages the removal of an application record.
func (tx *Tx) DeleteApp(name string) {
	tx.apps[name] = nil
	tx.touched[appsPrefix+name] = true
}

// Policy returns a copy of a service's scaling policy record, or nil.
func (tx *Tx) Policy(service string) *PolicyRecord {
	for t := tx; t != nil; t = t.up {
		if t.touched[policiesPrefix+service] {
			if p := t.pols[service]; p != nil {
				cp := *p
				return &cp
			}
			return nil
		}
	}
	if p, ok := tx.s.policies[service]; ok {
		cp := *p
		return &cp
	}
	return nil
}

// PutPolicy stages a scaling policy record.
func (tx *Tx) PutPolicy(p *PolicyRecord) {
	tx.pols[p.Service] = p
	tx.touched[policiesPrefix+p.Service] = true
}

// DeletePolicy stages the removal of a service's scaling policy.
func (tx *Tx) DeletePolicy(service string) {
	tx.pols[service] = nil
	tx.touched[policiesPrefix+service] = true
}

// SetMember records a member's gossip address (written unconditionally).
func (tx *Tx) SetMember(name, addr string) {
	tx.mems[name] = addr
	tx.touched[membersPrefix+name] = true
}

// size is how many journal ops the staged changes take.
func (tx *Tx) size() int { return len(tx.touched) }

// merge adds the changes of sub (an update that joins tx) to tx.
func (tx *Tx) merge(sub *Tx) {
	for k := range sub.touched {
		tx.touched[k] = true
	}
	for k, v := range sub.conts {
		tx.conts[k] = v
	}
	for k, v := range sub.insts {
		tx.insts[k] = v
	}
	for k, v := range sub.apps {
		tx.apps[k] = v
	}
	for k, v := range sub.pols {
		tx.pols[k] = v
	}
	for k, v := range sub.mems {
		tx.mems[k] = v
	}
}

// onlyCreates reports whether every staged change creates a container.
func (tx *Tx) onlyCreates() bool {
	if len(tx.insts)+len(tx.apps)+len(tx.mems) > 0 {
		return false
	}
	for name, p := range tx.pols {
		// A new service's policy is created with its containers.
		if p == nil || tx.s.policies[name] != nil {
			return false
		}
	}
	for name, c := range tx.conts {
		if c == nil || tx.s.containers[name] != nil {
			return false
		}
	}
	return true
}

// ops turns the staged changes into journal ops: check-and-set against
// the index each record had when the store last saw it.
func (tx *Tx) ops() ([]Op, error) {
	s := tx.s
	keys := make([]string, 0, len(tx.touched))
	for k := range tx.touched {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	ops := make([]Op, 0, len(keys))
	for _, k := range keys {
		name := k[strings.IndexByte(k, '/')+1:]
		var cur any
		var index uint64
		switch {
		case strings.HasPrefix(k, containersPrefix):
			if c := tx.conts[name]; c != nil {
				cur = c
			}
			if old, ok := s.containers[name]; ok {
				index = old.index
			}
		case strings.HasPrefix(k, instancesPrefix):
			if in := tx.insts[name]; in != nil {
				cur = in
			}
			if old, ok := s.instances[name]; ok {
				index = old.index
			}
		case strings.HasPrefix(k, appsPrefix):
			if a := tx.apps[name]; a != nil {
				cur = a
			}
			if old, ok := s.apps[name]; ok {
				index = old.index
			}
		case strings.HasPrefix(k, policiesPrefix):
			if p := tx.pols[name]; p != nil {
				cur = p
			}
			if old, ok := s.policies[name]; ok {
				index = old.index
			}
		case strings.HasPrefix(k, membersPrefix):
			ops = append(ops, Op{Verb: OpSet, Key: k, Value: []byte(tx.mems[name])})
			continue
		}
		switch {
		case cur == nil && index == 0:
			// Created and deleted within the batch, or deleting nothing.
		case cur == nil:
			ops = append(ops, Op{Verb: OpDeleteCAS, Key: k, Index: index})
		default:
			b, err := json.Marshal(cur)
			if err != nil {
				return nil, fmt.Errorf("encode %s: %w", k, err)
			}
			ops = append(ops, Op{Verb: OpCAS, Key: k, Value: b, Index: index})
		}
	}
	return ops, nil
}

// apply makes the committed changes visible, with the indexes the
// journal returned. Call with s.mu held.
func (tx *Tx) apply(indexes map[string]uint64) {
	s := tx.s
	for name, c := range tx.conts {
		if c == nil {
			if old, ok := s.containers[name]; ok {
				s.remove(old)
			}
			continue
		}
		c.index = indexes[containersPrefix+name]
		c.Spec = s.intern(c.Spec)
		s.insert(c)
	}
	for name, in := range tx.insts {
		if in == nil {
			delete(s.instances, name)
			continue
		}
		in.index = indexes[instancesPrefix+name]
		s.instances[name] = in
	}
	for name, a := range tx.apps {
		if a == nil {
			delete(s.apps, name)
			continue
		}
		a.index = indexes[appsPrefix+name]
		s.apps[name] = a
	}
	for name, p := range tx.pols {
		if p == nil {
			delete(s.policies, name)
			continue
		}
		p.index = indexes[policiesPrefix+name]
		s.policies[name] = p
	}
	for name, addr := range tx.mems {
		s.members[name] = addr
	}
}

// updateReq is one Update waiting for the commit goroutine.
type updateReq struct {
	ctx     context.Context
	fn      func(*Tx) error
	done    chan error
	retried bool // already retried alone after a conflict
}

// errTooLarge refuses an update that changes more records than one
// journal transaction holds and is not a pure creation.
var errTooLarge = errors.New("the change is too large for one transaction")

// Update runs fn on a transaction over the current state and commits what
// it staged, batched with concurrent updates into one journal
// transaction. fn runs on the store's commit goroutine: it must only read
// and stage (no I/O, no waiting), and it may run more than once (after a
// conflict), so it must not keep results outside the Tx except by
// overwriting them. An error from fn aborts this update only.
func (s *Store) Update(ctx context.Context, fn func(*Tx) error) error {
	r := &updateReq{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		// The update may still commit; the caller will see it in memory.
		return ctx.Err()
	}
}

// maxInFlight is how many journal transactions the store has in flight
// at once: Consul applies a transaction in milliseconds, most of it
// waiting on its HTTP round trip and Raft, so a second one in flight
// overlaps them (measured: 8.4 ms per transaction one at a time, 6.2 ms
// two at a time). Transactions in flight never touch the same record.
const maxInFlight = 3

// flight is one batch whose transaction is in flight.
type flight struct {
	tx      *Tx
	members []*updateReq
	idx     map[string]uint64
	err     error
}

// run is the commit goroutine: it ends with ctx (the term), failing what
// is still queued with ErrNotLeader. It builds a batch, sends its
// transaction, and builds the next while that one is in flight; memory
// changes only here, when a transaction returns.
func (s *Store) run(ctx context.Context) {
	s.flying = map[string]*flight{}
	s.landed = make(chan *flight, maxInFlight)
	defer func() {
		for s.inFlight > 0 {
			s.land(ctx, <-s.landed)
		}
		s.drain()
	}()
	for {
		var r *updateReq
		if s.next != nil {
			r, s.next = s.next, nil
		} else {
			select {
			case <-ctx.Done():
				return
			case f := <-s.landed:
				s.land(ctx, f)
				continue
			case r = <-s.reqs:
			}
		}
		if s.fenced || ctx.Err() != nil {
			r.done <- ErrNotLeader
			continue
		}
		for s.inFlight >= maxInFlight {
			s.land(ctx, <-s.landed)
		}
		s.batch(ctx, r)
	}
}

// land takes a transaction that returned: memory changes, the updates
// are answered (or retried alone after a conflict).
func (s *Store) land(ctx context.Context, f *flight) {
	s.inFlight--
	for k := range f.tx.touched {
		if s.flying[k] == f {
			delete(s.flying, k)
		}
	}
	if f.err == nil {
		s.mu.Lock()
		f.tx.apply(f.idx)
		s.mu.Unlock()
		for _, r := range f.members {
			r.done <- nil
		}
		return
	}
	err := s.commitErr(f.err)
	if errors.Is(err, ErrConflict) {
		// The journal holds records memory does not know: someone else
		// wrote them. Take them from the journal and run each update
		// again on its own.
		s.settle(ctx)
		s.refresh(ctx, f.tx)
		if len(f.members) > 1 || !f.members[0].retried {
			for _, r := range f.members {
				r.retried = true
				s.batchAlone(ctx, r)
			}
			return
		}
	}
	for _, r := range f.members {
		r.done <- err
	}
}

// settle waits until no transaction is in flight.
func (s *Store) settle(ctx context.Context) {
	for s.inFlight > 0 {
		s.land(ctx, <-s.landed)
	}
}

func (s *Store) drain() {
	for {
		select {
		case r := <-s.reqs:
			r.done <- ErrNotLeader
		default:
			if s.next != nil {
				s.next.done <- ErrNotLeader
				s.next = nil
			}
			return
		}
	}
}

// batch runs r and as many queued updates as fit into one transaction,
// and sends it; updates that touch a record of a transaction in flight
// wait for it.
func (s *Store) batch(ctx context.Context, first *updateReq) {
	b := newTx(s, nil)
	var members []*updateReq
	add := func(r *updateReq) bool {
		for {
			if r.ctx.Err() != nil {
				r.done <- r.ctx.Err()
				return true
			}
			sub := newTx(s, b)
			if err := r.fn(sub); err != nil {
				r.done <- err
				return true
			}
			busy := false
			for k := range sub.touched {
				if s.flying[k] != nil {
					busy = true
					break
				}
			}
			if busy {
				if len(members) > 0 {
					s.next = r // after this batch, once its records land
					return false
				}
				// It read records of a transaction in flight: run it
				// again once they have landed.
				s.settle(ctx)
				continue
			}
			extra := 0
			for k := range sub.touched {
				if !b.touched[k] {
					extra++
				}
			}
			if b.size()+extra > s.maxOps {
				if len(members) == 0 {
					if sub.onlyCreates() {
						s.settle(ctx)
						r.done <- s.commitLarge(ctx, sub)
					} else {
						r.done <- fmt.Errorf("%w (%d records, at most %d)", errTooLarge, sub.size(), s.maxOps)
					}
					return true
				}
				s.next = r
				return false
			}
			b.merge(sub)
			members = append(members, r)
			return true
		}
	}
	if !add(first) {
		return
	}
more:
	for b.size() < s.maxOps && s.next == nil {
		select {
		case r := <-s.reqs:
			if !add(r) {
				break more
			}
		default:
			break more
		}
	}
	if len(members) == 0 {
		return
	}
	ops, err := b.ops()
	if err != nil {
		for _, r := range members {
			r.done <- err
		}
		return
	}
	if len(ops) == 0 {
		s.mu.Lock()
		b.apply(nil)
		s.mu.Unlock()
		for _, r := range members {
			r.done <- nil
		}
		return
	}
	f := &flight{tx: b, members: members}
	for k := range b.touched {
		s.flying[k] = f
	}
	s.inFlight++
	go func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
		f.idx, f.err = s.j.Commit(cctx, s.fence, ops)
		cancel()
		s.landed <- f
	}()
}

// batchAlone commits one update in a transaction of its own.
func (s *Store) batchAlone(ctx context.Context, r *updateReq) {
	sub := newTx(s, nil)
	if err := r.fn(sub); err != nil {
		r.done <- err
		return
	}
	err := s.commit(ctx, sub)
	if errors.Is(err, ErrConflict) {
		s.refresh(ctx, sub)
	}
	r.done <- err
}

// commit writes the staged changes of tx in one journal transaction and,
// once it is accepted, applies them to memory.
func (s *Store) commit(ctx context.Context, tx *Tx) error {
	ops, err := tx.ops()
	if err != nil {
		return err
	}
	if len(ops) == 0 {
		s.mu.Lock()
		tx.apply(nil)
		s.mu.Unlock()
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, commitTimeout)
	defer cancel()
	idx, err := s.j.Commit(cctx, s.fence, ops)
	if err != nil {
		return s.commitErr(err)
	}
	s.mu.Lock()
	tx.apply(idx)
	s.mu.Unlock()
	return nil
}

func (s *Store) commitErr(err error) error {
	if errors.Is(err, ErrFenced) {
		if !s.fenced {
			s.fenced = true
			if s.onFenced != nil {
				s.onFenced()
			}
		}
		return fmt.Errorf("%w: %w", ErrNotLeader, err)
	}
	return err
}

// commitLarge writes a creation too large for one transaction in several,
// under a batch marker: all of it becomes visible, or none (a failure
// deletes what was written; a crash leaves the marker, and the next
// leader rolls the batch back when it loads).
func (s *Store) commitLarge(ctx context.Context, tx *Tx) error {
	ops, err := tx.ops()
	if err != nil {
		return err
	}
	keys := make([]string, len(ops))
	for i, op := range ops {
		keys[i] = op.Key
	}
	mb, _ := json.Marshal(batchMarker{Keys: keys})
	marker := batchesPrefix + randHex(8)
	all := append([]Op{{Verb: OpCAS, Key: marker, Value: mb}}, ops...)
	all = append(all, Op{Verb: OpDeleteCAS, Key: marker})
	indexes := map[string]uint64{}
	var written []Op
	for start := 0; start < len(all); start += s.maxOps {
		part := all[start:min(start+s.maxOps, len(all))]
		last := &part[len(part)-1]
		if last.Key == marker && last.Verb == OpDeleteCAS {
			last.Index = indexes[marker]
		}
		cctx, cancel := context.WithTimeout(ctx, commitTimeout)
		idx, err := s.j.Commit(cctx, s.fence, part)
		cancel()
		if err != nil {
			s.undoLarge(ctx, written, indexes)
			return s.commitErr(err)
		}
		for k, v := range idx {
			indexes[k] = v
		}
		written = append(written, part...)
	}
	s.mu.Lock()
	tx.apply(indexes)
	s.mu.Unlock()
	return nil
}

// undoLarge deletes the parts of a large creation already written, and
// its marker. When that fails too, the marker stays for the next leader.
func (s *Store) undoLarge(ctx context.Context, written []Op, indexes map[string]uint64) {
	var ops []Op
	for _, op := range written {
		if op.Verb == OpCAS {
			ops = append(ops, Op{Verb: OpDeleteCAS, Key: op.Key, Index: indexes[op.Key]})
		}
	}
	// The marker goes last: if a part fails, the next leader finds it.
	sort.SliceStable(ops, func(i, j int) bool {
		return !strings.HasPrefix(ops[i].Key, batchesPrefix) && strings.HasPrefix(ops[j].Key, batchesPrefix)
	})
	for start := 0; start < len(ops); start += s.maxOps {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
		_, err := s.j.Commit(cctx, s.fence, ops[start:min(start+s.maxOps, len(ops))])
		cancel()
		if err != nil {
			if s.log != nil {
				s.log.Warn("cannot undo a partly written launch; the next leader will", "err", err)
			}
			return
		}
	}
}

// refresh reloads the records tx touched from the journal after a
// conflict, so memory matches it again.
func (s *Store) refresh(ctx context.Context, tx *Tx) {
	keys := make([]string, 0, len(tx.touched))
	for k := range tx.touched {
		keys = append(keys, k)
	}
	cctx, cancel := context.WithTimeout(ctx, commitTimeout)
	defer cancel()
	pairs, err := s.j.Read(cctx, keys)
	if err != nil {
		return
	}
	found := map[string]Pair{}
	for _, p := range pairs {
		found[p.Key] = p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		name := k[strings.IndexByte(k, '/')+1:]
		p, ok := found[k]
		switch {
		case strings.HasPrefix(k, containersPrefix):
			if !ok {
				if c, had := s.containers[name]; had {
					s.remove(c)
				}
			} else if c, err := s.decodeContainer(p); err == nil {
				s.insert(c)
			}
		case strings.HasPrefix(k, instancesPrefix):
			var in InstanceRecord
			if !ok {
				delete(s.instances, name)
			} else if json.Unmarshal(p.Value, &in) == nil {
				in.index = p.Index
				s.instances[name] = &in
			}
		case strings.HasPrefix(k, appsPrefix):
			var a AppRecord
			if !ok {
				delete(s.apps, name)
			} else if json.Unmarshal(p.Value, &a) == nil {
				a.index = p.Index
				s.apps[name] = &a
			}
		case strings.HasPrefix(k, policiesPrefix):
			var pr PolicyRecord
			if !ok {
				delete(s.policies, name)
			} else if json.Unmarshal(p.Value, &pr) == nil {
				pr.index = p.Index
				s.policies[name] = &pr
			}
		}
	}
}

// checkFence proves against the journal that this manager still holds the
// leader lock (a commit of no op but the fence).
func (s *Store) checkFence(ctx context.Context) error {
	if s.fence.Key == "" {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, commitTimeout)
	defer cancel()
	_, err := s.j.Commit(cctx, s.fence, nil)
	if err != nil {
		return s.commitErr(err)
	}
	return nil
}

// UpdateEach applies fn to each named container, in as many transactions
// as needed; fn returns false to leave a container unchanged. It is for
// changes that need not be atomic across containers (marking a service
// stopping).
func (s *Store) UpdateEach(ctx context.Context, names []string, fn func(*Container) bool) error {
	for start := 0; start < len(names); start += s.maxOps {
		part := names[start:min(start+s.maxOps, len(names))]
		err := s.Update(ctx, func(tx *Tx) error {
			for _, n := range part {
				if c := tx.Container(n); c != nil && fn(c) {
					tx.Put(c)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Modify applies fn to a copy of one container and commits it; fn's error
// aborts (ErrNotFound when the record is gone). It returns the record as
// committed.
func (s *Store) Modify(ctx context.Context, name string, fn func(*Container) error) (*Container, error) {
	var out *Container
	err := s.Update(ctx, func(tx *Tx) error {
		c := tx.Container(name)
		if c == nil {
			return ErrNotFound
		}
		if err := fn(c); err != nil {
			return err
		}
		tx.Put(c)
		out = c
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out.clone(), nil
}
