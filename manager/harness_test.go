package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/internal/wire"
)

// The manager's own tests run managers in this process against fakes of
// everything they talk to, each at the seam the manager owns: the
// journal (MemJournal, Consul KV's semantics), the leader lock (MemLock),
// the registry (fakeRegistry: registrations and a health watch that
// blocks like Consul's), the worker agents (simAgents: simulated workers
// that run "containers" as records), the cloud (fakeCloud) and gossip (the
// test feeds each manager's members table as memberlist would). No Docker,
// no Consul: the end-to-end suites in cmd/micado run the real parts.

// testLog returns a logger for managers under test: quiet unless
// MICADO_TEST_LOG is set.
func testLog() *slog.Logger {
	if os.Getenv("MICADO_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// world is one simulated cluster: its journal, lock, registry, workers
// and cloud, shared by every manager a test starts in it.
type world struct {
	t       testing.TB
	lock    *MemLock
	journal *MemJournal
	reg     *fakeRegistry
	agents  *simAgents
	cloud   *fakeCloud

	mu       sync.Mutex
	managers []*testManager
}

func newWorld(t testing.TB) *world {
	lock := NewMemLock()
	w := &world{t: t, lock: lock, journal: NewMemJournal(lock), reg: newFakeRegistry(), cloud: &fakeCloud{}}
	w.agents = newSimAgents(w)
	w.cloud.journal = w.journal
	return w
}

// testManager is a manager running in a world.
type testManager struct {
	*Manager
	w      *world
	name   string
	srv    *httptest.Server
	base   string
	cancel context.CancelFunc
	done   chan struct{}
}

// testConfig returns the configuration tests start from: a fast loop, no
// cron, no scale-out.
func testConfig() Config {
	return Config{Cluster: "mt", ReconcileInterval: 100 * time.Millisecond, ConsolidateSchedule: "off",
		RevalidateDelay: time.Millisecond, ServiceWait: 10 * time.Second, Logger: testLog()}
}

// start runs a manager named name with cfg (Cluster and Logger set by
// testConfig if empty) and feeds it the world's workers.
func (w *world) start(name string, cfg Config) *testManager {
	w.t.Helper()
	if cfg.Cluster == "" {
		cfg.Cluster = "mt"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLog()
	}
	cfg.NodeName = name
	var tm *testManager
	m, err := New(cfg, Deps{Journal: w.journal, Lock: w.lock.For(name), Registry: w.reg, Agents: w.agents,
		Forward: http.DefaultTransport})
	if err != nil {
		w.t.Fatal(err)
	}
	tm = &testManager{Manager: m, w: w, name: name, done: make(chan struct{})}
	tm.srv = httptest.NewServer(m.Handler())
	tm.base = tm.srv.URL
	ctx, cancel := context.WithCancel(context.Background())
	tm.cancel = cancel
	w.mu.Lock()
	w.managers = append(w.managers, tm)
	others := append([]*testManager(nil), w.managers...)
	w.mu.Unlock()
	// Gossip: every manager sees every other and every worker.
	for _, o := range others {
		o.seeManager(tm)
		tm.seeManager(o)
	}
	for _, sw := range w.agents.all() {
		if !sw.dead {
			tm.see(sw)
		}
	}
	go func() {
		defer close(tm.done)
		_ = m.Run(ctx)
	}()
	w.t.Cleanup(tm.stop)
	return tm
}

// stop ends the manager (as a clean shutdown would) and waits for it.
func (tm *testManager) stop() {
	tm.cancel()
	<-tm.done
	tm.srv.Close()
	tm.w.mu.Lock()
	for i, o := range tm.w.managers {
		if o == tm {
			tm.w.managers = append(tm.w.managers[:i], tm.w.managers[i+1:]...)
			break
		}
	}
	tm.w.mu.Unlock()
}

// seeManager puts manager o into tm's members table as gossip would.
func (tm *testManager) seeManager(o *testManager) {
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(o.base, "http://"))
	meta, _ := wire.Load{Kind: wire.KindManager, API: net.JoinHostPort(host, port), Started: 1}.Encode()
	tm.members.upsert(&memberlist.Node{Name: o.name, Addr: net.ParseIP(host), Port: 7946, Meta: meta}, MemberAlive)
}

// see puts a simulated worker into tm's members table as gossip would.
func (tm *testManager) see(sw *simWorker) {
	meta, _ := sw.report().Encode()
	tm.members.upsert(&memberlist.Node{Name: sw.name, Addr: net.IPv4(127, 0, 0, 1), Port: 7946, Meta: meta}, MemberAlive)
}

// leaderOf waits until one of the world's managers leads and returns it.
func (w *world) leader() *testManager {
	w.t.Helper()
	var l *testManager
	eventually(w.t, 10*time.Second, "a manager leads", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, m := range w.managers {
			if m.current() != nil {
				l = m
				return true
			}
		}
		return false
	})
	return l
}

