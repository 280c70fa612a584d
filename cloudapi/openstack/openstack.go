// Package openstack is the OpenStack (Nova) cloudapi.Provider.
//
// It uses gophercloud v2. Authentication goes through Keystone; when
// Config.Auth is left empty the usual OS_* environment variables of an
// openrc file are read with openstack.AuthOptionsFromEnv: OS_AUTH_URL,
// OS_USERNAME or OS_USERID, OS_PASSWORD, OS_PROJECT_NAME or OS_PROJECT_ID,
// OS_DOMAIN_NAME or OS_DOMAIN_ID, or OS_APPLICATION_CREDENTIAL_ID/_NAME and
// OS_APPLICATION_CREDENTIAL_SECRET. OS_REGION_NAME picks the region when
// Config.Region is empty. (clouds.yaml is not read; callers that want it can
// fill Config.Auth with gophercloud/utils' clientconfig.)
//
// Every server it creates carries the cloudapi.Tag* keys as Nova metadata.
// Nova cannot filter server lists on metadata, so List pages through all of
// the project's servers and keeps those whose micado-cluster metadata
// matches.
package openstack

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/flavors"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/keypairs"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/micado-scale/micado/cloudapi"
)

// ProviderName is what Provider.Name returns.
const ProviderName = "openstack"

// Config configures the OpenStack provider.
type Config struct {
	// Auth are the Keystone credentials. If Auth.IdentityEndpoint is empty
	// they are read from the OS_* environment variables. AllowReauth is
	// always switched on, so expired tokens are renewed.
	Auth gophercloud.AuthOptions
	// Region selects the compute endpoint; OS_REGION_NAME if empty.
	Region string
	// Image is the ID of the image to boot. It must contain the micado binary
	// and Docker (see cloudapi.RenderUserData).
	Image string
	// Flavors maps micado instance type names (cloudapi.InstanceType.Name)
	// to flavor IDs or names. A non-empty InstanceType.ProviderType takes
	// precedence over this map. Names are resolved to IDs through the flavor
	// list.
	Flavors map[string]string
	// Networks are the UUIDs of the networks to attach; empty lets Nova
	// choose (which fails if the project has several networks).
	Networks []string
	// SecurityGroups are security group names to apply.
	SecurityGroups []string
	// KeyName is an optional Nova key pair for SSH access.
	KeyName string
	// AvailabilityZone is optional.
	AvailabilityZone string
}

// Option adjusts New.
type Option func(*options)

type options struct {
	httpClient *http.Client
}

// WithHTTPClient makes every Keystone and Nova request go through c.
func WithHTTPClient(c *http.Client) Option {
	return func(o *options) { o.httpClient = c }
}

// Provider creates micado workers as Nova servers.
type Provider struct {
	cfg     Config
	compute *gophercloud.ServiceClient

	mu      sync.Mutex
	flavors map[string]string // flavor ID and name -> ID; nil until loaded
}

var _ cloudapi.Provider = (*Provider)(nil)

// New authenticates against Keystone and finds the compute endpoint in the
// service catalog.
func New(ctx context.Context, cfg Config, opts ...Option) (*Provider, error) {
	if cfg.Image == "" {
		return nil, errors.New("openstack: no image configured")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	auth := cfg.Auth
	if auth.IdentityEndpoint == "" {
		var err error
		if auth, err = openstack.AuthOptionsFromEnv(); err != nil {
			return nil, fmt.Errorf("openstack: credentials from environment: %w", err)
		}
	}
	auth.AllowReauth = true
	if cfg.Region == "" {
		cfg.Region = os.Getenv("OS_REGION_NAME")
	}

	pc, err := openstack.NewClient(auth.IdentityEndpoint)
	if err != nil {
		return nil, fmt.Errorf("openstack: %w", err)
	}
	if o.httpClient != nil {
		pc.HTTPClient = *o.httpClient
	}
	if err := openstack.Authenticate(ctx, pc, auth); err != nil {
		return nil, fmt.Errorf("openstack: authenticate at %s: %w", auth.IdentityEndpoint, describe(err))
	}
	compute, err := openstack.NewComputeV2(pc, gophercloud.EndpointOpts{Region: cfg.Region})
	if err != nil {
		return nil, fmt.Errorf("openstack: compute endpoint (region %q): %w", cfg.Region, err)
	}
	return &Provider{cfg: cfg, compute: compute}, nil
}

// Name returns "openstack".
func (p *Provider) Name() string { return ProviderName }

// Compute returns the underlying Nova client, for capabilities outside
// cloudapi.Provider.
func (p *Provider) Compute() *gophercloud.ServiceClient { return p.compute }

// flavorRef resolves the flavor for t to a flavor ID.
func (p *Provider) flavorRef(ctx context.Context, t cloudapi.InstanceType) (string, error) {
	ref := t.ProviderType
	if ref == "" {
		ref = p.cfg.Flavors[t.Name]
	}
	if ref == "" {
		return "", fmt.Errorf("openstack: no flavor configured for instance type %q", t.Name)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.flavors == nil {
		m := map[string]string{}
		err := flavors.ListDetail(p.compute, nil).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
			fs, err := flavors.ExtractFlavors(page)
			for _, f := range fs {
				m[f.ID] = f.ID
				if _, clash := m[f.Name]; !clash {
					m[f.Name] = f.ID
				}
			}
			return true, err
		})
		if err != nil {
			// Listing flavors may be forbidden by policy: let Nova judge ref.
			return ref, nil
		}
		p.flavors = m
	}
	id, ok := p.flavors[ref]
	if !ok {
		return "", fmt.Errorf("openstack: flavor %q (for instance type %q) not found", ref, t.Name)
	}
	return id, nil
}

