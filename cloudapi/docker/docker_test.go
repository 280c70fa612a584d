package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/internal/wire"
)

const demoImage = "micado/demo-web:latest"

func micadoImage() string {
	if v := os.Getenv("MICADO_IMAGE"); v != "" {
		return v
	}
	return "micado/micado:dev"
}

type fileInContainer struct {
	body string
	mode os.FileMode
}

// readFile reads one regular file out of a container.
func readFile(ctx context.Context, t *testing.T, dc *client.Client, id, p string) fileInContainer {
	t.Helper()
	rc, _, err := dc.CopyFromContainer(ctx, id, p)
	if err != nil {
		t.Fatalf("copy %s out of %s: %v", p, id, err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	h, err := tr.Next()
	if err != nil {
		t.Fatalf("copy %s out of %s: %v", p, id, err)
	}
	b, _ := io.ReadAll(tr)
	return fileInContainer{body: string(b), mode: h.FileInfo().Mode()}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// engine connects to the real Docker engine and fails, saying what is
// missing, when it or an image is not there.
func engine(t *testing.T) *client.Client {
	t.Helper()
	dc, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatalf("cannot create a Docker client: %v", err)
	}
	t.Cleanup(func() { dc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dc.Ping(ctx); err != nil {
		t.Fatalf("this test needs a running Docker engine, which is not reachable: %v", err)
	}
	for _, img := range []string{micadoImage(), demoImage} {
		if _, err := dc.ImageInspect(ctx, img); err != nil {
			t.Fatalf("this test needs image %s, which is missing: build it with `make images` (%v)", img, err)
		}
	}
	return dc
}

// cleanupClusters removes every container and network labelled with one of
// clusters, also when the test fails.
func cleanupClusters(t *testing.T, dc *client.Client, clusters ...string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, c := range clusters {
			f := filters.NewArgs(filters.Arg("label", wire.LabelCluster+"="+c))
			cs, err := dc.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
			if err != nil {
				t.Errorf("cleanup: list containers of %s: %v", c, err)
			}
			for _, x := range cs {
				if err := dc.ContainerRemove(ctx, x.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !errdefs.IsNotFound(err) {
					t.Errorf("cleanup: remove container %v: %v", x.Names, err)
				}
			}
			nets, err := dc.NetworkList(ctx, network.ListOptions{Filters: f})
			if err != nil {
				t.Errorf("cleanup: list networks of %s: %v", c, err)
			}
			for _, n := range nets {
				if err := dc.NetworkRemove(ctx, n.ID); err != nil && !errdefs.IsNotFound(err) {
					t.Errorf("cleanup: remove network %s: %v", n.Name, err)
				}
			}
		}
	})
}

func validConfig(cluster string) Config {
	return Config{
		Cluster:     cluster,
		Network:     "micado-" + cluster,
		Image:       micadoImage(),
		JoinAddr:    "micado-" + cluster + "-manager:7946",
		PublishAddr: "172.30.0.1",
		ClusterKey:  base64.StdEncoding.EncodeToString(make([]byte, 32)),
		Types: []cloudapi.InstanceType{
			{Name: "small", Memory: 512 << 20},
			{Name: "medium", Memory: 1 << 30},
			{Name: "large", Memory: 2 << 30},
		},
	}
}

func TestConfigValidation(t *testing.T) {
	dc, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	for _, tc := range []struct {
		field string
		edit  func(*Config)
	}{
		{"Config.Cluster", func(c *Config) { c.Cluster = "" }},
		{"Config.Cluster", func(c *Config) { c.Cluster = "a/b" }},
		{"Config.Network", func(c *Config) { c.Network = "" }},
		{"Config.ContainerNetwork", func(c *Config) { c.ContainerNetwork = "bad network" }},
		{"Config.Image", func(c *Config) { c.Image = "" }},
		{"Config.JoinAddr", func(c *Config) { c.JoinAddr = "" }},
		{"Config.JoinAddr", func(c *Config) { c.JoinAddr = "manager" }},
		{"Config.JoinAddr", func(c *Config) { c.JoinAddr = "manager:99999" }},
		{"Config.PublishAddr", func(c *Config) { c.PublishAddr = "" }},
		{"Config.PublishAddr", func(c *Config) { c.PublishAddr = "1.2.3.4:80" }},
		{"Config.ClusterKey", func(c *Config) { c.ClusterKey = "" }},
		{"Config.ClusterKey", func(c *Config) { c.ClusterKey = "not base64!" }},
		{"Config.ClusterKey", func(c *Config) { c.ClusterKey = base64.StdEncoding.EncodeToString([]byte("short")) }},
		{"Config.DockerSocket", func(c *Config) { c.DockerSocket = "docker.sock" }},
		{"Config.KeyFile", func(c *Config) { c.KeyFile = "cluster.key" }},
		{"Config.Types", func(c *Config) { c.Types = nil }},
		{"Config.Types", func(c *Config) { c.Types = append(c.Types, cloudapi.InstanceType{Name: "small", Memory: 1}) }},
		{"Config.Types", func(c *Config) { c.Types = []cloudapi.InstanceType{{Name: "zero"}} }},
		{"Config.Types", func(c *Config) { c.Types = []cloudapi.InstanceType{{Memory: 1}} }},
	} {
		cfg := validConfig("v")
		tc.edit(&cfg)
		_, err := New(cfg, dc)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("New with bad %s (%+v): error %v, want one naming %s", tc.field, cfg, err, tc.field)
		}
	}
	if _, err := New(validConfig("v"), nil); err == nil || !strings.Contains(err.Error(), "client") {
		t.Errorf("New without a client: error %v, want one about the client", err)
	}
	p, err := New(validConfig("v"), dc)
	if err != nil {
		t.Fatalf("New with a valid config: %v", err)
	}
	if p.Name() != "docker" || p.cfg.DockerSocket != "/var/run/docker.sock" || len(p.Types()) != 3 {
		t.Errorf("Name %q, DockerSocket %q, %d types", p.Name(), p.cfg.DockerSocket, len(p.Types()))
	}
}

// TestContainerNetwork: a worker attaches its containers to
// Config.ContainerNetwork when there is one (the workload network), and
// to Config.Network otherwise; the worker itself stays on Network.
func TestContainerNetwork(t *testing.T) {
	spec := cloudapi.Spec{Cluster: "v", Name: "w-1", Type: cloudapi.InstanceType{Name: "small", Memory: 512 << 20}}
	for _, tc := range []struct{ containerNet, want string }{{"", "micado-v"}, {"micado-v-apps", "micado-v-apps"}} {
		cfg := validConfig("v")
		cfg.ContainerNetwork = tc.containerNet
		cmd := (&Provider{cfg: cfg}).command(spec)
		i := slices.Index(cmd, "--container-network")
		if i < 0 || i+1 >= len(cmd) || cmd[i+1] != tc.want {
			t.Errorf("ContainerNetwork %q: Cmd %q, want --container-network %s", tc.containerNet, cmd, tc.want)
		}
	}
	p := &Provider{cfg: Config{Network: "micado-v", ContainerNetwork: "micado-v-apps"}}
	nets := map[string]*network.EndpointSettings{"micado-v-apps": {IPAddress: "10.1.0.2"}, "micado-v": {IPAddress: "10.0.0.2"}}
	if got := p.address(nets); got != "10.0.0.2" {
		t.Errorf("address = %s, want the control network's 10.0.0.2", got)
	}
}

func TestNormaliseState(t *testing.T) {
	for in, want := range map[string]cloudapi.State{
		"created": cloudapi.StatePending, "restarting": cloudapi.StatePending, "running": cloudapi.StateRunning,
		"paused": cloudapi.StateStopped, "exited": cloudapi.StateStopped, "removing": cloudapi.StateShuttingDown,
		"dead": cloudapi.StateError, "weird": cloudapi.StateUnknown,
	} {
		if got := normaliseState(in); got != want {
			t.Errorf("normaliseState(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestProviderOnDocker creates, lists and terminates worker containers on
// the real engine. The workers cannot join (there is no manager) and say so
// in their logs; that is expected.
func TestProviderOnDocker(t *testing.T) {
	dc := engine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cluster := "cdt-" + randHex(4)
	other := cluster + "-other"
	cleanupClusters(t, dc, cluster, other)

	netName := "micado-" + cluster
	if _, err := dc.NetworkCreate(ctx, netName, network.CreateOptions{Driver: "bridge",
		Labels: map[string]string{wire.LabelCluster: cluster, wire.LabelComponent: "network"}}); err != nil {
		t.Fatalf("create network %s: %v", netName, err)
	}
	ni, err := dc.NetworkInspect(ctx, netName, network.InspectOptions{})
	if err != nil || len(ni.IPAM.Config) == 0 {
		t.Fatalf("inspect network %s: %v (IPAM %+v)", netName, err, ni.IPAM)
	}
	_, subnet, err := net.ParseCIDR(ni.IPAM.Config[0].Subnet)
	if err != nil {
		t.Fatalf("network %s subnet %q: %v", netName, ni.IPAM.Config[0].Subnet, err)
	}
	gateway := ni.IPAM.Config[0].Gateway

	key := make([]byte, 32)
	_, _ = rand.Read(key)
	cfg := validConfig(cluster)
	cfg.PublishAddr = gateway
	cfg.ClusterKey = base64.StdEncoding.EncodeToString(key)
	p, err := New(cfg, dc)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	small, _ := cloudapi.FindType(cfg.Types, "small")
	medium, _ := cloudapi.FindType(cfg.Types, "medium")

	specs := []cloudapi.Spec{
		{Cluster: cluster, Name: "w-app-" + randHex(3), Type: medium, Tags: []string{"role=app", "disk=ssd"}},
		{Cluster: cluster, Name: "w-proxy-" + randHex(3), Type: small, Tags: []string{"role=proxy"}},
	}
	before := time.Now().Add(-2 * time.Second)
	created := map[string]cloudapi.Instance{}
	for _, s := range specs {
		inst, err := p.Create(ctx, s)
		if err != nil {
			t.Fatalf("Create %s: %v", s.Name, err)
		}
		checkInstance(t, "Create", inst, s, subnet, before)
		created[s.Name] = inst
	}

	// List reports both, sorted by name.
	list, err := p.List(ctx, cluster)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list) != 2 {
		t.Fatalf("List returned %d instances, want 2: %+v", len(list), list)
	}
	for i, s := range specs { // specs are in name order
		checkInstance(t, "List", list[i], s, subnet, before)
		if list[i].ID != created[s.Name].ID || list[i].Address != created[s.Name].Address {
			t.Errorf("List %s: id %s address %s, Create said %s %s", s.Name, list[i].ID, list[i].Address, created[s.Name].ID, created[s.Name].Address)
		}
	}

	// The containers are what the manager and the worker rely on.
	for _, s := range specs {
		ci, err := dc.ContainerInspect(ctx, created[s.Name].ID)
		if err != nil {
			t.Fatalf("inspect %s: %v", s.Name, err)
		}
		if want := "/micado-" + cluster + "-" + s.Name; ci.Name != want {
			t.Errorf("%s: container name %q, want %q", s.Name, ci.Name, want)
		}
		wantLabels := map[string]string{
			"io.micado.cluster": cluster, "io.micado.component": "worker", "io.micado.node": s.Name,
			"io.micado.instance-type": s.Type.Name, "io.micado.tags": strings.Join(s.Tags, ","), "io.micado.provider": "docker",
			cloudapi.TagCluster: cluster, cloudapi.TagNode: s.Name, cloudapi.TagType: s.Type.Name,
			cloudapi.TagTags: strings.Join(s.Tags, ","), cloudapi.TagRole: strings.TrimPrefix(s.Tags[0], "role="),
		}
		for k, v := range wantLabels {
			if got, ok := ci.Config.Labels[k]; !ok || got != v {
				t.Errorf("%s: label %s = %q (present %v), want %q", s.Name, k, got, ok, v)
			}
		}
		wantCmd := []string{"worker", "--cluster", cluster, "--name", s.Name}
		for _, tag := range s.Tags {
			wantCmd = append(wantCmd, "--tag", tag)
		}
		wantCmd = append(wantCmd, "--memory", strconv.FormatInt(s.Type.Memory, 10), "--join", cfg.JoinAddr,
			"--publish-addr", gateway, "--container-network", cfg.Network, "--pull=false", "--key-file", KeyPath)
		if !slices.Equal(ci.Config.Cmd, wantCmd) {
			t.Errorf("%s: Cmd\n got %q\nwant %q", s.Name, ci.Config.Cmd, wantCmd)
		}
		// The key is a file in the container, not in what inspect shows.
		raw, _ := json.Marshal(ci)
		if bytes.Contains(raw, []byte(cfg.ClusterKey)) {
			t.Errorf("%s: docker inspect shows the cluster key", s.Name)
		}
		if got := readFile(ctx, t, dc, ci.ID, KeyPath); strings.TrimSpace(got.body) != cfg.ClusterKey || got.mode.Perm() != 0o400 {
			t.Errorf("%s: %s holds %q with mode %v, want the cluster key with mode 0400", s.Name, KeyPath, got.body, got.mode.Perm())
		}
		if ci.Config.Image != cfg.Image || ci.Config.Hostname != s.Name {
			t.Errorf("%s: image %q hostname %q", s.Name, ci.Config.Image, ci.Config.Hostname)
		}
		if ci.HostConfig.RestartPolicy.Name != container.RestartPolicyUnlessStopped {
			t.Errorf("%s: restart policy %q", s.Name, ci.HostConfig.RestartPolicy.Name)
		}
		if !slices.ContainsFunc(ci.Mounts, func(m container.MountPoint) bool {
			return m.Type == mount.TypeBind && m.Source == "/var/run/docker.sock" && m.Destination == "/var/run/docker.sock"
		}) {
			t.Errorf("%s: no bind mount of the Docker socket: %+v", s.Name, ci.Mounts)
		}
		ep := ci.NetworkSettings.Networks[netName]
		if ep == nil || !slices.Contains(ep.Aliases, s.Name) {
			t.Errorf("%s: not on %s with alias %s: %+v", s.Name, netName, s.Name, ep)
		}
	}

	// The real agent accepts the command line: it starts (and, with no
	// manager, warns that it cannot join).
	for _, s := range specs {
		waitForLog(ctx, t, dc, created[s.Name].ID, `"msg":"worker agent started"`, `"tags":["`+strings.Join(s.Tags, `","`)+`"]`)
	}

	// Create is idempotent for a retried spec, and refuses a different one.
	again, err := p.Create(ctx, specs[0])
	if err != nil || again.ID != created[specs[0].Name].ID || again.State != cloudapi.StateRunning {
		t.Errorf("Create again: %+v, %v; want the same running instance %s", again, err, created[specs[0].Name].ID)
	}
	changed := specs[0]
	changed.Type = small
	if _, err := p.Create(ctx, changed); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("Create of an existing name with another type: error %v, want 'already exists'", err)
	}

	// Bad specs are refused with a clear reason and create nothing.
	for _, bad := range []struct {
		want string
		edit func(*cloudapi.Spec)
	}{
		{"cluster", func(s *cloudapi.Spec) { s.Cluster = other }},
		{"memory", func(s *cloudapi.Spec) { s.Type = cloudapi.InstanceType{Name: "none"} }},
		{"node name", func(s *cloudapi.Spec) { s.Name = "bad/name" }},
		{"node name", func(s *cloudapi.Spec) { s.Name = strings.Repeat("x", 64) }},
		{"key=value", func(s *cloudapi.Spec) { s.Tags = []string{"proxy"} }},
	} {
		s := cloudapi.Spec{Cluster: cluster, Name: "w-bad-" + randHex(2), Type: small, Tags: []string{"role=x"}}
		bad.edit(&s)
		if _, err := p.Create(ctx, s); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Create %+v: error %v, want one about %s", s, err, bad.want)
		}
	}

	// A missing image is named, and nothing is left behind.
	noImg := cfg
	noImg.Image = "micado/no-such-image:" + randHex(3)
	pn, err := New(noImg, dc)
	if err != nil {
		t.Fatal(err)
	}
	bad := cloudapi.Spec{Cluster: cluster, Name: "w-noimg", Type: small, Tags: []string{"role=x"}}
	if _, err := pn.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "image "+noImg.Image+" is missing") {
		t.Errorf("Create with a missing image: error %v, want one naming the image", err)
	}

	// A worker container this provider did not make (no type or tags
	// labels) that does not run yet: List knows it by its labels alone,
	// reports it pending with no type and no tags, and never reads its
	// command line.
	upName := "w-foreign-" + randHex(2)
	up, err := dc.ContainerCreate(ctx, &container.Config{Image: cfg.Image,
		Labels: map[string]string{wire.LabelCluster: cluster, wire.LabelComponent: "worker", wire.LabelNode: upName},
		Cmd: []string{"worker", "--cluster", cluster, "--name", "not-" + upName, "--tag", "role=db",
			"--memory", "1073741824", "--join", cfg.JoinAddr, "--pull=false"}},
		&container.HostConfig{}, &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: {}}},
		nil, "micado-"+cluster+"-"+upName)
	if err != nil {
		t.Fatalf("create a worker without the provider's labels: %v", err)
	}
	list, err = p.List(ctx, cluster)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	i := slices.IndexFunc(list, func(in cloudapi.Instance) bool { return in.Name == upName })
	if len(list) != 3 || i < 0 {
		t.Fatalf("List with the unlabelled worker: %+v", list)
	}
	if in := list[i]; in.ID != up.ID || in.Type != "" || in.State != cloudapi.StatePending || len(in.Tags) != 0 || in.Cluster != cluster {
		t.Errorf("unlabelled worker listed as %+v; want pending, no type, no tags", in)
	}
	if err := p.Terminate(ctx, up.ID); err != nil {
		t.Errorf("Terminate the unlabelled worker: %v", err)
	}

	// With KeyFile (as `micado up` makes its first workers), the key is the
	// host's file, mounted read-only, not a copy; the agent reads it.
	keyFile := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(keyFile, []byte(cfg.ClusterKey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kcfg := cfg
	kcfg.KeyFile = keyFile
	pk, err := New(kcfg, dc)
	if err != nil {
		t.Fatalf("New with KeyFile: %v", err)
	}
	ks := cloudapi.Spec{Cluster: cluster, Name: "w-keyfile-" + randHex(2), Type: small, Tags: []string{"role=proxy"}}
	kinst, err := pk.Create(ctx, ks)
	if err != nil {
		t.Fatalf("Create with KeyFile: %v", err)
	}
	checkInstance(t, "Create with KeyFile", kinst, ks, subnet, before)
	kci, err := dc.ContainerInspect(ctx, kinst.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(kci.Mounts, func(m container.MountPoint) bool {
		return m.Type == mount.TypeBind && m.Source == keyFile && m.Destination == KeyPath && !m.RW
	}) {
		t.Errorf("KeyFile: no read-only bind mount of %s at %s: %+v", keyFile, KeyPath, kci.Mounts)
	}
	waitForLog(ctx, t, dc, kinst.ID, `"msg":"worker agent started"`)
	if err := pk.Terminate(ctx, kinst.ID); err != nil {
		t.Errorf("Terminate the KeyFile worker: %v", err)
	}

	// Application containers: one run by each worker, and a worker of
	// another cluster. Terminate touches none but the terminated worker's.
	app := func(clusterLabel, component, node, name string, start bool) string {
		t.Helper()
		c, err := dc.ContainerCreate(ctx, &container.Config{Image: demoImage,
			Labels: map[string]string{wire.LabelCluster: clusterLabel, wire.LabelComponent: component, wire.LabelNode: node}},
			&container.HostConfig{}, nil, nil, name)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		if start {
			if err := dc.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
				t.Fatalf("start %s: %v", name, err)
			}
		}
		return c.ID
	}
	appApp := app(cluster, "app", specs[0].Name, cluster+"-app-on-app", false)
	appProxy := app(cluster, "app", specs[1].Name, cluster+"-app-on-proxy", false)
	foreign := app(other, "worker", specs[1].Name, other+"-worker", true)

	// Terminate of things that are not this cluster's workers: not found,
	// and untouched.
	for what, id := range map[string]string{"unknown id": "no-such-container-" + randHex(4), "an app container": appApp, "another cluster's worker": foreign} {
		if err := p.Terminate(ctx, id); !errors.Is(err, cloudapi.ErrNotFound) {
			t.Errorf("Terminate %s: %v, want ErrNotFound", what, err)
		}
	}
	if ci, err := dc.ContainerInspect(ctx, foreign); err != nil || !ci.State.Running {
		t.Errorf("another cluster's worker was touched: %v %+v", err, ci.State)
	}

	// Terminate one worker: it and its app container go, the rest stay.
	if err := p.Terminate(ctx, created[specs[1].Name].ID); err != nil {
		t.Fatalf("Terminate %s: %v", specs[1].Name, err)
	}
	list, err = p.List(ctx, cluster)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list) != 1 || list[0].Name != specs[0].Name {
		t.Errorf("List after Terminate: %+v, want only %s", list, specs[0].Name)
	}
	if _, err := dc.ContainerInspect(ctx, created[specs[1].Name].ID); !errdefs.IsNotFound(err) {
		t.Errorf("terminated worker container still exists: %v", err)
	}
	if _, err := dc.ContainerInspect(ctx, appProxy); !errdefs.IsNotFound(err) {
		t.Errorf("the terminated worker's app container still exists: %v", err)
	}
	if _, err := dc.ContainerInspect(ctx, appApp); err != nil {
		t.Errorf("another worker's app container is gone: %v", err)
	}
	if err := p.Terminate(ctx, created[specs[1].Name].ID); !errors.Is(err, cloudapi.ErrNotFound) {
		t.Errorf("Terminate again: %v, want ErrNotFound", err)
	}
	if ci, err := dc.ContainerInspect(ctx, foreign); err != nil || !ci.State.Running {
		t.Errorf("another cluster's worker was touched: %v %+v", err, ci.State)
	}
	if other, err := p.List(ctx, other); err != nil || len(other) != 1 || other[0].ID != foreign {
		t.Errorf("List of the other cluster: %+v %v", other, err)
	}
}

// waitForLog waits up to 20 s until the container's output holds every one
// of wants in one line.
func waitForLog(ctx context.Context, t *testing.T, dc *client.Client, id string, wants ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var out bytes.Buffer
	for time.Now().Before(deadline) {
		out.Reset()
		rc, err := dc.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true})
		if err == nil {
			_, _ = stdcopy.StdCopy(&out, &out, rc)
			rc.Close()
			for line := range strings.Lines(out.String()) {
				if !slices.ContainsFunc(wants, func(w string) bool { return !strings.Contains(line, w) }) {
					return
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("container %.12s did not log a line with %q within 20s; its output:\n%s", id, wants, out.String())
}

// checkInstance compares an Instance from Create or List with its spec.
func checkInstance(t *testing.T, from string, inst cloudapi.Instance, s cloudapi.Spec, subnet *net.IPNet, after time.Time) {
	t.Helper()
	if inst.ID == "" || inst.Name != s.Name || inst.Cluster != s.Cluster || inst.Type != s.Type.Name || !slices.Equal(inst.Tags, s.Tags) {
		t.Errorf("%s %s: %+v; want name, cluster %s, type %s, tags %q", from, s.Name, inst, s.Cluster, s.Type.Name, s.Tags)
	}
	if inst.State != cloudapi.StateRunning {
		t.Errorf("%s %s: state %q, want running", from, s.Name, inst.State)
	}
	if ip := net.ParseIP(inst.Address); ip == nil || !subnet.Contains(ip) {
		t.Errorf("%s %s: address %q is not on the network %s", from, s.Name, inst.Address, subnet)
	}
	if inst.CreatedAt.Before(after) || inst.CreatedAt.After(time.Now().Add(2*time.Second)) {
		t.Errorf("%s %s: created at %s, want just now", from, s.Name, inst.CreatedAt)
	}
}
