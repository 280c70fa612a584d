// Package definitions holds micado's application infrastructure definition
// format: the model of an application and its services that files, the CLI
// (a launch is a one-service application) and the API share. Memory sizes
// are bytesize.Size values.
package definitions

import (
	"fmt"
	"sort"
	"strings"
)

// Limits and defaults of the application infrastructure definition format.
const (
	// DefaultMemory is a service's memory when the file gives none: 128MiB.
	DefaultMemory = 128 << 20
	// MinMemory is the smallest memory a service may ask for: 6MiB, Docker's
	// minimum.
	MinMemory = 6 << 20
	// MaxReplicas bounds a service's replicas.
	MaxReplicas = 1000
	// MaxFileSize bounds a definition file: 1 MiB.
	MaxFileSize = 1 << 20
)

// App is one application infrastructure definition: the YAML file a user
// keeps per application and deploys with `micado deploy app.yaml`. A whole
// file looks like this:
//
//	application: webshop          # the application's name
//	services:                     # its services, by name
//	  proxy:
//	    image: micado/demo-proxy
//	    role: proxy
//	    memory: 64MiB
//	    ports:
//	      - port: 8080
//	        check:
//	          http: /health
//	    depends_on: [app]
//	    links: [app]
//	  app:
//	    image: micado/demo-web
//	    role: app
//	    replicas: 2
//	    env: {MESSAGE: webshop}
//
// The top level of the file is a mapping with exactly these fields:
//
//   - application (required): the application's name, a DNS label: 1 to 48
//     lowercase letters, digits and '-', starting and ending with a letter or
//     digit.
//   - services (required): a mapping from service name to [Service], with at
//     least one service. Service names are DNS labels of at most 40
//     characters and must be unique in the file.
//   - x-… (optional): any top-level field whose name starts with "x-" is
//     ignored, so that it can hold YAML anchors shared by several services,
//     e.g. `x-defaults: &defaults {role: app, memory: 64MiB}` and then
//     `<<: *defaults` in a service.
//
// Any other field, at any level of the file, is an error. YAML anchors,
// aliases and merge keys (<<) may be used anywhere, but a file whose aliases
// make it stand for more than about two million values is refused. A file
// holds exactly one YAML document and at most [MaxFileSize] bytes.
//
// Values must have the YAML type the field asks for: strings for names,
// images, paths and env values (quote numbers and booleans: "8080",
// "true"), whole numbers for ports and replicas, true or false for pinned
// and tcp.
//
// [Parse] reports every problem of a file at once, each with the file, the
// line and the path of the field, for example
//
//	webshop.yaml:14: services.app.memory: '12XB' is not a size
type App struct {
	// Name is the application's name (field application).
	Name string
	// File is the file name the definition was read from, as given to
	// [Parse] or [ParseFile].
	File string
	// Services are the application's services, in the order of the file.
	Services []Service
}

