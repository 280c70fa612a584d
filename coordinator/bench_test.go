package coordinator

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchCluster builds a cluster of n workers and the requests for
// containers containers, with capacities sized so that every container
// fits, with spread or binpack.
//
// Workers: 20% role=proxy, 50% role=app (half zone=a, half zone=b), 30%
// role=db, three quarters with disk=hdd and the rest with disk=ssd.
// Requests follow the same shares; 20% of app requests want a zone, db
// requests want disk=hdd or (10%) disk=ssd. (A db request that could go
// to either disk would, under binpack, fill the ssd workers it shares.) Sizes are multiples of 32MiB: proxy 32–128MiB, app
// 64–512MiB, db 256–512MiB.
func benchCluster(n, containers int) (*Snapshot, []Request) {
	rng := rand.New(rand.NewPCG(1, uint64(n)))
	type role struct {
		name           string
		share          float64
		minMiB, maxMiB int64
	}
	roles := []role{{"role=proxy", 0.2, 32, 128}, {"role=app", 0.5, 64, 512}, {"role=db", 0.3, 256, 512}}
	var (
		tagSets = map[string][][]string{
			"role=proxy": {{"role=proxy"}},
			"role=app":   {{"role=app"}, {"role=app", "zone=a"}, {"role=app", "zone=b"}},
			"role=db":    {{"role=db", "disk=hdd"}, {"role=db", "disk=ssd"}},
		}
		demand = map[string]int64{}
		reqs   = make([]Request, containers)
	)
	for i := range reqs {
		x := rng.Float64()
		ro := roles[2]
		if x < roles[0].share {
			ro = roles[0]
		} else if x < roles[0].share+roles[1].share {
			ro = roles[1]
		}
		tags := tagSets[ro.name][0]
		switch y := rng.Float64(); {
		case ro.name == "role=app" && y < 0.1:
			tags = tagSets[ro.name][1]
		case ro.name == "role=app" && y < 0.2:
			tags = tagSets[ro.name][2]
		case ro.name == "role=db" && y < 0.1:
			tags = tagSets[ro.name][1]
		}
		mem := (ro.minMiB + 32*rng.Int64N((ro.maxMiB-ro.minMiB)/32+1)) * mib
		demand[ro.name] += mem
		reqs[i] = Request{Name: fmt.Sprintf("c%07d", i), Tags: tags, Memory: mem}
	}
	s := &Snapshot{Workers: make([]Worker, n)}
	start := 0
	for ri, ro := range roles {
		end := start + int(float64(n)*ro.share)
		if ri == len(roles)-1 {
			end = n
		}
		count := int64(end - start)
		// 1.5× the role's average demand, above the 10% headroom,
		// rounded up to whole GiB.
		capacity := (demand[ro.name]*3/2/count*10/9 + 1<<30) &^ (1<<30 - 1)
		for i := start; i < end; i++ {
			var tags []string
			switch k := i - start; ro.name {
			case "role=app":
				tags = tagSets[ro.name][1+k%2]
			case "role=db":
				tags = tagSets[ro.name][0]
				if int64(k) >= count*3/4 {
					tags = tagSets[ro.name][1]
				}
			default:
				tags = tagSets[ro.name][0]
			}
			s.Workers[i] = Worker{Name: fmt.Sprintf("w%05d", i), Tags: tags, Capacity: capacity}
		}
		start = end
	}
	// The Placer must not depend on the order of the snapshot.
	rng.Shuffle(n, func(i, j int) { s.Workers[i], s.Workers[j] = s.Workers[j], s.Workers[i] })
	return s, reqs
}

func benchPlacer(b *testing.B, workers, containers int, o Options) {
	s, reqs := benchCluster(workers, containers)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := NewPlacer(s, o)
		for _, r := range reqs {
			d := p.Place(r)
			if !d.Placed() {
				b.Fatalf("placement %s failed: %s", r.Name, d.Reason)
			}
			p.Commit(d)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(containers)*float64(b.N)/b.Elapsed().Seconds(), "placements/s")
}

// BenchmarkPlace1000x100k places and commits 100,000 containers on 1,000
// workers per iteration.
func BenchmarkPlace1000x100k(b *testing.B) { benchPlacer(b, 1000, 100_000, DefaultOptions()) }

// BenchmarkPlace5000x1M places and commits 1,000,000 containers on 5,000
// workers per iteration.
func BenchmarkPlace5000x1M(b *testing.B) { benchPlacer(b, 5000, 1_000_000, DefaultOptions()) }

// BenchmarkPlaceBinpack1000x100k is BenchmarkPlace1000x100k with binpack.
func BenchmarkPlaceBinpack1000x100k(b *testing.B) { benchPlacer(b, 1000, 100_000, binpack()) }

// BenchmarkPlaceAll1000x100k places the same batch through PlaceAll,
// largest first.
func BenchmarkPlaceAll1000x100k(b *testing.B) {
	s, reqs := benchCluster(1000, 100_000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, d := range PlaceAll(s, reqs, DefaultOptions()) {
			if !d.Placed() {
				b.Fatalf("placement %s failed: %s", d.Request.Name, d.Reason)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(len(reqs))*float64(b.N)/b.Elapsed().Seconds(), "placements/s")
}

// BenchmarkPlaceReference places and commits 10,000 containers on 1,000
// workers with the reference linear scan, for comparison.
func BenchmarkPlaceReference(b *testing.B) {
	const containers = 10_000
	s, reqs := benchCluster(1000, 100_000)
	reqs = reqs[:containers]
	o := DefaultOptions()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		cur := cloneSnapshot(s)
		byName := make(map[string]int, len(cur.Workers))
		for j, w := range cur.Workers {
			byName[w.Name] = j
		}
		b.StartTimer()
		for _, r := range reqs {
			d := Place(cur, r, o)
			if !d.Placed() {
				b.Fatalf("placement %s failed: %s", r.Name, d.Reason)
			}
			w := &cur.Workers[byName[d.Worker]]
			w.Reserved += r.Memory
			w.Containers++
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(containers)*float64(b.N)/b.Elapsed().Seconds(), "placements/s")
}
