// Package docker is the default cloudapi.Provider: an "instance" is a
// container running the micado worker agent on the cluster's Docker network,
// the local stand-in for a cloud VM.
//
// Every worker container it creates is named micado-<cluster>-<node>, has
// the node name as hostname and network alias, restarts unless stopped, gets
// the host's Docker socket (so the agent runs application containers beside
// it on the same engine) and the cluster key as the file KeyPath, read with
// --key-file, so that the key is in neither its environment nor its
// command line and `docker inspect` does not show it: copied into the
// container (mode 0400) before it starts, or, when Config.KeyFile names
// the key's file on the host, bind-mounted read-only. It carries the
// io.micado.* labels of package wire (cluster, component "worker", node)
// plus LabelInstanceType, LabelTags and LabelProvider, and the cloudapi.Tag*
// keys that every provider writes. Everything List reports of a worker it
// reads from these labels.
//
// A worker runs its containers on Config.ContainerNetwork when set (a
// local cluster's workload network, apart from the control plane's), and
// on Config.Network otherwise.
//
// This is the one recipe for a worker container: `micado up` creates its
// first workers with it, and the manager's scale-out its later ones.
//
// List sees every worker container of the cluster. Terminate removes only
// worker containers of the provider's own cluster, and with each the
// application containers its agent ran, as terminating a VM would.
package docker

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"

	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/internal/wire"
)

// ProviderName is what Provider.Name returns and the value of LabelProvider.
const ProviderName = "docker"

// Labels this provider adds to the worker labels of package wire.
const (
	// LabelInstanceType holds the micado instance type name.
	LabelInstanceType = "io.micado.instance-type"
	// LabelTags holds the worker's tags, comma separated.
	LabelTags = "io.micado.tags"
	// LabelProvider holds ProviderName.
	LabelProvider = "io.micado.provider"
)

// DefaultDockerSocket is the host path of the Docker socket mounted into
// workers when Config.DockerSocket is empty.
const DefaultDockerSocket = "/var/run/docker.sock"

// socketTarget is where workers find the Docker socket.
const socketTarget = "/var/run/docker.sock"

// KeyPath is where a worker container finds the cluster key (base64 text);
// its command line passes it with --key-file.
const KeyPath = "/etc/micado/cluster.key"

// Config configures the docker provider. Every field but DockerSocket is
// required.
type Config struct {
	// Cluster is the cluster name; Create only accepts specs for it and
	// Terminate only removes its workers.
	Cluster string
	// Network is the Docker network the workers join, e.g. "micado-<cluster>":
	// the control plane's, where they gossip with the managers.
	Network string
	// ContainerNetwork, when set, is the Docker network the workers attach
	// the containers they run to (their --container-network), e.g.
	// "micado-<cluster>-apps": a network apart from Network keeps workloads
	// away from the control plane. Empty: Network.
	ContainerNetwork string
	// Image is the micado image workers run, e.g. "micado/micado:dev". It is
	// never pulled: it must exist on the engine.
	Image string
	// JoinAddr is the managers' gossip address (host:port, or several,
	// comma-separated), e.g.
	// "micado-<cluster>-manager:7946".
	JoinAddr string
	// PublishAddr is where published container ports are reached: the
	// gateway IP of ContainerNetwork (or of Network without one).
	PublishAddr string
	// ClusterKey is the base64 cluster key (16, 24 or 32 bytes), given to
	// workers as the file KeyPath.
	ClusterKey string
	// KeyFile, when set, is the absolute host path of a file holding
	// ClusterKey: workers then get it bind-mounted read-only at KeyPath
	// instead of a copy. Only a caller that sees the host's filesystem
	// (`micado up`, not a manager in a container) can name it.
	KeyFile string
	// DockerSocket is the host path of the Docker socket mounted into
	// workers at /var/run/docker.sock (default DefaultDockerSocket).
	DockerSocket string
	// Types are the instance types the manager may ask for.
	Types []cloudapi.InstanceType
	// CloudInit makes workers machines of their own, as on a cloud: Image
	// is then a systemd and cloud-init image (a stock Debian from
	// `make image-debian`), started privileged with Spec.UserData as its
	// NoCloud seed; it installs Docker and fetches micado and the key from
	// the manager itself. ClusterKey is not given to them. For testing
	// the cloud bootstrap on one machine, not for production.
	CloudInit bool
}

