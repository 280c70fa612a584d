package manager

import (
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/cloudapi"
)

var testTypes = []cloudapi.InstanceType{{Name: "small", Memory: 512 << 20}, {Name: "large", Memory: 2 << 30}}

// TestHeldLaunchAsksTheCloudOnceAndRecordsFirst: with no workers, a launch
// is held, its intent is in Consul KV before the cloud is called, one
// instance is asked for all replicas of a role together, and a bad request
// changes nothing.
func TestHeldLaunchAsksTheCloudOnceAndRecordsFirst(t *testing.T) {
	cloud := &fakeCloud{prefix: "micado/mt/", onCall: make(chan string, 16)}
	base, cl := testManager(t, Config{Provider: cloud, InstanceTypes: testTypes, ScaleRoles: []string{"proxy"}})
	cloud.kv = cl.KV()

	code, body := postLaunch(t, base, LaunchRequest{Image: "micado/demo-web", Role: "proxy", Memory: "200MiB", Replicas: 2})
	if code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, body)
	}
	select {
	case name := <-cloud.onCall:
		if !strings.HasPrefix(name, "w-proxy-") {
			t.Fatalf("instance name %q", name)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the cloud was never asked for an instance")
	}
	// A second request that fits into the booting instance asks for nothing.
	if code, body := postLaunch(t, base, LaunchRequest{Image: "micado/demo-web", Name: "b", Role: "proxy", Memory: "50MiB"}); code != http.StatusAccepted {
		t.Fatalf("second launch: %d %s", code, body)
	}
	select {
	case name := <-cloud.onCall:
		t.Fatalf("a request that fits on a booting instance asked for %s", name)
	case <-time.After(2 * time.Second):
	}
	cloud.mu.Lock()
	defer cloud.mu.Unlock()
	if len(cloud.errs) > 0 {
		t.Fatal(cloud.errs)
	}
	if len(cloud.creates) != 1 || cloud.creates[0].spec.Type.Name != "small" || cloud.creates[0].spec.Tags[0] != "role=proxy" {
		t.Fatalf("creates: %+v", cloud.creates)
	}
	// Roles scale-out may not create, and impossible sizes, are refused.
	for _, req := range []LaunchRequest{
		{Image: "micado/demo-web", Name: "d", Role: "db"},
		{Image: "micado/demo-web", Name: "h", Role: "proxy", Memory: "3GiB"},
	} {
		code, body := postLaunch(t, base, req)
		if code != http.StatusUnprocessableEntity {
			t.Fatalf("%+v: %d %s", req, code, body)
		}
	}
	keys, _, _ := cl.KV().Keys("micado/mt/containers/", "", nil)
	sort.Strings(keys)
	if len(keys) != 3 {
		t.Fatalf("desired state %v, want the 3 accepted containers", keys)
	}
}

// BenchmarkUnplaceableToCreateCall measures the time from a launch that
// no worker can hold to the provider's create call, over 100 requests,
// and reports p50 and p99.
func BenchmarkUnplaceableToCreateCall(b *testing.B) {
	for range b.N {
		cloud := &fakeCloud{prefix: "micado/mt/", onCall: make(chan string, 1)}
		base, cl := testManager(b, Config{Provider: cloud, InstanceTypes: testTypes})
		cloud.kv = cl.KV()
		var lat []time.Duration
		for i := range 100 {
			start := time.Now()
			// 1.5 GiB: each needs an instance of its own.
			code, body := postLaunch(b, base, LaunchRequest{Image: "micado/demo-web", Name: "s" + itoa(i), Role: "r" + itoa(i), Memory: "1500MiB"})
			if code != http.StatusAccepted {
				b.Fatalf("launch: %d %s", code, body)
			}
			select {
			case <-cloud.onCall:
				lat = append(lat, time.Since(start))
			case <-time.After(30 * time.Second):
				b.Fatal("no create call")
			}
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[49].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[98].Microseconds())/1000, "p99-ms")
	}
}

// TestRestartFinishesInstanceWork: a manager that starts after another
// crashed finds the instance work it left in Consul KV and finishes it: a
// create call whose answer was lost is found in the cloud or made again, a
// termination is completed, and an instance whose worker never comes back
// is terminated after LostTimeout.
func TestRestartFinishesInstanceWork(t *testing.T) {
	consulAddr := startConsul(t)
	cl, err := api.NewClient(&api.Config{Address: consulAddr})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	seed := []Instance{
		{Name: "w-app-lost1", Type: "small", Memory: 512 << 20, Tags: []string{"role=app"}, Provider: "fake", State: InstanceRequested, RequestedAt: now},
		{Name: "w-app-made1", Type: "small", Memory: 512 << 20, Tags: []string{"role=app"}, Provider: "fake", State: InstanceRequested, RequestedAt: now},
		{Name: "w-app-term1", Type: "small", Memory: 512 << 20, Tags: []string{"role=app"}, Provider: "fake", ID: "i-term1", State: InstanceTerminating, RequestedAt: now},
		{Name: "w-app-gone1", Type: "small", Memory: 512 << 20, Tags: []string{"role=app"}, Provider: "fake", ID: "i-gone1", State: InstanceJoined, RequestedAt: now},
	}
	for _, in := range seed {
		b, _ := json.Marshal(in)
		if _, err := cl.KV().Put(&api.KVPair{Key: "micado/mt/instances/" + in.Name, Value: b}, nil); err != nil {
			t.Fatal(err)
		}
	}
	cloud := &fakeCloud{prefix: "micado/mt/", kv: cl.KV(),
		listed: []cloudapi.Instance{{ID: "i-made1", Name: "w-app-made1", Cluster: "mt", State: cloudapi.StatePending, CreatedAt: now}}}
	runManager(t, consulAddr, Config{Provider: cloud, InstanceTypes: testTypes, ScaleRoles: []string{"app"}, LostTimeout: 3 * time.Second})

	record := func(name string) *Instance {
		p, _, err := cl.KV().Get("micado/mt/instances/"+name, nil)
		if err != nil {
			t.Fatal(err)
		}
		if p == nil {
			return nil
		}
		var in Instance
		if err := json.Unmarshal(p.Value, &in); err != nil {
			t.Fatal(err)
		}
		return &in
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		cloud.mu.Lock()
		creates := append([]fakeCreate(nil), cloud.creates...)
		terminated := append([]string(nil), cloud.terminated...)
		cloud.mu.Unlock()
		lost, made := record("w-app-lost1"), record("w-app-made1")
		done := len(creates) == 1 && creates[0].spec.Name == "w-app-lost1" && lost != nil && lost.ID == "i-w-app-lost1" &&
			made != nil && made.ID == "i-made1" &&
			record("w-app-term1") == nil && slices.Contains(terminated, "i-term1") &&
			record("w-app-gone1") == nil && slices.Contains(terminated, "i-gone1")
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a restart: creates %v, terminated %v, lost %+v, made %+v, term1 %+v, gone1 %+v",
				creates, terminated, lost, made, record("w-app-term1"), record("w-app-gone1"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	cloud.mu.Lock()
	defer cloud.mu.Unlock()
	if len(cloud.creates) != 1 || len(cloud.errs) > 0 {
		t.Fatalf("the cloud was asked %d times (%v): only the instance it never made may be asked for again", len(cloud.creates), cloud.errs)
	}
}
