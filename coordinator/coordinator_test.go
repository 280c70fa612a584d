package coordinator

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

const mib = 1 << 20

// wk builds a worker with capacity and reservation in MiB.
func wk(name string, capMiB, reservedMiB int64, tags ...string) Worker {
	return Worker{Name: name, Tags: tags, Capacity: capMiB * mib, Reserved: reservedMiB * mib}
}

func draining(w Worker) Worker { w.Draining = true; return w }

func req(name string, memMiB int64, tags ...string) Request {
	return Request{Name: name, Tags: tags, Memory: memMiB * mib}
}

func binpack() Options { o := DefaultOptions(); o.Strategy = StrategyBinpack; return o }

// placeAllWays places r on s with the reference Place, Explain, a Placer
// and PlaceAll, checks that they agree, and returns the reference answer.
func placeAllWays(t *testing.T, s *Snapshot, r Request, o Options) Decision {
	t.Helper()
	want := Place(s, r, o)
	if got := NewPlacer(s, o).Place(r); !reflect.DeepEqual(got, want) {
		t.Errorf("Placer.Place = %+v\nreference      %+v", got, want)
	}
	if got := PlaceAll(s, []Request{r}, o); !reflect.DeepEqual(got, []Decision{want}) {
		t.Errorf("PlaceAll = %+v\nreference %+v", got, want)
	}
	e := Explain(s, r, o)
	if e.Worker != want.Worker || e.Free != want.Free || e.Reason != want.Reason {
		t.Errorf("Explain = %+v\nPlace     %+v", e, want)
	}
	if !want.Placed() && !reflect.DeepEqual(e, want) {
		t.Errorf("no fit: Explain = %+v\nPlace     %+v", e, want)
	}
	return want
}

