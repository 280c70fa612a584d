package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/memberlist"
	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/worker"
)

// Config configures the manager. Zero values take the defaults below.
type Config struct {
	Cluster  string // cluster name; scopes KV keys, registrations and containers
	NodeName string // gossip name (default "manager")
	Version  string // reported by /v1/status

	BindAddr      string   // gossip bind address (default 0.0.0.0)
	BindPort      int      // gossip port (default 7946)
	AdvertiseAddr string   // gossip address others reach us on (default: first private IP)
	Join          []string // members to join at start (optional: workers join us)
	ClusterKey    []byte   // encrypts gossip; derives the worker agent token

	APIAddr  string // API listen address (default ":8080")
	APIToken string // bearer token required on every API call ("" = none)
	// TLSCert and TLSKey are PEM files of the API's certificate and key;
	// when set, the API is served over HTTPS only (TLS 1.2 or newer).
	TLSCert, TLSKey string

	ConsulAddr  string // Consul HTTP address (default 127.0.0.1:8500)
	ConsulToken string // Consul ACL token used for every Consul call

	Placement coordinator.Options // headroom and strategy (default 10%, spread)

	// Provider creates worker instances when memory is short; nil turns
	// scale-out off, and launches that do not fit are refused.
	Provider cloudapi.Provider
	// InstanceTypes the provider can create, with the memory they offer.
	InstanceTypes []cloudapi.InstanceType
	// ScaleRoles are the roles scale-out may create workers for (empty:
	// any role).
	ScaleRoles []string
	// MaxInstances bounds the workers of the cluster, booting ones
	// included (0 = no limit); MaxPerRole bounds each role.
	MaxInstances, MaxPerRole int
	// JoinTimeout is how long a new instance may take to join before it
	// is terminated (default 5 min).
	JoinTimeout time.Duration
	// LostTimeout is how long the worker of a joined instance may be gone
	// before the instance is terminated (default DefaultLostTimeout).
	LostTimeout time.Duration
	// EventsKept is how many recent events are kept (default
	// DefaultEventsKept), in memory and in Consul KV.
	EventsKept int
	// UserData renders cloud-init user data for new instances (real VMs).
	UserData bool
	// JoinAddr is the gossip address new workers join (default: ours).
	JoinAddr string

	// ConsolidateSchedule is the cron schedule of unattended scale-in
	// rounds (default every minute; "off" disables them).
	ConsolidateSchedule string
	// Consolidate tunes scale-in (threshold, delays, minimum per role).
	Consolidate coordinator.ConsolidateOptions
	// MoveTimeout bounds one make-before-break move (default 2 min).
	MoveTimeout time.Duration
	// RevalidateDelay separates the two plans of an unattended round.
	RevalidateDelay time.Duration

	// ServiceWait bounds a deploy's wait for one service (default 10 min).
	ServiceWait time.Duration

	// ReconcileInterval is how often desired state (KV), the workers'
	// containers and Consul's registrations are compared and repaired.
	ReconcileInterval time.Duration // default 5 s
	// ConsulWait is how long startup waits for Consul to elect a leader.
	ConsulWait time.Duration // default 60 s

	Logger *slog.Logger
}

