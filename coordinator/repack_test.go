package coordinator

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// Repacking a fragmented cluster: containers of mixed sizes (64MiB to
// 2.5GiB) placed by spread, in random order, over twice the 4GiB
// workers a fresh first-fit-decreasing packing needs; then consolidation
// rounds, one after the other with every waiting rule passed (Manual),
// applying each plan's moves and removals, until a round removes nothing.

const repackCapacity = 4 << 30

// repackCluster returns the spread placement of containers requests over
// twice the workers a fresh FFD packing needs, and that FFD count and the
// lower bound ⌈Σ requests / usable memory of a worker⌉.
func repackCluster(containers int, seed uint64, o Options) (nodes []ScaleInWorker, ffd, lb int) {
	rng := rand.New(rand.NewPCG(seed, 0x4e9a))
	tags := []string{"role=app"}
	reqs := make([]Request, containers)
	var sum int64
	for i := range reqs {
		reqs[i] = Request{Name: fmt.Sprintf("c%05d", i), Tags: tags, Memory: int64(1+rng.IntN(40)) * 64 * mib}
		sum += reqs[i].Memory
	}
	usable := o.Usable(InstanceType{Memory: repackCapacity})
	ffd = ffdCount(reqs, usable)
	lb = int((sum + usable - 1) / usable)
	workers := make([]Worker, 2*ffd)
	for i := range workers {
		workers[i] = Worker{Name: fmt.Sprintf("w%04d", i), Tags: tags, Capacity: repackCapacity}
	}
	spread := o
	spread.Strategy = StrategySpread
	for {
		p := NewPlacer(&Snapshot{Workers: workers}, spread)
		on := map[string][]Resident{}
		ok := true
		for _, r := range reqs {
			d := p.Place(r)
			if !d.Placed() {
				ok = false
				break
			}
			p.Commit(d)
			on[d.Worker] = append(on[d.Worker], Resident{Name: r.Name, Tags: r.Tags, Memory: r.Memory, Relocatable: true})
		}
		if !ok {
			workers = append(workers, Worker{Name: fmt.Sprintf("w%04d", len(workers)), Tags: tags, Capacity: repackCapacity})
			continue
		}
		for _, w := range p.Snapshot().Workers {
			nodes = append(nodes, ScaleInWorker{Worker: w, JoinedAt: consNow.AddDate(0, 0, -1), Residents: on[w.Name]})
		}
		rng.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
		return nodes, ffd, lb
	}
}

// ffdCount packs reqs first-fit decreasing onto empty workers of usable
// bytes each and returns how many it takes.
func ffdCount(reqs []Request, usable int64) int {
	ms := make([]int64, len(reqs))
	for i, r := range reqs {
		ms[i] = r.Memory
	}
	slices.SortFunc(ms, func(a, b int64) int { return cmpF(float64(b), float64(a)) })
	var bins []int64
	for _, m := range ms {
		placed := false
		for i := range bins {
			if bins[i]+m <= usable {
				bins[i] += m
				placed = true
				break
			}
		}
		if !placed {
			bins = append(bins, m)
		}
	}
	return len(bins)
}

// applyPlan carries out a plan on nodes the way the manager does: moves
// (make before break), then removals; it checks each target has the
// container's tags and room with headroom.
func applyPlan(nodes []ScaleInWorker, p ConsolidationPlan, o Options) ([]ScaleInWorker, error) {
	idx := map[string]int{}
	for i := range nodes {
		idx[nodes[i].Name] = i
	}
	for _, m := range p.Moves {
		from, to := &nodes[idx[m.From]], &nodes[idx[m.To]]
		k := slices.IndexFunc(from.Residents, func(r Resident) bool { return r.Name == m.Container })
		if k < 0 {
			return nil, fmt.Errorf("move %s: not on %s", m.Container, m.From)
		}
		r := from.Residents[k]
		if !to.HasTags(r.Tags) || to.Draining {
			return nil, fmt.Errorf("move %s to %s, which lacks %v or is draining", r.Name, to.Name, r.Tags)
		}
		if o.Free(&to.Worker) < r.Memory {
			return nil, fmt.Errorf("move %s (%d) to %s, which has %d free", r.Name, r.Memory, to.Name, o.Free(&to.Worker))
		}
		from.Residents = slices.Delete(slices.Clone(from.Residents), k, k+1)
		from.Reserved -= r.Memory
		from.Containers--
		to.Residents = append(slices.Clone(to.Residents), r)
		to.Reserved += r.Memory
		to.Containers++
	}
	gone := map[string]bool{}
	for _, w := range p.Remove {
		if n := &nodes[idx[w]]; len(n.Residents) > 0 {
			return nil, fmt.Errorf("removed %s still holds %d containers", w, len(n.Residents))
		}
		gone[w] = true
	}
	return slices.DeleteFunc(nodes, func(n ScaleInWorker) bool { return gone[n.Name] }), nil
}

