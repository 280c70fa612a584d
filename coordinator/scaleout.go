package coordinator

import (
	"sort"
	"strconv"
	"strings"

	"github.com/micado-scale/micado/definitions/bytesize"
)

// InstanceType is a size of instance the cloud can create.
type InstanceType struct {
	Name   string
	Memory int64 // memory the worker offers to containers, bytes
	// Price per hour, in the currency of Worker.Price; 0 means unknown.
	Price float64
}

// Usable is the memory of an instance of type t that placement may hand
// out: its memory less the headroom.
func (o Options) Usable(t InstanceType) int64 {
	return t.Memory - int64(float64(t.Memory)*o.Headroom)
}

// ScaleLimits bound scale-out.
type ScaleLimits struct {
	// MaxInstances is the most instances the cluster may have in all,
	// counting the ones booting (0 = no limit).
	MaxInstances int
	// MaxPerRole is the most instances one role may have (0 = no limit).
	MaxPerRole int
	// Instances is how many instances the cluster has now, booting ones
	// included.
	Instances int
	// PerRole counts the current instances by role.
	PerRole map[string]int
}

// NewInstance is one instance a scale-out plan asks for.
type NewInstance struct {
	Type     InstanceType
	Tags     []string // the tags its worker must carry
	Requests []string // the requests it is meant to hold
}

// ScaleOutPlan says which instances to ask the cloud for so that every
// pending request fits, and which requests cannot be helped.
type ScaleOutPlan struct {
	Instances []NewInstance
	// Impossible requests fit on no instance type at all: fail them now.
	Impossible []Decision
	// Limited requests wait because a scale-out limit is reached.
	Limited []Decision
	// Reasons explain the plan, one line per group of requests.
	Reasons []string
}

// RoleOf returns the value of the role tag in tags, or "" if none.
func RoleOf(tags []string) string {
	for _, t := range tags {
		if v, ok := strings.CutPrefix(t, "role="); ok {
			return v
		}
	}
	return ""
}

