package manager

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/micado-scale/micado/cloudapi"
)

func scaleConfig() Config {
	cfg := testConfig()
	cfg.InstanceTypes = testTypes
	return cfg
}

// With no room, a launch is held, its intent is in the journal before the
// cloud is called, one instance is asked for all replicas of a role
// together, a request that fits on the booting instance asks for nothing
// more, and once the worker joins the held containers run there.
func TestHeldLaunchAsksTheCloudOnceAndRecordsFirst(t *testing.T) {
	w := newWorld(t)
	cfg := scaleConfig()
	cfg.Provider = w.cloud
	cfg.ScaleRoles = []string{"proxy"}
	created := make(chan string, 16)
	w.cloud.onCreate = func(s cloudapi.Spec) { created <- s.Name }
	m := w.start("m1", cfg)
	w.leader()
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "a", Role: "proxy", Memory: "200MiB", Replicas: 2}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	var name string
	select {
	case name = <-created:
	case <-time.After(5 * time.Second):
		t.Fatal("the cloud was never asked for an instance")
	}
	if !strings.HasPrefix(name, "w-proxy-") {
		t.Fatalf("instance name %q", name)
	}
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "b", Role: "proxy", Memory: "50MiB"}); code != http.StatusAccepted {
		t.Fatalf("second launch: %d %s", code, msg)
	}
	select {
	case n := <-created:
		t.Fatalf("a request that fits on a booting instance asked for %s", n)
	case <-time.After(500 * time.Millisecond):
	}
	cs := w.cloud.created()
	if len(cs) != 1 || cs[0].Type.Name != "small" || cs[0].Tags[0] != "role=proxy" || len(w.cloud.errs) > 0 {
		t.Fatalf("creates: %+v, errors %v", cs, w.cloud.errs)
	}
	for _, c := range m.ps() {
		if c.State != StatePending || c.WaitingFor != name || !strings.Contains(c.Reason, "waiting for instance "+name) {
			t.Fatalf("held container: %+v", c)
		}
	}
	// Roles scale-out may not create, and impossible sizes, are refused
	// whole and change nothing.
	before := w.desiredKeys()
	for _, req := range []LaunchRequest{
		{Image: "micado/demo-web", Name: "d", Role: "db"},
		{Image: "micado/demo-web", Name: "h", Role: "proxy", Memory: "3GiB"},
	} {
		code, msg := m.launch(req)
		if code != http.StatusUnprocessableEntity {
			t.Fatalf("launch %+v: %d %s", req, code, msg)
		}
	}
	if after := w.desiredKeys(); !slices.Equal(before, after) {
		t.Fatalf("refused launches changed the journal: %v → %v", before, after)
	}
	// The worker joins: the held containers run on it.
	w.addWorker(name, 512<<20, "role=proxy")
	eventually(t, 5*time.Second, "a and b run on the new worker", func() bool { return m.passing("a") == 2 && m.passing("b") == 1 })
	var ins []*InstanceRecord
	for _, in := range m.current().store.Instances() {
		ins = append(ins, in)
	}
	if len(ins) != 1 || ins[0].State != InstanceJoined || ins[0].ID != "i-"+name {
		t.Fatalf("instances: %+v", ins)
	}
}

// An instance whose worker never joins is terminated and asked for again;
// after MaxScaleAttempts the request fails with the reason. A cloud that
// refuses to create counts the same.
func TestJoinTimeoutRetriesThenFails(t *testing.T) {
	w := newWorld(t)
	cfg := scaleConfig()
	cfg.Provider = w.cloud
	cfg.JoinTimeout = 300 * time.Millisecond
	m := w.start("m1", cfg)
	w.leader()
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "x", Role: "app", Memory: "64MiB"}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 10*time.Second, "x fails after 3 instances", func() bool {
		c, _ := m.current().store.Container("x-1")
		return c.State == StateFailed && strings.Contains(c.Reason, "gave up after 3 instances")
	})
	if n := len(w.cloud.created()); n != 3 {
		t.Fatalf("%d instances asked for", n)
	}
	w.cloud.mu.Lock()
	terminated := len(w.cloud.terminated)
	w.cloud.mu.Unlock()
	if terminated != 3 {
		t.Fatalf("%d instances terminated", terminated)
	}
	w.cloud.mu.Lock()
	w.cloud.createErr = errors.New("quota exceeded")
	w.cloud.mu.Unlock()
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "y", Role: "app", Memory: "64MiB"}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 10*time.Second, "y fails: the cloud refuses", func() bool {
		c, _ := m.current().store.Container("y-1")
		return c.State == StateFailed && strings.Contains(c.Reason, "quota exceeded")
	})
}

