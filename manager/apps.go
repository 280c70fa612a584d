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

	"github.com/hashicorp/consul/api"
	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/worker"
)

// App states.
const (
	AppDeploying   = "deploying"
	AppDeployed    = "deployed"
	AppFailed      = "failed"
	AppUndeploying = "undeploying"
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
	State      string    `json:"state"`
	Error      string    `json:"error,omitempty"`
	UpdatedAt  time.Time `json:"updated_at"`
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
	State    string          `json:"state"`
	Error    string          `json:"error,omitempty"`
	Services []ServiceStatus `json:"services"`
}

// consulName is the Consul service of an application's service.
func consulName(app, svc string) string { return app + "-" + svc }

// envName turns a service name into an environment variable prefix.
func envName(svc string) string {
	return strings.ToUpper(strings.ReplaceAll(svc, "-", "_"))
}

func (s *store) appKey(name string) string { return s.prefix + "apps/" + name }

// checkAppName refuses a name no application can have before it becomes
// part of a Consul key: a name taken from a URL may hold "/" and ".."
// segments, which Consul resolves, so "x/../../containers/web-1" would
// name another record.
func checkAppName(name string) error {
	if !nameRe.MatchString(name) {
		return &RequestError{Status: http.StatusBadRequest,
			Msg: fmt.Sprintf("application name %q is not valid: use 1 to 48 lowercase letters, digits and '-', starting and ending with a letter or digit", name)}
	}
	return nil
}

