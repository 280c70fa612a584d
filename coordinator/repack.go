package coordinator

import (
	"maps"
	"slices"
	"strings"
)

// pool is the room consolidation may move containers to: every worker
// that is not draining and not removed this round, grouped like the
// Placer's by tag set and hotness, each group ordered by free memory
// (then name), so that the best fit for a container — the least free
// memory that still holds it, a worker that is not hot before a hot
// one — is one binary search per group that carries the container's tags.
//
// Unlike the Placer, a placement can be taken back (give), and a worker
// can leave the pool (exclude) and come back (include): a candidate is
// tried by excluding it, placing its containers, and undoing all of it
// when one does not fit. Nothing is rebuilt between candidates, which is
// what keeps a round cheap when no candidate can be emptied.
type pool struct {
	nodes    []ScaleInWorker
	free     []int64 // capacity − reserved (with the moves planned so far) − headroom
	rank     []int32 // place in (name, index) order
	grp      []int32 // group, or -1 for a draining worker
	out      []bool  // not in its group: removed this round, or being tried
	groups   []pgroup
	eligible map[string][]int32
	key      []byte
	draining int // draining workers: they take nothing, and reasons count them
	// seen and stamp mark the groups already counted by roomFor.
	seen  []uint32
	stamp uint32
}

type pgroup struct {
	tags []string // sorted, without duplicates
	hot  bool
	es   []entry // ascending by (free, rank)
	sum  int64   // Σ of the positive free memory in es
}

func pos(x int64) int64 { return max(x, 0) }

func newPool(nodes []ScaleInWorker, o Options) *pool {
	n := len(nodes)
	p := &pool{
		nodes:    nodes,
		free:     make([]int64, n),
		rank:     make([]int32, n),
		grp:      make([]int32, n),
		out:      make([]bool, n),
		eligible: map[string][]int32{},
	}
	order := make([]int32, n)
	for i := range nodes {
		w := &nodes[i].Worker
		p.free[i] = o.Free(w)
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int {
		if c := strings.Compare(nodes[a].Name, nodes[b].Name); c != 0 {
			return c
		}
		return int(a - b)
	})
	for r, i := range order {
		p.rank[i] = int32(r)
	}
	byKey := map[string]int32{}
	// Groups are made in name order, so their order never depends on the
	// order of nodes.
	for _, i := range order {
		w := &nodes[i].Worker
		if w.Draining {
			p.grp[i] = -1
			p.out[i] = true
			p.draining++
			continue
		}
		k, tags := groupKey(w)
		g, ok := byKey[k]
		if !ok {
			g = int32(len(p.groups))
			byKey[k] = g
			p.groups = append(p.groups, pgroup{tags: tags, hot: w.Hot})
		}
		p.grp[i] = g
		p.groups[g].es = append(p.groups[g].es, entry{key: p.free[i], rank: p.rank[i], idx: i})
		p.groups[g].sum += pos(p.free[i])
	}
	for g := range p.groups {
		slices.SortFunc(p.groups[g].es, cmpEntry)
	}
	return p
}

func cmpEntry(a, b entry) int {
	if a.key != b.key {
		if a.key < b.key {
			return -1
		}
		return 1
	}
	return int(a.rank - b.rank)
}

// exclude takes worker i out of the pool: it receives nothing until
// include.
func (p *pool) exclude(i int32) {
	if p.out[i] {
		return
	}
	p.out[i] = true
	g := &p.groups[p.grp[i]]
	at := search(g.es, p.free[i], p.rank[i])
	g.es = slices.Delete(g.es, at, at+1)
	g.sum -= pos(p.free[i])
}

func (p *pool) include(i int32) {
	if !p.out[i] || p.grp[i] < 0 {
		return
	}
	p.out[i] = false
	g := &p.groups[p.grp[i]]
	at := search(g.es, p.free[i], p.rank[i])
	g.es = slices.Insert(g.es, at, entry{key: p.free[i], rank: p.rank[i], idx: i})
	g.sum += pos(p.free[i])
}

// take reserves m bytes on worker i (in the pool).
func (p *pool) take(i int32, m int64) { p.setFree(i, p.free[i]-m) }

// give takes back a reservation made with take.
func (p *pool) give(i int32, m int64) { p.setFree(i, p.free[i]+m) }

