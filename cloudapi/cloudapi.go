// Package cloudapi is the seam between micado's manager and the clouds that
// give it worker machines.
//
// The manager owns this package and keeps it deliberately narrow: a
// [Provider] can create one instance, terminate one instance and list the
// instances that belong to a cluster. That is all the autoscaler needs to
// grow the cluster when memory is short and shrink it when workers sit idle,
// and it is small enough that a new cloud (EC2, OpenStack, local Docker, a
// test fake) is a few hundred lines.
//
// Anything a provider can do beyond that (waiting for an instance to boot,
// reporting quotas, stopping instead of terminating, ...) must not widen
// [Provider]. It belongs in a separate, small interface declared next to the
// code that wants it, and callers discover it with a type assertion:
//
//	if w, ok := p.(interface{ WaitRunning(context.Context, string) error }); ok {
//		err = w.WaitRunning(ctx, inst.ID)
//	}
//
// so providers that lack the capability keep working unchanged.
//
// Providers mark everything they create with the keys [TagCluster],
// [TagRole], [TagNode], [TagTags] and [TagType] (EC2 tags, OpenStack server
// metadata, Docker labels). [Provider.List] returns only instances carrying
// the cluster's [TagCluster] value, so several clusters, and machines that are
// not micado's at all, can share one account or project. [Labels] and
// [ApplyLabels] build and read these keys the same way for every provider.
//
// This package itself talks to no cloud; the providers live in
// sub-packages (cloudapi/ec2, cloudapi/openstack, cloudapi/docker).
package cloudapi

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/micado-scale/micado/definitions/bytesize"
)

// Keys of the tags (EC2), metadata (OpenStack) or labels (Docker) that mark an
// instance as a micado worker.
const (
	// TagCluster holds the cluster name. List filters on it.
	TagCluster = "micado-cluster"
	// TagRole holds the value of the worker's "role=..." tag, if any.
	TagRole = "micado-role"
	// TagNode holds the worker's unique node name (Spec.Name).
	TagNode = "micado-node"
	// TagTags holds all of the worker's tags, comma separated.
	TagTags = "micado-tags"
	// TagType holds the micado instance type name (InstanceType.Name).
	TagType = "micado-type"
)

// MaxLabelValue is the longest label value every provider accepts (OpenStack
// metadata values are limited to 255 bytes, EC2 tag values to 256).
const MaxLabelValue = 255

// State is an instance's state as a provider reports it, normalised.
type State string

// Normalised instance states reported in Instance.State. Providers map their
// own vocabulary onto these; EC2's names are used where they fit.
const (
	StatePending      State = "pending"
	StateRunning      State = "running"
	StateStopping     State = "stopping"
	StateStopped      State = "stopped"
	StateShuttingDown State = "shutting-down"
	StateTerminated   State = "terminated"
	StateError        State = "error"
	StateUnknown      State = "unknown"
)

// ErrNotFound is returned (possibly wrapped) by Provider.Terminate when the
// provider knows no instance with that id. Idempotent callers treat it as
// success: the instance is gone either way.
var ErrNotFound = errors.New("cloudapi: instance not found")

// ErrCapacity is returned (wrapped, together with the provider's own error)
// by Provider.Create when the cloud refuses because of a quota or a lack of
// capacity for the requested type. Callers may try another type or back off.
var ErrCapacity = errors.New("cloudapi: no capacity or quota exceeded")

// InstanceType is a size of instance a provider can create.
type InstanceType struct {
	// Name is micado's name for the size, e.g. "small".
	Name string
	// Memory is the number of bytes the worker offers to containers.
	Memory int64
	// CPUs is the number of CPUs offered to containers (0 if unknown).
	CPUs float64
	// ProviderType is the provider's name for the size, e.g. "t3.small" or an
	// OpenStack flavor; empty for the docker provider or when the provider's
	// own configuration maps Name.
	ProviderType string
	// Price is what one instance costs per hour, in the user's currency
	// (from --instance-prices); 0 when unknown. Scale-out and consolidation
	// minimise it; with no prices every type counts the same per instance.
	Price float64
}

