package main

import (
	"context"
	"net"
	"os"
	"time"

	"github.com/micado-scale/micado/cloudapi"
	cdocker "github.com/micado-scale/micado/cloudapi/docker"
	"github.com/micado-scale/micado/cloudapi/ec2"
	"github.com/micado-scale/micado/cloudapi/openstack"
	"github.com/micado-scale/micado/manager"
	"github.com/spf13/cobra"
)

// DefaultInstanceTypes are the sizes a local cluster's docker provider
// creates.
const DefaultInstanceTypes = "small=512MiB,medium=1GiB,large=2GiB"

// providerFlags configure the manager's cloud provider for scale-out.
type providerFlags struct {
	provider    string
	types       string
	roles       string
	maxTotal    int
	maxPerRole  int
	joinTimeout time.Duration
	lostTimeout time.Duration
	joinAddr    string

	prices string

	joinURL, joinCA, workerBinary, dockerBoot, registryAuth string
	joinTokenTTL                                            time.Duration

	dockerNetwork, dockerContainerNet, dockerImage, dockerPublish, dockerSocket string

	ec2Region, ec2Endpoint, ec2AMI, ec2Subnet, ec2Groups, ec2Key string

	osImage, osNetworks, osGroups, osKey, osZone string
}

func (p *providerFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&p.provider, "provider", "none", "cloud provider for scale-out: none, docker, ec2 or openstack")
	f.StringVar(&p.types, "instance-types", DefaultInstanceTypes, "instance types NAME=SIZE[@PROVIDER_TYPE], comma-separated")
	f.StringVar(&p.prices, "instance-prices", "", "price per hour of instance types NAME=PRICE, comma-separated, e.g. small=0.0104,large=0.0416 (scale-out and consolidation minimise cost)")
	f.StringVar(&p.roles, "scale-roles", "", "roles scale-out may create workers for, comma-separated (default: any)")
	f.IntVar(&p.maxTotal, "max-instances", 10, "most workers in the cluster, booting ones included (0 = no limit)")
	f.IntVar(&p.maxPerRole, "max-per-role", 5, "most workers of one role (0 = no limit)")
	f.DurationVar(&p.joinTimeout, "join-timeout", manager.DefaultJoinTimeout, "how long a new instance may take to join before it is terminated")
	f.DurationVar(&p.lostTimeout, "lost-timeout", manager.DefaultLostTimeout, "how long the worker of a joined instance may be gone before the instance is terminated")
	f.StringVar(&p.joinAddr, "join-addr", "", "gossip address new workers join (default: the manager's)")
	f.StringVar(&p.joinURL, "join-url", "", "ec2, openstack: the manager API's https:// URL as new instances reach it, to fetch the micado binary and spend their join token (default: https://JOIN-ADDR-HOST:API-PORT)")
	f.StringVar(&p.joinCA, "join-ca", "", "ec2, openstack: PEM file of the CA new instances trust for --join-url (default: the --tls-cert file)")
	f.DurationVar(&p.joinTokenTTL, "join-token-ttl", manager.DefaultJoinTokenTTL, "ec2, openstack: how long a new instance's join token stays valid")
	f.StringVar(&p.workerBinary, "worker-binary", "", "ec2, openstack: the linux micado binary served to new instances (default: this executable)")
	f.StringVar(&p.registryAuth, "registry-auth-file", "", "ec2, openstack: Docker config.json (what `docker login` writes) of registry credentials new workers pull with; they get it with the cluster key, never in user data")
	f.StringVar(&p.dockerBoot, "docker-boot", "agent", "docker provider: agent (workers run --docker-image with the key) or cloud-init (workers boot --docker-image, a systemd+cloud-init image, with the same user data as a cloud VM)")
	f.StringVar(&p.dockerNetwork, "docker-network", "", "docker provider: the cluster's Docker network, where workers reach the managers")
	f.StringVar(&p.dockerContainerNet, "docker-container-network", "", "docker provider: the Docker network workers attach their containers to (default: --docker-network)")
	f.StringVar(&p.dockerImage, "docker-image", "micado/micado:dev", "docker provider: the micado image workers run")
	f.StringVar(&p.dockerPublish, "docker-publish-addr", "", "docker provider: where published ports are reached (the gateway of the containers' network)")
	f.StringVar(&p.dockerSocket, "docker-socket", "/var/run/docker.sock", "docker provider: host path of the Docker socket mounted into workers")
	f.StringVar(&p.ec2Region, "ec2-region", "", "ec2 provider: region (default: the SDK's configuration chain)")
	f.StringVar(&p.ec2Endpoint, "ec2-endpoint", "", "ec2 provider: endpoint URL override")
	f.StringVar(&p.ec2AMI, "ec2-ami", "", "ec2 provider: a stock Debian or Ubuntu image (AMI ID)")
	f.StringVar(&p.ec2Subnet, "ec2-subnet", "", "ec2 provider: subnet ID")
	f.StringVar(&p.ec2Groups, "ec2-security-groups", "", "ec2 provider: security group IDs, comma-separated")
	f.StringVar(&p.ec2Key, "ec2-key-name", "", "ec2 provider: key pair name")
	f.StringVar(&p.osImage, "os-image", "", "openstack provider: a stock Debian or Ubuntu image ID")
	f.StringVar(&p.osNetworks, "os-networks", "", "openstack provider: network UUIDs, comma-separated")
	f.StringVar(&p.osGroups, "os-security-groups", "", "openstack provider: security group names, comma-separated")
	f.StringVar(&p.osKey, "os-key-name", "", "openstack provider: key pair name")
	f.StringVar(&p.osZone, "os-availability-zone", "", "openstack provider: availability zone")
}

