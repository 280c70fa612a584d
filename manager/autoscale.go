package manager

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/internal/wire"
)

// Autoscaling: the paper's C5. Every AutoscaleInterval the leader reads
// the measured use of the containers of every service that has a scaling
// policy, asks coordinator.DecideScale for the replicas each should have,
// and adds or stops replicas through the same paths as a launch or a
// stop; it also evaluates the node usage alerts.
//
// Measurements come over the worker agent API (GET /v1/stats), pulled by
// the leader from the workers that run containers of scaled services
// only. memberlist metadata is capped at 512 bytes, far too small for
// per-container figures; broadcasting them as gossip messages would send
// every worker's detail to every member; a direct pull costs one small
// request per worker hosting a scaled service per interval, over the
// agent API that is already authenticated, and nothing for the rest.

const (
	// statsConcurrency bounds the agent stats calls in flight.
	statsConcurrency = 32
	// statsTimeout bounds one agent stats call: a worker that does not
	// answer within it counts as missing for this round.
	statsTimeout = 3 * time.Second
	// samplesKept is how many samples are kept per container: two
	// minutes at the workers' 2 s interval, more than any metric window.
	samplesKept = 64
	// seriesKept is how many points of each scaled service's history are
	// kept for the dashboard: one hour at the default 5 s interval.
	seriesKept = 720
)

// EventAutoscale is a scaling decision that changed a service's replicas
// (or would have, with autoscaling off); EventNodeAlert a role whose
// workers stayed above a usage limit.
const (
	EventAutoscale = "autoscale"
	EventNodeAlert = "node-alert"
)

// PolicyRecord is a service's scaling policy in the desired state
// (micado/<cluster>/scaling/<service>), written before anything acts on
// it: from a definition file's scaling field at deploy, from `micado
// launch --min/--max/…`, or from `micado autoscale SERVICE --min …`.
type PolicyRecord struct {
	Service   string              `json:"service"`
	App       string              `json:"app,omitempty"`
	Scaling   definitions.Scaling `json:"scaling"`
	Off       bool                `json:"off,omitempty"` // `micado autoscale SERVICE --off`
	UpdatedAt time.Time           `json:"updated_at"`

	index uint64 // the journal index of its last change
}

// MetricView is one metric of a policy as the autoscaler last read it.
type MetricView struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Target   float64 `json:"target"`
	Reported int     `json:"reported,omitempty"`
	Missing  bool    `json:"missing,omitempty"`
	Error    string  `json:"error,omitempty"`
}

// ScaleDecisionView is the last decision of a policy.
type ScaleDecisionView struct {
	At       time.Time `json:"at"`
	Current  int       `json:"current"`
	Desired  int       `json:"desired"`
	Proposed int       `json:"proposed"`
	Metric   string    `json:"metric,omitempty"`
	Clamp    string    `json:"clamp,omitempty"`
	Reason   string    `json:"reason"`
	Applied  bool      `json:"applied"`
}

// SeriesPoint is one point of a scaled service's history.
type SeriesPoint struct {
	T        int64   `json:"t"` // unix seconds
	Replicas int     `json:"replicas"`
	Desired  int     `json:"desired"`
	Value    float64 `json:"value"`
	Target   float64 `json:"target"`
	Missing  bool    `json:"missing,omitempty"`
}

// PolicyView answers GET /v1/autoscale: a policy, what it measured and
// what it decided last.
type PolicyView struct {
	Service  string              `json:"service"`
	App      string              `json:"app,omitempty"`
	Scaling  definitions.Scaling `json:"scaling"`
	Off      bool                `json:"off,omitempty"`
	Replicas int                 `json:"replicas"` // containers the service has now
	Ready    int                 `json:"ready"`    // running and passing
	Metrics  []MetricView        `json:"metrics,omitempty"`
	Windows  []string            `json:"windows,omitempty"` // scheduled windows active now
	Last     *ScaleDecisionView  `json:"last,omitempty"`
	// LastChange is the last decision that changed the replicas.
	LastChange *ScaleDecisionView `json:"last_change,omitempty"`
	Series     []SeriesPoint      `json:"series,omitempty"`
}

