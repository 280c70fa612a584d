package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	consul "github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// The end-to-end tests run the real micado binary against the real Docker
// engine and a real Consul agent in a container. They need the images that
// `make images` builds; `make test` builds them first.

var micadoBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "micado-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	micadoBin = filepath.Join(dir, "micado")
	out, err := exec.Command("go", "build", "-o", micadoBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building micado for the end-to-end tests failed: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireDocker fails the test (never skips) when the engine or an image
// is missing, and says what to do.
func requireDocker(t testing.TB) *dockerclient.Client {
	t.Helper()
	dc, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatalf("Docker client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dc.Ping(ctx); err != nil {
		t.Fatalf("the end-to-end tests need a running Docker engine: %v", err)
	}
	for _, img := range []string{micadoImage, consulImage, "micado/demo-web:latest"} {
		if _, err := dc.ImageInspect(ctx, img); err != nil {
			t.Fatalf("image %s is missing: run `make images` (or `make test`, which builds it): %v", img, err)
		}
	}
	t.Cleanup(func() { dc.Close() })
	return dc
}

// testCluster is one local cluster made for one test.
type testCluster struct {
	t    testing.TB
	name string
	home string
	dc   *dockerclient.Client

	consulMu sync.Mutex
	consulCl *consul.Client // made once: each client keeps its own idle connections
}

func newTestCluster(t testing.TB, upArgs ...string) *testCluster {
	return newTestClusterNamed(t, newClusterName("e2e"), upArgs...)
}

// newClusterName is a fresh cluster name with the prefix.
func newClusterName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// newTestClusterNamed is newTestCluster for a cluster name chosen first
// (to make certificates for its managers' names, say).
func newTestClusterNamed(t testing.TB, name string, upArgs ...string) *testCluster {
	dc := requireDocker(t)
	c := &testCluster{t: t, name: name, home: t.TempDir(), dc: dc}
	// Remove everything the cluster created, also when the test fails:
	// first through `micado down`, then by label, whatever down left.
	t.Cleanup(func() {
		c.micado("down")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if n, err := teardown(ctx, dc, c.name); err != nil || n > 0 {
			t.Logf("cleanup by label removed %d more containers (err %v)", n, err)
		}
	})
	out, errOut, err := c.micado(append([]string{"up"}, upArgs...)...)
	if err != nil {
		t.Fatalf("micado up: %v\n%s%s", err, out, errOut)
	}
	return c
}

// micado runs the CLI with this cluster's name and home.
func (c *testCluster) micado(args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, micadoBin, args...)
	cmd.Env = append(os.Environ(), "MICADO_HOME="+c.home, "MICADO_CLUSTER="+c.name, "MICADO_ADDR=", "MICADO_TOKEN=")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

func (c *testCluster) mustMicado(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.micado(args...)
	if err != nil {
		c.t.Fatalf("micado %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func (c *testCluster) state() *clusterState {
	c.t.Helper()
	st, err := loadState(&globals{cluster: c.name, home: c.home})
	if err != nil {
		c.t.Fatalf("cluster state: %v", err)
	}
	return st
}

func (c *testCluster) consul() *consul.Client { return c.consulClient(c.t) }

// consulClient talks to the cluster's Consul from the host with the
// management token `micado up` saved (Consul denies anonymous requests).
// It is one client for the whole test: a new client per call would leave
// its idle connections open, and Consul refuses a client address with
// more than 200 (429).
func (c *testCluster) consulClient(tb testing.TB) *consul.Client {
	c.t.Helper()
	c.consulMu.Lock()
	defer c.consulMu.Unlock()
	if c.consulCl != nil {
		return c.consulCl
	}
	st := c.state()
	var token string
	if st.ConsulTokenFile != "" {
		b, err := os.ReadFile(st.ConsulTokenFile)
		if err != nil {
			c.t.Fatalf("Consul management token: %v", err)
		}
		token = strings.TrimSpace(string(b))
	}
	cl, err := consul.NewClient(&consul.Config{Address: strings.TrimPrefix(st.Consul, "http://"), Token: token})
	if err != nil {
		c.t.Fatal(err)
	}
	c.consulCl = cl
	return cl
}

func (c *testCluster) ps() []manager.ContainerView {
	c.t.Helper()
	var cs []manager.ContainerView
	if err := json.Unmarshal([]byte(c.mustMicado("ps", "--json")), &cs); err != nil {
		c.t.Fatalf("ps --json: %v", err)
	}
	return cs
}

// appContainers lists the application containers Docker runs for service.
func (c *testCluster) appContainers(service string) []container.Summary {
	c.t.Helper()
	f := filters.NewArgs(filters.Arg("label", wire.LabelCluster+"="+c.name), filters.Arg("label", wire.LabelComponent+"=app"))
	if service != "" {
		f.Add("label", wire.LabelService+"="+service)
	}
	cs, err := c.dc.ContainerList(context.Background(), container.ListOptions{Filters: f})
	if err != nil {
		c.t.Fatal(err)
	}
	return cs
}

// kvCount counts desired-state records in Consul KV.
func (c *testCluster) kvCount() int {
	c.t.Helper()
	keys, _, err := c.consul().KV().Keys("micado/"+c.name+"/containers/", "", nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return len(keys)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for time.Now().Before(deadline) {
		ok, info := cond()
		if ok {
			return
		}
		last = info
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("%s: not true after %s; last: %s", what, d, last)
}

func passing(t *testing.T, cl *consul.Client, service string) []*consul.ServiceEntry {
	t.Helper()
	es, _, err := cl.Health().Service(service, "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func TestClusterEndToEnd(t *testing.T) {
	c := newTestCluster(t, "--workers", "2", "--roles", "proxy,app", "--worker-memory", "1GiB", "--provider", "none")
	st := c.state()
	cl := c.consul()

	t.Run("nodes shows both workers with their roles", func(t *testing.T) {
		var ns []manager.MemberView
		if err := json.Unmarshal([]byte(c.mustMicado("nodes", "--json")), &ns); err != nil {
			t.Fatal(err)
		}
		roles := map[string]string{}
		leaders := 0
		for _, n := range ns {
			if n.Kind == wire.KindManager {
				if n.Leader {
					leaders++
				}
				continue
			}
			if n.Status != "alive" || n.Capacity != 1<<30 {
				t.Errorf("node %s: status %s capacity %d", n.Name, n.Status, n.Capacity)
			}
			roles[n.Name] = strings.Join(n.Tags, ",")
		}
		if roles["w-1"] != "role=proxy" || roles["w-2"] != "role=app" {
			t.Fatalf("roles = %v", roles)
		}
		if leaders != 1 {
			t.Fatalf("%d managers lead: %+v", leaders, ns)
		}
		out := c.mustMicado("nodes")
		if !strings.Contains(out, "w-1") || !strings.Contains(out, "role=proxy") {
			t.Fatalf("nodes table: %s", out)
		}
	})

	t.Run("launch places on the proxy worker and registers in Consul", func(t *testing.T) {
		out := c.mustMicado("launch", "micado/demo-web", "--role", "proxy", "--memory", "64MiB", "--port", "8080")
		if !strings.Contains(out, "placed demo-web-1 on w-1") {
			t.Fatalf("launch output: %s", out)
		}
		es := passing(t, cl, "demo-web")
		if len(es) != 1 {
			t.Fatalf("Consul has %d passing demo-web instances, want 1", len(es))
		}
		e := es[0]
		if e.Service.Address != st.Gateway || e.Service.Port == 0 {
			t.Fatalf("registered at %s:%d, want the gateway %s and a host port", e.Service.Address, e.Service.Port, st.Gateway)
		}
		for _, tag := range []string{"role=proxy", "node=w-1"} {
			if !contains(e.Service.Tags, tag) {
				t.Errorf("tags %v lack %s", e.Service.Tags, tag)
			}
		}
		if len(e.Checks) < 2 { // serf health + our check, run by Consul itself
			t.Errorf("checks: %v", e.Checks)
		}
		// The registered address really answers, from the container we placed.
		body := httpGet(t, fmt.Sprintf("http://%s:%d/", e.Service.Address, e.Service.Port))
		if !strings.Contains(body, "demo-web-1") {
			t.Fatalf("answer %q is not from demo-web-1", body)
		}
		// Consul DNS returns the same address and port.
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "udp", st.ConsulDNS)
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		addrs, err := r.LookupHost(ctx, "demo-web.service.consul")
		if err != nil || len(addrs) != 1 || addrs[0] != st.Gateway {
			t.Fatalf("DNS demo-web.service.consul = %v, %v; want [%s]", addrs, err, st.Gateway)
		}
		_, srvs, err := r.LookupSRV(ctx, "", "", "demo-web.service.consul")
		if err != nil || len(srvs) != 1 || int(srvs[0].Port) != e.Service.Port {
			t.Fatalf("DNS SRV = %v, %v; want port %d", srvs, err, e.Service.Port)
		}
		// Docker runs exactly one such container, on w-1, limited to 64MiB.
		cs := c.appContainers("demo-web")
		if len(cs) != 1 || cs[0].Labels[wire.LabelNode] != "w-1" {
			t.Fatalf("docker ps: %+v", cs)
		}
		info, err := c.dc.ContainerInspect(context.Background(), cs[0].ID)
		if err != nil || info.HostConfig.Memory != 64<<20 {
			t.Fatalf("memory limit = %d, %v; want 64MiB", info.HostConfig.Memory, err)
		}
		ps := c.mustMicado("ps")
		if !strings.Contains(ps, "demo-web-1") || !strings.Contains(ps, "passing") {
			t.Fatalf("ps: %s", ps)
		}
	})

	t.Run("several containers of one kind share a worker", func(t *testing.T) {
		c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "api", "--replicas", "3",
			"--memory", "200MiB", "--port", "8080", "--health-path", "/health")
		es := passing(t, cl, "api")
		if len(es) != 3 {
			t.Fatalf("%d passing api instances, want 3", len(es))
		}
		ports := map[int]bool{}
		for _, e := range es {
			if !contains(e.Service.Tags, "node=w-2") {
				t.Errorf("%s not on w-2: %v", e.Service.ID, e.Service.Tags)
			}
			ports[e.Service.Port] = true
		}
		if len(ports) != 3 {
			t.Fatalf("host ports %v are not distinct", ports)
		}
		if n := len(c.appContainers("api")); n != 3 {
			t.Fatalf("docker runs %d api containers, want 3", n)
		}
	})

	t.Run("bad input gets a clear error and changes nothing", func(t *testing.T) {
		kv, apps := c.kvCount(), len(c.appContainers(""))
		cases := []struct {
			args []string
			want string
		}{
			{[]string{"launch", "micado/demo-web", "--role", "db", "--name", "db"}, "lack role=db"},
			{[]string{"launch", "micado/demo-web", "--role", "proxy", "--name", "big", "--memory", "64GiB"}, "too little free memory"},
			{[]string{"launch", "micado/demo-web", "--role", "app", "--name", "more", "--replicas", "2", "--memory", "200MiB"}, "cannot be placed"},
			{[]string{"launch", "micado/demo-web", "--role", "proxy", "--memory", "12XB"}, `--memory: '12XB' is not a size`},
			{[]string{"launch", "micado/demo-web", "--memory", "64MiB"}, "--role: is required"},
			{[]string{"launch", "micado/demo-web", "--role", "proxy", "--name", "Bad_Name"}, `--name: 'Bad_Name' is not a valid service name`},
			{[]string{"launch", "micado/demo-web", "--role", "proxy"}, "already exists"},
			{[]string{"stop", "nosuch"}, "no container or service named nosuch"},
		}
		for _, tc := range cases {
			out, errOut, err := c.micado(tc.args...)
			if err == nil {
				t.Errorf("micado %v succeeded: %s", tc.args, out)
				continue
			}
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			if !strings.Contains(errOut, tc.want) || len(lines) != 1 || !strings.HasPrefix(lines[0], "micado: ") {
				t.Errorf("micado %v: stderr %q, want one line containing %q", tc.args, errOut, tc.want)
			}
		}
		if got := c.kvCount(); got != kv {
			t.Errorf("desired state changed: %d records, was %d", got, kv)
		}
		if got := len(c.appContainers("")); got != apps {
			t.Errorf("docker runs %d app containers, was %d", got, apps)
		}
		cmd := exec.Command(micadoBin, "ps")
		cmd.Env = append(os.Environ(), "MICADO_ADDR=http://127.0.0.1:1")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "cannot reach the micado manager") {
			t.Errorf("unreachable manager: %v %s", err, out)
		}
	})

	t.Run("a manager killed mid-launch continues and loses nothing", func(t *testing.T) {
		c.mustMicado("launch", "micado/demo-web", "--role", "proxy", "--name", "held", "--replicas", "3",
			"--memory", "32MiB", "--port", "8080", "--detach")
		ctx := context.Background()
		mgr := "micado-" + c.name + "-manager"
		if err := c.dc.ContainerKill(ctx, mgr, "KILL"); err != nil {
			t.Fatal(err)
		}
		if err := c.dc.ContainerStart(ctx, mgr, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 90*time.Second, "3 held containers pass after the restart", func() (bool, string) {
			es, _, err := cl.Health().Service("held", "", true, nil)
			return err == nil && len(es) == 3, fmt.Sprintf("%d passing, err %v", len(es), err)
		})
		// Exactly three copies: none lost, none duplicated.
		if n := len(c.appContainers("held")); n != 3 {
			t.Fatalf("docker runs %d held containers, want 3", n)
		}
		running := 0
		for _, x := range c.ps() {
			if x.Service == "held" && x.State == manager.StateRunning {
				running++
			}
		}
		if running != 3 {
			t.Fatalf("ps shows %d running held containers, want 3", running)
		}
	})

	t.Run("registrations come back after Consul restarts without them", func(t *testing.T) {
		// A Consul agent that restarts with its local state lost (a new
		// data disk, a rebuilt node) has no services; the KV store, on the
		// servers, survives. Simulate it: drop every registration, then
		// restart the agent.
		ctx := context.Background()
		svcs, err := cl.Agent().Services()
		if err != nil {
			t.Fatal(err)
		}
		dropped := 0
		for id := range svcs {
			if err := cl.Agent().ServiceDeregister(id); err != nil {
				t.Fatal(err)
			}
			dropped++
		}
		if dropped < 3 {
			t.Fatalf("only %d registrations to drop", dropped)
		}
		if err := c.dc.ContainerRestart(ctx, "micado-"+c.name+"-consul", container.StopOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 90*time.Second, "every registration is back and passing", func() (bool, string) {
			es, _, err := cl.Health().Service("held", "", true, nil)
			api, _, err2 := cl.Health().Service("api", "", true, nil)
			return err == nil && err2 == nil && len(es) == 3 && len(api) == 3,
				fmt.Sprintf("held %d, api %d passing (%v %v)", len(es), len(api), err, err2)
		})
	})

	t.Run("stop removes the container and its registration", func(t *testing.T) {
		out := c.mustMicado("stop", "demo-web")
		if !strings.Contains(out, "stopped demo-web-1") {
			t.Fatalf("stop output: %s", out)
		}
		svcs, _, err := cl.Catalog().Service("demo-web", "", nil)
		if err != nil || len(svcs) != 0 {
			t.Fatalf("catalog still has demo-web: %v %v", svcs, err)
		}
		if n := len(c.appContainers("demo-web")); n != 0 {
			t.Fatalf("docker still runs %d demo-web containers", n)
		}
		c.mustMicado("stop", "api-2")
		if es := passing(t, cl, "api"); len(es) != 2 {
			t.Fatalf("after stopping api-2, %d api instances pass, want 2", len(es))
		}
	})

	t.Run("down removes everything the cluster created", func(t *testing.T) {
		c.mustMicado("down")
		ctx := context.Background()
		f := clusterFilter(c.name)
		cs, _ := c.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
		if len(cs) != 0 {
			t.Errorf("%d containers left", len(cs))
		}
		if _, err := os.Stat(filepath.Join(c.home, c.name)); !os.IsNotExist(err) {
			t.Errorf("state directory left: %v", err)
		}
		if _, _, err := c.micado("ps"); err == nil {
			t.Errorf("ps works after down")
		}
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	cl := &http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(b)
}

func newBenchCluster(b *testing.B) *testCluster {
	return newTestCluster(b, "--workers", "1", "--roles", "proxy", "--worker-memory", "256MiB", "--max-instances", "20", "--max-per-role", "20")
}