// Service is one entry of the services mapping: a kind of container that
// micado places, starts Replicas times, registers in Consul and keeps
// running. Its fields:
//
//   - image (required): the container image, e.g. micado/demo-web or
//     registry:5000/team/app:1.2 (letters, digits and . _ / : @ -).
//   - role (required): the worker role the containers need; they are only
//     placed on workers with the tag role=<role>. Letters, digits, '.', '_'
//     and '-', at most 63 characters.
//   - tags (optional): a list of further worker tags the containers need,
//     each key=value (letters, digits, '.', '_' and '-'), e.g. [zone=a]. A
//     key may appear once; the role is given with role, not as a tag.
//   - memory (optional): the memory each container reserves and may use, a
//     size as package bytesize reads it (64MiB, 1GiB, 512m, or a number of
//     bytes); default 128MiB ([DefaultMemory]), at least 6MiB ([MinMemory]).
//   - replicas (optional): how many containers run, 0 to 1000; default 1.
//   - ports (optional): the container ports to publish, a list of [PortSpec].
//     A port and protocol may be listed once.
//   - env (optional): environment variables, a mapping from name to string
//     value. Names are letters, digits and '_', not starting with a digit,
//     at most 128 characters; names starting with MICADO_ are reserved for
//     micado.
//   - depends_on (optional): names of services of this file that must be
//     running and passing their checks before this service's containers are
//     started. No cycles: a service cannot depend on itself, directly or
//     through others.
//   - links (optional): names of services of this file whose addresses and
//     ports this service is told through Consul. Links may be mutual.
//   - pinned (optional): true keeps the containers where they are: scale-in
//     consolidation never moves them (and so never removes their worker).
//     Default false.
//   - scaling (optional): scale the replicas by real load, a [Scaling]
//     policy. replicas is then the count to start with (default: min) and
//     must lie within min and max; a later deploy keeps the count the
//     autoscaler reached, within the new bounds.
type Service struct {
	// Name is the service's key in the services mapping.
	Name string
	// Image is the container image (field image).
	Image string
	// Role is the worker role (field role); placement requires the worker
	// tag role=<Role>.
	Role string
	// Tags are the further worker tags, key=value (field tags), without the
	// role tag; nil when none.
	Tags []string
	// Memory is the memory per container in bytes (field memory), with the
	// default applied.
	Memory int64
	// Replicas is the number of containers (field replicas), with the
	// default applied.
	Replicas int
	// Ports are the published ports (field ports), in file order; nil when
	// none.
	Ports []PortSpec
	// Env are the environment variables (field env); nil when none.
	Env map[string]string
	// DependsOn are the services started before this one (field
	// depends_on), in file order; nil when none.
	DependsOn []string
	// Links are the services this one is told about (field links), in file
	// order; nil when none.
	Links []string
	// Pinned is true when consolidation must never move the containers
	// (field pinned).
	Pinned bool
	// Scaling is the service's scaling policy (field scaling); nil when
	// its replicas change only by hand.
	Scaling *Scaling
	// Line is the line of the service's name in the file.
	Line int
}

// PortSpec is one entry of a service's ports list. Its fields:
//
//   - port (required): the container port, 1 to 65535. micado publishes it
//     on a free port of the worker.
//   - protocol (optional): tcp (the default) or udp.
//   - check (optional): the health check Consul runs against this port, a
//     [CheckSpec]. Only the first port of a service may have a check (Consul
//     checks a container through its first port), and only a tcp port.
type PortSpec struct {
	// Port is the container port (field port).
	Port int
	// Protocol is "tcp" or "udp" (field protocol), with the default applied.
	Protocol string
	// Check is the port's health check (field check); nil when none.
	Check *CheckSpec
}

// CheckSpec is a port's health check. It has exactly one of http or tcp:
//
//   - http: a path starting with /, e.g. /health: the check passes when an
//     HTTP GET of that path on the port answers 2xx.
//   - tcp: true: the check passes when the port accepts a TCP connection.
//   - interval (optional): how often Consul runs the check, a Go duration
//     from 1s to 10m such as 5s, 1m or 1m30s; when not given micado picks
//     its default.
type CheckSpec struct {
	// HTTP is the path of an HTTP check (field http); "" for a TCP check.
	HTTP string
	// TCP is true for a TCP check (field tcp).
	TCP bool
	// Interval is the check interval as written in the file (field
	// interval); "" when not given.
	Interval string
}

// Service returns the service called name.
func (a *App) Service(name string) (*Service, bool) {
	for i := range a.Services {
		if a.Services[i].Name == name {
			return &a.Services[i], true
		}
	}
	return nil, false
}

