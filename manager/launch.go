package manager

import (
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/internal/wire"
)

// Defaults for launch requests.
const (
	// DefaultMemory is the memory request of a container launched without
	// one: enough for a small web service.
	DefaultMemory = 128 << 20
	// MaxReplicas bounds one launch so a typo cannot flood the cluster.
	MaxReplicas = 1000
)

var (
	nameRe  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$`)
	tagRe   = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}=[a-zA-Z0-9_.-]{1,63}$`)
	roleRe  = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)
	envRe   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	imageRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._/:@-]{0,254}$`)
	// checkPathRe is what a definition file accepts as an http check path.
	checkPathRe = regexp.MustCompile(`^/[!-~]*$`)
)

// RequestError is a launch or stop request the manager refuses; it maps to
// a 4xx answer and nothing has been changed.
type RequestError struct {
	Status    int
	Msg       string
	Decisions []coordinator.Decision
}

func (e *RequestError) Error() string { return e.Msg }

func badRequest(format string, a ...any) error {
	return &RequestError{Status: http.StatusBadRequest, Msg: fmt.Sprintf(format, a...)}
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

// validate checks a launch request and turns it into container records.
// It reports every problem it finds, not only the first.
func validate(req LaunchRequest, now time.Time) ([]*Container, error) {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if req.Image == "" {
		bad("image is required")
	} else if !imageRe.MatchString(req.Image) {
		bad("image %q is not a valid image reference", req.Image)
	}
	name := req.Name
	if name == "" {
		name = DefaultServiceName(req.Image)
	}
	if !nameRe.MatchString(name) {
		bad("name %q is not valid: use 1 to 48 lowercase letters, digits and '-', starting and ending with a letter or digit", name)
	}
	if req.App != "" && !nameRe.MatchString(req.App) {
		bad("app %q is not valid: use lowercase letters, digits and '-'", req.App)
	}
	var tags []string
	if req.Role != "" {
		if !roleRe.MatchString(req.Role) {
			bad("role %q is not valid: use letters, digits, '.', '_' and '-'", req.Role)
		}
		tags = append(tags, "role="+req.Role)
	}
	for _, t := range req.Tags {
		if !tagRe.MatchString(t) {
			bad("tag %q is not valid: use key=value with letters, digits, '.', '_' and '-'", t)
			continue
		}
		if !contains(tags, t) {
			tags = append(tags, t)
		}
	}
	mem := int64(DefaultMemory)
	if req.Memory != "" {
		v, err := definitions.ParseSize(req.Memory)
		switch {
		case err != nil:
			bad("memory: %v", err)
		case v < 6<<20:
			bad("memory %s is below Docker's minimum of 6MiB", req.Memory)
		default:
			mem = v
		}
	}
	var ports []wire.Port
	seen := map[string]bool{}
	for _, p := range req.Ports {
		num, proto, _ := strings.Cut(p, "/")
		if proto == "" {
			proto = "tcp"
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 1 || n > 65535 || (proto != "tcp" && proto != "udp") {
			bad("port %q is not valid: use a number from 1 to 65535, optionally with /tcp or /udp", p)
			continue
		}
		key := strconv.Itoa(n) + "/" + proto
		if seen[key] {
			bad("port %s is given twice", key)
			continue
		}
		seen[key] = true
		ports = append(ports, wire.Port{Container: n, Protocol: proto})
	}
	envKeys := make([]string, 0, len(req.Env))
	for k := range req.Env {
		envKeys = append(envKeys, k)
	}
	sort.Strings(envKeys) // the same request always gets the same answer
	for _, k := range envKeys {
		if !envRe.MatchString(k) {
			bad("environment variable name %q is not valid", k)
		} else if strings.HasPrefix(k, "MICADO_") {
			bad("environment variable %s is reserved: micado sets MICADO_* itself", k)
		}
	}
	replicas := req.Replicas
	if replicas == 0 {
		replicas = 1
		if req.Scaling != nil && req.Scaling.Min >= 1 {
			replicas = req.Scaling.Min
		}
	}
	if replicas < 1 || replicas > MaxReplicas {
		bad("replicas %d is out of range: use 1 to %d", req.Replicas, MaxReplicas)
	}
	if req.Scaling != nil {
		probs := req.Scaling.Problems()
		for _, p := range probs {
			bad("scaling policy: %s", p)
		}
		if len(probs) == 0 && (replicas < req.Scaling.Min || replicas > req.Scaling.Max) {
			bad("replicas %d is outside the scaling policy's min %d and max %d", replicas, req.Scaling.Min, req.Scaling.Max)
		}
	}
	check := Check{Type: "none"}
	if len(ports) > 0 && ports[0].Protocol == "tcp" {
		check.Type = "tcp"
	}
	if req.Check != nil {
		check = *req.Check
		switch check.Type {
		case "tcp", "none":
		case "http":
			if !checkPathRe.MatchString(check.Path) {
				bad("check path %q is not valid: use a URL path starting with / and without spaces or control characters (as in a definition file)", check.Path)
			}
		default:
			bad("check type %q is not valid: use tcp, http or none", check.Type)
		}
		if (check.Type == "tcp" || check.Type == "http") && (len(ports) == 0 || ports[0].Protocol != "tcp") {
			bad("a %s check needs a published TCP port (--port)", check.Type)
		}
		if check.Interval != "" {
			if d, err := time.ParseDuration(check.Interval); err != nil || d < time.Second || d > 10*time.Minute {
				bad("check interval %q is not valid: use a duration from 1s to 10m", check.Interval)
			}
		}
	}
	if len(errs) > 0 {
		return nil, &RequestError{Status: http.StatusBadRequest, Msg: strings.Join(errs, "; ")}
	}
	spec := &Spec{Service: name, App: req.App, Image: req.Image, Tags: tags, Memory: mem, Ports: ports,
		Env: req.Env, Check: check, Pinned: req.Pinned}
	out := make([]*Container, replicas)
	for i := range out {
		out[i] = &Container{Name: fmt.Sprintf("%s-%d", name, i+1), Spec: spec, State: StateStarting, CreatedAt: now, UpdatedAt: now}
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
