package coordinator

import (
	"maps"
	"math"
	"strings"
	"testing"
)

var testTypes = []InstanceType{{Name: "large", Memory: 2 << 30}, {Name: "small", Memory: 512 << 20}, {Name: "medium", Memory: 1 << 30}}

func reqs(n int, role string, mem int64) []Request {
	out := make([]Request, n)
	for i := range out {
		out[i] = Request{Name: role + "-" + string(rune('a'+i)), Tags: []string{"role=" + role}, Memory: mem}
	}
	return out
}

func typeCounts(p ScaleOutPlan) map[string]int {
	m := map[string]int{}
	for _, n := range p.Instances {
		m[n.Type.Name]++
	}
	return m
}

func TestPlanScaleOut(t *testing.T) {
	o := DefaultOptions()
	tests := []struct {
		name       string
		unplaced   []Request
		types      []InstanceType
		lim        ScaleLimits
		want       map[string]int
		impossible int
		limited    int
		reason     string
	}{
		{name: "pending requests of a role share one smallest instance",
			unplaced: reqs(2, "proxy", 200<<20), types: testTypes, want: map[string]int{"small": 1}},
		{name: "a group too big for one instance is packed onto the largest, the last one shrunk",
			unplaced: reqs(10, "app", 500<<20), types: testTypes, want: map[string]int{"large": 3, "medium": 1}},
		{name: "a request no type can hold is impossible at once",
			unplaced: []Request{{Name: "huge", Tags: []string{"role=db"}, Memory: 4 << 30}}, types: testTypes,
			want: map[string]int{}, impossible: 1, reason: "more than any instance type can hold (largest: large"},
		{name: "no instance types: nothing can be done",
			unplaced: reqs(1, "db", 1<<20), want: map[string]int{}, impossible: 1, reason: "no instance types"},
		{name: "different roles get their own instances",
			unplaced: append(reqs(1, "db", 600<<20), reqs(1, "proxy", 100<<20)...), types: testTypes,
			want: map[string]int{"medium": 1, "small": 1}},
		{name: "total limit",
			unplaced: append(reqs(1, "db", 600<<20), reqs(1, "proxy", 100<<20)...), types: testTypes,
			lim: ScaleLimits{MaxInstances: 3, Instances: 2}, want: map[string]int{"medium": 1}, limited: 1, reason: "limit of 3 instances"},
		{name: "per-role limit",
			unplaced: reqs(10, "app", 500<<20), types: testTypes,
			lim: ScaleLimits{MaxPerRole: 3, PerRole: map[string]int{"app": 1}}, want: map[string]int{"large": 2}, limited: 4, reason: "role app has reached its limit of 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := PlanScaleOut(tc.unplaced, tc.types, o, tc.lim)
			got := typeCounts(p)
			if len(got) != len(tc.want) {
				t.Fatalf("instances %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Fatalf("instances %v, want %v", got, tc.want)
				}
			}
			if len(p.Impossible) != tc.impossible || len(p.Limited) != tc.limited {
				t.Fatalf("impossible %d limited %d, want %d and %d", len(p.Impossible), len(p.Limited), tc.impossible, tc.limited)
			}
			all := ""
			for _, d := range append(p.Impossible, p.Limited...) {
				all += d.Reason + "\n"
			}
			if tc.reason != "" && !strings.Contains(all, tc.reason) {
				t.Fatalf("reasons %q lack %q", all, tc.reason)
			}
			// Every planned instance holds what it is meant to hold, and
			// carries exactly the tags of its requests.
			byName := map[string]Request{}
			for _, r := range tc.unplaced {
				byName[r.Name] = r
			}
			held := 0
			for _, ni := range p.Instances {
				var sum int64
				for _, n := range ni.Requests {
					r := byName[n]
					sum += r.Memory
					if tagKey(r.Tags) != tagKey(ni.Tags) {
						t.Errorf("instance tags %v hold a request with %v", ni.Tags, r.Tags)
					}
					held++
				}
				if sum > o.Usable(ni.Type) {
					t.Errorf("instance %s holds %d bytes, more than its %d usable", ni.Type.Name, sum, o.Usable(ni.Type))
				}
			}
			if held+len(p.Impossible)+len(p.Limited) != len(tc.unplaced) {
				t.Errorf("%d held + %d impossible + %d limited != %d requests", held, len(p.Impossible), len(p.Limited), len(tc.unplaced))
			}
		})
	}
}

