package definitions

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/compose-spec/compose-go/v2/types"
	units "github.com/docker/go-units"
	"github.com/micado-scale/micado/definitions/bytesize"
	"gopkg.in/yaml.v3"
)

// ParseCompose reads a Compose file (https://compose-spec.io) as a micado
// application. file names the file in problems, warnings and App.File, and
// its directory gives the application's name when nothing else does; data
// is the file's text; env holds the variables that ${VAR} in the file
// stands for (the CLI passes its environment over a .env file next to the
// Compose file, as docker compose does). The file is read with
// compose-spec/compose-go, so the short and long forms of Compose fields
// are understood alike, and then mapped:
//
//   - name: the application's name. Without it, COMPOSE_PROJECT_NAME in
//     env, else the name of the file's directory lowercased with every
//     character micado does not allow replaced by '-'. micado's rules for
//     application names apply.
//   - image: the image.
//   - deploy.replicas (or scale): the replicas.
//   - deploy.resources.limits.memory, else deploy.resources.reservations.memory,
//     else mem_limit, else mem_reservation: the memory. micado gives a
//     container one memory size, reserved and limit at once; when a limit
//     and a reservation are both given the limit is taken (and a warning
//     says so).
//   - ports and expose: the container ports with their protocol. micado
//     publishes every port on a free port of the worker, so a fixed host
//     port cannot be honoured: a warning says so.
//   - environment (mapping or list): env. A variable without a value takes
//     its value from env, as in Compose; one that is not there is left out
//     with a warning.
//   - depends_on (list, or mapping with condition): depends_on. micado
//     starts a service only when the services it depends on run and pass
//     their checks, so condition: service_started and service_healthy both
//     mean that; service_completed_successfully is refused (micado keeps
//     every service running).
//   - links: links (an alias after ':' is ignored with a warning).
//   - healthcheck: the first port's check where it maps: a test that is an
//     HTTP GET of http://localhost:<first port><path> by curl or wget
//     becomes an http check of that path, and interval its interval (within
//     micado's 1s to 10m). disable: true or test: [NONE] means no check of
//     its own; any other test gives a warning. Without a check of its own,
//     the first port, if tcp, gets micado's default TCP check.
//   - deploy.placement.constraints of the form node.labels.KEY==VALUE: the
//     worker tags KEY=VALUE (node.labels.role==R gives the role R).
//   - x-micado (micado's extension, per service): role, tags, pinned,
//     scaling and check exactly as in micado's own format, e.g.
//     x-micado: {role: app, scaling: {min: 2, max: 8, cpu: 60%}}. A check
//     here replaces whatever healthcheck says.
//   - a top-level x-micado: {role: R} gives the role of every service that
//     names none.
//
// Every service needs a role (micado only places containers on workers of
// a role): in x-micado, in a node.labels.role constraint or as the default.
//
// Fields that change nothing micado does (container_name, restart, labels,
// hostname, networks listing only default, …) are ignored with a warning.
// Everything micado cannot honour is refused, each problem with the file,
// the line and the field's path, e.g.
//
//	compose.yaml:7: services.web.build: micado does not build images: …
//
// build, volumes, privileged, cap_add, devices, network_mode, pid, ipc,
// command and entrypoint (micado runs the image's own command), env_file,
// secrets, configs, user, extends, any unknown field, and more. The mapped
// application then goes through micado's own checks (names, sizes, ports,
// dependency cycles…), whose problems name the Compose fields too.
//
// ParseCompose returns the application and the warnings, each rendered as
// FILE:LINE: PATH: MESSAGE; or, when anything is refused, a nil App and
// every problem as [Problems].
func ParseCompose(file string, data []byte, env map[string]string) (*App, []string, error) {
	c := &composeParser{
		parser: &parser{file: file, merged: map[*yaml.Node][]entry{}, active: map[*yaml.Node]bool{}},
		vars:   env,
		prune:  map[string]bool{},
		paths:  map[string]string{},
	}
	app := c.parseAll(data)
	sortProblems(c.warns)
	var warns []string
	for _, w := range c.warns {
		warns = append(warns, w.Error())
	}
	if len(c.probs) > 0 {
		sortProblems(c.probs)
		return nil, warns, c.probs
	}
	return app, warns, nil
}

// ParseComposeFile reads the Compose file at path with ParseCompose.
func ParseComposeFile(path string, env map[string]string) (*App, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return ParseCompose(path, data, env)
}

// IsCompose tells a Compose file from a micado definition: a Compose file's
// top level is a mapping with services but without application.
func IsCompose(data []byte) bool {
	var top map[string]yaml.Node
	if yaml.Unmarshal(data, &top) != nil {
		return false
	}
	_, svc := top["services"]
	_, app := top["application"]
	return svc && !app
}

// Load reads the definition file at path in whichever format it is
// written: a Compose file (a top level with services but no application,
// see [IsCompose]) with [ParseCompose] and env, anything else with
// [Parse]. Only Compose files have warnings.
func Load(path string, env map[string]string) (*App, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	if IsCompose(data) {
		return ParseCompose(path, data, env)
	}
	app, err := Parse(path, data)
	return app, nil, err
}

// ComposeEnv returns the variables a Compose file at path is interpolated
// with, as docker compose does: those of a .env file next to it, overridden
// by the process environment.
func ComposeEnv(path string) (map[string]string, error) {
	env := map[string]string{}
	dotenv := filepath.Join(filepath.Dir(path), ".env")
	if data, err := os.ReadFile(dotenv); err == nil {
		vars, err := parseDotEnv(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", dotenv, err)
		}
		for k, v := range vars {
			env[k] = v
		}
	}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env, nil
}

type composeParser struct {
	*parser
	vars  map[string]string
	warns Problems
	// prune holds the Compose paths (services.web.build) left out of what
	// compose-go reads: refused, ignored or micado's own.
	prune map[string]bool
	// paths maps a micado path of the built definition (services.web.memory)
	// to the Compose path it came from (services.web.deploy.resources.limits.memory).
	paths map[string]string
	// interpolationFailed is set once a ${…} could not be read.
	interpolationFailed bool
}

