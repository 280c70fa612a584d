// Command demo-proxy is the front tier of micado's demo three-tier application
// (proxy → app servers → db). It finds the instances of its upstream service
// through Consul's HTTP API and spreads requests round-robin across the ones
// whose checks pass.
//
// Endpoints:
//
//	GET /health    200 "ok" (the proxy itself is healthy, whatever its backends)
//	GET /backends  JSON list of the current backends ["host:port", ...]
//	GET /metrics   Prometheus text format: demo_proxy_requests_total{service,
//	               code}, the requests proxied (or refused for want of a
//	               backend) by answer status code; /health, /backends and
//	               /metrics themselves are not counted. service is
//	               MICADO_SERVICE.
//	anything else  reverse-proxied to the next backend, round-robin; the
//	               response carries X-Micado-Backend: host:port. With no
//	               backend the answer is 503 with a one-line reason.
//
// Configuration (environment):
//
//	UPSTREAM           Consul service to proxy to (default: the first name in
//	                   MICADO_LINKS, the comma-separated list micado sets)
//	CONSUL_HTTP_ADDR   host:port of Consul's HTTP API, e.g. micado-c-consul:8500
//	CONSUL_HTTP_TOKEN_FILE
//	                   file with the ACL token sent as X-Consul-Token: micado
//	                   writes the discovery token of containers with links to
//	                   /run/secrets/micado-consul-token and names it here. Read
//	                   once at start; it wins over CONSUL_HTTP_TOKEN
//	CONSUL_HTTP_TOKEN  optional ACL token, sent as X-Consul-Token
//	MICADO_SERVICE     the proxy's own service name, the service label of its
//	                   metrics (default "demo-proxy"; micado sets it)
//	PORT               listen port (default 8080)
//	REFRESH            how often to ask Consul (default 1s)
//	<UPSTREAM>_ADDRS   static host:port list (upstream name in upper case,
//	                   "-" → "_", e.g. DEMO_WEB_ADDRS) used while Consul is
//	                   unset or has not answered yet
//
// A failed refresh keeps the last good list. The server shuts down gracefully
// on SIGTERM or SIGINT.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// consulTimeout bounds one call to Consul's HTTP API.
const consulTimeout = 5 * time.Second

// defaultService is the service label of the metrics without MICADO_SERVICE.
const defaultService = "demo-proxy"

// config is the proxy's configuration, read from the environment.
type config struct {
	Upstream    string        // Consul service name
	Service     string        // the proxy's own service (MICADO_SERVICE)
	ConsulURL   string        // base URL of Consul's HTTP API; "" when unset
	ConsulToken string        // X-Consul-Token, optional
	TokenFile   string        // where ConsulToken was read from (CONSUL_HTTP_TOKEN_FILE), if anywhere
	Port        string        // listen port
	Refresh     time.Duration // Consul polling interval
	StaticVar   string        // name of the *_ADDRS variable
	Static      []string      // its addresses, sorted, without duplicates
}

// loadConfig reads the configuration through getenv (os.Getenv in main).
func loadConfig(getenv func(string) string) (config, error) {
	cfg := config{
		Upstream:    strings.TrimSpace(getenv("UPSTREAM")),
		Service:     strings.TrimSpace(getenv("MICADO_SERVICE")),
		ConsulToken: strings.TrimSpace(getenv("CONSUL_HTTP_TOKEN")),
		Port:        strings.TrimSpace(getenv("PORT")),
		Refresh:     time.Second,
	}
	if cfg.Upstream == "" {
		for name := range strings.SplitSeq(getenv("MICADO_LINKS"), ",") {
			if name = strings.TrimSpace(name); name != "" {
				cfg.Upstream = name
				break
			}
		}
	}
	if cfg.Upstream == "" {
		return config{}, errors.New("no upstream: set UPSTREAM or MICADO_LINKS")
	}
	if cfg.Port == "" {
		cfg.Port = "8080"
	}
	if cfg.Service == "" {
		cfg.Service = defaultService
	}
	if s := strings.TrimSpace(getenv("REFRESH")); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return config{}, fmt.Errorf("REFRESH=%q is not a positive duration such as 1s or 500ms", s)
		}
		cfg.Refresh = d
	}
	if f := strings.TrimSpace(getenv("CONSUL_HTTP_TOKEN_FILE")); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return config{}, fmt.Errorf("CONSUL_HTTP_TOKEN_FILE: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return config{}, fmt.Errorf("CONSUL_HTTP_TOKEN_FILE: %s is empty", f)
		}
		cfg.ConsulToken, cfg.TokenFile = tok, f
	}
	if addr := strings.TrimSpace(getenv("CONSUL_HTTP_ADDR")); addr != "" {
		if !strings.Contains(addr, "://") {
			addr = "http://" + addr
		}
		cfg.ConsulURL = strings.TrimRight(addr, "/")
	}
	cfg.StaticVar = addrsVar(cfg.Upstream)
	cfg.Static = normalize(strings.Split(getenv(cfg.StaticVar), ","))
	return cfg, nil
}

