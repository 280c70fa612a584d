package manager

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions/bytesize"
)

// InstanceState is an instance's state in the desired state.
type InstanceState string

// Instance states.
const (
	InstanceRequested InstanceState = "requested" // asked of the cloud; its worker has not joined
	InstanceJoined    InstanceState = "joined"    // its worker agent joined the cluster
	// InstanceTerminating: scale-in emptied it and is terminating it. A
	// manager that restarts finds the mark and finishes the job.
	InstanceTerminating InstanceState = "terminating"
)

// Defaults for scale-out.
const (
	// DefaultJoinTimeout is how long a new instance may take to boot and
	// join before it is terminated: cloud VMs take one to three minutes.
	DefaultJoinTimeout = 5 * time.Minute
	// MaxScaleAttempts bounds how often the instances asked for one
	// container may fail to join before the container fails.
	MaxScaleAttempts = 3
	// sweepGrace keeps a freshly (re)started manager from terminating
	// instances whose workers have not re-joined yet.
	sweepGrace = 30 * time.Second
	// sweepInterval is how often the cloud is listed for instances of the
	// cluster that no record knows: cloud APIs are slow and rate-limited,
	// and a stray instance costs little for a minute.
	sweepInterval = time.Minute
	// DefaultLostTimeout is how long the worker of an instance that had
	// joined may stay away (dead, or never seen since the manager started)
	// before the instance is terminated: its containers were placed
	// elsewhere long before, and a lost instance still costs money.
	DefaultLostTimeout = 5 * time.Minute
)

// InstanceRecord is a cloud instance the manager asked for. The record is
// written to Consul KV before the cloud is called, so a manager that
// crashes in between finds, and cleans up, what it asked for.
type InstanceRecord struct {
	Name        string        `json:"name"`
	Type        string        `json:"type"`
	Memory      int64         `json:"memory"`
	Tags        []string      `json:"tags"`
	Provider    string        `json:"provider"`
	ID          string        `json:"id,omitempty"`
	State       InstanceState `json:"state"`
	Reason      string        `json:"reason,omitempty"`
	RequestedAt time.Time     `json:"requested_at"`
	CreatedAt   time.Time     `json:"created_at,omitempty"` // when the cloud accepted the create call
	JoinedAt    time.Time     `json:"joined_at,omitempty"`
	// JoinToken is the hex SHA-256 of the instance's join token (the
	// token is only in its user data); JoinExpires ends its validity and
	// JoinedWith is when it was spent for the cluster key.
	JoinToken   string    `json:"join_token,omitempty"`
	JoinExpires time.Time `json:"join_expires,omitempty"`
	JoinedWith  time.Time `json:"joined_with,omitempty"`

	index uint64 // the journal index of its last change
}

// scaling reports whether the manager can ask the cloud for workers.
func (m *Manager) scaling() bool { return m.cfg.Provider != nil && len(m.cfg.InstanceTypes) > 0 }

func (m *Manager) coordTypes() []coordinator.InstanceType {
	out := make([]coordinator.InstanceType, len(m.cfg.InstanceTypes))
	for i, t := range m.cfg.InstanceTypes {
		out[i] = coordinator.InstanceType{Name: t.Name, Memory: t.Memory, Price: t.Price}
	}
	return out
}

// priceOf is a worker's price per hour: its instance type's (from the
// instance record), else that of the one type with exactly its memory;
// 0 when unknown.
func (m *Manager) priceOf(name string, capacity int64, inst map[string]*InstanceRecord) float64 {
	if in, ok := inst[name]; ok {
		for _, t := range m.cfg.InstanceTypes {
			if t.Name == in.Type {
				return t.Price
			}
		}
	}
	price, n := 0.0, 0
	for _, t := range m.cfg.InstanceTypes {
		if t.Memory == capacity {
			price, n = t.Price, n+1
		}
	}
	if n == 1 {
		return price
	}
	return 0
}

// roleAllowed reports whether scale-out may create workers with tags.
func (m *Manager) roleAllowed(tags []string) bool {
	if len(m.cfg.ScaleRoles) == 0 {
		return true
	}
	return contains(m.cfg.ScaleRoles, coordinator.RoleOf(tags))
}

// canScaleFor says why scale-out cannot help r, or "" if it can.
func (l *leader) canScaleFor(r coordinator.Request) string {
	m := l.m
	if !m.scaling() {
		return "scale-out is off (no cloud provider configured)"
	}
	if !m.roleAllowed(r.Tags) {
		return fmt.Sprintf("scale-out creates only roles %v, not role=%s", m.cfg.ScaleRoles, coordinator.RoleOf(r.Tags))
	}
	p := coordinator.PlanScaleOut([]coordinator.Request{r}, m.coordTypes(), m.cfg.Placement, coordinator.ScaleLimits{})
	if len(p.Impossible) > 0 {
		return p.Impossible[0].Reason
	}
	return ""
}