// RolePoint is one point of a role's worker count.
type RolePoint struct {
	T       int64 `json:"t"`
	Workers int   `json:"workers"`
	Booting int   `json:"booting,omitempty"`
}

// AutoscaleView answers GET /v1/autoscale.
type AutoscaleView struct {
	Interval string                  `json:"interval"`
	Policies []PolicyView            `json:"policies"`
	Alerts   []coordinator.RoleAlert `json:"alerts,omitempty"`
	Limit    coordinator.UsageLimit  `json:"limit"`
	Roles    map[string][]RolePoint  `json:"roles,omitempty"`
}

// AutoscaleChange is the body of PUT /v1/autoscale/{service}: turn a
// policy on or off, or give a launched service a (new) policy.
type AutoscaleChange struct {
	Off     *bool                `json:"off,omitempty"`
	Scaling *definitions.Scaling `json:"scaling,omitempty"`
}

// ScaleRequest is the body of POST /v1/services/{service}/scale.
type ScaleRequest struct {
	Replicas int `json:"replicas"`
}

// svcScale is what the autoscaler keeps about one service during a term.
type svcScale struct {
	history    []coordinator.Recommendation
	metrics    []MetricView
	windows    []string
	last       *ScaleDecisionView
	lastChange *ScaleDecisionView
	series     []SeriesPoint
}

// instSamples are the samples of one container.
type instSamples struct {
	cpu, mem []coordinator.Sample
	seen     time.Time
}

// autoscaler is the leader's autoscaling state: samples, histories and
// alert timers live in memory only. A new leader starts them afresh, and
// seeds every history with the current replicas, so that it never scales
// down before a whole stabilization window of its own measurements.
type autoscaler struct {
	mu         sync.Mutex
	samples    map[string]*instSamples
	services   map[string]*svcScale
	alertSince map[string]time.Time
	alerts     []coordinator.RoleAlert
	alertOut   map[string]time.Time // role → when an alert last asked for an instance
	roles      map[string][]RolePoint
	started    time.Time
}

func newAutoscaler() *autoscaler {
	return &autoscaler{samples: map[string]*instSamples{}, services: map[string]*svcScale{},
		alertSince: map[string]time.Time{}, alertOut: map[string]time.Time{}, roles: map[string][]RolePoint{}, started: time.Now()}
}

// StatsReader is the optional capability of Agents to read a worker's
// measured container use (wire.Client has it).
type StatsReader interface {
	Stats(ctx context.Context, addr string) (wire.Stats, error)
}

func (t termAgents) Stats(ctx context.Context, addr string) (wire.Stats, error) {
	if s, ok := t.a.(StatsReader); ok {
		return s.Stats(ctx, addr)
	}
	return wire.Stats{}, errors.New("these agents cannot report container use")
}

// autoscaleLoop runs the autoscaler for the term.
func (l *leader) autoscaleLoop(ctx context.Context) {
	t := time.NewTicker(l.m.cfg.AutoscaleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.autoscaleRound(ctx, time.Now())
	}
}

// autoscaleRound measures, decides and acts once.
func (l *leader) autoscaleRound(ctx context.Context, now time.Time) {
	pols := l.store.Policies()
	if len(pols) > 0 {
		l.collectStats(ctx, pols, now)
	}
	for _, p := range pols {
		if ctx.Err() != nil {
			return
		}
		l.decideService(ctx, p, now)
	}
	l.pruneScaling(pols)
	l.evaluateAlerts(ctx, now)
}

