// Package worker is the agent that runs on every cloud instance (the paper's
// cloud instance layer). It joins the cluster over memberlist, gossips its
// load, and starts and stops containers on its Docker engine when the
// manager tells it to. What it exchanges with the manager (the gossiped
// load report, the agent API's requests and answers, the Docker labels)
// is package internal/wire; its memberlist setup is package
// internal/gossip.
package worker

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/docker/client"
	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"

	"github.com/micado-scale/micado/internal/gossip"
	"github.com/micado-scale/micado/internal/registryauth"
	"github.com/micado-scale/micado/internal/wire"
)

// Config configures a worker agent. Zero values take the defaults below.
type Config struct {
	Cluster string   // cluster name; containers and gossip are scoped to it
	Name    string   // unique node name, e.g. "w-1"
	Tags    []string // capabilities, e.g. "role=proxy"
	Memory  int64    // memory offered to containers, bytes
	// CPUs is the cores the worker offers to containers (default: all of
	// this host's, runtime.NumCPU()); Load.CPU is their use divided by it.
	CPUs float64

	BindAddr      string   // gossip bind address (default 0.0.0.0)
	BindPort      int      // gossip port (default 7946)
	AdvertiseAddr string   // address other members reach us on (default: first private IP)
	Join          []string // host:port of members to join, normally the manager
	ClusterKey    []byte   // 16, 24 or 32 bytes; encrypts gossip and derives the agent API token

	APIAddr     string // agent API listen address (default ":7070")
	PublishAddr string // address where published container ports are reached (default AdvertiseAddr)
	Pull        bool   // pull images that are missing (off for local clusters: no registry)
	// RegistryAuth are the credentials pulls use, by registry (from a
	// Docker config.json, --registry-auth-file); nil pulls anonymously.
	RegistryAuth registryauth.Auths
	// ContainerNetwork attaches containers to this Docker network instead
	// of the default bridge (local clusters: the cluster's network, where
	// Consul is reachable by name).
	ContainerNetwork string

	// LoadInterval is how often the load report is recomputed; a change
	// is gossiped at once, so the manager sees it within ~LoadInterval +
	// one gossip round (200 ms).
	LoadInterval time.Duration // default 500 ms
	// StatsInterval is how often every running container's CPU and memory
	// are sampled from Docker (one-shot stats); a container's CPU is known
	// from its second sample on.
	StatsInterval time.Duration // default 2 s
	// RejoinInterval is how often the agent rejoins when it sees no manager
	// (after a manager restart or a partition).
	RejoinInterval time.Duration // default 2 s

	Logger *slog.Logger
}

