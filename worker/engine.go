package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/go-connections/nat"

	"github.com/micado-scale/micado/internal/registryauth"
	"github.com/micado-scale/micado/internal/wire"
)

// engine runs this worker's containers on its Docker engine. Every
// container it creates carries the cluster and node labels, and it only
// ever lists, stops or removes containers with both.
type engine struct {
	docker      *client.Client
	cluster     string
	node        string
	publishAddr string
	pull        bool
	auths       registryauth.Auths // credentials for pulls, by registry
	network     string
}

// ErrImageMissing is returned when the image is not on the engine and
// pulling is disabled.
var ErrImageMissing = errors.New("image not found")

func (e *engine) containerName(instance string, gen int) string {
	n := "micado-" + e.cluster + "-" + e.node + "-" + instance
	if gen > 0 {
		n += "-g" + strconv.Itoa(gen)
	}
	return n
}

func (e *engine) filter() filters.Args {
	return filters.NewArgs(
		filters.Arg("label", wire.LabelCluster+"="+e.cluster),
		filters.Arg("label", wire.LabelNode+"="+e.node),
		filters.Arg("label", wire.LabelComponent+"=app"),
	)
}

// list returns this node's containers, newest information from the engine.
func (e *engine) list(ctx context.Context) ([]wire.ContainerInfo, error) {
	cs, err := e.docker.ContainerList(ctx, container.ListOptions{All: true, Filters: e.filter()})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]wire.ContainerInfo, 0, len(cs))
	for _, c := range cs {
		out = append(out, e.summaryInfo(c))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Instance < out[j].Instance })
	return out, nil
}

func (e *engine) summaryInfo(c container.Summary) wire.ContainerInfo {
	mem, _ := strconv.ParseInt(c.Labels[wire.LabelMemory], 10, 64)
	gen, _ := strconv.Atoi(c.Labels[wire.LabelGeneration])
	info := wire.ContainerInfo{
		ID: c.ID, Instance: c.Labels[wire.LabelInstance], Service: c.Labels[wire.LabelService],
		App: c.Labels[wire.LabelApp], Image: c.Image, Node: e.node, Memory: mem, State: c.State,
		Address: e.publishAddr, Generation: gen, Created: time.Unix(c.Created, 0).UTC(),
	}
	if len(c.Names) > 0 {
		info.Name = strings.TrimPrefix(c.Names[0], "/")
	}
	for _, p := range c.Ports {
		if p.PublicPort == 0 || (p.IP != "" && p.IP != "0.0.0.0") {
			continue
		}
		info.Ports = append(info.Ports, wire.Binding{Container: int(p.PrivatePort), Protocol: p.Type, Host: int(p.PublicPort)})
	}
	sort.Slice(info.Ports, func(i, j int) bool { return info.Ports[i].Container < info.Ports[j].Container })
	return info
}

func (e *engine) ensureImage(ctx context.Context, ref string) error {
	_, err := e.docker.ImageInspect(ctx, ref)
	if err == nil {
		return nil
	}
	if !errdefs.IsNotFound(err) {
		return fmt.Errorf("inspect image %s: %w", ref, err)
	}
	if !e.pull {
		return fmt.Errorf("%w: %s is not on worker %s and pulling is disabled", ErrImageMissing, ref, e.node)
	}
	auth, err := e.auths.For(ref)
	if err != nil {
		return fmt.Errorf("pull %s on worker %s: %w", ref, e.node, err)
	}
	rc, err := e.docker.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: auth})
	if err != nil {
		return fmt.Errorf("pull %s on worker %s: %w", ref, e.node, err)
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	return err
}

// start runs one container with its memory limit set to the request and
// its ports published on free host ports chosen by the engine, so several
// containers of one kind can share this worker. Starting an instance that
// already runs returns it unchanged (the manager may retry after a crash).
func (e *engine) start(ctx context.Context, r wire.StartRequest) (wire.ContainerInfo, error) {
	name := e.containerName(r.Instance, r.Generation)
	if existing, err := e.docker.ContainerInspect(ctx, name); err == nil {
		if existing.State != nil && existing.State.Running {
			return e.inspectInfo(ctx, name)
		}
		if err := e.docker.ContainerRemove(ctx, existing.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			return wire.ContainerInfo{}, fmt.Errorf("remove stale container %s: %w", name, err)
		}
	}
	if err := e.ensureImage(ctx, r.Image); err != nil {
		return wire.ContainerInfo{}, err
	}
	exposed := nat.PortSet{}
	bindings := nat.PortMap{}
	for _, p := range r.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		port, err := nat.NewPort(proto, strconv.Itoa(p.Container))
		if err != nil {
			return wire.ContainerInfo{}, fmt.Errorf("port %d/%s: %w", p.Container, proto, err)
		}
		exposed[port] = struct{}{}
		bindings[port] = []nat.PortBinding{{HostIP: "0.0.0.0", HostPort: ""}}
	}
	env := []string{
		"MICADO_CLUSTER=" + e.cluster, "MICADO_NODE=" + e.node,
		"MICADO_SERVICE=" + r.Service, "MICADO_INSTANCE=" + r.Instance,
	}
	keys := make([]string, 0, len(r.Env))
	for k := range r.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+r.Env[k])
	}
	labels := map[string]string{
		wire.LabelCluster: e.cluster, wire.LabelComponent: "app", wire.LabelNode: e.node,
		wire.LabelService: r.Service, wire.LabelInstance: r.Instance,
		wire.LabelMemory: strconv.FormatInt(r.Memory, 10), wire.LabelGeneration: strconv.Itoa(r.Generation),
	}
	if r.App != "" {
		labels[wire.LabelApp] = r.App
	}
	cfg := &container.Config{Image: r.Image, Env: env, Labels: labels, ExposedPorts: exposed, Hostname: r.Instance}
	host := &container.HostConfig{
		PortBindings:  bindings,
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyOnFailure, MaximumRetryCount: 3},
		Resources:     container.Resources{Memory: r.Memory, MemorySwap: r.Memory},
	}
	var nc *network.NetworkingConfig
	if e.network != "" {
		nc = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{e.network: {}}}
	}
	created, err := e.docker.ContainerCreate(ctx, cfg, host, nc, nil, name)
	if err != nil {
		return wire.ContainerInfo{}, fmt.Errorf("create container %s: %w", name, err)
	}
	if len(r.Files) > 0 {
		if err := e.copyFiles(ctx, created.ID, r.Files); err != nil {
			_ = e.docker.ContainerRemove(context.WithoutCancel(ctx), created.ID, container.RemoveOptions{Force: true})
			return wire.ContainerInfo{}, fmt.Errorf("write files into container %s: %w", name, err)
		}
	}
	if err := e.docker.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		_ = e.docker.ContainerRemove(context.WithoutCancel(ctx), created.ID, container.RemoveOptions{Force: true})
		return wire.ContainerInfo{}, fmt.Errorf("start container %s: %w", name, err)
	}
	return e.inspectInfo(ctx, created.ID)
}

