package daemon

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/internal/testconsul"
	"github.com/micado-scale/micado/internal/testtls"
	. "github.com/micado-scale/micado/manager"
)

// TestManagerSpeaksTLSToConsul runs a real Consul that serves HTTPS only
// and asks clients for a certificate: a manager given https:// and
// Consul's environment variables (CONSUL_CACERT, CONSUL_CLIENT_CERT,
// CONSUL_CLIENT_KEY) starts, passes its access check and writes its
// state; without the CA, without a client certificate, or speaking plain
// HTTP, it refuses to start at once with a message that names the
// problem and the variable to set.
func TestManagerSpeaksTLSToConsul(t *testing.T) {
	for _, v := range []string{"CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_SSL", "CONSUL_CACERT", "CONSUL_CAPATH",
		"CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY", "CONSUL_TLS_SERVER_NAME", "CONSUL_HTTP_SSL_VERIFY", "CONSUL_HTTP_ADDR"} {
		t.Setenv(v, "")
	}
	dir := t.TempDir()
	ca := testtls.NewCA(t, dir, "consul-ca")
	srv := ca.Server(t, dir, "consul", "127.0.0.1", "localhost")
	cli := ca.Client(t, dir, "manager")
	agent := testconsul.StartWithTLS(t,
		testconsul.TLSFiles{CAFile: ca.File, CertFile: srv.CertFile, KeyFile: srv.KeyFile},
		testconsul.TLSFiles{CAFile: ca.File, CertFile: cli.CertFile, KeyFile: cli.KeyFile})

	run := func(t *testing.T, consulAddr string, env map[string]string) (*aclManager, error) {
		for k, v := range env {
			if k != "expect" {
				t.Setenv(k, v)
			}
		}
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		cfg := Config{
			Cluster: "tlsc", ClusterKey: key, ConsulAddr: consulAddr,
			BindAddr: "127.0.0.1", AdvertiseAddr: "127.0.0.1", BindPort: freePort(t),
			APIAddr: "127.0.0.1:" + strconv.Itoa(freePort(t)), ConsulWait: 20 * time.Second,
			ReconcileInterval: time.Second, ConsolidateSchedule: "off",
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
		m := &aclManager{base: "http://" + cfg.APIAddr, done: make(chan error, 1)}
		ctx, cancel := context.WithCancel(context.Background())
		m.cancel = cancel
		start := time.Now()
		go func() { m.done <- Run(ctx, cfg) }()
		t.Cleanup(func() {
			cancel()
			select {
			case <-m.done:
			case <-time.After(30 * time.Second):
			}
		})
		if env["expect"] == "fail" {
			select {
			case err := <-m.done:
				m.done <- err
				if time.Since(start) > 10*time.Second {
					t.Errorf("the manager took %s to give up: a certificate problem does not mend by waiting", time.Since(start))
				}
				return m, err
			case <-time.After(30 * time.Second):
				t.Fatal("the manager started")
			}
		}
		return m, m.waitUp(t)
	}
	good := map[string]string{"CONSUL_CACERT": ca.File, "CONSUL_CLIENT_CERT": cli.CertFile, "CONSUL_CLIENT_KEY": cli.KeyFile}

	t.Run("trusted", func(t *testing.T) {
		if _, err := run(t, "https://"+agent.Addr, good); err != nil {
			t.Fatal(err)
		}
		cl, err := api.NewClient(&api.Config{Address: agent.Addr, Scheme: "https",
			TLSConfig: api.TLSConfig{CAFile: ca.File, CertFile: cli.CertFile, KeyFile: cli.KeyFile}})
		if err != nil {
			t.Fatal(err)
		}
		eventuallyACL(t, 20*time.Second, "the manager writes its state in Consul over TLS", func() bool {
			keys, _, err := cl.KV().Keys("micado/tlsc/", "", nil)
			return err == nil && len(keys) > 0
		})
	})
	t.Run("CONSUL_HTTP_SSL", func(t *testing.T) {
		env := map[string]string{"CONSUL_HTTP_SSL": "true"}
		for k, v := range good {
			env[k] = v
		}
		if _, err := run(t, agent.Addr, env); err != nil {
			t.Fatal(err)
		}
	})
	for _, tc := range []struct {
		name, addr string
		env        map[string]string
		want       []string
	}{
		{"no CA", "https://" + agent.Addr, map[string]string{"CONSUL_CLIENT_CERT": cli.CertFile, "CONSUL_CLIENT_KEY": cli.KeyFile},
			[]string{"Consul's certificate is not trusted", "CONSUL_CACERT", "certificate signed by unknown authority"}},
		{"no client certificate", "https://" + agent.Addr, map[string]string{"CONSUL_CACERT": ca.File},
			[]string{"Consul refused the manager's client certificate", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"}},
		{"plain HTTP", agent.Addr, good,
			[]string{"Consul speaks TLS at this address", "https://", "CONSUL_CACERT"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"expect": "fail"}
			for k, v := range tc.env {
				env[k] = v
			}
			_, err := run(t, tc.addr, env)
			if err == nil {
				t.Fatal("Run returned no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			t.Logf("Run: %v", err)
		})
	}
}