// addrsVar returns the name of the variable holding the static addresses of
// service: "demo-web" → "DEMO_WEB_ADDRS".
func addrsVar(service string) string {
	return strings.ToUpper(strings.ReplaceAll(service, "-", "_")) + "_ADDRS"
}

// normalize trims, sorts and deduplicates addresses, dropping empty ones.
func normalize(addrs []string) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// state is one immutable view of the backends; it is replaced, never changed.
type state struct {
	backends []string
	source   string // "consul", the *_ADDRS variable, or "" when nothing is known
	err      error  // the last refresh's error, nil if it succeeded
}

// proxy spreads requests over the backends of one upstream service.
type proxy struct {
	cfg    config
	client *http.Client
	rp     *httputil.ReverseProxy
	state  atomic.Pointer[state]
	next   atomic.Uint64

	requests *prometheus.CounterVec // demo_proxy_requests_total{service, code}
	metrics  http.Handler           // GET /metrics, from the proxy's own registry

	mu sync.Mutex // serialises refreshes, so changes are logged once and in order
}

// backendKey is the request context key holding the chosen backend.
type backendKey struct{}

func newProxy(cfg config) *proxy {
	p := &proxy{
		cfg:    cfg,
		client: &http.Client{Timeout: consulTimeout},
	}
	src := ""
	if len(cfg.Static) > 0 {
		src = cfg.StaticVar
	}
	p.state.Store(&state{backends: cfg.Static, source: src})

	reg := prometheus.NewRegistry()
	p.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "demo_proxy_requests_total",
		Help:        "Requests the proxy forwarded to a backend (or refused for want of one), by the status code answered.",
		ConstLabels: prometheus.Labels{"service": cfg.Service},
	}, []string{"code"})
	reg.MustRegister(p.requests)
	p.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})

	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 32
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: backendOf(pr.In.Context())})
			pr.SetXForwarded()
		},
		Transport: transport,
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Set("X-Micado-Backend", backendOf(resp.Request.Context()))
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			b := backendOf(r.Context())
			w.Header().Set("X-Micado-Backend", b)
			status := http.StatusBadGateway
			if errors.Is(err, context.DeadlineExceeded) {
				status = http.StatusGatewayTimeout
			}
			http.Error(w, fmt.Sprintf("backend %s of %s: %v", b, cfg.Upstream, err), status)
		},
	}
	return p
}

func backendOf(ctx context.Context) string {
	b, _ := ctx.Value(backendKey{}).(string)
	return b
}

// backends returns the current backends; the caller must not change the slice.
func (p *proxy) backends() []string { return p.state.Load().backends }

// ServeHTTP answers /health and /backends itself and proxies everything else.
func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		switch r.URL.Path {
		case "/health":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprint(w, "ok")
			return
		case "/backends":
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(p.backends())
			return
		case "/metrics":
			p.metrics.ServeHTTP(w, r)
			return
		}
	}

	sw := &statusWriter{ResponseWriter: w}
	defer func() { p.requests.WithLabelValues(strconv.Itoa(sw.status())).Inc() }()
	w = sw
	st := p.state.Load()
	if len(st.backends) == 0 {
		http.Error(w, p.noBackendReason(st), http.StatusServiceUnavailable)
		return
	}
	b := st.backends[(p.next.Add(1)-1)%uint64(len(st.backends))]
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), backendKey{}, b)))
}

// statusWriter records the status code of an answer. Unwrap lets
// http.ResponseController (which the reverse proxy uses to flush and to
// hijack upgraded connections) reach the real writer.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// status is the code answered; 200 when the handler wrote nothing.
func (s *statusWriter) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}