// withBooting adds the instances on their way as workers that are
// booting, so requests that fit on them wait instead of asking for more.
func (l *leader) withBooting(s *coordinator.Snapshot) map[string]*InstanceRecord {
	booting := map[string]*InstanceRecord{}
	for _, in := range l.store.Instances() {
		if in.State != InstanceRequested || l.m.members.alive(in.Name) {
			continue
		}
		booting[in.Name] = in
		s.Workers = append(s.Workers, coordinator.Worker{Name: in.Name, Tags: in.Tags, Capacity: in.Memory, Booting: true})
	}
	return booting
}

func waitReason(in *InstanceRecord) string {
	return fmt.Sprintf("waiting for instance %s (%s, %s) to join", in.Name, tagsText(in.Tags), bytesize.Format(in.Memory))
}

func tagsText(tags []string) string {
	if len(tags) == 0 {
		return "no tags"
	}
	return strings.Join(tags, ",")
}

// scaleLimits counts the workers and instances scale-out limits apply
// to: every alive worker, and every instance asked for whose worker is
// not (yet) alive.
func (l *leader) scaleLimits() coordinator.ScaleLimits {
	m := l.m
	lim := coordinator.ScaleLimits{MaxInstances: m.cfg.MaxInstances, MaxPerRole: m.cfg.MaxPerRole, PerRole: map[string]int{}}
	seen := map[string]bool{}
	for _, w := range m.members.workers() {
		if w.Status == MemberAlive {
			seen[w.Name] = true
			lim.Instances++
			lim.PerRole[coordinator.RoleOf(w.Load.Tags)]++
		}
	}
	for _, in := range l.store.Instances() {
		if !seen[in.Name] {
			lim.Instances++
			lim.PerRole[coordinator.RoleOf(in.Tags)]++
		}
	}
	return lim
}

// newInstance is the record of an instance about to be asked of the
// cloud, named after its role.
func (m *Manager) newInstance(t coordinator.InstanceType, tags []string, now time.Time) *InstanceRecord {
	role := cmp.Or(coordinator.RoleOf(tags), "any")
	return &InstanceRecord{Name: "w-" + role + "-" + randHex(3), Type: t.Name, Memory: t.Memory, Tags: tags,
		Provider: m.cfg.Provider.Name(), State: InstanceRequested, RequestedAt: now.UTC()}
}

// recordInstance journals a new instance record before the cloud is
// called for it.
func (l *leader) recordInstance(ctx context.Context, in *InstanceRecord) error {
	return l.store.Update(ctx, func(tx *Tx) error {
		if tx.Instance(in.Name) != nil {
			return ErrExists
		}
		tx.PutInstance(in)
		return nil
	})
}

// pendingChange is what placePending decided for one pending container.
type pendingChange struct {
	state                 State
	node, reason, waiting string
	failed                bool
}