func (c *Config) defaults() error {
	if c.Cluster == "" || c.Name == "" {
		return errors.New("worker needs --cluster and --name")
	}
	if c.Memory <= 0 {
		return errors.New("worker needs --memory, the memory it offers to containers")
	}
	switch {
	case c.CPUs == 0:
		c.CPUs = float64(runtime.NumCPU())
	case !(c.CPUs > 0) || math.IsInf(c.CPUs, 0):
		return fmt.Errorf("--cpus must be a positive number of cores, e.g. 2 or 0.5; got %v", c.CPUs)
	}
	switch len(c.ClusterKey) {
	case 16, 24, 32:
	default:
		return fmt.Errorf("cluster key must be 16, 24 or 32 bytes, got %d", len(c.ClusterKey))
	}
	if c.BindAddr == "" {
		c.BindAddr = "0.0.0.0"
	}
	if c.BindPort == 0 {
		c.BindPort = 7946
	}
	if c.APIAddr == "" {
		c.APIAddr = ":7070"
	}
	if c.LoadInterval == 0 {
		c.LoadInterval = 500 * time.Millisecond
	}
	if c.StatsInterval == 0 {
		c.StatsInterval = 2 * time.Second
	}
	if c.RejoinInterval == 0 {
		c.RejoinInterval = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Agent is a running worker agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	eng     *engine
	ml      atomic.Pointer[memberlist.Memberlist] // replaced when the address changes
	apiPort string
	token   string
	started time.Time
	apiAddr string
	metrics *agentMetrics   // Prometheus metrics, served at GET /metrics (metrics.go)
	stats   *statsCollector // CPU and memory of each container (stats.go)

	mu   sync.Mutex
	term uint64 // the newest manager term obeyed (TermHeader)
	left bool   // left the cluster for scale-in; never rejoin
	load wire.Load
	meta []byte
}

// Run starts the agent and blocks until ctx ends, then leaves the cluster.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	docker, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	defer docker.Close()
	if _, err := docker.Ping(ctx); err != nil {
		return fmt.Errorf("cannot reach the Docker engine: %w", err)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("node", cfg.Name), token: wire.AgentToken(cfg.ClusterKey), started: time.Now()}

	ln, err := net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("agent API: %w", err)
	}
	defer ln.Close()

	mlc := gossip.Config(cfg.Name, cfg.BindAddr, cfg.BindPort, cfg.AdvertiseAddr, cfg.ClusterKey, a.log)
	mlc.Delegate = a
	ml, err := memberlist.Create(mlc)
	if err != nil {
		return fmt.Errorf("start gossip: %w", err)
	}
	a.ml.Store(ml)
	self := ml.LocalNode()
	gossipAddr := self.Address() // read now: UpdateNode rewrites self later
	if cfg.PublishAddr == "" {
		cfg.PublishAddr = self.Addr.String()
		a.cfg.PublishAddr = cfg.PublishAddr
	}
	_, a.apiPort, _ = net.SplitHostPort(ln.Addr().String())
	a.apiAddr = net.JoinHostPort(self.Addr.String(), a.apiPort)
	a.eng = &engine{docker: docker, cluster: cfg.Cluster, node: cfg.Name, publishAddr: cfg.PublishAddr, pull: cfg.Pull, auths: cfg.RegistryAuth, network: cfg.ContainerNetwork}
	a.stats = newStatsCollector(a.eng)
	// A first round now gives memory use at once (CPU needs a second one).
	sctx, scancel := context.WithTimeout(ctx, statsRoundTimeout)
	if err := a.stats.collect(sctx); err != nil {
		a.log.Warn("cannot sample container stats", "err", err)
	}
	scancel()
	statsDone := make(chan struct{})
	defer func() { <-statsDone }() // after the deferred cancel below, before docker.Close
	statsCtx, stopStats := context.WithCancel(ctx)
	defer stopStats()
	go func() {
		defer close(statsDone)
		a.stats.run(statsCtx, cfg.StatsInterval, func(err error) { a.log.Debug("container stats", "err", err) })
	}()

	srv := &http.Server{Handler: a.routes(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	a.refreshLoad(ctx)
	a.join()
	a.log.Info("worker agent started", "tags", cfg.Tags, "memory", cfg.Memory, "cpus", cfg.CPUs, "gossip", gossipAddr, "api", a.apiAddr, "publish", cfg.PublishAddr)

	loadT := time.NewTicker(cfg.LoadInterval)
	joinT := time.NewTicker(cfg.RejoinInterval)
	defer loadT.Stop()
	defer joinT.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = a.gossip().Leave(2 * time.Second)
			return a.gossip().Shutdown()
		case <-loadT.C:
			a.refreshLoad(ctx)
		case <-joinT.C:
			a.mu.Lock()
			left := a.left
			a.mu.Unlock()
			if !left {
				a.followAddress(ctx)
			}
			if !left && !a.seesManager() {
				a.join()
			}
		}
	}
}

func (a *Agent) gossip() *memberlist.Memberlist { return a.ml.Load() }

// followAddress restarts gossip on a new address when the agent's own
// address changed under it (a network reconnect, a reboot with another
// DHCP lease): memberlist cannot change the address it advertises, and
// the manager would otherwise see a dead worker that still runs its
// containers. Only when the address was not given.
func (a *Agent) followAddress(ctx context.Context) {
	if a.cfg.AdvertiseAddr != "" {
		return
	}
	old := a.gossip()
	cur := old.LocalNode().Addr.String()
	ip, err := sockaddr.GetPrivateIP()
	if err != nil || ip == "" || ip == cur {
		return
	}
	a.log.Warn("this host's address changed; restarting gossip on the new one", "old", cur, "new", ip)
	_ = old.Shutdown()
	mlc := gossip.Config(a.cfg.Name, a.cfg.BindAddr, a.cfg.BindPort, "", a.cfg.ClusterKey, a.log)
	mlc.Delegate = a
	var ml *memberlist.Memberlist
	for i := 0; ; i++ {
		// The old transport may hold the port for a moment.
		if ml, err = memberlist.Create(mlc); err == nil || i == 20 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		a.log.Error("cannot restart gossip; exiting so the restart policy starts a fresh agent", "err", err)
		os.Exit(1)
	}
	a.mu.Lock()
	a.apiAddr = net.JoinHostPort(ml.LocalNode().Addr.String(), a.apiPort)
	a.meta = nil // forces a new report with the new API address
	a.mu.Unlock()
	a.ml.Store(ml)
	a.refreshLoad(ctx)
	a.join()
}