func (c *Config) defaults() error {
	if c.Cluster == "" {
		return errors.New("manager needs --cluster")
	}
	switch len(c.ClusterKey) {
	case 16, 24, 32:
	default:
		return fmt.Errorf("cluster key must be 16, 24 or 32 bytes, got %d", len(c.ClusterKey))
	}
	if c.NodeName == "" {
		c.NodeName = "manager"
	}
	if c.BindAddr == "" {
		c.BindAddr = "0.0.0.0"
	}
	if c.BindPort == 0 {
		c.BindPort = 7946
	}
	if c.APIAddr == "" {
		c.APIAddr = ":8080"
	}
	if c.ConsulAddr == "" {
		c.ConsulAddr = "127.0.0.1:8500"
	}
	if c.Placement == (coordinator.Options{}) {
		c.Placement = coordinator.DefaultOptions()
	}
	if c.Placement.Headroom < 0 || c.Placement.Headroom >= 1 {
		return fmt.Errorf("headroom %.2f must be at least 0 and below 1", c.Placement.Headroom)
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = 5 * time.Second
	}
	if c.ConsolidateSchedule == "" {
		c.ConsolidateSchedule = DefaultConsolidateSchedule
	}
	if c.Consolidate.Threshold == 0 {
		d := coordinator.DefaultConsolidateOptions()
		d.MinPerRole = c.Consolidate.MinPerRole
		if c.Consolidate.MaxNonEmpty > 0 {
			d.MaxNonEmpty = c.Consolidate.MaxNonEmpty
		}
		c.Consolidate = d
	}
	if c.ServiceWait == 0 {
		c.ServiceWait = DefaultServiceWait
	}
	if c.MoveTimeout == 0 {
		c.MoveTimeout = DefaultMoveTimeout
	}
	if c.RevalidateDelay == 0 {
		c.RevalidateDelay = DefaultRevalidateDelay
	}
	if c.LostTimeout == 0 {
		c.LostTimeout = DefaultLostTimeout
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if c.ConsulWait == 0 {
		c.ConsulWait = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Manager is a running manager.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	consul  *api.Client
	store   *store
	reg     *registry
	agents  *worker.Client
	members *members
	ml      *memberlist.Memberlist

	placeMu sync.Mutex // serialises placement: read state, decide, write

	kickCh chan struct{} // asks the loop for a reconciliation now

	cons consolidator

	appsMu    sync.Mutex
	deploying map[string]context.CancelFunc // applications being deployed
	started   time.Time
	onCreate  func(instance string) // test and benchmark hook: a create call is about to be made

	events *eventLog

	metrics *metrics // Prometheus metrics, served at GET /metrics

	busyMu sync.Mutex
	busy   map[string]bool      // instances with an operation in flight
	absent map[string]time.Time // instances whose worker is away, since when
}

// runHook, set only by benchmarks, receives the manager once gossip runs.
var runHook func(*Manager)

// Run starts the manager and blocks until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	tlsCfg, err := LoadServerTLS(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return err
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, agents: worker.NewClient(cfg.ClusterKey), busy: map[string]bool{}, absent: map[string]time.Time{}, kickCh: make(chan struct{}, 1), started: time.Now(), deploying: map[string]context.CancelFunc{},
		cons: consolidator{unneededSince: map[string]time.Time{}, draining: map[string]string{}, moving: map[string]bool{}}}
	consul, err := api.NewClient(&api.Config{Address: cfg.ConsulAddr, Token: cfg.ConsulToken})
	if err != nil {
		return fmt.Errorf("consul client: %w", err)
	}
	m.consul = consul
	m.metrics = newMetrics(m)
	if err := m.waitForConsul(ctx); err != nil {
		return err
	}
	if err := m.checkConsulAccess(ctx); err != nil {
		return err
	}
	m.store = newStore(consul, cfg.Cluster)
	m.events = newEventLog(consul.KV(), cfg.Cluster, cfg.EventsKept, m.log)
	m.events.onAdd = m.metrics.event
	if err := m.events.load(ctx); err != nil {
		return err
	}
	go m.events.persist(ctx)
	m.reg = &registry{agent: consul.Agent(), catalog: consul.Health(), cluster: cfg.Cluster}

	ln, err := net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("manager API: %w", err)
	}
	defer ln.Close()

	m.members = newMembers(cfg.NodeName)
	m.agents.OnLoad = m.members.applyLoad
	// A restarted manager may see thousands of joins at once: write them
	// to Consul a few at a time, within its per-client connection limit.
	saveSlots := make(chan struct{}, 8)
	m.members.onJoin = func(name, addr string) {
		saveSlots <- struct{}{}
		err := m.store.saveMember(context.Background(), name, addr)
		<-saveSlots
		if err != nil {
			m.log.Warn("cannot remember member", "member", name, "err", err)
		}
		m.log.Info("member joined", "member", name, "addr", addr)
		m.event(EventJoined, name, "joined the cluster from %s", addr)
		m.kick()
	}
	m.members.onDead = func(name string) {
		m.log.Warn("member left or failed", "member", name)
		m.event(EventWorkerLost, name, "memberlist declared it dead")
		if w, ok := m.members.get(name); ok && w.Load.Kind == worker.KindWorker {
			go m.workerDied(ctx, name)
		}
		m.kick()
	}
	mlc := worker.GossipConfig(cfg.NodeName, cfg.BindAddr, cfg.BindPort, cfg.AdvertiseAddr, cfg.ClusterKey, m.log)
	mlc.Events = m.members
	del := &managerDelegate{members: m.members}
	mlc.Delegate = del
	// The API address goes into our metadata before memberlist starts.
	_, apiPort, _ := net.SplitHostPort(ln.Addr().String())
	adv := cfg.AdvertiseAddr
	if adv == "" {
		if ip, err := privateIP(); err == nil {
			adv = ip
		}
	}
	del.meta, _ = worker.Load{Kind: worker.KindManager, API: net.JoinHostPort(adv, apiPort)}.Encode()
	ml, err := memberlist.Create(mlc)
	if err != nil {
		return fmt.Errorf("start gossip: %w", err)
	}
	m.ml = ml
	if runHook != nil {
		runHook(m)
	}
	defer ml.Shutdown()
	join := append([]string(nil), cfg.Join...)
	if known, err := m.store.members(ctx); err == nil {
		join = append(join, known...)
	}
	if len(join) > 0 {
		if n, err := ml.Join(join); err != nil && n == 0 {
			m.log.Info("no earlier member answered; waiting for workers to join", "tried", len(join))
		}
	}

	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second, TLSConfig: tlsCfg,
		ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelDebug)}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
		go func() { _ = srv.ServeTLS(ln, "", "") }()
	} else {
		go func() { _ = srv.Serve(ln) }()
	}
	defer srv.Close()
	m.log.Info("manager started", "cluster", cfg.Cluster, "api", scheme+"://"+ln.Addr().String(), "gossip", ml.LocalNode().Address(), "consul", cfg.ConsulAddr)

	// Give workers one gossip round to reappear before the first
	// reconciliation, so a restarted manager does not mistake a worker it
	// has not heard from yet for a dead one.
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
	stopCron, err := m.startCron(ctx)
	if err != nil {
		return err
	}
	defer stopCron()
	return m.loop(ctx)
}