// placePending places every pending container together on the current
// workers and on the instances already booting; for what still does not
// fit it asks the cloud, once per need, for instances sized to hold the
// pending requests of each role together.
func (l *leader) placePending(ctx context.Context) {
	m := l.m
	l.placeMu.Lock()
	pend := l.store.Pending()
	if len(pend) == 0 {
		l.placeMu.Unlock()
		return
	}
	reqs := make([]coordinator.Request, len(pend))
	for i, c := range pend {
		reqs[i] = c.Request()
	}
	snap := l.snapshot()
	booting := l.withBooting(snap)
	placeStart := time.Now()
	ds := coordinator.PlaceAll(snap, reqs, m.cfg.Placement)
	m.metrics.placed("pending", time.Since(placeStart))

	changes := map[string]pendingChange{}
	var unplaced []coordinator.Request
	unplacedReason := map[string]string{}
	for i, d := range ds {
		c := pend[i]
		switch in := booting[d.Worker]; {
		case d.Placed() && in == nil:
			changes[c.Name] = pendingChange{state: StateStarting, node: d.Worker, reason: d.Reason}
		case d.Placed():
			changes[c.Name] = pendingChange{state: StatePending, reason: waitReason(in), waiting: in.Name}
		default:
			unplacedReason[c.Name] = d.Reason
			if why := l.canScaleFor(d.Request); why != "" {
				changes[c.Name] = pendingChange{state: StatePending, reason: d.Reason + "; " + why}
				continue
			}
			unplaced = append(unplaced, d.Request)
		}
	}
	var create []*InstanceRecord
	if len(unplaced) > 0 {
		plan := coordinator.PlanScaleOut(unplaced, m.coordTypes(), m.cfg.Placement, l.scaleLimits())
		for _, d := range plan.Impossible {
			changes[d.Request.Name] = pendingChange{state: StateFailed, reason: d.Reason, failed: true}
		}
		for _, d := range plan.Limited {
			changes[d.Request.Name] = pendingChange{state: StatePending, reason: unplacedReason[d.Request.Name] + "; " + d.Reason}
		}
		for _, r := range plan.Reasons {
			m.log.Info("scale-out", "plan", r)
		}
		now := time.Now().UTC()
		for _, ni := range plan.Instances {
			in := m.newInstance(ni.Type, ni.Tags, now)
			// The intent is recorded before the cloud is called, together
			// with the requests that wait for it.
			create = append(create, in)
			m.metrics.scaleOutInstance("requested")
			for _, n := range ni.Requests {
				changes[n] = pendingChange{state: StatePending, reason: waitReason(in), waiting: in.Name}
			}
		}
	}
	now := time.Now().UTC()
	var started, failed, waiting []string
	err := l.store.Update(ctx, func(tx *Tx) error {
		started, failed, waiting = started[:0], failed[:0], waiting[:0]
		for _, in := range create {
			if tx.Instance(in.Name) != nil {
				return ErrExists
			}
			tx.PutInstance(in)
		}
		for _, p := range pend {
			ch, ok := changes[p.Name]
			if !ok || (ch.state == p.State && ch.reason == p.Reason && ch.node == p.Node && ch.waiting == p.WaitingFor) {
				continue
			}
			c := tx.Container(p.Name)
			if c == nil || c.State != StatePending {
				continue
			}
			c.State, c.Reason, c.WaitingFor = ch.state, ch.reason, ch.waiting
			if ch.state != StatePending {
				c.PendingSince = time.Time{}
			} else if c.PendingSince.IsZero() {
				c.PendingSince = c.CreatedAt
			}
			if ch.node != "" {
				c.Node = ch.node
				c.Placement = ch.reason
			}
			c.UpdatedAt = now
			tx.Put(c)
			switch {
			case ch.state == StateStarting:
				started = append(started, c.Name)
			case ch.failed:
				failed = append(failed, c.Name)
			case ch.reason != p.Reason:
				waiting = append(waiting, c.Name)
			}
		}
		return nil
	})
	l.placeMu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("cannot record the placement of pending containers; will retry", "err", err)
		}
		return
	}
	for _, n := range started {
		c, _ := l.store.Container(n)
		m.metrics.waitedForPlacement(time.Since(pendingSince(pendingOf(pend, n))))
		m.event(EventPlaced, n, "%s", c.Placement)
		l.spawn(func(ctx context.Context) { l.start(ctx, n) })
	}
	for _, n := range failed {
		m.log.Warn("cannot ever place", "container", n, "reason", changes[n].reason)
		m.event(EventFailed, n, "%s", changes[n].reason)
	}
	for _, n := range waiting {
		m.event(EventPending, n, "%s", changes[n].reason)
	}
	for _, in := range create {
		l.spawn(func(ctx context.Context) { l.createInstance(ctx, in.Name) })
	}
}

func pendingOf(cs []*Container, name string) *Container {
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	return &Container{}
}

