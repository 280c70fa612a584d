package coordinator

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

var propTags = []string{"role=app", "role=db", "zone=x", "gpu"}

// Tag sets drawn most of the time, so that groups hold several workers;
// some spell one set in different orders or with a repeat.
var propTagSets = [][]string{
	nil, {}, {"role=app"}, {"role=app"}, {"role=db"},
	{"role=app", "zone=x"}, {"zone=x", "role=app"}, {"role=app", "role=app"},
}

func genTags(t *rapid.T, label string) []string {
	if rapid.IntRange(0, 3).Draw(t, label+"-any") > 0 {
		return slices.Clone(rapid.SampledFrom(propTagSets).Draw(t, label+"-set"))
	}
	return rapid.SliceOfN(rapid.SampledFrom(propTags), 0, 3).Draw(t, label)
}

// genSnapshot draws a small cluster whose numbers collide often: equal
// free memory, over-reserved workers, draining workers, hot workers,
// shuffled names.
func genSnapshot(t *rapid.T) *Snapshot {
	n := rapid.IntRange(0, 12).Draw(t, "workers")
	if rapid.Bool().Draw(t, "many") {
		n = rapid.IntRange(8, 12).Draw(t, "workers-many")
	}
	names := rapid.Permutation([]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}).Draw(t, "names")
	s := &Snapshot{}
	for i := 0; i < n; i++ {
		c := rapid.Int64Range(0, 16).Draw(t, "capacity") * 512 * mib
		if rapid.Bool().Draw(t, "odd-capacity") {
			c += rapid.Int64Range(0, 4*mib).Draw(t, "capacity-extra")
		}
		s.Workers = append(s.Workers, Worker{
			Name:       "w" + strconv.Itoa(names[i]),
			Tags:       genTags(t, "worker-tags"),
			Capacity:   c,
			Reserved:   rapid.Int64Range(0, 18).Draw(t, "reserved") * 256 * mib,
			Used:       rapid.Int64Range(0, c).Draw(t, "used"),
			Containers: rapid.IntRange(0, 5).Draw(t, "containers"),
			Draining:   rapid.IntRange(0, 5).Draw(t, "draining") == 0,
			Hot:        rapid.IntRange(0, 3).Draw(t, "hot") == 0,
		})
	}
	return s
}

func genOptions(t *rapid.T) Options {
	return Options{
		Headroom: rapid.SampledFrom([]float64{0, 0.1, 0.25, 0.333}).Draw(t, "headroom"),
		Strategy: rapid.SampledFrom([]Strategy{StrategySpread, StrategyBinpack}).Draw(t, "strategy"),
	}
}

func genRequest(t *rapid.T, i int) Request {
	mem := rapid.Int64Range(0, 8).Draw(t, "memory") * 128 * mib
	if rapid.IntRange(0, 3).Draw(t, "odd-memory") == 0 {
		mem = rapid.Int64Range(0, 2048*mib).Draw(t, "memory-any")
	}
	return Request{Name: fmt.Sprintf("c%d", i), Tags: genTags(t, "request-tags"), Memory: mem}
}

// applyCommit is the reference model of Commit.
func applyCommit(s *Snapshot, d Decision) {
	for i := range s.Workers {
		if s.Workers[i].Name == d.Worker {
			s.Workers[i].Reserved += d.Request.Memory
			s.Workers[i].Containers++
			return
		}
	}
}

// TestPlacerMatchesReference: a Placer answers like the reference Place on
// the same state through a sequence of placements and commits, and never
// promises memory a worker does not have.
func TestPlacerMatchesReference(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := genSnapshot(t)
		o := genOptions(t)
		orig := cloneSnapshot(s)
		ref := cloneSnapshot(s)
		p := NewPlacer(s, o)
		steps := rapid.IntRange(20, 60).Draw(t, "steps")
		for i := 0; i < steps; i++ {
			r := genRequest(t, i)
			got, want := p.Place(r), Place(ref, r, o)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("step %d: Placer.Place(%+v)\n = %+v\nreference %+v", i, r, got, want)
			}
			if rapid.IntRange(0, 4).Draw(t, "skip-commit") > 0 {
				p.Commit(got)
				applyCommit(ref, want)
			}
			if cur := p.Snapshot(); !reflect.DeepEqual(cur, ref) {
				t.Fatalf("step %d: state\n %+v\nwant %+v", i, cur.Workers, ref.Workers)
			}
		}
		for i, w := range p.Snapshot().Workers {
			// Workers that start over-reserved may stay so, but get nothing.
			if w.Reserved != orig.Workers[i].Reserved && w.Reserved > w.Capacity-o.HeadroomBytes(&w) {
				t.Fatalf("%s over-committed: reserved %d > capacity %d - headroom %d", w.Name, w.Reserved, w.Capacity, o.HeadroomBytes(&w))
			}
		}
		if !reflect.DeepEqual(s, orig) {
			t.Fatalf("NewPlacer changed its snapshot")
		}
	})
}

// TestPlaceAllMatchesReference: PlaceAll is the reference Place applied
// largest request first, and leaves its input alone.
func TestPlaceAllMatchesReference(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := genSnapshot(t)
		o := genOptions(t)
		orig := cloneSnapshot(s)
		reqs := make([]Request, rapid.IntRange(0, 30).Draw(t, "requests"))
		for i := range reqs {
			reqs[i] = genRequest(t, rapid.IntRange(0, 5).Draw(t, "name"))
		}
		got := PlaceAll(s, reqs, o)
		if !reflect.DeepEqual(s, orig) {
			t.Fatalf("PlaceAll changed its snapshot")
		}
		order := make([]int, len(reqs))
		for i := range order {
			order[i] = i
		}
		slices.SortStableFunc(order, func(a, b int) int {
			if reqs[a].Memory != reqs[b].Memory {
				return -cmpInt64(reqs[a].Memory, reqs[b].Memory)
			}
			return strings.Compare(reqs[a].Name, reqs[b].Name)
		})
		ref := cloneSnapshot(s)
		want := make([]Decision, len(reqs))
		for _, i := range order {
			want[i] = Place(ref, reqs[i], o)
			applyCommit(ref, want[i])
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("PlaceAll\n = %+v\nwant %+v", got, want)
		}
	})
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func cloneSnapshot(s *Snapshot) *Snapshot {
	c := &Snapshot{Workers: slices.Clone(s.Workers)}
	for i := range c.Workers {
		c.Workers[i].Tags = slices.Clone(c.Workers[i].Tags)
	}
	return c
}

func fmtBytes(n int64) string {
	const (
		kib = 1 << 10
		mib = 1 << 20
		gib = 1 << 30
	)
	trim := func(s string) string {
		if strings.Contains(s, ".") {
			s = strings.TrimRight(s, "0")
			s = strings.TrimSuffix(s, ".")
		}
		return s
	}
	neg := ""
	if n < 0 {
		neg, n = "-", -n
	}
	switch {
	case n >= gib:
		return neg + trim(fmt.Sprintf("%.2f", float64(n)/gib)) + " GiB"
	case n >= mib:
		return neg + trim(fmt.Sprintf("%.1f", float64(n)/mib)) + " MiB"
	case n >= kib:
		return neg + trim(fmt.Sprintf("%.1f", float64(n)/kib)) + " KiB"
	}
	return fmt.Sprintf("%s%d B", neg, n)
}
