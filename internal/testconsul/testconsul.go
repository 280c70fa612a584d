// Package testconsul runs real Consul agents for tests: the binary that
// `make consul` builds into .cache/bin/consul (or MICADO_CONSUL_BIN).
// A test that needs Consul fails, saying how to get it, when the binary
// is missing; it never skips.
package testconsul

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/internal/testnet"
)

// Binary finds the Consul agent that `make consul` builds.
func Binary(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv("MICADO_CONSUL_BIN"); p != "" {
		return p
	}
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("cannot find the module root")
		}
		dir = parent
	}
	p := filepath.Join(dir, ".cache", "bin", "consul")
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("the consul binary is missing at %s: run `make consul` (or `make test`, which builds it)", p)
	}
	return p
}

// Agent is a Consul dev agent on loopback.
type Agent struct {
	Addr string // HTTP host:port
	cmd  *exec.Cmd
	out  *testnet.LogBuffer
}

// Kill stops the agent at once.
func (a *Agent) Kill() { _ = a.cmd.Process.Kill(); _ = a.cmd.Wait() }

// Log returns what the agent printed.
func (a *Agent) Log() string { return a.out.String() }

// Start runs a Consul dev agent on loopback for one test (stopped at its
// end) and waits until it has a leader.
func Start(tb testing.TB) *Agent { return StartHCL(tb, "", "") }

// StartWithACL runs a dev agent with ACLs on, every request without a
// token denied, and mgmt as the initial management token (also the
// agent's own token, so it keeps its node in the catalog).
func StartWithACL(tb testing.TB, mgmt string) *Agent {
	hcl := fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens {
    initial_management = %q
    agent = %q
  }
}`, mgmt, mgmt)
	return StartHCL(tb, hcl, mgmt)
}

// TLSFiles are the PEM files of a Consul agent's TLS, or of a client's.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
}

// StartWithTLS runs a dev agent that serves its HTTP API over HTTPS only
// (Addr is then an HTTPS host:port), with the server certificate in srv,
// trusting srv.CAFile and asking every client for a certificate that CA
// signed (verify_incoming). client is what the readiness check presents.
func StartWithTLS(tb testing.TB, srv, client TLSFiles) *Agent {
	tb.Helper()
	hcl := fmt.Sprintf(`tls {
  defaults {
    ca_file = %q
    cert_file = %q
    key_file = %q
    verify_incoming = true
  }
}`, srv.CAFile, srv.CertFile, srv.KeyFile)
	return start(tb, hcl, "", &client)
}

// StartHCL runs a dev agent with extra configuration; token is used to
// check that it is ready.
func StartHCL(tb testing.TB, hcl, token string) *Agent {
	tb.Helper()
	return start(tb, hcl, token, nil)
}

func start(tb testing.TB, hcl, token string, tlsClient *TLSFiles) *Agent {
	tb.Helper()
	httpPort := testnet.FreePort(tb)
	listeners := fmt.Sprintf("http = %d", httpPort)
	if tlsClient != nil {
		listeners = fmt.Sprintf("http = -1, https = %d", httpPort)
	}
	ports := fmt.Sprintf(`ports { %s, dns = -1, grpc = -1, grpc_tls = -1, serf_lan = %d, serf_wan = %d, server = %d }`,
		listeners, testnet.FreePort(tb), testnet.FreePort(tb), testnet.FreePort(tb))
	cmd := exec.Command(Binary(tb), "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", "-log-level=error", "-hcl", ports+"\n"+hcl)
	out := &testnet.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start consul: %v", err)
	}
	a := &Agent{Addr: "127.0.0.1:" + strconv.Itoa(httpPort), cmd: cmd, out: out}
	tb.Cleanup(a.Kill)
	ccfg := &api.Config{Address: a.Addr, Token: token}
	if tlsClient != nil {
		ccfg.Scheme = "https"
		ccfg.TLSConfig = api.TLSConfig{CAFile: tlsClient.CAFile, CertFile: tlsClient.CertFile, KeyFile: tlsClient.KeyFile}
	}
	cl, err := api.NewClient(ccfg)
	if err != nil {
		tb.Fatalf("consul client: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if l, err := cl.Status().Leader(); err == nil && l != "" {
			if _, _, err := cl.KV().Get("probe", nil); err == nil {
				return a
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("consul dev agent did not come up in 30s:\n%s", out.String())
	return nil
}

// Client returns an API client of the agent.
func (a *Agent) Client(tb testing.TB, token string) *api.Client {
	tb.Helper()
	cl, err := api.NewClient(&api.Config{Address: a.Addr, Token: token})
	if err != nil {
		tb.Fatal(err)
	}
	return cl
}
