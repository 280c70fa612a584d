package manager

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/micado-scale/micado/internal/wire"
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

// Agents commands the worker agents. wire.Client is the production
// implementation; tests use simulated workers. Calls carry the leader's
// term in their context (wire.WithTerm). Implementations must be safe
// for concurrent use.
type Agents interface {
	Start(ctx context.Context, addr string, r wire.StartRequest) (wire.ContainerInfo, error)
	Stop(ctx context.Context, addr, instance string, generation int) (bool, error)
	List(ctx context.Context, addr string) ([]wire.ContainerInfo, error)
	Leave(ctx context.Context, addr string) error
}

var _ Agents = (*wire.Client)(nil)

// termAgents gives every agent call the leader's term, whatever context
// the call comes from (an API request, a reconciliation).
type termAgents struct {
	a    Agents
	term uint64
}

func (t termAgents) Start(ctx context.Context, addr string, r wire.StartRequest) (wire.ContainerInfo, error) {
	return t.a.Start(wire.WithTerm(ctx, t.term), addr, r)
}

func (t termAgents) Stop(ctx context.Context, addr, instance string, generation int) (bool, error) {
	return t.a.Stop(wire.WithTerm(ctx, t.term), addr, instance, generation)
}

func (t termAgents) List(ctx context.Context, addr string) ([]wire.ContainerInfo, error) {
	return t.a.List(wire.WithTerm(ctx, t.term), addr)
}

func (t termAgents) Leave(ctx context.Context, addr string) error {
	return t.a.Leave(wire.WithTerm(ctx, t.term), addr)
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

// regKey names one registration: a container's copy of a generation.
type regKey struct {
	name string
	gen  int
}

// parseServiceID splits a service ID made by serviceID into the container
// and the generation.
func parseServiceID(id, name string) regKey {
	if rest, ok := strings.CutPrefix(id, name+".g"); ok {
		if g, err := strconv.Atoi(rest); err == nil {
			return regKey{name, g}
		}
	}
	return regKey{name, 0}
}

// regSet is a set of registrations, compact for 100,000 of them: the
// generations of each container as bits (generations above 63, rare, in
// a map of their own).
type regSet struct {
	bits map[string]uint64
	big  map[regKey]struct{}
}

func newRegSet(n int) *regSet {
	return &regSet{bits: make(map[string]uint64, n), big: map[regKey]struct{}{}}
}

func (s *regSet) has(k regKey) bool {
	if k.gen < 0 {
		return false
	}
	if k.gen < 64 {
		return s.bits[k.name]&(1<<k.gen) != 0
	}
	_, ok := s.big[k]
	return ok
}

func (s *regSet) add(k regKey) {
	switch {
	case k.gen < 0:
	case k.gen < 64:
		s.bits[k.name] |= 1 << k.gen
	default:
		s.big[k] = struct{}{}
	}
}

func (s *regSet) del(k regKey) {
	switch {
	case k.gen < 0:
	case k.gen < 64:
		if b := s.bits[k.name] &^ (1 << k.gen); b == 0 {
			delete(s.bits, k.name)
		} else {
			s.bits[k.name] = b
		}
	default:
		delete(s.big, k)
	}
}

// of calls fn with every registration of the container name.
func (s *regSet) of(name string, fn func(regKey)) {
	for b, g := s.bits[name], 0; b != 0; b, g = b>>1, g+1 {
		if b&1 != 0 {
			fn(regKey{name, g})
		}
	}
	for k := range s.big {
		if k.name == name {
			fn(k)
		}
	}
}

// each calls fn with every registration.
func (s *regSet) each(fn func(regKey)) {
	for name := range s.bits {
		s.of(name, fn)
	}
	for k := range s.big {
		if _, ok := s.bits[k.name]; !ok {
			fn(k)
		}
	}
}

// regCache is what the manager knows of its registrations: which copies
// it registered, and their health as the registry's watch last told.
// Safe for concurrent use.
type regCache struct {
	mu      sync.Mutex
	set     *regSet             // registered copies
	synced  time.Time           // last full comparison with the registry
	health  map[string]string   // service ID → passing, warning, critical
	changed chan struct{}       // closed and replaced when health changes
	stale   bool                // a registration seems lost: sync soon
	dirty   map[string]struct{} // containers whose registrations changed since takeDirty
}

func newRegCache() *regCache {
	return &regCache{set: newRegSet(0), health: map[string]string{}, changed: make(chan struct{}), dirty: map[string]struct{}{}}
}

// takeDirty returns the containers whose registrations changed since it
// was last called.
func (r *regCache) takeDirty() map[string]struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.dirty
	r.dirty = map[string]struct{}{}
	return d
}

func (r *regCache) registered(name string, gen int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.set.has(regKey{name, gen})
}

func (r *regCache) add(name string, gen int) {
	r.mu.Lock()
	r.set.add(regKey{name, gen})
	r.dirty[name] = struct{}{}
	r.mu.Unlock()
}

func (r *regCache) drop(name string, gen int) {
	r.mu.Lock()
	r.set.del(regKey{name, gen})
	r.dirty[name] = struct{}{}
	r.mu.Unlock()
}

// view runs fn with the registered copies, and whether they were ever
// compared with the registry's, under the cache's lock (fn must not call
// the cache).
func (r *regCache) view(fn func(set *regSet, known bool)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(r.set, !r.synced.IsZero())
}

// names returns the containers that have registrations.
func (r *regCache) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.set.bits)+len(r.set.big))
	for n := range r.set.bits {
		out = append(out, n)
	}
	for k := range r.set.big {
		if _, ok := r.set.bits[k.name]; !ok {
			out = append(out, k.name)
		}
	}
	return out
}

// replace takes the registry's list (service ID → container).
func (r *regCache) replace(ids map[string]string, at time.Time) {
	set := newRegSet(len(ids))
	for id, name := range ids {
		set.add(parseServiceID(id, name))
	}
	r.mu.Lock()
	set.each(func(k regKey) {
		if !r.set.has(k) {
			r.dirty[k.name] = struct{}{}
		}
	})
	r.set.each(func(k regKey) {
		if !set.has(k) {
			r.dirty[k.name] = struct{}{}
		}
	})
	r.set, r.synced, r.stale = set, at, false
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
