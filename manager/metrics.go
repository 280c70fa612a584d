package manager

import (
	"log/slog"
	"net/http"
	"sort"
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The manager's Prometheus metrics, served at GET /metrics on the API
// listener. Like every other path of the API, /metrics requires the API
// token (Authorization: Bearer); Prometheus sends it with
// `authorization: {credentials_file: ...}`. The metrics name workers and
// count containers, never carry a secret, and live in the manager's own
// registry (not the process-wide default one).
//
// Gauges are collected when scraped (clusterCollector): they read the
// members table and the desired state in Consul KV at that moment, so
// they are always true and never drift. Counters and histograms are
// updated where the decision is taken.

// Label values of the counters, initialised to 0 so that every series
// exists from the start (rate() and absent() behave).
var (
	placementSources      = []string{"launch", "pending"}
	scaleOutOutcomes      = []string{"requested", "joined", "create_failed", "join_timeout"}
	scaleInOutcomes       = []string{"terminated", "failed"}
	consolidationOutcomes = []string{"nothing-to-do", "planned", "aborted", "failed", "removed"}
	eventKinds            = []string{EventPlaced, EventPending, EventRunning, EventFailed, EventStopped, EventScaleOut,
		EventJoined, EventWorkerLost, EventRequeued, EventScaleIn, EventSkipped, EventMoved, EventTerminated,
		EventInstanceErr, EventRecovered, EventAutoscale, EventNodeAlert}
	// Worker states of micado_workers; each worker is in exactly one.
	workerStates = []string{"alive", "draining", "booting", "dead"}
)

// metrics holds the manager's registry and the instruments updated as
// decisions are taken. A nil *metrics records nothing (managers built by
// tests without Run).
type metrics struct {
	reg             *prometheus.Registry
	placement       *prometheus.HistogramVec
	placedWait      prometheus.Histogram
	scaleOut        *prometheus.CounterVec
	scaleOutJoin    prometheus.Histogram
	scaleIn         *prometheus.CounterVec
	scaleInDuration prometheus.Histogram
	rounds          *prometheus.CounterVec
	events          *prometheus.CounterVec
	leader          prometheus.Gauge
	reconciles      prometheus.Histogram
	scaleDecisions  *prometheus.CounterVec
	nodeAlerts      *prometheus.CounterVec
}

func newMetrics(m *Manager) *metrics {
	x := &metrics{
		reg: prometheus.NewRegistry(),
		placement: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "micado_placement_duration_seconds",
			Help: "Time the coordinator took to place one batch of containers: source=launch for a launch or deploy, source=pending for held and requeued containers.",
			// Placement takes microseconds (docs/BENCHMARKS.md): 10µs to 2.6s.
			Buckets: prometheus.ExponentialBuckets(1e-5, 4, 10),
		}, []string{"source"}),
		placedWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "micado_pending_placed_wait_seconds",
			Help:    "How long containers that waited (held for scale-out, or requeued after their worker was lost) were pending before they got a worker.",
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 12),
		}),
		scaleOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micado_scale_out_instances_total",
			Help: "Instances asked of the cloud by scale-out (outcome=requested) and what became of them: joined, create_failed (the cloud refused), join_timeout (its worker did not join in --join-timeout).",
		}, []string{"outcome"}),
		scaleOutJoin: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "micado_scale_out_join_seconds",
			Help:    "Time from asking the cloud for an instance to its worker joining the cluster.",
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 12),
		}),
		scaleIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micado_scale_in_instances_total",
			Help: "Workers scale-in drained: outcome=terminated (emptied make-before-break and terminated) or failed (a move or the termination failed; the worker stays).",
		}, []string{"outcome"}),
		scaleInDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "micado_scale_in_duration_seconds",
			Help:    "Time scale-in took to drain one worker and terminate its instance (successful ones).",
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 12),
		}),
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micado_consolidation_rounds_total",
			Help: "Consolidation (scale-in) rounds, unattended and manual, by outcome.",
		}, []string{"outcome"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micado_events_total",
			Help: "Events recorded in the event log (micado events), by kind.",
		}, []string{"kind"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "micado_leader",
			Help: "1 while this manager leads the cluster (holds the leader lock), 0 while it stands by.",
		}),
		reconciles: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "micado_reconcile_duration_seconds",
			Help: "Time of each reconciliation round this manager completed as the leader (observe, decide, repair); its _count is the number of rounds.",
			// An idle round of 100,000 containers takes milliseconds; one
			// that repairs waits for agents: 100µs to 100s.
			Buckets: prometheus.ExponentialBuckets(1e-4, 4, 11),
		}),
	}
	x.scaleDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "micado_autoscale_decisions_total",
		Help: "Scaling decisions that changed (or, with autoscaling off, would have changed) a service's replicas, by direction (up, down).",
	}, []string{"direction"})
	x.nodeAlerts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "micado_node_alerts_total",
		Help: "Node usage alerts that began to fire: a role's workers stayed above --node-cpu-alert or --node-memory-alert for --alert-for.",
	}, []string{"role", "metric"})
	x.scaleDecisions.WithLabelValues("up")
	x.scaleDecisions.WithLabelValues("down")
	for _, s := range placementSources {
		x.placement.WithLabelValues(s)
	}
	for _, o := range scaleOutOutcomes {
		x.scaleOut.WithLabelValues(o)
	}
	for _, o := range scaleInOutcomes {
		x.scaleIn.WithLabelValues(o)
	}
	for _, o := range consolidationOutcomes {
		x.rounds.WithLabelValues(o)
	}
	for _, k := range eventKinds {
		x.events.WithLabelValues(k)
	}
	x.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		x.placement, x.placedWait, x.scaleOut, x.scaleOutJoin, x.scaleIn, x.scaleInDuration, x.rounds, x.events,
		x.leader, x.reconciles, x.scaleDecisions, x.nodeAlerts,
		&clusterCollector{m: m}, autoscaleCollector{m: m},
	)
	return x
}