// PlanScaleOut plans new instances for requests that fit on no worker
// (nor on any instance already booting). Requests are grouped by their
// tag set, since a new worker carries exactly the tags asked of it. For
// each group it picks the smallest type that holds the whole group on one
// instance; when no type does, it packs the group first-fit-decreasing
// onto instances of the largest type and then shrinks each instance to the
// smallest type that still holds what was packed on it. When the types
// have prices (every type a price, not all the same), it picks instead the
// cheapest of these sets: for each type, the group packed
// first-fit-decreasing onto instances of that type, each instance then
// changed to the cheapest type that still holds what was packed on it.
// Requests larger than any type can hold are Impossible; requests beyond
// the limits are Limited.
func PlanScaleOut(unplaced []Request, types []InstanceType, o Options, lim ScaleLimits) ScaleOutPlan {
	var plan ScaleOutPlan
	ts := append([]InstanceType(nil), types...)
	sort.SliceStable(ts, func(i, j int) bool {
		if ts[i].Memory != ts[j].Memory {
			return ts[i].Memory < ts[j].Memory
		}
		return ts[i].Name < ts[j].Name
	})
	groups := map[string][]Request{}
	var keys []string
	for _, r := range unplaced {
		k := tagKey(r.Tags)
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	sort.Strings(keys)
	total := lim.Instances
	perRole := map[string]int{}
	for k, v := range lim.PerRole {
		perRole[k] = v
	}
	for _, k := range keys {
		reqs := groups[k]
		sort.SliceStable(reqs, func(i, j int) bool {
			if reqs[i].Memory != reqs[j].Memory {
				return reqs[i].Memory > reqs[j].Memory
			}
			return reqs[i].Name < reqs[j].Name
		})
		var largest InstanceType
		if len(ts) > 0 {
			largest = ts[len(ts)-1]
		}
		var fit []Request
		for _, r := range reqs {
			if len(ts) == 0 || r.Memory > o.Usable(largest) {
				plan.Impossible = append(plan.Impossible, Decision{Request: r, Reason: impossibleReason(r, ts, o)})
				continue
			}
			fit = append(fit, r)
		}
		if len(fit) == 0 {
			continue
		}
		var bins []bin
		if priced(ts) {
			bins = packCheapest(fit, ts, o)
		} else {
			bins = pack(fit, ts, o)
		}
		role := RoleOf(fit[0].Tags)
		asked := 0
		for _, b := range bins {
			if lim.MaxInstances > 0 && total >= lim.MaxInstances {
				for _, r := range b.reqs {
					plan.Limited = append(plan.Limited, Decision{Request: r, Reason: "waiting: the cluster has reached its limit of " + strconv.Itoa(lim.MaxInstances) + " instances"})
				}
				continue
			}
			if lim.MaxPerRole > 0 && perRole[role] >= lim.MaxPerRole {
				for _, r := range b.reqs {
					plan.Limited = append(plan.Limited, Decision{Request: r, Reason: "waiting: role " + role + " has reached its limit of " + strconv.Itoa(lim.MaxPerRole) + " instances"})
				}
				continue
			}
			total++
			perRole[role]++
			asked++
			ni := NewInstance{Type: b.t, Tags: append([]string(nil), fit[0].Tags...)}
			for _, r := range b.reqs {
				ni.Requests = append(ni.Requests, r.Name)
			}
			plan.Instances = append(plan.Instances, ni)
		}
		if asked > 0 {
			var sum int64
			for _, r := range fit {
				sum += r.Memory
			}
			tags := k
			if tags == "" {
				tags = "no tags"
			}
			why := strconv.Itoa(len(fit)) + " pending requests (" + tags + ", " + bytesize.Format(sum) +
				") fit on no worker: asking for " + describeBins(plan.Instances[len(plan.Instances)-asked:])
			if priced(ts) {
				cost := 0.0
				for _, ni := range plan.Instances[len(plan.Instances)-asked:] {
					cost += ni.Type.Price
				}
				why += ", " + FormatPrice(cost) + " in all, the cheapest set found"
			}
			plan.Reasons = append(plan.Reasons, why)
		}
	}
	return plan
}

type bin struct {
	t    InstanceType
	used int64
	reqs []Request
}

// pack puts reqs (sorted largest first, each fitting the largest type)
// onto as few instances as it can.
func pack(reqs []Request, ts []InstanceType, o Options) []bin {
	var sum int64
	for _, r := range reqs {
		sum += r.Memory
	}
	// One instance holds them all: the smallest type that does.
	for _, t := range ts {
		if o.Usable(t) >= sum {
			return []bin{{t: t, used: sum, reqs: reqs}}
		}
	}
	largest := ts[len(ts)-1]
	var bins []bin
	for _, r := range reqs {
		placed := false
		for i := range bins {
			if bins[i].used+r.Memory <= o.Usable(largest) {
				bins[i].used += r.Memory
				bins[i].reqs = append(bins[i].reqs, r)
				placed = true
				break
			}
		}
		if !placed {
			bins = append(bins, bin{t: largest, used: r.Memory, reqs: []Request{r}})
		}
	}
	for i := range bins {
		for _, t := range ts {
			if o.Usable(t) >= bins[i].used {
				bins[i].t = t
				break
			}
		}
	}
	return bins
}

// priced reports whether every type has a price and not all the same:
// only then can a set of instances be cheaper than another of as many.
func priced(ts []InstanceType) bool {
	for _, t := range ts {
		if t.Price <= 0 {
			return false
		}
	}
	for _, t := range ts {
		if t.Price != ts[0].Price {
			return true
		}
	}
	return false
}

// packCheapest returns the cheapest of the packings of reqs (sorted
// largest first, each fitting the largest type) first-fit-decreasing onto
// instances of one type, for each type that holds the largest request,
// each instance then changed to the cheapest type that holds what it got.
// Ties go to fewer instances, then to the type tried first (smaller).
func packCheapest(reqs []Request, ts []InstanceType, o Options) []bin {
	var best []bin
	bestCost := 0.0
	for _, base := range ts {
		cap := o.Usable(base)
		if cap < reqs[0].Memory {
			continue
		}
		var bins []bin
		for _, r := range reqs {
			placed := false
			for i := range bins {
				if bins[i].used+r.Memory <= cap {
					bins[i].used += r.Memory
					bins[i].reqs = append(bins[i].reqs, r)
					placed = true
					break
				}
			}
			if !placed {
				bins = append(bins, bin{t: base, used: r.Memory, reqs: []Request{r}})
			}
		}
		cost := 0.0
		for i := range bins {
			for _, t := range ts {
				if o.Usable(t) >= bins[i].used && t.Price < bins[i].t.Price {
					bins[i].t = t
				}
			}
			cost += bins[i].t.Price
		}
		if best == nil || cost < bestCost-1e-9 || (cost < bestCost+1e-9 && len(bins) < len(best)) {
			best, bestCost = bins, cost
		}
	}
	return best
}

func impossibleReason(r Request, ts []InstanceType, o Options) string {
	if len(ts) == 0 {
		return "no worker fits " + r.Name + " and no instance types are configured for scale-out"
	}
	l := ts[len(ts)-1]
	return r.Name + " needs " + bytesize.Format(r.Memory) + ", more than any instance type can hold (largest: " +
		l.Name + ", " + bytesize.Format(l.Memory) + ", " + bytesize.Format(o.Usable(l)) + " usable after headroom)"
}

func describeBins(ns []NewInstance) string {
	count := map[string]int{}
	var order []string
	for _, n := range ns {
		k := n.Type.Name + " (" + bytesize.Format(n.Type.Memory) + ")"
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, strconv.Itoa(count[k])+" × "+k)
	}
	return strings.Join(parts, ", ")
}

func tagKey(tags []string) string {
	t := append([]string(nil), tags...)
	sort.Strings(t)
	return strings.Join(t, ",")
}
