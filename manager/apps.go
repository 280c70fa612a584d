package manager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/internal/wire"
)

// AppState is an application's state in the desired state.
type AppState string

// Application states.
const (
	AppDeploying   AppState = "deploying"
	AppDeployed    AppState = "deployed"
	AppFailed      AppState = "failed"
	AppUndeploying AppState = "undeploying"
)

// DefaultServiceWait bounds how long a deploy waits for one service to
// run and pass (scale-out included) before it reports the service failed.
const DefaultServiceWait = 10 * time.Minute

// DeployRequest is the body of POST /v1/apps: an application definition
// file as the user wrote it.
type DeployRequest struct {
	File       string `json:"file"`
	Definition string `json:"definition"`
}

// AppRecord is an application's desired state in Consul KV
// (micado/<cluster>/apps/<name>), written before anything acts on it.
type AppRecord struct {
	Name       string    `json:"name"`
	File       string    `json:"file"`
	Definition string    `json:"definition"`
	State      AppState  `json:"state"`
	Error      string    `json:"error,omitempty"`
	UpdatedAt  time.Time `json:"updated_at"`

	index uint64 // the journal index of its last change
}

// ServiceStatus is one service of an application.
type ServiceStatus struct {
	Name      string   `json:"name"`    // as in the file
	Service   string   `json:"service"` // Consul service name: <app>-<name>
	Level     int      `json:"level"`   // dependency level: 0 starts first
	DependsOn []string `json:"depends_on,omitempty"`
	Desired   int      `json:"desired"`
	Running   int      `json:"running"`
	Passing   int      `json:"passing"`
	State     string   `json:"state"` // running, pending, waiting, failed
	Reasons   []string `json:"reasons,omitempty"`
}

// AppStatus answers GET /v1/apps/{name}.
type AppStatus struct {
	Name     string          `json:"name"`
	File     string          `json:"file"`
	State    AppState        `json:"state"`
	Error    string          `json:"error,omitempty"`
	Services []ServiceStatus `json:"services"`
}

// consulName is the Consul service of an application's service.
func consulName(app, svc string) string {
	if app == "" {
		return svc // a launched service: an application of its own
	}
	return app + "-" + svc
}

// envName turns a service name into an environment variable prefix.
func envName(svc string) string {
	return strings.ToUpper(strings.ReplaceAll(svc, "-", "_"))
}

// checkAppName refuses a name no application can have before it becomes
// part of a Consul key: a name taken from a URL may hold "/" and ".."
// segments, which Consul resolves, so "x/../../containers/web-1" would
// name another record.
func checkAppName(name string) error {
	if err := definitions.CheckAppName(name); err != nil {
		return &RequestError{Status: http.StatusBadRequest, Msg: err.Error()}
	}
	return nil
}

// putApp records an application's state (check-and-set on its record).
func (l *leader) putApp(ctx context.Context, a *AppRecord) error {
	a.UpdatedAt = time.Now().UTC()
	return l.store.Update(ctx, func(tx *Tx) error {
		cp := *a
		tx.PutApp(&cp)
		return nil
	})
}

