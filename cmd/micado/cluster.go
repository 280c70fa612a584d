package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	dockerclient "github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/go-connections/nat"
	"github.com/micado-scale/micado/cloudapi"
	cdocker "github.com/micado-scale/micado/cloudapi/docker"
	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions/bytesize"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
	"github.com/robfig/cron/v3"
	"github.com/spf13/cobra"
)

// Images a local cluster runs; `make images` builds them.
var (
	micadoImage = envOr("MICADO_IMAGE", "micado/micado:dev")
	consulImage = envOr("MICADO_CONSUL_IMAGE", "micado/consul:1.20.1")
)

func dockerClient() (*dockerclient.Client, error) {
	c, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		return nil, userErr("cannot create a Docker client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Ping(ctx); err != nil {
		return nil, userErr("cannot reach the Docker engine: %v (is Docker running?)", rootCause(err))
	}
	return c, nil
}

func clusterFilter(name string) filters.Args {
	return filters.NewArgs(filters.Arg("label", wire.LabelCluster+"="+name))
}

func upCmd(g *globals) *cobra.Command {
	var (
		workers   int
		roles     string
		workerMem = bytesize.GiB
		strategy  string
		timeout   time.Duration
		provider  string
		types     string
		maxTotal  int
		maxRole   int
		joinWait  time.Duration
		scaleImg  string
		schedule  string
		siDelay   time.Duration
		unneeded  time.Duration
		minRole   string
		tlsCert   string
		tlsKey    string
		managers  int
		servers   int
		prom      string
		prices    string
		budget    string
		alertCPU  string
		alertMem  string
		alertFor  time.Duration
		boot      string
		regAuth   string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a local cluster on Docker: Consul, a manager and worker agents",
		Long: `Start a local micado cluster on this machine's Docker engine: one Consul agent,
one manager and N worker agents, each in its own container on a private
Docker network made for the cluster, micado-<cluster>. Workers take roles
from --roles in turn. The containers the workers run are on a network of
their own, micado-<cluster>-apps: they reach Consul (as micado-<cluster>-consul)
but not the managers or the worker agents.

Consul runs with ACLs (default deny) and encrypted gossip. The manager's
address, an API token, the cluster key, Consul's config file and its
management, manager and discovery tokens are saved under --home/<cluster>/
(readable only by you), where later commands find them. The containers get
their secrets as read-only files, never in their environment or on their
command line.

With --tls-cert and --tls-key (PEM files; the certificate must be valid for
127.0.0.1) the manager serves its API over HTTPS only; --ca-cert names the
CA that signed it, which later commands then trust (default: the system's
roots).

With --worker-boot cloud-init, the workers scale-out creates boot as cloud
VMs do: each is a container of --scale-image (a systemd and cloud-init
image, e.g. the stock Debian of ` + "`make image-debian`" + `) that gets the same
user data as an EC2 or OpenStack instance, installs Docker from its
distribution's packages, fetches micado from the manager and spends its
join token for the cluster key. It needs --tls-cert valid for
micado-<cluster>-manager too. The --workers started now are agents.`,
		Example: `  micado up
  micado up --workers 3 --roles proxy,app,db --worker-memory 2GiB
  micado up --tls-cert manager.crt --tls-key manager.key --ca-cert ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if workers < 0 || workers > 50 {
				return userErr("--workers %d is out of range: use 0 to 50", workers)
			}
			if managers < 1 || managers > 5 {
				return userErr("--managers %d is out of range: use 1 to 5 (3 survives the loss of one manager)", managers)
			}
			if servers != 1 && servers != 3 && servers != 5 {
				return userErr("--consul-servers %d: use 1, 3 or 5 (an odd number keeps a Raft quorum)", servers)
			}
			rs := splitList(roles)
			if workers > 0 && len(rs) == 0 {
				return userErr("--roles is empty: give at least one role, e.g. --roles proxy,app")
			}
			if !clusterNameOK(g.cluster) {
				return userErr("cluster name %q is not valid: use lowercase letters, digits and '-'", g.cluster)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if provider != "docker" && provider != "none" {
				return userErr("--provider %q: a local cluster scales out with docker, or not at all (none)", provider)
			}
			its, err := cloudapi.ParseInstanceTypes(types)
			if err != nil {
				return userErr("--instance-types: %v", err)
			}
			if err := cloudapi.ApplyPrices(its, prices); err != nil {
				return userErr("--instance-prices: %v", err)
			}
			if _, err := parseBudget(budget); err != nil {
				return err
			}
			if schedule != "off" {
				if _, err := cron.ParseStandard(schedule); err != nil {
					return userErr("--consolidate-schedule %q is not a cron schedule: %v", schedule, err)
				}
			}
			if _, err := parseMinPerRole(minRole); err != nil {
				return err
			}
			if siDelay < 0 || unneeded < 0 || joinWait < 10*time.Second {
				return userErr("--scale-in-delay and --unneeded-time must not be negative, --join-timeout at least 10s")
			}
			tlsFiles, err := checkUpTLS(tlsCert, tlsKey, g.caCert)
			if err != nil {
				return err
			}
			switch {
			case boot != "agent" && boot != "cloud-init":
				return userErr("--worker-boot %q is not agent or cloud-init", boot)
			case boot == "cloud-init" && (tlsFiles == nil || provider != "docker" || scaleImg == ""):
				return userErr("--worker-boot cloud-init needs --provider docker, --scale-image (a cloud-init image, e.g. micado/debian-cloud:bookworm from `make image-debian`) and --tls-cert/--tls-key: new workers spend their join token for the cluster key over TLS")
			case regAuth != "" && boot != "cloud-init":
				return userErr("--registry-auth-file is for --worker-boot cloud-init: local agent workers pull nothing")
			}
			if regAuth != "" {
				if _, _, err := readRegistryAuth(regAuth); err != nil {
					return err
				}
				if regAuth, err = filepath.Abs(regAuth); err != nil {
					return userErr("--registry-auth-file: %v", err)
				}
			}
			if _, err := parseNodeAlert(alertCPU, alertMem, alertFor); err != nil {
				return err
			}
			if prom != "" {
				if _, err := manager.NewPromSource(prom); err != nil {
					return userErr("--prometheus: %v", err)
				}
			}
			return up(ctx, cmd, g, upOptions{tls: tlsFiles, workers: workers, managers: managers, consulServers: servers, roles: rs, memory: int64(workerMem), strategy: strategy,
				provider: provider, types: types, maxTotal: maxTotal, maxPerRole: maxRole, joinTimeout: joinWait, scaleImage: scaleImg,
				schedule: schedule, scaleInDelay: siDelay, unneeded: unneeded, minPerRole: minRole,
				prometheus: prom, alertCPU: alertCPU, alertMem: alertMem, alertFor: alertFor, prices: prices, budget: budget, boot: boot, registryAuth: regAuth})
		},
	}
	cmd.Flags().IntVar(&workers, "workers", 2, "number of worker agents")
	cmd.Flags().IntVar(&managers, "managers", 1, "number of managers: one leads, the others stand by and take over (3 survives the loss of one)")
	cmd.Flags().IntVar(&servers, "consul-servers", 1, "Consul servers: 1, or 3 or 5 for a Raft cluster that survives the loss of one (or two)")
	cmd.Flags().StringVar(&roles, "roles", "proxy,app", "comma-separated roles, given to workers in turn")
	cmd.Flags().Var(&workerMem, "worker-memory", "memory each worker offers to containers, e.g. 1GiB or 512m")
	cmd.Flags().StringVar(&strategy, "strategy", "spread", "placement ranking: spread or binpack")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the cluster to come up")
	cmd.Flags().StringVar(&provider, "provider", "docker", "scale-out provider: docker (new workers are containers) or none")
	cmd.Flags().StringVar(&types, "instance-types", DefaultInstanceTypes, "instance types scale-out may create, NAME=SIZE, comma-separated")
	cmd.Flags().IntVar(&maxTotal, "max-instances", 10, "most workers in the cluster, booting ones included")
	cmd.Flags().IntVar(&maxRole, "max-per-role", 5, "most workers of one role")
	cmd.Flags().StringVar(&schedule, "consolidate-schedule", manager.DefaultConsolidateSchedule, `cron schedule of scale-in rounds ("off" disables them)`)
	cmd.Flags().DurationVar(&siDelay, "scale-in-delay", coordinator.DefaultScaleDownDelayAfterAdd, "a worker is kept at least this long after it joined")
	cmd.Flags().DurationVar(&unneeded, "unneeded-time", coordinator.DefaultScaleDownUnneededTime, "a worker must be removable this long before it is scaled in")
	cmd.Flags().StringVar(&minRole, "min-per-role", "", "workers kept per role, e.g. proxy=1 (default: 1 for each of --roles)")
	cmd.Flags().StringVar(&scaleImg, "scale-image", "", "image new workers run (default: the micado image; with --worker-boot cloud-init, the image they boot)")
	cmd.Flags().StringVar(&regAuth, "registry-auth-file", "", "with --worker-boot cloud-init: Docker config.json of registry credentials the new workers get with the cluster key")
	cmd.Flags().StringVar(&boot, "worker-boot", "agent", "how workers scale-out creates start: agent (the micado image with the key) or cloud-init (a VM-like container bootstrapped by user data and a join token)")
	cmd.Flags().DurationVar(&joinWait, "join-timeout", manager.DefaultJoinTimeout, "how long a new worker may take to join before it is removed")
	cmd.Flags().StringVar(&budget, "drain-budget", "10%", "the most workers of a role consolidation drains at once: N or N%")
	cmd.Flags().StringVar(&prices, "instance-prices", "", "price per hour of instance types NAME=PRICE, e.g. small=0.01,medium=0.02,large=0.04")
	cmd.Flags().StringVar(&prom, "prometheus", "", "Prometheus HTTP API `URL` that scaling queries read, as the manager containers reach it (the host is the cluster network's gateway)")
	cmd.Flags().StringVar(&alertCPU, "node-cpu-alert", "", "node usage alert: a role whose workers use more than this % of their CPU for --alert-for gets one more instance (e.g. 80%)")
	cmd.Flags().StringVar(&alertMem, "node-memory-alert", "", "node usage alert on the memory really used, % of the workers' capacity (e.g. 85%)")
	cmd.Flags().DurationVar(&alertFor, "alert-for", coordinator.DefaultAlertFor, "how long a role must stay above a node usage limit before its alert fires")
	cmd.Flags().StringVar(&tlsCert, "tls-cert", "", "PEM certificate of the manager API, valid for 127.0.0.1: the API then speaks HTTPS only (with --tls-key; trust its CA with --ca-cert)")
	cmd.Flags().StringVar(&tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	return cmd
}

// upTLS are the absolute paths of the files `up` gives the manager, and
// of the CA the CLI trusts.
type upTLS struct{ cert, key, ca string }

// checkUpTLS checks the manager's certificate and key before anything is
// created: they must be readable, belong together and, under the CA (or
// the system's roots), be valid for 127.0.0.1, where `up` publishes the
// API.
func checkUpTLS(cert, key, ca string) (*upTLS, error) {
	if cert == "" && key == "" {
		return nil, nil
	}
	if cert == "" || key == "" {
		return nil, userErr("give --tls-cert and --tls-key together")
	}
	t := &upTLS{}
	for _, f := range []struct {
		in  string
		out *string
	}{{cert, &t.cert}, {key, &t.key}, {ca, &t.ca}} {
		if f.in == "" {
			continue
		}
		abs, err := filepath.Abs(f.in)
		if err != nil {
			return nil, userErr("%s: %v", f.in, err)
		}
		*f.out = abs
	}
	tc, err := manager.LoadServerTLS(t.cert, t.key)
	if err != nil {
		return nil, userErr("%v", err)
	}
	opts := x509.VerifyOptions{DNSName: "127.0.0.1", Intermediates: x509.NewCertPool()}
	if t.ca != "" {
		if opts.Roots, err = loadCA(t.ca); err != nil {
			return nil, err
		}
	}
	chain := tc.Certificates[0]
	for _, der := range chain.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			opts.Intermediates.AddCert(c)
		}
	}
	if _, err := chain.Leaf.Verify(opts); err != nil {
		under := "the system's roots"
		if t.ca != "" {
			under = "the CA " + t.ca
		}
		return nil, userErr("the TLS certificate %s cannot be verified for 127.0.0.1 under %s: %v", t.cert, under, err)
	}
	return t, nil
}

func clusterNameOK(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

type upOptions struct {
	workers       int
	managers      int // manager containers (1: "manager"; more: "manager-1" …)
	consulServers int // Consul servers (more than 1: plus a client agent "consul")
	roles         []string
	memory        int64
	strategy      string
	provider      string
	types         string
	maxTotal      int
	maxPerRole    int
	joinTimeout   time.Duration
	scaleImage    string
	schedule      string
	scaleInDelay  time.Duration
	unneeded      time.Duration
	minPerRole    string
	tls           *upTLS // nil: the API speaks plain HTTP
	prometheus    string
	prices        string
	budget        string
	alertCPU      string
	alertMem      string
	alertFor      time.Duration
	boot          string // how scaled-out workers start: agent or cloud-init
	registryAuth  string // absolute path of a Docker config.json for cloud-init workers
}

// Where the containers find their secrets: read-only bind mounts of the
// files under the cluster's state directory.
const (
	keyMountPath     = "/etc/micado/cluster.key"
	tokenMountPath   = "/etc/micado/api-token"
	tlsCertMountPath = "/etc/micado/tls/cert.pem"
	tlsKeyMountPath  = "/etc/micado/tls/key.pem"
	tlsCAMountPath   = "/etc/micado/tls/ca.pem"
	// registryAuthMountPath: up's --registry-auth-file, for the manager to
	// hand to cloud-init workers.
	registryAuthMountPath = "/etc/micado/registry-auth.json"
)

// secretMount bind-mounts one host file read-only.
func secretMount(src, target string) mount.Mount {
	return mount.Mount{Type: mount.TypeBind, Source: src, Target: target, ReadOnly: true}
}

func up(ctx context.Context, cmd *cobra.Command, g *globals, o upOptions) (err error) {
	out := cmd.OutOrStdout()
	dc, err := dockerClient()
	if err != nil {
		return err
	}
	defer dc.Close()
	for _, img := range []string{micadoImage, consulImage} {
		if _, err := dc.ImageInspect(ctx, img); err != nil {
			if errdefs.IsNotFound(err) {
				return userErr("image %s is missing: build the images with `make images`", img)
			}
			return userErr("cannot inspect image %s: %v", img, err)
		}
	}
	existing, err := dc.ContainerList(ctx, container.ListOptions{All: true, Filters: clusterFilter(g.cluster)})
	if err != nil {
		return userErr("cannot list containers: %v", err)
	}
	if len(existing) > 0 {
		return userErr("cluster %q is already up (%d containers): run `micado down` first, or use --cluster for another", g.cluster, len(existing))
	}
	// Undo everything on failure, so a failed `up` leaves nothing behind.
	defer func() {
		if err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "micado: up failed; removing what it created\n")
			_, _ = teardown(context.WithoutCancel(ctx), dc, g.cluster)
			_ = os.RemoveAll(stateDir(g))
		}
	}()

	dir, err := filepath.Abs(stateDir(g))
	if err != nil {
		return userErr("cannot find the state directory: %v", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return userErr("cannot create %s: %v", dir, err)
	}
	key := make([]byte, 32)
	tok := make([]byte, 24)
	_, _ = rand.Read(key)
	_, _ = rand.Read(tok)
	keyB64 := base64.StdEncoding.EncodeToString(key)
	token := hex.EncodeToString(tok)
	keyFile, tokenFile := filepath.Join(dir, "cluster.key"), filepath.Join(dir, "token")
	if err := os.WriteFile(keyFile, []byte(keyB64+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return err
	}

	labels := func(component string) map[string]string {
		return map[string]string{wire.LabelCluster: g.cluster, wire.LabelComponent: component}
	}
	// Two networks: the control plane's (Consul, managers, worker agents)
	// and the workloads' (the containers the workers run, and the Consul
	// client agent, which they reach under the alias micado-<cluster>-consul).
	// Docker keeps bridge networks apart, so a workload cannot reach a
	// manager or a worker agent.
	netName, appsNet := "micado-"+g.cluster, "micado-"+g.cluster+"-apps"
	controlGW, controlSubnet, err := createNetwork(ctx, dc, netName, labels("network"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "network   %s (control plane, gateway %s)\n", netName, controlGW)
	gateway, _, err := createNetwork(ctx, dc, appsNet, labels("apps-network"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "network   %s (workloads, gateway %s)\n", appsNet, gateway)

	// Consul's secrets: one config file, read by every Consul container.
	secrets := newConsulSecrets()
	consulConfig := filepath.Join(dir, "consul.json")
	if err := os.WriteFile(consulConfig, secrets.config(), 0o600); err != nil {
		return err
	}
	consulMounts := func(volume string) []mount.Mount {
		return []mount.Mount{{Type: mount.TypeVolume, Source: volume, Target: "/consul/data"}, secretMount(consulConfig, consulConfigMountPath)}
	}

	vol := "micado-" + g.cluster + "-consul-data"
	if _, err := dc.VolumeCreate(ctx, volume.CreateOptions{Name: vol, Labels: labels("consul")}); err != nil {
		return userErr("cannot create volume %s: %v", vol, err)
	}
	prefix := "micado-" + g.cluster + "-"
	// run creates and starts a container on the control network, and
	// connects it to the extra networks (name → aliases) before it starts.
	run := func(name string, cfg *container.Config, host *container.HostConfig, extra map[string][]string) (container.InspectResponse, error) {
		host.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}
		nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: {Aliases: []string{name}}}}
		created, err := dc.ContainerCreate(ctx, cfg, host, nc, nil, prefix+name)
		if err != nil {
			return container.InspectResponse{}, userErr("cannot create container %s: %v", prefix+name, err)
		}
		for n, aliases := range extra {
			if err := dc.NetworkConnect(ctx, n, created.ID, &network.EndpointSettings{Aliases: aliases}); err != nil {
				return container.InspectResponse{}, userErr("cannot connect container %s to network %s: %v", prefix+name, n, err)
			}
		}
		if err := dc.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
			return container.InspectResponse{}, userErr("cannot start container %s: %v", prefix+name, err)
		}
		return dc.ContainerInspect(ctx, created.ID)
	}
	loopback := func(ports ...string) (nat.PortSet, nat.PortMap) {
		set, m := nat.PortSet{}, nat.PortMap{}
		for _, p := range ports {
			set[nat.Port(p)] = struct{}{}
			// A fixed host port (chosen free now) keeps the address that
			// `up` saves valid across container restarts; Docker would
			// pick a new random port on every start.
			m[nat.Port(p)] = []nat.PortBinding{{HostIP: "127.0.0.1", HostPort: freePort(strings.HasSuffix(p, "/udp"))}}
		}
		return set, m
	}

	// Consul: one server agent with its data on a volume, so KV and
	// registrations survive a restart; or a Raft cluster of servers
	// (--consul-servers 3 or 5) and one client agent, "consul", that the
	// managers and the workloads talk to (as a Consul agent on a manager's
	// host would be).
	// Every agent binds gossip to its address on the control network,
	// found by subnet: the client agent, on both networks, may not see it
	// as eth0 after a restart. Its HTTP and DNS listen on all interfaces.
	consulCmd := func(node string, server bool) []string {
		args := []string{"agent", "-node=" + node, "-data-dir=/consul/data", "-client=0.0.0.0",
			`-bind={{ GetAllInterfaces | include "network" "` + controlSubnet + `" | attr "address" }}`,
			"-config-file=" + consulConfigMountPath, "-log-level=warn"}
		if server {
			args = append(args, "-server", "-bootstrap-expect="+strconv.Itoa(o.consulServers))
		}
		if o.consulServers > 1 {
			for i := 1; i <= o.consulServers; i++ {
				if n := "consul-" + strconv.Itoa(i); n != node {
					args = append(args, "-retry-join="+prefix+n)
				}
			}
		}
		return args
	}
	if o.consulServers > 1 {
		for i := 1; i <= o.consulServers; i++ {
			name := "consul-" + strconv.Itoa(i)
			v := vol + "-" + strconv.Itoa(i)
			if _, err := dc.VolumeCreate(ctx, volume.CreateOptions{Name: v, Labels: labels("consul")}); err != nil {
				return userErr("cannot create volume %s: %v", v, err)
			}
			cl := labels("consul-server")
			cl[wire.LabelNode] = name
			if _, err := run(name, &container.Config{Image: consulImage, Labels: cl, Hostname: name, Cmd: consulCmd(name, true)},
				&container.HostConfig{Mounts: consulMounts(v)}, nil); err != nil {
				return err
			}
			fmt.Fprintf(out, "consul    %s (server)\n", name)
		}
	}
	exp, pm := loopback("8500/tcp", "8600/udp", "8600/tcp")
	ci, err := run("consul", &container.Config{
		Image: consulImage, Labels: labels("consul"), ExposedPorts: exp, Hostname: "consul",
		Cmd: consulCmd("consul", o.consulServers == 1),
	}, &container.HostConfig{PortBindings: pm, Mounts: consulMounts(vol)}, map[string][]string{appsNet: {prefix + "consul"}})
	if err != nil {
		return err
	}
	consulHTTP := "http://127.0.0.1:" + hostPort(ci, "8500/tcp")
	consulDNS := "127.0.0.1:" + hostPort(ci, "8600/udp")
	fmt.Fprintf(out, "consul    %s (DNS %s)\n", consulHTTP, consulDNS)
	ctoks, err := setupConsulACL(ctx, strings.TrimPrefix(consulHTTP, "http://"), g.cluster, dir, secrets)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "consul    ACLs on (default deny), gossip encrypted; management token in %s\n", ctoks.management)

	// Secrets reach the containers as read-only files, never as
	// environment variables, which `docker inspect` would show.
	keyMount := secretMount(keyFile, keyMountPath)
	mounts := []mount.Mount{dockerSocketMount, keyMount, secretMount(tokenFile, tokenMountPath),
		secretMount(ctoks.manager, consulTokenMountPath), secretMount(ctoks.discovery, consulDiscoveryMountPath)}
	var tlsArgs []string
	scheme := "http"
	if o.tls != nil {
		scheme = "https"
		mounts = append(mounts, secretMount(o.tls.cert, tlsCertMountPath), secretMount(o.tls.key, tlsKeyMountPath))
		tlsArgs = []string{"--tls-cert", tlsCertMountPath, "--tls-key", tlsKeyMountPath}
		if o.tls.ca != "" {
			mounts = append(mounts, secretMount(o.tls.ca, tlsCAMountPath))
		}
	}
	if o.registryAuth != "" {
		mounts = append(mounts, secretMount(o.registryAuth, registryAuthMountPath))
	}
	// Managers: one leads, the others stand by; each knows the others'
	// gossip addresses, and workers join all of them.
	names := []string{"manager"}
	if o.managers > 1 {
		names = names[:0]
		for i := 1; i <= o.managers; i++ {
			names = append(names, "manager-"+strconv.Itoa(i))
		}
	}
	var gossipAddrs []string
	for _, n := range names {
		gossipAddrs = append(gossipAddrs, prefix+n+":7946")
	}
	join := strings.Join(gossipAddrs, ",")
	var managerURLs []string
	for i, n := range names {
		var others []string
		for j, a := range gossipAddrs {
			if j != i {
				others = append(others, a)
			}
		}
		exp, pm = loopback("8080/tcp")
		ml := labels("manager")
		ml[wire.LabelNode] = n
		args := []string{"manager", "--cluster", g.cluster, "--node-name", n, "--key-file", keyMountPath, "--token-file", tokenMountPath,
			"--consul", prefix + "consul:8500", "--consul-token-file", consulTokenMountPath,
			"--consul-discovery-token-file", consulDiscoveryMountPath, "--api", ":8080", "--strategy", o.strategy,
			"--provider", o.provider, "--instance-types", o.types, "--scale-roles", strings.Join(o.roles, ","),
			"--max-instances", strconv.Itoa(o.maxTotal), "--max-per-role", strconv.Itoa(o.maxPerRole),
			"--join-timeout", o.joinTimeout.String(), "--docker-network", netName, "--docker-container-network", appsNet, "--docker-image", cmp.Or(o.scaleImage, micadoImage),
			"--docker-publish-addr", gateway, "--join-addr", join,
			"--consolidate-schedule", o.schedule, "--scale-in-delay", o.scaleInDelay.String(),
			"--unneeded-time", o.unneeded.String(), "--min-per-role", o.minPerRoleFlag()}
		if len(others) > 0 {
			args = append(args, "--join", strings.Join(others, ","))
		}
		if o.prometheus != "" {
			args = append(args, "--prometheus", o.prometheus)
		}
		if o.prices != "" {
			args = append(args, "--instance-prices", o.prices)
		}
		if o.budget != "" {
			args = append(args, "--drain-budget", o.budget)
		}
		if o.alertCPU != "" {
			args = append(args, "--node-cpu-alert", o.alertCPU)
		}
		if o.alertMem != "" {
			args = append(args, "--node-memory-alert", o.alertMem)
		}
		if o.alertFor > 0 {
			args = append(args, "--alert-for", o.alertFor.String())
		}
		if o.boot == "cloud-init" {
			args = append(args, "--docker-boot", "cloud-init")
			if o.tls.ca != "" {
				args = append(args, "--join-ca", tlsCAMountPath)
			}
			if o.registryAuth != "" {
				args = append(args, "--registry-auth-file", registryAuthMountPath)
			}
		}
		mi, err := run(n, &container.Config{Image: micadoImage, Labels: ml, ExposedPorts: exp, Hostname: n,
			Cmd: append(args, tlsArgs...)}, &container.HostConfig{PortBindings: pm, Mounts: mounts}, nil)
		if err != nil {
			return err
		}
		u := scheme + "://127.0.0.1:" + hostPort(mi, "8080/tcp")
		managerURLs = append(managerURLs, u)
		fmt.Fprintf(out, "%-9s %s\n", n, u)
	}
	managerURL := managerURLs[0]

	// Workers: made by the docker provider, the same recipe as the
	// manager's scale-out, with the key file mounted from the state
	// directory.
	if o.workers > 0 {
		its, err := cloudapi.ParseInstanceTypes(o.types)
		if err != nil {
			return userErr("--instance-types: %v", err)
		}
		prov, err := cdocker.New(cdocker.Config{Cluster: g.cluster, Network: netName, ContainerNetwork: appsNet, Image: micadoImage, JoinAddr: join,
			PublishAddr: gateway, ClusterKey: keyB64, KeyFile: keyFile, DockerSocket: dockerSocketMount.Source, Types: its}, dc)
		if err != nil {
			return userErr("docker provider: %v", err)
		}
		typ := upWorkerType(its, o.memory)
		for i := 1; i <= o.workers; i++ {
			name := "w-" + strconv.Itoa(i)
			role := o.roles[(i-1)%len(o.roles)]
			spec := cloudapi.Spec{Cluster: g.cluster, Name: name, Type: typ, Tags: []string{"role=" + role}}
			if _, err := prov.Create(ctx, spec); err != nil {
				return userErr("cannot create worker %s: %v", name, err)
			}
			fmt.Fprintf(out, "worker    %s (role=%s, %s)\n", name, role, bytesize.Format(o.memory))
		}
	}

	st := clusterState{Name: g.cluster, Manager: managerURL, Managers: managerURLs, Consul: consulHTTP, ConsulDNS: consulDNS,
		Network: netName, AppsNetwork: appsNet, Gateway: gateway, TokenFile: tokenFile, KeyFile: keyFile,
		ConsulTokenFile: ctoks.management, ConsulManagerTokenFile: ctoks.manager, ConsulDiscoveryTokenFile: ctoks.discovery,
		CreatedAt: time.Now().UTC(), Workers: o.workers, WorkerMem: o.memory}
	if o.tls != nil {
		st.CAFile = o.tls.ca
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "cluster.json"), b, 0o600); err != nil {
		return err
	}

	// Wait until the manager answers and sees every worker.
	hc, err := newHTTPClient(st.CAFile, 5*time.Second)
	if err != nil {
		return err
	}
	c := &client{base: managerURL, bases: managerURLs, token: token, http: hc, failoverWait: defaultFailoverWait}
	for {
		var nodes []manager.MemberView
		err := c.get(ctx, "/v1/nodes", &nodes)
		alive := 0
		for _, n := range nodes {
			if n.Status == manager.MemberAlive && n.Kind == wire.KindWorker {
				alive++
			}
		}
		if err == nil && alive == o.workers {
			break
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("%d of %d workers joined", alive, o.workers)
			}
			return userErr("the cluster did not come up in time: %v (see `docker logs %smanager`)", err, prefix)
		case <-time.After(300 * time.Millisecond):
		}
	}
	fmt.Fprintf(out, "cluster %q is up with %d workers; try `micado nodes`\n", g.cluster, o.workers)
	return nil
}

// upWorkerType is the instance type of the workers `up` starts: the one
// of --instance-types with exactly --worker-memory, else a type named
// after the size.
func upWorkerType(types []cloudapi.InstanceType, memory int64) cloudapi.InstanceType {
	for _, t := range types {
		if t.Memory == memory {
			return t
		}
	}
	return cloudapi.InstanceType{Name: bytesize.Format(memory), Memory: memory}
}

// freePort asks the kernel for a free loopback port.
func freePort(udp bool) string {
	if udp {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return ""
		}
		defer c.Close()
		return strconv.Itoa(c.LocalAddr().(*net.UDPAddr).Port)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return ""
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// minPerRoleFlag keeps one worker of each of the cluster's roles unless
// told otherwise.
func (o upOptions) minPerRoleFlag() string {
	if o.minPerRole != "" {
		return o.minPerRole
	}
	var parts []string
	for _, r := range o.roles {
		parts = append(parts, r+"=1")
	}
	return strings.Join(parts, ",")
}

// dockerSocketMount gives a container this engine's API: workers run
// containers with it, and the manager's docker provider creates workers.
var dockerSocketMount = mount.Mount{Type: mount.TypeBind, Source: "/var/run/docker.sock", Target: "/var/run/docker.sock"}

func hostPort(ci container.InspectResponse, port string) string {
	if ci.NetworkSettings == nil {
		return ""
	}
	for _, b := range ci.NetworkSettings.Ports[nat.Port(port)] {
		return b.HostPort
	}
	return ""
}

func downCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "down",
		Example: "  micado down\n  micado down --cluster test",
		Short:   "Remove everything the local cluster created: containers, networks, volumes, state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dc, err := dockerClient()
			if err != nil {
				return err
			}
			defer dc.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			n, err := teardown(ctx, dc, g.cluster)
			if err != nil {
				return err
			}
			if err := os.RemoveAll(stateDir(g)); err != nil {
				return userErr("cannot remove %s: %v", stateDir(g), err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster %q is down: removed %d containers, its networks and its volumes\n", g.cluster, n)
			return nil
		},
	}
}

// teardown removes every container, network and volume labelled with the
// cluster's name, and nothing else.
func teardown(ctx context.Context, dc *dockerclient.Client, cluster string) (int, error) {
	f := clusterFilter(cluster)
	cs, err := dc.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return 0, userErr("cannot list containers: %v", err)
	}
	var errs []error
	// Workers first so they stop starting things, then the rest.
	for _, c := range cs {
		if err := dc.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	// App containers may have been created by workers just now.
	more, _ := dc.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	for _, c := range more {
		_ = dc.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
	nets, err := dc.NetworkList(ctx, network.ListOptions{Filters: f})
	if err == nil {
		for _, n := range nets {
			if err := dc.NetworkRemove(ctx, n.ID); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, err)
			}
		}
	}
	vols, err := dc.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err == nil {
		for _, v := range vols.Volumes {
			if err := dc.VolumeRemove(ctx, v.Name, true); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return len(cs), userErr("some cluster objects could not be removed: %v", errors.Join(errs...))
	}
	return len(cs) + len(more), nil
}

// createNetwork creates a bridge network and returns its gateway and
// subnet. Docker keeps a container's address across a disconnect only on a
// network whose subnet was given: the network is made again with the
// subnet Docker first chose as free.
func createNetwork(ctx context.Context, dc *dockerclient.Client, name string, labels map[string]string) (gateway, subnet string, err error) {
	if _, err := dc.NetworkCreate(ctx, name, network.CreateOptions{Driver: "bridge", Labels: labels}); err != nil {
		return "", "", userErr("cannot create network %s: %v", name, err)
	}
	ni, err := dc.NetworkInspect(ctx, name, network.InspectOptions{})
	if err != nil {
		return "", "", err
	}
	if len(ni.IPAM.Config) > 0 && ni.IPAM.Config[0].Subnet != "" {
		ipam := &network.IPAM{Config: []network.IPAMConfig{{Subnet: ni.IPAM.Config[0].Subnet, Gateway: ni.IPAM.Config[0].Gateway}}}
		if err := dc.NetworkRemove(ctx, ni.ID); err != nil {
			return "", "", err
		}
		if _, err := dc.NetworkCreate(ctx, name, network.CreateOptions{Driver: "bridge", Labels: labels, IPAM: ipam}); err != nil {
			return "", "", userErr("cannot create network %s: %v", name, err)
		}
		if ni, err = dc.NetworkInspect(ctx, name, network.InspectOptions{}); err != nil {
			return "", "", err
		}
	}
	if len(ni.IPAM.Config) > 0 {
		gateway, subnet = ni.IPAM.Config[0].Gateway, ni.IPAM.Config[0].Subnet
	}
	if gateway == "" || subnet == "" {
		return "", "", userErr("network %s has no gateway address or subnet", name)
	}
	return gateway, subnet, nil
}