// checkFiles refuses files an agent must not write: relative or unclean
// paths, the root, and modes beyond permission bits. Errors name the
// path, never the contents.
func checkFiles(fs []wire.File) error {
	seen := map[string]bool{}
	for _, f := range fs {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return fmt.Errorf("file path %q is not a clean absolute path", f.Path)
		}
		if f.Mode&^0o777 != 0 {
			return fmt.Errorf("file %s: mode %#o has more than permission bits", f.Path, f.Mode)
		}
		if seen[f.Path] {
			return fmt.Errorf("file %s is given twice", f.Path)
		}
		seen[f.Path] = true
	}
	return nil
}

// copyFiles writes files into the created container id before it starts,
// as one tar stream extracted at /, owned by root, with their parent
// directories (0755) created as needed. Their contents go to the engine
// only: they are in neither the container's environment, command nor
// labels, and never logged.
func (e *engine) copyFiles(ctx context.Context, id string, fs []wire.File) error {
	if err := checkFiles(fs); err != nil {
		return err
	}
	b, err := wire.TarFiles(fs)
	if err != nil {
		return err
	}
	return e.docker.CopyToContainer(ctx, id, "/", bytes.NewReader(b), container.CopyToContainerOptions{})
}

func (e *engine) inspectInfo(ctx context.Context, id string) (wire.ContainerInfo, error) {
	c, err := e.docker.ContainerInspect(ctx, id)
	if err != nil {
		return wire.ContainerInfo{}, fmt.Errorf("inspect container %s: %w", id, err)
	}
	mem, _ := strconv.ParseInt(c.Config.Labels[wire.LabelMemory], 10, 64)
	gen, _ := strconv.Atoi(c.Config.Labels[wire.LabelGeneration])
	created, _ := time.Parse(time.RFC3339Nano, c.Created)
	info := wire.ContainerInfo{
		ID: c.ID, Name: strings.TrimPrefix(c.Name, "/"), Instance: c.Config.Labels[wire.LabelInstance],
		Service: c.Config.Labels[wire.LabelService], App: c.Config.Labels[wire.LabelApp], Image: c.Config.Image,
		Node: e.node, Memory: mem, Address: e.publishAddr, Generation: gen, Created: created.UTC(),
	}
	if c.State != nil {
		info.State = c.State.Status
	}
	if c.NetworkSettings != nil {
		for port, bs := range c.NetworkSettings.Ports {
			for _, b := range bs {
				if b.HostIP != "" && b.HostIP != "0.0.0.0" {
					continue
				}
				hp, _ := strconv.Atoi(b.HostPort)
				info.Ports = append(info.Ports, wire.Binding{Container: port.Int(), Protocol: port.Proto(), Host: hp})
			}
		}
	}
	sort.Slice(info.Ports, func(i, j int) bool { return info.Ports[i].Container < info.Ports[j].Container })
	return info, nil
}

// stop stops and removes every copy of instance on this node. It reports
// whether anything was there; stopping what is gone is not an error.
func (e *engine) stop(ctx context.Context, instance string, gen int) (bool, error) {
	f := e.filter()
	f.Add("label", wire.LabelInstance+"="+instance)
	if gen >= 0 {
		f.Add("label", wire.LabelGeneration+"="+strconv.Itoa(gen))
	}
	cs, err := e.docker.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return false, fmt.Errorf("list containers: %w", err)
	}
	timeout := 10
	for _, c := range cs {
		if err := e.docker.ContainerStop(ctx, c.ID, container.StopOptions{Timeout: &timeout}); err != nil && !errdefs.IsNotFound(err) {
			return false, fmt.Errorf("stop %s: %w", instance, err)
		}
		if err := e.docker.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			return false, fmt.Errorf("remove %s: %w", instance, err)
		}
	}
	return len(cs) > 0, nil
}
