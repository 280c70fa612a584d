package manager

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/internal/wire"
)

// errStateChanged aborts an update whose record is no longer in the state
// the caller acted on.
var errStateChanged = errors.New("the record changed meanwhile")

// Launch validates req, proves that every replica fits, writes the desired
// state to the journal, and only then starts the containers in the
// background. A request that is invalid, does not fit or cannot be
// written changes nothing, whatever its size.
func (l *leader) Launch(ctx context.Context, req LaunchRequest) (LaunchResponse, error) {
	cs, err := validate(req, time.Now().UTC())
	if err != nil {
		return LaunchResponse{}, err
	}
	service := cs[0].Service
	var withPolicy func(*Tx) error
	if req.Scaling != nil {
		if err := l.checkScaling(ctx, req.Scaling); err != nil {
			return LaunchResponse{}, err
		}
		pol := PolicyRecord{Service: service, Scaling: *req.Scaling, UpdatedAt: time.Now().UTC()}
		// A new service's policy is written with its containers.
		withPolicy = func(tx *Tx) error {
			cp := pol
			tx.PutPolicy(&cp)
			return nil
		}
	}
	return l.admit(ctx, cs, withPolicy, func() error {
		_, named := l.store.Container(service)
		if len(l.store.Service(service)) > 0 || named || l.store.heldName("service:"+service) || l.store.heldName(service) {
			return &RequestError{Status: http.StatusConflict,
				Msg: fmt.Sprintf("a service named %s already exists: stop it first (micado stop %s) or choose another --name", service, service)}
		}
		return nil
	})
}