// createInstance asks the cloud for one instance recorded as requested.
func (l *leader) createInstance(ctx context.Context, name string) {
	m := l.m
	if !l.claim("instance:" + name) {
		return
	}
	defer l.release("instance:" + name)
	in, ok := l.store.Instance(name)
	if !ok || in.State != InstanceRequested || in.ID != "" {
		return
	}
	t, _ := cloudapi.FindType(m.cfg.InstanceTypes, in.Type)
	spec := cloudapi.Spec{Cluster: m.cfg.Cluster, Name: in.Name, Type: t, Tags: in.Tags}
	if m.cfg.Bootstrap != nil {
		ud, err := l.userData(ctx, in, t.Memory)
		if err != nil {
			m.metrics.scaleOutInstance("create_failed")
			l.instanceFailed(ctx, name, fmt.Errorf("render user data: %w", err))
			return
		}
		spec.UserData = ud
	}
	if !l.acting() {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	m.log.Info("asking the cloud for an instance", "instance", in.Name, "type", in.Type, "tags", in.Tags, "provider", in.Provider)
	m.event(EventScaleOut, in.Name, "asked %s for one %s instance (%s, %s)", in.Provider, in.Type, tagsText(in.Tags), bytesize.Format(in.Memory))
	got, err := m.cfg.Provider.Create(cctx, spec)
	if err != nil {
		m.metrics.scaleOutInstance("create_failed")
		l.instanceFailed(ctx, name, err)
		return
	}
	err = l.store.Update(ctx, func(tx *Tx) error {
		cur := tx.Instance(name)
		if cur == nil {
			return ErrNotFound
		}
		cur.ID, cur.CreatedAt = got.ID, time.Now().UTC()
		tx.PutInstance(cur)
		return nil
	})
	if err != nil {
		m.log.Warn("cannot record instance id; the sweep finds it by name", "instance", in.Name, "err", err)
	}
	m.log.Info("instance created; waiting for its worker to join", "instance", in.Name, "id", got.ID)
}

// instanceFailed forgets an instance the cloud would not create (or whose
// worker did not join) and puts its containers back for another plan, or
// fails them after MaxScaleAttempts.
func (l *leader) instanceFailed(ctx context.Context, name string, cause error) {
	m := l.m
	m.log.Warn("instance failed", "instance", name, "err", cause)
	m.event(EventInstanceErr, name, "%v", cause)
	in, ok := l.store.Instance(name)
	if !ok {
		return
	}
	if in.ID != "" {
		if terr := m.cfg.Provider.Terminate(ctx, in.ID); terr != nil && !errors.Is(terr, cloudapi.ErrNotFound) {
			m.log.Warn("terminate failed; the sweep will retry", "instance", name, "err", terr)
		}
	}
	var waiting []string
	for _, c := range l.store.Pending() {
		if c.WaitingFor == name {
			waiting = append(waiting, c.Name)
		}
	}
	now := time.Now().UTC()
	err := l.store.Update(ctx, func(tx *Tx) error {
		tx.DeleteInstance(name)
		for _, n := range waiting {
			c := tx.Container(n)
			if c == nil || c.State != StatePending || c.WaitingFor != name {
				continue
			}
			c.ScaleAttempts++
			c.WaitingFor = ""
			if c.ScaleAttempts >= MaxScaleAttempts {
				c.State = StateFailed
				c.Reason = fmt.Sprintf("gave up after %d instances for %s failed; last: %v", c.ScaleAttempts, tagsText(c.Tags), cause)
			} else {
				c.Reason = fmt.Sprintf("instance %s failed (%v); asking again", name, cause)
			}
			c.UpdatedAt = now
			tx.Put(c)
		}
		return nil
	})
	if err != nil {
		m.log.Warn("cannot record the failed instance; will retry", "instance", name, "err", err)
	}
	l.kick()
}

// reconcileInstances marks instances whose worker joined, terminates those
// that did not join in time, and sweeps instances of this cluster that
// nobody knows about.
func (l *leader) reconcileInstances(ctx context.Context) {
	m := l.m
	if m.cfg.Provider == nil {
		return
	}
	now := time.Now().UTC()
	// Workers that joined without being asked for (those `micado up`
	// started, or ones an operator added) become known instances too, so
	// the sweep never mistakes one that is briefly down for a stray.
	var joinedUnasked []*InstanceRecord
	for _, w := range m.members.workers() {
		if _, ok := l.store.Instance(w.Name); w.Status == MemberAlive && !ok {
			joinedUnasked = append(joinedUnasked, &InstanceRecord{Name: w.Name, Memory: w.Load.Capacity, Tags: w.Load.Tags,
				Provider: "joined", State: InstanceJoined, RequestedAt: now, JoinedAt: now})
		}
	}
	var joined []*InstanceRecord
	var resume []*InstanceRecord
	for _, in := range l.store.Instances() {
		alive := m.members.alive(in.Name)
		if alive {
			l.markPresent(in.Name)
		}
		switch {
		case in.State == InstanceTerminating:
			if !l.busyWith("instance:" + in.Name) {
				name := in.Name
				l.spawn(func(ctx context.Context) { l.finishTermination(ctx, name) })
			}
		case alive && in.State != InstanceJoined:
			joined = append(joined, in)
		case in.State == InstanceRequested && now.Sub(in.RequestedAt) > m.cfg.JoinTimeout:
			m.metrics.scaleOutInstance("join_timeout")
			l.instanceFailed(ctx, in.Name, fmt.Errorf("its worker did not join within %s", m.cfg.JoinTimeout))
		case in.State == InstanceRequested && in.ID == "" && in.Provider == m.cfg.Provider.Name() && !l.busyWith("instance:"+in.Name):
			// Recorded, but the create call's answer never was: the
			// leader changed around the call. Find it or ask again.
			resume = append(resume, in)
		case in.State == InstanceJoined && !alive && in.Provider == m.cfg.Provider.Name():
			if away := l.absentFor(in.Name, now); away > m.cfg.LostTimeout && !l.busyWith("instance:"+in.Name) {
				m.log.Warn("terminating an instance whose worker is lost", "instance", in.Name, "away", away.Round(time.Second))
				m.event(EventTerminated, in.Name, "its worker has been gone for %s (--lost-timeout %s)", away.Round(time.Second), m.cfg.LostTimeout)
				name := in.Name
				l.spawn(func(ctx context.Context) { l.finishTermination(ctx, name) })
			}
		}
	}
	if len(joinedUnasked)+len(joined) > 0 {
		err := l.store.Update(ctx, func(tx *Tx) error {
			for _, in := range joinedUnasked {
				if tx.Instance(in.Name) == nil {
					tx.PutInstance(in)
				}
			}
			for _, in := range joined {
				if cur := tx.Instance(in.Name); cur != nil && cur.State != InstanceJoined {
					cur.State, cur.JoinedAt = InstanceJoined, now
					tx.PutInstance(cur)
				}
			}
			return nil
		})
		if err == nil {
			for _, in := range joined {
				m.log.Info("instance joined", "instance", in.Name, "after", now.Sub(in.RequestedAt).Round(time.Millisecond))
				m.metrics.instanceJoined(now.Sub(in.RequestedAt))
				m.event(EventJoined, in.Name, "its worker joined %s after it was asked for", now.Sub(in.RequestedAt).Round(time.Millisecond))
			}
		}
	}
	sweep := time.Since(m.started) >= sweepGrace && time.Since(l.lastSweep) >= sweepInterval
	if !sweep && len(resume) == 0 {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cloud, err := m.cfg.Provider.List(lctx, m.cfg.Cluster)
	if err != nil {
		m.log.Warn("cannot list the cloud's instances", "err", err)
		return
	}
	for _, in := range resume {
		found := false
		for _, ci := range cloud {
			if ci.Name == in.Name && ci.State != cloudapi.StateTerminated {
				found = true
				m.log.Info("found the instance an interrupted create call made", "instance", in.Name, "id", ci.ID)
				_ = l.store.Update(ctx, func(tx *Tx) error {
					if cur := tx.Instance(in.Name); cur != nil {
						cur.ID, cur.CreatedAt = ci.ID, ci.CreatedAt
						tx.PutInstance(cur)
					}
					return nil
				})
			}
		}
		if !found {
			m.log.Info("asking the cloud again for an instance whose create call was interrupted", "instance", in.Name)
			name := in.Name
			l.spawn(func(ctx context.Context) { l.createInstance(ctx, name) })
		}
	}
	if !sweep {
		return
	}
	l.lastSweep = time.Now()
	for _, ci := range cloud {
		if _, known := l.store.Instance(ci.Name); known || m.members.alive(ci.Name) || ci.State == cloudapi.StateTerminated {
			continue
		}
		if !ci.CreatedAt.IsZero() && now.Sub(ci.CreatedAt) < sweepGrace {
			continue
		}
		if !l.acting() {
			return
		}
		m.log.Warn("terminating an instance of this cluster that nobody knows", "instance", ci.Name, "id", ci.ID)
		m.event(EventTerminated, ci.Name, "instance %s of this cluster is in no record and its worker is not alive", ci.ID)
		if err := m.cfg.Provider.Terminate(lctx, ci.ID); err != nil && !errors.Is(err, cloudapi.ErrNotFound) {
			m.log.Warn("terminate failed", "instance", ci.Name, "err", err)
		}
	}
}

// joinAddr is the gossip address new workers join.
func (m *Manager) joinAddr() string {
	if m.cfg.JoinAddr != "" {
		return m.cfg.JoinAddr
	}
	if m.deps.Gossip != nil {
		return m.deps.Gossip.Addr()
	}
	return ""
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// absentFor returns how long the worker of instance name has been away,
// counting from the first reconciliation that missed it.
func (l *leader) absentFor(name string, now time.Time) time.Duration {
	l.busyMu.Lock()
	defer l.busyMu.Unlock()
	since, ok := l.absent[name]
	if !ok {
		l.absent[name] = now
		return 0
	}
	return now.Sub(since)
}

func (l *leader) markPresent(name string) {
	l.busyMu.Lock()
	delete(l.absent, name)
	l.busyMu.Unlock()
}
