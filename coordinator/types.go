package coordinator

import (
	"fmt"
)

// Default placement settings. Each carries the reason for its value.
const (
	// DefaultHeadroom keeps 10% of every worker's memory free for the
	// agent, the OS and short bursts, so a full worker does not start
	// swapping or killing containers.
	DefaultHeadroom = 0.10
	// DefaultStrategy spreads load: a new container goes to the worker
	// with the most free memory, which keeps failures small.
	DefaultStrategy = StrategySpread
)

// Strategy ranks the workers that pass every filter.
type Strategy string

const (
	// StrategySpread picks the worker with the most free memory.
	StrategySpread Strategy = "spread"
	// StrategyBinpack picks the worker with the least free memory that
	// still fits, so that other workers stay empty and can be removed.
	StrategyBinpack Strategy = "binpack"
)

// ParseStrategy turns a configuration value into a Strategy.
func ParseStrategy(s string) (Strategy, error) {
	switch Strategy(s) {
	case "", StrategySpread:
		return StrategySpread, nil
	case StrategyBinpack:
		return StrategyBinpack, nil
	}
	return "", fmt.Errorf("unknown placement strategy %q (use %q or %q)", s, StrategySpread, StrategyBinpack)
}

// Options tune placement.
type Options struct {
	// Headroom is the fraction of each worker's capacity never handed
	// out (0.10 = 10%).
	Headroom float64
	// Strategy ranks the workers that fit.
	Strategy Strategy
}

// DefaultOptions returns the defaults above.
func DefaultOptions() Options {
	return Options{Headroom: DefaultHeadroom, Strategy: DefaultStrategy}
}

// Worker is one worker instance as the manager last saw it.
type Worker struct {
	// Name is the worker's unique node name.
	Name string
	// Tags are "key=value" capabilities such as "role=proxy".
	Tags []string
	// Capacity is the memory the worker offers to containers, in bytes.
	Capacity int64
	// Reserved is the memory already promised to containers, in bytes.
	Reserved int64
	// Used is the memory containers actually use, in bytes (informational).
	Used int64
	// CPUUsed is the fraction (0..1) of the worker's cores its containers
	// use, as measured (informational, like Used).
	CPUUsed float64
	// Hot marks a worker whose own real use (CPUUsed, or Used/Capacity) is
	// above the usage limit (the manager sets it, see UsageLimit.Hot):
	// among the workers that pass every filter, one that is not hot always
	// wins over a hot one, and the strategy ranks within each group.
	Hot bool
	// Containers is the number of containers on the worker.
	Containers int
	// Draining workers accept nothing new.
	Draining bool
	// Booting marks an instance asked of the cloud whose worker has not
	// joined yet: a request placed on it waits for it instead of asking
	// for another instance.
	Booting bool
	// Price is what the instance costs per hour, in any currency as long
	// as every price given to one call uses the same; 0 means unknown.
	// Only consolidation reads it (to remove or replace what costs most).
	Price float64
}

// HeadroomBytes is the memory of w kept free by the headroom setting.
func (o Options) HeadroomBytes(w *Worker) int64 {
	return int64(float64(w.Capacity) * o.Headroom)
}

// Free is the memory that can still be promised on w:
// capacity − reservations − headroom.
func (o Options) Free(w *Worker) int64 {
	return w.Capacity - w.Reserved - o.HeadroomBytes(w)
}

// HasTags reports whether w carries every tag in want.
func (w *Worker) HasTags(want []string) bool {
	for _, t := range want {
		if !hasTag(w.Tags, t) {
			return false
		}
	}
	return true
}

func hasTag(tags []string, t string) bool {
	for _, have := range tags {
		if have == t {
			return true
		}
	}
	return false
}

// Request asks for one container to be placed.
type Request struct {
	// Name identifies the container instance (for reasons and events).
	Name string
	// Tags every chosen worker must carry, such as "role=proxy".
	Tags []string
	// Memory is the container's memory request and limit, in bytes.
	Memory int64
}

// Snapshot is the cluster state a decision is made on. Callers must not
// change it while a decision is being made.
type Snapshot struct {
	Workers []Worker
}

// Rejection says why one worker was not chosen.
type Rejection struct {
	Worker string `json:"worker"`
	Filter string `json:"filter"`
	Reason string `json:"reason"`
}

// Decision is the result of placing one request.
type Decision struct {
	Request Request `json:"request"`
	// Worker is the chosen worker's name, or "" when nothing fits.
	Worker string `json:"worker,omitempty"`
	// Free is the chosen worker's free memory before this placement.
	Free int64 `json:"free,omitempty"`
	// Reason is one sentence: where and why, or why not.
	Reason string `json:"reason"`
	// Rejections lists, worker by worker, which filter rejected it. It is
	// filled when nothing fits, or when an explanation was asked for.
	Rejections []Rejection `json:"rejections,omitempty"`
}

// Placed reports whether a worker was chosen.
func (d Decision) Placed() bool { return d.Worker != "" }
