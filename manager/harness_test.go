package manager

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"github.com/micado-scale/micado/internal/testnet"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/cloudapi"
)

// consulBinary finds the Consul agent that `make consul` builds.
func consulBinary(tb testing.TB) string {
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

// freePort returns a loopback port free for both TCP and UDP.
func freePort(tb testing.TB) int {
	tb.Helper()
	return testnet.FreePort(tb)
}

// startConsul runs a real Consul dev agent on loopback for one test.
func startConsul(tb testing.TB) string {
	tb.Helper()
	httpPort := freePort(tb)
	ports := fmt.Sprintf(`ports { http = %d, dns = -1, grpc = -1, grpc_tls = -1, serf_lan = %d, serf_wan = %d, server = %d }`,
		httpPort, freePort(tb), freePort(tb), freePort(tb))
	cmd := exec.Command(consulBinary(tb), "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", "-log-level=error", "-hcl", ports)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start consul: %v", err)
	}
	tb.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(httpPort)
	cl, _ := api.NewClient(&api.Config{Address: addr})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if l, err := cl.Status().Leader(); err == nil && l != "" {
			return addr
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatal("consul dev agent did not elect a leader in 30s")
	return ""
}

// fakeCloud is a provider that records its calls; it stands in for a
// cloud where measuring the manager, not the cloud, is the point. Before
// answering Create it checks that the manager recorded the instance in
// Consul KV first.
type fakeCloud struct {
	mu      sync.Mutex
	kv      *api.KV
	prefix  string
	creates []fakeCreate
	errs    []string
	onCall  chan string
	// listed is what List answers; terminated records Terminate's ids.
	listed     []cloudapi.Instance
	terminated []string
}

type fakeCreate struct {
	spec cloudapi.Spec
	at   time.Time
}

func (f *fakeCloud) Name() string { return "fake" }
func (f *fakeCloud) Create(ctx context.Context, spec cloudapi.Spec) (cloudapi.Instance, error) {
	at := time.Now()
	p, _, err := f.kv.Get(f.prefix+"instances/"+spec.Name, nil)
	f.mu.Lock()
	if err != nil || p == nil {
		f.errs = append(f.errs, "create of "+spec.Name+" before its record was in Consul KV")
	}
	f.creates = append(f.creates, fakeCreate{spec: spec, at: at})
	f.mu.Unlock()
	if f.onCall != nil {
		f.onCall <- spec.Name
	}
	return cloudapi.Instance{ID: "i-" + spec.Name, Name: spec.Name, Cluster: spec.Cluster, Type: spec.Type.Name, Tags: spec.Tags, State: cloudapi.StatePending, CreatedAt: at}, nil
}
func (f *fakeCloud) Terminate(_ context.Context, id string) error {
	f.mu.Lock()
	f.terminated = append(f.terminated, id)
	f.mu.Unlock()
	return nil
}

func (f *fakeCloud) List(context.Context, string) ([]cloudapi.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]cloudapi.Instance(nil), f.listed...), nil
}

// testManager runs a real manager (real Consul, real memberlist on
// loopback) in this process and returns its API base URL.
func testManager(tb testing.TB, cfg Config) (string, *api.Client) {
	tb.Helper()
	return runManager(tb, startConsul(tb), cfg)
}

// runManager runs a manager against a Consul agent the test started (and
// may have seeded with state an earlier manager left).
func runManager(tb testing.TB, consulAddr string, cfg Config) (string, *api.Client) {
	tb.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	apiPort := freePort(tb)
	cfg.Cluster = "mt"
	cfg.ClusterKey = key
	cfg.BindAddr, cfg.AdvertiseAddr, cfg.BindPort = "127.0.0.1", "127.0.0.1", freePort(tb)
	cfg.APIAddr = "127.0.0.1:" + strconv.Itoa(apiPort)
	cfg.ConsulAddr = consulAddr
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	tb.Cleanup(func() { cancel(); <-done })
	base := "http://" + cfg.APIAddr
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(base + "/v1/status"); err == nil {
			resp.Body.Close()
			cl, _ := api.NewClient(&api.Config{Address: consulAddr})
			return base, cl
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatal("manager API did not come up")
	return "", nil
}

func postLaunch(tb testing.TB, base string, req LaunchRequest) (int, []byte) {
	tb.Helper()
	b, _ := json.Marshal(req)
	resp, err := http.Post(base+"/v1/containers", "application/json", bytes.NewReader(b))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}
