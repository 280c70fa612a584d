package consul

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/internal/testconsul"
	"github.com/micado-scale/micado/manager"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// The journal on a real Consul: check-and-set, all-or-nothing
// transactions, the indexes it returns, Read of present and missing keys,
// and the fence: once the leader's session is gone, commits fail with
// ErrFenced and write nothing.
func TestJournalOnConsul(t *testing.T) {
	a := testconsul.Start(t)
	cl := a.Client(t, "")
	ctx := context.Background()
	j := NewJournal(cl, "jt")
	lock := NewLock(cl, "jt", "m1", 10*time.Second, quiet)
	lease, err := lock.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := lease.Fence()
	idx, err := j.Commit(ctx, f, []manager.Op{
		{Verb: manager.OpCAS, Key: "containers/a", Value: []byte(`{"name":"a"}`)},
		{Verb: manager.OpCAS, Key: "containers/b", Value: []byte(`{"name":"b"}`)},
		{Verb: manager.OpSet, Key: "members/w-1", Value: []byte("10.0.0.1:7946")},
	})
	if err != nil || idx["containers/a"] == 0 || idx["containers/a"] != idx["containers/b"] {
		t.Fatalf("commit: %v %v", idx, err)
	}
	// A stale index fails the whole transaction.
	_, err = j.Commit(ctx, f, []manager.Op{
		{Verb: manager.OpCAS, Key: "containers/a", Value: []byte(`{"name":"a2"}`), Index: idx["containers/a"]},
		{Verb: manager.OpCAS, Key: "containers/b", Value: []byte(`{"name":"b2"}`), Index: 1},
	})
	if !errors.Is(err, manager.ErrConflict) {
		t.Fatalf("stale CAS: %v", err)
	}
	ps, err := j.Read(ctx, []string{"containers/a", "containers/b", "containers/missing"})
	if err != nil || len(ps) != 2 || string(ps[0].Value) != `{"name":"a"}` || ps[0].Index != idx["containers/a"] {
		t.Fatalf("read: %+v %v", ps, err)
	}
	all, err := j.Load(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("load: %+v %v", all, err)
	}
	for _, p := range all {
		if p.Key == leaderKey {
			t.Fatal("the lock's key is part of the load")
		}
	}
	// Deletes with check-and-set.
	if _, err := j.Commit(ctx, f, []manager.Op{{Verb: manager.OpDeleteCAS, Key: "containers/b", Index: idx["containers/b"]}}); err != nil {
		t.Fatal(err)
	}
	// Deposed: the fence fails and nothing is written.
	if err := lock.Depose(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lease.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the lease was not lost when the session was destroyed")
	}
	if lease.Valid() {
		t.Fatal("a lost lease is still valid")
	}
	_, err = j.Commit(ctx, f, []manager.Op{{Verb: manager.OpSet, Key: "containers/c", Value: []byte("{}")}})
	if !errors.Is(err, manager.ErrFenced) {
		t.Fatalf("commit after the leader was deposed: %v", err)
	}
	if p, _, _ := cl.KV().Get(Prefix("jt")+"containers/c", nil); p != nil {
		t.Fatal("a fenced commit wrote")
	}
	if j.MaxOps() != 128 {
		t.Fatalf("MaxOps %d", j.MaxOps())
	}
	ops := make([]manager.Op, 128)
	for i := range ops {
		ops[i] = manager.Op{Verb: manager.OpSet, Key: "x/" + string(rune('a'+i%26)) + strings.Repeat("y", i)}
	}
	if _, err := j.Commit(ctx, manager.Fence{}, ops); err != nil {
		t.Fatalf("128 ops unfenced: %v", err)
	}
}