// Provider creates micado workers as containers on one Docker engine. It is
// safe for concurrent use.
type Provider struct {
	cfg Config
	dc  *client.Client
}

var _ cloudapi.Provider = (*Provider)(nil)

var (
	// nameRE accepts what Docker accepts in container names.
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	// hostRE is a DNS host name.
	hostRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)
)

// maxNodeName is the longest node name: it becomes the container's host
// name, which Linux limits to 64 bytes and DNS labels to 63.
const maxNodeName = 63

// New checks cfg and returns a provider using dc. It makes no calls to the
// engine.
func New(cfg Config, dc *client.Client) (*Provider, error) {
	if dc == nil {
		return nil, errors.New("docker provider: no Docker client")
	}
	cfg.DockerSocket = cmp.Or(cfg.DockerSocket, DefaultDockerSocket)
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("docker provider: %w", err)
	}
	cfg.Types = slices.Clone(cfg.Types)
	return &Provider{cfg: cfg, dc: dc}, nil
}

func (c Config) validate() error {
	switch {
	case c.Cluster == "":
		return errors.New("Config.Cluster is empty: give the cluster name")
	case len(c.Cluster) > 64 || !nameRE.MatchString(c.Cluster):
		return fmt.Errorf("Config.Cluster %q is not valid: use at most 64 letters, digits, '-', '_' and '.', starting with a letter or digit", c.Cluster)
	case c.Network == "":
		return errors.New("Config.Network is empty: give the cluster's Docker network, e.g. micado-" + c.Cluster)
	case c.ContainerNetwork != "" && !nameRE.MatchString(c.ContainerNetwork):
		return fmt.Errorf("Config.ContainerNetwork %q is not a Docker network name", c.ContainerNetwork)
	case c.Image == "":
		return errors.New("Config.Image is empty: give the micado image workers run, e.g. micado/micado:dev")
	}
	if c.JoinAddr == "" {
		return errors.New("Config.JoinAddr is empty: give the manager's gossip address host:port")
	}
	for _, a := range strings.Split(c.JoinAddr, ",") {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return fmt.Errorf("Config.JoinAddr %q is not host:port (or a comma-separated list of them)", a)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("Config.JoinAddr %q: port %q is not a number from 1 to 65535", a, port)
		}
	}
	if c.PublishAddr == "" {
		return errors.New("Config.PublishAddr is empty: give the address where published ports are reached (the network's gateway IP)")
	}
	if net.ParseIP(c.PublishAddr) == nil && !hostRE.MatchString(c.PublishAddr) {
		return fmt.Errorf("Config.PublishAddr %q is neither an IP address nor a host name", c.PublishAddr)
	}
	if c.ClusterKey == "" {
		return errors.New("Config.ClusterKey is empty: give the base64 cluster key")
	}
	if k, err := base64.StdEncoding.DecodeString(c.ClusterKey); err != nil || len(k) != 16 && len(k) != 24 && len(k) != 32 {
		return errors.New("Config.ClusterKey is not base64 of 16, 24 or 32 bytes")
	}
	if c.KeyFile != "" && !path.IsAbs(c.KeyFile) {
		return fmt.Errorf("Config.KeyFile %q is not an absolute path", c.KeyFile)
	}
	if !path.IsAbs(c.DockerSocket) {
		return fmt.Errorf("Config.DockerSocket %q is not an absolute path", c.DockerSocket)
	}
	if len(c.Types) == 0 {
		return errors.New("Config.Types is empty: give at least one instance type, e.g. small=512MiB")
	}
	seen := map[string]bool{}
	for _, t := range c.Types {
		if t.Name == "" {
			return fmt.Errorf("Config.Types: type %s has no name", t)
		}
		if seen[t.Name] {
			return fmt.Errorf("Config.Types: type %q is defined twice", t.Name)
		}
		seen[t.Name] = true
		if t.Memory <= 0 {
			return fmt.Errorf("Config.Types: type %q has no memory: it must be positive", t.Name)
		}
	}
	return nil
}