// noBackendReason explains in one line why st holds no backend.
func (p *proxy) noBackendReason(st *state) string {
	switch {
	case st.err != nil:
		return fmt.Sprintf("no backend for %s: %v", p.cfg.Upstream, st.err)
	case st.source == "consul":
		return fmt.Sprintf("no backend for %s: no passing instance in consul", p.cfg.Upstream)
	case p.cfg.ConsulURL == "":
		return fmt.Sprintf("no backend for %s: CONSUL_HTTP_ADDR and %s are unset", p.cfg.Upstream, p.cfg.StaticVar)
	default:
		return fmt.Sprintf("no backend for %s: consul has not answered yet", p.cfg.Upstream)
	}
}

// consulEntry is the part of an entry of /v1/health/service/<name> we use.
type consulEntry struct {
	Node struct {
		Address string
	}
	Service struct {
		Address string
		Port    int
	}
}

// fetch asks Consul for the passing instances of the upstream service.
func (p *proxy) fetch(ctx context.Context) ([]string, error) {
	u := p.cfg.ConsulURL + "/v1/health/service/" + url.PathEscape(p.cfg.Upstream) + "?passing=true"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	if p.cfg.ConsulToken != "" {
		req.Header.Set("X-Consul-Token", p.cfg.ConsulToken)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return nil, fmt.Errorf("consul: %s: %s", resp.Status, strings.Join(strings.Fields(string(msg)), " "))
	}
	var entries []consulEntry
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&entries); err != nil {
		return nil, fmt.Errorf("consul: decoding health of %s: %w", p.cfg.Upstream, err)
	}
	addrs := make([]string, 0, len(entries))
	for _, e := range entries {
		host := e.Service.Address
		if host == "" {
			host = e.Node.Address
		}
		if host == "" || e.Service.Port <= 0 {
			continue
		}
		addrs = append(addrs, net.JoinHostPort(host, strconv.Itoa(e.Service.Port)))
	}
	return normalize(addrs), nil
}

// refresh replaces the backends with Consul's passing instances. On failure
// it keeps the last good list and returns the error. Without Consul it does
// nothing.
func (p *proxy) refresh(ctx context.Context) error {
	if p.cfg.ConsulURL == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, consulTimeout)
	defer cancel()
	addrs, err := p.fetch(ctx)

	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.state.Load()
	if err != nil {
		if old.err == nil {
			log.Printf("%v; keeping %d backends for %s", err, len(old.backends), p.cfg.Upstream)
		}
		p.state.Store(&state{backends: old.backends, source: old.source, err: err})
		return err
	}
	switch {
	case !slices.Equal(old.backends, addrs):
		log.Printf("backends for %s from consul: %s", p.cfg.Upstream, describe(addrs))
	case old.err != nil:
		log.Printf("consul answers again; backends for %s unchanged", p.cfg.Upstream)
	}
	p.state.Store(&state{backends: addrs, source: "consul"})
	return nil
}

// run refreshes the backends every cfg.Refresh until ctx is done.
func (p *proxy) run(ctx context.Context) {
	if p.cfg.ConsulURL == "" {
		return
	}
	t := time.NewTicker(p.cfg.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = p.refresh(ctx)
		}
	}
}

func describe(addrs []string) string {
	if len(addrs) == 0 {
		return "none"
	}
	return strings.Join(addrs, ", ")
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("demo-proxy: ")

	cfg, err := loadConfig(os.Getenv)
	if err != nil {
		log.Fatal(err)
	}
	p := newProxy(cfg)
	srv := &http.Server{
		Addr:              ":" + cfg.Port,
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	consul := "consul unset"
	if cfg.ConsulURL != "" {
		consul = fmt.Sprintf("consul %s every %s", cfg.ConsulURL, cfg.Refresh)
		switch {
		case cfg.TokenFile != "":
			consul += ", token from " + cfg.TokenFile
		case cfg.ConsulToken != "":
			consul += ", token from CONSUL_HTTP_TOKEN"
		}
	}
	log.Printf("listening on %s, proxying to %s (%s; %s: %s)",
		srv.Addr, cfg.Upstream, consul, cfg.StaticVar, describe(cfg.Static))

	// Ask Consul once before accepting requests so the first ones find backends.
	_ = p.refresh(ctx)
	go p.run(ctx)

	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()

	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			log.Fatalf("shutdown: %v", err)
		}
	}
}
