package manager

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/coordinator"
)

// Config configures a manager. Zero values take the defaults below, each
// with the reason for its value. The network and Consul fields are used
// by the daemon that wires a manager to the world (manager/daemon); the
// rest by the manager itself.
type Config struct {
	Cluster  string // cluster name; scopes KV keys, registrations and containers
	NodeName string // this manager's name in gossip and in the leader lock (default "manager")
	Version  string // reported by /v1/status

	BindAddr      string   // gossip bind address (default 0.0.0.0)
	BindPort      int      // gossip port (default 7946)
	AdvertiseAddr string   // gossip address others reach us on (default: first private IP)
	Join          []string // members to join at start: the other managers, or workers
	ClusterKey    []byte   // encrypts gossip; derives the worker agent token

	APIAddr  string // API listen address (default ":8080")
	APIToken string // bearer token required on every API call ("" = none)
	// TLSCert and TLSKey are PEM files of the API's certificate and key;
	// when set, the API is served over HTTPS only (TLS 1.2 or newer).
	TLSCert, TLSKey string

	ConsulAddr  string // Consul HTTP address (default 127.0.0.1:8500)
	ConsulToken string // Consul ACL token used for every Consul call
	// ConsulDiscoveryTokenFile is a file with the Consul ACL token given
	// to containers that have links, so that they can find their
	// upstreams (it should only read services, nodes and health). It is
	// read once at start; the manager refuses to start when it is given
	// and unreadable or empty. The token is written into each linked
	// container at DiscoveryTokenPath, when it starts, and is never stored
	// in container records, logged or printed. "" gives containers no
	// token.
	ConsulDiscoveryTokenFile string
	// LockTTL is the TTL of the leader lock's Consul session (default
	// DefaultLockTTL): a leader that dies unseen by gossip is replaced
	// after one to two TTLs.
	LockTTL time.Duration

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
	// is terminated (default DefaultJoinTimeout).
	JoinTimeout time.Duration
	// LostTimeout is how long the worker of a joined instance may be gone
	// before the instance is terminated (default DefaultLostTimeout).
	LostTimeout time.Duration
	// EventsKept is how many recent events are kept (default
	// DefaultEventsKept), in memory and in the journal.
	EventsKept int
	// Bootstrap, when set, gives new instances cloud-init user data that
	// bootstraps a worker on a stock image with a join token (real VMs).
	Bootstrap *Bootstrap
	// JoinAddr is the gossip address new workers join (default: ours).
	JoinAddr string

	// ConsolidateSchedule is the cron schedule of unattended scale-in
	// rounds (default every minute; "off" disables them).
	ConsolidateSchedule string
	// Consolidate tunes scale-in (threshold, delays, minimum per role).
	Consolidate coordinator.ConsolidateOptions
	// MoveTimeout bounds one make-before-break move (default 2 min).
	MoveTimeout time.Duration
	// ConsolidateWindows are maintenance windows: when any are given,
	// unattended rounds outside all of them only remove empty workers
	// (no container is moved). Manual rounds are not bound by them.
	ConsolidateWindows []coordinator.ScheduleWindow
	// DrainDeadline bounds the draining of one worker (default 10 min):
	// past it the move in progress is rolled back and the worker kept.
	DrainDeadline time.Duration
	// RevalidateDelay separates the two plans of an unattended round.
	RevalidateDelay time.Duration

	// ServiceWait bounds a deploy's wait for one service (default 10 min).
	ServiceWait time.Duration

	// AutoscaleInterval is how often services with a scaling policy are
	// measured and decided on, and node usage alerts evaluated.
	AutoscaleInterval time.Duration // default 5 s
	// Prometheus is the HTTP API that scaling policies with a query read
	// (--prometheus); "" when none is configured.
	Prometheus string
	// NodeAlert raises an alert when a role's workers really use more
	// CPU or memory than its limits for its window: the manager then asks
	// for one more instance of the role, placement prefers workers below
	// the limits, and consolidation never pushes a role above them. Zero
	// limits are off.
	NodeAlert coordinator.UsageLimit

	// ReconcileInterval is how often desired state, the workers'
	// containers and the registry are compared and repaired.
	ReconcileInterval time.Duration // default 5 s
	// ConsulWait is how long startup waits for Consul to elect a leader.
	ConsulWait time.Duration // default 60 s

	Logger *slog.Logger
}

// Defaults of the manager's own timing.
const (
	// DefaultLockTTL: Consul invalidates a session between one and two
	// TTLs after its last renewal, so a leader that dies unseen by gossip
	// is replaced within 20 s; gossip usually sees it first and the
	// standbys depose it at once.
	DefaultLockTTL = 10 * time.Second
	// DefaultReconcileInterval: a repair is at most this late, and an idle
	// round costs nothing but memory reads.
	DefaultReconcileInterval = 5 * time.Second
	// DefaultAutoscaleInterval: the workers sample their containers
	// every 2 s, so a 5 s loop sees a load step within one or two
	// rounds; Kubernetes' HPA loop is 15 s, too slow for the ≤ 20 s
	// reaction micado aims at.
	DefaultAutoscaleInterval = 5 * time.Second
)

func (c *Config) defaults() error {
	if c.Cluster == "" {
		return errors.New("manager needs --cluster")
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
	if c.LockTTL == 0 {
		c.LockTTL = DefaultLockTTL
	}
	if c.Placement == (coordinator.Options{}) {
		c.Placement = coordinator.DefaultOptions()
	}
	if c.Placement.Headroom < 0 || c.Placement.Headroom >= 1 {
		return fmt.Errorf("headroom %.2f must be at least 0 and below 1", c.Placement.Headroom)
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = DefaultReconcileInterval
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
		if c.Consolidate.Budget != (coordinator.Budget{}) {
			d.Budget = c.Consolidate.Budget
		}
		d.MinSaving = c.Consolidate.MinSaving
		c.Consolidate = d
	}
	if c.Consolidate.Budget == (coordinator.Budget{}) {
		c.Consolidate.Budget = coordinator.DefaultBudget()
	}
	if c.ServiceWait == 0 {
		c.ServiceWait = DefaultServiceWait
	}
	if c.AutoscaleInterval == 0 {
		c.AutoscaleInterval = DefaultAutoscaleInterval
	}
	if c.NodeAlert.CPU < 0 || c.NodeAlert.CPU > 1 || c.NodeAlert.Memory < 0 || c.NodeAlert.Memory > 1 {
		return fmt.Errorf("node usage alert limits must be from 0%% to 100%%, not cpu %.0f%% memory %.0f%%", c.NodeAlert.CPU*100, c.NodeAlert.Memory*100)
	}
	if (c.NodeAlert.CPU > 0 || c.NodeAlert.Memory > 0) && c.NodeAlert.For == 0 {
		c.NodeAlert.For = coordinator.DefaultAlertFor
	}
	if c.MoveTimeout == 0 {
		c.MoveTimeout = DefaultMoveTimeout
	}
	if c.Bootstrap != nil {
		if err := c.Bootstrap.check(); err != nil {
			return fmt.Errorf("worker bootstrap: %w", err)
		}
	}
	if c.DrainDeadline == 0 {
		c.DrainDeadline = DefaultDrainDeadline
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

// CheckKey checks the cluster key's length.
func CheckKey(key []byte) error {
	switch len(key) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("cluster key must be 16, 24 or 32 bytes, got %d", len(key))
}