// Deploy validates a definition and records it as the application's
// desired state; the deployment itself runs in the background, service by
// service in dependency order. A definition with errors changes nothing.
func (l *leader) Deploy(ctx context.Context, req DeployRequest) (AppStatus, error) {
	file := req.File
	if file == "" {
		file = "definition.yaml"
	}
	app, err := definitions.Parse(file, []byte(req.Definition))
	if err != nil {
		return AppStatus{}, &RequestError{Status: http.StatusBadRequest, Msg: err.Error()}
	}
	for _, s := range app.Services {
		name := consulName(app.Name, s.Name)
		for _, r := range l.store.Service(name) {
			if r.App != app.Name {
				return AppStatus{}, &RequestError{Status: http.StatusConflict,
					Msg: fmt.Sprintf("service %s of application %s would be named %s, which a container launched outside the application already uses", s.Name, app.Name, name)}
			}
		}
	}
	for _, s := range app.Services {
		if s.Scaling != nil && s.Scaling.Query != "" {
			if err := l.checkScaling(ctx, s.Scaling); err != nil {
				var re *RequestError
				if errors.As(err, &re) {
					re.Msg = fmt.Sprintf("%s: services.%s.scaling: %s", file, s.Name, strings.TrimPrefix(re.Msg, "scaling policy: "))
				}
				return AppStatus{}, err
			}
		}
	}
	rec := &AppRecord{Name: app.Name, File: file, Definition: req.Definition, State: AppDeploying, UpdatedAt: time.Now().UTC()}
	// The record and its scaling policies are written together, before
	// anything acts on them.
	if err := l.store.Update(ctx, func(tx *Tx) error {
		cp := *rec
		tx.PutApp(&cp)
		keep := map[string]bool{}
		for _, s := range app.Services {
			if s.Scaling == nil {
				continue
			}
			name := consulName(app.Name, s.Name)
			keep[name] = true
			p := &PolicyRecord{Service: name, App: app.Name, Scaling: *s.Scaling, UpdatedAt: rec.UpdatedAt}
			if old := tx.Policy(name); old != nil {
				p.Off = old.Off
			}
			tx.PutPolicy(p)
		}
		for _, p := range l.store.Policies() {
			if p.App == app.Name && !keep[p.Service] {
				tx.DeletePolicy(p.Service)
			}
		}
		return nil
	}); err != nil {
		return AppStatus{}, err
	}
	l.restartDeploy(app.Name)
	return l.AppStatus(ctx, app.Name)
}

// restartDeploy (re)starts the background deployment of an application,
// cancelling one in progress (a newer definition wins).
func (l *leader) restartDeploy(name string) {
	l.appsMu.Lock()
	defer l.appsMu.Unlock()
	if cancel, ok := l.deploying[name]; ok {
		cancel()
	}
	ctx, cancel := context.WithCancel(l.ctx)
	l.deploying[name] = cancel
	l.spawn(func(context.Context) {
		l.deployApp(ctx, name)
		l.appsMu.Lock()
		// A cancelled deployment no longer owns the entry: a newer
		// deployment or an undeploy does, and reconcileApps must keep
		// seeing it busy.
		if ctx.Err() == nil {
			delete(l.deploying, name)
		}
		l.appsMu.Unlock()
		cancel()
	})
}

// reconcileApps resumes deployments that a change of leader interrupted.
func (l *leader) reconcileApps(ctx context.Context) {
	for _, a := range l.store.Apps() {
		l.appsMu.Lock()
		_, busy := l.deploying[a.Name]
		l.appsMu.Unlock()
		if busy {
			continue
		}
		switch a.State {
		case AppDeploying:
			l.restartDeploy(a.Name)
		case AppUndeploying:
			name := a.Name
			l.spawn(func(ctx context.Context) { _ = l.Undeploy(ctx, name) })
		}
	}
}

// deployApp converges every service of the application, level by level:
// a service starts only after everything it depends on runs and passes.
func (l *leader) deployApp(ctx context.Context, name string) {
	m := l.m
	rec, ok := l.store.App(name)
	if !ok {
		return
	}
	app, err := definitions.Parse(rec.File, []byte(rec.Definition))
	if err != nil {
		return
	}
	levels, err := app.Levels()
	if err != nil {
		return
	}
	fail := func(err error) {
		if ctx.Err() != nil {
			return
		}
		cur := *rec
		cur.State, cur.Error = AppFailed, err.Error()
		_ = l.putApp(context.WithoutCancel(ctx), &cur)
		m.log.Warn("deploy failed", "app", name, "err", err)
	}
	for _, level := range levels {
		for _, svcName := range level {
			s, _ := app.Service(svcName)
			if err := l.convergeService(ctx, app, s); err != nil {
				fail(fmt.Errorf("service %s: %w", svcName, err))
				return
			}
		}
	}
	if ctx.Err() != nil {
		return
	}
	// Services removed from the file are stopped.
	keep := map[string]bool{}
	for _, s := range app.Services {
		keep[consulName(app.Name, s.Name)] = true
	}
	stopped := map[string]bool{}
	for _, r := range l.store.All() {
		if r.App == app.Name && !keep[r.Service] && !stopped[r.Service] {
			stopped[r.Service] = true
			_, _ = l.Stop(ctx, r.Service)
		}
	}
	cur := *rec
	cur.State, cur.Error = AppDeployed, ""
	_ = l.putApp(ctx, &cur)
	m.log.Info("deployed", "app", name)
}

