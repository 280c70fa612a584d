package definitions

import (
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Launch is one service given on the command line (`micado launch`) or in
// a POST /v1/containers body: an application of one service, without an
// application name. [ParseLaunch] checks it with exactly the rules,
// defaults and messages of a definition file's service; only the paths in
// its problems are the launch's own field names.
type Launch struct {
	// Name is the service's name; "" derives it from the image
	// ([DefaultServiceName]).
	Name  string
	Image string
	Role  string
	// Tags are further worker tags, key=value.
	Tags []string
	// Memory is a size as typed ("64MiB", "512m"); "" for the default.
	Memory string
	// Ports are the container ports to publish, "8080" or "53/udp".
	Ports []string
	Env   map[string]string
	// Replicas is the number of containers; 0 for the default (1, or the
	// scaling policy's min).
	Replicas int
	// Check is the first port's check; nil for the default (a TCP check of
	// a first TCP port).
	Check  *CheckSpec
	Pinned bool
	// Scaling scales the service by its load; nil for none.
	Scaling *Scaling
}

// ParseLaunch turns a launch into a one-service [App] (Name "") through the
// same checks as [Parse]. When anything is wrong it returns every problem
// as [Problems], with paths named after the launch's fields: name, image,
// role, tags[i], memory, ports[i], env.NAME, replicas, check.…, scaling.….
func ParseLaunch(l Launch) (*App, error) {
	name := l.Name
	if name == "" {
		name = DefaultServiceName(l.Image)
	}
	var kv []*yaml.Node
	add := func(k string, v *yaml.Node) { kv = append(kv, str(k), v) }
	add("image", str(l.Image))
	if l.Role != "" {
		add("role", str(l.Role))
	}
	if len(l.Tags) > 0 {
		add("tags", flowStrs(l.Tags))
	}
	if l.Memory != "" {
		add("memory", str(l.Memory))
	}
	if l.Replicas != 0 {
		add("replicas", num(l.Replicas))
	}
	if len(l.Ports) > 0 {
		ports := sequence(0)
		for i, p := range l.Ports {
			port, proto, hasProto := strings.Cut(p, "/")
			pn := mapping(0)
			if _, err := strconv.Atoi(port); err == nil {
				pn.Content = append(pn.Content, str("port"), scalar("!!int", port, 0))
			} else {
				pn.Content = append(pn.Content, str("port"), str(port))
			}
			if hasProto {
				pn.Content = append(pn.Content, str("protocol"), str(proto))
			}
			if i == 0 && l.Check != nil {
				pn.Content = append(pn.Content, str("check"), launchCheckNode(l.Check))
			}
			ports.Content = append(ports.Content, pn)
		}
		add("ports", ports)
	}
	if len(l.Env) > 0 {
		add("env", envNode(l.Env))
	}
	if l.Pinned {
		add("pinned", boolean(true))
	}
	if l.Scaling != nil {
		add("scaling", scalingNode(l.Scaling))
	}
	root := mapping(0, str("application"), str("launch"), str("services"), mapping(0, str(name), mapping(0, kv...)))
	p := &parser{merged: map[*yaml.Node][]entry{}, active: map[*yaml.Node]bool{}}
	app := p.app(root)
	if l.Check != nil && len(l.Ports) == 0 {
		p.report(0, join("services", name)+".ports[0].check", "a check needs a published TCP port")
	}
	if len(p.probs) > 0 {
		for i := range p.probs {
			p.probs[i].Path = launchPath(p.probs[i].Path, name)
		}
		return nil, p.probs
	}
	app.Name = ""
	app.Services[0].Line = 0
	return app, nil
}

// launchCheckNode writes a check as given, without dropping invalid
// values, so that the parser reports them.
func launchCheckNode(c *CheckSpec) *yaml.Node {
	n := checkNode(c)
	if c.HTTP == "" && !c.TCP {
		n.Content = append([]*yaml.Node{str("http"), str("")}, n.Content...)
	}
	return n
}

// launchPath turns a path of the one-service file into the launch's field.
func launchPath(path, name string) string {
	svc := join("services", name)
	switch {
	case path == svc:
		return "name"
	case strings.HasPrefix(path, svc+".ports[0].check"):
		return "check" + strings.TrimPrefix(path, svc+".ports[0].check")
	case strings.HasPrefix(path, svc+"."):
		return strings.TrimPrefix(path, svc+".")
	}
	return path
}

// DefaultServiceName derives a service name from an image reference:
// "registry:5000/micado/demo-web:1.2" becomes "demo-web".
func DefaultServiceName(image string) string {
	s := image
	if i := strings.IndexByte(s, '@'); i >= 0 {
		s = s[:i]
	}
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s = s[i+1:]
	}
	if i := strings.IndexByte(s, ':'); i >= 0 {
		s = s[:i]
	}
	s = strings.ToLower(s)
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, s)
	return strings.Trim(s, "-")
}