// collectStats pulls the measured use of the containers of every scaled
// service from the workers that run them.
func (l *leader) collectStats(ctx context.Context, pols []*PolicyRecord, now time.Time) {
	nodes := map[string]bool{}
	for _, p := range pols {
		for _, c := range l.store.Service(p.Service) {
			if c.Node != "" && c.State == StateRunning {
				nodes[c.Node] = true
			}
		}
	}
	type result struct {
		st  wire.Stats
		err error
	}
	results := make(chan result, len(nodes))
	sem := make(chan struct{}, statsConcurrency)
	var wg sync.WaitGroup
	for n := range nodes {
		w, ok := l.m.members.get(n)
		if !ok || w.Status != MemberAlive || w.Load.API == "" {
			continue
		}
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, statsTimeout)
			defer cancel()
			sr, ok := l.agents.(StatsReader)
			if !ok {
				results <- result{err: errors.New("these agents cannot report container use")}
				return
			}
			st, err := sr.Stats(cctx, addr)
			results <- result{st, err}
		}(w.Load.API)
	}
	wg.Wait()
	close(results)
	a := l.scaler
	a.mu.Lock()
	defer a.mu.Unlock()
	for r := range results {
		if r.err != nil {
			continue
		}
		for _, cs := range r.st.Containers {
			c, ok := l.store.Container(cs.Instance)
			if !ok || c.Node != r.st.Node || cs.Generation != c.Generation {
				continue
			}
			s := a.samples[cs.Instance]
			if s == nil {
				s = &instSamples{}
				a.samples[cs.Instance] = s
			}
			s.seen = now
			at := cs.At
			if at.IsZero() {
				at = now
			}
			if n := len(s.cpu); cs.HasCPU && (n == 0 || s.cpu[n-1].At.Before(at)) {
				s.cpu = appendSample(s.cpu, coordinator.Sample{At: at, Value: cs.CPU})
			}
			if n := len(s.mem); c.Memory > 0 && (n == 0 || s.mem[n-1].At.Before(at)) {
				s.mem = appendSample(s.mem, coordinator.Sample{At: at, Value: float64(cs.Memory) / float64(c.Memory) * 100})
			}
		}
	}
	for name, s := range a.samples {
		if now.Sub(s.seen) > 2*time.Minute {
			delete(a.samples, name)
		}
	}
}

func appendSample(s []coordinator.Sample, x coordinator.Sample) []coordinator.Sample {
	if len(s) >= samplesKept {
		copy(s, s[1:])
		s = s[:len(s)-1]
	}
	return append(s, x)
}

// scaleMembers returns the containers that count as the service's
// replicas (all but the ones being stopped) and how many of them are
// running and passing.
func (l *leader) scaleMembers(service string) (members []*Container, ready int) {
	for _, c := range l.store.Service(service) {
		if c.State == StateStopping {
			continue
		}
		members = append(members, c)
		if c.State == StateRunning && l.health(c) == HealthPassing {
			ready++
		}
	}
	return members, ready
}

// policyOf turns a validated definitions.Scaling into the coordinator's
// policy.
func policyOf(s definitions.Scaling) coordinator.ScalePolicy {
	p := coordinator.ScalePolicy{Min: s.Min, Max: s.Max, Stabilization: s.StabilizationWindow()}
	if s.Stabilization != "" && p.Stabilization == 0 {
		// "0s" asks for no stabilization; the coordinator reads 0 as
		// "the default".
		p.Stabilization = time.Nanosecond
	}
	if s.CPU > 0 {
		p.Metrics = append(p.Metrics, coordinator.MetricTarget{Name: "cpu", Target: s.CPU})
	}
	if s.Memory > 0 {
		p.Metrics = append(p.Metrics, coordinator.MetricTarget{Name: "memory", Target: s.Memory})
	}
	if s.Query != "" {
		p.Metrics = append(p.Metrics, coordinator.MetricTarget{Name: "query", Target: s.PerReplica})
	}
	for _, w := range s.Schedule {
		sch, err := definitions.ParseCron(w.Cron)
		if err != nil {
			continue
		}
		p.Windows = append(p.Windows, coordinator.ScheduleWindow{Spec: w.Cron, Schedule: sch, Duration: w.WindowDuration(), Min: w.Min, Max: w.Max})
	}
	return p
}