// eventually polls cond every 10 ms until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// --- The API, as the CLI calls it. ---

func (tm *testManager) do(method, path string, body any, out any) int {
	tm.w.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, tm.base+path, r)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tm.cfg.APIToken != "" {
		req.Header.Set("Authorization", "Bearer "+tm.cfg.APIToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tm.w.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			tm.w.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// launch posts a launch and returns the status and the error text.
func (tm *testManager) launch(req LaunchRequest) (int, string) {
	tm.w.t.Helper()
	var out json.RawMessage
	code := tm.do("POST", "/v1/containers", req, &out)
	var e ErrorBody
	_ = json.Unmarshal(out, &e)
	return code, e.Error
}

// ps returns every container as GET /v1/containers shows it.
func (tm *testManager) ps() []ContainerView {
	tm.w.t.Helper()
	var out []ContainerView
	if code := tm.do("GET", "/v1/containers", nil, &out); code != 200 {
		tm.w.t.Fatalf("GET /v1/containers: %d", code)
	}
	return out
}

// passing counts the running, passing containers of a service.
func (tm *testManager) passing(service string) int {
	n := 0
	for _, c := range tm.ps() {
		if c.Service == service && c.State == StateRunning && c.Health == HealthPassing {
			n++
		}
	}
	return n
}

// journalRecords reads every container record of the journal.
// desiredKeys lists the journal's keys of desired state (containers,
// apps, instances, batch markers) in order, leaving out the event log
// and the members, which are written in the background.
func (w *world) desiredKeys() []string {
	var ks []string
	for _, p := range []string{containersPrefix, appsPrefix, instancesPrefix, batchesPrefix} {
		ks = append(ks, w.journal.Keys(p)...)
	}
	return ks
}

func (w *world) journalRecords() map[string]*Container {
	out := map[string]*Container{}
	for _, k := range w.journal.Keys(containersPrefix) {
		p, _ := w.journal.Get(k)
		var c Container
		if err := json.Unmarshal(p.Value, &c); err != nil {
			w.t.Fatalf("record %s: %v", k, err)
		}
		out[c.Name] = &c
	}
	return out
}

// --- Simulated workers. ---

// simAgents simulates the worker agents of a world at the Agents seam:
// each worker runs "containers" as records, answers at once, returns its
// load report with every start and stop (as real agents do), and obeys
// the term fence. Tests can make a worker fail its calls.
type simAgents struct {
	w      *world
	mu     sync.Mutex
	byAPI  map[string]*simWorker
	byName map[string]*simWorker
	starts int
	// requests are the start requests received, as JSON on the wire.
	requests [][]byte
	// refuse, when set, makes calls of a term fail as if the caller were
	// gone (a dead leader calls nobody).
	refuse func(term uint64) bool
	// cpu is the CPU (% of one core) Stats reports per service, and
	// clock the time of its samples (default time.Now).
	cpu   map[string]float64
	clock func() time.Time
}

type simWorker struct {
	name, api string
	tags      []string
	memory    int64
	started   int64
	seq       uint64
	term      uint64
	copies    map[string]wire.ContainerInfo // by instance/generation
	fail      error                         // every call fails with it
	nextPort  int
	left      bool
	dead      bool    // killed: its agent never answers again
	cpu       float64 // gossiped CPU use, fraction of its cores
}

func newSimAgents(w *world) *simAgents {
	return &simAgents{w: w, byAPI: map[string]*simWorker{}, byName: map[string]*simWorker{}}
}

var _ Agents = (*simAgents)(nil)

// addWorker adds a worker to the world and to every manager's table.
func (w *world) addWorker(name string, memory int64, tags ...string) *simWorker {
	a := w.agents
	a.mu.Lock()
	sw := &simWorker{name: name, api: "10.0." + strconv.Itoa(len(a.byName)/250) + "." + strconv.Itoa(1+len(a.byName)%250) + ":7070",
		tags: tags, memory: memory, started: time.Now().Unix(), copies: map[string]wire.ContainerInfo{}, nextPort: 30000}
	a.byAPI[sw.api] = sw
	a.byName[name] = sw
	a.mu.Unlock()
	w.gossip(sw)
	return sw
}

// gossip tells every manager the worker's current report.
func (w *world) gossip(sw *simWorker) {
	w.mu.Lock()
	ms := append([]*testManager(nil), w.managers...)
	w.mu.Unlock()
	for _, m := range ms {
		m.see(sw)
	}
}

// kill kills a worker: its agent never answers again, and every manager's
// gossip declares it dead.
func (w *world) kill(name string) {
	w.agents.mu.Lock()
	if sw := w.agents.byName[name]; sw != nil {
		sw.dead = true
	}
	w.agents.mu.Unlock()
	w.mu.Lock()
	ms := append([]*testManager(nil), w.managers...)
	w.mu.Unlock()
	for _, m := range ms {
		m.members.NotifyLeave(&memberlist.Node{Name: name, State: memberlist.StateDead})
	}
}

// revive brings a killed worker back (a partition healed) with what it
// ran, and gossip announces it again.
func (w *world) revive(name string) {
	w.agents.mu.Lock()
	sw := w.agents.byName[name]
	sw.dead = false
	w.agents.mu.Unlock()
	w.gossip(sw)
}

func (a *simAgents) all() []*simWorker {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*simWorker, 0, len(a.byName))
	for _, sw := range a.byName {
		out = append(out, sw)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].name, out[j].name) })
	return out
}