// A leader that starts after another died finds the instance work it left
// in the journal and finishes it: a create call whose answer was lost is
// found in the cloud or made again, a termination is completed, an
// instance whose worker never comes back is terminated after LostTimeout,
// and an instance of the cluster no record knows is swept.
func TestNewLeaderFinishesInstanceWork(t *testing.T) {
	w := newWorld(t)
	now := time.Now().UTC()
	for _, in := range []InstanceRecord{
		{Name: "w-app-lost1", Type: "small", Memory: 512 << 20, Tags: []string{"role=app"}, Provider: "fake", State: InstanceRequested, RequestedAt: now},
		{Name: "w-app-made1", Type: "small", Memory: 512 << 20, Tags: []string{"role=app"}, Provider: "fake", State: InstanceRequested, RequestedAt: now},
		{Name: "w-app-term1", Type: "small", Memory: 512 << 20, Tags: []string{"role=app"}, Provider: "fake", ID: "i-term1", State: InstanceTerminating, RequestedAt: now},
		{Name: "w-app-gone1", Type: "small", Memory: 512 << 20, Tags: []string{"role=app"}, Provider: "fake", ID: "i-gone1", State: InstanceJoined, RequestedAt: now},
	} {
		b, _ := json.Marshal(in)
		w.journal.Put(instancesPrefix+in.Name, b)
	}
	w.cloud.listed = []cloudapi.Instance{
		{ID: "i-made1", Name: "w-app-made1", Cluster: "mt", State: cloudapi.StatePending, CreatedAt: now},
		{ID: "i-stray", Name: "w-app-stray", Cluster: "mt", State: cloudapi.StateRunning, CreatedAt: now.Add(-time.Hour)},
	}
	cfg := scaleConfig()
	cfg.Provider = w.cloud
	cfg.LostTimeout = 300 * time.Millisecond
	m := w.start("m1", cfg)
	m.started = time.Now().Add(-time.Hour) // past the sweep's grace
	w.leader()
	eventually(t, 10*time.Second, "the instance work is finished", func() bool {
		st := m.current().store
		lost, _ := st.Instance("w-app-lost1")
		made, _ := st.Instance("w-app-made1")
		_, term := st.Instance("w-app-term1")
		_, gone := st.Instance("w-app-gone1")
		w.cloud.mu.Lock()
		terminated := append([]string(nil), w.cloud.terminated...)
		w.cloud.mu.Unlock()
		cs := w.cloud.created()
		return len(cs) == 1 && cs[0].Name == "w-app-lost1" && lost != nil && lost.ID == "i-w-app-lost1" &&
			made != nil && made.ID == "i-made1" && !term && !gone &&
			slices.Contains(terminated, "i-term1") && slices.Contains(terminated, "i-gone1") && slices.Contains(terminated, "i-stray")
	})
}

// BenchmarkUnplaceableToCreateCall measures, on the in-memory world, the
// time from a launch that does not fit to the cloud's create call.
func BenchmarkUnplaceableToCreateCall(b *testing.B) {
	w := newWorld(b)
	cfg := scaleConfig()
	cfg.Provider = w.cloud
	calls := make(chan time.Time, 1024)
	w.cloud.onCreate = func(cloudapi.Spec) { calls <- time.Now() }
	m := w.start("m1", cfg)
	w.leader()
	var lat []time.Duration
	for i := range b.N * 20 {
		start := time.Now()
		if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "s" + itoa(i), Role: "app", Memory: "400MiB"}); code != http.StatusAccepted {
			b.Fatalf("launch: %d %s", code, msg)
		}
		at := <-calls
		lat = append(lat, at.Sub(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