// Levels groups the services in dependency order: the first level holds
// the services that depend on no other, and every later level holds the
// services whose depends_on are all in earlier levels. Names are sorted
// within a level. Starting the levels one after the other, each only when
// the previous one runs and passes its checks, honours every depends_on.
// Levels fails when a service depends on an unknown service or on itself,
// or when depends_on has a cycle.
func (a *App) Levels() ([][]string, error) {
	deps := make(map[string][]string, len(a.Services))
	var names []string
	for _, s := range a.Services {
		if _, dup := deps[s.Name]; dup {
			return nil, fmt.Errorf("service %s is defined twice", s.Name)
		}
		deps[s.Name] = s.DependsOn
		if deps[s.Name] == nil {
			deps[s.Name] = []string{}
		}
		names = append(names, s.Name)
	}
	for _, s := range a.Services {
		for _, d := range s.DependsOn {
			if _, ok := deps[d]; !ok {
				return nil, fmt.Errorf("service %s depends on unknown service %s", s.Name, d)
			}
			if d == s.Name {
				return nil, fmt.Errorf("service %s depends on itself", s.Name)
			}
		}
	}
	if cycles := dependencyCycles(names, deps); len(cycles) > 0 {
		return nil, fmt.Errorf("depends_on cycle: %s", strings.Join(cycles[0], " -> "))
	}
	level := make(map[string]int, len(names))
	var depth func(string) int
	depth = func(n string) int {
		if l, ok := level[n]; ok {
			return l
		}
		l := 0
		for _, d := range deps[n] {
			if dl := depth(d) + 1; dl > l {
				l = dl
			}
		}
		level[n] = l
		return l
	}
	var out [][]string
	for _, n := range names {
		l := depth(n)
		for len(out) <= l {
			out = append(out, nil)
		}
		out[l] = append(out[l], n)
	}
	for _, l := range out {
		sort.Strings(l)
	}
	return out, nil
}

// dependencyCycles finds the cycles of the graph deps (self-edges and edges
// to unknown nodes are ignored): one cycle per strongly connected component
// of more than one node, as the shortest path from the component's
// smallest name back to itself, e.g. [a b a]. Cycles are sorted by their
// first name.
func dependencyCycles(names []string, deps map[string][]string) [][]string {
	// Tarjan's strongly connected components, iterating names and edges
	// in sorted order so that the result is deterministic.
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	edges := func(n string) []string {
		var out []string
		for _, d := range deps[n] {
			if _, ok := deps[d]; ok && d != n {
				out = append(out, d)
			}
		}
		sort.Strings(out)
		return out
	}
	index := map[string]int{}
	low := map[string]int{}
	onStack := map[string]bool{}
	var stack []string
	var comps [][]string
	var visit func(string)
	visit = func(v string) {
		index[v] = len(index)
		low[v] = index[v]
		stack = append(stack, v)
		onStack[v] = true
		for _, w := range edges(v) {
			if _, seen := index[w]; !seen {
				visit(w)
				low[v] = min(low[v], low[w])
			} else if onStack[w] {
				low[v] = min(low[v], index[w])
			}
		}
		if low[v] == index[v] {
			var comp []string
			for {
				w := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				onStack[w] = false
				comp = append(comp, w)
				if w == v {
					break
				}
			}
			if len(comp) > 1 {
				comps = append(comps, comp)
			}
		}
	}
	for _, n := range sorted {
		if _, seen := index[n]; !seen {
			visit(n)
		}
	}
	var cycles [][]string
	for _, comp := range comps {
		in := map[string]bool{}
		for _, n := range comp {
			in[n] = true
		}
		sort.Strings(comp)
		start := comp[0]
		// Breadth-first search from start back to start inside comp.
		prev := map[string]string{}
		queue := []string{start}
		var last string
	search:
		for len(queue) > 0 {
			v := queue[0]
			queue = queue[1:]
			for _, w := range edges(v) {
				if !in[w] {
					continue
				}
				if w == start {
					last = v
					break search
				}
				if _, seen := prev[w]; !seen {
					prev[w] = v
					queue = append(queue, w)
				}
			}
		}
		cycle := []string{start}
		for v := last; v != start; v = prev[v] {
			cycle = append(cycle, v)
		}
		cycle = append(cycle, start)
		// The walk went backwards: reverse the middle.
		for i, j := 1, len(cycle)-2; i < j; i, j = i+1, j-1 {
			cycle[i], cycle[j] = cycle[j], cycle[i]
		}
		cycles = append(cycles, cycle)
	}
	sort.Slice(cycles, func(i, j int) bool { return cycles[i][0] < cycles[j][0] })
	return cycles
}