func TestPlace(t *testing.T) {
	noHeadroom := Options{Strategy: StrategySpread}
	cases := []struct {
		name    string
		workers []Worker
		req     Request
		opts    Options
		want    string // chosen worker, "" for none
		free    int64  // chosen worker's free memory, bytes
		reason  string // exact Reason, when set
		contain []string
	}{
		{
			name:    "tags: all required tags present",
			workers: []Worker{wk("a", 4096, 0, "role=app"), wk("b", 1024, 0, "role=app", "zone=x")},
			req:     req("web.1", 128, "role=app", "zone=x"),
			opts:    DefaultOptions(),
			want:    "b", free: 1024*mib - DefaultOptions().HeadroomBytes(&Worker{Capacity: 1024 * mib}),
		},
		{
			name:    "tags: one missing",
			workers: []Worker{wk("a", 4096, 0, "role=app")},
			req:     req("web.1", 128, "role=app", "zone=x"),
			opts:    DefaultOptions(),
			reason:  "no worker fits web.1 (role=app,zone=x, 128MiB): 1 worker lacks role=app,zone=x",
		},
		{
			name:    "tags: no tags required, untagged worker fits",
			workers: []Worker{wk("a", 1000, 0)},
			req:     req("x", 1),
			opts:    noHeadroom,
			want:    "a", free: 1000 * mib,
			reason: "placed x on a: no tags required, 1000MiB free",
		},
		{
			name:    "memory: skips worker with too little free",
			workers: []Worker{wk("a", 1000, 800), wk("b", 1000, 300)},
			req:     req("db.1", 512),
			opts:    binpack(),
			want:    "b", free: 600 * mib,
		},
		{
			name:    "headroom: request exactly at the boundary fits",
			workers: []Worker{wk("a", 1000, 400)}, // 1000 - 400 - 100 = 500 free
			req:     req("x", 500),
			opts:    DefaultOptions(),
			want:    "a", free: 500 * mib,
			reason: "placed x on a: no tags required, 500MiB free",
		},
		{
			name:    "headroom: one byte over the boundary does not",
			workers: []Worker{wk("a", 1000, 400)},
			req:     Request{Name: "x", Memory: 500*mib + 1},
			opts:    DefaultOptions(),
			reason:  "no worker fits x (500MiB): 1 worker has too little free memory (most: 500MiB on a)",
		},
		{
			name:    "headroom: zero headroom hands out everything",
			workers: []Worker{wk("a", 1000, 400)},
			req:     req("x", 600),
			opts:    noHeadroom,
			want:    "a", free: 600 * mib,
		},
		{
			name:    "ranking: spread picks most free",
			workers: []Worker{wk("a", 1000, 100), wk("b", 1000, 500), wk("c", 1000, 0)},
			req:     req("x", 100),
			opts:    noHeadroom,
			want:    "c", free: 1000 * mib,
		},
		{
			name:    "ranking: binpack picks least free that fits",
			workers: []Worker{wk("a", 1000, 950), wk("b", 1000, 500), wk("c", 1000, 0), wk("d", 1000, 800)},
			req:     req("x", 100),
			opts:    Options{Strategy: StrategyBinpack},
			want:    "d", free: 200 * mib,
		},
		{
			name:    "ranking: unknown strategy ranks like spread",
			workers: []Worker{wk("a", 1000, 100), wk("b", 1000, 0)},
			req:     req("x", 100),
			opts:    Options{Strategy: "weird"},
			want:    "b", free: 1000 * mib,
		},
		{
			name:    "draining: most free worker is draining",
			workers: []Worker{draining(wk("a", 8000, 0)), wk("b", 1000, 0)},
			req:     req("x", 100),
			opts:    DefaultOptions(),
			want:    "b", free: 900 * mib,
		},
		{
			name:    "draining: every worker draining",
			workers: []Worker{draining(wk("a", 8000, 0)), draining(wk("b", 1000, 0))},
			req:     req("x", 100),
			opts:    DefaultOptions(),
			reason:  "no worker fits x (100MiB): 2 workers are draining",
		},
		{
			name: "nothing fits: counts per filter, most free named",
			workers: []Worker{
				draining(wk("a", 8000, 0, "role=app")),
				wk("b", 8000, 0, "role=db"),
				wk("c", 8000, 0),
				wk("d", 1000, 600, "role=app"), // 300MiB free
				wk("e", 1000, 800, "role=app"), // 100MiB free
			},
			req:    req("web.1", 512, "role=app"),
			opts:   DefaultOptions(),
			reason: "no worker fits web.1 (role=app, 512MiB): 1 worker is draining; 2 workers lack role=app; 2 workers have too little free memory (most: 300MiB on d)",
		},
		{
			name:    "nothing fits: ties for most free go to the smaller name",
			workers: []Worker{wk("z", 1000, 800), wk("m", 1000, 800)},
			req:     req("x", 512),
			opts:    DefaultOptions(),
			contain: []string{"2 workers have too little free memory (most: 100MiB on m)"},
		},
		{
			name:    "nothing fits: over-reserved worker still named",
			workers: []Worker{wk("a", 1000, 950)}, // free is -50MiB
			req:     req("x", 1),
			opts:    DefaultOptions(),
			reason:  "no worker fits x (1MiB): 1 worker has too little free memory (most: 0B on a)",
		},
		{
			name:   "empty cluster",
			req:    req("x", 256, "role=app"),
			opts:   DefaultOptions(),
			reason: "no worker fits x (role=app, 256MiB): the cluster has no workers",
		},
		{
			name:    "reason of a placement",
			workers: []Worker{wk("w1", 2048, 0, "role=app", "zone=x")},
			req:     req("web.3", 64, "role=app", "zone=x"),
			opts:    Options{},
			want:    "w1", free: 2048 * mib,
			reason: "placed web.3 on w1: role=app,zone=x, 2GiB free",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := placeAllWays(t, &Snapshot{Workers: c.workers}, c.req, c.opts)
			if d.Worker != c.want {
				t.Fatalf("worker = %q, want %q (reason %q)", d.Worker, c.want, d.Reason)
			}
			if c.want != "" && d.Free != c.free {
				t.Errorf("free = %d, want %d", d.Free, c.free)
			}
			if c.want == "" && len(d.Rejections) != len(c.workers) {
				t.Errorf("%d rejections for %d workers: %+v", len(d.Rejections), len(c.workers), d.Rejections)
			}
			if c.reason != "" && d.Reason != c.reason {
				t.Errorf("reason = %q\nwant     %q", d.Reason, c.reason)
			}
			for _, s := range c.contain {
				if !strings.Contains(d.Reason, s) {
					t.Errorf("reason %q lacks %q", d.Reason, s)
				}
			}
		})
	}
}

func TestPlaceNilSnapshot(t *testing.T) {
	d := placeAllWays(t, nil, req("x", 1), DefaultOptions())
	if d.Placed() || !strings.HasSuffix(d.Reason, "the cluster has no workers") {
		t.Fatalf("%+v", d)
	}
}