// apply builds the provider and puts the scale-out settings into cfg.
func (p *providerFlags) apply(ctx context.Context, cfg *manager.Config, keyB64 string) error {
	if p.provider == "none" || p.provider == "" {
		return nil
	}
	types, err := cloudapi.ParseInstanceTypes(p.types)
	if err != nil {
		return userErr("--instance-types: %v", err)
	}
	if err := cloudapi.ApplyPrices(types, p.prices); err != nil {
		return userErr("--instance-prices: %v", err)
	}
	if p.maxTotal < 0 || p.maxPerRole < 0 {
		return userErr("--max-instances and --max-per-role must not be negative")
	}
	if p.lostTimeout < 10*time.Second {
		return userErr("--lost-timeout %s is too short: use at least 10s", p.lostTimeout)
	}
	if p.joinTimeout < 10*time.Second {
		return userErr("--join-timeout %s is too short: use at least 10s", p.joinTimeout)
	}
	if p.dockerBoot != "agent" && p.dockerBoot != "cloud-init" {
		return userErr("--docker-boot %q is not agent or cloud-init", p.dockerBoot)
	}
	if p.provider == "ec2" || p.provider == "openstack" || (p.provider == "docker" && p.dockerBoot == "cloud-init") {
		if cfg.Bootstrap, err = p.bootstrap(cfg); err != nil {
			return err
		}
	}
	var prov cloudapi.Provider
	switch p.provider {
	case "docker":
		dc, err := dockerClient()
		if err != nil {
			return err
		}
		join := p.joinAddr
		if join == "" {
			join = "micado-" + cfg.Cluster + "-manager:7946"
		}
		prov, err = cdocker.New(cdocker.Config{
			Cluster: cfg.Cluster, Network: p.dockerNetwork, ContainerNetwork: p.dockerContainerNet, Image: p.dockerImage, JoinAddr: join,
			PublishAddr: p.dockerPublish, ClusterKey: keyB64, DockerSocket: p.dockerSocket, Types: types,
			CloudInit: p.dockerBoot == "cloud-init",
		}, dc)
		if err != nil {
			return userErr("docker provider: %v", err)
		}
		cfg.JoinAddr = join
	case "ec2":
		prov, err = ec2.New(ctx, ec2.Config{Region: p.ec2Region, Endpoint: p.ec2Endpoint, AMI: p.ec2AMI,
			SubnetID: p.ec2Subnet, SecurityGroupIDs: splitList(p.ec2Groups), KeyName: p.ec2Key})
		if err != nil {
			return userErr("ec2 provider: %v", err)
		}
		cfg.JoinAddr = p.joinAddr
	case "openstack":
		prov, err = openstack.New(ctx, openstack.Config{Image: p.osImage, Networks: splitList(p.osNetworks),
			SecurityGroups: splitList(p.osGroups), KeyName: p.osKey, AvailabilityZone: p.osZone})
		if err != nil {
			return userErr("openstack provider: %v", err)
		}
		cfg.JoinAddr = p.joinAddr
	default:
		return userErr("--provider %q is not one of none, docker, ec2, openstack", p.provider)
	}
	cfg.Provider = prov
	cfg.InstanceTypes = types
	cfg.ScaleRoles = splitList(p.roles)
	cfg.MaxInstances, cfg.MaxPerRole = p.maxTotal, p.maxPerRole
	cfg.JoinTimeout = p.joinTimeout
	cfg.LostTimeout = p.lostTimeout
	return nil
}