func (a *simAgents) worker(name string) *simWorker {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.byName[name]
}

// report is the worker's load report. Call with a.mu held or before it
// is shared.
func (sw *simWorker) report() wire.Load {
	l := wire.Load{Kind: wire.KindWorker, Tags: sw.tags, Capacity: sw.memory, API: sw.api, Started: sw.started, Seq: sw.seq, CPU: sw.cpu}
	var cs []wire.ContainerInfo
	for _, c := range sw.copies {
		l.Reserved += c.Memory
		l.Containers++
		cs = append(cs, c)
	}
	l.Digest = wire.ContainersDigest(cs)
	return l
}

// running returns the instances the worker runs, with their generations.
func (sw *simWorker) running(a *simAgents) map[string][]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string][]int{}
	for _, c := range sw.copies {
		out[c.Instance] = append(out[c.Instance], c.Generation)
	}
	return out
}

func (a *simAgents) get(ctx context.Context, addr string) (*simWorker, error) {
	if a.refuse != nil && a.refuse(wire.TermOf(ctx)) {
		return nil, fmt.Errorf("the caller of term %d is gone", wire.TermOf(ctx))
	}
	sw := a.byAPI[addr]
	if sw == nil || sw.left || sw.dead {
		return nil, fmt.Errorf("worker agent at %s: connection refused", addr)
	}
	if sw.fail != nil {
		return nil, sw.fail
	}
	return sw, nil
}

// fence refuses a command of an older term, as the real agent does.
func (sw *simWorker) fence(ctx context.Context) error {
	t := wire.TermOf(ctx)
	if t == 0 {
		return nil // tools and tests, as the real agent takes them
	}
	if t < sw.term {
		return &wire.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("refused: term %d is older than %d", t, sw.term)}
	}
	sw.term = t
	return nil
}

func (a *simAgents) changed(sw *simWorker) {
	sw.seq++
	l := sw.report()
	a.mu.Unlock()
	a.w.mu.Lock()
	ms := append([]*testManager(nil), a.w.managers...)
	a.w.mu.Unlock()
	for _, m := range ms {
		m.ApplyLoad(sw.api, l)
	}
	a.mu.Lock()
}

func (a *simAgents) Start(ctx context.Context, addr string, r wire.StartRequest) (wire.ContainerInfo, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sw, err := a.get(ctx, addr)
	if err != nil {
		return wire.ContainerInfo{}, err
	}
	if err := sw.fence(ctx); err != nil {
		return wire.ContainerInfo{}, err
	}
	if r.Image == "missing/image" {
		return wire.ContainerInfo{}, &wire.APIError{Status: http.StatusNotFound, Message: "image missing/image is not on this worker"}
	}
	key := r.Instance + "/" + strconv.Itoa(r.Generation)
	if c, ok := sw.copies[key]; ok {
		return c, nil
	}
	a.starts++
	if b, err := json.Marshal(r); err == nil {
		a.requests = append(a.requests, b)
	}
	info := wire.ContainerInfo{ID: fmt.Sprintf("%s-%d-%s", sw.name, a.starts, r.Instance), Instance: r.Instance, Service: r.Service,
		App: r.App, Image: r.Image, Node: sw.name, Memory: r.Memory, State: "running", Address: "10.1.0.1", Generation: r.Generation}
	for _, p := range r.Ports {
		sw.nextPort++
		info.Ports = append(info.Ports, wire.Binding{Container: p.Container, Protocol: p.Protocol, Host: sw.nextPort})
	}
	sw.copies[key] = info
	a.changed(sw)
	return info, nil
}