func (s *store) apps(ctx context.Context) ([]*AppRecord, error) {
	pairs, _, err := s.kv.List(s.prefix+"apps/", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read applications from Consul KV: %w", err)
	}
	var out []*AppRecord
	for _, p := range pairs {
		var a AppRecord
		if err := json.Unmarshal(p.Value, &a); err != nil {
			return nil, fmt.Errorf("application record %s is damaged: %w", p.Key, err)
		}
		out = append(out, &a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *store) app(ctx context.Context, name string) (*AppRecord, error) {
	p, _, err := s.kv.Get(s.appKey(name), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, ErrNotFound
	}
	var a AppRecord
	return &a, json.Unmarshal(p.Value, &a)
}

func (s *store) putApp(ctx context.Context, a *AppRecord) error {
	a.UpdatedAt = time.Now().UTC()
	b, _ := json.Marshal(a)
	_, err := s.kv.Put(&api.KVPair{Key: s.appKey(a.Name), Value: b}, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

func (s *store) deleteApp(ctx context.Context, name string) error {
	_, err := s.kv.Delete(s.appKey(name), (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// Deploy validates a definition and records it as the application's
// desired state; the deployment itself runs in the background, service by
// service in dependency order. A definition with errors changes nothing.
func (m *Manager) Deploy(ctx context.Context, req DeployRequest) (AppStatus, error) {
	file := req.File
	if file == "" {
		file = "definition.yaml"
	}
	app, err := definitions.Parse(file, []byte(req.Definition))
	if err != nil {
		return AppStatus{}, &RequestError{Status: http.StatusBadRequest, Msg: err.Error()}
	}
	recs, err := m.store.list(ctx)
	if err != nil {
		return AppStatus{}, err
	}
	for _, s := range app.Services {
		name := consulName(app.Name, s.Name)
		for _, r := range recs {
			if r.Service == name && r.App != app.Name {
				return AppStatus{}, &RequestError{Status: http.StatusConflict,
					Msg: fmt.Sprintf("service %s of application %s would be named %s, which a container launched outside the application already uses", s.Name, app.Name, name)}
			}
		}
	}
	rec := &AppRecord{Name: app.Name, File: file, Definition: req.Definition, State: AppDeploying}
	if err := m.store.putApp(ctx, rec); err != nil {
		return AppStatus{}, err
	}
	m.restartDeploy(app.Name)
	return m.AppStatus(ctx, app.Name)
}

// restartDeploy (re)starts the background deployment of an application,
// cancelling one in progress (a newer definition wins).
func (m *Manager) restartDeploy(name string) {
	m.appsMu.Lock()
	defer m.appsMu.Unlock()
	if cancel, ok := m.deploying[name]; ok {
		cancel()
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.deploying[name] = cancel
	go func() {
		m.deployApp(ctx, name)
		m.appsMu.Lock()
		// A cancelled deployment no longer owns the entry: a newer
		// deployment or an undeploy does, and reconcileApps must keep
		// seeing it busy.
		if ctx.Err() == nil {
			delete(m.deploying, name)
		}
		m.appsMu.Unlock()
		cancel()
	}()
}

// reconcileApps resumes deployments that a manager restart interrupted.
func (m *Manager) reconcileApps(ctx context.Context) {
	apps, err := m.store.apps(ctx)
	if err != nil {
		return
	}
	for _, a := range apps {
		m.appsMu.Lock()
		_, busy := m.deploying[a.Name]
		m.appsMu.Unlock()
		if busy {
			continue
		}
		switch a.State {
		case AppDeploying:
			m.restartDeploy(a.Name)
		case AppUndeploying:
			go func(name string) { _ = m.Undeploy(context.WithoutCancel(ctx), name) }(a.Name)
		}
	}
}

// deployApp converges every service of the application, level by level:
// a service starts only after everything it depends on runs and passes.
func (m *Manager) deployApp(ctx context.Context, name string) {
	rec, err := m.store.app(ctx, name)
	if err != nil {
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
		rec.State, rec.Error = AppFailed, err.Error()
		_ = m.store.putApp(context.WithoutCancel(ctx), rec)
		m.log.Warn("deploy failed", "app", name, "err", err)
	}
	for _, level := range levels {
		for _, svcName := range level {
			s, _ := app.Service(svcName)
			if err := m.convergeService(ctx, app, s); err != nil {
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
	recs, _ := m.store.list(ctx)
	stopped := map[string]bool{}
	for _, r := range recs {
		if r.App == app.Name && !keep[r.Service] && !stopped[r.Service] {
			stopped[r.Service] = true
			_, _ = m.Stop(ctx, r.Service)
		}
	}
	rec.State, rec.Error = AppDeployed, ""
	_ = m.store.putApp(ctx, rec)
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
func (m *Manager) containersFor(ctx context.Context, app *definitions.App, s *definitions.Service, recs []*Container, n int) ([]*Container, error) {
	service := consulName(app.Name, s.Name)
	next := 1
	for _, r := range recs {
		if r.Service != service {
			continue
		}
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
		for _, l := range s.Links {
			ln := consulName(app.Name, l)
			names = append(names, ln)
			env[envName(l)+"_SERVICE"] = ln
			env[envName(l)+"_DNS"] = ln + ".service.consul"
			env[envName(l)+"_ADDRS"] = strings.Join(m.passingAddrs(ctx, ln), ",")
		}
		env["MICADO_LINKS"] = strings.Join(names, ",")
		env["CONSUL_HTTP_ADDR"] = m.cfg.ConsulAddr
	}
	tags := []string{"role=" + s.Role}
	tags = append(tags, s.Tags...)
	var ports []worker.Port
	check := Check{Type: "none"}
	for i, p := range s.Ports {
		ports = append(ports, worker.Port{Container: p.Port, Protocol: p.Protocol})
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
	now := time.Now().UTC()
	out := make([]*Container, n)
	for i := range out {
		out[i] = &Container{
			Name: fmt.Sprintf("%s-%d", service, next+i), Service: service, App: app.Name, Image: s.Image,
			Tags: tags, Memory: s.Memory, Ports: ports, Env: env, Check: check, Pinned: s.Pinned,
			SpecHash: specHash(s), State: StateStarting, CreatedAt: now, UpdatedAt: now,
		}
	}
	return out, nil
}

// passingAddrs returns host:port of every passing instance of a service.
func (m *Manager) passingAddrs(ctx context.Context, service string) []string {
	es, _, err := m.consul.Health().Service(service, "", true, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range es {
		addr := e.Service.Address
		if addr == "" {
			addr = e.Node.Address
		}
		out = append(out, net.JoinHostPort(addr, strconv.Itoa(e.Service.Port)))
	}
	sort.Strings(out)
	return out
}

// convergeService brings one service to its definition: more or fewer
// replicas, and containers with an outdated image or setting replaced one
// at a time, make before break. It returns when every replica runs and
// passes.
func (m *Manager) convergeService(ctx context.Context, app *definitions.App, s *definitions.Service) error {
	service := consulName(app.Name, s.Name)
	hash := specHash(s)
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		recs, err := m.store.list(ctx)
		if err != nil {
			return err
		}
		var current, outdated []*Container
		for _, r := range recs {
			if r.Service != service || r.State == StateStopping {
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
		case total < s.Replicas:
			if err := m.addReplicas(ctx, app, s, recs, s.Replicas-total); err != nil {
				return err
			}
			continue
		case total > s.Replicas:
			// Fewer: stop outdated ones first, then the newest.
			victims := append(append([]*Container(nil), outdated...), reverse(current)...)
			for _, v := range victims[:total-s.Replicas] {
				if _, err := m.Stop(ctx, v.Name); err != nil && !errors.Is(err, ErrNotFound) {
					return err
				}
			}
			continue
		case len(outdated) > 0:
			// Replace one at a time: a new copy first, then the old one.
			if err := m.addReplicas(ctx, app, s, recs, 1); err != nil {
				return err
			}
			if err := m.waitService(ctx, service, hash, len(current)+1); err != nil {
				return err
			}
			if _, err := m.Stop(ctx, outdated[0].Name); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			continue
		}
		return m.waitService(ctx, service, hash, s.Replicas)
	}
}

func reverse(cs []*Container) []*Container {
	out := make([]*Container, len(cs))
	for i, c := range cs {
		out[len(cs)-1-i] = c
	}
	return out
}

func (m *Manager) addReplicas(ctx context.Context, app *definitions.App, s *definitions.Service, recs []*Container, n int) error {
	cs, err := m.containersFor(ctx, app, s, recs, n)
	if err != nil {
		return err
	}
	_, err = m.admit(ctx, cs, nil)
	return err
}

// waitService waits until want containers of the service with the given
// spec run and pass, failing early on a failed container.
func (m *Manager) waitService(ctx context.Context, service, hash string, want int) error {
	deadline := time.Now().Add(m.cfg.ServiceWait)
	for {
		cs, err := m.Containers(ctx)
		if err != nil {
			return err
		}
		ok := 0
		var reasons []string
		for _, c := range cs {
			if c.Service != service || c.SpecHash != hash {
				continue
			}
			if c.State == StateFailed {
				return fmt.Errorf("%s failed: %s", c.Name, c.Reason)
			}
			if c.State == StateRunning && c.Health == api.HealthPassing {
				ok++
			} else if c.Reason != "" {
				reasons = append(reasons, c.Name+": "+c.Reason)
			}
		}
		if ok >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d containers pass after %s: %s", ok, want, m.cfg.ServiceWait, strings.Join(reasons, "; "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Undeploy stops every container of an application and forgets it. The
// record is marked first, so a restart finishes the job.
func (m *Manager) Undeploy(ctx context.Context, name string) error {
	if err := checkAppName(name); err != nil {
		return err
	}
	rec, err := m.store.app(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no application named %s (see micado apps)", name)}
	}
	if err != nil {
		return err
	}
	// Mark the application busy while it is undeployed, so that
	// reconcileApps does not start a second undeploy that would write the
	// record again after this one deleted it. A deploy that starts
	// meanwhile cancels the mark and owns the entry.
	mark, unmark := context.WithCancel(context.Background())
	m.appsMu.Lock()
	if cancel, ok := m.deploying[name]; ok {
		cancel()
	}
	m.deploying[name] = unmark
	m.appsMu.Unlock()
	defer func() {
		m.appsMu.Lock()
		if mark.Err() == nil {
			delete(m.deploying, name)
		}
		m.appsMu.Unlock()
		unmark()
	}()
	rec.State = AppUndeploying
	if err := m.store.putApp(ctx, rec); err != nil {
		return err
	}
	recs, err := m.store.list(ctx)
	if err != nil {
		return err
	}
	done := map[string]bool{}
	for _, r := range recs {
		if r.App == name && !done[r.Service] {
			done[r.Service] = true
			if _, err := m.Stop(ctx, r.Service); err != nil && !errors.Is(err, ErrNotFound) {
				var re *RequestError
				if !errors.As(err, &re) {
					return err
				}
			}
		}
	}
	return m.store.deleteApp(ctx, name)
}

// AppStatus reports an application service by service.
func (m *Manager) AppStatus(ctx context.Context, name string) (AppStatus, error) {
	if err := checkAppName(name); err != nil {
		return AppStatus{}, err
	}
	rec, err := m.store.app(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return AppStatus{}, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no application named %s (see micado apps)", name)}
	}
	if err != nil {
		return AppStatus{}, err
	}
	st := AppStatus{Name: rec.Name, File: rec.File, State: rec.State, Error: rec.Error}
	app, err := definitions.Parse(rec.File, []byte(rec.Definition))
	if err != nil {
		return st, nil
	}
	levels, _ := app.Levels()
	level := map[string]int{}
	for i, l := range levels {
		for _, n := range l {
			level[n] = i
		}
	}
	cs, err := m.Containers(ctx)
	if err != nil {
		return st, err
	}
	for _, s := range app.Services {
		ss := ServiceStatus{Name: s.Name, Service: consulName(app.Name, s.Name), Level: level[s.Name], DependsOn: s.DependsOn, Desired: s.Replicas}
		for _, c := range cs {
			if c.Service != ss.Service || c.State == StateStopping {
				continue
			}
			switch {
			case c.State == StateRunning && c.Health == api.HealthPassing:
				ss.Running++
				ss.Passing++
			case c.State == StateRunning:
				ss.Running++
			case c.Reason != "":
				ss.Reasons = append(ss.Reasons, c.Name+" "+c.State+": "+c.Reason)
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
func (m *Manager) Apps(ctx context.Context) ([]AppStatus, error) {
	recs, err := m.store.apps(ctx)
	if err != nil {
		return nil, err
	}
	out := []AppStatus{}
	for _, r := range recs {
		st, err := m.AppStatus(ctx, r.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}