// bootstrap reads what new instances need to bootstrap from a stock image:
// the manager's URL and CA, and the binary they fetch. It refuses to run
// without TLS: instances fetch the cluster key from the manager.
func (p *providerFlags) bootstrap(cfg *manager.Config) (*manager.Bootstrap, error) {
	if cfg.TLSCert == "" {
		return nil, userErr("--provider %s bootstraps new instances with a join token that they spend for the cluster key over TLS: give --tls-cert and --tls-key (a self-signed certificate will do: instances trust --join-ca, by default that certificate)", p.provider)
	}
	b := &manager.Bootstrap{URL: p.joinURL, TokenTTL: p.joinTokenTTL}
	if b.URL == "" {
		host := ""
		if j := splitList(p.joinAddr); len(j) > 0 {
			host, _, _ = net.SplitHostPort(j[0])
		} else if p.provider == "docker" {
			host = "micado-" + cfg.Cluster + "-manager"
		}
		if host == "" {
			host = cfg.AdvertiseAddr
		}
		_, port, err := net.SplitHostPort(cfg.APIAddr)
		if host == "" || err != nil {
			return nil, userErr("give --join-url, the manager API's https:// URL as new instances reach it (it cannot be guessed without --join-addr or --advertise)")
		}
		b.URL = "https://" + net.JoinHostPort(host, port)
	}
	if p.joinTokenTTL <= 0 {
		return nil, userErr("--join-token-ttl %s must be positive", p.joinTokenTTL)
	}
	caFile := p.joinCA
	if caFile == "" {
		caFile = cfg.TLSCert
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, userErr("cannot read the CA new instances trust (--join-ca): %v", err)
	}
	b.CA = string(ca)
	if err := cloudapi.CheckCA(b.CA); err != nil {
		return nil, userErr("--join-ca %s: %v", caFile, err)
	}
	bin := p.workerBinary
	if bin == "" {
		if bin, err = os.Executable(); err != nil {
			return nil, userErr("cannot find this executable to serve to new instances: give --worker-binary: %v", err)
		}
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, userErr("cannot read the binary served to new instances (--worker-binary): %v", err)
	}
	b.Binary = bin
	if p.registryAuth != "" {
		if b.RegistryAuth, _, err = readRegistryAuth(p.registryAuth); err != nil {
			return nil, err
		}
	}
	if err := cloudapi.CheckJoinURL(b.URL); err != nil {
		return nil, userErr("--join-url: %v", err)
	}
	return b, nil
}