// Stats reports every copy the worker runs with the CPU set for its
// service, and half its memory request as memory used.
func (a *simAgents) Stats(ctx context.Context, addr string) (wire.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sw, err := a.get(ctx, addr)
	if err != nil {
		return wire.Stats{}, err
	}
	now := time.Now()
	if a.clock != nil {
		now = a.clock()
	}
	st := wire.Stats{Node: sw.name, CPUs: 2, Capacity: sw.memory, At: now}
	for _, c := range sw.copies {
		cpu := a.cpu[c.Service]
		st.Containers = append(st.Containers, wire.ContainerStats{Instance: c.Instance, Service: c.Service, Generation: c.Generation,
			CPU: cpu, HasCPU: true, Memory: c.Memory / 2, Limit: c.Memory, At: now})
	}
	return st, nil
}

// setCPU sets the CPU every replica of a service reports.
func (a *simAgents) setCPU(service string, pct float64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cpu == nil {
		a.cpu = map[string]float64{}
	}
	a.cpu[service] = pct
}

func (a *simAgents) Stop(ctx context.Context, addr, instance string, gen int) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sw, err := a.get(ctx, addr)
	if err != nil {
		return false, err
	}
	if err := sw.fence(ctx); err != nil {
		return false, err
	}
	found := false
	for k, c := range sw.copies {
		if c.Instance == instance && (gen < 0 || c.Generation == gen) {
			delete(sw.copies, k)
			found = true
		}
	}
	if found {
		a.changed(sw)
	}
	return found, nil
}

func (a *simAgents) List(ctx context.Context, addr string) ([]wire.ContainerInfo, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sw, err := a.get(ctx, addr)
	if err != nil {
		return nil, err
	}
	out := make([]wire.ContainerInfo, 0, len(sw.copies))
	for _, c := range sw.copies {
		out = append(out, c)
	}
	return out, nil
}

func (a *simAgents) Leave(ctx context.Context, addr string) error {
	a.mu.Lock()
	sw, err := a.get(ctx, addr)
	if err == nil {
		err = sw.fence(ctx)
	}
	if err != nil {
		a.mu.Unlock()
		return err
	}
	sw.left = true
	name := sw.name
	a.mu.Unlock()
	a.w.mu.Lock()
	ms := append([]*testManager(nil), a.w.managers...)
	a.w.mu.Unlock()
	for _, m := range ms {
		m.members.NotifyLeave(&memberlist.Node{Name: name, State: memberlist.StateLeft})
	}
	return nil
}

// crash makes a worker's container vanish (it exited).
func (a *simAgents) crash(node, instance string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sw := a.byName[node]
	for k, c := range sw.copies {
		if c.Instance == instance {
			delete(sw.copies, k)
		}
	}
	sw.seq++
	l := sw.report()
	go a.w.gossipLoad(sw.name, l)
}

// setWorkerCPU makes a worker gossip a CPU use (fraction of its cores).
func (w *world) setWorkerCPU(name string, cpu float64) {
	a := w.agents
	a.mu.Lock()
	sw := a.byName[name]
	sw.cpu = cpu
	sw.seq++
	l := sw.report()
	a.mu.Unlock()
	w.gossipLoad(name, l)
}

// gossipLoad delivers a load report to every manager (as gossip would).
func (w *world) gossipLoad(name string, l wire.Load) {
	w.mu.Lock()
	ms := append([]*testManager(nil), w.managers...)
	w.mu.Unlock()
	for _, m := range ms {
		m.members.applyLoadOf(name, l)
	}
}

// --- A fake registry. ---

// fakeRegistry keeps registrations in memory; every registration with a
// check passes (unless the test says otherwise), and Health blocks until
// something changes, as Consul's blocking query does.
type fakeRegistry struct {
	mu       sync.Mutex
	regs     map[string]Registration
	critical map[string]bool // service IDs whose check fails
	index    uint64
	changed  chan struct{}
	fail     error // every call fails with it
	calls    int
}