// kick asks for a reconciliation soon.
func (m *Manager) kick() {
	select {
	case m.kickCh <- struct{}{}:
	default:
	}
}

func (m *Manager) loop(ctx context.Context) error {
	t := time.NewTicker(m.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		if err := m.reconcile(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("reconciliation incomplete", "err", err)
		}
		select {
		case <-ctx.Done():
			_ = m.ml.Leave(time.Second)
			return nil
		case <-t.C:
		case <-m.kickCh:
		}
	}
}

func (m *Manager) waitForConsul(ctx context.Context) error {
	deadline := time.Now().Add(m.cfg.ConsulWait)
	for {
		leader, err := m.consul.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		if err == nil && leader != "" {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("no leader elected")
			}
			return fmt.Errorf("consul at %s is not ready after %s: %w", m.cfg.ConsulAddr, m.cfg.ConsulWait, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// claim marks an instance as busy; it returns false if another operation
// on it is in flight.
func (m *Manager) claim(name string) bool {
	m.busyMu.Lock()
	defer m.busyMu.Unlock()
	if m.busy[name] {
		return false
	}
	m.busy[name] = true
	return true
}

func (m *Manager) release(name string) {
	m.busyMu.Lock()
	delete(m.busy, name)
	m.busyMu.Unlock()
}

// snapshot builds the coordinator's view: every alive worker, with the
// larger of what it reports and what the desired state has promised it,
// so that containers being started are never counted as free memory.
func (m *Manager) snapshot(recs []*Container) *coordinator.Snapshot {
	ledger := map[string]int64{}
	count := map[string]int{}
	for _, c := range recs {
		if c.Node != "" && (c.State == StateStarting || c.State == StateRunning || c.State == StateStopping) {
			ledger[c.Node] += c.Memory
			count[c.Node]++
		}
	}
	s := &coordinator.Snapshot{}
	for _, w := range m.members.workers() {
		if w.Status != "alive" || w.Load.API == "" {
			continue
		}
		s.Workers = append(s.Workers, coordinator.Worker{
			Name: w.Name, Tags: w.Load.Tags, Capacity: w.Load.Capacity,
			Reserved: max(w.Load.Reserved, ledger[w.Name]), Used: w.Load.Used,
			Containers: max(w.Load.Containers, count[w.Name]), Draining: w.Load.Draining || m.isDraining(w.Name),
		})
	}
	return s
}

func privateIP() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			return ipn.IP.String(), nil
		}
	}
	return "", errors.New("no private IPv4 address")
}

func itoa(n int) string { return strconv.Itoa(n) }
