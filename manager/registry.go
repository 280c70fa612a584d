package manager

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/hashicorp/consul/api"
)

// Service metadata keys micado sets on every registration it makes, so it
// only ever deregisters its own.
const (
	MetaCluster  = "micado-cluster"
	MetaInstance = "micado-instance"
	MetaNode     = "micado-node"
)

// registry registers running containers as Consul services with a check
// that Consul itself runs against the container's published address.
type registry struct {
	agent   *api.Agent
	catalog *api.Health
	cluster string
}

func (r *registry) serviceFor(c *Container) *api.AgentServiceRegistration {
	tags := append([]string(nil), c.Tags...)
	if c.App != "" {
		tags = append(tags, "app="+c.App)
	}
	tags = append(tags, "node="+c.Node)
	reg := &api.AgentServiceRegistration{
		ID:      c.ServiceID(),
		Name:    c.Service,
		Address: c.Address,
		Port:    c.HostPort(),
		Tags:    tags,
		Meta:    map[string]string{MetaCluster: r.cluster, MetaInstance: c.Name, MetaNode: c.Node},
	}
	for i, b := range c.Bindings {
		if i > 0 {
			reg.Meta["port-"+strconv.Itoa(b.Container)] = strconv.Itoa(b.Host)
		}
	}
	interval := c.Check.Interval
	if interval == "" {
		interval = "2s"
	}
	if c.HostPort() == 0 || c.Check.Type == "none" {
		return reg
	}
	target := net.JoinHostPort(c.Address, strconv.Itoa(c.HostPort()))
	check := &api.AgentServiceCheck{
		CheckID:  "micado:" + c.ServiceID(),
		Name:     "micado " + c.Check.Type + " check of " + c.Name,
		Interval: interval,
		Timeout:  "2s",
	}
	switch c.Check.Type {
	case "http":
		check.HTTP = "http://" + target + c.Check.Path
	default:
		check.Name = "micado tcp check of " + c.Name
		check.TCP = target
	}
	reg.Check = check
	return reg
}

// register (re)registers c; registering twice is harmless.
func (r *registry) register(ctx context.Context, c *Container) error {
	if err := r.agent.ServiceRegisterOpts(r.serviceFor(c), api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("register %s in Consul: %w", c.Name, err)
	}
	return nil
}

// deregister removes a registration by service ID; a missing one is not
// an error.
func (r *registry) deregister(ctx context.Context, name string) error {
	if err := r.agent.ServiceDeregisterOpts(name, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		if e, ok := err.(api.StatusError); ok && e.Code == 404 {
			return nil
		}
		return fmt.Errorf("deregister %s from Consul: %w", name, err)
	}
	return nil
}

// services returns this cluster's registrations by service ID.
func (r *registry) services(ctx context.Context) (map[string]*api.AgentService, error) {
	all, err := r.agent.ServicesWithFilterOpts(fmt.Sprintf("Meta[%q] == %q", MetaCluster, r.cluster), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list Consul services: %w", err)
	}
	return all, nil
}

// health returns the aggregated check status of each of this cluster's
// service IDs as the Consul catalog has it (what DNS and service lookups
// answer from): passing, warning or critical.
func (r *registry) health(ctx context.Context) (map[string]string, error) {
	checks, _, err := r.catalog.State(api.HealthAny, (&api.QueryOptions{
		Filter: `ServiceID != ""`,
	}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read Consul checks: %w", err)
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
	return out, nil
}