// admit places new container records of one service together, holds
// those that wait for scale-out, refuses the whole set if any can never be
// placed, writes them to the journal all at once, and only then starts
// them. check may refuse the set given the current records.
func (l *leader) admit(ctx context.Context, cs []*Container, inTx func(*Tx) error, check func() error) (LaunchResponse, error) {
	m := l.m
	service := cs[0].Service
	l.placeMu.Lock()
	if check != nil {
		if err := check(); err != nil {
			l.placeMu.Unlock()
			return LaunchResponse{}, err
		}
	}
	snap := l.snapshot()
	booting := l.withBooting(snap)
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
			if why := l.canScaleFor(d.Request); why != "" {
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
		l.placeMu.Unlock()
		msg := failed[0].Reason
		if len(cs) > 1 {
			msg = fmt.Sprintf("%d of %d replicas of %s cannot be placed: %s", len(failed), len(cs), service, msg)
		}
		if hint := tagHint(snap, cs[0].Tags); hint != "" {
			msg += " " + hint
		}
		return LaunchResponse{}, &RequestError{Status: http.StatusUnprocessableEntity, Msg: msg, Decisions: decisions}
	}
	for _, c := range cs {
		if l.store.heldName(c.Name) {
			l.placeMu.Unlock()
			return LaunchResponse{}, &RequestError{Status: http.StatusConflict, Msg: fmt.Sprintf("a container named %s is being created", c.Name)}
		}
	}
	// Placement may go on for other requests while these records are
	// written: they hold their memory and names meanwhile.
	unhold := l.store.hold(cs)
	l.placeMu.Unlock()
	err := l.store.Update(ctx, func(tx *Tx) error {
		for _, c := range cs {
			if err := tx.Create(c.clone()); err != nil {
				return err
			}
		}
		if inTx != nil {
			return inTx(tx)
		}
		return nil
	})
	unhold()
	if errors.Is(err, ErrExists) {
		return LaunchResponse{}, &RequestError{Status: http.StatusConflict, Msg: fmt.Sprintf("a container of service %s already exists: %v", service, err)}
	}
	if err != nil {
		return LaunchResponse{}, fmt.Errorf("record the launch of %s: %w", service, err)
	}
	for i, c := range cs {
		if c.State == StatePending {
			m.log.Info("held", "container", c.Name, "reason", decisions[i].Reason)
			m.event(EventPending, c.Name, "%s", decisions[i].Reason)
			continue
		}
		m.log.Debug("placed", "container", c.Name, "worker", c.Node, "reason", decisions[i].Reason)
		m.event(EventPlaced, c.Name, "%s", decisions[i].Reason)
		name := c.Name
		l.spawn(func(ctx context.Context) { l.start(ctx, name) })
	}
	if held > 0 {
		l.spawn(l.placePending)
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

// startRequest is what an agent needs to run c as generation gen. A
// container with links (MICADO_LINKS) also gets the Consul discovery
// token, when one is configured, as a read-only file and
// CONSUL_HTTP_TOKEN_FILE naming it: the token exists in this request
// only, never in the record (Consul KV, micado ps), nor in the
// container's environment.
func (m *Manager) startRequest(c *Container, gen int) wire.StartRequest {
	r := wire.StartRequest{Instance: c.Name, Service: c.Service, App: c.App, Image: c.Image, Memory: c.Memory,
		Ports: c.Ports, Env: c.Env, Generation: gen}
	if m.discoveryToken != "" && c.Env["MICADO_LINKS"] != "" {
		env := make(map[string]string, len(c.Env)+1)
		for k, v := range c.Env {
			env[k] = v
		}
		env["CONSUL_HTTP_TOKEN_FILE"] = DiscoveryTokenPath
		r.Env = env
		r.Files = []wire.File{{Path: DiscoveryTokenPath, Mode: DiscoveryTokenMode, Data: []byte(m.discoveryToken)}}
	}
	return r
}

// DiscoveryTokenPath is where a linked container finds its Consul token
// (Config.ConsulDiscoveryTokenFile); CONSUL_HTTP_TOKEN_FILE names it.
const DiscoveryTokenPath = "/run/secrets/micado-consul-token"

// DiscoveryTokenMode lets any user of the container read the token: it is
// the container's own, and images need not run as root.
const DiscoveryTokenMode = 0o444

// ReadDiscoveryToken reads the Consul discovery token from file, or says
// why it cannot (never quoting the contents).
func ReadDiscoveryToken(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("cannot read the Consul discovery token (--consul-discovery-token-file): %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("the Consul discovery token file %s (--consul-discovery-token-file) is empty", file)
	}
	if strings.ContainsAny(tok, "\r\n") {
		return "", fmt.Errorf("the Consul discovery token file %s (--consul-discovery-token-file) has more than one line", file)
	}
	return tok, nil
}

// start runs one placed container on its worker and registers it. On a
// transient failure the record stays "starting" and the next
// reconciliation tries again; a permanent one (the image does not exist)
// marks it failed with the reason.
func (l *leader) start(ctx context.Context, name string) {
	m := l.m
	if !l.claim(name) {
		return
	}
	defer l.release(name)
	c, ok := l.store.Container(name)
	if !ok || c.State != StateStarting || c.Node == "" {
		return
	}
	w, ok := m.members.get(c.Node)
	if !ok || w.Status != MemberAlive || w.Load.API == "" {
		return // reconciliation re-places it if the worker is gone
	}
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	info, err := l.agents.Start(sctx, w.Load.API, m.startRequest(c, c.Generation))
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		permanent := wire.IsNotFound(err)
		m.log.Warn("start failed", "container", name, "worker", c.Node, "permanent", permanent, "err", err)
		if permanent {
			m.event(EventFailed, name, "cannot start on %s: %v", c.Node, err)
		} else {
			m.event(EventFailed, name, "start on %s failed, will retry: %v", c.Node, err)
		}
		_, _ = l.store.Modify(ctx, name, func(c *Container) error {
			if c.State != StateStarting {
				return errStateChanged
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
	c, err = l.store.Modify(ctx, name, func(c *Container) error {
		if c.State != StateStarting || c.Node != info.Node {
			return errStateChanged
		}
		adopt(c, info.Node, info.ID, info.Address, info.Ports)
		return nil
	})
	if errors.Is(err, errStateChanged) || errors.Is(err, ErrNotFound) {
		// Stopped (or moved) while starting: this copy is not wanted.
		m.log.Info("container was stopped while starting; removing the new copy", "container", name)
		_, _ = l.agents.Stop(ctx, w.Load.API, name, info.Generation)
		return
	}
	if err != nil {
		return // not recorded; reconciliation adopts the copy
	}
	if err := l.register(ctx, c); err != nil {
		m.log.Warn("registration failed; will retry", "container", name, "err", err)
		return
	}
	m.log.Debug("running", "container", name, "worker", c.Node, "address", c.Address, "port", c.HostPort())
	m.event(EventRunning, name, "running on %s at %s:%d, registered in Consul as %s", c.Node, c.Address, c.HostPort(), c.ServiceID())
}

// adopt records what a worker reports about a running copy.
func adopt(c *Container, node, id, address string, ports []wire.Binding) {
	c.State = StateRunning
	c.Reason = ""
	c.Node = node
	c.ContainerID = id
	c.Address = address
	c.Bindings = ports
	c.UpdatedAt = time.Now().UTC()
}

// stopConcurrency bounds the stops of one request running at once.
const stopConcurrency = 16

// Stop stops a container instance, or every instance of a service, by
// name. The records are marked stopping in the journal first, so a crash
// midway finishes the job on restart.
func (l *leader) Stop(ctx context.Context, name string) ([]string, error) {
	var names []string
	if _, ok := l.store.Container(name); ok {
		names = []string{name}
	} else {
		for _, c := range l.store.Service(name) {
			names = append(names, c.Name)
		}
	}
	if _, isService := l.store.Policy(name); isService && (len(names) == 0 || names[0] != name) {
		// The policy goes first: a crash midway leaves containers to
		// stop again, never a policy that would scale them back up.
		if err := l.store.Update(ctx, func(tx *Tx) error {
			tx.DeletePolicy(name)
			return nil
		}); err != nil {
			return nil, err
		}
	}
	if len(names) == 0 {
		return nil, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no container or service named %s (see micado ps)", name)}
	}
	now := time.Now().UTC()
	if err := l.store.UpdateEach(ctx, names, func(c *Container) bool {
		if c.State == StateStopping {
			return false
		}
		c.State, c.UpdatedAt = StateStopping, now
		return true
	}); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, stopConcurrency)
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := l.stopOne(ctx, n); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return names, errors.Join(errs...)
}

// stopOne deregisters, stops and forgets one container that is marked
// stopping.
func (l *leader) stopOne(ctx context.Context, name string) error {
	m := l.m
	if err := l.claimWait(ctx, name); err != nil {
		return err
	}
	defer l.release(name)
	c, ok := l.store.Container(name)
	if !ok || c.State != StateStopping {
		return nil
	}
	if err := m.deps.Registry.Deregister(ctx, c.ServiceID()); err != nil {
		return fmt.Errorf("deregister %s: %w", name, err)
	}
	m.regs.drop(c.Name, c.Generation)
	if c.Move != nil {
		l.deregister(ctx, c.Name, c.Move.Generation)
		if w, ok := m.members.get(c.Move.Node); ok && w.Status == MemberAlive && w.Load.API != "" {
			_, _ = l.agents.Stop(ctx, w.Load.API, name, c.Move.Generation)
		}
	}
	if c.Node != "" {
		if w, ok := m.members.get(c.Node); ok && w.Status == MemberAlive && w.Load.API != "" {
			if _, err := l.agents.Stop(ctx, w.Load.API, name, -1); err != nil {
				return fmt.Errorf("stop %s on %s: %w", name, c.Node, err)
			}
		}
	}
	err := l.store.Update(ctx, func(tx *Tx) error {
		if cur := tx.peek(name); cur == nil || cur.State != StateStopping {
			return errStateChanged
		}
		tx.Delete(name)
		return nil
	})
	if errors.Is(err, errStateChanged) {
		return nil
	}
	if err != nil {
		return err
	}
	m.log.Debug("stopped", "container", name, "worker", c.Node)
	m.event(EventStopped, name, "stopped on %s and deregistered", cmp.Or(c.Node, "no worker"))
	return nil
}