func (c *composeParser) warn(line int, path, format string, args ...any) {
	c.warns = append(c.warns, Problem{File: c.file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (c *composeParser) parseAll(data []byte) *App {
	return c.bounded(func() *App { return c.parse(data) })
}

// The Compose fields micado reads, ignores with a warning, or refuses with
// a reason. Any other field compose-go knows is refused as not supported;
// a field it does not know is unknown.
var (
	composeTopMapped  = []string{"name", "services", "x-micado"}
	composeSvcMapped  = []string{"image", "deploy", "mem_limit", "mem_reservation", "ports", "expose", "environment", "depends_on", "links", "healthcheck", "scale", "x-micado"}
	composeSvcIgnored = map[string]string{
		"container_name":    "micado names containers itself",
		"restart":           "micado always restarts containers",
		"labels":            "micado sets its own container labels",
		"hostname":          "micado containers keep Docker's hostname",
		"domainname":        "micado containers keep Docker's domain name",
		"stop_grace_period": "micado stops containers with Docker's default grace period",
		"stop_signal":       "micado stops containers with the image's stop signal",
		"logging":           "micado keeps Docker's logging settings",
		"tty":               "micado containers run without a terminal",
		"stdin_open":        "micado containers run without standard input",
		"init":              "micado runs the image's own init",
		"pull_policy":       "micado pulls an image when a worker lacks it",
	}
	composeSvcRefused = map[string]string{
		"build":            "micado does not build images: build and push the image, then give it with image",
		"volumes":          "micado has no volumes: it moves containers between workers and keeps no data for them",
		"volumes_from":     "micado has no volumes: it moves containers between workers and keeps no data for them",
		"tmpfs":            "micado has no volumes or mounts",
		"privileged":       "micado does not run privileged containers",
		"cap_add":          "micado does not change a container's capabilities",
		"cap_drop":         "micado does not change a container's capabilities",
		"devices":          "micado does not give containers host devices",
		"gpus":             "micado does not give containers host devices",
		"pid":              "micado does not share process namespaces: each container has its own",
		"ipc":              "micado does not share IPC namespaces: each container has its own",
		"uts":              "micado does not share namespaces: each container has its own",
		"userns_mode":      "micado does not share namespaces: each container has its own",
		"command":          "micado runs the image's own command: build an image whose CMD does this",
		"entrypoint":       "micado runs the image's own entrypoint: build an image whose ENTRYPOINT does this",
		"env_file":         "micado reads only this file: move the variables into environment",
		"secrets":          "micado has no secrets: pass settings with environment",
		"configs":          "micado has no configs: pass settings with environment or build them into the image",
		"user":             "micado runs the image's own user: set USER in the image",
		"working_dir":      "micado runs in the image's own working directory: set WORKDIR in the image",
		"extends":          "micado reads only this file: copy the fields of the extended service into this one",
		"profiles":         "micado deploys every service of the file: remove profiles (and the services you do not want)",
		"external_links":   "micado links only services of this file (use links)",
		"extra_hosts":      "micado containers find each other through Consul, not through host entries",
		"dns":              "micado containers use Consul's DNS",
		"dns_search":       "micado containers use Consul's DNS",
		"dns_opt":          "micado containers use Consul's DNS",
		"sysctls":          "micado does not change kernel parameters of containers",
		"ulimits":          "micado does not change the limits of containers",
		"security_opt":     "micado does not change the security options of containers",
		"read_only":        "micado does not run containers with a read-only file system",
		"runtime":          "micado runs containers with Docker's default runtime",
		"platform":         "micado runs the image built for its workers' platform",
		"shm_size":         "micado keeps Docker's default /dev/shm size",
		"post_start":       "micado runs no lifecycle hooks",
		"pre_stop":         "micado runs no lifecycle hooks",
		"develop":          "micado has no development mode",
		"provider":         "micado runs containers only",
		"models":           "micado runs containers only",
		"network_mode":     "micado runs every container on its worker's Docker network and publishes its ports",
		"cpus":             "micado places containers by memory only and does not limit CPU",
		"cpu_shares":       "micado places containers by memory only and does not limit CPU",
		"cpuset":           "micado places containers by memory only and does not limit CPU",
		"memswap_limit":    "micado gives a container one memory size (use deploy.resources.limits.memory)",
		"mem_swappiness":   "micado gives a container one memory size (use deploy.resources.limits.memory)",
		"oom_kill_disable": "micado keeps the kernel's out-of-memory handling",
	}
	composeTopRefused = map[string]string{
		"volumes":  "micado has no volumes: it moves containers between workers and keeps no data for them",
		"secrets":  "micado has no secrets: pass settings with environment",
		"configs":  "micado has no configs: pass settings with environment or build them into the image",
		"include":  "micado reads only this file: copy the included services into it",
		"models":   "micado runs containers only",
		"networks": "micado has no networks of its own: services find each other through Consul (use links)",
	}
	composeDeployIgnored = map[string]string{
		"restart_policy":  "micado always restarts containers",
		"update_config":   "micado replaces containers one at a time, make before break",
		"rollback_config": "micado keeps the containers of a failed change running",
		"labels":          "micado sets its own labels",
		"endpoint_mode":   "micado registers every container in Consul",
	}
	composeHealthIgnored = []string{"timeout", "retries", "start_period", "start_interval"}
	xMicadoFields        = []string{"role", "tags", "pinned", "scaling", "check"}
)

// composeFieldNames returns the yaml names of the fields of a compose-go
// type: the fields Compose knows at that level.
func composeFieldNames(v any) []string {
	var out []string
	t := reflect.TypeOf(v)
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" && !strings.HasPrefix(name, "#") {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

var (
	composeServiceFields  = composeFieldNames(types.ServiceConfig{})
	composeTopFields      = append(composeFieldNames(types.Project{}), "version", "include")
	composeDeployFields   = composeFieldNames(types.DeployConfig{})
	composeResourceFields = composeFieldNames(types.Resource{})
	composeHealthFields   = composeFieldNames(types.HealthCheckConfig{})
)

// svc is one service of the Compose file as the walk found it.
type svc struct {
	e      entry                 // its name and raw mapping
	f      map[string]entry      // the fields micado maps, by name
	x      map[string]entry      // the fields of its x-micado
	deploy map[string]entry      // the fields of deploy
	res    [2]map[string]entry   // the fields of deploy.resources.limits and .reservations
	health map[string]entry      // the fields of healthcheck
	place  map[string]entry      // the fields of deploy.placement
	mem    map[string]*yaml.Node // memory sources by Compose path suffix
}

func (c *composeParser) parse(data []byte) *App {
	if len(data) > MaxFileSize {
		c.report(0, "", "the file is %d bytes, more than the limit of 1 MiB", len(data))
		return nil
	}
	root := c.decode(data)
	if root == nil {
		return nil
	}
	top := deref(root)
	if top.Kind != yaml.MappingNode {
		c.report(root.Line, "", "a Compose file must be a mapping with services, not %s", describe(top))
		return nil
	}
	// What compose-go reads: the file as written, before interpolation.
	var model map[string]any
	if err := root.Decode(&model); err != nil {
		c.report(root.Line, "", "invalid YAML: %v", err)
		return nil
	}
	c.interpolate(root, "", map[*yaml.Node]bool{})

	var nameNode, topRole *yaml.Node
	var services []svc
	var servicesLine int
	for _, e := range c.entries(top, "") {
		path := e.name
		switch {
		case e.name == "name":
			nameNode = e.val
		case e.name == "services":
			services = c.services(e)
			servicesLine = e.key.Line
		case e.name == "x-micado":
			c.prune[path] = true
			if f, ok := c.fields(e.val, path, []string{"role"}, " with role"); ok {
				if r, ok := f["role"]; ok {
					topRole = r.val
				}
			}
		case strings.HasPrefix(e.name, "x-"):
		case e.name == "version":
			c.prune[path] = true
			c.warn(e.key.Line, path, "ignored: the version field of Compose files is obsolete")
		case e.name == "networks" && onlyDefault(e.val):
			c.prune[path] = true
			c.warn(e.key.Line, path, "ignored: micado has no networks of its own; services find each other through Consul")
		case composeTopRefused[e.name] != "":
			c.prune[path] = true
			c.report(e.key.Line, path, "%s", composeTopRefused[e.name])
		default:
			c.prune[path] = true
			c.report(e.key.Line, path, "unknown field%s", suggest(e.name, composeTopFields, "Compose fields"))
		}
	}
	if servicesLine == 0 {
		c.report(top.Line, "services", "is required (a mapping of service names to services)")
		return nil
	}

	name, nameLine := c.appName(nameNode)
	if c.interpolationFailed {
		return nil
	}
	proj := c.load(model, root, name)
	if proj == nil {
		return nil
	}

	// Build the application as micado's format writes it, every value
	// carrying the line of the Compose field it came from, and let micado's
	// parser check it: one set of rules for both formats.
	var svcNodes []*yaml.Node
	for i := range services {
		s := &services[i]
		sc, ok := proj.Services[s.e.name]
		if !ok {
			continue
		}
		svcNodes = append(svcNodes, s.e.key, c.service(s, &sc, topRole))
	}
	doc := mapping(top.Line,
		scalar("!!str", "application", nameLine), scalar("!!str", name, nameLine),
		scalar("!!str", "services", servicesLine), mapping(servicesLine, svcNodes...))
	if nameNode != nil {
		c.paths["application"] = "name"
	}
	inner := &parser{file: c.file, merged: map[*yaml.Node][]entry{}, active: map[*yaml.Node]bool{}}
	app := inner.app(doc)
	for _, p := range inner.probs {
		p.Path = c.composePath(p.Path)
		c.probs = append(c.probs, p)
	}
	if app != nil {
		app.File = c.file
	}
	return app
}

// onlyDefault tells whether a networks field names no network but default.
func onlyDefault(raw *yaml.Node) bool {
	n := deref(raw)
	switch n.Kind {
	case yaml.SequenceNode:
		for _, it := range n.Content {
			if deref(it).Value != "default" {
				return false
			}
		}
		return true
	case yaml.MappingNode:
		for i := 0; i < len(n.Content); i += 2 {
			if deref(n.Content[i]).Value != "default" {
				return false
			}
		}
		return true
	}
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// composePath turns a path of the built definition into the path of the
// Compose field it came from: the longest known prefix is replaced.
func (c *composeParser) composePath(p string) string {
	for k := p; k != ""; {
		if cp, ok := c.paths[k]; ok {
			return cp + p[len(k):]
		}
		i := strings.LastIndexAny(k, ".[")
		if i <= 0 {
			break
		}
		k = k[:i]
	}
	return p
}

// interpolate replaces ${VAR} in every value of the file, in place, as
// Compose does, reporting malformed references and warning of variables
// that are not set. A plain value is read again afterwards, so that
// replicas: ${N} is a number.
func (c *composeParser) interpolate(n *yaml.Node, path string, seen map[*yaml.Node]bool) {
	if n == nil || seen[n] {
		return
	}
	seen[n] = true
	c.step(1)
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for i, it := range n.Content {
			p := path
			if n.Kind == yaml.SequenceNode {
				p = index(path, i)
			}
			c.interpolate(it, p, seen)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			c.interpolate(n.Content[i+1], join(path, deref(n.Content[i]).Value), seen)
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return
		}
		var unset []string
		mapping := func(k string) (string, bool) {
			v, ok := c.vars[k]
			return v, ok
		}
		repl := func(sub string, m template.Mapping, cfg *template.Config) (string, error) {
			v, applied, err := template.DefaultReplacementAppliedFunc(sub, m, cfg)
			if err == nil && !applied {
				unset = append(unset, strings.Trim(sub, "${}"))
			}
			return v, err
		}
		v, err := template.SubstituteWithOptions(n.Value, mapping, template.WithoutLogging, template.WithReplacementFunction(repl))
		if err != nil {
			c.interpolationFailed = true
			c.report(n.Line, path, "%s", interpolationMsg(err))
			return
		}
		for _, u := range unset {
			c.warn(n.Line, path, "variable %s is not set: it stands for an empty string", u)
		}
		if v != n.Value {
			n.Value = v
			if n.Style == 0 {
				n.Tag = ""
				n.Tag = n.ShortTag()
			}
		}
	}
}

func interpolationMsg(err error) string {
	switch e := err.(type) {
	case *template.InvalidTemplateError:
		return fmt.Sprintf("%s is not a valid reference to a variable (write $$ for a $)", q(e.Template))
	case *template.MissingRequiredError:
		if e.Reason != "" {
			return fmt.Sprintf("variable %s is required: %s", e.Variable, e.Reason)
		}
		return fmt.Sprintf("variable %s is required but not set", e.Variable)
	}
	return err.Error()
}

// appName picks the application's name: name, else COMPOSE_PROJECT_NAME,
// else the file's directory. It returns the line the name is on (0 when
// it is not in the file).
func (c *composeParser) appName(n *yaml.Node) (string, int) {
	if n != nil {
		s, ok := c.str(n, "name", false)
		if !ok {
			return "app", n.Line
		}
		return s, n.Line
	}
	if s := c.vars["COMPOSE_PROJECT_NAME"]; s != "" {
		if !appNameRe.MatchString(s) {
			c.report(0, "", "COMPOSE_PROJECT_NAME %s is not a valid application name: use 1 to 48 lowercase letters, digits and '-', starting and ending with a letter or digit", q(s))
			return "app", 0
		}
		return s, 0
	}
	dir := filepath.Dir(c.file)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	s := normalizeAppName(filepath.Base(dir))
	if s == "" {
		c.report(1, "name", "is required: the directory name %s gives no application name", q(filepath.Base(dir)))
		return "app", 0
	}
	return s, 0
}

var notNameRe = regexp.MustCompile(`[^a-z0-9]+`)

// normalizeAppName makes an application name of a directory name, as
// docker compose makes a project name of it: lowercase, with runs of
// anything but letters and digits turned into '-'.
func normalizeAppName(s string) string {
	s = strings.Trim(notNameRe.ReplaceAllString(strings.ToLower(s), "-"), "-")
	if len(s) > 48 {
		s = strings.TrimRight(s[:48], "-")
	}
	return s
}

// services walks the services mapping, reporting what micado refuses and
// warning of what it ignores.
func (c *composeParser) services(e entry) []svc {
	n := deref(e.val)
	if n.Kind != yaml.MappingNode {
		c.report(e.val.Line, "services", "must be a mapping of service names to services")
		return nil
	}
	var out []svc
	for _, se := range c.entries(n, "services") {
		path := join("services", se.name)
		s := svc{e: se, f: map[string]entry{}, mem: map[string]*yaml.Node{}}
		if deref(se.val).Kind != yaml.MappingNode {
			c.report(se.val.Line, path, "must be a mapping (a service needs at least image and x-micado.role)")
			c.prune[path] = true
			continue
		}
		for _, fe := range c.entries(deref(se.val), path) {
			fp := join(path, fe.name)
			switch {
			case slices.Contains(composeSvcMapped, fe.name):
				s.f[fe.name] = fe
			case strings.HasPrefix(fe.name, "x-"):
			case fe.name == "networks" && onlyDefault(fe.val):
				c.prune[fp] = true
				c.warn(fe.key.Line, fp, "ignored: micado has no networks of its own; services find each other through Consul")
			case fe.name == "network_mode" && (deref(fe.val).Value == "bridge" || deref(fe.val).Value == "default"):
				c.prune[fp] = true
				c.warn(fe.key.Line, fp, "ignored: micado runs containers on Docker's default network")
			case fe.name == "network_mode" && deref(fe.val).Value == "host":
				c.prune[fp] = true
				c.report(fe.val.Line, fp, "micado does not run containers in the host's network: it publishes their ports on free ports of the worker")
			case fe.name == "networks":
				c.prune[fp] = true
				c.report(fe.key.Line, fp, "micado has no networks of its own: services find each other through Consul (use links)")
			case composeSvcIgnored[fe.name] != "":
				c.prune[fp] = true
				c.warn(fe.key.Line, fp, "ignored: %s", composeSvcIgnored[fe.name])
			case composeSvcRefused[fe.name] != "":
				c.prune[fp] = true
				c.report(fe.key.Line, fp, "%s", composeSvcRefused[fe.name])
			case slices.Contains(composeServiceFields, fe.name):
				c.prune[fp] = true
				c.report(fe.key.Line, fp, "is not supported by micado")
			default:
				c.prune[fp] = true
				c.report(fe.key.Line, fp, "unknown field%s", suggest(fe.name, append(composeSvcMapped, "x-micado"), "micado maps"))
			}
		}
		if x, ok := s.f["x-micado"]; ok {
			c.prune[join(path, "x-micado")] = true
			s.x, _ = c.fields(x.val, join(path, "x-micado"), xMicadoFields, " with role, tags, pinned, scaling or check")
		}
		if d, ok := s.f["deploy"]; ok {
			s.deploy = c.walkDeploy(&s, d, join(path, "deploy"))
		}
		if h, ok := s.f["healthcheck"]; ok {
			s.health = c.known(h.val, join(path, "healthcheck"), composeHealthFields)
		}
		for _, k := range []string{"mem_limit", "mem_reservation"} {
			if v, ok := s.f[k]; ok {
				s.mem[k] = v.val
			}
		}
		out = append(out, s)
	}
	return out
}

// known returns the fields of a mapping that compose-go knows, reporting
// the others; compose-go checks the values.
func (c *composeParser) known(raw *yaml.Node, path string, fields []string) map[string]entry {
	n := deref(raw)
	if n.Kind != yaml.MappingNode {
		return nil // compose-go says what it must be
	}
	out := map[string]entry{}
	for _, e := range c.entries(n, path) {
		fp := join(path, e.name)
		switch {
		case slices.Contains(fields, e.name):
			out[e.name] = e
		case strings.HasPrefix(e.name, "x-"):
		default:
			c.prune[fp] = true
			c.report(e.key.Line, fp, "unknown field%s", suggest(e.name, fields, "Compose fields"))
		}
	}
	return out
}

func (c *composeParser) walkDeploy(s *svc, d entry, path string) map[string]entry {
	f := c.known(d.val, path, composeDeployFields)
	for name, e := range f {
		fp := join(path, name)
		switch name {
		case "replicas":
		case "mode":
			if v := deref(e.val).Value; v != "replicated" {
				c.prune[fp] = true
				c.report(e.val.Line, fp, "micado runs a number of replicas (mode: replicated); %s is not supported", q(v))
			}
		case "resources":
			rf := c.known(e.val, fp, []string{"limits", "reservations"})
			for i, k := range []string{"limits", "reservations"} {
				re, ok := rf[k]
				if !ok {
					continue
				}
				kp := join(fp, k)
				s.res[i] = c.known(re.val, kp, composeResourceFields)
				for rn, r := range s.res[i] {
					switch rn {
					case "memory":
						s.mem[k] = r.val
					case "cpus", "pids":
						c.prune[join(kp, rn)] = true
						c.warn(r.key.Line, join(kp, rn), "ignored: micado places containers by memory only")
					default:
						c.prune[join(kp, rn)] = true
						c.report(r.key.Line, join(kp, rn), "micado does not give containers host devices or resources other than memory")
					}
				}
			}
		case "placement":
			s.place = c.known(e.val, fp, []string{"constraints", "preferences", "max_replicas_per_node"})
			if p, ok := s.place["preferences"]; ok {
				c.prune[join(fp, "preferences")] = true
				c.warn(p.key.Line, join(fp, "preferences"), "ignored: micado places by role, tags and free memory")
			}
			if p, ok := s.place["max_replicas_per_node"]; ok {
				c.prune[join(fp, "max_replicas_per_node")] = true
				c.report(p.key.Line, join(fp, "max_replicas_per_node"), "micado cannot limit the replicas per worker")
			}
		default:
			c.prune[fp] = true
			if msg := composeDeployIgnored[name]; msg != "" {
				c.warn(e.key.Line, fp, "ignored: %s", msg)
			} else {
				c.report(e.key.Line, fp, "is not supported by micado")
			}
		}
	}
	return f
}

// load reads the model with compose-go, without what micado refused,
// ignored or reads itself. It reports compose-go's error, at the line of
// the field it names, and returns nil then.
func (c *composeParser) load(model map[string]any, root *yaml.Node, name string) *types.Project {
	for p := range c.prune {
		prunePath(model, p)
	}
	delete(model, "name")
	if !appNameRe.MatchString(name) {
		name = "app"
	}
	dir := filepath.Dir(c.file)
	details := types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: c.file, Config: model}},
		Environment: types.Mapping(c.vars),
	}
	proj, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName(name, true)
		o.SkipInclude = true
		o.SkipExtends = true
		o.SkipConsistencyCheck = true // micado checks references itself
		o.ResolvePaths = false
		o.Profiles = []string{"*"}
		o.Interpolate.Substitute = func(s string, m template.Mapping) (string, error) {
			return template.SubstituteWithOptions(s, m, template.WithoutLogging)
		}
	})
	if err != nil {
		c.composeError(err, root)
		return nil
	}
	return proj
}

