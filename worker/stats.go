package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/micado-scale/micado/internal/wire"
)

// statsParallel bounds the one-shot stats calls in flight at once, so that
// 30 containers on one worker are sampled well within one StatsInterval
// without flooding the engine.
const statsParallel = 8

// statsRoundTimeout bounds one sampling round.
const statsRoundTimeout = 10 * time.Second

// cpuSample is one reading of a container's CPU counter.
type cpuSample struct {
	total uint64    // cpu_stats.cpu_usage.total_usage: CPU time used since the container started, ns
	at    time.Time // when the engine read it
}

// cpuPercent is the CPU a container used between two of its samples, in %
// of ONE core as `docker stats` shows it: Δ CPU time / Δ wall-clock time ×
// 100 (two cores busy = 200). It is false when the samples cannot tell: not
// in time order, or the counter went back (the container restarted).
func cpuPercent(prev, cur cpuSample) (float64, bool) {
	if prev.at.IsZero() || !cur.at.After(prev.at) || cur.total < prev.total {
		return 0, false
	}
	return float64(cur.total-prev.total) / float64(cur.at.Sub(prev.at).Nanoseconds()) * 100, true
}

// containerSample is what one one-shot stats call tells about a container.
type containerSample struct {
	cpu    cpuSample
	memory int64 // used, without the page cache
	limit  int64 // memory limit, bytes
}

// sample reads one container's stats from the engine in one shot (the
// engine does not wait a second to prime a CPU delta: the collector keeps
// the previous sample itself).
func (e *engine) sample(ctx context.Context, id string) (containerSample, error) {
	r, err := e.docker.ContainerStatsOneShot(ctx, id)
	if err != nil {
		return containerSample{}, fmt.Errorf("stats of %s: %w", shortID(id), err)
	}
	defer r.Body.Close()
	var s struct {
		Read     time.Time `json:"read"`
		CPUStats struct {
			CPUUsage struct {
				TotalUsage uint64 `json:"total_usage"`
			} `json:"cpu_usage"`
		} `json:"cpu_stats"`
		MemoryStats struct {
			Usage uint64            `json:"usage"`
			Limit uint64            `json:"limit"`
			Stats map[string]uint64 `json:"stats"`
		} `json:"memory_stats"`
	}
	if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
		return containerSample{}, fmt.Errorf("stats of %s: %w", shortID(id), err)
	}
	at := s.Read
	if at.IsZero() || at.Year() < 2000 { // a stopped container reads as the zero time
		at = time.Now()
	}
	used := int64(s.MemoryStats.Usage)
	if cache, ok := s.MemoryStats.Stats["inactive_file"]; ok && int64(cache) < used {
		used -= int64(cache)
	}
	return containerSample{
		cpu:    cpuSample{total: s.CPUStats.CPUUsage.TotalUsage, at: at},
		memory: used,
		limit:  int64(s.MemoryStats.Limit),
	}, nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// statsCollector samples the worker's running containers every
// StatsInterval and keeps the last round's measurements, and the last CPU
// counter of every container to compute the next round's CPU from.
type statsCollector struct {
	list   func(context.Context) ([]wire.ContainerInfo, error)
	sample func(context.Context, string) (containerSample, error)

	mu   sync.Mutex
	prev map[string]cpuSample           // by container ID
	last map[string]wire.ContainerStats // by container ID, the last round
	at   time.Time                      // when the last round ended
}

func newStatsCollector(e *engine) *statsCollector {
	return &statsCollector{list: e.list, sample: e.sample}
}

// collect samples every running container once, at most statsParallel at
// a time, and replaces the measurements. A container whose sample failed
// keeps its previous measurement (its At tells how old it is) and its
// previous CPU counter; a container that is gone is forgotten. It returns
// the first sampling error, for the log.
func (s *statsCollector) collect(ctx context.Context) error {
	cs, err := s.list(ctx)
	if err != nil {
		return err
	}
	running := make([]wire.ContainerInfo, 0, len(cs))
	for _, c := range cs {
		if c.State == "running" {
			running = append(running, c)
		}
	}
	samples := make([]containerSample, len(running))
	errs := make([]error, len(running))
	sem := make(chan struct{}, statsParallel)
	var wg sync.WaitGroup
	for i, c := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			samples[i], errs[i] = s.sample(ctx, c.ID)
		}()
	}
	wg.Wait()

	s.mu.Lock()
	defer s.mu.Unlock()
	prev := make(map[string]cpuSample, len(running))
	last := make(map[string]wire.ContainerStats, len(running))
	var first error
	for i, c := range running {
		if errs[i] != nil {
			if first == nil {
				first = errs[i]
			}
			if p, ok := s.prev[c.ID]; ok {
				prev[c.ID] = p
			}
			if l, ok := s.last[c.ID]; ok {
				last[c.ID] = l
			}
			continue
		}
		smp := samples[i]
		st := wire.ContainerStats{
			Instance: c.Instance, Service: c.Service, App: c.App, Generation: c.Generation,
			Memory: smp.memory, Limit: smp.limit, At: smp.cpu.at,
		}
		if st.Limit <= 0 {
			st.Limit = c.Memory
		}
		if p, ok := s.prev[c.ID]; ok {
			st.CPU, st.HasCPU = cpuPercent(p, smp.cpu)
			st.CPU = math.Round(st.CPU*100) / 100
		}
		prev[c.ID] = smp.cpu
		last[c.ID] = st
	}
	s.prev, s.last, s.at = prev, last, time.Now()
	return first
}

// run collects every interval until ctx ends.
func (s *statsCollector) run(ctx context.Context, interval time.Duration, logf func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, statsRoundTimeout)
			err := s.collect(rctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				logf(err)
			}
		}
	}
}

// byID returns the last round's measurements by container ID (nil before
// the first round, or for a nil collector).
func (s *statsCollector) byID() map[string]wire.ContainerStats {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last // replaced, never changed, by collect
}

// snapshot returns the last round's measurements, sorted by instance and
// generation, and when the round ended.
func (s *statsCollector) snapshot() ([]wire.ContainerStats, time.Time) {
	if s == nil {
		return []wire.ContainerStats{}, time.Time{}
	}
	s.mu.Lock()
	last, at := s.last, s.at
	s.mu.Unlock()
	out := make([]wire.ContainerStats, 0, len(last))
	for _, st := range last {
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Instance != out[j].Instance {
			return out[i].Instance < out[j].Instance
		}
		return out[i].Generation < out[j].Generation
	})
	return out, at
}

// cpuRatio turns the summed CPU % (of one core) of containers into a
// fraction of the cores a worker offers, 0..1, rounded to 0.001 to keep
// the gossiped report short.
func cpuRatio(percent, cpus float64) float64 {
	if cpus <= 0 || percent <= 0 {
		return 0
	}
	r := percent / 100 / cpus
	if r > 1 {
		r = 1
	}
	return math.Round(r*1000) / 1000
}

// currentStats builds the answer to GET /v1/stats from the last round.
func (a *Agent) currentStats() wire.Stats {
	cs, at := a.stats.snapshot()
	st := wire.Stats{Node: a.cfg.Name, CPUs: a.cfg.CPUs, Capacity: a.cfg.Memory, Containers: cs, At: at}
	var pct float64
	for _, c := range cs {
		if c.HasCPU {
			pct += c.CPU
		}
		st.Memory += c.Memory
	}
	st.CPU = cpuRatio(pct, a.cfg.CPUs)
	return st
}