// measure reads one service's metrics for its policy.
func (l *leader) measure(ctx context.Context, p *PolicyRecord, pol coordinator.ScalePolicy, members []*Container, now time.Time) ([]coordinator.MetricValue, []MetricView) {
	vals := make([]coordinator.MetricValue, 0, len(pol.Metrics))
	views := make([]MetricView, 0, len(pol.Metrics))
	a := l.scaler
	for _, mt := range pol.Metrics {
		v := coordinator.MetricValue{Name: mt.Name}
		view := MetricView{Name: mt.Name, Target: mt.Target}
		switch mt.Name {
		case "cpu", "memory":
			series := make([][]coordinator.Sample, 0, len(members))
			a.mu.Lock()
			for _, c := range members {
				s := a.samples[c.Name]
				if s == nil || c.State != StateRunning {
					continue
				}
				if mt.Name == "memory" {
					series = append(series, s.mem)
				} else {
					series = append(series, s.cpu)
				}
			}
			v = coordinator.ReplicaMean(mt.Name, series, now, coordinator.DefaultMetricWindow)
			a.mu.Unlock()
			if v.Missing {
				view.Error = "no replica has reported its use yet"
			}
		case "query":
			if l.m.prom == nil {
				v.Missing = true
				view.Error = "the manager has no --prometheus to run the query on"
				break
			}
			x, err := l.m.prom.Value(ctx, p.Scaling.Query)
			if err != nil {
				v.Missing = true
				view.Error = err.Error()
				break
			}
			v.Value, v.Reported = x, 1
		}
		view.Value, view.Reported, view.Missing = v.Value, v.Reported, v.Missing
		vals = append(vals, v)
		views = append(views, view)
	}
	return vals, views
}

// decideService decides one service's replicas and applies the decision.
func (l *leader) decideService(ctx context.Context, p *PolicyRecord, now time.Time) {
	members, ready := l.scaleMembers(p.Service)
	current := len(members)
	if current == 0 {
		// Nothing to scale from (its containers are all being stopped).
		return
	}
	pol := policyOf(p.Scaling)
	vals, views := l.measure(ctx, p, pol, members, now)
	a := l.scaler
	a.mu.Lock()
	st := a.services[p.Service]
	if st == nil {
		// A new term (or a new policy) begins with what runs now as its
		// only recommendation: no scale-down before a whole window.
		st = &svcScale{history: []coordinator.Recommendation{{At: now, Replicas: current, Current: current, Ready: ready}}}
		a.services[p.Service] = st
	}
	history := st.history
	a.mu.Unlock()
	d := coordinator.DecideScale(pol, coordinator.ScaleInput{Current: current, Ready: ready, Metrics: vals, History: history, Now: now})
	var windows []string
	for _, w := range coordinator.ActiveWindows(pol.Windows, now) {
		windows = append(windows, w.Spec)
	}
	view := &ScaleDecisionView{At: now.UTC(), Current: current, Desired: d.Desired, Proposed: d.Proposed, Metric: d.Metric, Clamp: d.Clamp, Reason: d.Reason}
	busy := l.appBusy(p.App)
	apply := d.Desired != current && !p.Off && !busy
	view.Applied = apply
	a.mu.Lock()
	st.history, st.metrics, st.windows, st.last = d.History, views, windows, view
	if apply || (d.Desired != current && (st.lastChange == nil || st.lastChange.Desired != d.Desired || st.lastChange.Applied)) {
		st.lastChange = view
	}
	pt := SeriesPoint{T: now.Unix(), Replicas: current, Desired: d.Desired}
	if len(views) > 0 {
		pt.Value, pt.Target, pt.Missing = views[0].Value, views[0].Target, views[0].Missing
	}
	if len(st.series) >= seriesKept {
		copy(st.series, st.series[1:])
		st.series = st.series[:len(st.series)-1]
	}
	st.series = append(st.series, pt)
	a.mu.Unlock()
	l.m.metrics.autoscaled(current, d.Desired)
	if d.Desired == current {
		return
	}
	inputs := decisionInputs(views, d)
	switch {
	case busy:
		return // its application is being deployed: the deploy converges it
	case p.Off:
		l.m.event(EventAutoscale, p.Service, "would scale %d → %d but autoscaling is off: %s", current, d.Desired, inputs)
		return
	}
	l.m.event(EventAutoscale, p.Service, "%d → %d replicas: %s", current, d.Desired, inputs)
	l.m.log.Info("autoscale", "service", p.Service, "from", current, "to", d.Desired, "reason", d.Reason)
	if err := l.setReplicas(ctx, p.Service, d.Desired, true); err != nil && ctx.Err() == nil {
		l.m.log.Warn("autoscale could not change the replicas", "service", p.Service, "err", err)
		l.m.event(EventAutoscale, p.Service, "could not scale to %d: %v", d.Desired, err)
	}
}

