package definitions

import (
	"bytes"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Marshal writes app in micado's definition format (see [App]); [Parse]
// reads it back as an equal App, apart from File and the lines. Fields at
// their default are left out, except memory; sizes are written with
// package bytesize where that reads back exactly, else in bytes.
func Marshal(app *App) []byte {
	var svcs []*yaml.Node
	for _, s := range app.Services {
		var kv []*yaml.Node
		add := func(k string, v *yaml.Node) { kv = append(kv, str(k), v) }
		add("image", str(s.Image))
		add("role", str(s.Role))
		if len(s.Tags) > 0 {
			add("tags", flowStrs(s.Tags))
		}
		add("memory", str(exactSize(s.Memory)))
		if s.Replicas != 1 || s.Scaling != nil {
			add("replicas", num(s.Replicas))
		}
		if len(s.Ports) > 0 {
			var ports []*yaml.Node
			for _, p := range s.Ports {
				pkv := []*yaml.Node{str("port"), num(p.Port)}
				if p.Protocol != "" && p.Protocol != "tcp" {
					pkv = append(pkv, str("protocol"), str(p.Protocol))
				}
				if p.Check != nil {
					pkv = append(pkv, str("check"), checkNode(p.Check))
				}
				ports = append(ports, mapping(0, pkv...))
			}
			add("ports", sequence(0, ports...))
		}
		if len(s.Env) > 0 {
			add("env", envNode(s.Env))
		}
		if len(s.DependsOn) > 0 {
			add("depends_on", flowStrs(s.DependsOn))
		}
		if len(s.Links) > 0 {
			add("links", flowStrs(s.Links))
		}
		if s.Pinned {
			add("pinned", boolean(true))
		}
		if s.Scaling != nil {
			add("scaling", scalingNode(s.Scaling))
		}
		svcs = append(svcs, str(s.Name), mapping(0, kv...))
	}
	return encode(mapping(0, str("application"), str(app.Name), str("services"), mapping(0, svcs...)))
}

// MarshalCompose writes app as a Compose file that [ParseCompose] reads
// back as an equal App (apart from File and the lines): image, replicas and
// memory in deploy, ports, environment, depends_on and links as Compose
// has them, and role, tags, pinned, scaling and the check in x-micado.
func MarshalCompose(app *App) []byte {
	var svcs []*yaml.Node
	for _, s := range app.Services {
		var kv []*yaml.Node
		add := func(k string, v *yaml.Node) { kv = append(kv, str(k), v) }
		add("image", str(s.Image))
		var deploy []*yaml.Node
		if s.Replicas != 1 || s.Scaling != nil {
			deploy = append(deploy, str("replicas"), num(s.Replicas))
		}
		deploy = append(deploy, str("resources"), mapping(0, str("limits"), mapping(0, str("memory"), str(exactSize(s.Memory)))))
		add("deploy", mapping(0, deploy...))
		if len(s.Ports) > 0 {
			var ports []*yaml.Node
			for _, p := range s.Ports {
				v := strconv.Itoa(p.Port)
				if p.Protocol != "" && p.Protocol != "tcp" {
					v += "/" + p.Protocol
				}
				ports = append(ports, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v, Style: yaml.DoubleQuotedStyle})
			}
			add("ports", sequence(0, ports...))
		}
		if len(s.Env) > 0 {
			add("environment", envNode(s.Env))
		}
		if len(s.DependsOn) > 0 {
			add("depends_on", flowStrs(s.DependsOn))
		}
		if len(s.Links) > 0 {
			add("links", flowStrs(s.Links))
		}
		x := []*yaml.Node{str("role"), str(s.Role)}
		if len(s.Tags) > 0 {
			x = append(x, str("tags"), flowStrs(s.Tags))
		}
		if s.Pinned {
			x = append(x, str("pinned"), boolean(true))
		}
		if s.Scaling != nil {
			x = append(x, str("scaling"), scalingNode(s.Scaling))
		}
		if len(s.Ports) > 0 && s.Ports[0].Check != nil {
			x = append(x, str("check"), checkNode(s.Ports[0].Check))
		}
		add("x-micado", mapping(0, x...))
		svcs = append(svcs, str(s.Name), mapping(0, kv...))
	}
	root := mapping(0, str("name"), str(app.Name), str("services"), mapping(0, svcs...))
	escapeDollars(root)
	return encode(root)
}

// escapeDollars writes every $ as $$, so that Compose's interpolation
// reads the values back as they are.
func escapeDollars(n *yaml.Node) {
	if n.Kind == yaml.ScalarNode {
		n.Value = strings.ReplaceAll(n.Value, "$", "$$")
	}
	for _, c := range n.Content {
		escapeDollars(c)
	}
}

func encode(n *yaml.Node) []byte {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		// Only nodes built here are encoded: an error is a bug.
		panic(err)
	}
	enc.Close()
	return b.Bytes()
}

func str(s string) *yaml.Node { return scalar("!!str", s, 0) }

func num(i int) *yaml.Node { return scalar("!!int", strconv.Itoa(i), 0) }

func float(f float64) *yaml.Node {
	return scalar("!!float", strconv.FormatFloat(f, 'g', -1, 64), 0)
}

func boolean(b bool) *yaml.Node { return scalar("!!bool", strconv.FormatBool(b), 0) }

func flowStrs(ss []string) *yaml.Node {
	n := sequence(0)
	n.Style = yaml.FlowStyle
	for _, s := range ss {
		n.Content = append(n.Content, str(s))
	}
	return n
}

func envNode(env map[string]string) *yaml.Node {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	n := mapping(0)
	for _, k := range keys {
		n.Content = append(n.Content, str(k), &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: env[k], Style: yaml.DoubleQuotedStyle})
	}
	return n
}

func checkNode(c *CheckSpec) *yaml.Node {
	n := mapping(0)
	if c.HTTP != "" {
		n.Content = append(n.Content, str("http"), str(c.HTTP))
	}
	if c.TCP {
		n.Content = append(n.Content, str("tcp"), boolean(true))
	}
	if c.Interval != "" {
		n.Content = append(n.Content, str("interval"), str(c.Interval))
	}
	return n
}

func pct(f float64) *yaml.Node { return str(strconv.FormatFloat(f, 'g', -1, 64) + "%") }

func scalingNode(s *Scaling) *yaml.Node {
	n := mapping(0, str("min"), num(s.Min), str("max"), num(s.Max))
	if s.CPU != 0 {
		n.Content = append(n.Content, str("cpu"), pct(s.CPU))
	}
	if s.Memory != 0 {
		n.Content = append(n.Content, str("memory"), pct(s.Memory))
	}
	if s.Query != "" {
		n.Content = append(n.Content, str("query"), str(s.Query))
	}
	if s.PerReplica != 0 {
		n.Content = append(n.Content, str("per_replica"), float(s.PerReplica))
	}
	if s.Stabilization != "" {
		n.Content = append(n.Content, str("stabilization"), str(s.Stabilization))
	}
	if len(s.Schedule) > 0 {
		sch := sequence(0)
		for _, w := range s.Schedule {
			wn := mapping(0, str("cron"), str(w.Cron), str("duration"), str(w.Duration))
			if w.Min != 0 {
				wn.Content = append(wn.Content, str("min"), num(w.Min))
			}
			if w.Max != 0 {
				wn.Content = append(wn.Content, str("max"), num(w.Max))
			}
			sch.Content = append(sch.Content, wn)
		}
		n.Content = append(n.Content, str("schedule"), sch)
	}
	return n
}