func (a *Agent) join() {
	if len(a.cfg.Join) == 0 {
		return
	}
	if n, err := a.gossip().Join(a.cfg.Join); err != nil {
		a.log.Warn("cannot join the cluster yet", "join", a.cfg.Join, "err", err, "hint", gossip.JoinHint(err))
	} else {
		a.log.Info("joined the cluster", "contacted", n)
	}
}

func (a *Agent) seesManager() bool {
	for _, m := range a.gossip().Members() {
		if l, err := wire.DecodeLoad(m.Meta); err == nil && l.Kind == wire.KindManager {
			return true
		}
	}
	return false
}

// refreshLoad recomputes the load report from the engine and gossips it at
// once when it changed.
func (a *Agent) refreshLoad(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cs, err := a.eng.list(ctx)
	if err != nil {
		a.log.Warn("cannot read containers", "err", err)
		return
	}
	l := wire.Load{Kind: wire.KindWorker, Tags: a.cfg.Tags, Capacity: a.cfg.Memory, Started: a.started.Unix(), Digest: wire.ContainersDigest(cs)}
	measured := a.stats.byID()
	var cpu float64 // % of one core
	for _, c := range cs {
		if c.State == "exited" || c.State == "dead" {
			continue
		}
		l.Reserved += c.Memory
		l.Containers++
		if m, ok := measured[c.ID]; ok {
			l.Used += m.Memory
			if m.HasCPU {
				cpu += m.CPU
			}
		}
	}
	l.CPU = cpuRatio(cpu, a.cfg.CPUs)
	a.mu.Lock()
	l.API = a.apiAddr
	meta, err := l.Encode()
	if err != nil {
		a.mu.Unlock()
		a.log.Error("load report too large", "err", err)
		return
	}
	changed := a.load.Reserved != l.Reserved || a.load.Containers != l.Containers || a.load.Digest != l.Digest ||
		absDiff(a.load.Used, l.Used) > 1<<20 || absDiffF(a.load.CPU, l.CPU) > 0.05 || a.meta == nil
	l.Seq = a.load.Seq
	if changed {
		l.Seq++
		if meta, err = l.Encode(); err != nil {
			a.mu.Unlock()
			a.log.Error("load report too large", "err", err)
			return
		}
	}
	a.load, a.meta = l, meta
	a.mu.Unlock()
	if ml := a.gossip(); changed && ml != nil {
		// Gossip it without waiting for the broadcast: the start and stop
		// answers carry the report to the manager at once anyway.
		go func() {
			if err := ml.UpdateNode(time.Second); err != nil {
				a.log.Debug("gossip load update", "err", err)
			}
		}()
		if err := gossip.SendLoad(ml, a.cfg.Name, meta); err != nil {
			a.log.Debug("send load to the manager", "err", err)
		}
	}
}

// NodeMeta implements memberlist.Delegate: the load report. Called from
// memberlist's goroutines; guarded by a.mu.
func (a *Agent) NodeMeta(limit int) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.meta) > limit {
		return nil
	}
	return append([]byte(nil), a.meta...)
}

// NotifyMsg implements memberlist.Delegate; agents take no user messages.
func (a *Agent) NotifyMsg([]byte) {}

// GetBroadcasts implements memberlist.Delegate; nothing extra to send.
func (a *Agent) GetBroadcasts(int, int) [][]byte { return nil }

// LocalState implements memberlist.Delegate; no push/pull state.
func (a *Agent) LocalState(bool) []byte { return nil }

// MergeRemoteState implements memberlist.Delegate; no push/pull state.
func (a *Agent) MergeRemoteState([]byte, bool) {}