// prunePath deletes a dotted path (services.web.build) from the model.
// Keys with dots are quoted by join; those are not pruned, and compose-go
// reports them.
func prunePath(m map[string]any, path string) {
	parts := strings.Split(path, ".")
	for i, k := range parts {
		if i == len(parts)-1 {
			delete(m, k)
			return
		}
		next, ok := m[k].(map[string]any)
		if !ok {
			return
		}
		m = next
	}
}

var composeErrPathRe = regexp.MustCompile(`(?:^|[\s'"])((?:services|name)(?:\.[A-Za-z0-9_.\-]+)?)`)

// composeError reports an error of compose-go at the line of the field it
// names, if it names one.
func (c *composeParser) composeError(err error, root *yaml.Node) {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "validating "+c.file+": ")
	m := composeErrPathRe.FindStringSubmatchIndex(msg)
	if m == nil {
		c.report(0, "", "%s", msg)
		return
	}
	dotted := strings.TrimRight(msg[m[2]:m[3]], ".")
	line, path := c.lineOf(root, dotted)
	rest := strings.TrimSpace(msg[m[3]:])
	if m[2] > 0 {
		rest = strings.TrimSpace(msg[:m[2]] + " " + rest)
	}
	if m := castErrRe.FindStringSubmatch(rest); m != nil {
		rest = fmt.Sprintf("%s is not a %s", q(m[2]), map[string]string{"Atoi": "whole number", "ParseBool": "boolean"}[m[1]])
		if strings.HasSuffix(rest, " a ") {
			rest = strings.TrimSuffix(rest, " a ") + " a value of the right type"
		}
	}
	c.report(line, path, "%s", rest)
}

