package manager

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/coordinator"
)

// Instance states, as stored in Consul KV.
const (
	InstanceRequested = "requested" // asked of the cloud; its worker has not joined
	InstanceJoined    = "joined"    // its worker agent joined the cluster
	// InstanceTerminating: scale-in emptied it and is terminating it. A
	// manager that restarts finds the mark and finishes the job.
	InstanceTerminating = "terminating"
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
	// DefaultLostTimeout is how long the worker of an instance that had
	// joined may stay away (dead, or never seen since the manager started)
	// before the instance is terminated: its containers were placed
	// elsewhere long before, and a lost instance still costs money.
	DefaultLostTimeout = 5 * time.Minute
)

// Instance is a cloud instance the manager asked for. The record is
// written to Consul KV before the cloud is called, so a manager that
// crashes in between finds, and cleans up, what it asked for.
type Instance struct {
	Name        string    `json:"name"`
	Type        string    `json:"type"`
	Memory      int64     `json:"memory"`
	Tags        []string  `json:"tags"`
	Provider    string    `json:"provider"`
	ID          string    `json:"id,omitempty"`
	State       string    `json:"state"`
	Reason      string    `json:"reason,omitempty"`
	RequestedAt time.Time `json:"requested_at"`
	CreatedAt   time.Time `json:"created_at,omitempty"` // when the cloud accepted the create call
	JoinedAt    time.Time `json:"joined_at,omitempty"`

	index uint64
}

func (s *store) instanceKey(name string) string { return s.prefix + "instances/" + name }

func (s *store) instances(ctx context.Context) ([]*Instance, error) {
	pairs, _, err := s.kv.List(s.prefix+"instances/", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read instances from Consul KV: %w", err)
	}
	out := make([]*Instance, 0, len(pairs))
	for _, p := range pairs {
		var in Instance
		if err := json.Unmarshal(p.Value, &in); err != nil {
			return nil, fmt.Errorf("instance record %s is damaged: %w", p.Key, err)
		}
		in.index = p.ModifyIndex
		out = append(out, &in)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].Name, out[j].Name) })
	return out, nil
}

func (s *store) putInstance(ctx context.Context, in *Instance) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	_, err = s.kv.Put(&api.KVPair{Key: s.instanceKey(in.Name), Value: b}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("write instance %s to Consul KV: %w", in.Name, err)
	}
	return nil
}