func (p *pool) setFree(i int32, nf int64) {
	if !p.out[i] {
		g := &p.groups[p.grp[i]]
		g.sum += pos(nf) - pos(p.free[i])
		es := g.es
		e := entry{key: p.free[i], rank: p.rank[i], idx: i}
		at := search(es, e.key, e.rank)
		ne := entry{key: nf, rank: e.rank, idx: i}
		switch {
		case nf > e.key:
			to := search(es, nf, e.rank)
			copy(es[at:to-1], es[at+1:to])
			es[to-1] = ne
		case nf < e.key:
			to := search(es[:at], nf, e.rank)
			copy(es[to+1:at+1], es[to:at])
			es[to] = ne
		}
	}
	p.free[i] = nf
}

// groupsFor returns the groups whose workers carry every tag in tags.
func (p *pool) groupsFor(tags []string) []int32 {
	p.key = appendTagsKey(p.key[:0], tags)
	if gs, ok := p.eligible[string(p.key)]; ok {
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

// best returns the worker that packs a container of m bytes needing tags
// best: the least free memory that still holds it, a worker that is not
// hot before one that is, ties to the smaller name.
func (p *pool) best(tags []string, m int64) (int32, bool) {
	return p.bestIn(p.groupsFor(tags), m)
}

// bestIn is best among the groups gs.
func (p *pool) bestIn(gs []int32, m int64) (int32, bool) {
	var b entry
	found, bHot := false, false
	for _, g := range gs {
		grp := &p.groups[g]
		if found && grp.hot && !bHot {
			continue
		}
		if len(grp.es) == 0 || grp.es[len(grp.es)-1].key < m {
			continue // nothing in the group holds it
		}
		j := search(grp.es, m, -1)
		e := grp.es[j]
		if !found || (bHot && !grp.hot) || e.key < b.key || (e.key == b.key && e.rank < b.rank) {
			b, found, bHot = e, true, grp.hot
		}
	}
	return b.idx, found
}

// noFit says why r fits nowhere in the pool, in the words Explain would
// use on the workers left (the pool and the draining workers), without
// building one rejection per worker.
func (p *pool) noFit(r *Request) string {
	workers := p.draining
	var lack, memory int
	var mostFree int64
	mostOn, have := "", false
	elig := p.groupsFor(r.Tags)
	k := 0
	for g := range p.groups {
		es := p.groups[g].es
		workers += len(es)
		if k < len(elig) && elig[k] == int32(g) {
			k++
			if len(es) == 0 {
				continue
			}
			memory += len(es)
			// The most free memory, ties to the smaller name.
			top := es[len(es)-1].key
			e := es[search(es, top, -1)]
			name := p.nodes[e.idx].Name
			if !have || top > mostFree || (top == mostFree && name < mostOn) {
				mostFree, mostOn, have = top, name, true
			}
			continue
		}
		lack += len(es)
	}
	counts := map[string]int{"draining": p.draining, "tags": lack, "memory": memory}
	return noFitReason(r, workers, counts, mostFree, mostOn)
}

// roomFor sums the positive free memory of the workers in the pool that
// carry the tags of at least one of rs.
func (p *pool) roomFor(rs []Resident) int64 {
	var sum int64
	p.stamp++
	if len(p.seen) < len(p.groups) {
		p.seen = make([]uint32, len(p.groups))
	}
	for k := range rs {
		if k > 0 && slices.Equal(rs[k].Tags, rs[k-1].Tags) {
			continue
		}
		for _, g := range p.groupsFor(rs[k].Tags) {
			if p.seen[g] != p.stamp {
				p.seen[g] = p.stamp
				sum += p.groups[g].sum
			}
		}
	}
	return sum
}

// clone returns a copy of p that can change without changing p.
func (p *pool) clone() *pool {
	q := *p
	q.free = slices.Clone(p.free)
	q.out = slices.Clone(p.out)
	q.groups = slices.Clone(p.groups)
	for g := range q.groups {
		q.groups[g].es = slices.Clone(p.groups[g].es)
	}
	// The groups are the same, so the cache of eligible groups stays
	// right; the copy gets its own, to stay independent.
	q.eligible = maps.Clone(p.eligible)
	q.key, q.seen = nil, nil
	return &q
}