// handler serves the registry in the Prometheus text (or OpenMetrics)
// format. A failing collector does not hide the others.
func (x *metrics) handler(log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(x.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	})
}

func (x *metrics) placed(source string, d time.Duration) {
	if x != nil {
		x.placement.WithLabelValues(source).Observe(d.Seconds())
	}
}

func (x *metrics) waitedForPlacement(d time.Duration) {
	if x != nil && d >= 0 {
		x.placedWait.Observe(d.Seconds())
	}
}

func (x *metrics) scaleOutInstance(outcome string) {
	if x != nil {
		x.scaleOut.WithLabelValues(outcome).Inc()
	}
}

func (x *metrics) instanceJoined(after time.Duration) {
	if x != nil {
		x.scaleOut.WithLabelValues("joined").Inc()
		x.scaleOutJoin.Observe(after.Seconds())
	}
}

func (x *metrics) scaledIn(err error, took time.Duration) {
	if x == nil {
		return
	}
	if err != nil {
		x.scaleIn.WithLabelValues("failed").Inc()
		return
	}
	x.scaleIn.WithLabelValues("terminated").Inc()
	x.scaleInDuration.Observe(took.Seconds())
}

func (x *metrics) round(outcome string) {
	if x != nil && outcome != "" {
		x.rounds.WithLabelValues(outcome).Inc()
	}
}

func (x *metrics) leading(on bool) {
	if x != nil {
		x.leader.Set(map[bool]float64{true: 1}[on])
	}
}

func (x *metrics) reconciled(took time.Duration) {
	if x != nil {
		x.reconciles.Observe(took.Seconds())
	}
}

// autoscaled counts a decision that changes a service's replicas.
func (x *metrics) autoscaled(current, desired int) {
	switch {
	case x == nil || current == desired:
	case desired > current:
		x.scaleDecisions.WithLabelValues("up").Inc()
	default:
		x.scaleDecisions.WithLabelValues("down").Inc()
	}
}

// nodeAlert counts an alert that began to fire.
func (x *metrics) nodeAlert(role, metric string) {
	if x != nil {
		x.nodeAlerts.WithLabelValues(role, metric).Inc()
	}
}