// Name returns "docker".
func (p *Provider) Name() string { return ProviderName }

// Types returns the configured instance types.
func (p *Provider) Types() []cloudapi.InstanceType { return slices.Clone(p.cfg.Types) }

// containerName is the name of the worker container for node.
func (p *Provider) containerName(node string) string {
	return "micado-" + p.cfg.Cluster + "-" + node
}

// checkSpec validates spec for this provider.
func (p *Provider) checkSpec(spec cloudapi.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if spec.Cluster != p.cfg.Cluster {
		return fmt.Errorf("spec is for cluster %q but this provider creates workers of cluster %q", spec.Cluster, p.cfg.Cluster)
	}
	if len(spec.Name) > maxNodeName || !nameRE.MatchString(spec.Name) {
		return fmt.Errorf("node name %q is not valid: use at most %d letters, digits, '-', '_' and '.', starting with a letter or digit", spec.Name, maxNodeName)
	}
	if spec.Type.Memory <= 0 {
		return fmt.Errorf("instance type %q has no memory: it must be positive", spec.Type.Name)
	}
	for _, t := range spec.Tags {
		if k, _, ok := strings.Cut(t, "="); !ok || k == "" {
			return fmt.Errorf("tag %q is not key=value", t)
		}
	}
	return nil
}

// labels returns every label of the worker container for spec.
func (p *Provider) labels(spec cloudapi.Spec) (map[string]string, error) {
	l, err := cloudapi.Labels(spec)
	if err != nil {
		return nil, err
	}
	maps.Copy(l, map[string]string{
		wire.LabelCluster:   spec.Cluster,
		wire.LabelComponent: wire.ComponentWorker,
		wire.LabelNode:      spec.Name,
		LabelInstanceType:   spec.Type.Name,
		LabelTags:           strings.Join(spec.Tags, ","),
		LabelProvider:       ProviderName,
	})
	return l, nil
}

// command is the worker container's Cmd for spec.
func (p *Provider) command(spec cloudapi.Spec) []string {
	cmd := []string{"worker", "--cluster", spec.Cluster, "--name", spec.Name}
	for _, t := range spec.Tags {
		cmd = append(cmd, "--tag", t)
	}
	return append(cmd, "--memory", strconv.FormatInt(spec.Type.Memory, 10),
		"--join", p.cfg.JoinAddr, "--publish-addr", p.cfg.PublishAddr, "--container-network", cmp.Or(p.cfg.ContainerNetwork, p.cfg.Network), "--pull=false",
		"--key-file", KeyPath)
}

// seedDir is where a cloud-init image reads its NoCloud seed.
const seedDir = "/var/lib/cloud/seed/nocloud"

// seed returns the files a new worker container gets: the cluster key
// as KeyPath (unless Config.KeyFile mounts it) or, with Config.CloudInit,
// the NoCloud seed of spec's user data. Unlike an environment variable,
// a file in the container's filesystem is not part of what `docker
// inspect` shows.
func (p *Provider) seed(spec cloudapi.Spec) []wire.File {
	if p.cfg.CloudInit {
		meta := fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", spec.Name, spec.Name)
		return []wire.File{
			{Path: seedDir + "/meta-data", Mode: 0o600, Data: []byte(meta)},
			{Path: seedDir + "/user-data", Mode: 0o600, Data: []byte(spec.UserData)},
		}
	}
	if p.cfg.KeyFile != "" {
		return nil
	}
	return []wire.File{{Path: KeyPath, Mode: 0o400, Data: []byte(p.cfg.ClusterKey + "\n")}}
}

// copyFiles writes files into the (created, not yet started) container id.
func (p *Provider) copyFiles(ctx context.Context, id string, files []wire.File) error {
	if len(files) == 0 {
		return nil
	}
	b, err := wire.TarFiles(files)
	if err != nil {
		return err
	}
	return p.dc.CopyToContainer(ctx, id, "/", bytes.NewReader(b), container.CopyToContainerOptions{})
}

