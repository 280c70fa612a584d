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
	"time"

	"github.com/micado-scale/micado/manager"
)

// clusterState is what `micado up` saves so that later commands find the
// cluster: MICADO_HOME/<cluster>/cluster.json (mode 0600).
type clusterState struct {
	Name      string    `json:"name"`
	Manager   string    `json:"manager"`           // http://127.0.0.1:PORT, or https:// with TLS
	Consul    string    `json:"consul"`            // http://127.0.0.1:PORT
	ConsulDNS string    `json:"consul_dns"`        // 127.0.0.1:PORT
	Network   string    `json:"network"`           // Docker network name
	Gateway   string    `json:"gateway"`           // the network's gateway: where published ports are reached
	TokenFile string    `json:"token_file"`        // file holding the API token
	KeyFile   string    `json:"key_file"`          // file holding the cluster key
	CAFile    string    `json:"ca_file,omitempty"` // CA certificate that verifies the manager's (TLS)
	CreatedAt time.Time `json:"created_at"`
	Workers   int       `json:"workers"`
	WorkerMem int64     `json:"worker_memory"`
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

// client talks to the manager API.
type client struct {
	base  string
	token string
	http  *http.Client
}

// newClient finds the manager: MICADO_ADDR (and MICADO_TOKEN) if set,
// otherwise what `micado up` saved for the cluster. An https manager is
// verified with the CA of --ca-cert (env MICADO_CA_CERT), else the one
// `micado up` saved, else the system's roots.
func newClient(g *globals) (*client, error) {
	c := &client{}
	if addr := os.Getenv("MICADO_ADDR"); addr != "" {
		if !strings.Contains(addr, "://") {
			addr = "http://" + addr
		}
		c.base = strings.TrimRight(addr, "/")
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
	c.base = st.Manager
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

func (c *client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return userErr("bad manager address %q: %v", c.base, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil && certErr(err) {
		return userErr("the micado manager at %s presented a certificate this client does not trust: %v (give the CA that signed it with --ca-cert or MICADO_CA_CERT)", c.base, rootCause(err))
	}
	if err != nil {
		return userErr("cannot reach the micado manager at %s: %v (is the cluster up? run `micado up`, or set MICADO_ADDR)", c.base, rootCause(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return userErr("reading the manager's answer: %v", err)
	}
	if resp.StatusCode == http.StatusBadRequest && strings.HasPrefix(c.base, "http://") && bytes.Contains(b, []byte("HTTP request to an HTTPS server")) {
		return userErr("the micado manager at %s serves HTTPS only: use https://%s", c.base, strings.TrimPrefix(c.base, "http://"))
	}
	if resp.StatusCode >= 300 {
		var e manager.ErrorBody
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			return userErr("the manager answered %s", resp.Status)
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

func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}