var (
	descSvcReplicas = prometheus.NewDesc("micado_service_replicas",
		"Replicas of a service with a scaling policy (containers not being stopped), and the replicas its last decision wanted (kind=desired).", []string{"service", "kind"}, nil)
	descSvcMetric = prometheus.NewDesc("micado_autoscale_metric",
		"A scaled service's metric as the autoscaler last read it (cpu and memory: mean % per replica; query: its value), with its target (kind=target).", []string{"service", "metric", "kind"}, nil)
	descRoleAlert = prometheus.NewDesc("micado_node_alert",
		"1 while a role's workers are above a node usage limit for the whole window (firing), 0.5 while above but not yet for the window.", []string{"role", "metric"}, nil)
)

// autoscaleCollector reads the leader's autoscaler when scraped.
type autoscaleCollector struct{ m *Manager }

func (c autoscaleCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descSvcReplicas
	ch <- descSvcMetric
	ch <- descRoleAlert
}

func (c autoscaleCollector) Collect(ch chan<- prometheus.Metric) {
	l := c.m.current()
	if l == nil || l.scaler == nil {
		return
	}
	a := l.scaler
	a.mu.Lock()
	defer a.mu.Unlock()
	for svc, st := range a.services {
		if st.last != nil {
			ch <- prometheus.MustNewConstMetric(descSvcReplicas, prometheus.GaugeValue, float64(st.last.Current), svc, "current")
			ch <- prometheus.MustNewConstMetric(descSvcReplicas, prometheus.GaugeValue, float64(st.last.Desired), svc, "desired")
		}
		for _, mv := range st.metrics {
			if !mv.Missing {
				ch <- prometheus.MustNewConstMetric(descSvcMetric, prometheus.GaugeValue, mv.Value, svc, mv.Name, "value")
			}
			ch <- prometheus.MustNewConstMetric(descSvcMetric, prometheus.GaugeValue, mv.Target, svc, mv.Name, "target")
		}
	}
	for _, al := range a.alerts {
		v := 0.5
		if al.Firing {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descRoleAlert, prometheus.GaugeValue, v, al.Role, al.Metric)
	}
}

// event is the event log's onAdd hook.
func (x *metrics) event(e Event) {
	if x != nil {
		x.events.WithLabelValues(e.Kind).Inc()
	}
}

// metricsHandler serves GET /metrics (behind the API token, like the rest
// of the API).
func (m *Manager) metricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m.metrics == nil {
			writeErr(w, &RequestError{Status: http.StatusNotFound, Msg: "this manager has no metrics"})
			return
		}
		m.metrics.handler(m.log).ServeHTTP(w, r)
	})
}

// pendingSince is when a pending container started waiting.
func pendingSince(c *Container) time.Time {
	if !c.PendingSince.IsZero() {
		return c.PendingSince
	}
	return c.CreatedAt // a record from a manager that did not keep the time
}

// clusterCollector computes the gauges when scraped, from memory only:
// the members table and, while this manager leads, the desired state.
type clusterCollector struct{ m *Manager }

var (
	descWorkers = prometheus.NewDesc("micado_workers",
		"Workers by role and state: alive (takes containers), draining (being emptied for scale-in), booting (an instance asked of the cloud whose worker has not joined), dead (gossip lost it).",
		[]string{"role", "state"}, nil)
	descWorkerMemory = prometheus.NewDesc("micado_worker_memory_bytes",
		"Memory of each alive worker: kind=capacity (offered to containers), reserved (the larger of what it reports and what the desired state promised it), used (what its containers really use).",
		[]string{"worker", "role", "kind"}, nil)
	descContainers = prometheus.NewDesc("micado_containers",
		"Container records in the desired state, by state.", []string{"state"}, nil)
	descPending = prometheus.NewDesc("micado_pending_containers",
		"Containers waiting for a worker (held for scale-out, or requeued).", nil, nil)
	descPendingWait = prometheus.NewDesc("micado_pending_wait_seconds",
		"How long the oldest pending container has waited (0 when none waits).", nil, nil)
	descGossip = prometheus.NewDesc("micado_gossip_members",
		"Members of the gossip cluster as the manager sees them, by kind (worker, manager) and status (alive, dead).",
		[]string{"kind", "status"}, nil)
	descStoreUp = prometheus.NewDesc("micado_store_up",
		"1 when this manager leads and serves the desired state from memory, else 0 (a standby: the container and booting-worker figures are left out; scrape the leader).",
		nil, nil)
)

