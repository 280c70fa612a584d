package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ErrNotFound is returned for a record that does not exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned when a record changed under a check-and-set.
var ErrConflict = errors.New("changed concurrently")

// store keeps the desired state in Consul KV, one JSON record per
// container, so that a manager restarted at any moment finds everything
// the user asked for.
type store struct {
	kv     *api.KV
	prefix string // micado/<cluster>/
}

func newStore(c *api.Client, cluster string) *store {
	return &store{kv: c.KV(), prefix: "micado/" + cluster + "/"}
}

func (s *store) containerKey(name string) string { return s.prefix + "containers/" + name }

// list returns every container record, sorted by name.
func (s *store) list(ctx context.Context) ([]*Container, error) {
	pairs, _, err := s.kv.List(s.prefix+"containers/", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read desired state from Consul KV: %w", err)
	}
	out := make([]*Container, 0, len(pairs))
	for _, p := range pairs {
		var c Container
		if err := json.Unmarshal(p.Value, &c); err != nil {
			return nil, fmt.Errorf("desired state record %s is damaged: %w", p.Key, err)
		}
		c.index = p.ModifyIndex
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].Name, out[j].Name) })
	return out, nil
}

// get returns one record.
func (s *store) get(ctx context.Context, name string) (*Container, error) {
	p, _, err := s.kv.Get(s.containerKey(name), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read %s from Consul KV: %w", name, err)
	}
	if p == nil {
		return nil, ErrNotFound
	}
	var c Container
	if err := json.Unmarshal(p.Value, &c); err != nil {
		return nil, fmt.Errorf("desired state record %s is damaged: %w", p.Key, err)
	}
	c.index = p.ModifyIndex
	return &c, nil
}

// createAll writes new records in one transaction: all or none, and none
// if any name is taken.
func (s *store) createAll(ctx context.Context, cs []*Container) error {
	for start := 0; start < len(cs); start += 64 { // Consul allows 64 ops per txn
		end := min(start+64, len(cs))
		var ops api.KVTxnOps
		for _, c := range cs[start:end] {
			b, err := json.Marshal(c)
			if err != nil {
				return err
			}
			ops = append(ops, &api.KVTxnOp{Verb: api.KVCAS, Key: s.containerKey(c.Name), Value: b, Index: 0})
		}
		ok, resp, _, err := s.kv.Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("write desired state to Consul KV: %w", err)
		}
		if !ok {
			var msgs []string
			for _, e := range resp.Errors {
				msgs = append(msgs, e.What)
			}
			return fmt.Errorf("%w: %s", ErrConflict, strings.Join(msgs, "; "))
		}
	}
	return nil
}

// put writes c if it has not changed since it was read.
func (s *store) put(ctx context.Context, c *Container) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	ok, _, err := s.kv.CAS(&api.KVPair{Key: s.containerKey(c.Name), Value: b, ModifyIndex: c.index}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("write %s to Consul KV: %w", c.Name, err)
	}
	if !ok {
		return ErrConflict
	}
	// Re-read the index so a following put on the same value works.
	p, _, err := s.kv.Get(s.containerKey(c.Name), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err == nil && p != nil {
		c.index = p.ModifyIndex
	}
	return nil
}

// update applies fn to the current record and writes it back, retrying on
// concurrent changes. fn may return ErrNotFound-wrapping errors to abort.
func (s *store) update(ctx context.Context, name string, fn func(*Container) error) (*Container, error) {
	for range 10 {
		c, err := s.get(ctx, name)
		if err != nil {
			return nil, err
		}
		if err := fn(c); err != nil {
			return nil, err
		}
		if err := s.put(ctx, c); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			return nil, err
		}
		return c, nil
	}
	return nil, fmt.Errorf("update %s: %w too often", name, ErrConflict)
}

// delete removes a record.
func (s *store) delete(ctx context.Context, name string) error {
	_, err := s.kv.Delete(s.containerKey(name), (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("delete %s from Consul KV: %w", name, err)
	}
	return nil
}

// saveMember remembers a member's gossip address so a restarted manager
// can rejoin the cluster without waiting for the workers.
func (s *store) saveMember(ctx context.Context, name, addr string) error {
	_, err := s.kv.Put(&api.KVPair{Key: s.prefix + "members/" + name, Value: []byte(addr)}, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

func (s *store) members(ctx context.Context) ([]string, error) {
	pairs, _, err := s.kv.List(s.prefix+"members/", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range pairs {
		out = append(out, string(p.Value))
	}
	return out, nil
}

// naturalLess orders "web-2" before "web-10".
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])
		if da && db {
			na, ra := leadingNumber(a)
			nb, rb := leadingNumber(b)
			if na != nb {
				return na < nb
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func leadingNumber(s string) (int, string) {
	n, i := 0, 0
	for i < len(s) && isDigit(s[i]) && i < 9 {
		n = n*10 + int(s[i]-'0')
		i++
	}
	return n, s[i:]
}