// String renders the type like the ParseInstanceTypes syntax.
func (t InstanceType) String() string {
	s := t.Name + "=" + bytesize.Format(t.Memory)
	if t.ProviderType != "" {
		s += "@" + t.ProviderType
	}
	return s
}

// Spec asks for one instance.
type Spec struct {
	// Cluster is the cluster the worker joins; stored under TagCluster.
	Cluster string
	// Name is the unique node name to give the worker, e.g. "w-proxy-3f2a".
	Name string
	// Type is the size to create.
	Type InstanceType
	// Tags are the worker's placement tags, e.g. "role=proxy".
	Tags []string
	// UserData is the cloud-init document, rendered by the caller (see
	// RenderUserData).
	UserData string
}

// Validate checks the fields every provider relies on.
func (s Spec) Validate() error {
	if s.Cluster == "" {
		return errors.New("cloudapi: spec has no cluster")
	}
	if s.Name == "" {
		return errors.New("cloudapi: spec has no node name")
	}
	if s.Type.Name == "" && s.Type.ProviderType == "" {
		return errors.New("cloudapi: spec has no instance type")
	}
	_, err := Labels(s)
	return err
}

// Instance is one machine as a provider reports it.
type Instance struct {
	// ID is the provider's id (EC2 instance id, Nova server UUID, ...).
	ID string
	// Name is the worker's node name (TagNode).
	Name string
	// Cluster is the cluster it belongs to (TagCluster).
	Cluster string
	// Type is the micado instance type name if known, else the provider's.
	Type string
	// Tags are the worker's tags (TagTags).
	Tags []string
	// State is one of the State* constants.
	State State
	// Address is the private IP address, if known.
	Address string
	// CreatedAt is when the provider created (launched) the instance.
	CreatedAt time.Time
}

// Provider creates, terminates and lists worker instances on one cloud.
// Implementations must be safe for concurrent use.
type Provider interface {
	// Name identifies the provider, e.g. "ec2".
	Name() string
	// Create asks for one instance and returns as soon as the cloud has
	// accepted the request; the instance is usually still pending.
	Create(ctx context.Context, spec Spec) (Instance, error)
	// Terminate destroys an instance. It returns an error wrapping
	// ErrNotFound if the provider knows no such instance.
	Terminate(ctx context.Context, id string) error
	// List returns the cluster's instances that are not yet terminated:
	// only those carrying TagCluster=cluster.
	List(ctx context.Context, cluster string) ([]Instance, error)
}

// Labels returns the key/value pairs a provider attaches to the instance it
// creates for spec: TagCluster, TagNode, TagType, TagTags and, when spec has
// a "role=..." tag, TagRole. It rejects tags containing a comma (they are
// joined with commas) and values longer than MaxLabelValue.
func Labels(spec Spec) (map[string]string, error) {
	for _, t := range spec.Tags {
		if t == "" || strings.Contains(t, ",") {
			return nil, fmt.Errorf("cloudapi: invalid tag %q: tags must be non-empty and contain no comma", t)
		}
	}
	m := map[string]string{
		TagCluster: spec.Cluster,
		TagNode:    spec.Name,
	}
	if spec.Type.Name != "" {
		m[TagType] = spec.Type.Name
	}
	if len(spec.Tags) > 0 {
		m[TagTags] = strings.Join(spec.Tags, ",")
	}
	if role, ok := Role(spec.Tags); ok {
		m[TagRole] = role
	}
	for k, v := range m {
		if len(v) > MaxLabelValue {
			return nil, fmt.Errorf("cloudapi: %s value is %d bytes, longer than the %d providers accept", k, len(v), MaxLabelValue)
		}
	}
	return m, nil
}

// ApplyLabels fills inst's Cluster, Name, Type and Tags from labels written
// by Labels. Keys that are missing leave the fields unchanged.
func ApplyLabels(inst *Instance, labels map[string]string) {
	if v, ok := labels[TagCluster]; ok {
		inst.Cluster = v
	}
	if v, ok := labels[TagNode]; ok {
		inst.Name = v
	}
	if v, ok := labels[TagType]; ok && v != "" {
		inst.Type = v
	}
	if v, ok := labels[TagTags]; ok {
		inst.Tags = SplitTags(v)
	}
}

