// Package manager is micado's manager: a memberlist member that sees every
// worker's load, keeps the desired state in Consul KV, places containers
// through the coordinator, commands worker agents, registers every running
// container in Consul, and serves the versioned JSON API (/v1) that the CLI
// uses. It is the paper's coordination interface API plus its
// microservices discovery and execution layer.
package manager

import (
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/internal/wire"
)

// State is a container's state in the desired state.
type State string

// Container states.
const (
	StatePending  State = "pending"  // accepted, waiting for a worker
	StateStarting State = "starting" // placed on a worker, being started
	StateRunning  State = "running"  // runs on its worker, registered in Consul
	StateStopping State = "stopping" // the user asked to stop it
	StateFailed   State = "failed"   // cannot run; Reason says why
)

// containerStates lists every state, in the order tables show them.
var containerStates = []State{StatePending, StateStarting, StateRunning, StateStopping, StateFailed}

// holdsMemory reports whether a container in state s has memory reserved
// on its worker.
func (s State) holdsMemory() bool {
	return s == StateStarting || s == StateRunning || s == StateStopping
}

// Check is how Consul checks a container's health.
type Check struct {
	Type     string `json:"type"`           // "tcp" (default when a port is published), "http" or "none"
	Path     string `json:"path,omitempty"` // for http
	Interval string `json:"interval,omitempty"`
}

// Spec is what every replica of a service runs: the part of a container
// record that its replicas share. Specs are immutable once built; the
// manager keeps one copy per distinct spec in memory, however many
// containers use it.
type Spec struct {
	Service string            `json:"service"` // Consul service name ("web")
	App     string            `json:"app,omitempty"`
	Image   string            `json:"image"`
	Tags    []string          `json:"tags"` // worker tags required ("role=proxy")
	Memory  int64             `json:"memory"`
	Ports   []wire.Port       `json:"ports,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Check   Check             `json:"check"`
	// Pinned containers are never moved by consolidation (their worker
	// is then never scaled in).
	Pinned bool `json:"pinned,omitempty"`
	// SpecHash identifies an application service's definition, so a
	// changed image or setting replaces the container.
	SpecHash string `json:"spec_hash,omitempty"`
}

// Container is one desired container instance and what became of it. The
// record lives in the journal (Consul KV, micado/<cluster>/containers/<name>)
// and is written before anything acts on it. Records held by the Store
// are immutable: change a copy (Tx.Container) and put it back.
type Container struct {
	Name string `json:"name"` // instance name, unique in the cluster ("web-1")
	*Spec

	State  State  `json:"state"`
	Reason string `json:"reason,omitempty"`
	// Placement says why the container is on its worker, as the
	// coordinator decided it (kept while Reason is cleared on start).
	Placement   string         `json:"placement,omitempty"`
	Node        string         `json:"node,omitempty"`
	ContainerID string         `json:"container_id,omitempty"`
	Address     string         `json:"address,omitempty"`
	Bindings    []wire.Binding `json:"bindings,omitempty"`
	Generation  int            `json:"generation,omitempty"`
	// WaitingFor names the booting instance a pending container waits for.
	WaitingFor string `json:"waiting_for,omitempty"`
	// ScaleAttempts counts instances asked for it that failed to join.
	ScaleAttempts int `json:"scale_attempts,omitempty"`
	// PendingSince is when it last became pending (held for scale-out, or
	// requeued after its worker was lost); zero when it is not pending.
	PendingSince time.Time `json:"pending_since,omitzero"`
	// Move is set while consolidation starts a new copy elsewhere (make
	// before break); the record keeps its old node until the new copy
	// passes.
	Move      *MoveState `json:"move,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`

	index  uint64 // the journal index of its last change, for check-and-set
	idHash uint64 // hashID(ContainerID), set by the store
}

// clone returns a copy that may be changed (the Spec stays shared).
func (c *Container) clone() *Container {
	cp := *c
	if c.Move != nil {
		mv := *c.Move
		cp.Move = &mv
	}
	return &cp
}

// MoveState is a copy being started on another worker.
type MoveState struct {
	Node       string    `json:"node"`
	Generation int       `json:"generation"`
	Started    time.Time `json:"started"`
}