func newFakeRegistry() *fakeRegistry {
	return &fakeRegistry{regs: map[string]Registration{}, critical: map[string]bool{}, index: 1, changed: make(chan struct{})}
}

var _ Registry = (*fakeRegistry)(nil)

func (r *fakeRegistry) bump() {
	r.index++
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *fakeRegistry) Register(_ context.Context, reg Registration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.fail != nil {
		return r.fail
	}
	r.regs[reg.ID] = reg
	r.bump()
	return nil
}

func (r *fakeRegistry) Deregister(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.fail != nil {
		return r.fail
	}
	if _, ok := r.regs[id]; ok {
		delete(r.regs, id)
		r.bump()
	}
	return nil
}

func (r *fakeRegistry) List(context.Context) (map[string]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.fail != nil {
		return nil, r.fail
	}
	out := map[string]string{}
	for id, reg := range r.regs {
		out[id] = reg.Meta[MetaInstance]
	}
	return out, nil
}

func (r *fakeRegistry) Health(ctx context.Context, index uint64, wait time.Duration) (map[string]string, uint64, error) {
	r.mu.Lock()
	r.calls++
	if r.fail != nil {
		r.mu.Unlock()
		return nil, 0, r.fail
	}
	if index == r.index {
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(wait):
		}
		r.mu.Lock()
	}
	defer r.mu.Unlock()
	out := map[string]string{}
	for id, reg := range r.regs {
		if reg.Check == nil {
			continue
		}
		out[id] = HealthPassing
		if r.critical[id] {
			out[id] = HealthCritical
		}
	}
	return out, r.index, nil
}

// has reports whether a service ID is registered.
func (r *fakeRegistry) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.regs[id]
	return ok
}

// ids returns the registered service IDs, sorted.
func (r *fakeRegistry) ids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for id := range r.regs {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// drop loses every registration (a registry restart without state).
func (r *fakeRegistry) drop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.regs = map[string]Registration{}
	r.index = 1 // the restarted registry's index starts again
	close(r.changed)
	r.changed = make(chan struct{})
}

// --- A fake cloud. ---

// fakeCloud records its calls; before answering Create it checks that the
// instance was recorded in the journal first.
type fakeCloud struct {
	mu         sync.Mutex
	journal    *MemJournal
	creates    []cloudapi.Spec
	errs       []string
	listed     []cloudapi.Instance
	terminated []string
	createErr  error
	onCreate   func(spec cloudapi.Spec) // called before answering
}

var _ cloudapi.Provider = (*fakeCloud)(nil)

func (f *fakeCloud) Name() string { return "fake" }

func (f *fakeCloud) Create(ctx context.Context, spec cloudapi.Spec) (cloudapi.Instance, error) {
	if _, ok := f.journal.Get(instancesPrefix + spec.Name); !ok {
		f.mu.Lock()
		f.errs = append(f.errs, "create of "+spec.Name+" before its record was in the journal")
		f.mu.Unlock()
	}
	f.mu.Lock()
	f.creates = append(f.creates, spec)
	err, hook := f.createErr, f.onCreate
	f.mu.Unlock()
	if hook != nil {
		hook(spec)
	}
	if err != nil {
		return cloudapi.Instance{}, err
	}
	in := cloudapi.Instance{ID: "i-" + spec.Name, Name: spec.Name, Cluster: spec.Cluster, Type: spec.Type.Name, Tags: spec.Tags,
		State: cloudapi.StatePending, CreatedAt: time.Now()}
	f.mu.Lock()
	f.listed = append(f.listed, in)
	f.mu.Unlock()
	return in, nil
}

func (f *fakeCloud) Terminate(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.terminated = append(f.terminated, id)
	for i, in := range f.listed {
		if in.ID == id {
			f.listed = append(f.listed[:i], f.listed[i+1:]...)
			return nil
		}
	}
	return nil
}

func (f *fakeCloud) List(context.Context, string) ([]cloudapi.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]cloudapi.Instance(nil), f.listed...), nil
}

func (f *fakeCloud) created() []cloudapi.Spec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]cloudapi.Spec(nil), f.creates...)
}

var errBoom = errors.New("boom")

var testTypes = []cloudapi.InstanceType{{Name: "small", Memory: 512 << 20}, {Name: "large", Memory: 2 << 30}}

// memberNode is a dead gossip node named name.
func memberNode(name string) *memberlist.Node {
	return &memberlist.Node{Name: name, State: memberlist.StateDead}
}