// Ties go to the smaller name whatever the order of the snapshot.
func TestDeterministicTies(t *testing.T) {
	base := []Worker{wk("w3", 1000, 100), wk("w1", 1000, 100), wk("w2", 1000, 100), wk("w0", 1000, 500)}
	for _, o := range []Options{DefaultOptions(), binpack()} {
		want := "w1" // w1, w2, w3 tie on the most free memory
		if o.Strategy == StrategyBinpack {
			want = "w0" // least free that fits
		}
		forEachPermutation(base, func(ws []Worker) {
			t.Run(fmt.Sprintf("%s/%s%s%s%s", o.Strategy, ws[0].Name, ws[1].Name, ws[2].Name, ws[3].Name), func(t *testing.T) {
				if d := placeAllWays(t, &Snapshot{Workers: ws}, req("x", 10), o); d.Worker != want {
					t.Fatalf("chose %q, want %q", d.Worker, want)
				}
				// A request w0 cannot take leaves a three-way tie.
				if d := placeAllWays(t, &Snapshot{Workers: ws}, req("y", 500), o); d.Worker != "w1" {
					t.Fatalf("chose %q, want w1", d.Worker)
				}
			})
		})
	}
}

func forEachPermutation(ws []Worker, f func([]Worker)) {
	var rec func(k int)
	rec = func(k int) {
		if k == len(ws) {
			f(append([]Worker(nil), ws...))
			return
		}
		for i := k; i < len(ws); i++ {
			ws[k], ws[i] = ws[i], ws[k]
			rec(k + 1)
			ws[k], ws[i] = ws[i], ws[k]
		}
	}
	rec(0)
}