type repackResult struct {
	start, left, ffd, lb, rounds, moves int
}

// repack runs rounds until one removes nothing.
func repack(containers int, seed uint64, o ConsolidateOptions) (repackResult, error) {
	nodes, ffd, lb := repackCluster(containers, seed, o.Placement)
	res := repackResult{start: len(nodes), ffd: ffd, lb: lb}
	for res.rounds < 10000 {
		p := PlanConsolidation(nodes, consNow, o)
		if len(p.Remove) == 0 {
			break
		}
		res.rounds++
		res.moves += len(p.Moves)
		var err error
		if nodes, err = applyPlan(nodes, p, o.Placement); err != nil {
			return res, fmt.Errorf("round %d: %w", res.rounds, err)
		}
	}
	res.left = len(nodes)
	return res, nil
}

func repackOptions() ConsolidateOptions {
	o := DefaultConsolidateOptions()
	o.Manual = true
	return o
}

// TestRepackFromFragmented checks the bound of issue 13: from a spread
// placement over twice the workers needed, consolidation with the default
// options ends with at most one worker more than a fresh first-fit-
// decreasing packing of the same containers.
func TestRepackFromFragmented(t *testing.T) {
	for _, containers := range []int{120, 1000} {
		for seed := uint64(1); seed <= 5; seed++ {
			r, err := repack(containers, seed, repackOptions())
			if err != nil {
				t.Fatalf("%d containers, seed %d: %v", containers, seed, err)
			}
			t.Logf("%4d containers, seed %d: %3d workers → %3d left in %2d rounds (%d moves); FFD %3d, lower bound %3d",
				containers, seed, r.start, r.left, r.rounds, r.moves, r.ffd, r.lb)
			if r.left > r.ffd+1 {
				t.Errorf("%d containers, seed %d: %d workers left, FFD needs %d", containers, seed, r.left, r.ffd)
			}
		}
	}
}

func benchRepack(b *testing.B, containers int) {
	const seeds = 5
	var rs [seeds]repackResult
	for i := 0; i < b.N; i++ {
		for s := range rs {
			r, err := repack(containers, uint64(s+1), repackOptions())
			if err != nil {
				b.Fatal(err)
			}
			rs[s] = r
		}
	}
	var left, ffd, lb, rounds, over int
	for s, r := range rs {
		left, ffd, lb, rounds = left+r.left, ffd+r.ffd, lb+r.lb, rounds+r.rounds
		over = max(over, r.left-r.ffd)
		b.Logf("seed %d: %d workers → %d left in %d rounds (%d moves); FFD %d, lower bound %d", s+1, r.start, r.left, r.rounds, r.moves, r.ffd, r.lb)
	}
	b.ReportMetric(float64(left)/float64(ffd), "workers-left/ffd")
	b.ReportMetric(float64(left)/float64(lb), "workers-left/lower-bound")
	b.ReportMetric(float64(over), "max-over-ffd")
	b.ReportMetric(float64(rounds)/seeds, "rounds")
}

// BenchmarkRepack120 repacks 120 containers from a spread placement over
// twice the workers they need (5 seeds), with the default options and
// the waiting rules passed; rounds are cron rounds, a minute each plus the
// time the moves take.
func BenchmarkRepack120(b *testing.B) { benchRepack(b, 120) }

// BenchmarkRepack1000 is BenchmarkRepack120 with 1,000 containers.
func BenchmarkRepack1000(b *testing.B) { benchRepack(b, 1000) }
