package manager

import (
	"bufio"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/internal/wire"
)

// MaxBodyBytes limits API request bodies.
const MaxBodyBytes = 1 << 20

// Handler returns the manager's versioned JSON API.
//
//	GET    /v1/status            cluster summary, and which manager leads
//	GET    /v1/nodes             workers and managers, with their load
//	GET    /v1/containers        containers and their health (?service=, ?node=, ?state=)
//	GET    /v1/containers/{name} one instance, or every instance of a service
//	POST   /v1/containers        launch (LaunchRequest)
//	DELETE /v1/containers/{name} stop an instance or a whole service
//	GET    /v1/containers/{name}/explain  why it is where it is, or still pending
//	GET    /v1/events?since=SEQ&limit=N&wait=30s  recent decisions; wait long-polls
//	POST   /v1/consolidate       run a scale-in round now (ConsolidateRequest)
//	GET    /v1/autoscale?history=1  scaling policies, their metrics and last decisions; node alerts
//	GET    /v1/autoscale/{service}  one policy with its last hour
//	PUT    /v1/autoscale/{service}  turn a policy on or off, or set a launched service's (AutoscaleChange)
//	POST   /v1/services/{service}/scale  set the replicas by hand (ScaleRequest)
//	GET    /metrics              Prometheus metrics (metrics.go); needs the API token too
//	GET    /v1/join/micado       the micado binary, for a new instance's join token (join.go)
//	POST   /v1/join              spend a new instance's join token for the cluster key
//
// Every /v1 call but the two join calls (served only with a Bootstrap)
// needs the API token; GET /ui/ (the dashboard's static
// files, see ui.go) and the redirect of / to it do not. The leader serves
// /v1 from memory; a standby forwards it to the leader (forward.go).
func (m *Manager) Handler() http.Handler {
	mux := http.NewServeMux()
	lead := func(h func(*leader, http.ResponseWriter, *http.Request)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			l := m.current()
			if l == nil {
				m.forward(w, r)
				return
			}
			h(l, w, r)
		}
	}
	mux.HandleFunc("GET /v1/status", lead(m.handleStatus))
	mux.HandleFunc("GET /v1/nodes", lead(m.handleNodes))
	mux.HandleFunc("GET /v1/containers", lead(m.handleList))
	mux.HandleFunc("GET /v1/containers/{name}", lead(m.handleGet))
	mux.HandleFunc("GET /v1/containers/{name}/explain", lead(m.handleExplain))
	mux.HandleFunc("GET /v1/events", lead(m.handleEvents))
	mux.HandleFunc("POST /v1/containers", lead(m.handleLaunch))
	mux.HandleFunc("DELETE /v1/containers/{name}", lead(m.handleStop))
	mux.HandleFunc("POST /v1/consolidate", lead(m.handleConsolidate))
	mux.HandleFunc("GET /v1/apps", lead(m.handleApps))
	mux.HandleFunc("GET /v1/apps/{name}", lead(m.handleApp))
	mux.HandleFunc("POST /v1/apps", lead(m.handleDeploy))
	mux.HandleFunc("DELETE /v1/apps/{name}", lead(m.handleUndeploy))
	mux.HandleFunc("GET /v1/autoscale", lead(m.handleAutoscale))
	mux.HandleFunc("GET /v1/autoscale/{service}", lead(m.handleServiceAutoscale))
	mux.HandleFunc("PUT /v1/autoscale/{service}", lead(m.handleChangeAutoscale))
	mux.HandleFunc("POST /v1/services/{service}/scale", lead(m.handleScale))
	mux.Handle("GET /metrics", m.metricsHandler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path)})
	})
	if m.cfg.Bootstrap == nil {
		return m.withUI(m.auth(mux))
	}
	// New instances authenticate with their join token, not the API token.
	outer := http.NewServeMux()
	outer.HandleFunc("GET "+cloudapi.JoinBinaryPath, lead(m.handleJoinBinary))
	outer.HandleFunc("POST "+cloudapi.JoinPath, lead(m.handleJoin))
	outer.Handle("/", m.auth(mux))
	return m.withUI(outer)
}

