package manager

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/worker"
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
func (m *Manager) validate(req LaunchRequest, now time.Time) ([]*Container, error) {
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
	var ports []worker.Port
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
		ports = append(ports, worker.Port{Container: n, Protocol: proto})
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
	}
	if replicas < 1 || replicas > MaxReplicas {
		bad("replicas %d is out of range: use 1 to %d", req.Replicas, MaxReplicas)
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
	out := make([]*Container, replicas)
	for i := range out {
		out[i] = &Container{
			Name: fmt.Sprintf("%s-%d", name, i+1), Service: name, App: req.App, Image: req.Image,
			Tags: tags, Memory: mem, Ports: ports, Env: req.Env, Check: check, Pinned: req.Pinned,
			State: StateStarting, CreatedAt: now, UpdatedAt: now,
		}
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

// Launch validates req, proves that every replica fits, writes the desired
// state to Consul KV, and only then starts the containers in the
// background. A request that is invalid or does not fit changes nothing.
func (m *Manager) Launch(ctx context.Context, req LaunchRequest) (LaunchResponse, error) {
	now := time.Now().UTC()
	cs, err := m.validate(req, now)
	if err != nil {
		return LaunchResponse{}, err
	}
	service := cs[0].Service
	return m.admit(ctx, cs, func(recs []*Container) error {
		for _, r := range recs {
			if r.Service == service || r.Name == service {
				return &RequestError{Status: http.StatusConflict,
					Msg: fmt.Sprintf("a service named %s already exists: stop it first (micado stop %s) or choose another --name", service, service)}
			}
		}
		return nil
	})
}

// admit places new container records of one service together, holds
// those that wait for scale-out, refuses the whole set if any can never be
// placed, writes them to Consul KV in one transaction, and only then
// starts them. check may refuse the set given the current records.
func (m *Manager) admit(ctx context.Context, cs []*Container, check func([]*Container) error) (LaunchResponse, error) {
	service := cs[0].Service
	m.placeMu.Lock()
	recs, err := m.store.list(ctx)
	if err != nil {
		m.placeMu.Unlock()
		return LaunchResponse{}, err
	}
	if check != nil {
		if err := check(recs); err != nil {
			m.placeMu.Unlock()
			return LaunchResponse{}, err
		}
	}
	snap := m.snapshot(recs)
	insts, err := m.store.instances(ctx)
	if err != nil {
		m.placeMu.Unlock()
		return LaunchResponse{}, err
	}
	booting := m.withBooting(snap, insts)
	reqs := make([]coordinator.Request, len(cs))
	for i, c := range cs {
		reqs[i] = c.Request()
	}
	placeStart := time.Now()
	decisions := coordinator.PlaceAll(snap, reqs, m.cfg.Placement)
	m.metrics.placed("launch", time.Since(placeStart))
	var failed []coordinator.Decision
	held := 0
	for i, d := range decisions {
		switch {
		case d.Placed() && booting[d.Worker] == nil:
			cs[i].Node = d.Worker
			cs[i].Reason = d.Reason
			cs[i].Placement = d.Reason
		case d.Placed():
			// Fits on an instance already on its way: wait for it.
			cs[i].State, cs[i].Reason, cs[i].WaitingFor = StatePending, waitReason(booting[d.Worker]), d.Worker
			cs[i].PendingSince = cs[i].CreatedAt
			decisions[i].Reason = cs[i].Reason
			held++
		default:
			if why := m.canScaleFor(d.Request); why != "" {
				decisions[i].Reason = d.Reason + "; " + why
				failed = append(failed, decisions[i])
				continue
			}
			// Held until a new instance joins; placePending asks for it.
			cs[i].State, cs[i].Reason = StatePending, d.Reason+"; asking the cloud for an instance"
			cs[i].PendingSince = cs[i].CreatedAt
			decisions[i].Reason = cs[i].Reason
			held++
		}
	}
	if len(failed) > 0 {
		m.placeMu.Unlock()
		msg := failed[0].Reason
		if len(cs) > 1 {
			msg = fmt.Sprintf("%d of %d replicas of %s cannot be placed: %s", len(failed), len(cs), service, msg)
		}
		if hint := tagHint(snap, cs[0].Tags); hint != "" {
			msg += " " + hint
		}
		return LaunchResponse{}, &RequestError{Status: http.StatusUnprocessableEntity, Msg: msg, Decisions: decisions}
	}
	err = m.store.createAll(ctx, cs)
	m.placeMu.Unlock()
	if errors.Is(err, ErrConflict) {
		return LaunchResponse{}, &RequestError{Status: http.StatusConflict, Msg: fmt.Sprintf("a container of service %s already exists: %v", service, err)}
	}
	if err != nil {
		return LaunchResponse{}, err
	}
	for i, c := range cs {
		if c.State == StatePending {
			m.log.Info("held", "container", c.Name, "reason", decisions[i].Reason)
			m.event(EventPending, c.Name, "%s", decisions[i].Reason)
			continue
		}
		m.log.Info("placed", "container", c.Name, "worker", c.Node, "reason", decisions[i].Reason)
		m.event(EventPlaced, c.Name, "%s", decisions[i].Reason)
		go m.start(context.WithoutCancel(ctx), c.Name)
	}
	if held > 0 {
		go m.placePending(context.WithoutCancel(ctx))
	}
	resp := LaunchResponse{Service: service, Decisions: decisions}
	for _, c := range cs {
		resp.Containers = append(resp.Containers, ContainerView{Container: *c})
	}
	return resp, nil
}

// tagHint lists the tag values the cluster's workers do have for the keys
// the request asks about, when no worker has the requested ones.
func tagHint(s *coordinator.Snapshot, want []string) string {
	var missing []string
	for _, t := range want {
		found := false
		for i := range s.Workers {
			if contains(s.Workers[i].Tags, t) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return ""
	}
	have := map[string]bool{}
	for _, t := range missing {
		key, _, _ := strings.Cut(t, "=")
		for i := range s.Workers {
			for _, wt := range s.Workers[i].Tags {
				if strings.HasPrefix(wt, key+"=") {
					have[wt] = true
				}
			}
		}
	}
	var hs []string
	for t := range have {
		hs = append(hs, t)
	}
	sort.Strings(hs)
	msg := fmt.Sprintf("(no worker has %s", strings.Join(missing, ","))
	if len(hs) > 0 {
		msg += "; workers have " + strings.Join(hs, ", ")
	}
	return msg + ")"
}

// start runs one placed container on its worker and registers it in
// Consul. On a transient failure the record stays "starting" and the next
// reconciliation tries again; a permanent one (the image does not exist)
// marks it failed with the reason.
func (m *Manager) start(ctx context.Context, name string) {
	if !m.claim(name) {
		return
	}
	defer m.release(name)
	c, err := m.store.get(ctx, name)
	if err != nil || c.State != StateStarting || c.Node == "" {
		return
	}
	w, ok := m.members.get(c.Node)
	if !ok || w.Status != "alive" || w.Load.API == "" {
		return // reconciliation re-places it if the worker is gone
	}
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	info, err := m.agents.Start(sctx, w.Load.API, worker.StartRequest{
		Instance: c.Name, Service: c.Service, App: c.App, Image: c.Image, Memory: c.Memory,
		Ports: c.Ports, Env: c.Env, Generation: c.Generation,
	})
	if err != nil {
		permanent := worker.IsNotFound(err)
		m.log.Warn("start failed", "container", c.Name, "worker", c.Node, "permanent", permanent, "err", err)
		if permanent {
			m.event(EventFailed, c.Name, "cannot start on %s: %v", c.Node, err)
		} else {
			m.event(EventFailed, c.Name, "start on %s failed, will retry: %v", c.Node, err)
		}
		_, _ = m.store.update(ctx, name, func(c *Container) error {
			if c.State != StateStarting {
				return ErrConflict
			}
			if permanent {
				c.State = StateFailed
			}
			c.Reason = err.Error()
			c.UpdatedAt = time.Now().UTC()
			return nil
		})
		return
	}
	c, err = m.store.update(ctx, name, func(c *Container) error {
		if c.State != StateStarting {
			return ErrNotFound
		}
		adopt(c, info)
		return nil
	})
	if err != nil {
		// Stopped while starting: the user no longer wants it.
		m.log.Info("container was stopped while starting; removing it", "container", name)
		_, _ = m.agents.Stop(ctx, w.Load.API, name, -1)
		return
	}
	if err := m.reg.register(ctx, c); err != nil {
		m.log.Warn("registration failed; will retry", "container", name, "err", err)
		return
	}
	m.log.Info("running", "container", name, "worker", c.Node, "address", c.Address, "port", c.HostPort())
	m.event(EventRunning, name, "running on %s at %s:%d, registered in Consul as %s", c.Node, c.Address, c.HostPort(), c.ServiceID())
}

// adopt records what a worker reports about a running copy.
func adopt(c *Container, info worker.ContainerInfo) {
	c.State = StateRunning
	c.Reason = ""
	c.Node = info.Node
	c.ContainerID = info.ID
	c.Address = info.Address
	c.Bindings = info.Ports
	c.UpdatedAt = time.Now().UTC()
}

// Stop stops a container instance, or every instance of a service, by
// name. The record is marked stopping in KV first, so a crash midway
// finishes the job on restart.
func (m *Manager) Stop(ctx context.Context, name string) ([]string, error) {
	recs, err := m.store.list(ctx)
	if err != nil {
		return nil, err
	}
	var targets []*Container
	for _, r := range recs {
		if r.Name == name {
			targets = []*Container{r}
			break
		}
		if r.Service == name {
			targets = append(targets, r)
		}
	}
	if len(targets) == 0 {
		return nil, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no container or service named %s (see micado ps)", name)}
	}
	var names []string
	for _, t := range targets {
		if _, err := m.store.update(ctx, t.Name, func(c *Container) error {
			c.State = StateStopping
			c.UpdatedAt = time.Now().UTC()
			return nil
		}); err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		names = append(names, t.Name)
	}
	var errs []error
	for _, n := range names {
		if err := m.stopOne(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return names, errors.Join(errs...)
}

// stopOne deregisters, stops and forgets one instance that is marked
// stopping.
func (m *Manager) stopOne(ctx context.Context, name string) error {
	for !m.claim(name) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer m.release(name)
	c, err := m.store.get(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if c.State != StateStopping {
		return nil
	}
	if err := m.reg.deregister(ctx, c.ServiceID()); err != nil {
		return err
	}
	if c.Move != nil {
		_ = m.reg.deregister(ctx, serviceID(c.Name, c.Move.Generation))
		if w, ok := m.members.get(c.Move.Node); ok && w.Status == "alive" && w.Load.API != "" {
			_, _ = m.agents.Stop(ctx, w.Load.API, name, c.Move.Generation)
		}
	}
	if c.Node != "" {
		if w, ok := m.members.get(c.Node); ok && w.Status == "alive" && w.Load.API != "" {
			if _, err := m.agents.Stop(ctx, w.Load.API, name, -1); err != nil {
				return fmt.Errorf("stop %s on %s: %w", name, c.Node, err)
			}
		}
	}
	if err := m.store.delete(ctx, name); err != nil {
		return err
	}
	m.log.Info("stopped", "container", name, "worker", c.Node)
	m.event(EventStopped, name, "stopped on %s and deregistered", cmp.Or(c.Node, "no worker"))
	return nil
}
