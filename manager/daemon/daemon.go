// Package daemon runs a manager process: it connects the manager to
// Consul (the journal, the leader lock and the registry, manager/consul),
// to the workers (memberlist gossip and their agents' API) and to the
// cloud provider, and serves the API. cmd/micado's `micado manager` is
// this package's Run.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/memberlist"
	"github.com/micado-scale/micado/internal/gossip"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
	"github.com/micado-scale/micado/manager/consul"
)

// Process is a running manager process.
type Process struct {
	Manager *manager.Manager
	// API is the address the API listens on; Scheme is http or https.
	API, Scheme string
	Gossip      *memberlist.Memberlist
	Agents      *wire.Client
	Consul      *api.Client

	done chan error
}

// Wait blocks until the process ends and returns why.
func (p *Process) Wait() error { return <-p.done }

// Run runs a manager until ctx ends.
func Run(ctx context.Context, cfg manager.Config) error {
	p, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	return p.Wait()
}

// Options change how StartWith wires a manager, for benchmarks that
// measure one part of it.
type Options struct {
	// Registry replaces the Consul registry (nil: Consul's).
	Registry manager.Registry
	// AgentTransport replaces the HTTP transport to worker agents.
	AgentTransport http.RoundTripper
}

// Start connects a manager to the world and starts it; it returns once
// the API listens and gossip runs.
func Start(ctx context.Context, cfg manager.Config) (*Process, error) {
	return StartWith(ctx, cfg, Options{})
}

