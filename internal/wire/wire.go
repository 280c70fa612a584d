// Package wire holds what micado's managers and worker agents exchange:
// the load report every member gossips (and sends straight to the
// managers), the agent HTTP API's requests and answers with its client,
// the agent token, and the Docker labels micado puts on the objects it
// creates. It depends on the standard library only, so that the manager,
// the cloud providers and test doubles can speak to agents without
// linking the agent itself (package worker: memberlist, Docker,
// Prometheus).
//
// The JSON field names here are the wire format: running managers and
// agents of other builds read them, so they must not change.
package wire

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"time"
)

// Member kinds carried in the gossiped Load.
const (
	KindWorker  = "worker"
	KindManager = "manager"
)

// MaxMetaSize is memberlist's limit on node metadata. The load report must
// fit; detail goes over the agent API instead.
const MaxMetaSize = 512

// Load is what every member gossips about itself as memberlist node
// metadata. Field names are one letter to stay far below MaxMetaSize.
//
// CPU is measured per container (see Stats), not read from the host's load
// average, so that simulated workers sharing one host each report their
// own use.
type Load struct {
	Kind       string   `json:"k"`
	Tags       []string `json:"t,omitempty"`
	Capacity   int64    `json:"c,omitempty"` // memory offered to containers, bytes
	Reserved   int64    `json:"r,omitempty"` // memory limits of its containers, bytes
	Used       int64    `json:"u,omitempty"` // memory its containers really use, bytes
	CPU        float64  `json:"l,omitempty"` // its containers' measured CPU use / the cores it offers (Config.CPUs), 0..1
	Containers int      `json:"n,omitempty"`
	API        string   `json:"a,omitempty"` // host:port of the agent (or manager) API
	Started    int64    `json:"s,omitempty"` // unix seconds when the agent started
	Draining   bool     `json:"d,omitempty"`
	// Seq grows by one with every change of the report during one run of
	// the agent (Started), so a receiver can drop a report older than one
	// it already has: the agent also returns its fresh report with every
	// start and stop (header LoadHeader), ahead of gossip.
	Seq uint64 `json:"q,omitempty"`
	// Digest sums up the agent's containers (instance, generation and
	// state of each): the manager lists a worker's containers again only
	// when it changes, instead of asking every worker every round.
	Digest uint64 `json:"h,omitempty"`
}

// ContainersDigest sums up a list of containers as Load.Digest does: it
// changes when a container appears, goes, or changes generation or state.
// Never 0, so that 0 can mean "not reported".
func ContainersDigest(cs []ContainerInfo) uint64 {
	keys := make([]string, len(cs))
	for i, c := range cs {
		keys[i] = c.Instance + "\x00" + strconv.Itoa(c.Generation) + "\x00" + c.State + "\x00" + c.ID
	}
	sort.Strings(keys)
	h := fnv.New64a()
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0xff})
	}
	if d := h.Sum64(); d != 0 {
		return d
	}
	return 1
}

// TermHeader carries the term of the manager that sends a command: agents
// refuse commands of an older term than the newest they have obeyed, so a
// deposed leader cannot start or stop anything once its successor has
// spoken to the worker.
const TermHeader = "X-Micado-Term"

type termKey struct{}

// WithTerm returns a context whose agent calls carry the manager's term.
func WithTerm(ctx context.Context, term uint64) context.Context {
	return context.WithValue(ctx, termKey{}, term)
}

// TermOf returns the term WithTerm put in ctx (0 when none).
func TermOf(ctx context.Context) uint64 {
	t, _ := ctx.Value(termKey{}).(uint64)
	return t
}

// loadMsgTag starts a load message: an agent sends its new load report
// straight to the manager (memberlist user message, encrypted like all
// gossip) as well as gossiping it, so the manager sees a change in one
// hop instead of waiting for random gossip to reach it.
const loadMsgTag = 'L'

// EncodeLoadMsg builds the direct load message of the member name.
func EncodeLoadMsg(name string, meta []byte) []byte {
	b := make([]byte, 0, 2+len(name)+len(meta))
	b = append(b, loadMsgTag)
	b = append(b, name...)
	b = append(b, '\n')
	return append(b, meta...)
}

// DecodeLoadMsg reads a direct load message.
func DecodeLoadMsg(b []byte) (string, Load, error) {
	if len(b) < 2 || b[0] != loadMsgTag {
		return "", Load{}, fmt.Errorf("not a load message")
	}
	i := bytes.IndexByte(b, '\n')
	if i < 2 {
		return "", Load{}, fmt.Errorf("load message without a member name")
	}
	l, err := DecodeLoad(b[i+1:])
	return string(b[1:i]), l, err
}

// LoadHeader carries the agent's load report, as JSON, on the answers to
// start and stop requests.
const LoadHeader = "X-Micado-Load"

// Newer reports whether l supersedes prev: a later run of the agent, or a
// later report of the same run.
func (l Load) Newer(prev Load) bool {
	if l.Started != prev.Started {
		return l.Started > prev.Started
	}
	return l.Seq >= prev.Seq
}

