package coordinator

import (
	"fmt"
	"sort"
	"strings"

	"github.com/micado-scale/micado/definitions/bytesize"
)

// Filter is one placement rule. Check is the fast yes/no used on every
// placement; Explain says, in a few words, why a worker failed Check. Both
// placement and `micado explain` use the same filters, so a pending message
// can never disagree with what placement did.
type Filter interface {
	Name() string
	Check(o *Options, w *Worker, r *Request) bool
	Explain(o *Options, w *Worker, r *Request) string
}

// Filters are applied in this order; the first that fails names the reason.
var Filters = []Filter{drainingFilter{}, tagsFilter{}, memoryFilter{}}

type drainingFilter struct{}

func (drainingFilter) Name() string                                 { return "draining" }
func (drainingFilter) Check(_ *Options, w *Worker, _ *Request) bool { return !w.Draining }
func (drainingFilter) Explain(_ *Options, w *Worker, _ *Request) string {
	return "is draining for scale-in"
}

type tagsFilter struct{}

func (tagsFilter) Name() string                                 { return "tags" }
func (tagsFilter) Check(_ *Options, w *Worker, r *Request) bool { return w.HasTags(r.Tags) }
func (tagsFilter) Explain(_ *Options, w *Worker, r *Request) string {
	var missing []string
	for _, t := range r.Tags {
		if !hasTag(w.Tags, t) {
			missing = append(missing, t)
		}
	}
	has := "no tags"
	if len(w.Tags) > 0 {
		has = strings.Join(w.Tags, ",")
	}
	return fmt.Sprintf("lacks %s (has %s)", strings.Join(missing, ","), has)
}

type memoryFilter struct{}

func (memoryFilter) Name() string { return "memory" }
func (memoryFilter) Check(o *Options, w *Worker, r *Request) bool {
	return o.Free(w) >= r.Memory
}
func (memoryFilter) Explain(o *Options, w *Worker, r *Request) string {
	return fmt.Sprintf("has %s free, needs %s", bytesize.Format(max(o.Free(w), 0)), bytesize.Format(r.Memory))
}

// better reports whether candidate a (with free memory fa) ranks before b
// (free fb) under strategy s. A worker that is not hot ranks before a hot
// one whatever the strategy; ties go to the smaller name, so decisions are
// deterministic whatever the order of the snapshot.
func better(s Strategy, a *Worker, fa int64, b *Worker, fb int64) bool {
	if a.Hot != b.Hot {
		return !a.Hot
	}
	if fa != fb {
		if s == StrategyBinpack {
			return fa < fb
		}
		return fa > fb
	}
	return a.Name < b.Name
}

// Place chooses a worker for r in s. It is the reference implementation:
// a scan of every worker through Filters, then ranking. Placer gives the
// same answers faster when many requests are placed on one snapshot.
func Place(s *Snapshot, r Request, o Options) Decision {
	if s == nil {
		s = &Snapshot{}
	}
	best := -1
	var bestFree int64
	for i := range s.Workers {
		w := &s.Workers[i]
		if !passes(&o, w, &r) {
			continue
		}
		f := o.Free(w)
		if best < 0 || better(o.Strategy, w, f, &s.Workers[best], bestFree) {
			best, bestFree = i, f
		}
	}
	if best < 0 {
		return Explain(s, r, o)
	}
	w := &s.Workers[best]
	return Decision{Request: r, Worker: w.Name, Free: bestFree, Reason: placedReason(&r, w, bestFree)}
}

func passes(o *Options, w *Worker, r *Request) bool {
	for _, f := range Filters {
		if !f.Check(o, w, r) {
			return false
		}
	}
	return true
}

func placedReason(r *Request, w *Worker, free int64) string {
	var buf [160]byte
	return string(appendPlacedReason(buf[:0], r, w, free))
}

