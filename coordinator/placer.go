package coordinator

import (
	"encoding/binary"
	"slices"
	"strings"
)

// Placer places many requests on one snapshot, fast. It answers exactly
// like the reference Place on its current state, and Commit records a
// placement so that the next request cannot count on the same free memory.
//
// Workers are grouped by their (distinct) tag set and whether they are
// hot. Each group keeps its non-draining workers in an array ordered by
// rank under the strategy, so the best worker of a group is found with at
// most one binary search, and a commit moves one worker to its new place
// (Commit never changes Hot, so a worker never changes group). The groups a request may use
// are worked out once per distinct list of requested tags.
//
// Worker names must be unique, as node names are. A Placer is not safe
// for concurrent use.
type Placer struct {
	o       Options
	binpack bool
	// generic is set when Filters is not the built-in filter list: the
	// Placer then falls back to the reference Place, which stays correct
	// whatever the filters are.
	generic bool

	snap     Snapshot // current state; its Workers belong to the Placer
	headroom []int64  // per worker: o.HeadroomBytes, computed once
	rank     []int32  // per worker: its place in (Name, index) order
	group    []int32  // per worker: its group, or -1 when draining
	byName   map[string]int32
	groups   []group
	eligible map[string][]int32 // encoded request tags → groups carrying them all

	last int32  // worker chosen by the latest successful Place, or -1
	key  []byte // scratch for eligible keys
	buf  []byte // scratch for reasons
}

// group holds the non-draining workers that carry one tag set and are
// all hot or all not.
type group struct {
	tags    []string // sorted, without duplicates
	hot     bool
	entries []entry // ascending by (key, rank): best first
}

// entry is one worker in its group's order. key is the free memory under
// binpack and its negation under spread, so under both strategies a
// smaller (key, rank) ranks first and the ties go to the smaller name.
type entry struct {
	key  int64
	rank int32
	idx  int32
}

// maxEligible bounds the cache of request tag lists; when it is full the
// cache starts over, which costs time but never changes an answer.
const maxEligible = 1 << 12