// decisionInputs renders a decision's inputs for its event.
func decisionInputs(views []MetricView, d coordinator.ScaleDecision) string {
	var parts []string
	for _, v := range views {
		if v.Missing {
			parts = append(parts, fmt.Sprintf("%s missing (%s)", v.Name, cmp.Or(v.Error, "no data")))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s (target %s, %d reporting)", v.Name, metricText(v.Name, v.Value), metricText(v.Name, v.Target), v.Reported))
	}
	s := strings.Join(parts, ", ")
	s += fmt.Sprintf("; metrics propose %d", d.Proposed)
	if d.Clamp != "" {
		s += "; bounded by " + d.Clamp
	}
	return s + "; " + d.Reason
}

func metricText(name string, v float64) string {
	if name == "query" {
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64) + "%"
}

// appBusy reports whether an application is being deployed (its deploy
// converges its services; the autoscaler waits).
func (l *leader) appBusy(app string) bool {
	if app == "" {
		return false
	}
	l.appsMu.Lock()
	defer l.appsMu.Unlock()
	_, busy := l.deploying[app]
	return busy
}

// pruneScaling forgets the state of services that lost their policy.
func (l *leader) pruneScaling(pols []*PolicyRecord) {
	keep := map[string]bool{}
	for _, p := range pols {
		keep[p.Service] = true
	}
	a := l.scaler
	a.mu.Lock()
	defer a.mu.Unlock()
	for s := range a.services {
		if !keep[s] {
			delete(a.services, s)
		}
	}
}

// setReplicas brings a service to n replicas: new ones go through
// placement like any launch (and so scale out instances when they do not
// fit); removed ones are the pending ones first, then the newest. With
// needPolicy, replicas are added only while the service still has its
// policy (a stop removes it first).
func (l *leader) setReplicas(ctx context.Context, service string, n int, needPolicy bool) error {
	members, _ := l.scaleMembers(service)
	switch {
	case n > len(members):
		cs, err := l.newReplicas(service, members, n-len(members))
		if err != nil {
			return err
		}
		_, err = l.admit(ctx, cs, func(tx *Tx) error {
			// The service may have been stopped (its policy removed)
			// since the decision: then add nothing.
			if needPolicy && tx.Policy(service) == nil {
				return errStateChanged
			}
			return nil
		}, nil)
		if errors.Is(err, errStateChanged) {
			return nil
		}
		return err
	case n < len(members):
		victims := append([]*Container(nil), members...)
		sort.SliceStable(victims, func(i, j int) bool {
			pi, pj := victims[i].State != StateRunning, victims[j].State != StateRunning
			if pi != pj {
				return pi
			}
			return naturalLess(victims[j].Name, victims[i].Name)
		})
		var errs []error
		for _, v := range victims[:len(members)-n] {
			if _, err := l.Stop(ctx, v.Name); err != nil && !isNotFound(err) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	return nil
}

// newReplicas builds n new records for a service like its existing ones:
// an application's service from its definition (links as they are now),
// a launched service from the spec its replicas share.
func (l *leader) newReplicas(service string, members []*Container, n int) ([]*Container, error) {
	spec := members[0].Spec
	if spec.App != "" {
		if rec, ok := l.store.App(spec.App); ok {
			app, err := definitions.Parse(rec.File, []byte(rec.Definition))
			if err != nil {
				return nil, fmt.Errorf("application %s: %w", spec.App, err)
			}
			for i := range app.Services {
				if consulName(app.Name, app.Services[i].Name) == service {
					return l.containersFor(app, &app.Services[i], n), nil
				}
			}
		}
	}
	next := 1
	for _, r := range l.store.Service(service) {
		if i, err := strconv.Atoi(strings.TrimPrefix(r.Name, service+"-")); err == nil && i >= next {
			next = i + 1
		}
	}
	now := time.Now().UTC()
	out := make([]*Container, n)
	for i := range out {
		out[i] = &Container{Name: fmt.Sprintf("%s-%d", service, next+i), Spec: spec, State: StateStarting, CreatedAt: now, UpdatedAt: now}
	}
	return out, nil
}

// Scale sets a service's replicas by hand (`micado scale SERVICE N`),
// within its policy's min and max when it has one.
func (l *leader) Scale(ctx context.Context, service string, req ScaleRequest) (PolicyView, error) {
	members, _ := l.scaleMembers(service)
	if len(members) == 0 {
		return PolicyView{}, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no service named %s (see micado ps)", service)}
	}
	if req.Replicas < 1 || req.Replicas > definitions.MaxReplicas {
		return PolicyView{}, badRequest("replicas %d is out of range: use 1 to %d (micado stop %s removes the service)", req.Replicas, definitions.MaxReplicas, service)
	}
	if p, ok := l.store.Policy(service); ok && (req.Replicas < p.Scaling.Min || req.Replicas > p.Scaling.Max) {
		return PolicyView{}, badRequest("%d replicas is outside %s's scaling policy (min %d, max %d): change the policy first", req.Replicas, service, p.Scaling.Min, p.Scaling.Max)
	}
	if err := l.setReplicas(ctx, service, req.Replicas, false); err != nil {
		return PolicyView{}, err
	}
	a := l.scaler
	a.mu.Lock()
	if st := a.services[service]; st != nil {
		// The hand-set count counts as a recommendation: the autoscaler
		// does not undo it downwards before a stabilization window.
		st.history = append(st.history, coordinator.Recommendation{At: time.Now(), Replicas: req.Replicas, Current: req.Replicas})
	}
	a.mu.Unlock()
	l.m.event(EventAutoscale, service, "scaled by hand from %d to %d replicas", len(members), req.Replicas)
	return l.policyView(service, false), nil
}

// checkScaling validates a policy from the API: its own problems, and a
// query against the configured Prometheus.
func (l *leader) checkScaling(ctx context.Context, s *definitions.Scaling) error {
	if err := s.Validate(); err != nil {
		return badRequest("%v", err)
	}
	if s.Query == "" {
		return nil
	}
	if l.m.prom == nil {
		return badRequest("scaling policy: query: the manager has no Prometheus to run it on: start it with --prometheus URL")
	}
	if err := l.m.prom.Check(ctx, s.Query); err != nil {
		return badRequest("scaling policy: query: %v", err)
	}
	return nil
}

// ChangeAutoscale turns a service's policy on or off, or gives a launched
// service a new policy.
func (l *leader) ChangeAutoscale(ctx context.Context, service string, ch AutoscaleChange) (PolicyView, error) {
	if ch.Off == nil && ch.Scaling == nil {
		return PolicyView{}, badRequest("nothing to change: give off (true or false) or a scaling policy")
	}
	members, _ := l.scaleMembers(service)
	if len(members) == 0 {
		return PolicyView{}, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no service named %s (see micado ps)", service)}
	}
	cur, has := l.store.Policy(service)
	if ch.Scaling != nil {
		if members[0].App != "" {
			return PolicyView{}, &RequestError{Status: http.StatusConflict,
				Msg: fmt.Sprintf("%s belongs to application %s: change its scaling in the definition file and deploy it again", service, members[0].App)}
		}
		if err := l.checkScaling(ctx, ch.Scaling); err != nil {
			return PolicyView{}, err
		}
	} else if !has {
		return PolicyView{}, &RequestError{Status: http.StatusNotFound,
			Msg: fmt.Sprintf("%s has no scaling policy: give one with micado autoscale %s --min N --max N --cpu 60%%", service, service)}
	}
	rec := &PolicyRecord{Service: service, App: members[0].App, UpdatedAt: time.Now().UTC()}
	if has {
		rec.Scaling, rec.Off = cur.Scaling, cur.Off
	}
	if ch.Scaling != nil {
		rec.Scaling = *ch.Scaling
	}
	if ch.Off != nil {
		rec.Off = *ch.Off
	}
	if err := l.store.Update(ctx, func(tx *Tx) error {
		tx.PutPolicy(rec)
		return nil
	}); err != nil {
		return PolicyView{}, err
	}
	if ch.Scaling != nil {
		// A new policy starts afresh from what runs now.
		l.scaler.mu.Lock()
		delete(l.scaler.services, service)
		l.scaler.mu.Unlock()
	}
	state := "on"
	if rec.Off {
		state = "off"
	}
	l.m.event(EventAutoscale, service, "autoscaling %s (min %d, max %d)", state, rec.Scaling.Min, rec.Scaling.Max)
	return l.policyView(service, false), nil
}

// AutoscaleStatus answers GET /v1/autoscale.
func (l *leader) AutoscaleStatus(history bool) AutoscaleView {
	v := AutoscaleView{Interval: l.m.cfg.AutoscaleInterval.String(), Limit: l.m.cfg.NodeAlert, Policies: []PolicyView{}}
	for _, p := range l.store.Policies() {
		v.Policies = append(v.Policies, l.policyView(p.Service, history))
	}
	a := l.scaler
	a.mu.Lock()
	v.Alerts = append([]coordinator.RoleAlert(nil), a.alerts...)
	if history {
		v.Roles = map[string][]RolePoint{}
		for r, pts := range a.roles {
			v.Roles[r] = append([]RolePoint(nil), pts...)
		}
	}
	a.mu.Unlock()
	return v
}

// policyView shows one service's policy and its last decision.
func (l *leader) policyView(service string, history bool) PolicyView {
	members, ready := l.scaleMembers(service)
	v := PolicyView{Service: service, Replicas: len(members), Ready: ready}
	if p, ok := l.store.Policy(service); ok {
		v.App, v.Scaling, v.Off = p.App, p.Scaling, p.Off
	}
	a := l.scaler
	a.mu.Lock()
	defer a.mu.Unlock()
	if st := a.services[service]; st != nil {
		v.Metrics = append(v.Metrics, st.metrics...)
		v.Windows = append(v.Windows, st.windows...)
		if st.last != nil {
			cp := *st.last
			v.Last = &cp
		}
		if st.lastChange != nil {
			cp := *st.lastChange
			v.LastChange = &cp
		}
		if history {
			v.Series = append(v.Series, st.series...)
		}
	}
	return v
}

// ServiceAutoscale answers GET /v1/autoscale/{service}.
func (l *leader) ServiceAutoscale(service string) (PolicyView, error) {
	if _, ok := l.store.Policy(service); !ok {
		members, _ := l.scaleMembers(service)
		if len(members) == 0 {
			return PolicyView{}, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no service named %s (see micado ps)", service)}
		}
		return PolicyView{}, &RequestError{Status: http.StatusNotFound,
			Msg: fmt.Sprintf("%s has no scaling policy: its %d replicas change only by hand (micado scale %s N) or by deploying its definition", service, len(members), service)}
	}
	return l.policyView(service, true), nil
}

// evaluateAlerts evaluates the node usage alerts: a role whose workers
// stayed above a limit for its window gets one more instance.
func (l *leader) evaluateAlerts(ctx context.Context, now time.Time) {
	m := l.m
	workers := l.usageWorkers()
	a := l.scaler
	// The dashboard's workers per role.
	perRole := map[string]*RolePoint{}
	for _, w := range workers {
		r := cmp.Or(coordinator.RoleOf(w.Tags), "any")
		if perRole[r] == nil {
			perRole[r] = &RolePoint{T: now.Unix()}
		}
		perRole[r].Workers++
	}
	for _, in := range l.store.Instances() {
		if in.State == InstanceRequested {
			r := cmp.Or(coordinator.RoleOf(in.Tags), "any")
			if perRole[r] == nil {
				perRole[r] = &RolePoint{T: now.Unix()}
			}
			perRole[r].Booting++
		}
	}
	a.mu.Lock()
	for r := range a.roles {
		if perRole[r] == nil {
			perRole[r] = &RolePoint{T: now.Unix()} // a role that lost its workers draws 0
		}
	}
	for r, pt := range perRole {
		pts := a.roles[r]
		if len(pts) >= seriesKept {
			copy(pts, pts[1:])
			pts = pts[:len(pts)-1]
		}
		a.roles[r] = append(pts, *pt)
	}
	lim := m.cfg.NodeAlert
	if lim.CPU == 0 && lim.Memory == 0 {
		a.mu.Unlock()
		return
	}
	alerts, since := coordinator.RoleAlerts(lim, workers, a.alertSince, now)
	prev := map[string]bool{}
	for _, al := range a.alerts {
		if al.Firing {
			prev[al.Role+"/"+al.Metric] = true
		}
	}
	a.alerts, a.alertSince = alerts, since
	var fire []coordinator.RoleAlert
	for _, al := range alerts {
		if !al.Firing {
			continue
		}
		if !prev[al.Role+"/"+al.Metric] {
			m.metrics.nodeAlert(al.Role, al.Metric)
		}
		if last, ok := a.alertOut[al.Role]; ok && now.Sub(last) < lim.For {
			continue
		}
		fire = append(fire, al)
	}
	a.mu.Unlock()
	done := map[string]bool{}
	for _, al := range fire {
		if done[al.Role] {
			continue
		}
		done[al.Role] = true
		if l.alertScaleOut(ctx, al, now) {
			a.mu.Lock()
			a.alertOut[al.Role] = now
			a.mu.Unlock()
		}
	}
}

// usageWorkers returns the alive workers with their measured use.
func (l *leader) usageWorkers() []coordinator.Worker {
	var out []coordinator.Worker
	for _, w := range l.m.members.workers() {
		if w.Status != MemberAlive || w.Load.API == "" {
			continue
		}
		out = append(out, coordinator.Worker{Name: w.Name, Tags: w.Load.Tags, Capacity: w.Load.Capacity, Reserved: w.Load.Reserved,
			Used: w.Load.Used, CPUUsed: w.Load.CPU, Containers: w.Load.Containers, Draining: w.Load.Draining || l.isDraining(w.Name)})
	}
	return out
}

// alertScaleOut asks the cloud for one more instance of the alert's role,
// unless one is already on its way or the role is at its limit. It
// reports whether it asked.
func (l *leader) alertScaleOut(ctx context.Context, al coordinator.RoleAlert, now time.Time) bool {
	m := l.m
	if !m.scaling() {
		return false
	}
	tags := []string{"role=" + al.Role}
	if !m.roleAllowed(tags) {
		return false
	}
	for _, in := range l.store.Instances() {
		if in.State == InstanceRequested && coordinator.RoleOf(in.Tags) == al.Role {
			return false // one is booting already: wait for it
		}
	}
	req := coordinator.Request{Name: "alert:" + al.Role, Tags: tags, Memory: 1}
	plan := coordinator.PlanScaleOut([]coordinator.Request{req}, m.coordTypes(), m.cfg.Placement, l.scaleLimits())
	if len(plan.Instances) == 0 {
		reason := "no instance type carries the role"
		if len(plan.Limited) > 0 {
			reason = plan.Limited[0].Reason
		}
		m.event(EventNodeAlert, "role="+al.Role, "%s; no instance asked: %s", al.Reason, reason)
		return true
	}
	in := m.newInstance(plan.Instances[0].Type, plan.Instances[0].Tags, now)
	if err := l.recordInstance(ctx, in); err != nil {
		return false
	}
	m.metrics.scaleOutInstance("requested")
	m.event(EventNodeAlert, "role="+al.Role, "%s; asking the cloud for %s (%s)", al.Reason, in.Name, in.Type)
	l.spawn(func(ctx context.Context) { l.createInstance(ctx, in.Name) })
	return true
}
