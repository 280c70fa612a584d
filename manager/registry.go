package manager

import (
	"context"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/micado-scale/micado/worker"
)

// Service metadata keys micado sets on every registration it makes, so it
// only ever deregisters its own.
const (
	MetaCluster  = "micado-cluster"
	MetaInstance = "micado-instance"
	MetaNode     = "micado-node"
)

// Health states of a registration, as Consul reports them.
const (
	HealthPassing  = "passing"
	HealthWarning  = "warning"
	HealthCritical = "critical"
)

// Registry is where running containers are registered so that services
// find each other: Consul's catalog, with checks that its agent runs
// against each container (manager/consul). The manager keeps what it
// registered and the health of its registrations in memory (regCache), so
// reads never call it.
//
// Implementations must be safe for concurrent use.
type Registry interface {
	// Register registers (or re-registers) one container copy.
	Register(ctx context.Context, r Registration) error
	// Deregister removes a registration by service ID; a missing one is
	// not an error.
	Deregister(ctx context.Context, id string) error
	// List returns this cluster's registrations: service ID → container.
	List(ctx context.Context) (map[string]string, error)
	// Health waits until the health of this cluster's registrations has
	// changed since index (at most wait; index 0 answers at once) and
	// returns service ID → passing, warning or critical, and the index to
	// wait on next.
	Health(ctx context.Context, index uint64, wait time.Duration) (map[string]string, uint64, error)
}

// Registration is one container copy as the registry stores it.
type Registration struct {
	ID      string
	Name    string
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string
	Check   *RegistrationCheck // nil: no check (the copy counts as passing)
}

// RegistrationCheck is the check the registry runs against a copy.
type RegistrationCheck struct {
	ID       string
	Name     string
	TCP      string // host:port for a TCP check
	HTTP     string // URL for an HTTP check
	Interval string
	Timeout  string
}

// checkIDPrefix starts the check ID of every registration of the cluster,
// so the health watch reads only the cluster's own checks.
func checkIDPrefix(cluster string) string { return "micado:" + cluster + ":" }

// registrationFor builds the registration of a container's current copy.
func registrationFor(cluster string, c *Container) Registration {
	tags := append([]string(nil), c.Tags...)
	if c.App != "" {
		tags = append(tags, "app="+c.App)
	}
	tags = append(tags, "node="+c.Node)
	reg := Registration{
		ID:      c.ServiceID(),
		Name:    c.Service,
		Address: c.Address,
		Port:    c.HostPort(),
		Tags:    tags,
		Meta:    map[string]string{MetaCluster: cluster, MetaInstance: c.Name, MetaNode: c.Node},
	}
	for i, b := range c.Bindings {
		if i > 0 {
			reg.Meta["port-"+strconv.Itoa(b.Container)] = strconv.Itoa(b.Host)
		}
	}
	if c.HostPort() == 0 || c.Check.Type == "none" {
		return reg
	}
	interval := c.Check.Interval
	if interval == "" {
		interval = "2s"
	}
	target := net.JoinHostPort(c.Address, strconv.Itoa(c.HostPort()))
	check := &RegistrationCheck{
		ID:       checkIDPrefix(cluster) + c.ServiceID(),
		Name:     "micado " + c.Check.Type + " check of " + c.Name,
		Interval: interval,
		Timeout:  "2s",
	}
	if c.Check.Type == "http" {
		check.HTTP = "http://" + target + c.Check.Path
	} else {
		check.Name = "micado tcp check of " + c.Name
		check.TCP = target
	}
	reg.Check = check
	return reg
}

// Agents commands the worker agents. worker.Client is the production
// implementation; tests use simulated workers. Calls carry the leader's
// term in their context (worker.WithTerm). Implementations must be safe
// for concurrent use.
type Agents interface {
	Start(ctx context.Context, addr string, r worker.StartRequest) (worker.ContainerInfo, error)
	Stop(ctx context.Context, addr, instance string, generation int) (bool, error)
	List(ctx context.Context, addr string) ([]worker.ContainerInfo, error)
	Leave(ctx context.Context, addr string) error
}

var _ Agents = (*worker.Client)(nil)

// termAgents gives every agent call the leader's term, whatever context
// the call comes from (an API request, a reconciliation).
type termAgents struct {
	a    Agents
	term uint64
}

func (t termAgents) Start(ctx context.Context, addr string, r worker.StartRequest) (worker.ContainerInfo, error) {
	return t.a.Start(worker.WithTerm(ctx, t.term), addr, r)
}

func (t termAgents) Stop(ctx context.Context, addr, instance string, generation int) (bool, error) {
	return t.a.Stop(worker.WithTerm(ctx, t.term), addr, instance, generation)
}

func (t termAgents) List(ctx context.Context, addr string) ([]worker.ContainerInfo, error) {
	return t.a.List(worker.WithTerm(ctx, t.term), addr)
}

func (t termAgents) Leave(ctx context.Context, addr string) error {
	return t.a.Leave(worker.WithTerm(ctx, t.term), addr)
}

// Registry anti-entropy.
const (
	// registrySyncInterval: every so often the manager compares its
	// registrations with the registry's, so one lost in a registry
	// restart is made again even when nothing else tells.
	registrySyncInterval = 30 * time.Second
	// healthWait is how long one health watch call waits for a change.
	healthWait = 5 * time.Minute
)

// regCache is what the manager knows of its registrations: which service
// IDs it registered, and their health as the registry's watch last told.
// Safe for concurrent use.
type regCache struct {
	mu      sync.Mutex
	ids     map[string]string // service ID → container
	synced  time.Time         // last full comparison with the registry
	health  map[string]string // service ID → passing, warning, critical
	changed chan struct{}     // closed and replaced when health changes
	stale   bool              // a registration seems lost: sync soon
}

func newRegCache() *regCache {
	return &regCache{ids: map[string]string{}, health: map[string]string{}, changed: make(chan struct{})}
}

func (r *regCache) registered(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.ids[id]
	return ok
}

func (r *regCache) add(id, container string) {
	r.mu.Lock()
	r.ids[id] = container
	r.mu.Unlock()
}

func (r *regCache) drop(id string) {
	r.mu.Lock()
	delete(r.ids, id)
	r.mu.Unlock()
}

// snapshot returns a copy of the registered IDs.
func (r *regCache) snapshot() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]string, len(r.ids))
	for k, v := range r.ids {
		out[k] = v
	}
	return out
}

func (r *regCache) replace(ids map[string]string, at time.Time) {
	r.mu.Lock()
	r.ids, r.synced, r.stale = ids, at, false
	r.mu.Unlock()
}

// due reports whether a full comparison with the registry is due.
func (r *regCache) due(now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stale || now.Sub(r.synced) >= registrySyncInterval
}

func (r *regCache) markStale() {
	r.mu.Lock()
	r.stale = true
	r.mu.Unlock()
}

// setHealth replaces the health map and wakes the waiters.
func (r *regCache) setHealth(h map[string]string) {
	r.mu.Lock()
	r.health = h
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// healthOf returns the health of one service ID ("" when unknown).
func (r *regCache) healthOf(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.health[id]
}

// healthWait returns the health of id and a channel closed at the next
// change.
func (r *regCache) healthWait(id string) (string, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.health[id], r.changed
}