var castErrRe = regexp.MustCompile(`failed to cast to expected type: strconv\.(\w+): parsing "(.*)": `)

// lineOf finds the node of a dotted path (services.web.ports.0) and returns
// its line and its path as micado writes it (services.web.ports[0]).
func (c *composeParser) lineOf(root *yaml.Node, dotted string) (int, string) {
	n, path, line := deref(root), "", root.Line
	for _, k := range strings.Split(dotted, ".") {
		switch n.Kind {
		case yaml.MappingNode:
			found := false
			for _, e := range c.entries(n, path) {
				if e.name == k {
					n, path, line, found = deref(e.val), join(path, k), e.key.Line, true
					break
				}
			}
			if !found {
				return line, join(path, k)
			}
		case yaml.SequenceNode:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(n.Content) {
				return line, path + "." + k
			}
			line, path, n = n.Content[i].Line, index(path, i), deref(n.Content[i])
		default:
			return line, path + "." + k
		}
	}
	return line, path
}

func scalar(tag, value string, line int) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value, Line: line}
}

func mapping(line int, kv ...*yaml.Node) *yaml.Node {
	return &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: line, Content: kv}
}

func sequence(line int, items ...*yaml.Node) *yaml.Node {
	return &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Line: line, Content: items}
}

// items returns the items of a raw list (nil when it is not one).
func items(raw *yaml.Node) []*yaml.Node {
	if n := deref(raw); n.Kind == yaml.SequenceNode {
		return n.Content
	}
	return nil
}