// SplitTags splits a TagTags value into tags, dropping empty entries.
func SplitTags(v string) []string {
	var tags []string
	for t := range strings.SplitSeq(v, ",") {
		if t = strings.TrimSpace(t); t != "" {
			tags = append(tags, t)
		}
	}
	return tags
}

// Role returns the value of the first "role=..." tag.
func Role(tags []string) (string, bool) {
	for _, t := range tags {
		if v, ok := strings.CutPrefix(t, "role="); ok {
			return v, true
		}
	}
	return "", false
}

var typeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ParseInstanceTypes parses a comma-separated list of instance types as
// written in configuration, e.g. "small=512MiB,medium=1GiB,large=2GiB".
// Each entry is name=size[@providertype]; the optional provider type names
// the cloud's size directly, e.g. "small=2GiB@t3.small". Sizes are read by package
// bytesize (512m, 512MiB, 1g, 1GB). Names must be unique and made of letters, digits,
// '.', '_' and '-'. The types are returned in the order given.
func ParseInstanceTypes(s string) ([]InstanceType, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("cloudapi: no instance types given")
	}
	var types []InstanceType
	seen := map[string]bool{}
	for entry := range strings.SplitSeq(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			return nil, fmt.Errorf("cloudapi: instance types %q: empty entry", s)
		}
		name, rest, ok := strings.Cut(entry, "=")
		name = strings.TrimSpace(name)
		if !ok {
			return nil, fmt.Errorf("cloudapi: instance type %q: want name=size", entry)
		}
		if !typeNameRE.MatchString(name) {
			return nil, fmt.Errorf("cloudapi: instance type %q: invalid name %q", entry, name)
		}
		if seen[name] {
			return nil, fmt.Errorf("cloudapi: instance type %q defined twice", name)
		}
		seen[name] = true
		size, ptype, _ := strings.Cut(rest, "@")
		mem, err := bytesize.Parse(size)
		if err != nil {
			return nil, fmt.Errorf("cloudapi: instance type %q: %w", name, err)
		}
		types = append(types, InstanceType{Name: name, Memory: int64(mem), ProviderType: strings.TrimSpace(ptype)})
	}
	return types, nil
}

// ApplyPrices sets the price per hour of instance types from a
// comma-separated list NAME=PRICE, e.g. "small=0.0104,large=0.0832" (the
// --instance-prices flag). Every name must be one of types; a type not
// listed keeps price 0. Prices are numbers of at least 0. On an error
// types are left as they were.
func ApplyPrices(types []InstanceType, s string) error {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	out := append([]InstanceType(nil), types...)
	idx := map[string]int{}
	for i, t := range types {
		idx[t.Name] = i
	}
	seen := map[string]bool{}
	for entry := range strings.SplitSeq(s, ",") {
		name, v, ok := strings.Cut(strings.TrimSpace(entry), "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return fmt.Errorf("cloudapi: instance price %q: want NAME=PRICE, e.g. small=0.0104", entry)
		}
		i, known := idx[name]
		if !known {
			names := make([]string, len(types))
			for j, t := range types {
				names[j] = t.Name
			}
			return fmt.Errorf("cloudapi: instance price %q: no instance type %q (types: %s)", entry, name, strings.Join(names, ", "))
		}
		if seen[name] {
			return fmt.Errorf("cloudapi: instance price for %q given twice", name)
		}
		seen[name] = true
		price, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || math.IsNaN(price) || math.IsInf(price, 0) || price < 0 {
			return fmt.Errorf("cloudapi: instance price %q: %q is not a price per hour (a number of at least 0)", entry, strings.TrimSpace(v))
		}
		out[i].Price = price
	}
	copy(types, out)
	return nil
}

// FindType returns the type called name.
func FindType(types []InstanceType, name string) (InstanceType, bool) {
	i := slices.IndexFunc(types, func(t InstanceType) bool { return t.Name == name })
	if i < 0 {
		return InstanceType{}, false
	}
	return types[i], true
}