// NewPlacer returns a Placer whose state starts as a copy of s; s itself
// is never changed.
func NewPlacer(s *Snapshot, o Options) *Placer {
	var in []Worker
	if s != nil {
		in = s.Workers
	}
	n := len(in)
	p := &Placer{
		o:        o,
		binpack:  o.Strategy == StrategyBinpack,
		generic:  !builtinFilters(),
		snap:     Snapshot{Workers: slices.Clone(in)},
		headroom: make([]int64, n),
		rank:     make([]int32, n),
		group:    make([]int32, n),
		byName:   make(map[string]int32, n),
		eligible: map[string][]int32{},
		last:     -1,
	}
	order := make([]int32, n)
	for i := range p.snap.Workers {
		w := &p.snap.Workers[i]
		w.Tags = slices.Clone(w.Tags)
		p.headroom[i] = o.HeadroomBytes(w)
		order[i] = int32(i)
		if _, dup := p.byName[w.Name]; !dup {
			p.byName[w.Name] = int32(i)
		}
	}
	// Rank by (Name, index): the reference scan keeps the first of two
	// equal candidates, so the index is the last tie-break.
	slices.SortFunc(order, func(a, b int32) int {
		if c := strings.Compare(p.snap.Workers[a].Name, p.snap.Workers[b].Name); c != 0 {
			return c
		}
		return int(a - b)
	})
	for r, i := range order {
		p.rank[i] = int32(r)
	}

	byTags := map[string]int32{}
	for i := range p.snap.Workers {
		w := &p.snap.Workers[i]
		if w.Draining {
			p.group[i] = -1
			continue
		}
		k, tags := groupKey(w)
		g, ok := byTags[k]
		if !ok {
			g = int32(len(p.groups))
			byTags[k] = g
			p.groups = append(p.groups, group{tags: tags, hot: w.Hot})
		}
		p.group[i] = g
		p.groups[g].entries = append(p.groups[g].entries, entry{key: p.keyOf(p.free(int32(i))), rank: p.rank[i], idx: int32(i)})
	}
	for g := range p.groups {
		slices.SortFunc(p.groups[g].entries, func(a, b entry) int {
			if a.key != b.key {
				if a.key < b.key {
					return -1
				}
				return 1
			}
			return int(a.rank - b.rank)
		})
	}
	return p
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// builtinFilters reports whether Filters is the list the Placer mirrors.
func builtinFilters() bool {
	if len(Filters) != 3 {
		return false
	}
	_, a := Filters[0].(drainingFilter)
	_, b := Filters[1].(tagsFilter)
	_, c := Filters[2].(memoryFilter)
	return a && b && c
}

func (p *Placer) free(i int32) int64 {
	w := &p.snap.Workers[i]
	return w.Capacity - w.Reserved - p.headroom[i]
}

func (p *Placer) keyOf(free int64) int64 {
	if p.binpack {
		return free
	}
	return -free
}

// Place chooses a worker for r on the current state, exactly as Place
// would on Snapshot(). When nothing fits, the decision is Explain's, so
// its reasons come from the filters. Place does not change the state:
// pass the decision to Commit to keep it.
func (p *Placer) Place(r Request) Decision {
	if p.generic {
		d := Place(&p.snap, r, p.o)
		if d.Placed() {
			p.last = p.byName[d.Worker]
		}
		return d
	}
	var best entry
	found, bestHot := false, false
	for _, g := range p.eligibleGroups(r.Tags) {
		es, hot := p.groups[g].entries, p.groups[g].hot
		if found && hot && !bestHot {
			continue // a worker that is not hot always wins
		}
		var e entry
		if p.binpack {
			// The least free memory that still fits.
			i := search(es, r.Memory, -1)
			if i == len(es) {
				continue
			}
			e = es[i]
		} else {
			// The most free memory, if that fits.
			if len(es) == 0 || -es[0].key < r.Memory {
				continue
			}
			e = es[0]
		}
		if !found || (bestHot && !hot) || e.key < best.key || (e.key == best.key && e.rank < best.rank) {
			best, found, bestHot = e, true, hot
		}
	}
	if !found {
		return Explain(&p.snap, r, p.o)
	}
	w := &p.snap.Workers[best.idx]
	free := p.free(best.idx)
	p.last = best.idx
	p.buf = appendPlacedReason(p.buf[:0], &r, w, free)
	return Decision{Request: r, Worker: w.Name, Free: free, Reason: string(p.buf)}
}

// Commit records d: d.Request.Memory is added to the chosen worker's
// Reserved and its Containers grows by one. Decisions that placed nothing,
// or name a worker the Placer does not know, change nothing.
func (p *Placer) Commit(d Decision) {
	if d.Worker == "" {
		return
	}
	i := p.last
	if i < 0 || p.snap.Workers[i].Name != d.Worker {
		j, ok := p.byName[d.Worker]
		if !ok {
			return
		}
		i = j
	}
	w := &p.snap.Workers[i]
	old := p.keyOf(p.free(i))
	w.Reserved += d.Request.Memory
	w.Containers++
	if g := p.group[i]; g >= 0 {
		p.move(p.groups[g].entries, entry{key: old, rank: p.rank[i], idx: i}, p.keyOf(p.free(i)))
	}
}

// move gives entry e of es the key nk and shifts it to its new place.
func (p *Placer) move(es []entry, e entry, nk int64) {
	at := search(es, e.key, e.rank) // es[at] == e
	ne := entry{key: nk, rank: e.rank, idx: e.idx}
	switch {
	case nk > e.key:
		// Every entry before to, es[at] included, ranks before ne.
		to := search(es, nk, e.rank)
		copy(es[at:to-1], es[at+1:to])
		es[to-1] = ne
	case nk < e.key:
		to := search(es[:at], nk, e.rank)
		copy(es[to+1:at+1], es[to:at])
		es[to] = ne
	}
}

// search returns the first index whose entry does not rank before
// (key, rank).
func search(es []entry, key int64, rank int32) int {
	lo, hi := 0, len(es)
	for lo < hi {
		h := int(uint(lo+hi) >> 1)
		if es[h].key < key || (es[h].key == key && es[h].rank < rank) {
			lo = h + 1
		} else {
			hi = h
		}
	}
	return lo
}

// eligibleGroups returns the groups whose workers carry every tag in tags.
func (p *Placer) eligibleGroups(tags []string) []int32 {
	p.key = appendTagsKey(p.key[:0], tags)
	if gs, ok := p.eligible[string(p.key)]; ok { // no allocation
		return gs
	}
	gs := []int32{}
	for g := range p.groups {
		if hasAllTags(p.groups[g].tags, tags) {
			gs = append(gs, int32(g))
		}
	}
	if len(p.eligible) >= maxEligible {
		clear(p.eligible)
	}
	p.eligible[string(p.key)] = gs
	return gs
}

// appendTagsKey encodes tags, in order, as length-prefixed strings, so
// that different lists never share a key.
func appendTagsKey(dst []byte, tags []string) []byte {
	for _, t := range tags {
		dst = binary.AppendUvarint(dst, uint64(len(t)))
		dst = append(dst, t...)
	}
	return dst
}

func hasAllTags(have, want []string) bool {
	for _, t := range want {
		if !hasTag(have, t) {
			return false
		}
	}
	return true
}

// Snapshot returns a copy of the current state: the starting snapshot
// with every committed decision applied.
func (p *Placer) Snapshot() *Snapshot {
	ws := slices.Clone(p.snap.Workers)
	for i := range ws {
		ws[i].Tags = slices.Clone(ws[i].Tags)
	}
	return &Snapshot{Workers: ws}
}

// PlaceAll places reqs together on s, committing each placement before the
// next, and returns the decisions in the order of reqs. Requests are placed
// largest memory first (then by name, then in input order), so big
// containers are not left without room by small ones. s is not changed.
func PlaceAll(s *Snapshot, reqs []Request, o Options) []Decision {
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		ra, rb := &reqs[a], &reqs[b]
		if ra.Memory != rb.Memory {
			if ra.Memory > rb.Memory {
				return -1
			}
			return 1
		}
		return strings.Compare(ra.Name, rb.Name)
	})
	p := NewPlacer(s, o)
	out := make([]Decision, len(reqs))
	for _, i := range order {
		d := p.Place(reqs[i])
		p.Commit(d)
		out[i] = d
	}
	return out
}

// groupKey names w's group of interchangeable workers: its sorted tag
// set, with a first byte that keeps hot and cool workers apart. It also
// returns the sorted tags.
func groupKey(w *Worker) (string, []string) {
	tags := slices.Clone(w.Tags)
	slices.Sort(tags)
	tags = slices.Compact(tags)
	return string(appendTagsKey([]byte{boolByte(w.Hot)}, tags)), tags
}