// Create boots one server and returns without waiting for it to become
// active. CreatedAt is the local time of the request.
func (p *Provider) Create(ctx context.Context, spec cloudapi.Spec) (cloudapi.Instance, error) {
	if err := spec.Validate(); err != nil {
		return cloudapi.Instance{}, err
	}
	labels, err := cloudapi.Labels(spec)
	if err != nil {
		return cloudapi.Instance{}, err
	}
	flavor, err := p.flavorRef(ctx, spec.Type)
	if err != nil {
		return cloudapi.Instance{}, err
	}
	co := servers.CreateOpts{
		Name:             spec.Name,
		ImageRef:         p.cfg.Image,
		FlavorRef:        flavor,
		Metadata:         labels,
		SecurityGroups:   slices.Clone(p.cfg.SecurityGroups),
		AvailabilityZone: p.cfg.AvailabilityZone,
	}
	if len(p.cfg.Networks) > 0 {
		nets := make([]servers.Network, len(p.cfg.Networks))
		for i, id := range p.cfg.Networks {
			nets[i] = servers.Network{UUID: id}
		}
		co.Networks = nets
	}
	if spec.UserData != "" {
		// Encode here: gophercloud sends input that happens to be valid
		// base64 unencoded.
		co.UserData = []byte(base64.StdEncoding.EncodeToString([]byte(spec.UserData)))
	}
	var opts servers.CreateOptsBuilder = co
	if p.cfg.KeyName != "" {
		opts = keypairs.CreateOptsExt{CreateOptsBuilder: co, KeyName: p.cfg.KeyName}
	}
	now := time.Now().UTC()
	srv, err := servers.Create(ctx, p.compute, opts, nil).Extract()
	if err != nil {
		return cloudapi.Instance{}, wrap(fmt.Sprintf("create server %s (flavor %s)", spec.Name, flavor), err)
	}
	inst := cloudapi.Instance{
		ID:        srv.ID,
		Type:      flavor,
		State:     cloudapi.StatePending,
		CreatedAt: now,
	}
	cloudapi.ApplyLabels(&inst, labels)
	return inst, nil
}

// Terminate deletes the server. A server Nova does not know (including one
// already deleted) gives an error wrapping cloudapi.ErrNotFound.
func (p *Provider) Terminate(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("openstack: terminate: empty server id")
	}
	if err := servers.Delete(ctx, p.compute, id).ExtractErr(); err != nil {
		return wrap("delete server "+id, err)
	}
	return nil
}

// List returns the cluster's servers that are not deleted. It pages through
// every server of the project (GET /servers/detail, following
// servers_links) and keeps those whose micado-cluster metadata is cluster.
func (p *Provider) List(ctx context.Context, cluster string) ([]cloudapi.Instance, error) {
	if cluster == "" {
		return nil, errors.New("openstack: list: empty cluster name")
	}
	var res []cloudapi.Instance
	err := servers.List(p.compute, servers.ListOpts{}).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		ss, err := servers.ExtractServers(page)
		if err != nil {
			return false, err
		}
		for _, s := range ss {
			if s.Metadata[cloudapi.TagCluster] != cluster {
				continue
			}
			inst := toInstance(s)
			if inst.State == cloudapi.StateTerminated {
				continue
			}
			res = append(res, inst)
		}
		return true, nil
	})
	if err != nil {
		return nil, wrap("list servers of cluster "+cluster, err)
	}
	return res, nil
}