// Encode renders l as memberlist metadata, or fails when it would exceed
// MaxMetaSize (too many or too long tags).
func (l Load) Encode() ([]byte, error) {
	b, err := json.Marshal(l)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("load report is %d bytes, more than memberlist's %d: use fewer or shorter tags", len(b), MaxMetaSize)
	}
	return b, nil
}

// DecodeLoad reads a Load from memberlist metadata.
func DecodeLoad(b []byte) (Load, error) {
	var l Load
	if len(b) == 0 {
		return l, fmt.Errorf("empty load report")
	}
	err := json.Unmarshal(b, &l)
	return l, err
}

// AgentToken derives the bearer token the manager presents to worker
// agents from the cluster key. Only holders of the cluster key (the
// manager, and the agents themselves) can compute it, so only the manager
// can command a worker.
func AgentToken(clusterKey []byte) string {
	m := hmac.New(sha256.New, clusterKey)
	m.Write([]byte("micado agent api v1"))
	return hex.EncodeToString(m.Sum(nil))
}

// Port is a container port to publish.
type Port struct {
	Container int    `json:"container"`
	Protocol  string `json:"protocol,omitempty"` // tcp (default) or udp
}

// StartRequest asks an agent to run one container.
type StartRequest struct {
	Instance string            `json:"instance"`
	Service  string            `json:"service"`
	App      string            `json:"app,omitempty"`
	Image    string            `json:"image"`
	Memory   int64             `json:"memory"`
	Ports    []Port            `json:"ports,omitempty"`
	Env      map[string]string `json:"env,omitempty"`
	// Generation tells copies of one instance apart (make before break).
	Generation int `json:"generation,omitempty"`
	// Files are written into the container before it starts: secrets the
	// manager delivers at start time only (the Consul discovery token of
	// linked containers), so that they are in neither the environment
	// (docker inspect), nor the container records (Consul KV, micado ps).
	// Agents never log their contents.
	Files []File `json:"files,omitempty"`
}

// File is a file an agent writes into a container before starting it.
type File struct {
	Path string `json:"path"` // absolute path in the container, e.g. /run/secrets/micado-consul-token
	Mode uint32 `json:"mode"` // permission bits, e.g. 0o444
	Data []byte `json:"data"` // contents (base64 in JSON)
}

// String names the file without its contents, so that a File printed by
// mistake shows no secret.
func (f File) String() string {
	return fmt.Sprintf("%s (%d bytes, mode %#o)", f.Path, len(f.Data), f.Mode)
}

// GoString is String, for %#v.
func (f File) GoString() string { return f.String() }

// Binding is a published port.
type Binding struct {
	Container int    `json:"container"`
	Protocol  string `json:"protocol"`
	Host      int    `json:"host"`
}

// ContainerInfo describes a container an agent runs for the cluster.
type ContainerInfo struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Instance   string    `json:"instance"`
	Service    string    `json:"service"`
	App        string    `json:"app,omitempty"`
	Image      string    `json:"image"`
	Node       string    `json:"node"`
	Memory     int64     `json:"memory"`
	Used       int64     `json:"used,omitempty"`
	State      string    `json:"state"` // Docker's: created, running, exited, ...
	Address    string    `json:"address"`
	Ports      []Binding `json:"ports,omitempty"`
	Generation int       `json:"generation,omitempty"`
	Created    time.Time `json:"created"`
}

// ContainerStats is one container's measured use.
type ContainerStats struct {
	Instance   string    `json:"instance"`
	Service    string    `json:"service"`
	App        string    `json:"app,omitempty"`
	Generation int       `json:"generation,omitempty"`
	CPU        float64   `json:"cpu"`     // % of one core over the last interval, as docker stats shows it
	Memory     int64     `json:"memory"`  // bytes used (without page cache)
	Limit      int64     `json:"limit"`   // memory limit, bytes
	At         time.Time `json:"at"`      // when it was sampled
	HasCPU     bool      `json:"has_cpu"` // false until two samples exist
}

// Stats answers GET /v1/stats of a worker agent.
type Stats struct {
	Node       string           `json:"node"`
	CPUs       float64          `json:"cpus"`     // cores the worker offers
	CPU        float64          `json:"cpu"`      // its containers' CPU use / CPUs, 0..1
	Memory     int64            `json:"memory"`   // its containers' memory used, bytes
	Capacity   int64            `json:"capacity"` // memory offered, bytes
	Containers []ContainerStats `json:"containers"`
	At         time.Time        `json:"at"`
}

// Docker labels micado puts on everything it creates, so that it only ever
// touches its own objects.
const (
	LabelCluster    = "io.micado.cluster"
	LabelComponent  = "io.micado.component" // consul, manager, worker, app
	LabelNode       = "io.micado.node"
	LabelService    = "io.micado.service"
	LabelInstance   = "io.micado.instance"
	LabelApp        = "io.micado.app"
	LabelMemory     = "io.micado.memory"
	LabelGeneration = "io.micado.generation"
)

// Values of LabelComponent.
const (
	ComponentConsul       = "consul"
	ComponentConsulServer = "consul-server"
	ComponentManager      = "manager"
	ComponentWorker       = "worker"
	ComponentApp          = "app"
	ComponentNetwork      = "network"
)