// auth admits requests bearing the API token, when one is configured.
func (m *Manager) auth(h http.Handler) http.Handler {
	if m.cfg.APIToken == "" {
		return h
	}
	want := []byte("Bearer " + m.cfg.APIToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="micado"`)
			writeErr(w, &RequestError{Status: http.StatusUnauthorized, Msg: "missing or wrong API token"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (m *Manager) handleStatus(l *leader, w http.ResponseWriter, r *http.Request) {
	n := 0
	for _, wk := range m.members.workers() {
		if wk.Status == MemberAlive {
			n++
		}
	}
	managers := 0
	for _, mg := range m.members.managers() {
		if mg.Status == MemberAlive {
			managers++
		}
	}
	writeJSON(w, http.StatusOK, Status{Cluster: m.cfg.Cluster, Version: m.cfg.Version, Workers: n, Containers: l.store.Len(),
		Strategy: string(m.cfg.Placement.Strategy), Leader: m.cfg.NodeName, LeaderSince: l.since.UTC(), Term: l.lease.Term(),
		Managers: max(managers, 1)})
}

func (m *Manager) handleNodes(l *leader, w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, l.Nodes())
}

// Nodes returns every worker with its load, then every manager, as the API
// shows them.
func (l *leader) Nodes() []MemberView {
	m := l.m
	snap := l.snapshot()
	free := map[string]int64{}
	reserved := map[string]int64{}
	count := map[string]int{}
	for i := range snap.Workers {
		wk := &snap.Workers[i]
		free[wk.Name] = max(m.cfg.Placement.Free(wk), 0)
		reserved[wk.Name] = wk.Reserved
		count[wk.Name] = wk.Containers
	}
	out := []MemberView{}
	for _, wk := range m.members.workers() {
		v := MemberView{
			Name: wk.Name, Kind: wk.Load.Kind, Status: wk.Status, Address: wk.Addr, API: wk.Load.API,
			Tags: wk.Load.Tags, Capacity: wk.Load.Capacity, Reserved: wk.Load.Reserved, Used: wk.Load.Used,
			CPU: wk.Load.CPU, Containers: wk.Load.Containers, Draining: wk.Load.Draining || l.isDraining(wk.Name), LastUpdate: wk.LastUpdate,
		}
		if wk.Load.Started > 0 {
			v.Started = time.Unix(wk.Load.Started, 0).UTC()
		}
		if r, ok := reserved[wk.Name]; ok {
			v.Reserved, v.Free, v.Containers = r, free[wk.Name], count[wk.Name]
		}
		out = append(out, v)
	}
	self := false
	for _, mg := range m.members.managers() {
		v := MemberView{Name: mg.Name, Kind: wire.KindManager, Status: mg.Status, Address: mg.Addr, API: mg.Load.API, LastUpdate: mg.LastUpdate}
		if mg.Load.Started > 0 {
			v.Started = time.Unix(mg.Load.Started, 0).UTC()
		}
		if mg.Name == m.cfg.NodeName {
			self = true
			v.Leader, v.LeaderSince, v.Term = true, l.since.UTC(), l.lease.Term()
		}
		out = append(out, v)
	}
	if !self {
		out = append(out, MemberView{Name: m.cfg.NodeName, Kind: wire.KindManager, Status: MemberAlive,
			Leader: true, LeaderSince: l.since.UTC(), Term: l.lease.Term(), LastUpdate: time.Now().UTC()})
	}
	return out
}

// ContainerQuery filters GET /v1/containers.
type ContainerQuery struct {
	Service string
	Node    string
	State   State
}

// ParseContainerQuery reads and checks the query of GET /v1/containers.
func ParseContainerQuery(q url.Values) (ContainerQuery, error) {
	var cq ContainerQuery
	for k, vs := range q {
		if len(vs) != 1 {
			return cq, fmt.Errorf("query parameter %q is given %d times: give it once", k, len(vs))
		}
		switch k {
		case "service":
			cq.Service = vs[0]
		case "node":
			cq.Node = vs[0]
		case "state":
			cq.State = State(vs[0])
			if !slices.Contains(containerStates, cq.State) {
				return cq, fmt.Errorf("state=%q is not a container state: use one of %s", vs[0], stateList())
			}
		default:
			return cq, fmt.Errorf("unknown query parameter %q: use service, node and state", k)
		}
	}
	return cq, nil
}

func stateList() string {
	s := make([]string, len(containerStates))
	for i, st := range containerStates {
		s[i] = string(st)
	}
	return strings.Join(s, ", ")
}

// Containers returns the container records that match q, with their
// health, from memory.
func (l *leader) Containers(q ContainerQuery) []ContainerView {
	out := []ContainerView{}
	l.eachContainer(q, func(v *ContainerView) { out = append(out, *v) })
	return out
}

// eachContainer calls fn with the view of every container that matches q,
// in order; the view is reused from one call to the next.
func (l *leader) eachContainer(q ContainerQuery, fn func(*ContainerView)) {
	var recs []*Container
	switch {
	case q.Service != "":
		recs = l.store.Service(q.Service)
	case q.Node != "":
		recs = l.store.OnNode(q.Node)
	case q.State == StatePending:
		recs = l.store.Pending()
	default:
		recs = l.store.All()
	}
	var v ContainerView
	for _, c := range recs {
		if (q.Node != "" && c.Node != q.Node) || (q.State != "" && c.State != q.State) {
			continue
		}
		v = ContainerView{Container: *c, Health: l.health(c)}
		fn(&v)
	}
}

func (m *Manager) handleList(l *leader, w http.ResponseWriter, r *http.Request) {
	q, err := ParseContainerQuery(r.URL.Query())
	if err != nil {
		writeErr(w, badRequest("%v", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	enc := json.NewEncoder(bw)
	_ = bw.WriteByte('[')
	first := true
	l.eachContainer(q, func(v *ContainerView) {
		if !first {
			_ = bw.WriteByte(',')
		}
		first = false
		_ = enc.Encode(v)
	})
	_, _ = bw.WriteString("]\n")
	_ = bw.Flush()
}

func (m *Manager) handleGet(l *leader, w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var out []ContainerView
	if c, ok := l.store.Container(name); ok {
		out = []ContainerView{{Container: *c, Health: l.health(c)}}
	} else {
		out = l.Containers(ContainerQuery{Service: name})
	}
	if len(out) == 0 {
		writeErr(w, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no container or service named %s (see micado ps)", name)})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (m *Manager) handleExplain(l *leader, w http.ResponseWriter, r *http.Request) {
	out, err := l.Explain(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// EventQuery is the query of GET /v1/events.
type EventQuery struct {
	Since uint64        // events after this sequence number
	Limit int           // at most this many, the newest (0 = all kept)
	Wait  time.Duration // long poll: wait up to this for a new event
}

// ParseEventQuery reads and checks the query of GET /v1/events.
func ParseEventQuery(q url.Values) (EventQuery, error) {
	var eq EventQuery
	for k := range q {
		if k != "since" && k != "limit" && k != "wait" {
			return eq, fmt.Errorf("unknown query parameter %q: use since, limit and wait", k)
		}
	}
	if v := q.Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return eq, fmt.Errorf("since=%q is not a sequence number", v)
		}
		eq.Since = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return eq, fmt.Errorf("limit=%q is not a non-negative number", v)
		}
		eq.Limit = n
	}
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxEventWait {
			return eq, fmt.Errorf("wait=%q must be a duration between 0s and %s", v, maxEventWait)
		}
		eq.Wait = d
	}
	return eq, nil
}

func (m *Manager) handleEvents(_ *leader, w http.ResponseWriter, r *http.Request) {
	q, err := ParseEventQuery(r.URL.Query())
	if err != nil {
		writeErr(w, &RequestError{Status: http.StatusBadRequest, Msg: err.Error()})
		return
	}
	evs := m.events.wait(r.Context(), q.Since, q.Limit, q.Wait)
	if evs == nil {
		evs = []Event{}
	}
	writeJSON(w, http.StatusOK, evs)
}

func (m *Manager) handleLaunch(l *leader, w http.ResponseWriter, r *http.Request) {
	var req LaunchRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeErr(w, err)
		return
	}
	resp, err := l.Launch(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, resp)
}

func (m *Manager) handleAutoscale(l *leader, w http.ResponseWriter, r *http.Request) {
	for k := range r.URL.Query() {
		if k != "history" {
			writeErr(w, badRequest("unknown query parameter %q: use history=1", k))
			return
		}
	}
	writeJSON(w, http.StatusOK, l.AutoscaleStatus(r.URL.Query().Get("history") == "1"))
}

func (m *Manager) handleServiceAutoscale(l *leader, w http.ResponseWriter, r *http.Request) {
	v, err := l.ServiceAutoscale(r.PathValue("service"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (m *Manager) handleChangeAutoscale(l *leader, w http.ResponseWriter, r *http.Request) {
	var ch AutoscaleChange
	if err := decodeBody(w, r, &ch); err != nil {
		writeErr(w, err)
		return
	}
	v, err := l.ChangeAutoscale(r.Context(), r.PathValue("service"), ch)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (m *Manager) handleScale(l *leader, w http.ResponseWriter, r *http.Request) {
	var req ScaleRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeErr(w, err)
		return
	}
	v, err := l.Scale(r.Context(), r.PathValue("service"), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (m *Manager) handleStop(l *leader, w http.ResponseWriter, r *http.Request) {
	names, err := l.Stop(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string][]string{"stopped": names})
}

func (m *Manager) handleApps(l *leader, w http.ResponseWriter, r *http.Request) {
	as, err := l.Apps(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, as)
}

func (m *Manager) handleApp(l *leader, w http.ResponseWriter, r *http.Request) {
	st, err := l.AppStatus(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (m *Manager) handleDeploy(l *leader, w http.ResponseWriter, r *http.Request) {
	var req DeployRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeErr(w, err)
		return
	}
	st, err := l.Deploy(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, st)
}

func (m *Manager) handleUndeploy(l *leader, w http.ResponseWriter, r *http.Request) {
	if err := l.Undeploy(r.Context(), r.PathValue("name")); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"undeployed": r.PathValue("name")})
}

func (m *Manager) handleConsolidate(l *leader, w http.ResponseWriter, r *http.Request) {
	var req ConsolidateRequest
	if err := decodeOptionalBody(w, r, &req); err != nil {
		writeErr(w, err)
		return
	}
	res := l.Consolidate(r.Context(), true, req.DryRun)
	code := http.StatusOK
	if res.Outcome == "failed" && res.Error != "" && len(res.Plan.Remove) == 0 {
		code = http.StatusConflict
	}
	writeJSON(w, code, res)
}

// decodeBody reads one JSON value of at most MaxBodyBytes with no unknown
// fields and nothing after it.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &RequestError{Status: http.StatusUnsupportedMediaType, Msg: "request body must be application/json"}
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	tooLarge := func(err error) bool {
		var mbe *http.MaxBytesError
		return errors.As(err, &mbe)
	}
	if err := dec.Decode(v); err != nil {
		switch {
		case tooLarge(err):
			return &RequestError{Status: http.StatusRequestEntityTooLarge, Msg: fmt.Sprintf("request body is larger than %d bytes", MaxBodyBytes)}
		case errors.Is(err, io.EOF):
			return badRequest("request body is not valid JSON for this endpoint: the body is empty")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return badRequest("request body is not valid JSON for this endpoint: it ends inside the JSON value")
		}
		return badRequest("request body is not valid JSON for this endpoint: %v", err)
	}
	// Only white space may follow (dec.More would let a stray ] or } by).
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if tooLarge(err) {
			return &RequestError{Status: http.StatusRequestEntityTooLarge, Msg: fmt.Sprintf("request body is larger than %d bytes", MaxBodyBytes)}
		}
		return badRequest("request body has data after the JSON value")
	}
	return nil
}

// decodeOptionalBody is decodeBody for an endpoint whose body may be left
// out: an empty body, with a zero Content-Length or sent chunked, leaves v
// as it is.
func decodeOptionalBody(w http.ResponseWriter, r *http.Request, v any) error {
	if r.ContentLength == 0 || r.Body == nil {
		return nil
	}
	br := bufio.NewReader(r.Body)
	if _, err := br.Peek(1); errors.Is(err, io.EOF) {
		return nil
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{br, r.Body}
	return decodeBody(w, r, v)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	// Compact: listings of 100,000 containers cost half as much to encode
	// (the CLI formats what it prints; pipe to jq by hand).
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	var re *RequestError
	if errors.As(err, &re) {
		writeJSON(w, re.Status, ErrorBody{Error: re.Msg, Decisions: re.Decisions})
		return
	}
	if errors.Is(err, ErrNotLeader) {
		w.Header().Set("Retry-After", "2")
		writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: err.Error() + "; try again in a few seconds"})
		return
	}
	writeJSON(w, http.StatusInternalServerError, ErrorBody{Error: err.Error()})
}