// Create creates and starts the worker container for spec and returns it
// once started. If the container already exists as this cluster's worker
// for the same node, type and tags (a retried Create), it is started if
// need be and returned.
func (p *Provider) Create(ctx context.Context, spec cloudapi.Spec) (cloudapi.Instance, error) {
	if err := p.checkSpec(spec); err != nil {
		return cloudapi.Instance{}, fmt.Errorf("docker: create: %w", err)
	}
	labels, err := p.labels(spec)
	if err != nil {
		return cloudapi.Instance{}, fmt.Errorf("docker: create %s: %w", spec.Name, err)
	}
	name := p.containerName(spec.Name)
	cfg, host := p.containerConfig(spec, labels)
	nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
		p.cfg.Network: {Aliases: []string{spec.Name}},
	}}
	created, err := p.dc.ContainerCreate(ctx, cfg, host, nc, nil, name)
	switch {
	case errdefs.IsConflict(err):
		return p.existing(ctx, spec, name, labels)
	case errdefs.IsNotFound(err):
		if _, ierr := p.dc.ImageInspect(ctx, p.cfg.Image); errdefs.IsNotFound(ierr) {
			return cloudapi.Instance{}, fmt.Errorf("docker: create %s: image %s is missing (this provider never pulls: build it with `make images`): %w", name, p.cfg.Image, err)
		}
		if _, nerr := p.dc.NetworkInspect(ctx, p.cfg.Network, network.InspectOptions{}); errdefs.IsNotFound(nerr) {
			return cloudapi.Instance{}, fmt.Errorf("docker: create %s: network %s does not exist: %w", name, p.cfg.Network, err)
		}
		return cloudapi.Instance{}, fmt.Errorf("docker: create %s: %w", name, err)
	case err != nil:
		return cloudapi.Instance{}, fmt.Errorf("docker: create %s: %w", name, err)
	}
	if err := p.copyFiles(ctx, created.ID, p.seed(spec)); err != nil {
		_ = p.dc.ContainerRemove(context.WithoutCancel(ctx), created.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
		return cloudapi.Instance{}, fmt.Errorf("docker: give %s its key or seed: %w", name, err)
	}
	if err := p.dc.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		// Leave nothing half made: a retry creates it afresh.
		_ = p.dc.ContainerRemove(context.WithoutCancel(ctx), created.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
		return cloudapi.Instance{}, fmt.Errorf("docker: start %s: %w", name, err)
	}
	return p.inspect(ctx, created.ID)
}

// containerConfig is how a worker container is made: an agent with the
// host's Docker socket or, with Config.CloudInit, a machine of its own
// (systemd as PID 1, its own Docker engine) that boots from user data.
func (p *Provider) containerConfig(spec cloudapi.Spec, labels map[string]string) (*container.Config, *container.HostConfig) {
	cfg := &container.Config{Image: p.cfg.Image, Hostname: spec.Name, Labels: labels}
	host := &container.HostConfig{RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}}
	if p.cfg.CloudInit {
		MachineConfig(cfg, host)
		return cfg, host
	}
	cfg.Cmd = p.command(spec)
	host.Mounts = []mount.Mount{{Type: mount.TypeBind, Source: p.cfg.DockerSocket, Target: socketTarget}}
	if p.cfg.KeyFile != "" {
		host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeBind, Source: p.cfg.KeyFile, Target: KeyPath, ReadOnly: true})
	}
	return cfg, host
}

// MachineConfig makes a container a machine of its own, as a cloud VM
// is: systemd as PID 1 (with cgroups it may mount itself, in its own
// cgroup namespace) and room for a Docker engine of its own, whose
// storage is an anonymous volume (overlay2 cannot sit on the container's
// overlay root). Every capability but CAP_SYS_RESOURCE rather than
// --privileged, which engines without that capability refuse; seccomp
// and AppArmor would block the inner engine's mounts.
func MachineConfig(cfg *container.Config, host *container.HostConfig) {
	cfg.StopSignal = "SIGRTMIN+3"
	cfg.Volumes = map[string]struct{}{"/var/lib/docker": {}}
	host.CapAdd = []string{"ALL"}
	host.CapDrop = []string{"SYS_RESOURCE"}
	host.SecurityOpt = []string{"seccomp=unconfined", "apparmor=unconfined"}
	host.MaskedPaths, host.ReadonlyPaths = []string{}, []string{} // --security-opt systempaths=unconfined
	host.CgroupnsMode = container.CgroupnsModePrivate
	host.Tmpfs = map[string]string{"/sys/fs/cgroup": "", "/run": "", "/run/lock": "", "/tmp": ""}
}

