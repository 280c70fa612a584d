package manager

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A launch is written to the journal, placed, started on the simulated
// workers and registered; every read is served from memory and agrees
// with the journal.
func TestLaunchPlacesStartsAndRegisters(t *testing.T) {
	w := newWorld(t)
	w.addWorker("w-1", 1<<30, "role=app")
	w.addWorker("w-2", 1<<30, "role=app")
	m := w.start("m1", testConfig())
	w.leader()
	code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app", Memory: "64MiB", Ports: []string{"8080"}, Replicas: 3})
	if code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	eventually(t, 5*time.Second, "3 copies run and pass", func() bool { return m.passing("web") == 3 })
	// Spread: two workers share three replicas.
	nodes := map[string]int{}
	for _, c := range m.ps() {
		nodes[c.Node]++
		if !w.reg.has(c.ServiceID()) {
			t.Errorf("%s is not registered", c.Name)
		}
	}
	if nodes["w-1"]+nodes["w-2"] != 3 || nodes["w-1"] == 0 || nodes["w-2"] == 0 {
		t.Errorf("placement %v is not spread", nodes)
	}
	recs := w.journalRecords()
	if len(recs) != 3 || recs["web-1"].State != StateRunning || recs["web-1"].ContainerID == "" {
		t.Fatalf("journal: %+v", recs)
	}
	// The same name again is refused and changes nothing.
	before := w.desiredKeys()
	code, msg = m.launch(LaunchRequest{Image: "micado/demo-web", Name: "web", Role: "app"})
	if code != http.StatusConflict || !strings.Contains(msg, "already exists") {
		t.Fatalf("second launch of web: %d %s", code, msg)
	}
	if after := w.desiredKeys(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a refused launch changed the journal: %v → %v", before, after)
	}
	// Stop the service: records, copies and registrations go.
	var stopped map[string][]string
	if code := m.do("DELETE", "/v1/containers/web", nil, &stopped); code != 200 || len(stopped["stopped"]) != 3 {
		t.Fatalf("stop: %d %v", code, stopped)
	}
	if n := len(w.journalRecords()); n != 0 {
		t.Fatalf("%d records left after stop", n)
	}
	if ids := w.reg.ids(); len(ids) != 0 {
		t.Fatalf("registrations left after stop: %v", ids)
	}
	for _, sw := range w.agents.all() {
		if r := sw.running(w.agents); len(r) != 0 {
			t.Fatalf("%s still runs %v", sw.name, r)
		}
	}
}

// A launch larger than one journal transaction is written all or nothing:
// when a name in its second part is taken, the request is refused and no
// record of it is left (the bug of the 64-record transactions).
func TestLargeLaunchIsAllOrNothing(t *testing.T) {
	w := newWorld(t)
	for i := 1; i <= 4; i++ {
		w.addWorker(fmt.Sprintf("w-%d", i), 64<<30, "role=app")
	}
	// Someone else's record in the way of the 70th name, written behind
	// the manager's back.
	taken, _ := json.Marshal(&Container{Name: "big-70", Spec: &Spec{Service: "other", Image: "x", Memory: 1}, State: StateFailed})
	w.journal.Put(containersPrefix+"big-70", taken)
	m := w.start("m1", testConfig())
	w.leader()
	// The manager knows big-70 from its load: refused up front.
	code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "big", Role: "app", Memory: "16MiB", Replicas: 300})
	if code != http.StatusConflict {
		t.Fatalf("launch over a taken name: %d %s", code, msg)
	}
	if n := len(w.journalRecords()); n != 1 {
		t.Fatalf("a refused launch left %d records", n)
	}
	// A name taken behind its back after it loaded (only the journal
	// knows): the conflict is found in the second transaction, and what
	// the first wrote is deleted again.
	taken2, _ := json.Marshal(&Container{Name: "huge-200", Spec: &Spec{Service: "other", Image: "x", Memory: 1}, State: StateFailed})
	w.journal.Put(containersPrefix+"huge-200", taken2)
	code, msg = m.launch(LaunchRequest{Image: "micado/demo-web", Name: "huge", Role: "app", Memory: "16MiB", Replicas: 300})
	if code != http.StatusConflict && code != http.StatusInternalServerError {
		t.Fatalf("launch over a name taken behind the manager's back: %d %s", code, msg)
	}
	recs := w.journalRecords()
	for n := range recs {
		if strings.HasPrefix(n, "huge-") && n != "huge-200" {
			t.Fatalf("a refused launch left %s in the journal", n)
		}
	}
	if keys := w.journal.Keys(batchesPrefix); len(keys) != 0 {
		t.Fatalf("batch markers left: %v", keys)
	}
	// And a large launch that fits goes through whole.
	code, msg = m.launch(LaunchRequest{Image: "micado/demo-web", Name: "ok", Role: "app", Memory: "16MiB", Replicas: 300})
	if code != http.StatusAccepted {
		t.Fatalf("large launch: %d %s", code, msg)
	}
	n := 0
	for name := range w.journalRecords() {
		if strings.HasPrefix(name, "ok-") {
			n++
		}
	}
	if n != 300 {
		t.Fatalf("%d of 300 records written", n)
	}
	eventually(t, 10*time.Second, "300 copies run", func() bool { return m.passing("ok") == 300 })
}
