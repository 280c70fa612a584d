package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/micado-scale/micado/manager"
)

// clusterState is what `micado up` saves so that later commands find the
// cluster: MICADO_HOME/<cluster>/cluster.json (mode 0600).
type clusterState struct {
	Name      string   `json:"name"`
	Manager   string   `json:"manager"`            // http://127.0.0.1:PORT, or https:// with TLS: the first manager
	Managers  []string `json:"managers,omitempty"` // every manager's URL (micado up --managers N)
	Consul    string   `json:"consul"`             // http://127.0.0.1:PORT
	ConsulDNS string   `json:"consul_dns"`         // 127.0.0.1:PORT
	Network   string   `json:"network"`            // Docker network of the control plane
	// AppsNetwork is the Docker network of the workloads (containers
	// the workers run).
	AppsNetwork string `json:"apps_network,omitempty"`
	Gateway     string `json:"gateway"`    // the workload network's gateway: where published ports are reached
	TokenFile   string `json:"token_file"` // file holding the API token
	KeyFile     string `json:"key_file"`   // file holding the cluster key
	// Consul's ACL tokens: the management token (the operator's, never
	// given to a container), the managers' and the discovery token
	// (read-only service discovery).
	ConsulTokenFile          string    `json:"consul_token_file,omitempty"`
	ConsulManagerTokenFile   string    `json:"consul_manager_token_file,omitempty"`
	ConsulDiscoveryTokenFile string    `json:"consul_discovery_token_file,omitempty"`
	CAFile                   string    `json:"ca_file,omitempty"` // CA certificate that verifies the manager's (TLS)
	CreatedAt                time.Time `json:"created_at"`
	Workers                  int       `json:"workers"`
	WorkerMem                int64     `json:"worker_memory"`
}

func stateDir(g *globals) string { return filepath.Join(g.home, g.cluster) }

func loadState(g *globals) (*clusterState, error) {
	b, err := os.ReadFile(filepath.Join(stateDir(g), "cluster.json"))
	if err != nil {
		return nil, err
	}
	var s clusterState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("cluster state %s is damaged: %w", filepath.Join(stateDir(g), "cluster.json"), err)
	}
	return &s, nil
}

// client talks to the manager API. It knows every manager's address and
// reaches whichever answers: a standby forwards to the leader, and while
// the lead changes hands (a standby answers 503 with Retry-After, or a
// manager does not answer at all) it tries the others and waits, up to
// failoverWait, so a user notices a failover only as a short wait.
type client struct {
	base  string   // the manager that answered last
	bases []string // every manager
	token string
	http  *http.Client
	// failoverWait bounds how long a call waits for some manager to lead.
	failoverWait time.Duration
}

// defaultFailoverWait covers a leader dying unseen by gossip: its session
// expires within two TTLs (20 s), and a standby takes the lock at once.
const defaultFailoverWait = 30 * time.Second

// splitAddrs reads a comma-separated list of manager addresses.
func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if !strings.Contains(a, "://") {
			a = "http://" + a
		}
		out = append(out, strings.TrimRight(a, "/"))
	}
	return out
}

// newClient finds the manager: MICADO_ADDR (and MICADO_TOKEN) if set,
// otherwise what `micado up` saved for the cluster. An https manager is
// verified with the CA of --ca-cert (env MICADO_CA_CERT), else the one
// `micado up` saved, else the system's roots.
func newClient(g *globals) (*client, error) {
	c := &client{failoverWait: defaultFailoverWait}
	if addrs := splitAddrs(os.Getenv("MICADO_ADDR")); len(addrs) > 0 {
		c.base, c.bases = addrs[0], addrs
		c.token = os.Getenv("MICADO_TOKEN")
		hc, err := newHTTPClient(g.caCert, 60*time.Second)
		if err != nil {
			return nil, err
		}
		c.http = hc
		return c, nil
	}
	st, err := loadState(g)
	if errors.Is(err, os.ErrNotExist) {
		return nil, userErr("no cluster %q is known here: run `micado up`, or set MICADO_ADDR to the manager's address", g.cluster)
	}
	if err != nil {
		return nil, err
	}
	c.base, c.bases = st.Manager, st.Managers
	if len(c.bases) == 0 {
		c.bases = []string{st.Manager}
	}
	hc, err := newHTTPClient(cmp.Or(g.caCert, st.CAFile), 60*time.Second)
	if err != nil {
		return nil, err
	}
	c.http = hc
	if t := os.Getenv("MICADO_TOKEN"); t != "" {
		c.token = t
	} else if st.TokenFile != "" {
		b, err := os.ReadFile(st.TokenFile)
		if err != nil {
			return nil, userErr("cannot read the API token: %v", err)
		}
		c.token = strings.TrimSpace(string(b))
	}
	return c, nil
}

