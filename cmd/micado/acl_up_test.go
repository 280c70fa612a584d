package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/pkg/stdcopy"
	consul "github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/internal/wire"
)

// TestUpSecuresConsulAndSeparatesNetworks: `micado up` runs Consul with
// ACLs on (default deny) and encrypted gossip, keeps every secret out of
// what `docker inspect` shows, saves the management, manager and
// discovery tokens (mode 0600), and puts workloads on a network of their
// own, from which the managers and worker agents cannot be reached but
// Consul (HTTP and DNS, under its alias) can. `micado down` removes both
// networks.
func TestUpSecuresConsulAndSeparatesNetworks(t *testing.T) {
	c := newTestCluster(t, "--workers", "1", "--roles", "proxy")
	st := c.state()
	ctx := context.Background()

	t.Run("token files exist with mode 0600", func(t *testing.T) {
		files := map[string]string{"consul_token_file": st.ConsulTokenFile, "consul_manager_token_file": st.ConsulManagerTokenFile,
			"consul_discovery_token_file": st.ConsulDiscoveryTokenFile}
		for k, f := range files {
			if f == "" {
				t.Fatalf("cluster state has no %s", k)
			}
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatalf("%s: %v", k, err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s %s has mode %v, want 0600", k, f, fi.Mode().Perm())
			}
		}
		want := map[string]string{st.ConsulTokenFile: "consul-management.token", st.ConsulManagerTokenFile: "consul-manager.token",
			st.ConsulDiscoveryTokenFile: "consul-discovery.token"}
		for f, base := range want {
			if filepath.Base(f) != base {
				t.Errorf("token file %s, want one named %s", f, base)
			}
		}
		if fi, err := os.Stat(filepath.Join(filepath.Dir(st.ConsulTokenFile), "consul.json")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("consul.json: %v, mode %v; want mode 0600", err, fi.Mode().Perm())
		}
	})

	addr := strings.TrimPrefix(st.Consul, "http://")
	readToken := func(f string) string {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	mgmt, mgr, disc := readToken(st.ConsulTokenFile), readToken(st.ConsulManagerTokenFile), readToken(st.ConsulDiscoveryTokenFile)
	leaderKey := "micado/" + c.name + "/leader"

	t.Run("Consul denies the anonymous and lets the manager in", func(t *testing.T) {
		mc, _ := consul.NewClient(&consul.Config{Address: addr, Token: mgr})
		var p *consul.KVPair
		eventually(t, 30*time.Second, "the manager token reads the leader key", func() (bool, string) {
			var err error
			p, _, err = mc.KV().Get(leaderKey, nil)
			return err == nil && p != nil, "err " + errString(err)
		})
		for name, tok := range map[string]string{"anonymous": "", "discovery": disc} {
			cl, _ := consul.NewClient(&consul.Config{Address: addr, Token: tok})
			_, _, err := cl.KV().Get(leaderKey, nil)
			var se consul.StatusError
			if !errors.As(err, &se) || se.Code != http.StatusForbidden {
				t.Errorf("%s KV read of %s: %v, want 403", name, leaderKey, err)
			}
		}
		// The manager may not write outside its cluster's prefix.
		if _, err := mc.KV().Put(&consul.KVPair{Key: "micado/other-cluster/x", Value: []byte("x")}, nil); err == nil {
			t.Error("the manager token wrote under another cluster's prefix")
		}
		// The Consul agent registered its node with its token.
		cl := c.consul()
		eventually(t, 30*time.Second, "the consul node is in the catalog", func() (bool, string) {
			n, _, err := cl.Catalog().Node("consul", nil)
			return err == nil && n != nil && n.Node != nil, "err " + errString(err)
		})
	})

	t.Run("docker inspect shows no secret", func(t *testing.T) {
		var cfg struct {
			ACL struct {
				Tokens map[string]string `json:"tokens"`
			} `json:"acl"`
			Encrypt string `json:"encrypt"`
		}
		b, err := os.ReadFile(filepath.Join(filepath.Dir(st.ConsulTokenFile), "consul.json"))
		if err != nil || json.Unmarshal(b, &cfg) != nil {
			t.Fatalf("consul.json: %v", err)
		}
		secrets := map[string]string{"management token": mgmt, "manager token": mgr, "discovery token": disc,
			"agent token": cfg.ACL.Tokens["agent"], "DNS token": cfg.ACL.Tokens["dns"], "gossip key": cfg.Encrypt}
		if cfg.ACL.Tokens["initial_management"] != mgmt {
			t.Errorf("consul.json's initial_management is not the saved management token")
		}
		for what, v := range secrets {
			if len(v) < 16 {
				t.Fatalf("%s %q is missing or short", what, v)
			}
		}
		cs, err := c.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: clusterFilter(c.name)})
		if err != nil {
			t.Fatal(err)
		}
		consuls := 0
		for _, s := range cs {
			ci, err := c.dc.ContainerInspect(ctx, s.ID)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(ci)
			for what, v := range secrets {
				if bytes.Contains(raw, []byte(v)) {
					t.Errorf("docker inspect %s shows the %s", ci.Name, what)
				}
			}
			for _, m := range ci.Mounts {
				if m.Source == st.ConsulTokenFile {
					t.Errorf("%s mounts the management token", ci.Name)
				}
			}
			if s.Labels[wire.LabelComponent] == "manager" {
				// Scale-out workers run their containers on the workload
				// network too, and publish on its gateway.
				for _, pair := range [][2]string{{"--docker-network", st.Network}, {"--docker-container-network", st.AppsNetwork},
					{"--docker-publish-addr", st.Gateway}, {"--consul-token-file", consulTokenMountPath},
					{"--consul-discovery-token-file", consulDiscoveryMountPath}} {
					if i := slices.Index(ci.Config.Cmd, pair[0]); i < 0 || i+1 >= len(ci.Config.Cmd) || ci.Config.Cmd[i+1] != pair[1] {
						t.Errorf("%s: Cmd %q lacks %s %s", ci.Name, ci.Config.Cmd, pair[0], pair[1])
					}
				}
			}
			if s.Labels[wire.LabelComponent] == "consul" {
				consuls++
				if !slices.Contains(ci.Config.Cmd, "-config-file="+consulConfigMountPath) {
					t.Errorf("%s: Cmd %q does not read the config file", ci.Name, ci.Config.Cmd)
				}
			}
		}
		if consuls != 1 {
			t.Errorf("%d consul containers, want 1", consuls)
		}
	})

	t.Run("two labelled networks", func(t *testing.T) {
		if st.AppsNetwork != "micado-"+c.name+"-apps" || st.Network != "micado-"+c.name {
			t.Fatalf("networks %q and %q in the state", st.Network, st.AppsNetwork)
		}
		nets, err := c.dc.NetworkList(ctx, network.ListOptions{Filters: clusterFilter(c.name)})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, n := range nets {
			got[n.Name] = true
		}
		if len(nets) != 2 || !got[st.Network] || !got[st.AppsNetwork] {
			t.Fatalf("labelled networks %v, want %s and %s", got, st.Network, st.AppsNetwork)
		}
		ni, err := c.dc.NetworkInspect(ctx, st.AppsNetwork, network.InspectOptions{})
		if err != nil || len(ni.IPAM.Config) == 0 || ni.IPAM.Config[0].Gateway != st.Gateway {
			t.Errorf("the state's gateway %s is not the workload network's (%v)", st.Gateway, err)
		}
	})

	t.Run("a workload reaches Consul but not the control plane", func(t *testing.T) {
		c.mustMicado("launch", "micado/demo-web", "--role", "proxy", "--name", "web", "--memory", "64MiB", "--port", "8080")
		apps := c.appContainers("web")
		if len(apps) != 1 {
			t.Fatalf("%d web containers, want 1", len(apps))
		}
		if _, ok := apps[0].NetworkSettings.Networks[st.AppsNetwork]; !ok || len(apps[0].NetworkSettings.Networks) != 1 {
			t.Errorf("web runs on networks %v, want only %s", apps[0].NetworkSettings.Networks, st.AppsNetwork)
		}
		controlIP := func(component string) string {
			cs, err := c.dc.ContainerList(ctx, container.ListOptions{Filters: clusterFilter(c.name)})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range cs {
				if s.Labels[wire.LabelComponent] == component {
					if ep := s.NetworkSettings.Networks[st.Network]; ep != nil {
						return ep.IPAddress
					}
				}
			}
			t.Fatalf("no %s container on %s", component, st.Network)
			return ""
		}
		consulHost := "micado-" + c.name + "-consul"
		out := runProbe(t, c, st.AppsNetwork,
			"tcp:"+controlIP("manager")+":8080",
			"tcp:"+controlIP(wire.ComponentWorker)+":7070",
			"tcp:"+controlIP("consul")+":8500",
			"http:http://"+consulHost+":8500/v1/status/leader",
			"http:http://"+consulHost+":8500/v1/kv/"+leaderKey,
			"dns:"+consulHost+":8600:web.service.consul")
		want := []string{"ERR", "ERR", "ERR", "OK 200", "OK 403", "OK " + st.Gateway}
		for i, w := range want {
			if i >= len(out) || !strings.HasPrefix(out[i], w) {
				t.Errorf("probe %d: %q, want %q…; all: %q", i, at(out, i), w, out)
			}
		}
	})

	t.Run("micado down removes both networks", func(t *testing.T) {
		c.mustMicado("down")
		for _, n := range []string{st.Network, st.AppsNetwork} {
			if _, err := c.dc.NetworkInspect(ctx, n, network.InspectOptions{}); err == nil {
				t.Errorf("network %s is still there after down", n)
			}
		}
	})
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}

