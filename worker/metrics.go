package worker

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/micado-scale/micado/internal/gossip"
	"github.com/micado-scale/micado/internal/wire"
)

// The agent's Prometheus metrics, served at GET /metrics on the agent
// API WITHOUT the agent token. That token lets its holder start and stop
// containers and make the worker leave: handing it to Prometheus would
// give a monitoring system command over every worker. /metrics is
// read-only and tells only figures about this node (memory, container
// count, CPU load and use, start/stop counts, gossip members seen) and its
// name, role and cluster, and the CPU and memory each of its containers
// uses, labelled with the service and instance names of the application
// description: no secret, no Docker container name, image or environment.
// The agent API listens on the cluster's network, not on the Internet.

// agentMetrics holds the agent's own registry (not the process-wide
// default one) and its counters; the gauges are read from the current
// load report when scraped.
type agentMetrics struct {
	reg    *prometheus.Registry
	starts *prometheus.CounterVec
	stops  *prometheus.CounterVec
}

func newAgentMetrics(a *Agent) *agentMetrics {
	x := &agentMetrics{
		reg: prometheus.NewRegistry(),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micado_worker_container_starts_total",
			Help: "Containers this agent was asked to start, by outcome (ok, failed).",
		}, []string{"outcome"}),
		stops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micado_worker_container_stops_total",
			Help: "Containers this agent was asked to stop, by outcome (ok, not_found: no such copy ran, failed).",
		}, []string{"outcome"}),
	}
	for _, o := range []string{"ok", "failed"} {
		x.starts.WithLabelValues(o)
	}
	for _, o := range []string{"ok", "not_found", "failed"} {
		x.stops.WithLabelValues(o)
	}
	x.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		x.starts, x.stops, agentCollector{a},
	)
	return x
}

func (x *agentMetrics) handler(a *Agent) http.Handler {
	return promhttp.HandlerFor(x.reg, promhttp.HandlerOpts{
		ErrorLog:      gossip.SlogWriter(a.log),
		ErrorHandling: promhttp.ContinueOnError,
	})
}

func (x *agentMetrics) started(err error) {
	if x == nil {
		return
	}
	if err != nil {
		x.starts.WithLabelValues("failed").Inc()
		return
	}
	x.starts.WithLabelValues("ok").Inc()
}

func (x *agentMetrics) stopped(found bool, err error) {
	if x == nil {
		return
	}
	switch {
	case err != nil:
		x.stops.WithLabelValues("failed").Inc()
	case !found:
		x.stops.WithLabelValues("not_found").Inc()
	default:
		x.stops.WithLabelValues("ok").Inc()
	}
}

// agentCollector reads the load report (recomputed every LoadInterval),
// the last round of container stats (every StatsInterval) and the gossip
// member list when scraped: no Docker call per scrape.
type agentCollector struct{ a *Agent }

var (
	descInfo = prometheus.NewDesc("micado_worker_info",
		"Always 1: this agent's cluster, node name and role (join on worker with the manager's micado_worker_memory_bytes).",
		[]string{"cluster", "worker", "role"}, nil)
	descMemory = prometheus.NewDesc("micado_worker_memory_bytes",
		"This worker's memory: kind=capacity (offered to containers), reserved (the memory limits of its containers), used (what they really use, sampled every few seconds).",
		[]string{"kind"}, nil)
	descContainers = prometheus.NewDesc("micado_worker_containers",
		"Containers of the cluster this worker runs (not exited).", nil, nil)
	descCPU = prometheus.NewDesc("micado_worker_cpu_load",
		"The host's 1-minute load average.", nil, nil)
	descCPURatio = prometheus.NewDesc("micado_worker_cpu_ratio",
		"CPU its containers use, as a fraction of the cores this worker offers (--cpus), 0..1: the figure it gossips.", nil, nil)
	descContainerCPU = prometheus.NewDesc("micado_worker_container_cpu_percent",
		"CPU a container instance uses, in % of one core over the last stats interval, as docker stats shows it (absent until two samples exist).",
		[]string{"service", "instance"}, nil)
	descContainerMemory = prometheus.NewDesc("micado_worker_container_memory_bytes",
		"Memory a container instance uses, without the page cache, at its last stats sample.",
		[]string{"service", "instance"}, nil)
	descMembers = prometheus.NewDesc("micado_worker_gossip_members",
		"Live gossip members this worker sees (itself included), by kind (worker, manager).",
		[]string{"kind"}, nil)
)

// Describe implements prometheus.Collector.
func (c agentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descMemory, descContainers, descCPU, descCPURatio,
		descContainerCPU, descContainerMemory, descMembers} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c agentCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	role := "none"
	for _, t := range a.cfg.Tags {
		if v, ok := strings.CutPrefix(t, "role="); ok {
			role = v
			break
		}
	}
	ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, a.cfg.Cluster, a.cfg.Name, role)
	a.mu.Lock()
	l := a.load
	a.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(a.cfg.Memory), "capacity")
	ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(l.Reserved), "reserved")
	ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(l.Used), "used")
	ch <- prometheus.MustNewConstMetric(descContainers, prometheus.GaugeValue, float64(l.Containers))
	ch <- prometheus.MustNewConstMetric(descCPU, prometheus.GaugeValue, loadAverage())
	ch <- prometheus.MustNewConstMetric(descCPURatio, prometheus.GaugeValue, l.CPU)
	collectContainers(ch, a.stats)
	kinds := map[string]int{wire.KindWorker: 0, wire.KindManager: 0}
	if ml := a.gossip(); ml != nil {
		for _, n := range ml.Members() {
			kind := "unknown"
			if ld, err := wire.DecodeLoad(n.Meta); err == nil && ld.Kind != "" {
				kind = ld.Kind
			}
			kinds[kind]++
		}
	}
	for k, n := range kinds {
		ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(n), k)
	}
}

// collectContainers emits the per-instance series of the last stats
// round. The copies of one instance (generations, during make before
// break) are summed: the series are per service and instance.
func collectContainers(ch chan<- prometheus.Metric, s *statsCollector) {
	cs, _ := s.snapshot()
	type key struct{ service, instance string }
	type use struct {
		cpu    float64
		hasCPU bool
		memory int64
	}
	var order []key
	byKey := map[key]*use{}
	for _, c := range cs {
		k := key{c.Service, c.Instance}
		u := byKey[k]
		if u == nil {
			u = &use{}
			byKey[k] = u
			order = append(order, k)
		}
		u.memory += c.Memory
		if c.HasCPU {
			u.cpu += c.CPU
			u.hasCPU = true
		}
	}
	for _, k := range order {
		u := byKey[k]
		ch <- prometheus.MustNewConstMetric(descContainerMemory, prometheus.GaugeValue, float64(u.memory), k.service, k.instance)
		if u.hasCPU {
			ch <- prometheus.MustNewConstMetric(descContainerCPU, prometheus.GaugeValue, u.cpu, k.service, k.instance)
		}
	}
}