// service builds one service of the micado definition from the Compose
// service s as compose-go read it (sc).
func (c *composeParser) service(s *svc, sc *types.ServiceConfig, topRole *yaml.Node) *yaml.Node {
	spath := join("services", s.e.name)
	var kv []*yaml.Node
	add := func(field, composePath string, line int, v *yaml.Node) {
		kv = append(kv, scalar("!!str", field, line), v)
		c.paths[spath+"."+field] = composePath
	}
	line := func(field string) int {
		if e, ok := s.f[field]; ok {
			return e.val.Line
		}
		return s.e.key.Line
	}

	if _, ok := s.f["image"]; ok {
		add("image", spath+".image", line("image"), scalar("!!str", sc.Image, line("image")))
	} else {
		c.report(s.e.key.Line, spath+".image", "is required: micado runs images and does not build them")
		kv = append(kv, str("image"), str("placeholder")) // reported here, not by micado's rules
	}

	// Role and tags: x-micado, placement constraints, the default role.
	var role *yaml.Node
	rolePath := spath + ".x-micado.role"
	if r, ok := s.x["role"]; ok {
		role = r.val
	}
	var tags []*yaml.Node
	tagsLine := 0
	if t, ok := s.x["tags"]; ok {
		tagsLine = t.val.Line
		for i, it := range items(t.val) {
			c.paths[index(spath+".tags", len(tags))] = index(spath+".x-micado.tags", i)
			tags = append(tags, it)
		}
		if items(t.val) == nil {
			tags = nil
			kv = append(kv, scalar("!!str", "tags", t.key.Line), t.val) // let micado say what is wrong
			c.paths[spath+".tags"] = spath + ".x-micado.tags"
			tagsLine = 0
		}
	}
	if pl, ok := s.place["constraints"]; ok && sc.Deploy != nil {
		raw := items(pl.val)
		cp := spath + ".deploy.placement.constraints"
		for i, con := range sc.Deploy.Placement.Constraints {
			l, ip := pl.val.Line, index(cp, i)
			if i < len(raw) {
				l = raw[i].Line
			}
			k, v, ok := nodeLabel(con)
			switch {
			case !ok:
				c.report(l, ip, "%s cannot be honoured: micado places by worker tags, written node.labels.KEY==VALUE", q(con))
			case k == "role" && role != nil && deref(role).Value != v:
				c.report(l, ip, "role %s contradicts x-micado.role %s", q(v), q(deref(role).Value))
			case k == "role":
				if role == nil {
					role, rolePath = scalar("!!str", v, l), ip
				}
			default:
				if tagsLine == 0 {
					tagsLine = l
				}
				c.paths[index(spath+".tags", len(tags))] = ip
				tags = append(tags, scalar("!!str", k+"="+v, l))
			}
		}
	}
	if role == nil && topRole != nil {
		role, rolePath = topRole, "x-micado.role"
	}
	if role == nil {
		c.report(s.e.key.Line, spath+".x-micado.role", "is required: micado places containers only on workers of a role; give the service x-micado: {role: …}, or all services a top-level x-micado: {role: …}")
		kv = append(kv, str("role"), str("placeholder")) // reported here, not by micado's rules
	} else {
		add("role", rolePath, role.Line, role)
	}
	if tags != nil {
		add("tags", spath+".x-micado.tags", tagsLine, sequence(tagsLine, tags...))
		if _, ok := s.x["tags"]; !ok {
			c.paths[spath+".tags"] = spath + ".deploy.placement.constraints"
		}
	}

	c.memory(s, sc, spath, add)

	if sc.Deploy != nil && sc.Deploy.Replicas != nil || sc.Scale != nil {
		r, rp := sc.GetScale(), spath+".scale"
		l := line("scale")
		if e, ok := s.deploy["replicas"]; ok {
			l, rp = e.val.Line, spath+".deploy.replicas"
		}
		add("replicas", rp, l, scalar("!!int", strconv.Itoa(r), l))
	}

	c.ports(s, sc, spath, add)
	c.environment(s, sc, spath, add)
	c.dependsOn(s, sc, spath, add)

	if e, ok := s.f["links"]; ok {
		raw := items(e.val)
		var ls []*yaml.Node
		for i, l := range sc.Links {
			ln := e.val.Line
			if i < len(raw) {
				ln = raw[i].Line
			}
			name, alias, _ := strings.Cut(l, ":")
			if alias != "" && alias != name {
				c.warn(ln, index(spath+".links", i), "the alias %s is ignored: micado tells a service of its links by their service names", q(alias))
			}
			c.paths[index(spath+".links", i)] = index(spath+".links", i)
			ls = append(ls, scalar("!!str", name, ln))
		}
		add("links", spath+".links", e.val.Line, sequence(e.val.Line, ls...))
	}
	if p, ok := s.x["pinned"]; ok {
		add("pinned", spath+".x-micado.pinned", p.val.Line, p.val)
	}
	if x, ok := s.x["scaling"]; ok {
		add("scaling", spath+".x-micado.scaling", x.val.Line, x.val)
	}
	return mapping(s.e.key.Line, kv...)
}

