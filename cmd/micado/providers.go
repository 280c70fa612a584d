package main

import (
	"context"
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
	f.StringVar(&p.dockerNetwork, "docker-network", "", "docker provider: the cluster's Docker network, where workers reach the managers")
	f.StringVar(&p.dockerContainerNet, "docker-container-network", "", "docker provider: the Docker network workers attach their containers to (default: --docker-network)")
	f.StringVar(&p.dockerImage, "docker-image", "micado/micado:dev", "docker provider: the micado image workers run")
	f.StringVar(&p.dockerPublish, "docker-publish-addr", "", "docker provider: where published ports are reached (the gateway of the containers' network)")
	f.StringVar(&p.dockerSocket, "docker-socket", "/var/run/docker.sock", "docker provider: host path of the Docker socket mounted into workers")
	f.StringVar(&p.ec2Region, "ec2-region", "", "ec2 provider: region (default: the SDK's configuration chain)")
	f.StringVar(&p.ec2Endpoint, "ec2-endpoint", "", "ec2 provider: endpoint URL override")
	f.StringVar(&p.ec2AMI, "ec2-ami", "", "ec2 provider: image with micado and Docker installed")
	f.StringVar(&p.ec2Subnet, "ec2-subnet", "", "ec2 provider: subnet ID")
	f.StringVar(&p.ec2Groups, "ec2-security-groups", "", "ec2 provider: security group IDs, comma-separated")
	f.StringVar(&p.ec2Key, "ec2-key-name", "", "ec2 provider: key pair name")
	f.StringVar(&p.osImage, "os-image", "", "openstack provider: image ID with micado and Docker installed")
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
		cfg.UserData = true
		cfg.JoinAddr = p.joinAddr
	case "openstack":
		prov, err = openstack.New(ctx, openstack.Config{Image: p.osImage, Networks: splitList(p.osNetworks),
			SecurityGroups: splitList(p.osGroups), KeyName: p.osKey, AvailabilityZone: p.osZone})
		if err != nil {
			return userErr("openstack provider: %v", err)
		}
		cfg.UserData = true
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