// specHash identifies what a container runs, so a changed image or
// setting is noticed; link addresses are not part of it.
func specHash(s *definitions.Service) string {
	b, _ := json.Marshal(struct {
		Image, Role string
		Tags        []string
		Memory      int64
		Ports       []definitions.PortSpec
		Env         map[string]string
		Links       []string
		Pinned      bool
	}{s.Image, s.Role, s.Tags, s.Memory, s.Ports, s.Env, s.Links, s.Pinned})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// containersFor builds n new records for service s, named after the
// highest index in use.
func (l *leader) containersFor(app *definitions.App, s *definitions.Service, n int) []*Container {
	service := consulName(app.Name, s.Name)
	next := 1
	for _, r := range l.store.Service(service) {
		if i, err := strconv.Atoi(strings.TrimPrefix(r.Name, service+"-")); err == nil && i >= next {
			next = i + 1
		}
	}
	env := map[string]string{}
	for k, v := range s.Env {
		env[k] = v
	}
	if len(s.Links) > 0 {
		var names []string
		for _, ln := range s.Links {
			cn := consulName(app.Name, ln)
			names = append(names, cn)
			env[envName(ln)+"_SERVICE"] = cn
			env[envName(ln)+"_DNS"] = cn + ".service.consul"
			env[envName(ln)+"_ADDRS"] = strings.Join(l.passingAddrs(cn), ",")
		}
		env["MICADO_LINKS"] = strings.Join(names, ",")
		env["CONSUL_HTTP_ADDR"] = l.m.cfg.ConsulAddr
	}
	return newRecords(app, s, next, n, env, time.Now().UTC())
}

// newRecords builds n records for service s of app, numbered from next: the
// one record builder of launches (an application of one service, named
// ""), deployments and autoscaling. env is the service's environment with
// its link variables.
func newRecords(app *definitions.App, s *definitions.Service, next, n int, env map[string]string, now time.Time) []*Container {
	service := consulName(app.Name, s.Name)
	tags := []string{"role=" + s.Role}
	tags = append(tags, s.Tags...)
	var ports []wire.Port
	check := Check{Type: "none"}
	for i, p := range s.Ports {
		ports = append(ports, wire.Port{Container: p.Port, Protocol: p.Protocol})
		if i == 0 && p.Check != nil {
			switch {
			case p.Check.HTTP != "":
				check = Check{Type: "http", Path: p.Check.HTTP, Interval: p.Check.Interval}
			case p.Check.TCP:
				check = Check{Type: "tcp", Interval: p.Check.Interval}
			}
		} else if i == 0 && (p.Protocol == "" || p.Protocol == "tcp") {
			check = Check{Type: "tcp"}
		}
	}
	if len(env) == 0 {
		env = nil
	}
	spec := &Spec{Service: service, App: app.Name, Image: s.Image, Tags: tags, Memory: s.Memory, Ports: ports,
		Env: env, Check: check, Pinned: s.Pinned, SpecHash: specHash(s)}
	out := make([]*Container, n)
	for i := range out {
		out[i] = &Container{Name: fmt.Sprintf("%s-%d", service, next+i), Spec: spec, State: StateStarting, CreatedAt: now, UpdatedAt: now}
	}
	return out
}

// passingAddrs returns host:port of every passing container of a service,
// from memory.
func (l *leader) passingAddrs(service string) []string {
	var out []string
	for _, c := range l.store.Service(service) {
		if c.State == StateRunning && l.health(c) == HealthPassing && c.HostPort() != 0 {
			out = append(out, net.JoinHostPort(c.Address, strconv.Itoa(c.HostPort())))
		}
	}
	sort.Strings(out)
	return out
}

// health is a container's health as the registry's watch last told: a
// running container without a check counts as passing.
func (l *leader) health(c *Container) string {
	h := l.m.regs.healthOf(c.ServiceID())
	if h == "" && c.State == StateRunning && c.Check.Type == "none" {
		return HealthPassing
	}
	return h
}

// convergeService brings one service to its definition: more or fewer
// replicas, and containers with an outdated image or setting replaced one
// at a time, make before break. It returns when every replica runs and
// passes.
func (l *leader) convergeService(ctx context.Context, app *definitions.App, s *definitions.Service) error {
	service := consulName(app.Name, s.Name)
	hash := specHash(s)
	want := s.Replicas
	if s.Scaling != nil {
		// A scaled service keeps the replicas the autoscaler reached,
		// within the (new) bounds.
		if n, _ := l.scaleMembers(service); len(n) > 0 {
			want = min(max(len(n), s.Scaling.Min), s.Scaling.Max)
		}
	}
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var current, outdated []*Container
		for _, r := range l.store.Service(service) {
			if r.State == StateStopping {
				continue
			}
			if r.SpecHash == hash {
				current = append(current, r)
			} else {
				outdated = append(outdated, r)
			}
		}
		total := len(current) + len(outdated)
		switch {
		case total < want:
			if err := l.addReplicas(ctx, app, s, want-total); err != nil {
				return err
			}
			continue
		case total > want:
			// Fewer: stop outdated ones first, then the newest.
			victims := append(append([]*Container(nil), outdated...), reverse(current)...)
			for _, v := range victims[:total-want] {
				if _, err := l.Stop(ctx, v.Name); err != nil && !isNotFound(err) {
					return err
				}
			}
			continue
		case len(outdated) > 0:
			// Replace one at a time: a new copy first, then the old one.
			if err := l.addReplicas(ctx, app, s, 1); err != nil {
				return err
			}
			if err := l.waitService(ctx, service, hash, len(current)+1); err != nil {
				return err
			}
			if _, err := l.Stop(ctx, outdated[0].Name); err != nil && !isNotFound(err) {
				return err
			}
			continue
		}
		return l.waitService(ctx, service, hash, want)
	}
}