// The lock on a real Consul: one holder at a time, its value names the
// leader, terms grow, a released lock is taken by the waiting manager at
// once (no lock-delay), and Depose ends another manager's hold.
func TestLockOnConsul(t *testing.T) {
	a := testconsul.Start(t)
	cl := a.Client(t, "")
	ctx := context.Background()
	l1 := NewLock(cl, "lt", "m1", 10*time.Second, quiet)
	l2 := NewLock(cl, "lt", "m2", 10*time.Second, quiet)
	s1, err := l1.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h, err := l2.Holder(ctx)
	if err != nil || h.Name != "m1" || h.Term != s1.Term() {
		t.Fatalf("holder: %+v %v (term %d)", h, err, s1.Term())
	}
	got := make(chan manager.Lease, 1)
	go func() {
		s, err := l2.Acquire(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	select {
	case <-got:
		t.Fatal("two managers hold the lock")
	case <-time.After(500 * time.Millisecond):
	}
	start := time.Now()
	if err := l2.Depose(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	var s2 manager.Lease
	select {
	case s2 = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("m2 did not take the lock after m1 was deposed")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("taking over took %s", took)
	}
	if s2.Term() <= s1.Term() || !s2.Valid() {
		t.Fatalf("terms %d then %d, valid %v", s1.Term(), s2.Term(), s2.Valid())
	}
	if h, _ := l1.Holder(ctx); h.Name != "m2" {
		t.Fatalf("holder after the takeover: %+v", h)
	}
	if err := s2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if h, _ := l1.Holder(ctx); h.Name != "" {
		t.Fatalf("holder after release: %+v", h)
	}
	// Depose of a manager that does not hold the lock does nothing.
	if err := l1.Depose(ctx, "nobody"); err != nil {
		t.Fatal(err)
	}
}

// The registry on a real Consul: registrations with their checks, this
// cluster's only; the health watch blocks until a check changes.
func TestRegistryOnConsul(t *testing.T) {
	a := testconsul.Start(t)
	cl := a.Client(t, "")
	ctx := context.Background()
	r := NewRegistry(cl, "rt")
	other := NewRegistry(cl, "other")
	reg := manager.Registration{ID: "web-1", Name: "web", Address: "127.0.0.1", Port: 1, Tags: []string{"role=app"},
		Meta:  map[string]string{manager.MetaCluster: "rt", manager.MetaInstance: "web-1"},
		Check: &manager.RegistrationCheck{ID: "micado:rt:web-1", Name: "tcp", TCP: "127.0.0.1:1", Interval: "1s", Timeout: "1s"}}
	if err := r.Register(ctx, reg); err != nil {
		t.Fatal(err)
	}
	if err := other.Register(ctx, manager.Registration{ID: "o-1", Name: "o", Meta: map[string]string{manager.MetaCluster: "other", manager.MetaInstance: "o-1"}}); err != nil {
		t.Fatal(err)
	}
	ids, err := r.List(ctx)
	if err != nil || len(ids) != 1 || ids["web-1"] != "web-1" {
		t.Fatalf("list: %v %v", ids, err)
	}
	h, index, err := r.Health(ctx, 0, time.Second)
	if err != nil || h["web-1"] == "" || index == 0 {
		t.Fatalf("health: %v %d %v", h, index, err)
	}
	if _, ok := h["o-1"]; ok {
		t.Fatal("another cluster's check is in the health watch")
	}
	// Nothing changes: the watch waits its time out.
	start := time.Now()
	_, next, err := r.Health(ctx, index, 300*time.Millisecond)
	if err != nil || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("blocking health: %v after %s (index %d→%d)", err, time.Since(start), index, next)
	}
	if err := r.Deregister(ctx, "web-1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Deregister(ctx, "web-1"); err != nil {
		t.Fatalf("deregistering a missing service: %v", err)
	}
	if ids, _ := r.List(ctx); len(ids) != 0 {
		t.Fatalf("after deregister: %v", ids)
	}
}

// A token without the rights the manager needs is refused at start with
// the right that is missing.
func TestCheckAccessNamesTheMissingRight(t *testing.T) {
	a := testconsul.StartWithACL(t, "mgmt-token")
	ctx := context.Background()
	if err := CheckAccess(ctx, a.Client(t, "mgmt-token"), a.Addr, "ct"); err != nil {
		t.Fatalf("management token: %v", err)
	}
	err := CheckAccess(ctx, a.Client(t, ""), a.Addr, "ct")
	if err == nil || !strings.Contains(err.Error(), "has ACLs on and the manager has no token") {
		t.Fatalf("no token: %v", err)
	}
	err = CheckAccess(ctx, a.Client(t, "no-such-token"), a.Addr, "ct")
	if err == nil || !strings.Contains(err.Error(), "does not know the manager's token") {
		t.Fatalf("unknown token: %v", err)
	}
	// A token that may write the KV prefix but not create sessions.
	mg := a.Client(t, "mgmt-token")
	pol, _, err := mg.ACL().PolicyCreate(&api.ACLPolicy{Name: "kv-only", Rules: `key_prefix "micado/ct/" { policy = "write" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := mg.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = CheckAccess(ctx, a.Client(t, tok.SecretID), a.Addr, "ct")
	if err == nil || !strings.Contains(err.Error(), "may not create sessions") {
		t.Fatalf("token without session rights: %v", err)
	}
}

// A transaction Consul never applied (its agent found no server, or no
// leader) is sent again; one that Consul refused or may have applied is
// not.
func TestNotSentErrors(t *testing.T) {
	for msg, want := range map[string]bool{
		"Unexpected response code: 500 (rpc error making call: rpc error getting client: failed to get conn: rpc error: lead thread didn't get connection)": true,
		"Unexpected response code: 500 (No cluster leader)":                                                     true,
		"Unexpected response code: 500 (rpc error making call: Raft leader not found in server lookup mapping)": true,
		"Unexpected response code: 403 (Permission denied)":                                                     false,
		"Post \"http://127.0.0.1:8500/v1/txn\": context deadline exceeded":                                      false,
		"Unexpected response code: 409 (Transaction contains too many operations (129 > 128))":                  false,
	} {
		if got := notSent(errors.New(msg)); got != want {
			t.Errorf("notSent(%q) = %v, want %v", msg, got, want)
		}
	}
}
