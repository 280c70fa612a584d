// Package ec2 is the Amazon EC2 cloudapi.Provider.
//
// It uses the AWS SDK for Go v2. Credentials and, unless Config.Region is
// set, the region come from the SDK's usual chain (environment, shared
// config and credentials files, SSO, web identity, the EC2 instance role via
// IMDS, ...). Every instance it creates is tagged with Name and the
// cloudapi.Tag* keys, and List only sees instances tagged with the cluster.
//
// The IAM identity needs ec2:RunInstances, ec2:CreateTags (for tags on
// launch), ec2:TerminateInstances and ec2:DescribeInstances.
package ec2

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/micado-scale/micado/cloudapi"
)

// ProviderName is what Provider.Name returns.
const ProviderName = "ec2"

// Config configures the EC2 provider.
type Config struct {
	// Region is the AWS region, e.g. "eu-west-1". If empty the SDK's chain
	// (AWS_REGION, shared config) must provide one.
	Region string
	// Endpoint overrides the EC2 endpoint URL, for private endpoints,
	// EC2-compatible clouds and tests. Empty uses the region's endpoint.
	Endpoint string
	// AMI is the image to boot. It must contain the micado binary and Docker
	// (see cloudapi.RenderUserData).
	AMI string
	// Types maps micado instance type names (cloudapi.InstanceType.Name) to
	// EC2 instance types, e.g. {"small": "t3.small"}. A non-empty
	// InstanceType.ProviderType takes precedence over this map.
	Types map[string]string
	// SubnetID is the VPC subnet to launch into; empty uses the default VPC.
	SubnetID string
	// SecurityGroupIDs are attached to every instance.
	SecurityGroupIDs []string
	// KeyName is an optional EC2 key pair for SSH access.
	KeyName string
}

// Option adjusts how New builds the SDK client.
type Option func(*options)

type options struct {
	awsCfg   *aws.Config
	loadOpts []func(*config.LoadOptions) error
	ec2Opts  []func(*ec2.Options)
}

// WithAWSConfig makes New use cfg as is instead of loading the SDK's default
// configuration chain. Config.Region and Config.Endpoint still apply.
func WithAWSConfig(cfg aws.Config) Option {
	return func(o *options) { o.awsCfg = &cfg }
}

// WithLoadOptions passes extra options to config.LoadDefaultConfig, e.g.
// config.WithSharedConfigProfile or config.WithHTTPClient.
func WithLoadOptions(fns ...func(*config.LoadOptions) error) Option {
	return func(o *options) { o.loadOpts = append(o.loadOpts, fns...) }
}

// WithClientOptions adjusts the EC2 client, e.g. its retryer.
func WithClientOptions(fns ...func(*ec2.Options)) Option {
	return func(o *options) { o.ec2Opts = append(o.ec2Opts, fns...) }
}

// Provider creates micado workers as EC2 instances.
type Provider struct {
	cfg    Config
	client *ec2.Client
}

var _ cloudapi.Provider = (*Provider)(nil)

// New returns an EC2 provider. It loads the AWS configuration (no network
// traffic happens until the first call) and checks cfg.
func New(ctx context.Context, cfg Config, opts ...Option) (*Provider, error) {
	if cfg.AMI == "" {
		return nil, errors.New("ec2: no AMI configured")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var awsCfg aws.Config
	if o.awsCfg != nil {
		awsCfg = o.awsCfg.Copy()
	} else {
		load := o.loadOpts
		if cfg.Region != "" {
			load = append([]func(*config.LoadOptions) error{config.WithRegion(cfg.Region)}, load...)
		}
		var err error
		awsCfg, err = config.LoadDefaultConfig(ctx, load...)
		if err != nil {
			return nil, fmt.Errorf("ec2: load AWS config: %w", err)
		}
	}
	if cfg.Region != "" {
		awsCfg.Region = cfg.Region
	}
	if awsCfg.Region == "" {
		return nil, errors.New("ec2: no region configured (set Config.Region or AWS_REGION)")
	}
	clientOpts := slices.Clone(o.ec2Opts)
	if cfg.Endpoint != "" {
		clientOpts = append([]func(*ec2.Options){func(eo *ec2.Options) { eo.BaseEndpoint = aws.String(cfg.Endpoint) }}, clientOpts...)
	}
	return &Provider{cfg: cfg, client: ec2.NewFromConfig(awsCfg, clientOpts...)}, nil
}

// Name returns "ec2".
func (p *Provider) Name() string { return ProviderName }

// Client returns the underlying SDK client, for capabilities outside
// cloudapi.Provider.
func (p *Provider) Client() *ec2.Client { return p.client }

// instanceType resolves the EC2 instance type for t.
func (p *Provider) instanceType(t cloudapi.InstanceType) (string, error) {
	if t.ProviderType != "" {
		return t.ProviderType, nil
	}
	if it, ok := p.cfg.Types[t.Name]; ok && it != "" {
		return it, nil
	}
	return "", fmt.Errorf("ec2: no EC2 instance type configured for instance type %q", t.Name)
}

// Create launches one instance with RunInstances. The SDK fills in a
// ClientToken, so its retries cannot launch a second instance.
func (p *Provider) Create(ctx context.Context, spec cloudapi.Spec) (cloudapi.Instance, error) {
	if err := spec.Validate(); err != nil {
		return cloudapi.Instance{}, err
	}
	itype, err := p.instanceType(spec.Type)
	if err != nil {
		return cloudapi.Instance{}, err
	}
	labels, err := cloudapi.Labels(spec)
	if err != nil {
		return cloudapi.Instance{}, err
	}
	tags := []types.Tag{{Key: aws.String("Name"), Value: aws.String(spec.Name)}}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		tags = append(tags, types.Tag{Key: aws.String(k), Value: aws.String(labels[k])})
	}
	in := &ec2.RunInstancesInput{
		MinCount:     aws.Int32(1),
		MaxCount:     aws.Int32(1),
		ImageId:      aws.String(p.cfg.AMI),
		InstanceType: types.InstanceType(itype),
		TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: tags},
		},
	}
	if p.cfg.SubnetID != "" {
		in.SubnetId = aws.String(p.cfg.SubnetID)
	}
	if len(p.cfg.SecurityGroupIDs) > 0 {
		in.SecurityGroupIds = slices.Clone(p.cfg.SecurityGroupIDs)
	}
	if p.cfg.KeyName != "" {
		in.KeyName = aws.String(p.cfg.KeyName)
	}
	if spec.UserData != "" {
		in.UserData = aws.String(base64.StdEncoding.EncodeToString([]byte(spec.UserData)))
	}
	out, err := p.client.RunInstances(ctx, in)
	if err != nil {
		if isCode(err, capacityCodes...) {
			return cloudapi.Instance{}, fmt.Errorf("ec2: create %s (%s): %w: %w", spec.Name, itype, cloudapi.ErrCapacity, err)
		}
		return cloudapi.Instance{}, fmt.Errorf("ec2: create %s (%s): %w", spec.Name, itype, err)
	}
	if len(out.Instances) != 1 {
		return cloudapi.Instance{}, fmt.Errorf("ec2: create %s: RunInstances returned %d instances, want 1", spec.Name, len(out.Instances))
	}
	inst := p.toInstance(out.Instances[0])
	// The RunInstances answer normally echoes the tags; fill in from the spec
	// in case it does not.
	if inst.Cluster == "" {
		cloudapi.ApplyLabels(&inst, labels)
	}
	return inst, nil
}