var nodeLabelRe = regexp.MustCompile(`^\s*node\.labels\.([^=!\s]+)\s*==\s*(\S+)\s*$`)

// nodeLabel reads a placement constraint node.labels.KEY==VALUE.
func nodeLabel(s string) (string, string, bool) {
	m := nodeLabelRe.FindStringSubmatch(s)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

type addFunc func(field, composePath string, line int, v *yaml.Node)

// memory takes the service's one memory size from the limit or the
// reservation, in deploy.resources or in mem_limit/mem_reservation.
func (c *composeParser) memory(s *svc, sc *types.ServiceConfig, spath string, add addFunc) {
	type src struct {
		key, path string
		v         int64
	}
	var res [2]int64
	if sc.Deploy != nil {
		if l := sc.Deploy.Resources.Limits; l != nil {
			res[0] = int64(l.MemoryBytes)
		}
		if r := sc.Deploy.Resources.Reservations; r != nil {
			res[1] = int64(r.MemoryBytes)
		}
	}
	dp := spath + ".deploy.resources."
	srcs := []src{
		{"limits", dp + "limits.memory", res[0]},
		{"reservations", dp + "reservations.memory", res[1]},
		{"mem_limit", spath + ".mem_limit", int64(sc.MemLimit)},
		{"mem_reservation", spath + ".mem_reservation", int64(sc.MemReservation)},
	}
	var chosen *src
	for i := range srcs {
		x := &srcs[i]
		n, given := s.mem[x.key]
		if !given {
			continue
		}
		if chosen == nil {
			chosen = x
			add("memory", x.path, n.Line, scalar("!!str", exactSize(x.v), n.Line))
		} else if x.v != chosen.v {
			c.warn(n.Line, x.path, "ignored: micado gives a container one memory size, reserved and limit at once, and takes %s (%s)", chosen.path[len(spath)+1:], bytesize.Format(chosen.v))
		}
	}
}

// ports maps ports and expose.
func (c *composeParser) ports(s *svc, sc *types.ServiceConfig, spath string, add addFunc) {
	var out []*yaml.Node
	l := 0
	if e, ok := s.f["ports"]; ok {
		l = e.val.Line
		raw := items(e.val)
		for i, p := range sc.Ports {
			pl, rp := e.val.Line, spath+".ports"
			if len(raw) == len(sc.Ports) {
				pl, rp = raw[i].Line, index(rp, i)
			}
			if p.Published != "" {
				c.warn(pl, rp, "the host port %s cannot be honoured: micado publishes container port %d on a free port of the worker (find it with micado ps or in Consul)", p.Published, p.Target)
			} else if p.HostIP != "" {
				c.warn(pl, rp, "the host address %s cannot be honoured: micado publishes ports on the worker's address", p.HostIP)
			}
			c.paths[index(spath+".ports", len(out))] = rp
			out = append(out, c.port(int(p.Target), p.Protocol, pl))
		}
	}
	if e, ok := s.f["expose"]; ok {
		if l == 0 {
			l = e.val.Line
		}
		raw := items(e.val)
		for i, x := range sc.Expose {
			pl, rp := e.val.Line, index(spath+".expose", i)
			if i < len(raw) {
				pl = raw[i].Line
			}
			num, proto, _ := strings.Cut(x, "/")
			port, err := strconv.Atoi(num)
			if err != nil {
				c.report(pl, rp, "%s is not a port: micado publishes single ports", q(x))
				continue
			}
			c.paths[index(spath+".ports", len(out))] = rp
			out = append(out, c.port(port, proto, pl))
		}
	}
	if out == nil && s.x["check"].val == nil && s.health == nil {
		return
	}
	// The check of the first port.
	var check *yaml.Node
	if x, ok := s.x["check"]; ok {
		check = x.val
		c.paths[spath+".ports[0].check"] = spath + ".x-micado.check"
		if h, ok := s.f["healthcheck"]; ok {
			c.warn(h.key.Line, spath+".healthcheck", "ignored: x-micado.check gives the check")
		}
	} else if h, ok := s.f["healthcheck"]; ok {
		check = c.healthcheck(s, sc, spath, h, out)
	}
	if check != nil {
		if len(out) == 0 {
			c.report(check.Line, c.paths[spath+".ports[0].check"], "a check needs a port: Consul checks a container through its first port")
			return
		}
		out[0].Content = append(out[0].Content, scalar("!!str", "check", check.Line), check)
	}
	if out != nil {
		add("ports", spath+".ports", l, sequence(l, out...))
	}
}

func (c *composeParser) port(port int, proto string, line int) *yaml.Node {
	kv := []*yaml.Node{scalar("!!str", "port", line), scalar("!!int", strconv.Itoa(port), line)}
	if proto != "" {
		kv = append(kv, scalar("!!str", "protocol", line), scalar("!!str", proto, line))
	}
	return mapping(line, kv...)
}

var (
	healthURLRe = regexp.MustCompile(`^http://(localhost|127\.0\.0\.1)(:([0-9]{1,5}))?(/[!-~]*)?$`)
	curlFlagRe  = regexp.MustCompile(`^(-[fsSL]+|--fail|--silent|--show-error|--location|--fail-with-body)$`)
	curlArgRe   = regexp.MustCompile(`^(-[om]|--output|--max-time|--connect-timeout|--retry)$`)
	wgetFlagRe  = regexp.MustCompile(`^(-q|--quiet|--spider|-nv|--no-verbose|-q?O-|--output-document=-|-q?O/dev/null|--timeout=[0-9]+|--tries=[0-9]+|-T[0-9]+|-t[0-9]+)$`)
	wgetArgRe   = regexp.MustCompile(`^(-q?O|-T|-t|--output-document|--timeout|--tries)$`)
)

// healthPath reads a healthcheck test that is an HTTP GET of a localhost
// URL by curl or wget and returns its port and path.
func healthPath(test []string) (int, string, bool) {
	if len(test) < 2 {
		return 0, "", false
	}
	var words []string
	switch test[0] {
	case "CMD":
		words = test[1:]
	case "CMD-SHELL":
		cmd := strings.TrimSpace(strings.Join(test[1:], " "))
		for _, tail := range []string{"|| exit 1", "|| exit"} {
			cmd = strings.TrimSpace(strings.TrimSuffix(cmd, tail))
		}
		if strings.ContainsAny(cmd, "|&;<>$`\\\"'()") {
			return 0, "", false
		}
		words = strings.Fields(cmd)
	default:
		return 0, "", false
	}
	if len(words) == 0 {
		return 0, "", false
	}
	flag, arg := curlFlagRe, curlArgRe
	switch filepath.Base(words[0]) {
	case "curl":
	case "wget":
		flag, arg = wgetFlagRe, wgetArgRe
	default:
		return 0, "", false
	}
	url := ""
	for i := 1; i < len(words); i++ {
		w := words[i]
		switch {
		case flag.MatchString(w):
		case arg.MatchString(w) && i+1 < len(words):
			i++
		case !strings.HasPrefix(w, "-") && url == "":
			url = w
		default:
			return 0, "", false
		}
	}
	m := healthURLRe.FindStringSubmatch(url)
	if m == nil {
		return 0, "", false
	}
	port := 80
	if m[3] != "" {
		port, _ = strconv.Atoi(m[3])
	}
	path := m[4]
	if path == "" {
		path = "/"
	}
	return port, path, true
}

// healthcheck maps a Compose healthcheck to the check of the first port,
// nil for none.
func (c *composeParser) healthcheck(s *svc, sc *types.ServiceConfig, spath string, h entry, ports []*yaml.Node) *yaml.Node {
	hp := spath + ".healthcheck"
	hc := sc.HealthCheck
	if hc == nil || hc.Disable || len(hc.Test) > 0 && hc.Test[0] == "NONE" {
		return nil
	}
	tl, tp := h.key.Line, hp
	if t, ok := s.health["test"]; ok {
		tl, tp = t.val.Line, hp+".test"
	}
	port, path, ok := healthPath(hc.Test)
	first := 0
	if len(ports) > 0 {
		first, _ = strconv.Atoi(ports[0].Content[1].Value)
	}
	switch {
	case len(hc.Test) == 0:
		// Only settings, such as an interval, for the image's own check.
		c.warn(h.key.Line, hp, "has no test micado can run: the first port gets micado's default TCP check")
		return nil
	case !ok:
		c.warn(tl, tp, "micado runs only HTTP checks (curl or wget of http://localhost:PORT/PATH) and TCP checks: the first port gets micado's default TCP check instead")
		return nil
	case len(ports) == 0:
		c.warn(tl, tp, "ignored: micado checks a container through its first port, and the service has none")
		return nil
	case port != first:
		c.warn(tl, tp, "checks port %d, not the first port %d: Consul checks a container through its first port, so it gets micado's default TCP check instead", port, first)
		return nil
	}
	c.paths[spath+".ports[0].check"] = hp
	c.paths[spath+".ports[0].check.http"] = tp
	kv := []*yaml.Node{scalar("!!str", "http", tl), scalar("!!str", path, tl)}
	if hc.Interval != nil {
		il, ip := h.key.Line, hp+".interval"
		if e, ok := s.health["interval"]; ok {
			il = e.val.Line
		}
		d := time.Duration(*hc.Interval)
		switch {
		case d < time.Second:
			c.warn(il, ip, "%s is below micado's shortest interval: the check runs every 1s", d)
			d = time.Second
		case d > 10*time.Minute:
			c.warn(il, ip, "%s is above micado's longest interval: the check runs every 10m", d)
			d = 10 * time.Minute
		}
		c.paths[spath+".ports[0].check.interval"] = ip
		kv = append(kv, scalar("!!str", "interval", il), scalar("!!str", shortDuration(d), il))
	}
	for _, k := range composeHealthIgnored {
		if e, ok := s.health[k]; ok {
			c.warn(e.key.Line, hp+"."+k, "ignored: Consul runs micado's checks with its own %s", strings.ReplaceAll(k, "_", " "))
		}
	}
	return mapping(h.key.Line, kv...)
}

// shortDuration writes a duration without zero units: 1m, not 1m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// environment maps environment.
func (c *composeParser) environment(s *svc, sc *types.ServiceConfig, spath string, add addFunc) {
	e, ok := s.f["environment"]
	if !ok {
		return
	}
	ep := spath + ".environment"
	lines := map[string]int{}
	paths := map[string]string{}
	switch n := deref(e.val); n.Kind {
	case yaml.MappingNode:
		for _, x := range c.entries(n, ep) {
			lines[x.name], paths[x.name] = x.key.Line, join(ep, x.name)
		}
	case yaml.SequenceNode:
		for i, it := range n.Content {
			k, _, _ := strings.Cut(deref(it).Value, "=")
			lines[k], paths[k] = it.Line, index(ep, i)
		}
	}
	names := make([]string, 0, len(sc.Environment))
	for k := range sc.Environment {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		return lines[names[i]] < lines[names[j]] || lines[names[i]] == lines[names[j]] && names[i] < names[j]
	})
	var kv []*yaml.Node
	for _, k := range names {
		l, p := lines[k], paths[k]
		if l == 0 {
			l, p = e.val.Line, join(ep, k)
		}
		v := sc.Environment[k]
		if v == nil {
			c.warn(l, p, "%s has no value and is not set: it is left out", k)
			continue
		}
		c.paths[join(spath+".env", k)] = p
		kv = append(kv, scalar("!!str", k, l), scalar("!!str", *v, l))
	}
	if len(kv) > 0 {
		add("env", ep, e.val.Line, mapping(e.val.Line, kv...))
	}
}

