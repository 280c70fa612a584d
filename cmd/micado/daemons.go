package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/definitions/bytesize"
	"github.com/micado-scale/micado/internal/registryauth"
	"github.com/micado-scale/micado/manager"
	"github.com/micado-scale/micado/manager/daemon"
	"github.com/micado-scale/micado/worker"
	"github.com/spf13/cobra"
)

// readKey reads the cluster key (base64) from a file or MICADO_CLUSTER_KEY.
func readKey(file string) ([]byte, error) {
	raw := os.Getenv("MICADO_CLUSTER_KEY")
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, userErr("cannot read the cluster key: %v", err)
		}
		raw = string(b)
	}
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, userErr("no cluster key: set MICADO_CLUSTER_KEY or --key-file (base64 of 16, 24 or 32 random bytes)")
	}
	k, err := base64.StdEncoding.DecodeString(raw)
	if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
		return nil, userErr("the cluster key must be base64 of 16, 24 or 32 bytes")
	}
	return k, nil
}

// readSecret returns the trimmed content of file if given, otherwise the
// value of the environment variable env. what names the secret in errors.
func readSecret(file, env, what string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv(env)), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", userErr("cannot read the %s: %v", what, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", userErr("the %s file %s is empty", what, file)
	}
	return v, nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, userErr("log level %q is not one of debug, info, warn, error", level)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func managerCmd() *cobra.Command {
	var (
		cfg       manager.Config
		keyFile   string
		tokenFile string
		ctokFile  string
		join      string
		headroom  float64
		strategy  string
		logLevel  string
		reconcile time.Duration
		alertCPU  string
		alertMem  string
		alertFor  time.Duration
		prov      providerFlags
		scaleIn   scaleInFlags
	)
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Run the manager daemon (normally started by `micado up`)",
		Example: `  micado manager --cluster prod --consul 127.0.0.1:8500 --key-file /etc/micado/cluster.key \
    --token-file /etc/micado/api-token --tls-cert api.pem --tls-key api-key.pem \
    --provider ec2 --ec2-ami ami-0abc --instance-types small=2GiB@t3.small,large=8GiB@m5.large`,
		Long: `Run the manager: a memberlist member that sees every worker's load, keeps the
desired state in Consul KV, places containers and serves the /v1 API.

Secrets come from files or the environment: the cluster key from --key-file
(or MICADO_CLUSTER_KEY), the API token from --token-file (or
MICADO_API_TOKEN), the Consul ACL token from --consul-token-file (or
CONSUL_HTTP_TOKEN). Files keep them out of the process environment and
out of ` + "`docker inspect`" + `. --consul-discovery-token-file gives containers
that have links a Consul token (it should only read services, nodes and
health) as the read-only file ` + manager.DiscoveryTokenPath + `, named by
CONSUL_HTTP_TOKEN_FILE; other containers get none. An https:// --consul
address (or CONSUL_HTTP_SSL=true) speaks TLS to Consul, trusting
CONSUL_CACERT and presenting CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY. With --tls-cert and --tls-key the API is served
over HTTPS only (TLS 1.2 or newer).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := readKey(keyFile)
			if err != nil {
				return err
			}
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			st, err := coordinator.ParseStrategy(strategy)
			if err != nil {
				return userErr("%v", err)
			}
			if headroom < 0 || headroom >= 1 {
				return userErr("--headroom %.2f must be at least 0 and below 1", headroom)
			}
			cfg.ClusterKey = key
			cfg.Join = splitList(join)
			cfg.Placement = coordinator.Options{Headroom: headroom, Strategy: st}
			if cfg.APIToken, err = readSecret(tokenFile, "MICADO_API_TOKEN", "API token"); err != nil {
				return err
			}
			if cfg.ConsulToken, err = readSecret(ctokFile, "CONSUL_HTTP_TOKEN", "Consul ACL token"); err != nil {
				return err
			}
			if cfg.ConsulDiscoveryTokenFile != "" {
				if _, err := manager.ReadDiscoveryToken(cfg.ConsulDiscoveryTokenFile); err != nil {
					return userErr("%v", err)
				}
			}
			if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
				return userErr("give --tls-cert and --tls-key together")
			}
			cfg.ReconcileInterval = reconcile
			if cfg.NodeAlert, err = parseNodeAlert(alertCPU, alertMem, alertFor); err != nil {
				return err
			}
			cfg.Version = version
			cfg.Logger = log.With("component", "manager")
			ctx, cancel := signalContext()
			defer cancel()
			if err := prov.apply(ctx, &cfg, base64.StdEncoding.EncodeToString(key)); err != nil {
				return err
			}
			if err := scaleIn.apply(&cfg); err != nil {
				return err
			}
			return daemon.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Cluster, "cluster", "", "cluster name")
	f.StringVar(&cfg.NodeName, "node-name", "manager", "gossip node name")
	f.StringVar(&cfg.APIAddr, "api", ":8080", "API listen address")
	f.StringVar(&cfg.ConsulAddr, "consul", "127.0.0.1:8500", "Consul HTTP address")
	f.StringVar(&cfg.BindAddr, "bind", "0.0.0.0", "gossip bind address")
	f.IntVar(&cfg.BindPort, "port", 7946, "gossip port")
	f.StringVar(&cfg.AdvertiseAddr, "advertise", "", "gossip address to advertise (default: first private IP)")
	f.StringVar(&join, "join", "", "comma-separated members to join")
	f.StringVar(&keyFile, "key-file", "", "file with the base64 cluster key (default: env MICADO_CLUSTER_KEY)")
	f.StringVar(&tokenFile, "token-file", "", "file with the bearer token every API call must carry (default: env MICADO_API_TOKEN)")
	f.StringVar(&ctokFile, "consul-token-file", "", "file with the Consul ACL token (default: env CONSUL_HTTP_TOKEN)")
	f.StringVar(&cfg.ConsulDiscoveryTokenFile, "consul-discovery-token-file", "", "file with the Consul token given to containers with links, at "+manager.DiscoveryTokenPath+" (it should only read services, nodes and health)")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate (chain) of the API; with --tls-key the API speaks HTTPS only")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	f.Float64Var(&headroom, "headroom", coordinator.DefaultHeadroom, "fraction of each worker's memory never handed out")
	f.StringVar(&strategy, "strategy", string(coordinator.DefaultStrategy), "placement ranking: spread or binpack")
	f.DurationVar(&reconcile, "reconcile-interval", 5*time.Second, "how often desired and actual state are compared")
	f.StringVar(&cfg.Prometheus, "prometheus", "", "Prometheus HTTP API `URL` that scaling policies with a query read, e.g. http://127.0.0.1:9090")
	f.DurationVar(&cfg.AutoscaleInterval, "autoscale-interval", manager.DefaultAutoscaleInterval, "how often scaled services are measured and decided on")
	f.StringVar(&alertCPU, "node-cpu-alert", "", "node usage alert: a role whose workers' containers use more than this % of their cores for --alert-for gets one more instance (e.g. 80%; off by default)")
	f.StringVar(&alertMem, "node-memory-alert", "", "node usage alert: the same for the memory really used, % of the workers' capacity (e.g. 85%)")
	f.DurationVar(&alertFor, "alert-for", coordinator.DefaultAlertFor, "how long a role must stay above a node usage limit before its alert fires")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	prov.register(cmd)
	scaleIn.register(cmd)
	cmd.Flags().SortFlags = false
	return cmd
}

func workerCmd() *cobra.Command {
	var (
		cfg      worker.Config
		keyFile  string
		join     string
		tags     []string
		memory   bytesize.Size
		logLevel string
		authFile string
	)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker agent (normally started by `micado up` or cloud-init)",
		Long: `Run a worker agent: it joins the cluster over memberlist, gossips its load,
and runs containers on the local Docker engine when the manager asks.

The cluster key comes from MICADO_CLUSTER_KEY or --key-file.`,
		Example: `  micado worker --cluster prod --name w-7 --tag role=app --memory 4GiB --join 10.0.0.5:7946`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := readKey(keyFile)
			if err != nil {
				return err
			}
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			if memory == 0 {
				return userErr("--memory is required: the memory this worker offers to containers, e.g. 4GiB")
			}
			if !(cfg.CPUs > 0) || math.IsInf(cfg.CPUs, 0) {
				return userErr("--cpus must be a positive number of cores, e.g. 2 or 0.5; got %v", cfg.CPUs)
			}
			for _, t := range tags {
				if !strings.Contains(t, "=") {
					return userErr("--tag %q is not key=value", t)
				}
			}
			if authFile != "" {
				if _, cfg.RegistryAuth, err = readRegistryAuth(authFile); err != nil {
					return err
				}
			}
			cfg.ClusterKey = key
			cfg.Memory = int64(memory)
			cfg.Tags = tags
			cfg.Join = splitList(join)
			cfg.Logger = log.With("component", "worker")
			ctx, cancel := signalContext()
			defer cancel()
			err = worker.Run(ctx, cfg)
			if err != nil {
				return fmt.Errorf("worker: %w", err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Cluster, "cluster", "", "cluster name")
	f.StringVar(&cfg.Name, "name", "", "unique node name")
	f.StringArrayVar(&tags, "tag", nil, "capability tag key=value, e.g. role=proxy (repeatable)")
	f.Var(&memory, "memory", "memory offered to containers, e.g. 4GiB or 4g")
	f.Float64Var(&cfg.CPUs, "cpus", float64(runtime.NumCPU()), "cores offered to containers, e.g. 0.5; by default all of this host's")
	f.StringVar(&join, "join", "", "comma-separated members to join, normally the manager's gossip address")
	f.StringVar(&cfg.APIAddr, "api", ":7070", "agent API listen address")
	f.StringVar(&cfg.BindAddr, "bind", "0.0.0.0", "gossip bind address")
	f.IntVar(&cfg.BindPort, "port", 7946, "gossip port")
	f.StringVar(&cfg.AdvertiseAddr, "advertise", "", "gossip address to advertise (default: first private IP)")
	f.StringVar(&cfg.PublishAddr, "publish-addr", "", "address where published container ports are reached (default: the gossip address)")
	f.StringVar(&cfg.ContainerNetwork, "container-network", "", "Docker network to attach containers to (local clusters: the cluster's network, so they reach Consul)")
	f.BoolVar(&cfg.Pull, "pull", true, "pull images that are missing from the engine")
	f.StringVar(&authFile, "registry-auth-file", "", "Docker config.json (what `docker login` writes) whose \"auths\" credentials pulls use, by registry")
	f.StringVar(&keyFile, "key-file", "", "file with the base64 cluster key (default: env MICADO_CLUSTER_KEY)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().SortFlags = false
	return cmd
}

// parseNodeAlert reads the node usage alert flags.
func parseNodeAlert(cpu, mem string, window time.Duration) (coordinator.UsageLimit, error) {
	var lim coordinator.UsageLimit
	for _, f := range []struct {
		name, v string
		dst     *float64
	}{{"--node-cpu-alert", cpu, &lim.CPU}, {"--node-memory-alert", mem, &lim.Memory}} {
		if f.v == "" {
			continue
		}
		p, err := definitions.ParsePercent(f.v)
		if err != nil {
			return lim, userErr("%s: %v", f.name, err)
		}
		if p <= 0 || p > 100 {
			return lim, userErr("%s %s must be above 0%% and at most 100%%", f.name, f.v)
		}
		*f.dst = p / 100
	}
	if window <= 0 {
		return lim, userErr("--alert-for %s must be above 0", window)
	}
	lim.For = window
	return lim, nil
}

// readRegistryAuth reads a Docker config.json of registry credentials:
// the file as it is, and what it says.
func readRegistryAuth(file string) ([]byte, registryauth.Auths, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, userErr("--registry-auth-file: %v", err)
	}
	a, err := registryauth.Parse(b)
	if err != nil {
		return nil, nil, userErr("--registry-auth-file %s: %v", file, err)
	}
	return b, a, nil
}
