package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/hashicorp/memberlist"

	"github.com/micado-scale/micado/internal/testnet"
	"github.com/micado-scale/micado/internal/wire"
)

// observer is a bare memberlist member that records the load reports it
// sees, as the manager does.
type observer struct {
	mu    sync.Mutex
	loads map[string]wire.Load
	seen  chan struct{}
}

func (o *observer) record(n *memberlist.Node) {
	l, err := wire.DecodeLoad(n.Meta)
	if err != nil {
		return
	}
	o.mu.Lock()
	o.loads[n.Name] = l
	o.mu.Unlock()
	select {
	case o.seen <- struct{}{}:
	default:
	}
}
func (o *observer) NotifyJoin(n *memberlist.Node)   { o.record(n) }
func (o *observer) NotifyUpdate(n *memberlist.Node) { o.record(n) }
func (o *observer) NotifyLeave(*memberlist.Node)    {}

func (o *observer) load(name string) (wire.Load, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	l, ok := o.loads[name]
	return l, ok
}

// freeTCPPort returns a loopback port free for both TCP and UDP.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	return testnet.FreePort(t)
}

// waitFor polls until cond holds, failing after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not seen within %s", what, d)
	return 0
}

// TestAgentGossipsLoadAndObeysOnlyTheManager runs a real agent against
// the real Docker engine and a memberlist observer on loopback: the
// observer sees the agent's load change when a container starts and
// stops, and the agent API refuses callers without the cluster's token.
func TestAgentGossipsLoadAndObeysOnlyTheManager(t *testing.T) {
	docker, ctx, cluster := dockerForTest(t, "wt")
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	key := make([]byte, 32)
	_, _ = rand.Read(key)

	obs := &observer{loads: map[string]wire.Load{}, seen: make(chan struct{}, 1)}
	oc := memberlist.DefaultLANConfig()
	oc.Name = "observer"
	oc.BindAddr, oc.AdvertiseAddr = "127.0.0.1", "127.0.0.1"
	oc.BindPort, oc.AdvertisePort = 0, 0
	oc.SecretKey = key
	oc.Events = obs
	oc.LogOutput = io.Discard
	ml, err := memberlist.Create(oc)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Shutdown()
	obsAddr := ml.LocalNode().Address()

	gossipPort := freeTCPPort(t)
	apiPort := freeTCPPort(t)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Cluster: cluster, Name: "w-test", Tags: []string{"role=app"}, Memory: 512 << 20,
			BindAddr: "127.0.0.1", BindPort: gossipPort, AdvertiseAddr: "127.0.0.1",
			APIAddr: "127.0.0.1:" + strconv.Itoa(apiPort), PublishAddr: "127.0.0.1",
			Join: []string{obsAddr}, ClusterKey: key, Pull: false,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
	}()
	waitFor(t, 20*time.Second, "the agent joins and gossips its load", func() bool {
		l, ok := obs.load("w-test")
		return ok && l.Kind == wire.KindWorker && l.Capacity == 512<<20 && l.API != ""
	})
	l, _ := obs.load("w-test")
	if l.Tags[0] != "role=app" || l.API != "127.0.0.1:"+strconv.Itoa(apiPort) {
		t.Fatalf("load report %+v", l)
	}

	// Without the token derived from the cluster key, the agent obeys no one.
	for _, tok := range []string{"", "Bearer wrong", "Bearer " + wire.AgentToken([]byte("another cluster's key....!!!!!!"))} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+l.API+"/v1/containers", nil)
		if tok != "" {
			req.Header.Set("Authorization", tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("token %q: status %d, want 401", tok, resp.StatusCode)
		}
	}
	wrong := wire.NewClient([]byte("another cluster's key....!!!!!!"))
	if _, err := wrong.Start(ctx, l.API, wire.StartRequest{Instance: "x-1", Service: "x", Image: "micado/demo-web", Memory: 64 << 20}); err == nil {
		t.Fatal("an agent started a container for a caller without the cluster key")
	}

	c := wire.NewClient(key)
	var infos []wire.ContainerInfo
	for i := 1; i <= 2; i++ {
		info, err := c.Start(ctx, l.API, wire.StartRequest{Instance: fmt.Sprintf("web-%d", i), Service: "web", Image: "micado/demo-web",
			Memory: 64 << 20, Ports: []wire.Port{{Container: 8080}}})
		if err != nil {
			t.Fatal(err)
		}
		infos = append(infos, info)
	}
	seenIn := waitFor(t, 10*time.Second, "the observer sees 2 containers and 128MiB reserved", func() bool {
		l, _ := obs.load("w-test")
		return l.Containers == 2 && l.Reserved == 128<<20
	})
	t.Logf("load change seen by the observer %s after the start returned", seenIn)

	// Two containers of one kind on one worker, each on its own host port.
	if infos[0].Ports[0].Host == infos[1].Ports[0].Host || infos[0].Ports[0].Host == 0 {
		t.Fatalf("host ports %v and %v", infos[0].Ports, infos[1].Ports)
	}
	for _, info := range infos {
		// The start answers once Docker started the process; it may take
		// a moment more to listen.
		url := fmt.Sprintf("http://127.0.0.1:%d/health", info.Ports[0].Host)
		waitFor(t, 10*time.Second, "the container answers on its host port", func() bool {
			resp, err := http.Get(url)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		ci, err := docker.ContainerInspect(ctx, info.ID)
		if err != nil || ci.HostConfig.Memory != 64<<20 || ci.Config.Labels[wire.LabelNode] != "w-test" || ci.Config.Labels[wire.LabelService] != "web" {
			t.Fatalf("container %s: memory %d labels %v err %v", info.Name, ci.HostConfig.Memory, ci.Config.Labels, err)
		}
	}
	// Starting an instance again returns the running copy, not a second one.
	again, err := c.Start(ctx, l.API, wire.StartRequest{Instance: "web-1", Service: "web", Image: "micado/demo-web", Memory: 64 << 20, Ports: []wire.Port{{Container: 8080}}})
	if err != nil || again.ID != infos[0].ID {
		t.Fatalf("second start of web-1: %v, id %s want %s", err, again.ID, infos[0].ID)
	}
	// A missing image is a clear 404, not a crash.
	if _, err := c.Start(ctx, l.API, wire.StartRequest{Instance: "n-1", Service: "n", Image: "micado/no-such-image:1", Memory: 64 << 20}); !wire.IsNotFound(err) {
		t.Fatalf("missing image: %v", err)
	}

	for _, info := range infos {
		if found, err := c.Stop(ctx, l.API, info.Instance, -1); err != nil || !found {
			t.Fatalf("stop %s: %v %v", info.Instance, found, err)
		}
	}
	waitFor(t, 10*time.Second, "the observer sees the worker empty again", func() bool {
		l, _ := obs.load("w-test")
		return l.Containers == 0 && l.Reserved == 0
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v", err)
	}
}

// dockerForTest connects to the Docker engine, fails the test (never
// skips) when the engine or the demo-web image is missing, and names a
// fresh cluster whose containers are removed when the test ends, also
// when it fails. ctx ends with the test.
func dockerForTest(t *testing.T, prefix string) (*client.Client, context.Context, string) {
	t.Helper()
	docker, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { docker.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if _, err := docker.Ping(ctx); err != nil {
		t.Fatalf("this test needs a running Docker engine: %v", err)
	}
	if _, err := docker.ImageInspect(ctx, "micado/demo-web:latest"); err != nil {
		t.Fatalf("image micado/demo-web is missing: run `make images`: %v", err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	cluster := prefix + "-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		cs, _ := docker.ContainerList(context.Background(), container.ListOptions{All: true,
			Filters: filters.NewArgs(filters.Arg("label", wire.LabelCluster+"="+cluster))})
		for _, c := range cs {
			_ = docker.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
		}
	})
	return docker, ctx, cluster
}