// appendPlacedReason appends "placed NAME on WORKER: TAGS, FREE free" to
// dst, and says so when the worker is hot (which happens only when no
// worker that is not hot fits); the one string conversion of the result is
// the only allocation a successful placement makes.
func appendPlacedReason(dst []byte, r *Request, w *Worker, free int64) []byte {
	dst = append(dst, "placed "...)
	dst = append(dst, r.Name...)
	dst = append(dst, " on "...)
	dst = append(dst, w.Name...)
	dst = append(dst, ": "...)
	if len(r.Tags) == 0 {
		dst = append(dst, "no tags required"...)
	}
	for i, t := range r.Tags {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, t...)
	}
	dst = append(dst, ", "...)
	dst = bytesize.Size(free).Append(dst)
	dst = append(dst, " free"...)
	if w.Hot {
		dst = append(dst, " (above the usage limit, but no cooler worker fits)"...)
	}
	return dst
}

// Explain places r like Place and also records, worker by worker, which
// filter rejected it. When nothing fits, Reason summarises the rejections
// by filter ("2 workers lack role=db; 1 has too little memory ...").
func Explain(s *Snapshot, r Request, o Options) Decision {
	if s == nil {
		s = &Snapshot{}
	}
	d := Decision{Request: r}
	best := -1
	var bestFree int64
	counts := map[string]int{}
	// The memory-rejected worker with the most free memory. haveMost is
	// needed because free memory can be negative on an over-reserved
	// worker, so no sentinel value of mostFree is safe.
	var mostFree int64
	mostFreeOn, haveMost := "", false
	for i := range s.Workers {
		w := &s.Workers[i]
		rejected := false
		for _, f := range Filters {
			if !f.Check(&o, w, &r) {
				d.Rejections = append(d.Rejections, Rejection{Worker: w.Name, Filter: f.Name(), Reason: f.Explain(&o, w, &r)})
				counts[f.Name()]++
				if f.Name() == "memory" {
					if fr := o.Free(w); !haveMost || fr > mostFree || (fr == mostFree && w.Name < mostFreeOn) {
						mostFree, mostFreeOn, haveMost = fr, w.Name, true
					}
				}
				rejected = true
				break
			}
		}
		if rejected {
			continue
		}
		f := o.Free(w)
		if best < 0 || better(o.Strategy, w, f, &s.Workers[best], bestFree) {
			best, bestFree = i, f
		}
	}
	sort.SliceStable(d.Rejections, func(i, j int) bool { return d.Rejections[i].Worker < d.Rejections[j].Worker })
	if best >= 0 {
		w := &s.Workers[best]
		d.Worker, d.Free, d.Reason = w.Name, bestFree, placedReason(&r, w, bestFree)
		return d
	}
	d.Reason = noFitReason(&r, len(s.Workers), counts, mostFree, mostFreeOn)
	return d
}

func noFitReason(r *Request, workers int, counts map[string]int, mostFree int64, mostFreeOn string) string {
	want := bytesize.Format(r.Memory)
	if len(r.Tags) > 0 {
		want = strings.Join(r.Tags, ",") + ", " + want
	}
	head := fmt.Sprintf("no worker fits %s (%s)", r.Name, want)
	if workers == 0 {
		return head + ": the cluster has no workers"
	}
	var parts []string
	plural := func(n int, one, many string) string {
		if n == 1 {
			return fmt.Sprintf("1 worker %s", one)
		}
		return fmt.Sprintf("%d workers %s", n, many)
	}
	if n := counts["draining"]; n > 0 {
		parts = append(parts, plural(n, "is draining", "are draining"))
	}
	if n := counts["tags"]; n > 0 {
		t := strings.Join(r.Tags, ",")
		parts = append(parts, plural(n, "lacks "+t, "lack "+t))
	}
	if n := counts["memory"]; n > 0 {
		parts = append(parts, plural(n, "has", "have")+fmt.Sprintf(" too little free memory (most: %s on %s)", bytesize.Format(max(mostFree, 0)), mostFreeOn))
	}
	return head + ": " + strings.Join(parts, "; ")
}