func (s *store) deleteInstance(ctx context.Context, name string) error {
	_, err := s.kv.Delete(s.instanceKey(name), (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// scaling reports whether the manager can ask the cloud for workers.
func (m *Manager) scaling() bool { return m.cfg.Provider != nil && len(m.cfg.InstanceTypes) > 0 }

func (m *Manager) coordTypes() []coordinator.InstanceType {
	out := make([]coordinator.InstanceType, len(m.cfg.InstanceTypes))
	for i, t := range m.cfg.InstanceTypes {
		out[i] = coordinator.InstanceType{Name: t.Name, Memory: t.Memory}
	}
	return out
}

// roleAllowed reports whether scale-out may create workers with tags.
func (m *Manager) roleAllowed(tags []string) bool {
	if len(m.cfg.ScaleRoles) == 0 {
		return true
	}
	return contains(m.cfg.ScaleRoles, coordinator.RoleOf(tags))
}

// canScaleFor says why scale-out cannot help r, or "" if it can.
func (m *Manager) canScaleFor(r coordinator.Request) string {
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

func (m *Manager) alive(name string) bool {
	w, ok := m.members.get(name)
	return ok && w.Status == "alive"
}

// withBooting adds the instances on their way as workers that are
// booting, so requests that fit on them wait instead of asking for more.
func (m *Manager) withBooting(s *coordinator.Snapshot, insts []*Instance) map[string]*Instance {
	booting := map[string]*Instance{}
	for _, in := range insts {
		if in.State != InstanceRequested || m.alive(in.Name) {
			continue
		}
		booting[in.Name] = in
		s.Workers = append(s.Workers, coordinator.Worker{Name: in.Name, Tags: in.Tags, Capacity: in.Memory, Booting: true})
	}
	return booting
}

func waitReason(in *Instance) string {
	return fmt.Sprintf("waiting for instance %s (%s, %s) to join", in.Name, tagsText(in.Tags), coordinator.FormatBytes(in.Memory))
}

func tagsText(tags []string) string {
	if len(tags) == 0 {
		return "no tags"
	}
	s := tags[0]
	for _, t := range tags[1:] {
		s += "," + t
	}
	return s
}

// placePending places every pending container together on the current
// workers and on the instances already booting; for what still does not
// fit it asks the cloud, once per need, for instances sized to hold the
// pending requests of each role together.
func (m *Manager) placePending(ctx context.Context) {
	m.placeMu.Lock()
	recs, err := m.store.list(ctx)
	if err != nil {
		m.placeMu.Unlock()
		return
	}
	insts, err := m.store.instances(ctx)
	if err != nil {
		m.placeMu.Unlock()
		return
	}
	var pend []*Container
	var reqs []coordinator.Request
	for _, c := range recs {
		if c.State == StatePending {
			pend = append(pend, c)
			reqs = append(reqs, c.Request())
		}
	}
	if len(pend) == 0 {
		m.placeMu.Unlock()
		return
	}
	snap := m.snapshot(recs)
	booting := m.withBooting(snap, insts)
	placeStart := time.Now()
	ds := coordinator.PlaceAll(snap, reqs, m.cfg.Placement)
	m.metrics.placed("pending", time.Since(placeStart))

	type change struct {
		state, node, reason, waiting string
		failed                       bool
	}
	changes := map[string]change{}
	var unplaced []coordinator.Request
	unplacedReason := map[string]string{}
	for i, d := range ds {
		c := pend[i]
		switch in := booting[d.Worker]; {
		case d.Placed() && in == nil:
			changes[c.Name] = change{state: StateStarting, node: d.Worker, reason: d.Reason}
		case d.Placed():
			changes[c.Name] = change{state: StatePending, reason: waitReason(in), waiting: in.Name}
		default:
			unplacedReason[c.Name] = d.Reason
			if why := m.canScaleFor(d.Request); why != "" {
				changes[c.Name] = change{state: StatePending, reason: d.Reason + "; " + why}
				continue
			}
			unplaced = append(unplaced, d.Request)
		}
	}
	var create []*Instance
	if len(unplaced) > 0 {
		lim := coordinator.ScaleLimits{MaxInstances: m.cfg.MaxInstances, MaxPerRole: m.cfg.MaxPerRole, PerRole: map[string]int{}}
		seen := map[string]bool{}
		for _, w := range m.members.workers() {
			if w.Status == "alive" {
				seen[w.Name] = true
				lim.Instances++
				lim.PerRole[coordinator.RoleOf(w.Load.Tags)]++
			}
		}
		for _, in := range insts {
			if !seen[in.Name] {
				lim.Instances++
				lim.PerRole[coordinator.RoleOf(in.Tags)]++
			}
		}
		plan := coordinator.PlanScaleOut(unplaced, m.coordTypes(), m.cfg.Placement, lim)
		for _, d := range plan.Impossible {
			changes[d.Request.Name] = change{state: StateFailed, reason: d.Reason, failed: true}
		}
		for _, d := range plan.Limited {
			changes[d.Request.Name] = change{state: StatePending, reason: unplacedReason[d.Request.Name] + "; " + d.Reason}
		}
		for _, r := range plan.Reasons {
			m.log.Info("scale-out", "plan", r)
		}
		now := time.Now().UTC()
		for _, ni := range plan.Instances {
			role := coordinator.RoleOf(ni.Tags)
			if role == "" {
				role = "any"
			}
			in := &Instance{Name: "w-" + role + "-" + randHex(3), Type: ni.Type.Name, Memory: ni.Type.Memory, Tags: ni.Tags,
				Provider: m.cfg.Provider.Name(), State: InstanceRequested, RequestedAt: now}
			// The intent is recorded before the cloud is called.
			if err := m.store.putInstance(ctx, in); err != nil {
				m.log.Warn("cannot record instance request", "err", err)
				continue
			}
			create = append(create, in)
			m.metrics.scaleOutInstance("requested")
			for _, n := range ni.Requests {
				changes[n] = change{state: StatePending, reason: waitReason(in), waiting: in.Name}
			}
		}
	}
	var started []string
	for _, c := range pend {
		ch, ok := changes[c.Name]
		if !ok {
			continue
		}
		if ch.state == c.State && ch.reason == c.Reason && ch.node == c.Node && ch.waiting == c.WaitingFor {
			continue
		}
		_, err := m.store.update(ctx, c.Name, func(c *Container) error {
			if c.State != StatePending {
				return ErrConflict
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
			c.UpdatedAt = time.Now().UTC()
			return nil
		})
		if err == nil && ch.state == StateStarting {
			m.metrics.waitedForPlacement(time.Since(pendingSince(c)))
			started = append(started, c.Name)
			m.event(EventPlaced, c.Name, "%s", ch.reason)
		}
		if err == nil && ch.failed {
			m.log.Warn("cannot ever place", "container", c.Name, "reason", ch.reason)
			m.event(EventFailed, c.Name, "%s", ch.reason)
		}
		if err == nil && ch.state == StatePending && ch.reason != c.Reason {
			m.event(EventPending, c.Name, "%s", ch.reason)
		}
	}
	m.placeMu.Unlock()
	for _, in := range create {
		go m.createInstance(context.WithoutCancel(ctx), in)
	}
	for _, n := range started {
		go m.start(context.WithoutCancel(ctx), n)
	}
}

// createInstance asks the cloud for one instance recorded as requested.
func (m *Manager) createInstance(ctx context.Context, in *Instance) {
	if !m.claim("instance:" + in.Name) {
		return
	}
	defer m.release("instance:" + in.Name)
	t, _ := cloudapi.FindType(m.cfg.InstanceTypes, in.Type)
	spec := cloudapi.Spec{Cluster: m.cfg.Cluster, Name: in.Name, Type: t, Tags: in.Tags}
	if m.cfg.UserData {
		ud, err := cloudapi.RenderUserData(cloudapi.UserDataParams{
			Cluster: m.cfg.Cluster, Name: in.Name, Join: m.joinAddr(), Tags: in.Tags, Memory: t.Memory,
			ClusterKey: base64.StdEncoding.EncodeToString(m.cfg.ClusterKey),
		})
		if err != nil {
			m.metrics.scaleOutInstance("create_failed")
			m.instanceFailed(ctx, in, fmt.Errorf("render user data: %w", err))
			return
		}
		spec.UserData = ud
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	m.log.Info("asking the cloud for an instance", "instance", in.Name, "type", in.Type, "tags", in.Tags, "provider", in.Provider)
	m.event(EventScaleOut, in.Name, "asked %s for one %s instance (%s, %s)", in.Provider, in.Type, tagsText(in.Tags), coordinator.FormatBytes(in.Memory))
	if m.onCreate != nil {
		m.onCreate(in.Name)
	}
	got, err := m.cfg.Provider.Create(cctx, spec)
	if err != nil {
		m.metrics.scaleOutInstance("create_failed")
		m.instanceFailed(ctx, in, err)
		return
	}
	in.ID = got.ID
	in.CreatedAt = time.Now().UTC()
	if err := m.store.putInstance(ctx, in); err != nil {
		m.log.Warn("cannot record instance id", "instance", in.Name, "err", err)
	}
	m.log.Info("instance created; waiting for its worker to join", "instance", in.Name, "id", got.ID)
}

// instanceFailed forgets an instance the cloud would not create and puts
// its containers back for another plan, or fails them after
// MaxScaleAttempts.
func (m *Manager) instanceFailed(ctx context.Context, in *Instance, err error) {
	m.log.Warn("instance failed", "instance", in.Name, "err", err)
	m.event(EventInstanceErr, in.Name, "%v", err)
	if in.ID != "" {
		if terr := m.cfg.Provider.Terminate(ctx, in.ID); terr != nil && !errors.Is(terr, cloudapi.ErrNotFound) {
			m.log.Warn("terminate failed; the sweep will retry", "instance", in.Name, "err", terr)
		}
	}
	_ = m.store.deleteInstance(ctx, in.Name)
	recs, lerr := m.store.list(ctx)
	if lerr != nil {
		return
	}
	for _, c := range recs {
		if c.State != StatePending || c.WaitingFor != in.Name {
			continue
		}
		_, _ = m.store.update(ctx, c.Name, func(c *Container) error {
			if c.State != StatePending || c.WaitingFor != in.Name {
				return ErrConflict
			}
			c.ScaleAttempts++
			c.WaitingFor = ""
			if c.ScaleAttempts >= MaxScaleAttempts {
				c.State = StateFailed
				c.Reason = fmt.Sprintf("gave up after %d instances for %s failed; last: %v", c.ScaleAttempts, tagsText(c.Tags), err)
			} else {
				c.Reason = fmt.Sprintf("instance %s failed (%v); asking again", in.Name, err)
			}
			c.UpdatedAt = time.Now().UTC()
			return nil
		})
	}
	m.kick()
}

// reconcileInstances marks instances whose worker joined, terminates those
// that did not join in time, and sweeps instances of this cluster that
// nobody knows about.
func (m *Manager) reconcileInstances(ctx context.Context) {
	if m.cfg.Provider == nil {
		return
	}
	insts, err := m.store.instances(ctx)
	if err != nil {
		return
	}
	known := map[string]*Instance{}
	now := time.Now().UTC()
	// Workers that joined without being asked for (those `micado up`
	// started, or ones an operator added) become known instances too, so
	// the sweep never mistakes one that is briefly down for a stray.
	recorded := map[string]bool{}
	for _, in := range insts {
		recorded[in.Name] = true
	}
	for _, w := range m.members.workers() {
		if w.Status == "alive" && !recorded[w.Name] {
			in := &Instance{Name: w.Name, Memory: w.Load.Capacity, Tags: w.Load.Tags, Provider: "joined",
				State: InstanceJoined, RequestedAt: now, JoinedAt: now}
			if err := m.store.putInstance(ctx, in); err == nil {
				insts = append(insts, in)
			}
		}
	}
	var resume []*Instance
	for _, in := range insts {
		known[in.Name] = in
		alive := m.alive(in.Name)
		if alive {
			m.markPresent(in.Name)
		}
		switch {
		case in.State == InstanceTerminating:
			if !m.busyWith("instance:" + in.Name) {
				go m.finishTermination(context.WithoutCancel(ctx), in.Name)
			}
		case alive && in.State != InstanceJoined:
			in.State, in.JoinedAt = InstanceJoined, now
			_ = m.store.putInstance(ctx, in)
			m.log.Info("instance joined", "instance", in.Name, "after", now.Sub(in.RequestedAt).Round(time.Millisecond))
			m.metrics.instanceJoined(now.Sub(in.RequestedAt))
			m.event(EventJoined, in.Name, "its worker joined %s after it was asked for", now.Sub(in.RequestedAt).Round(time.Millisecond))
		case in.State == InstanceRequested && now.Sub(in.RequestedAt) > m.cfg.JoinTimeout:
			m.metrics.scaleOutInstance("join_timeout")
			m.instanceFailed(ctx, in, fmt.Errorf("its worker did not join within %s", m.cfg.JoinTimeout))
		case in.State == InstanceRequested && in.ID == "" && in.Provider == m.cfg.Provider.Name() && !m.busyWith("instance:"+in.Name):
			// Recorded, but the create call's answer never was: the
			// manager crashed around the call. Find it or ask again.
			resume = append(resume, in)
		case in.State == InstanceJoined && !alive && in.Provider == m.cfg.Provider.Name():
			if away := m.absentFor(in.Name, now); away > m.cfg.LostTimeout && !m.busyWith("instance:"+in.Name) {
				m.log.Warn("terminating an instance whose worker is lost", "instance", in.Name, "away", away.Round(time.Second))
				m.event(EventTerminated, in.Name, "its worker has been gone for %s (--lost-timeout %s)", away.Round(time.Second), m.cfg.LostTimeout)
				go m.finishTermination(context.WithoutCancel(ctx), in.Name)
			}
		}
	}
	sweep := time.Since(m.started) >= sweepGrace
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
				in.ID, in.CreatedAt = ci.ID, ci.CreatedAt
				m.log.Info("found the instance an interrupted create call made", "instance", in.Name, "id", ci.ID)
				_ = m.store.putInstance(ctx, in)
			}
		}
		if !found {
			m.log.Info("asking the cloud again for an instance whose create call was interrupted", "instance", in.Name)
			go m.createInstance(context.WithoutCancel(ctx), in)
		}
	}
	if !sweep {
		return
	}
	for _, ci := range cloud {
		if known[ci.Name] != nil || m.alive(ci.Name) || ci.State == cloudapi.StateTerminated {
			continue
		}
		if !ci.CreatedAt.IsZero() && now.Sub(ci.CreatedAt) < sweepGrace {
			continue
		}
		m.log.Warn("terminating an instance of this cluster that nobody knows", "instance", ci.Name, "id", ci.ID)
		m.event(EventTerminated, ci.Name, "instance %s of this cluster is in no record and its worker is not alive", ci.ID)
		if err := m.cfg.Provider.Terminate(lctx, ci.ID); err != nil && !errors.Is(err, cloudapi.ErrNotFound) {
			m.log.Warn("terminate failed", "instance", ci.Name, "err", err)
		}
	}
}

func (m *Manager) joinAddr() string {
	if m.cfg.JoinAddr != "" {
		return m.cfg.JoinAddr
	}
	return net.JoinHostPort(m.ml.LocalNode().Addr.String(), strconv.Itoa(int(m.ml.LocalNode().Port)))
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// busyWith reports whether an operation on key is in flight.
func (m *Manager) busyWith(key string) bool {
	m.busyMu.Lock()
	defer m.busyMu.Unlock()
	return m.busy[key]
}

// absentFor returns how long the worker of instance name has been away,
// counting from the first reconciliation that missed it.
func (m *Manager) absentFor(name string, now time.Time) time.Duration {
	m.busyMu.Lock()
	defer m.busyMu.Unlock()
	since, ok := m.absent[name]
	if !ok {
		m.absent[name] = now
		return 0
	}
	return now.Sub(since)
}

func (m *Manager) markPresent(name string) {
	m.busyMu.Lock()
	delete(m.absent, name)
	m.busyMu.Unlock()
}
