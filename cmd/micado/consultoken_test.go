package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/micado-scale/micado/internal/testnet"

	consul "github.com/hashicorp/consul/api"
)

// loopbackPort returns a loopback port free for both TCP and UDP.
func loopbackPort(t *testing.T) int {
	t.Helper()
	return testnet.FreePort(t)
}

// aclConsul runs the Consul agent `make consul` builds, in dev mode on
// loopback, with ACLs on, default_policy deny and mgmt as the initial
// management token.
func aclConsul(t *testing.T, mgmt string) string {
	t.Helper()
	bin := os.Getenv("MICADO_CONSUL_BIN")
	if bin == "" {
		wd, _ := os.Getwd()
		bin = filepath.Join(wd, "..", "..", ".cache", "bin", "consul")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the consul binary is missing at %s: run `make consul`", bin)
	}
	httpPort := loopbackPort(t)
	hcl := fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = %q
    agent = %q
  }
}
ports { http = %d, dns = -1, grpc = -1, grpc_tls = -1, serf_lan = %d, serf_wan = %d, server = %d }`,
		mgmt, mgmt, httpPort, loopbackPort(t), loopbackPort(t), loopbackPort(t))
	cmd := exec.Command(bin, "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", "-log-level=error", "-hcl", hcl)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(httpPort)
	cl, _ := consul.NewClient(&consul.Config{Address: addr, Token: mgmt})
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if l, err := cl.Status().Leader(); err == nil && l != "" {
			if _, _, err := cl.KV().Get("probe", nil); err == nil {
				return addr
			}
		}
	}
	t.Fatal("consul with ACLs did not come up in 30s")
	return ""
}

// TestManagerCommandTakesTheConsulToken runs `micado manager` against a
// Consul that denies requests without a token: with the management token
// in CONSUL_HTTP_TOKEN or in --consul-token-file it starts, the file
// winning over the environment; without one, or with an empty file, it
// exits at once with an error naming the ACL problem. (The manager starts
// only after a write probe under micado/<cluster>/ passed, so starting
// proves Consul accepted the token.)
func TestManagerCommandTakesTheConsulToken(t *testing.T) {
	const mgmt = "9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a"
	addr := aclConsul(t, mgmt)
	dir := t.TempDir()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	keyFile := filepath.Join(dir, "key")
	tokFile := filepath.Join(dir, "consul-token")
	emptyFile := filepath.Join(dir, "empty")
	for f, v := range map[string]string{keyFile: base64.StdEncoding.EncodeToString(key), tokFile: mgmt + "\n", emptyFile: "\n"} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := func(env []string, extra ...string) (*exec.Cmd, *testnet.LogBuffer) {
		args := append([]string{"manager", "--cluster", "ctok", "--consul", addr, "--key-file", keyFile,
			"--api", "127.0.0.1:" + strconv.Itoa(loopbackPort(t)), "--bind", "127.0.0.1", "--advertise", "127.0.0.1",
			"--port", strconv.Itoa(loopbackPort(t)), "--consolidate-schedule", "off"}, extra...)
		cmd := exec.Command(micadoBin, args...)
		cmd.Env = append(os.Environ(), "CONSUL_HTTP_TOKEN=", "CONSUL_HTTP_TOKEN_FILE=", "MICADO_CLUSTER_KEY=", "MICADO_API_TOKEN=")
		cmd.Env = append(cmd.Env, env...)
		out := &testnet.LogBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
		return cmd, out
	}
	exited := func(cmd *exec.Cmd) <-chan error {
		ch := make(chan error, 1)
		go func() { ch <- cmd.Wait() }()
		return ch
	}

	for _, tc := range []struct {
		name  string
		env   []string
		flags []string
	}{
		{"env", []string{"CONSUL_HTTP_TOKEN=" + mgmt}, nil},
		{"file", nil, []string{"--consul-token-file", tokFile}},
		{"file-over-env", []string{"CONSUL_HTTP_TOKEN=not-the-token"}, []string{"--consul-token-file", tokFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, out := run(tc.env, tc.flags...)
			done := exited(cmd)
			deadline := time.After(30 * time.Second)
			for !strings.Contains(out.String(), `"msg":"manager started"`) {
				select {
				case err := <-done:
					t.Fatalf("micado manager exited (%v):\n%s", err, out)
				case <-deadline:
					t.Fatalf("micado manager did not start:\n%s", out)
				case <-time.After(50 * time.Millisecond):
				}
			}
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("micado manager did not stop on SIGTERM")
			}
			for _, bad := range []string{"Permission denied", "ACL not found"} {
				if strings.Contains(out.String(), bad) {
					t.Errorf("log mentions %q:\n%s", bad, out)
				}
			}
		})
	}
	for _, tc := range []struct {
		name  string
		env   []string
		flags []string
		want  []string
	}{
		{"none", nil, nil, []string{"consul ACL:", "the manager has no token", "CONSUL_HTTP_TOKEN", "--consul-token-file"}},
		{"wrong-env", []string{"CONSUL_HTTP_TOKEN=not-the-token"}, nil, []string{"consul ACL:", "does not know the manager's token", "ACL not found"}},
		{"empty-file", []string{"CONSUL_HTTP_TOKEN=" + mgmt}, []string{"--consul-token-file", emptyFile}, []string{"Consul ACL token file", "is empty"}},
		{"missing-file", nil, []string{"--consul-token-file", filepath.Join(dir, "nope")}, []string{"cannot read the Consul ACL token"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, out := run(tc.env, tc.flags...)
			select {
			case err := <-exited(cmd):
				if err == nil {
					t.Fatalf("micado manager exited 0:\n%s", out)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("micado manager runs without a usable Consul token:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output does not say %q:\n%s", w, out)
				}
			}
		})
	}
}