// newHTTPClient returns a client for the manager API that speaks TLS 1.2
// or newer and, when caFile is given, trusts only that CA (PEM).
func newHTTPClient(caFile string, timeout time.Duration) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := loadCA(caFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &http.Client{Timeout: timeout, Transport: tr}, nil
}

// loadCA reads a PEM file of one or more CA certificates.
func loadCA(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, userErr("cannot read the CA certificate %s: %v", file, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, userErr("the CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// certErr reports whether err is a failure to verify the server's
// certificate.
func certErr(err error) bool {
	var (
		unknown  x509.UnknownAuthorityError
		host     x509.HostnameError
		invalid  x509.CertificateInvalidError
		verifErr *tls.CertificateVerificationError
	)
	return errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid) || errors.As(err, &verifErr)
}

// errTryAnother says a manager cannot answer now (it does not answer, or
// it stands by without a leader to forward to): another may.
type errTryAnother struct{ err error }

func (e errTryAnother) Error() string { return e.err.Error() }

// do calls the API on whichever manager answers, riding out a failover.
func (c *client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	bases := c.bases
	if len(bases) == 0 {
		bases = []string{c.base}
	}
	wait := c.failoverWait
	deadline := time.Now().Add(wait)
	first := c.base
	for {
		var last error
		// The manager that answered last first, then the others.
		order := append([]string{first}, bases...)
		tried := map[string]bool{}
		for _, base := range order {
			if tried[base] {
				continue
			}
			tried[base] = true
			err := c.doOn(ctx, base, method, path, body, out)
			var again errTryAnother
			if !errors.As(err, &again) {
				if err == nil {
					c.base = base
				}
				return err
			}
			last = again.err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return last
		}
		select {
		case <-ctx.Done():
			return last
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// doOn calls the API of the manager at base.
func (c *client) doOn(ctx context.Context, base, method, path string, in []byte, out any) error {
	var body io.Reader
	if in != nil {
		body = bytes.NewReader(in)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return userErr("bad manager address %q: %v", base, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil && certErr(err) {
		return userErr("the micado manager at %s presented a certificate this client does not trust: %v (give the CA that signed it with --ca-cert or MICADO_CA_CERT)", base, rootCause(err))
	}
	if err != nil {
		err = userErr("cannot reach the micado manager at %s: %v (is the cluster up? run `micado up`, or set MICADO_ADDR)", base, rootCause(err))
		if isConnRefused(err) || method == http.MethodGet {
			// Never reached (or only read): safe to ask another.
			return errTryAnother{err}
		}
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return userErr("reading the manager's answer: %v", err)
	}
	if resp.StatusCode == http.StatusBadRequest && strings.HasPrefix(base, "http://") && bytes.Contains(b, []byte("HTTP request to an HTTPS server")) {
		return userErr("the micado manager at %s serves HTTPS only: use https://%s", base, strings.TrimPrefix(base, "http://"))
	}
	if resp.StatusCode >= 300 {
		var e manager.ErrorBody
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			return userErr("the manager answered %s", resp.Status)
		}
		if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "" {
			return errTryAnother{&apiError{status: resp.StatusCode, msg: e.Error}}
		}
		return &apiError{status: resp.StatusCode, msg: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return userErr("the manager's answer is not what this micado expects: %v", err)
		}
	}
	return nil
}

type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func (c *client) get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, nil, out)
}

// isConnRefused reports whether err is a refused connection: the request
// never reached a manager.
func isConnRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "connection refused")
}

func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}