// TestPlanScaleOutByPrice checks that priced types buy the cheapest set
// found, and that without prices (or with one price for all) the plan is
// the one by size.
func TestPlanScaleOutByPrice(t *testing.T) {
	o := DefaultOptions()
	typed := func(small, medium, large float64) []InstanceType {
		return []InstanceType{
			{Name: "large", Memory: 2 << 30, Price: large},
			{Name: "small", Memory: 512 << 20, Price: small},
			{Name: "medium", Memory: 1 << 30, Price: medium},
		}
	}
	cost := func(p ScaleOutPlan) float64 {
		c := 0.0
		for _, ni := range p.Instances {
			c += ni.Type.Price
		}
		return c
	}
	tests := []struct {
		name     string
		unplaced []Request
		types    []InstanceType
		want     map[string]int
		cost     float64
	}{
		{name: "smaller types cheaper per request: ten mediums, not three large and a medium",
			unplaced: reqs(10, "app", 500<<20), types: typed(0.02, 0.05, 0.20), want: map[string]int{"medium": 10}, cost: 0.50},
		{name: "the large type cheaper per byte: three large and a medium, as by size",
			unplaced: reqs(10, "app", 500<<20), types: typed(0.02, 0.04, 0.05), want: map[string]int{"large": 3, "medium": 1}, cost: 0.19},
		{name: "two small instances cheaper than the one medium that holds both",
			unplaced: reqs(2, "proxy", 400<<20), types: typed(0.01, 0.05, 0.08), want: map[string]int{"small": 2}, cost: 0.02},
		{name: "one price for all: the plan by size",
			unplaced: reqs(10, "app", 500<<20), types: typed(0.1, 0.1, 0.1), want: map[string]int{"large": 3, "medium": 1}, cost: 0.4},
		{name: "a type without a price: the plan by size",
			unplaced: reqs(10, "app", 500<<20), types: typed(0.02, 0, 0.20), want: map[string]int{"large": 3, "medium": 1}, cost: 0.6},
		{name: "the last instance shrinks to the cheapest type that holds it",
			unplaced: append(reqs(3, "app", 600<<20), Request{Name: "app-tiny", Tags: []string{"role=app"}, Memory: 100 << 20}), types: typed(0.01, 0.10, 0.12),
			want: map[string]int{"large": 1, "small": 1}, cost: 0.13},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := PlanScaleOut(tc.unplaced, tc.types, o, ScaleLimits{})
			got := typeCounts(p)
			if !maps.Equal(got, tc.want) {
				t.Fatalf("instances %v, want %v (%v)", got, tc.want, p.Reasons)
			}
			if c := cost(p); math.Abs(c-tc.cost) > 1e-9 {
				t.Errorf("cost %v, want %v", c, tc.cost)
			}
			held := 0
			for _, ni := range p.Instances {
				var sum int64
				for range ni.Requests {
					held++
				}
				for _, n := range ni.Requests {
					for _, r := range tc.unplaced {
						if r.Name == n {
							sum += r.Memory
						}
					}
				}
				if sum > o.Usable(ni.Type) {
					t.Errorf("%s holds %d, more than its %d usable", ni.Type.Name, sum, o.Usable(ni.Type))
				}
			}
			if held != len(tc.unplaced) {
				t.Errorf("%d requests held of %d", held, len(tc.unplaced))
			}
			if priced(tc.types) && !strings.Contains(strings.Join(p.Reasons, "\n"), "the cheapest set found") {
				t.Errorf("reasons %q do not give the cost", p.Reasons)
			}
		})
	}
}

func TestBootingWorkersTakeRequestsBeforeNewInstances(t *testing.T) {
	o := DefaultOptions()
	s := &Snapshot{Workers: []Worker{
		{Name: "w-1", Tags: []string{"role=proxy"}, Capacity: 512 << 20, Reserved: 400 << 20},
		{Name: "w-proxy-ab", Tags: []string{"role=proxy"}, Capacity: 1 << 30, Booting: true},
	}}
	ds := PlaceAll(s, reqs(2, "proxy", 200<<20), o)
	for _, d := range ds {
		if d.Worker != "w-proxy-ab" {
			t.Fatalf("%s placed on %q, want the booting instance", d.Request.Name, d.Worker)
		}
	}
}
