package consul

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/manager"
)

// Registry registers containers as services of the Consul agent the
// manager talks to, with checks that agent runs against each container's
// published address.
type Registry struct {
	agent   *api.Agent
	health  *api.Health
	cluster string
}

var _ manager.Registry = (*Registry)(nil)

// NewRegistry returns the registry of cluster.
func NewRegistry(c *api.Client, cluster string) *Registry {
	return &Registry{agent: c.Agent(), health: c.Health(), cluster: cluster}
}

// Register implements manager.Registry.
func (r *Registry) Register(ctx context.Context, reg manager.Registration) error {
	s := &api.AgentServiceRegistration{ID: reg.ID, Name: reg.Name, Address: reg.Address, Port: reg.Port, Tags: reg.Tags, Meta: reg.Meta}
	if c := reg.Check; c != nil {
		s.Check = &api.AgentServiceCheck{CheckID: c.ID, Name: c.Name, TCP: c.TCP, HTTP: c.HTTP, Interval: c.Interval, Timeout: c.Timeout}
	}
	if err := r.agent.ServiceRegisterOpts(s, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("register %s in Consul: %w", reg.ID, err)
	}
	return nil
}

// Deregister implements manager.Registry.
func (r *Registry) Deregister(ctx context.Context, id string) error {
	if err := r.agent.ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		var se api.StatusError
		if errors.As(err, &se) && se.Code == 404 {
			return nil
		}
		return fmt.Errorf("deregister %s from Consul: %w", id, err)
	}
	return nil
}

// List implements manager.Registry: the agent's services of this cluster.
func (r *Registry) List(ctx context.Context) (map[string]string, error) {
	all, err := r.agent.ServicesWithFilterOpts(fmt.Sprintf("Meta[%q] == %q", manager.MetaCluster, r.cluster), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list Consul services: %w", err)
	}
	out := make(map[string]string, len(all))
	for id, s := range all {
		out[id] = s.Meta[manager.MetaInstance]
	}
	return out, nil
}

// Health implements manager.Registry with a blocking query on the checks
// of this cluster (their IDs start with micado:<cluster>:), as the catalog
// has them (what DNS and service lookups answer from).
func (r *Registry) Health(ctx context.Context, index uint64, wait time.Duration) (map[string]string, uint64, error) {
	q := &api.QueryOptions{Filter: fmt.Sprintf("CheckID matches %q", "^micado:"+r.cluster+":"), WaitIndex: index, WaitTime: wait}
	checks, meta, err := r.health.State(api.HealthAny, q.WithContext(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("read Consul checks: %w", err)
	}
	rank := map[string]int{api.HealthPassing: 1, api.HealthWarning: 2, api.HealthCritical: 3}
	out := map[string]string{}
	for _, c := range checks {
		if c.ServiceID == "" {
			continue
		}
		if rank[c.Status] > rank[out[c.ServiceID]] {
			out[c.ServiceID] = c.Status
		}
	}
	return out, meta.LastIndex, nil
}