// StartWith is Start with Options.
func StartWith(ctx context.Context, cfg manager.Config, opts Options) (*Process, error) {
	if err := manager.CheckKey(cfg.ClusterKey); err != nil {
		return nil, err
	}
	if cfg.Cluster == "" {
		return nil, errors.New("manager needs --cluster")
	}
	if cfg.NodeName == "" {
		cfg.NodeName = "manager"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
		cfg.Logger = log
	}
	tlsCfg, err := manager.LoadServerTLS(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, err
	}
	// TLS to Consul: Consul's own environment variables (CONSUL_CACERT,
	// CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME), and
	// https:// in --consul or CONSUL_HTTP_SSL=true; a certificate problem
	// stops the start at once, naming the variable to set
	// (consul.TLSHint).
	ccfg := api.DefaultConfig()
	ccfg.Address = cfg.ConsulAddr
	if ccfg.Address == "" {
		ccfg.Address = "127.0.0.1:8500"
	}
	ccfg.Token = cfg.ConsulToken
	// Consul refuses a client more than 200 concurrent connections (429,
	// limits.http_max_conns_per_client): a launch of hundreds registers
	// them at once, so calls beyond 64 wait for a connection instead.
	if ccfg.Transport != nil {
		ccfg.Transport.MaxConnsPerHost = 64
	}
	cl, err := api.NewClient(ccfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	wait := cfg.ConsulWait
	if wait == 0 {
		wait = 60 * time.Second
	}
	if err := consul.WaitReady(ctx, cl, ccfg.Address, wait); err != nil {
		return nil, err
	}
	if err := consul.CheckAccess(ctx, cl, ccfg.Address, cfg.Cluster); err != nil {
		return nil, err
	}
	ttl := cfg.LockTTL
	if ttl == 0 {
		ttl = manager.DefaultLockTTL
	}
	agents := wire.NewClient(cfg.ClusterKey)
	// Many workers, each its own host. During a large launch every worker
	// gets a start call every few seconds: keep a connection to each of
	// up to 4,096 of them (a new TCP connection per call took a fifth of
	// the manager's CPU at 5,000 workers). An idle manager calls none of
	// them (workers report a digest of their containers), and idle
	// connections, two goroutines and their buffers each, close after
	// 15 s, so they weigh nothing once a launch is done.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost, tr.IdleConnTimeout = 4096, 2, 15*time.Second
	agents.HTTP.Transport = tr
	if opts.AgentTransport != nil {
		agents.HTTP.Transport = opts.AgentTransport
	}
	apiAddr := cfg.APIAddr
	if apiAddr == "" {
		apiAddr = ":8080"
	}
	ln, err := net.Listen("tcp", apiAddr)
	if err != nil {
		return nil, fmt.Errorf("manager API: %w", err)
	}
	deps := manager.Deps{
		Journal:  consul.NewJournal(cl, cfg.Cluster),
		Lock:     consul.NewLock(cl, cfg.Cluster, cfg.NodeName, ttl, log),
		Registry: consul.NewRegistry(cl, cfg.Cluster),
		Agents:   agents,
	}
	if opts.Registry != nil {
		deps.Registry = opts.Registry
	}
	deps.Forward = peerTransport(tlsCfg)
	g := &mlGossip{}
	deps.Gossip = g
	m, err := manager.New(cfg, deps)
	if err != nil {
		ln.Close()
		return nil, err
	}
	agents.OnLoad = m.ApplyLoad

	// Gossip: the API address goes into our metadata before memberlist
	// starts.
	bind, port := cfg.BindAddr, cfg.BindPort
	if bind == "" {
		bind = "0.0.0.0"
	}
	if port == 0 {
		port = 7946
	}
	_, apiPort, _ := net.SplitHostPort(ln.Addr().String())
	adv := cfg.AdvertiseAddr
	if adv == "" {
		if ip, err := privateIP(); err == nil {
			adv = ip
		}
	}
	meta, err := wire.Load{Kind: wire.KindManager, API: net.JoinHostPort(adv, apiPort), Started: time.Now().Unix()}.Encode()
	if err != nil {
		ln.Close()
		return nil, err
	}
	mlc := gossip.Config(cfg.NodeName, bind, port, cfg.AdvertiseAddr, cfg.ClusterKey, log)
	mlc.Events = m.GossipEvents()
	mlc.Delegate = m.GossipDelegate(meta)
	ml, err := memberlist.Create(mlc)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("start gossip: %w", err)
	}
	g.ml = ml
	if len(cfg.Join) > 0 {
		if n, err := ml.Join(cfg.Join); err != nil && n == 0 {
			log.Info("no member answered yet; waiting to be joined", "tried", cfg.Join)
		}
	}

	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second, TLSConfig: tlsCfg,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
		go func() { _ = srv.ServeTLS(ln, "", "") }()
	} else {
		go func() { _ = srv.Serve(ln) }()
	}
	log.Info("manager started", "cluster", cfg.Cluster, "name", cfg.NodeName, "api", scheme+"://"+ln.Addr().String(),
		"gossip", ml.LocalNode().Address(), "consul", ccfg.Address)
	p := &Process{Manager: m, API: ln.Addr().String(), Scheme: scheme, Gossip: ml, Agents: agents, Consul: cl, done: make(chan error, 1)}
	go func() {
		err := m.Run(ctx)
		_ = ml.Leave(time.Second)
		_ = ml.Shutdown()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
		srv.Close()
		p.done <- err
	}()
	return p, nil
}

// mlGossip adapts memberlist to manager.Gossip.
type mlGossip struct{ ml *memberlist.Memberlist }

func (g *mlGossip) Join(addrs []string) (int, error) { return g.ml.Join(addrs) }

func (g *mlGossip) Addr() string {
	n := g.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// peerDialTimeout bounds a standby's connection to the leader: managers
// share a network, and a leader that died does not answer at all (its
// address no longer routes), so a long wait only delays the 503 that
// sends the CLI to another manager.
const peerDialTimeout = 2 * time.Second

// peerTransport is how a standby reaches the leader's API. Over TLS: the
// managers of a cluster serve one certificate (micado up gives them the
// same files), valid for the address users reach, not necessarily for
// the address managers reach each other on. So the leader must present
// exactly our certificate, or one that the system's roots verify for the
// address dialled.
func peerTransport(own *tls.Config) http.RoundTripper {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: peerDialTimeout, KeepAlive: 30 * time.Second}).DialContext
	if own == nil {
		return tr
	}
	ownDER := own.Certificates[0].Certificate[0]
	tr.TLSClientConfig = &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below, by pinning
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the leader presented no certificate")
			}
			if string(cs.PeerCertificates[0].Raw) == string(ownDER) {
				return nil
			}
			opts := x509.VerifyOptions{DNSName: cs.ServerName, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		},
	}
	return tr
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