// existing handles a Create whose container name is taken.
func (p *Provider) existing(ctx context.Context, spec cloudapi.Spec, name string, want map[string]string) (cloudapi.Instance, error) {
	ci, err := p.dc.ContainerInspect(ctx, name)
	if err != nil {
		return cloudapi.Instance{}, fmt.Errorf("docker: create %s: the name is taken, and inspecting it failed: %w", name, err)
	}
	var got map[string]string
	if ci.Config != nil {
		got = ci.Config.Labels
	}
	if got[wire.LabelCluster] != p.cfg.Cluster || got[wire.LabelComponent] != wire.ComponentWorker || got[wire.LabelNode] != spec.Name {
		return cloudapi.Instance{}, fmt.Errorf("docker: create %s: a container of that name already exists and is not the worker %s of cluster %s", name, spec.Name, p.cfg.Cluster)
	}
	for _, k := range []string{LabelInstanceType, LabelTags} {
		if got[k] != want[k] {
			return cloudapi.Instance{}, fmt.Errorf("docker: create %s: worker %s already exists with %s=%q, not %q", name, spec.Name, k, got[k], want[k])
		}
	}
	if ci.State == nil || !ci.State.Running {
		// An earlier Create may have stopped before the key was copied.
		if err := p.copyFiles(ctx, ci.ID, p.seed(spec)); err != nil {
			return cloudapi.Instance{}, fmt.Errorf("docker: give existing %s its key or seed: %w", name, err)
		}
		if err := p.dc.ContainerStart(ctx, ci.ID, container.StartOptions{}); err != nil {
			return cloudapi.Instance{}, fmt.Errorf("docker: start existing %s: %w", name, err)
		}
	}
	return p.inspect(ctx, ci.ID)
}

// inspect reads one worker container as an Instance.
func (p *Provider) inspect(ctx context.Context, id string) (cloudapi.Instance, error) {
	ci, err := p.dc.ContainerInspect(ctx, id)
	if err != nil {
		return cloudapi.Instance{}, fmt.Errorf("docker: inspect %s: %w", id, err)
	}
	var (
		labels map[string]string
		nets   map[string]*network.EndpointSettings
		state  string
	)
	if ci.Config != nil {
		labels = ci.Config.Labels
	}
	if ci.NetworkSettings != nil {
		nets = ci.NetworkSettings.Networks
	}
	if ci.State != nil {
		state = ci.State.Status
	}
	inst := p.instance(ci.ID, strings.TrimPrefix(ci.Name, "/"), labels, nets, state)
	if t, err := time.Parse(time.RFC3339Nano, ci.Created); err == nil {
		inst.CreatedAt = t.UTC()
	}
	return inst, nil
}

// instance builds an Instance from what Docker reports of a container:
// the labels Create set, its state and its network.
func (p *Provider) instance(id, name string, labels map[string]string, nets map[string]*network.EndpointSettings, state string) cloudapi.Instance {
	inst := cloudapi.Instance{
		ID:      id,
		Cluster: labels[wire.LabelCluster],
		Name:    labels[wire.LabelNode],
		Type:    labels[LabelInstanceType],
		Tags:    cloudapi.SplitTags(labels[LabelTags]),
		State:   normaliseState(state),
		Address: p.address(nets),
	}
	if inst.Name == "" {
		inst.Name = strings.TrimPrefix(name, "micado-"+inst.Cluster+"-")
	}
	return inst
}

// address returns the container's IP on the provider's network, or on its
// only network.
func (p *Provider) address(nets map[string]*network.EndpointSettings) string {
	if ep := nets[p.cfg.Network]; ep != nil {
		return ep.IPAddress
	}
	for _, ep := range nets {
		if ep != nil && ep.NetworkID != "" && strings.HasPrefix(ep.NetworkID, p.cfg.Network) {
			return ep.IPAddress
		}
	}
	if len(nets) == 1 {
		for _, ep := range nets {
			if ep != nil {
				return ep.IPAddress
			}
		}
	}
	return ""
}