// Describe implements prometheus.Collector.
func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWorkers, descWorkerMemory, descContainers, descPending, descPendingWait, descGossip, descStoreUp} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	now := time.Now()
	l := m.current()
	storeUp := 0.0
	var insts []*InstanceRecord
	if l != nil {
		storeUp = 1
		insts = l.store.Instances()
	}
	ch <- prometheus.MustNewConstMetric(descStoreUp, prometheus.GaugeValue, storeUp)

	// Workers by role and state.
	type rs struct{ role, state string }
	count := map[rs]int{}
	roles := map[string]bool{}
	seen := map[string]bool{}
	for _, w := range m.members.workers() {
		role := roleLabel(w.Load.Tags)
		roles[role] = true
		seen[w.Name] = true
		state := string(MemberDead)
		if w.Status == MemberAlive {
			state = string(MemberAlive)
			if w.Load.Draining || (l != nil && l.isDraining(w.Name)) {
				state = "draining"
			}
		}
		count[rs{role, state}]++
	}
	for _, in := range insts {
		if in.State == InstanceRequested && !seen[in.Name] {
			role := roleLabel(in.Tags)
			roles[role] = true
			count[rs{role, "booting"}]++
		}
	}
	for _, role := range sortedKeys(roles) {
		for _, st := range workerStates {
			ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(count[rs{role, st}]), role, st)
		}
	}

	if l != nil {
		// Memory of each alive worker, as placement sees it.
		for _, w := range l.snapshot().Workers {
			role := roleLabel(w.Tags)
			ch <- prometheus.MustNewConstMetric(descWorkerMemory, prometheus.GaugeValue, float64(w.Capacity), w.Name, role, "capacity")
			ch <- prometheus.MustNewConstMetric(descWorkerMemory, prometheus.GaugeValue, float64(w.Reserved), w.Name, role, "reserved")
			ch <- prometheus.MustNewConstMetric(descWorkerMemory, prometheus.GaugeValue, float64(w.Used), w.Name, role, "used")
		}
		// Containers by state, and the pending ones.
		byState := l.store.Counts()
		pending := l.store.Pending()
		oldest := 0.0
		for _, r := range pending {
			oldest = max(oldest, now.Sub(pendingSince(r)).Seconds())
		}
		for _, st := range containerStates {
			ch <- prometheus.MustNewConstMetric(descContainers, prometheus.GaugeValue, float64(byState[st]), string(st))
		}
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(len(pending)))
		ch <- prometheus.MustNewConstMetric(descPendingWait, prometheus.GaugeValue, oldest)
	}

	// Gossip members by kind and status.
	type ks struct {
		kind   string
		status MemberStatus
	}
	gossip := map[ks]int{{wire.KindWorker, MemberAlive}: 0, {wire.KindWorker, MemberDead}: 0, {wire.KindManager, MemberAlive}: 0, {wire.KindManager, MemberDead}: 0}
	for _, mem := range m.members.all() {
		kind := mem.Load.Kind
		if kind == "" {
			kind = "unknown"
		}
		status := mem.Status
		if status != MemberAlive {
			status = MemberDead
		}
		gossip[ks{kind, status}]++
	}
	for k, n := range gossip {
		ch <- prometheus.MustNewConstMetric(descGossip, prometheus.GaugeValue, float64(n), k.kind, string(k.status))
	}
}

// roleLabel is a worker's role for a label ("none" without one).
func roleLabel(tags []string) string {
	if r := coordinator.RoleOf(tags); r != "" {
		return r
	}
	return "none"
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
