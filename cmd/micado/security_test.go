package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/micado-scale/micado/internal/testtls"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// runMicado runs the CLI with extra environment (and MICADO_ADDR,
// MICADO_TOKEN and MICADO_CA_CERT cleared unless env sets them).
func runMicado(t *testing.T, env []string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, micadoBin, args...)
	cmd.Env = append(append(os.Environ(), "MICADO_ADDR=", "MICADO_TOKEN=", "MICADO_CA_CERT="), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

// TestUpRefusesBadTLSFiles: `micado up` checks the certificate, key and CA
// before it creates anything, and names the file at fault.
func TestUpRefusesBadTLSFiles(t *testing.T) {
	dir := t.TempDir()
	ca := testtls.NewCA(t, dir, "ca")
	good := ca.Server(t, dir, "good", "127.0.0.1")
	other := ca.Server(t, dir, "other", "127.0.0.1")
	wrongHost := ca.Server(t, dir, "wronghost", "10.1.2.3", "manager.example.com")
	missing := filepath.Join(dir, "missing.pem")
	notPEM := filepath.Join(dir, "notpem.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	rnd := make([]byte, 4)
	_, _ = rand.Read(rnd)
	name := "tlsbad-" + hex.EncodeToString(rnd)
	// Should a check fail to refuse, remove whatever `up` started.
	t.Cleanup(func() {
		if dc, err := dockerClient(); err == nil {
			_, _ = teardown(context.Background(), dc, name)
			dc.Close()
		}
	})
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--tls-cert", good.CertFile}, []string{"--tls-cert and --tls-key together"}},
		{[]string{"--tls-cert", missing, "--tls-key", good.KeyFile, "--ca-cert", ca.File}, []string{"cannot read the TLS certificate", missing}},
		{[]string{"--tls-cert", good.CertFile, "--tls-key", missing, "--ca-cert", ca.File}, []string{"cannot read the TLS key", missing}},
		{[]string{"--tls-cert", good.CertFile, "--tls-key", other.KeyFile, "--ca-cert", ca.File}, []string{good.CertFile, other.KeyFile, "not a usable pair"}},
		{[]string{"--tls-cert", good.CertFile, "--tls-key", good.KeyFile, "--ca-cert", missing}, []string{"cannot read the CA certificate", missing}},
		{[]string{"--tls-cert", good.CertFile, "--tls-key", good.KeyFile, "--ca-cert", notPEM}, []string{notPEM, "holds no PEM certificate"}},
		{[]string{"--tls-cert", good.CertFile, "--tls-key", good.KeyFile}, []string{good.CertFile, "cannot be verified for 127.0.0.1 under the system's roots"}},
		{[]string{"--tls-cert", wrongHost.CertFile, "--tls-key", wrongHost.KeyFile, "--ca-cert", ca.File}, []string{wrongHost.CertFile, "cannot be verified for 127.0.0.1", "valid for 10.1.2.3"}},
	} {
		args := append([]string{"up", "--home", home, "--cluster", name, "--workers", "0", "--timeout", "10s"}, tc.args...)
		out, errOut, err := runMicado(t, nil, args...)
		if err == nil {
			t.Errorf("micado %v succeeded: %s", tc.args, out)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("micado %v: stderr %q lacks %q", tc.args, errOut, w)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(home, name)); !os.IsNotExist(err) {
		t.Errorf("a refused up left state behind: %v", err)
	}
}

// TestSecretsStayHiddenAndTLS runs one small cluster whose manager serves
// HTTPS with a certificate made here, scales out once through the docker
// provider, and checks that the API token, the cluster key, the agent
// token derived from it and the TLS private key appear in no container's
// `docker inspect`, in no daemon's log and in no --json output; and that
// the CLI reaches the HTTPS manager only when it trusts the CA.
func TestSecretsStayHiddenAndTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testtls.NewCA(t, dir, "ca")
	pair := ca.Server(t, dir, "manager", "127.0.0.1", "localhost")
	c := newTestCluster(t, "--workers", "1", "--roles", "proxy", "--worker-memory", "256MiB", "--instance-types", "small=512MiB",
		"--consolidate-schedule", "off", "--tls-cert", pair.CertFile, "--tls-key", pair.KeyFile, "--ca-cert", ca.File)
	st := c.state()
	ctx := context.Background()

	tokenB, err := os.ReadFile(st.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	keyB, err := os.ReadFile(st.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	token, keyB64 := strings.TrimSpace(string(tokenB)), strings.TrimSpace(string(keyB))
	rawKey, err := base64.StdEncoding.DecodeString(keyB64)
	if err != nil {
		t.Fatal(err)
	}
	// The TLS key's PEM body lines (each 64 base64 characters).
	var tlsKeyLines []string
	for _, l := range strings.Split(string(pair.KeyPEM), "\n") {
		if len(l) >= 32 && !strings.HasPrefix(l, "-----") {
			tlsKeyLines = append(tlsKeyLines, l)
		}
	}
	secrets := map[string]string{
		"API token": token, "cluster key": keyB64, "cluster key (hex)": hex.EncodeToString(rawKey),
		"agent token": wire.AgentToken(rawKey),
	}
	for i, l := range tlsKeyLines {
		secrets["TLS key line "+string(rune('1'+i))] = l
	}
	// Consul's tokens and gossip key, which micado up made.
	for name, f := range map[string]string{"Consul management token": st.ConsulTokenFile,
		"Consul manager token": st.ConsulManagerTokenFile, "Consul discovery token": st.ConsulDiscoveryTokenFile} {
		b, err := os.ReadFile(f)
		if err != nil || strings.TrimSpace(string(b)) == "" {
			t.Fatalf("%s file %q: %v", name, f, err)
		}
		secrets[name] = strings.TrimSpace(string(b))
	}
	var consulCfg struct {
		Encrypt string `json:"encrypt"`
	}
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(st.TokenFile), "consul.json")); err != nil || json.Unmarshal(b, &consulCfg) != nil || consulCfg.Encrypt == "" {
		t.Fatalf("consul.json has no gossip key: %v", err)
	}
	secrets["Consul gossip key"] = consulCfg.Encrypt
	leaks := func(where, text string) {
		t.Helper()
		for name, s := range secrets {
			if s != "" && strings.Contains(text, s) {
				t.Errorf("%s shows the %s", where, name)
			}
		}
	}

	t.Run("up saved an https address and the CA", func(t *testing.T) {
		if !strings.HasPrefix(st.Manager, "https://127.0.0.1:") || st.CAFile != ca.File {
			t.Fatalf("cluster.json: manager %q ca_file %q, want https and %q", st.Manager, st.CAFile, ca.File)
		}
	})

	var jsonOuts []string
	t.Run("an application that needs a new worker deploys over HTTPS", func(t *testing.T) {
		app := filepath.Join(dir, "sec.yaml")
		def := "application: sec\nservices:\n  web:\n    image: micado/demo-web\n    role: proxy\n    memory: 300MiB\n    ports:\n      - port: 8080\n"
		if err := os.WriteFile(app, []byte(def), 0o600); err != nil {
			t.Fatal(err)
		}
		jsonOuts = append(jsonOuts, c.mustMicado("deploy", app, "--json"))
		if n := len(c.workerContainers()); n != 2 {
			t.Fatalf("%d worker containers, want w-1 and one made by the docker provider", n)
		}
		for _, args := range [][]string{{"ps", "--json"}, {"nodes", "--json"}, {"status", "sec", "--json"}, {"apps", "--json"},
			{"launch", "micado/demo-web", "--role", "proxy", "--name", "small", "--memory", "16MiB", "--json"},
			{"consolidate", "--dry-run", "--json"}, {"version"}} {
			jsonOuts = append(jsonOuts, c.mustMicado(args...))
		}
		var ns []manager.MemberView
		if err := json.Unmarshal([]byte(jsonOuts[2]), &ns); err != nil || len(ns) != 3 || ns[2].Kind != wire.KindManager {
			t.Fatalf("nodes --json (two workers, then the manager): %v %s", err, jsonOuts[2])
		}
		for _, n := range ns {
			if n.Status != "alive" {
				t.Errorf("node %s is %s", n.Name, n.Status)
			}
		}
	})

	t.Run("no secret in --json output", func(t *testing.T) {
		if len(jsonOuts) < 4 {
			t.Fatal("the outputs were not collected")
		}
		for i, out := range jsonOuts {
			leaks("output "+string(rune('0'+i)), out)
		}
	})

	cs, err := c.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: clusterFilter(c.name)})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("no secret in docker inspect", func(t *testing.T) {
		components := map[string]int{}
		for _, x := range cs {
			comp := x.Labels[wire.LabelComponent]
			components[comp]++
			_, raw, err := c.dc.ContainerInspectWithRaw(ctx, x.ID, false)
			if err != nil {
				t.Fatal(err)
			}
			where := "docker inspect " + strings.TrimPrefix(x.Names[0], "/")
			leaks(where, string(raw))
			if comp == "manager" || comp == "worker" {
				// The key reaches the daemon as a file named on its
				// command line, which inspect shows.
				if !bytes.Contains(raw, []byte(`"--key-file","/etc/micado/cluster.key"`)) {
					t.Errorf("%s: the daemon does not read --key-file", where)
				}
				if bytes.Contains(raw, []byte("MICADO_CLUSTER_KEY")) || bytes.Contains(raw, []byte("MICADO_API_TOKEN")) {
					t.Errorf("%s: a secret variable is in the environment", where)
				}
			}
			if comp == "manager" {
				var ci container.InspectResponse
				_ = json.Unmarshal(raw, &ci)
				ro := map[string]bool{}
				for _, m := range ci.Mounts {
					ro[m.Destination] = !m.RW
				}
				for _, p := range []string{keyMountPath, tokenMountPath, tlsCertMountPath, tlsKeyMountPath} {
					if !ro[p] {
						t.Errorf("manager: %s is not mounted read-only: %+v", p, ci.Mounts)
					}
				}
			}
		}
		if components["manager"] != 1 || components["worker"] != 2 || components["consul"] != 1 || components["app"] < 2 {
			t.Fatalf("cluster containers by component: %v", components)
		}
	})

	t.Run("no secret in the daemons' logs", func(t *testing.T) {
		seen := 0
		for _, x := range cs {
			comp := x.Labels[wire.LabelComponent]
			if comp != "manager" && comp != "worker" && comp != "consul" {
				continue
			}
			rc, err := c.dc.ContainerLogs(ctx, x.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			_, _ = b.ReadFrom(rc)
			rc.Close()
			name := strings.TrimPrefix(x.Names[0], "/")
			leaks("docker logs "+name, b.String())
			if strings.Contains(b.String(), `"msg":"manager started"`) || strings.Contains(b.String(), `"msg":"worker agent started"`) {
				seen++
			}
		}
		if seen != 3 {
			t.Fatalf("%d daemon logs show a start, want 3 (manager and two workers): the logs were not read", seen)
		}
	})

	t.Run("the CLI trusts the manager only with its CA", func(t *testing.T) {
		env := []string{"MICADO_ADDR=" + st.Manager, "MICADO_TOKEN=" + token}
		other := testtls.NewCA(t, dir, "other-ca")
		if out, errOut, err := runMicado(t, env, "nodes", "--json", "--ca-cert", ca.File); err != nil || !strings.Contains(out, `"w-1"`) {
			t.Errorf("--ca-cert: %v %s %s", err, out, errOut)
		}
		if out, errOut, err := runMicado(t, append(env, "MICADO_CA_CERT="+ca.File), "status", "sec", "--json"); err != nil || !strings.Contains(out, `"sec"`) {
			t.Errorf("MICADO_CA_CERT: %v %s %s", err, out, errOut)
		}
		for _, tc := range []struct {
			env  []string
			args []string
			want string
		}{
			{env, []string{"nodes"}, "presented a certificate this client does not trust"},
			{env, []string{"nodes", "--ca-cert", other.File}, "presented a certificate this client does not trust"},
			{append(env, "MICADO_CA_CERT="+other.File), []string{"nodes"}, "presented a certificate this client does not trust"},
			{[]string{"MICADO_ADDR=" + strings.Replace(st.Manager, "https://", "http://", 1), "MICADO_TOKEN=" + token}, []string{"nodes", "--ca-cert", ca.File}, "serves HTTPS only"},
			{env, []string{"nodes", "--ca-cert", filepath.Join(dir, "nope.pem")}, "cannot read the CA certificate"},
		} {
			out, errOut, err := runMicado(t, tc.env, tc.args...)
			if err == nil || !strings.Contains(errOut, tc.want) || strings.Contains(out, "w-1") {
				t.Errorf("micado %v: %v, stdout %q stderr %q; want a failure saying %q", tc.args, err, out, errOut, tc.want)
			}
		}
		// The saved CA is what a plain `micado nodes` uses; another one
		// given on the command line replaces it.
		if _, errOut, err := c.micado("nodes", "--ca-cert", other.File); err == nil || !strings.Contains(errOut, "does not trust") {
			t.Errorf("--ca-cert overriding the saved CA: %v %s", err, errOut)
		}
	})
}
