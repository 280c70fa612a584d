package manager

import (
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/micado-scale/micado/internal/wire"
)

// MemberStatus is what gossip last said of a member: a worker agent or a
// manager in the memberlist cluster.
type MemberStatus string

// Member statuses.
const (
	// MemberAlive: the member answers gossip.
	MemberAlive MemberStatus = "alive"
	// MemberDead: memberlist declared it failed, or it left.
	MemberDead MemberStatus = "dead"
)

// member is one cluster member as gossip last described it.
type member struct {
	Name       string
	Addr       string // gossip host:port
	Status     MemberStatus
	Load       wire.Load
	LastUpdate time.Time
	FirstSeen  time.Time
	DiedAt     time.Time
}

// members tracks the cluster from memberlist events. memberlist calls the
// Notify methods from its own goroutines, one at a time per event, and
// they must not block; the table is guarded by mu.
type members struct {
	mu     sync.RWMutex
	byName map[string]*member
	byAPI  map[string]*member  // by agent API address, for the reports agents return
	sorted []string            // member names, naturally sorted; nil when stale
	dirty  map[string]struct{} // members whose status changed since takeDirty
	self   string
	now    func() time.Time
	onJoin func(name, addr string)
	onDead func(name string)
}

func newMembers(self string) *members {
	return &members{byName: map[string]*member{}, byAPI: map[string]*member{}, dirty: map[string]struct{}{}, self: self, now: time.Now}
}

func (m *members) upsert(n *memberlist.Node, status MemberStatus) {
	l, _ := wire.DecodeLoad(n.Meta)
	m.mu.Lock()
	mem, ok := m.byName[n.Name]
	if !ok {
		mem = &member{Name: n.Name, FirstSeen: m.now()}
		m.byName[n.Name] = mem
		m.sorted = nil
	}
	prev := mem.Status
	mem.Addr = n.Address()
	mem.Status = status
	if prev != status {
		m.dirty[n.Name] = struct{}{}
	}
	// Gossip can deliver a report older than one the agent's API already
	// handed over with a start or stop answer: keep the newer one.
	if !ok || l.Newer(mem.Load) {
		m.setLoad(mem, l)
	}
	mem.LastUpdate = m.now()
	if status != MemberAlive && prev == MemberAlive {
		mem.DiedAt = m.now()
	}
	onJoin, onDead := m.onJoin, m.onDead
	m.mu.Unlock()
	if status == MemberAlive && prev != MemberAlive && onJoin != nil && n.Name != m.self {
		go onJoin(n.Name, n.Address())
	}
	if status != MemberAlive && prev == MemberAlive && onDead != nil {
		go onDead(n.Name)
	}
}

// NotifyJoin implements memberlist.EventDelegate.
func (m *members) NotifyJoin(n *memberlist.Node) { m.upsert(n, MemberAlive) }

// NotifyUpdate implements memberlist.EventDelegate: a member's load changed.
func (m *members) NotifyUpdate(n *memberlist.Node) { m.upsert(n, MemberAlive) }

// NotifyLeave implements memberlist.EventDelegate: a member left or died.
func (m *members) NotifyLeave(n *memberlist.Node) {
	if n.State == memberlist.StateLeft {
		// A worker that left on purpose (scale-in) is gone, not failed.
		m.forget(n.Name)
		return
	}
	m.upsert(n, MemberDead)
}

// applyLoad takes a load report an agent returned with an API answer
// (api is the agent API address it came from).
func (m *members) applyLoad(api string, l wire.Load) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mem := m.byAPI[api]; mem != nil && mem.Load.API == api && l.API == api && mem.Status == MemberAlive && l.Newer(mem.Load) {
		m.setLoad(mem, l)
	}
}

// setLoad takes a member's new report and keeps the API index. Call with
// m.mu held.
func (m *members) setLoad(mem *member, l wire.Load) {
	if mem.Load.API != l.API && m.byAPI[mem.Load.API] == mem {
		delete(m.byAPI, mem.Load.API)
	}
	mem.Load = l
	if l.API != "" {
		m.byAPI[l.API] = mem
	}
}

// forget drops a member that left for good (scaled in).
func (m *members) forget(name string) {
	m.mu.Lock()
	if mem := m.byName[name]; mem != nil && m.byAPI[mem.Load.API] == mem {
		delete(m.byAPI, mem.Load.API)
	}
	delete(m.byName, name)
	m.sorted = nil
	m.dirty[name] = struct{}{}
	m.mu.Unlock()
}

// takeDirty returns the members whose status changed since it was last
// called.
func (m *members) takeDirty() map[string]struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.dirty
	m.dirty = map[string]struct{}{}
	return d
}

// workers returns a copy of every worker, alive or not, sorted by name.
func (m *members) workers() []member {
	m.mu.Lock()
	if m.sorted == nil {
		m.sorted = make([]string, 0, len(m.byName))
		for n := range m.byName {
			m.sorted = append(m.sorted, n)
		}
		sort.Slice(m.sorted, func(i, j int) bool { return naturalLess(m.sorted[i], m.sorted[j]) })
	}
	defer m.mu.Unlock()
	out := make([]member, 0, len(m.sorted))
	for _, n := range m.sorted {
		if mem := m.byName[n]; mem.Load.Kind == wire.KindWorker {
			out = append(out, *mem)
		}
	}
	return out
}

// managers returns a copy of every manager, alive or not, sorted by name.
func (m *members) managers() []member {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]member, 0, 3)
	for _, mem := range m.byName {
		if mem.Load.Kind == wire.KindManager {
			out = append(out, *mem)
		}
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].Name, out[j].Name) })
	return out
}

// alive reports whether the member name is alive.
func (m *members) alive(name string) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	mem, ok := m.byName[name]
	return ok && mem.Status == MemberAlive
}

// all returns a copy of every member, workers and managers, alive or
// not (the metrics count them).
func (m *members) all() []member {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]member, 0, len(m.byName))
	for _, mem := range m.byName {
		out = append(out, *mem)
	}
	return out
}

// applyLoadOf takes a load report the member name sent directly, if it
// is newer than what gossip brought.
func (m *members) applyLoadOf(name string, l wire.Load) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mem, ok := m.byName[name]; ok && mem.Status == MemberAlive && l.Kind == mem.Load.Kind && l.Newer(mem.Load) {
		m.setLoad(mem, l)
		mem.LastUpdate = m.now()
	}
}

// get returns one member.
func (m *members) get(name string) (member, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	mem, ok := m.byName[name]
	if !ok {
		return member{}, false
	}
	return *mem, true
}

// managerDelegate serves the manager's own gossip metadata and takes the
// load reports agents send it directly.
type managerDelegate struct {
	meta    []byte
	members *members
}

func (d *managerDelegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		return nil
	}
	return d.meta
}

// NotifyMsg implements memberlist.Delegate: a worker's direct load
// report. Called from memberlist's goroutines; must not block or keep b.
func (d *managerDelegate) NotifyMsg(b []byte) {
	if name, l, err := wire.DecodeLoadMsg(b); err == nil && d.members != nil {
		d.members.applyLoadOf(name, l)
	}
}
func (d *managerDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *managerDelegate) LocalState(bool) []byte          { return nil }
func (d *managerDelegate) MergeRemoteState([]byte, bool)   {}
