// Package consul implements the manager's seams on Consul: the journal of
// the desired state (KV, check-and-set transactions fenced by the leader
// lock), the leader lock (a session lock), and the registry of running
// containers (agent services with checks, and a blocking watch of their
// health). It is the only package of micado that talks to Consul.
package consul

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/manager"
)

// maxTxnOps is Consul's limit on the operations of one transaction
// (agent/txn_endpoint.go, v1.20).
const maxTxnOps = 128

// Prefix is where a cluster's records live in Consul KV.
func Prefix(cluster string) string { return "micado/" + cluster + "/" }

// Journal is the desired state's journal in Consul KV under
// micado/<cluster>/.
type Journal struct {
	kv     *api.KV
	prefix string
}

var _ manager.Journal = (*Journal)(nil)

// NewJournal returns the journal of cluster.
func NewJournal(c *api.Client, cluster string) *Journal {
	return &Journal{kv: c.KV(), prefix: Prefix(cluster)}
}

// Load implements manager.Journal: one consistent read of every key.
func (j *Journal) Load(ctx context.Context) ([]manager.Pair, error) {
	pairs, _, err := j.kv.List(j.prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read Consul KV %s: %w", j.prefix, err)
	}
	out := make([]manager.Pair, 0, len(pairs))
	for _, p := range pairs {
		if k := strings.TrimPrefix(p.Key, j.prefix); k != "" && k != leaderKey && !strings.HasSuffix(k, "/") {
			out = append(out, manager.Pair{Key: k, Value: p.Value, Index: p.ModifyIndex})
		}
	}
	return out, nil
}

// Read implements manager.Journal, many keys per transaction.
func (j *Journal) Read(ctx context.Context, keys []string) ([]manager.Pair, error) {
	var out []manager.Pair
	for start := 0; start < len(keys); start += maxTxnOps {
		var ops api.KVTxnOps
		for _, k := range keys[start:min(start+maxTxnOps, len(keys))] {
			ops = append(ops, &api.KVTxnOp{Verb: api.KVGetOrEmpty, Key: j.prefix + k})
		}
		ok, resp, _, err := j.txn(ctx, ops)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("read Consul KV: %s", txnErrors(resp))
		}
		for _, r := range resp.Results {
			if r != nil && r.ModifyIndex != 0 {
				out = append(out, manager.Pair{Key: strings.TrimPrefix(r.Key, j.prefix), Value: r.Value, Index: r.ModifyIndex})
			}
		}
	}
	return out, nil
}

// Commit implements manager.Journal: one Consul transaction, the fence
// (a check-session op on the leader key) first.
func (j *Journal) Commit(ctx context.Context, fence manager.Fence, ops []manager.Op) (map[string]uint64, error) {
	txn := make(api.KVTxnOps, 0, len(ops)+1)
	if fence.Key != "" {
		txn = append(txn, &api.KVTxnOp{Verb: api.KVCheckSession, Key: fence.Key, Session: fence.Session})
	}
	for _, op := range ops {
		kv := &api.KVTxnOp{Key: j.prefix + op.Key, Value: op.Value, Index: op.Index}
		switch op.Verb {
		case manager.OpCAS:
			kv.Verb = api.KVCAS
		case manager.OpSet:
			kv.Verb = api.KVSet
		case manager.OpDeleteCAS:
			kv.Verb = api.KVDeleteCAS
		case manager.OpDelete:
			kv.Verb = api.KVDelete
		default:
			return nil, fmt.Errorf("unknown journal op %d", op.Verb)
		}
		txn = append(txn, kv)
	}
	if len(txn) > maxTxnOps {
		return nil, fmt.Errorf("transaction of %d operations is larger than Consul's %d", len(txn), maxTxnOps)
	}
	ok, resp, _, err := j.txn(ctx, txn)
	if err != nil {
		return nil, err
	}
	if !ok {
		for _, e := range resp.Errors {
			if fence.Key != "" && e.OpIndex == 0 {
				return nil, fmt.Errorf("%w (%s)", manager.ErrFenced, e.What)
			}
		}
		return nil, fmt.Errorf("%w: %s", manager.ErrConflict, txnErrors(resp))
	}
	out := make(map[string]uint64, len(ops))
	for _, r := range resp.Results {
		if r != nil && strings.HasPrefix(r.Key, j.prefix) {
			out[strings.TrimPrefix(r.Key, j.prefix)] = r.ModifyIndex
		}
	}
	return out, nil
}

// MaxOps implements manager.Journal.
func (j *Journal) MaxOps() int { return maxTxnOps }

// notSent tells the errors of a transaction Consul never applied: its
// agent could not reach a server (one just died: the agent moves on to
// another at the next call), the servers had no leader (an election), or
// the server it reached knew a leader it could not yet forward to (the
// server that died led). Such a transaction may be sent again.
func notSent(err error) bool {
	msg := err.Error()
	for _, s := range []string{"rpc error getting client", "failed to get conn", "No cluster leader", "leader not found"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func (j *Journal) txn(ctx context.Context, ops api.KVTxnOps) (bool, *api.KVTxnResponse, *api.QueryMeta, error) {
	ok, resp, meta, err := j.kv.Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	// A Consul server that died, or an election, costs a few retries.
	for wait := 100 * time.Millisecond; err != nil && notSent(err) && wait <= 6400*time.Millisecond; wait *= 2 {
		select {
		case <-ctx.Done():
			return false, nil, nil, fmt.Errorf("consul transaction: %w", err)
		case <-time.After(wait):
		}
		ok, resp, meta, err = j.kv.Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	}
	if err != nil {
		var se api.StatusError
		if errors.As(err, &se) && se.Code == 403 {
			return false, nil, nil, fmt.Errorf("consul ACL: the manager's token may not write micado's keys: %w", err)
		}
		return false, nil, nil, fmt.Errorf("consul transaction: %w", err)
	}
	return ok, resp, meta, nil
}

func txnErrors(resp *api.KVTxnResponse) string {
	if resp == nil {
		return "no answer"
	}
	var msgs []string
	for _, e := range resp.Errors {
		msgs = append(msgs, e.What)
	}
	return strings.Join(msgs, "; ")
}