// dependsOn maps depends_on, short and long form, in the file's order.
func (c *composeParser) dependsOn(s *svc, sc *types.ServiceConfig, spath string, add addFunc) {
	e, ok := s.f["depends_on"]
	if !ok {
		return
	}
	dp := spath + ".depends_on"
	var deps []*yaml.Node
	one := func(name string, l int, p string) {
		d := sc.DependsOn[name]
		cl := l
		if n := deref(e.val); n.Kind == yaml.MappingNode {
			for _, x := range c.entries(n, dp) {
				if x.name == name {
					for _, y := range c.entries(deref(x.val), p) {
						if y.name == "condition" {
							cl = y.val.Line
						}
					}
				}
			}
		}
		switch d.Condition {
		case types.ServiceConditionCompletedSuccessfully:
			c.report(cl, p+".condition", "micado keeps every service running and cannot wait for one to complete (service_started and service_healthy both wait for its checks to pass)")
			return
		}
		if !d.Required && d.Condition != "" {
			c.warn(l, p+".required", "ignored: micado always waits for the services a service depends on")
		}
		c.paths[index(dp, len(deps))] = p
		deps = append(deps, scalar("!!str", name, l))
	}
	switch n := deref(e.val); n.Kind {
	case yaml.SequenceNode:
		for i, it := range n.Content {
			one(deref(it).Value, it.Line, index(dp, i))
		}
	case yaml.MappingNode:
		for _, x := range c.entries(n, dp) {
			one(x.name, x.key.Line, join(dp, x.name))
		}
	}
	add("depends_on", dp, e.val.Line, sequence(e.val.Line, deps...))
}

// exactSize writes n bytes as package bytesize prints them when that reads
// back as n in micado's format and in Compose's (where 1GB is 1GiB, as
// Docker reads it), else as a number of bytes.
func exactSize(n int64) string {
	s := bytesize.Format(n)
	if b, err := bytesize.Parse(s); err == nil && int64(b) == n {
		if d, err := ramInBytes(s); err == nil && d == n {
			return s
		}
	}
	return strconv.FormatInt(n, 10)
}

// parseDotEnv reads a .env file as docker compose does.
func parseDotEnv(data []byte) (map[string]string, error) {
	return dotenv.Parse(bytes.NewReader(data))
}

// ramInBytes reads a size as Compose does (512m, 1GiB, 1gb: all binary).
func ramInBytes(s string) (int64, error) { return units.RAMInBytes(s) }