// normaliseState maps Docker's container states onto cloudapi's.
func normaliseState(s string) cloudapi.State {
	switch s {
	case container.StateCreated, container.StateRestarting:
		return cloudapi.StatePending
	case container.StateRunning:
		return cloudapi.StateRunning
	case container.StatePaused, container.StateExited:
		return cloudapi.StateStopped
	case container.StateRemoving:
		return cloudapi.StateShuttingDown
	case container.StateDead:
		// A dead container is one Docker failed to remove; it still
		// exists, so List reports it (as an error) for the manager to
		// terminate rather than hiding it as terminated.
		return cloudapi.StateError
	}
	return cloudapi.StateUnknown
}

// Terminate force-removes the worker container id (an ID or a name) and the
// application containers its agent ran. Containers that are not workers of
// this provider's cluster are left alone and reported as
// cloudapi.ErrNotFound, like unknown ids.
func (p *Provider) Terminate(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("docker: terminate: empty instance id")
	}
	ci, err := p.dc.ContainerInspect(ctx, id)
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("docker: terminate %s: %w", id, cloudapi.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("docker: terminate %s: %w", id, err)
	}
	var labels map[string]string
	if ci.Config != nil {
		labels = ci.Config.Labels
	}
	if labels[wire.LabelCluster] != p.cfg.Cluster || labels[wire.LabelComponent] != wire.ComponentWorker {
		return fmt.Errorf("docker: terminate %s: %w: it is not a worker of cluster %s", id, cloudapi.ErrNotFound, p.cfg.Cluster)
	}
	err = p.dc.ContainerRemove(ctx, ci.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("docker: terminate %s: %w", id, cloudapi.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("docker: terminate %s: %w", id, err)
	}
	node := labels[wire.LabelNode]
	if node == "" {
		return nil
	}
	// The worker's application containers run beside it on this engine;
	// on a cloud they would die with the VM.
	apps, err := p.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", wire.LabelCluster+"="+p.cfg.Cluster),
		filters.Arg("label", wire.LabelComponent+"="+wire.ComponentApp),
		filters.Arg("label", wire.LabelNode+"="+node),
	)})
	if err != nil {
		return fmt.Errorf("docker: terminate %s: worker removed, but listing its containers failed: %w", id, err)
	}
	var errs []error
	for _, a := range apps {
		if a.Labels[wire.LabelCluster] != p.cfg.Cluster || a.Labels[wire.LabelNode] != node || a.Labels[wire.LabelComponent] != wire.ComponentApp {
			continue
		}
		if err := p.dc.ContainerRemove(ctx, a.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("docker: terminate %s: worker removed, but not all of its containers: %w", id, errors.Join(errs...))
	}
	return nil
}

// List returns every worker container of cluster, whatever its state,
// sorted by node name.
func (p *Provider) List(ctx context.Context, cluster string) ([]cloudapi.Instance, error) {
	if cluster == "" {
		return nil, errors.New("docker: list: empty cluster name")
	}
	cs, err := p.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", wire.LabelCluster+"="+cluster),
		filters.Arg("label", wire.LabelComponent+"="+wire.ComponentWorker),
	)})
	if err != nil {
		return nil, fmt.Errorf("docker: list cluster %s: %w", cluster, err)
	}
	res := make([]cloudapi.Instance, 0, len(cs))
	for _, c := range cs {
		if c.Labels[wire.LabelCluster] != cluster || c.Labels[wire.LabelComponent] != wire.ComponentWorker {
			continue
		}
		var nets map[string]*network.EndpointSettings
		if c.NetworkSettings != nil {
			nets = c.NetworkSettings.Networks
		}
		name := ""
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		inst := p.instance(c.ID, name, c.Labels, nets, c.State)
		inst.CreatedAt = time.Unix(c.Created, 0).UTC()
		res = append(res, inst)
	}
	slices.SortFunc(res, func(a, b cloudapi.Instance) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
	})
	return res, nil
}