func at(s []string, i int) string {
	if i < len(s) {
		return s[i]
	}
	return ""
}

// runProbe runs testdata/netprobe in a container on net (with the demo
// web image as its filesystem, the probe mounted) and returns its lines.
func runProbe(t *testing.T, c *testCluster, net string, probes ...string) []string {
	t.Helper()
	return runProbeWith(t, c, net, nil, probes...)
}

// runProbeWith is runProbe with more files mounted read-only (host path →
// path in the container).
func runProbeWith(t *testing.T, c *testCluster, net string, files map[string]string, probes ...string) []string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "netprobe")
	build := exec.Command("go", "build", "-o", bin, "./testdata/netprobe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building netprobe: %v\n%s", err, out)
	}
	mounts := []mount.Mount{{Type: mount.TypeBind, Source: bin, Target: "/netprobe", ReadOnly: true}}
	for src, dst := range files {
		mounts = append(mounts, mount.Mount{Type: mount.TypeBind, Source: src, Target: dst, ReadOnly: true})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	created, err := c.dc.ContainerCreate(ctx,
		&container.Config{Image: "micado/demo-web:latest", Entrypoint: []string{"/netprobe"}, Cmd: probes,
			Labels: map[string]string{wire.LabelCluster: c.name, wire.LabelComponent: "test-probe"}},
		&container.HostConfig{Mounts: mounts},
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{net: {}}}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.dc.ContainerRemove(context.Background(), created.ID, container.RemoveOptions{Force: true})
	if err := c.dc.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	wait, errc := c.dc.ContainerWait(ctx, created.ID, container.WaitConditionNotRunning)
	select {
	case <-wait:
	case err := <-errc:
		t.Fatal(err)
	}
	logs, err := c.dc.ContainerLogs(ctx, created.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatalf("netprobe logs: %v", err)
	}
	defer logs.Close()
	var out, errOut bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &errOut, logs); err != nil {
		t.Fatalf("netprobe logs: %v", err)
	}
	if errOut.Len() > 0 {
		t.Logf("netprobe stderr: %s", errOut.String())
	}
	return strings.Split(strings.TrimSpace(out.String()), "\n")
}