func (a *Agent) routes() http.Handler {
	if a.metrics == nil {
		a.metrics = newAgentMetrics(a)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "node": a.cfg.Name})
	})
	// Open on purpose, like the health probe: read-only figures, no
	// secret; the agent token would give Prometheus command of the worker
	// (see metrics.go).
	mux.Handle("GET /metrics", a.metrics.handler(a))
	mux.HandleFunc("GET /v1/load", a.auth(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		l := a.load
		a.mu.Unlock()
		writeJSON(w, http.StatusOK, l)
	}))
	mux.HandleFunc("GET /v1/containers", a.auth(func(w http.ResponseWriter, r *http.Request) {
		cs, err := a.eng.list(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		measured := a.stats.byID()
		for i := range cs {
			cs[i].Used = measured[cs[i].ID].Memory
		}
		writeJSON(w, http.StatusOK, cs)
	}))
	mux.HandleFunc("GET /v1/stats", a.auth(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.currentStats())
	}))
	mux.HandleFunc("POST /v1/containers", a.auth(a.fenced(func(w http.ResponseWriter, r *http.Request) {
		var req wire.StartRequest
		if err := decodeJSON(w, r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if req.Instance == "" || req.Service == "" || req.Image == "" || req.Memory <= 0 {
			writeError(w, http.StatusBadRequest, errors.New("start request needs instance, service, image and a positive memory"))
			return
		}
		if err := checkFiles(req.Files); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		info, err := a.eng.start(r.Context(), req)
		a.metrics.started(err)
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ErrImageMissing) {
				code = http.StatusNotFound
			}
			a.log.Warn("start failed", "instance", req.Instance, "err", err)
			writeError(w, code, err)
			return
		}
		a.log.Info("started container", "instance", req.Instance, "image", req.Image, "memory", req.Memory, "ports", info.Ports, "files", len(req.Files))
		a.refreshLoad(r.Context())
		a.loadHeader(w)
		writeJSON(w, http.StatusOK, info)
	})))
	mux.HandleFunc("POST /v1/leave", a.auth(a.fenced(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.left = true
		a.mu.Unlock()
		a.log.Info("leaving the cluster for scale-in")
		if err := a.gossip().Leave(3 * time.Second); err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]bool{"left": true})
	})))
	mux.HandleFunc("DELETE /v1/containers/{instance}", a.auth(a.fenced(func(w http.ResponseWriter, r *http.Request) {
		gen := -1
		if g := r.URL.Query().Get("generation"); g != "" {
			n, err := strconv.Atoi(g)
			if err != nil || n < 0 {
				writeError(w, http.StatusBadRequest, fmt.Errorf("generation %q is not a non-negative number", g))
				return
			}
			gen = n
		}
		found, err := a.eng.stop(r.Context(), r.PathValue("instance"), gen)
		a.metrics.stopped(found, err)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		a.log.Info("stopped container", "instance", r.PathValue("instance"), "found", found)
		a.refreshLoad(r.Context())
		a.loadHeader(w)
		writeJSON(w, http.StatusOK, map[string]bool{"found": found})
	})))
	return mux
}

// loadHeader attaches the current load report to an answer, so the
// manager sees the effect of a start or stop before gossip carries it.
func (a *Agent) loadHeader(w http.ResponseWriter) {
	a.mu.Lock()
	meta := a.meta
	a.mu.Unlock()
	if meta != nil {
		w.Header().Set(wire.LoadHeader, string(meta))
	}
}

// fenced refuses a command from a manager of an older term than the
// newest this agent has obeyed: that manager was deposed, and its
// successor may already have decided otherwise. Commands without a term
// (tools, tests) are taken.
func (a *Agent) fenced(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get(wire.TermHeader); v != "" {
			t, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				writeError(w, http.StatusBadRequest, fmt.Errorf("%s %q is not a number", wire.TermHeader, v))
				return
			}
			a.mu.Lock()
			newest := a.term
			if t > a.term {
				a.term = t
			}
			a.mu.Unlock()
			if t < newest {
				a.log.Warn("refused a command of a deposed manager", "term", t, "newest", newest)
				writeError(w, http.StatusConflict, fmt.Errorf("refused: the command comes from manager term %d, and a manager of term %d has since led", t, newest))
				return
			}
		}
		h(w, r)
	}
}

// auth admits only callers that present the agent token, which only
// holders of the cluster key can derive: the manager.
func (a *Agent) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) != 1 {
			writeError(w, http.StatusUnauthorized, errors.New("only the cluster's manager may command this worker"))
			return
		}
		h(w, r)
	}
}

func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}

func absDiffF(a, b float64) float64 {
	if a > b {
		return a - b
	}
	return b - a
}

const maxBody = 1 << 20

func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad request body: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