// toInstance converts a Nova server.
func toInstance(s servers.Server) cloudapi.Instance {
	inst := cloudapi.Instance{
		ID:        s.ID,
		Name:      s.Name,
		State:     normaliseStatus(s.Status),
		Address:   privateIPv4(s),
		CreatedAt: s.Created,
	}
	if v, ok := s.Flavor["original_name"].(string); ok { // microversion >= 2.47
		inst.Type = v
	} else if v, ok := s.Flavor["id"].(string); ok {
		inst.Type = v
	}
	cloudapi.ApplyLabels(&inst, s.Metadata)
	return inst
}

// normaliseStatus maps Nova server statuses onto cloudapi's states.
func normaliseStatus(status string) cloudapi.State {
	switch strings.ToUpper(status) {
	case "BUILD", "REBUILD":
		return cloudapi.StatePending
	case "ACTIVE", "REBOOT", "HARD_REBOOT", "PASSWORD", "RESIZE", "VERIFY_RESIZE", "REVERT_RESIZE", "MIGRATING", "RESCUE":
		return cloudapi.StateRunning
	case "SHUTOFF", "STOPPED", "SUSPENDED", "PAUSED", "SHELVED", "SHELVED_OFFLOADED":
		return cloudapi.StateStopped
	case "DELETED", "SOFT_DELETED":
		return cloudapi.StateTerminated
	case "ERROR":
		return cloudapi.StateError
	}
	return cloudapi.StateUnknown
}

// privateIPv4 returns the first fixed IPv4 address, looking at networks in
// name order, else accessIPv4.
func privateIPv4(s servers.Server) string {
	nets := make([]string, 0, len(s.Addresses))
	for n := range s.Addresses {
		nets = append(nets, n)
	}
	sort.Strings(nets)
	for _, n := range nets {
		addrs, _ := s.Addresses[n].([]any)
		for _, a := range addrs {
			m, _ := a.(map[string]any)
			addr, _ := m["addr"].(string)
			version, _ := m["version"].(float64)
			typ, _ := m["OS-EXT-IPS:type"].(string)
			if addr != "" && version == 4 && (typ == "" || typ == "fixed") {
				return addr
			}
		}
	}
	return s.AccessIPv4
}

// APIError is an error answer from Keystone or Nova, with the message
// extracted from its JSON body.
type APIError struct {
	// Op is what the provider was doing, e.g. "create server w-1".
	Op string
	// Status is the HTTP status code.
	Status int
	// Message is the cloud's explanation.
	Message string
	// Err is gophercloud's error.
	Err error
	// kind is cloudapi.ErrNotFound, cloudapi.ErrCapacity or nil.
	kind error
}

// Error returns "openstack: <op>: HTTP <status>: <message>".
func (e *APIError) Error() string {
	return fmt.Sprintf("openstack: %s: HTTP %d: %s", e.Op, e.Status, e.Message)
}

// Unwrap gives errors.Is/As access to gophercloud's error and, where it
// applies, cloudapi.ErrNotFound or cloudapi.ErrCapacity.
func (e *APIError) Unwrap() []error {
	if e.kind != nil {
		return []error{e.kind, e.Err}
	}
	return []error{e.Err}
}

// wrap turns gophercloud's HTTP errors into *APIError and adds op to others.
func wrap(op string, err error) error {
	var ue gophercloud.ErrUnexpectedResponseCode
	if !errors.As(err, &ue) {
		return fmt.Errorf("openstack: %s: %w", op, err)
	}
	e := &APIError{Op: op, Status: ue.Actual, Message: bodyMessage(ue.Body), Err: err}
	switch {
	case ue.Actual == http.StatusNotFound:
		e.kind = cloudapi.ErrNotFound
	case ue.Actual == http.StatusRequestEntityTooLarge,
		ue.Actual == http.StatusForbidden && strings.Contains(strings.ToLower(e.Message), "quota"):
		e.kind = cloudapi.ErrCapacity
	}
	return e
}

// describe is wrap without an operation, for authentication errors.
func describe(err error) error {
	var ue gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &ue) {
		return fmt.Errorf("HTTP %d: %s: %w", ue.Actual, bodyMessage(ue.Body), err)
	}
	return err
}

// bodyMessage extracts the message of an OpenStack error body, which looks
// like {"forbidden": {"code": 403, "message": "..."}} (Nova) or
// {"error": {"code": 401, "message": "...", "title": "..."}} (Keystone).
func bodyMessage(body []byte) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) == nil {
		for _, raw := range m {
			var inner struct {
				Message string `json:"message"`
			}
			if json.Unmarshal(raw, &inner) == nil && inner.Message != "" {
				return inner.Message
			}
		}
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	if s == "" {
		s = "(empty body)"
	}
	return s
}