// isNotFound reports whether err says a container or service is gone.
func isNotFound(err error) bool {
	var re *RequestError
	return errors.Is(err, ErrNotFound) || (errors.As(err, &re) && re.Status == http.StatusNotFound)
}

func reverse(cs []*Container) []*Container {
	out := make([]*Container, len(cs))
	for i, c := range cs {
		out[len(cs)-1-i] = c
	}
	return out
}

func (l *leader) addReplicas(ctx context.Context, app *definitions.App, s *definitions.Service, n int) error {
	_, err := l.admit(ctx, l.containersFor(app, s, n), nil, nil)
	return err
}

// waitService waits until want containers of the service with the given
// spec run and pass, failing early on a failed container.
func (l *leader) waitService(ctx context.Context, service, hash string, want int) error {
	deadline := time.Now().Add(l.m.cfg.ServiceWait)
	for {
		ok := 0
		var reasons []string
		for _, c := range l.store.Service(service) {
			if c.SpecHash != hash {
				continue
			}
			if c.State == StateFailed {
				return fmt.Errorf("%s failed: %s", c.Name, c.Reason)
			}
			if c.State == StateRunning && l.health(c) == HealthPassing {
				ok++
			} else if c.Reason != "" {
				reasons = append(reasons, c.Name+": "+c.Reason)
			}
		}
		if ok >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d containers pass after %s: %s", ok, want, l.m.cfg.ServiceWait, strings.Join(reasons, "; "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Undeploy stops every container of an application and forgets it. The
// record is marked first, so a new leader finishes the job.
func (l *leader) Undeploy(ctx context.Context, name string) error {
	if err := checkAppName(name); err != nil {
		return err
	}
	rec, ok := l.store.App(name)
	if !ok {
		return &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no application named %s (see micado apps)", name)}
	}
	// Mark the application busy while it is undeployed, so that
	// reconcileApps does not start a second undeploy that would write the
	// record again after this one deleted it. A deploy that starts
	// meanwhile cancels the mark and owns the entry.
	mark, unmark := context.WithCancel(context.Background())
	l.appsMu.Lock()
	if cancel, ok := l.deploying[name]; ok {
		cancel()
	}
	l.deploying[name] = unmark
	l.appsMu.Unlock()
	defer func() {
		l.appsMu.Lock()
		if mark.Err() == nil {
			delete(l.deploying, name)
		}
		l.appsMu.Unlock()
		unmark()
	}()
	cur := *rec
	cur.State = AppUndeploying
	if err := l.putApp(ctx, &cur); err != nil {
		return err
	}
	done := map[string]bool{}
	for _, r := range l.store.All() {
		if r.App == name && !done[r.Service] {
			done[r.Service] = true
			if _, err := l.Stop(ctx, r.Service); err != nil && !isNotFound(err) {
				var re *RequestError
				if !errors.As(err, &re) {
					return err
				}
			}
		}
	}
	return l.store.Update(ctx, func(tx *Tx) error {
		tx.DeleteApp(name)
		for _, p := range l.store.Policies() {
			if p.App == name {
				tx.DeletePolicy(p.Service)
			}
		}
		return nil
	})
}

// AppStatus reports an application service by service.
func (l *leader) AppStatus(_ context.Context, name string) (AppStatus, error) {
	if err := checkAppName(name); err != nil {
		return AppStatus{}, err
	}
	rec, ok := l.store.App(name)
	if !ok {
		return AppStatus{}, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no application named %s (see micado apps)", name)}
	}
	st := AppStatus{Name: rec.Name, File: rec.File, State: rec.State, Error: rec.Error}
	app, err := definitions.Parse(rec.File, []byte(rec.Definition))
	if err != nil {
		return st, nil
	}
	levels, _ := app.Levels()
	level := map[string]int{}
	for i, lv := range levels {
		for _, n := range lv {
			level[n] = i
		}
	}
	for _, s := range app.Services {
		ss := ServiceStatus{Name: s.Name, Service: consulName(app.Name, s.Name), Level: level[s.Name], DependsOn: s.DependsOn, Desired: s.Replicas}
		if s.Scaling != nil {
			// The autoscaler owns the count: what it has now, within
			// the policy's bounds.
			if members, _ := l.scaleMembers(ss.Service); len(members) > 0 {
				ss.Desired = min(max(len(members), s.Scaling.Min), s.Scaling.Max)
			}
		}
		for _, c := range l.store.Service(ss.Service) {
			if c.State == StateStopping {
				continue
			}
			switch {
			case c.State == StateRunning && l.health(c) == HealthPassing:
				ss.Running++
				ss.Passing++
			case c.State == StateRunning:
				ss.Running++
			case c.Reason != "":
				ss.Reasons = append(ss.Reasons, c.Name+" "+string(c.State)+": "+c.Reason)
			}
		}
		switch {
		case ss.Passing >= ss.Desired:
			ss.State = "running"
		case len(ss.Reasons) > 0 || ss.Running > 0:
			ss.State = "pending"
		default:
			ss.State = "waiting"
			if len(s.DependsOn) > 0 {
				ss.Reasons = append(ss.Reasons, "waits for "+strings.Join(s.DependsOn, ", "))
			}
		}
		if st.State == AppFailed && strings.HasPrefix(st.Error, "service "+s.Name+":") {
			ss.State = "failed"
			ss.Reasons = append(ss.Reasons, strings.TrimPrefix(st.Error, "service "+s.Name+": "))
		}
		st.Services = append(st.Services, ss)
	}
	return st, nil
}

// Apps lists every application's status.
func (l *leader) Apps(ctx context.Context) ([]AppStatus, error) {
	out := []AppStatus{}
	for _, r := range l.store.Apps() {
		st, err := l.AppStatus(ctx, r.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}