// ServiceID is the Consul service ID of the container's current copy.
// Each generation of a container (a new copy after a move or after its
// worker died) has its own ID, so that during a move both copies are
// registered and checked side by side.
func (c *Container) ServiceID() string { return serviceID(c.Name, c.Generation) }

func serviceID(name string, gen int) string {
	if gen == 0 {
		return name
	}
	return name + ".g" + itoa(gen)
}

// HostPort returns the published host port of the first container port.
func (c *Container) HostPort() int {
	if len(c.Bindings) == 0 {
		return 0
	}
	return c.Bindings[0].Host
}

// Request returns the coordinator's view of c.
func (c *Container) Request() coordinator.Request {
	return coordinator.Request{Name: c.Name, Tags: c.Tags, Memory: c.Memory}
}

// LaunchRequest is the body of POST /v1/containers: an application of one
// service (definitions.Launch), checked by the rules of a definition file's
// service.
type LaunchRequest struct {
	Image    string            `json:"image"`
	Name     string            `json:"name,omitempty"` // service name; default from the image
	Role     string            `json:"role"`           // required: containers run on workers tagged role=<role>
	Tags     []string          `json:"tags,omitempty"` // further required worker tags, key=value
	Memory   string            `json:"memory,omitempty"`
	Ports    []string          `json:"ports,omitempty"` // "8080" or "8080/tcp"
	Env      map[string]string `json:"env,omitempty"`
	Replicas int               `json:"replicas,omitempty"`
	Check    *Check            `json:"check,omitempty"`
	// Pinned marks the containers as not relocatable by consolidation.
	Pinned bool `json:"pinned,omitempty"`
	// Scaling scales the service by its real load (micado launch --min
	// --max --cpu …); Replicas is then the count to start with (default
	// min).
	Scaling *definitions.Scaling `json:"scaling,omitempty"`
}

// LaunchResponse answers POST /v1/containers.
type LaunchResponse struct {
	Service    string                 `json:"service"`
	Containers []ContainerView        `json:"containers"`
	Decisions  []coordinator.Decision `json:"decisions"`
}

// ContainerView is a container as the API shows it: its record plus its
// health in Consul.
type ContainerView struct {
	Container
	Health string `json:"health"` // passing, warning, critical, or "" when not registered
}

// MemberView is a cluster member as the API shows it.
type MemberView struct {
	Name       string       `json:"name"`
	Kind       string       `json:"kind"`
	Status     MemberStatus `json:"status"`
	Address    string       `json:"address"`
	API        string       `json:"api,omitempty"`
	Tags       []string     `json:"tags,omitempty"`
	Capacity   int64        `json:"capacity"`
	Reserved   int64        `json:"reserved"`
	Used       int64        `json:"used"`
	Free       int64        `json:"free"`
	CPU        float64      `json:"cpu"`
	Containers int          `json:"containers"`
	Draining   bool         `json:"draining,omitempty"`
	Started    time.Time    `json:"started,omitzero"`
	LastUpdate time.Time    `json:"last_update"`
	// Leader marks the manager that leads the cluster, since when and in
	// which term.
	Leader      bool      `json:"leader,omitempty"`
	LeaderSince time.Time `json:"leader_since,omitzero"`
	Term        uint64    `json:"term,omitempty"`
}

// Status answers GET /v1/status.
type Status struct {
	Cluster    string `json:"cluster"`
	Version    string `json:"version"`
	Workers    int    `json:"workers"`
	Containers int    `json:"containers"`
	Strategy   string `json:"strategy"`
	// Leader is the manager that answered (the one that leads), since
	// when and in which term; Managers counts the managers gossip sees.
	Leader      string    `json:"leader"`
	LeaderSince time.Time `json:"leader_since"`
	Term        uint64    `json:"term"`
	Managers    int       `json:"managers"`
}

// ErrorBody is every error answer of the API.
type ErrorBody struct {
	Error string `json:"error"`
	// Decisions explain, container by container, why placement failed.
	Decisions []coordinator.Decision `json:"decisions,omitempty"`
}