// Terminate terminates the instance with TerminateInstances. Unknown or
// malformed ids give an error wrapping cloudapi.ErrNotFound; terminating an
// instance that is already terminated succeeds.
func (p *Provider) Terminate(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("ec2: terminate: empty instance id")
	}
	_, err := p.client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		if isCode(err, "InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed") {
			return fmt.Errorf("ec2: terminate %s: %w: %w", id, cloudapi.ErrNotFound, err)
		}
		return fmt.Errorf("ec2: terminate %s: %w", id, err)
	}
	return nil
}

// listStates are the instance states List asks for: everything but
// terminated.
var listStates = []string{"pending", "running", "shutting-down", "stopping", "stopped"}

// List returns the cluster's instances that are not terminated, using
// DescribeInstances filtered on tag:micado-cluster and following NextToken
// across pages. Results are filtered on the cluster tag again client side.
func (p *Provider) List(ctx context.Context, cluster string) ([]cloudapi.Instance, error) {
	if cluster == "" {
		return nil, errors.New("ec2: list: empty cluster name")
	}
	in := &ec2.DescribeInstancesInput{
		Filters: []types.Filter{
			{Name: aws.String("tag:" + cloudapi.TagCluster), Values: []string{cluster}},
			{Name: aws.String("instance-state-name"), Values: listStates},
		},
		MaxResults: aws.Int32(1000),
	}
	var res []cloudapi.Instance
	pages := ec2.NewDescribeInstancesPaginator(p.client, in)
	for pages.HasMorePages() {
		out, err := pages.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("ec2: list cluster %s: %w", cluster, err)
		}
		for _, r := range out.Reservations {
			for _, i := range r.Instances {
				inst := p.toInstance(i)
				if inst.Cluster != cluster || inst.State == cloudapi.StateTerminated {
					continue
				}
				res = append(res, inst)
			}
		}
	}
	return res, nil
}

// toInstance converts an SDK instance.
func (p *Provider) toInstance(i types.Instance) cloudapi.Instance {
	inst := cloudapi.Instance{
		ID:      aws.ToString(i.InstanceId),
		Type:    string(i.InstanceType),
		State:   cloudapi.StateUnknown,
		Address: aws.ToString(i.PrivateIpAddress),
	}
	if i.State != nil {
		inst.State = normaliseState(i.State.Name)
	}
	if i.LaunchTime != nil {
		inst.CreatedAt = *i.LaunchTime
	}
	labels := make(map[string]string, len(i.Tags))
	for _, t := range i.Tags {
		labels[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	cloudapi.ApplyLabels(&inst, labels)
	return inst
}

// normaliseState maps EC2 state names, which cloudapi adopted, and rejects
// anything else as unknown.
func normaliseState(s types.InstanceStateName) cloudapi.State {
	switch s {
	case types.InstanceStateNamePending:
		return cloudapi.StatePending
	case types.InstanceStateNameRunning:
		return cloudapi.StateRunning
	case types.InstanceStateNameShuttingDown:
		return cloudapi.StateShuttingDown
	case types.InstanceStateNameTerminated:
		return cloudapi.StateTerminated
	case types.InstanceStateNameStopping:
		return cloudapi.StateStopping
	case types.InstanceStateNameStopped:
		return cloudapi.StateStopped
	}
	return cloudapi.StateUnknown
}

// capacityCodes are the EC2 error codes that mean "not now, not this type".
var capacityCodes = []string{
	"InsufficientInstanceCapacity",
	"InsufficientCapacity",
	"InsufficientHostCapacity",
	"InstanceLimitExceeded",
	"VcpuLimitExceeded",
}

// isCode reports whether err is an EC2 API error with one of codes.
func isCode(err error, codes ...string) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && slices.Contains(codes, ae.ErrorCode())
}