func TestRejections(t *testing.T) {
	s := &Snapshot{Workers: []Worker{
		wk("c", 1000, 950, "role=app"),
		draining(wk("a", 1000, 0, "role=app")),
		wk("b", 1000, 0),
		wk("d", 4000, 0, "role=app"),
	}}
	r := req("web.1", 256, "role=app")
	want := []Rejection{
		{Worker: "a", Filter: "draining", Reason: "is draining for scale-in"},
		{Worker: "b", Filter: "tags", Reason: "lacks role=app (has no tags)"},
		{Worker: "c", Filter: "memory", Reason: "has 0B free, needs 256MiB"},
	}
	t.Run("placed", func(t *testing.T) {
		d := Explain(s, r, DefaultOptions())
		if d.Worker != "d" || !reflect.DeepEqual(d.Rejections, want) {
			t.Fatalf("%+v", d)
		}
		if p := Place(s, r, DefaultOptions()); p.Rejections != nil {
			t.Fatalf("Place filled Rejections on success: %+v", p.Rejections)
		}
	})
	t.Run("nothing fits", func(t *testing.T) {
		s := &Snapshot{Workers: s.Workers[:3]}
		d := placeAllWays(t, s, r, DefaultOptions())
		if d.Placed() || !reflect.DeepEqual(d.Rejections, want) {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("lists only missing tags", func(t *testing.T) {
		s := &Snapshot{Workers: []Worker{wk("a", 1000, 0, "role=app", "zone=y")}}
		d := placeAllWays(t, s, req("x", 1, "role=app", "zone=x", "gpu"), DefaultOptions())
		wantR := []Rejection{{Worker: "a", Filter: "tags", Reason: "lacks zone=x,gpu (has role=app,zone=y)"}}
		if !reflect.DeepEqual(d.Rejections, wantR) {
			t.Fatalf("%+v", d.Rejections)
		}
	})
}

// Two placements never count on the same free memory.
func TestPlacerCommit(t *testing.T) {
	s := &Snapshot{Workers: []Worker{wk("a", 1000, 0), wk("b", 600, 0, "role=db")}}
	o := Options{Strategy: StrategySpread}
	p := NewPlacer(s, o)
	var got []string
	for i := 0; i < 5; i++ {
		d := p.Place(req(fmt.Sprintf("c%d", i), 400))
		p.Commit(d)
		got = append(got, d.Worker)
	}
	// a:1000 → a (600 left) → tie a/b at 600 → a (200) → b (200) → nothing.
	if want := []string{"a", "a", "b", "", ""}; !reflect.DeepEqual(got, want) {
		t.Fatalf("placed on %q, want %q", got, want)
	}
	cur := p.Snapshot()
	if cur.Workers[0].Reserved != 800*mib || cur.Workers[0].Containers != 2 ||
		cur.Workers[1].Reserved != 400*mib || cur.Workers[1].Containers != 1 {
		t.Fatalf("state %+v", cur.Workers)
	}
	if s.Workers[0].Reserved != 0 || s.Workers[1].Reserved != 0 {
		t.Fatalf("input snapshot changed: %+v", s.Workers)
	}
	// The no-fit answer is Explain's on the current state.
	r := req("big", 300)
	if d := p.Place(r); !reflect.DeepEqual(d, Explain(cur, r, o)) || !strings.Contains(d.Reason, "most: 200MiB on a") {
		t.Fatalf("%+v", d)
	}
	// Snapshot returns a copy.
	cur.Workers[0].Reserved = 0
	cur.Workers[1].Tags[0] = "changed"
	if w := p.Snapshot().Workers; w[0].Reserved != 800*mib || w[1].Tags[0] != "role=db" {
		t.Fatalf("Snapshot shares state: %+v", w)
	}
	// Unknown and unplaced decisions change nothing.
	before := p.Snapshot()
	p.Commit(Decision{Worker: "nope", Request: req("x", 1)})
	p.Commit(Decision{Request: req("x", 1)})
	if !reflect.DeepEqual(before, p.Snapshot()) {
		t.Fatal("commit of unknown worker changed state")
	}
	// Committing a decision that is not the latest Place still finds its worker.
	p = NewPlacer(s, o)
	d1 := p.Place(req("x", 100))
	d2 := p.Place(req("y", 100, "role=db"))
	p.Commit(d1)
	p.Commit(d2)
	if w := p.Snapshot().Workers; w[0].Reserved != 100*mib || w[1].Reserved != 100*mib {
		t.Fatalf("%+v", w)
	}
}

func TestPlaceAll(t *testing.T) {
	s := &Snapshot{Workers: []Worker{wk("a", 900, 0), wk("b", 700, 0)}}
	o := Options{Strategy: StrategyBinpack}
	reqs := []Request{req("s2", 300), req("s1", 300), req("big", 700), req("mid", 400)}
	// Placed as big(700)→b, mid(400)→a, s1(300)→a, s2(300)→none; in input
	// order, s2 and s1 would have taken b and left big without room.
	ds := PlaceAll(s, reqs, o)
	got := []string{ds[0].Worker, ds[1].Worker, ds[2].Worker, ds[3].Worker}
	if want := []string{"", "a", "b", "a"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("placed on %q, want %q", got, want)
	}
	for i, d := range ds {
		if d.Request.Name != reqs[i].Name {
			t.Fatalf("decision %d is for %q, want %q", i, d.Request.Name, reqs[i].Name)
		}
	}
	if !strings.Contains(ds[0].Reason, "2 workers have too little free memory (most: 200MiB on a)") {
		t.Fatalf("%q", ds[0].Reason)
	}
	if s.Workers[0].Reserved != 0 || s.Workers[0].Containers != 0 || s.Workers[1].Reserved != 0 {
		t.Fatalf("PlaceAll changed its input: %+v", s.Workers)
	}
	if ds := PlaceAll(nil, nil, o); len(ds) != 0 {
		t.Fatalf("%+v", ds)
	}
}

// A successful Place+Commit allocates only the Reason string.
func TestPlacerAllocs(t *testing.T) {
	var ws []Worker
	for i := 0; i < 100; i++ {
		ws = append(ws, wk(fmt.Sprintf("w%03d", i), 1<<20, 0, []string{"role=app", "role=db"}[i%2]))
	}
	for _, o := range []Options{DefaultOptions(), binpack()} {
		p := NewPlacer(&Snapshot{Workers: ws}, o)
		r := req("web.1", 64, "role=app")
		p.Commit(p.Place(r)) // warm the tag cache
		if n := testing.AllocsPerRun(1000, func() { p.Commit(p.Place(r)) }); n > 1 {
			t.Errorf("%s: %.1f allocations per placement, want ≤ 1", o.Strategy, n)
		}
	}
}

// If Filters is changed, the Placer falls back to the reference scan.
func TestPlacerCustomFilters(t *testing.T) {
	saved := Filters
	defer func() { Filters = saved }()
	Filters = append(append([]Filter(nil), saved...), nameFilter{})
	s := &Snapshot{Workers: []Worker{wk("a", 1000, 0), wk("banned", 4000, 0)}}
	p := NewPlacer(s, DefaultOptions())
	d := p.Place(req("x", 10))
	if d.Worker != "a" || !reflect.DeepEqual(d, Place(s, req("x", 10), DefaultOptions())) {
		t.Fatalf("%+v", d)
	}
	p.Commit(d)
	if p.Snapshot().Workers[0].Reserved != 10*mib {
		t.Fatal("commit lost")
	}
}

type nameFilter struct{}

func (nameFilter) Name() string                                 { return "name" }
func (nameFilter) Check(_ *Options, w *Worker, _ *Request) bool { return w.Name != "banned" }
func (nameFilter) Explain(_ *Options, _ *Worker, _ *Request) string {
	return "is banned"
}

func TestParseStrategy(t *testing.T) {
	for in, want := range map[string]Strategy{"": StrategySpread, "spread": StrategySpread, "binpack": StrategyBinpack} {
		if got, err := ParseStrategy(in); err != nil || got != want {
			t.Errorf("ParseStrategy(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseStrategy("random"); err == nil {
		t.Error("ParseStrategy(random) did not fail")
	}
}
