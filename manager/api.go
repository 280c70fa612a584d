package manager

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MaxBodyBytes limits API request bodies.
const MaxBodyBytes = 1 << 20

// Handler returns the manager's versioned JSON API.
//
//	GET    /v1/status            cluster summary
//	GET    /v1/nodes             members and their load
//	GET    /v1/containers        every container and its health
//	GET    /v1/containers/{name} one instance, or every instance of a service
//	POST   /v1/containers        launch (LaunchRequest)
//	DELETE /v1/containers/{name} stop an instance or a whole service
//	GET    /v1/containers/{name}/explain  why it is where it is, or still pending
//	GET    /v1/events?since=SEQ&limit=N&wait=30s  recent decisions; wait long-polls
//	POST   /v1/consolidate       run a scale-in round now (ConsolidateRequest)
//	GET    /metrics              Prometheus metrics (metrics.go); needs the API token too
//
// Every /v1 call needs the API token; GET /ui/ (the dashboard's static
// files, see ui.go) and the redirect of / to it do not.
func (m *Manager) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", m.handleStatus)
	mux.HandleFunc("GET /v1/nodes", m.handleNodes)
	mux.HandleFunc("GET /v1/containers", m.handleList)
	mux.HandleFunc("GET /v1/containers/{name}", m.handleGet)
	mux.HandleFunc("GET /v1/containers/{name}/explain", m.handleExplain)
	mux.HandleFunc("GET /v1/events", m.handleEvents)
	mux.HandleFunc("POST /v1/containers", m.handleLaunch)
	mux.HandleFunc("DELETE /v1/containers/{name}", m.handleStop)
	mux.HandleFunc("POST /v1/consolidate", m.handleConsolidate)
	mux.HandleFunc("GET /v1/apps", m.handleApps)
	mux.HandleFunc("GET /v1/apps/{name}", m.handleApp)
	mux.HandleFunc("POST /v1/apps", m.handleDeploy)
	mux.HandleFunc("DELETE /v1/apps/{name}", m.handleUndeploy)
	mux.Handle("GET /metrics", m.metricsHandler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path)})
	})
	return m.withUI(m.auth(mux))
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

func (m *Manager) handleStatus(w http.ResponseWriter, r *http.Request) {
	recs, err := m.store.list(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	n := 0
	for _, wk := range m.members.workers() {
		if wk.Status == "alive" {
			n++
		}
	}
	writeJSON(w, http.StatusOK, Status{Cluster: m.cfg.Cluster, Version: m.cfg.Version, Workers: n, Containers: len(recs), Strategy: string(m.cfg.Placement.Strategy)})
}

func (m *Manager) handleNodes(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, m.Nodes(r.Context()))
}

// Nodes returns every worker with its load, as the API shows it.
func (m *Manager) Nodes(ctx context.Context) []NodeView {
	recs, _ := m.store.list(ctx)
	snap := m.snapshot(recs)
	free := map[string]int64{}
	reserved := map[string]int64{}
	count := map[string]int{}
	for i := range snap.Workers {
		wk := &snap.Workers[i]
		free[wk.Name] = max(m.cfg.Placement.Free(wk), 0)
		reserved[wk.Name] = wk.Reserved
		count[wk.Name] = wk.Containers
	}
	var out []NodeView
	for _, wk := range m.members.workers() {
		v := NodeView{
			Name: wk.Name, Kind: wk.Load.Kind, Status: wk.Status, Address: wk.Addr, API: wk.Load.API,
			Tags: wk.Load.Tags, Capacity: wk.Load.Capacity, Reserved: wk.Load.Reserved, Used: wk.Load.Used,
			CPU: wk.Load.CPU, Containers: wk.Load.Containers, Draining: wk.Load.Draining || m.isDraining(wk.Name), LastUpdate: wk.LastUpdate,
		}
		if wk.Load.Started > 0 {
			v.Started = time.Unix(wk.Load.Started, 0).UTC()
		}
		if r, ok := reserved[wk.Name]; ok {
			v.Reserved, v.Free, v.Containers = r, free[wk.Name], count[wk.Name]
		}
		out = append(out, v)
	}
	if out == nil {
		out = []NodeView{}
	}
	return out
}

// Containers returns every container record with its Consul health.
func (m *Manager) Containers(ctx context.Context) ([]ContainerView, error) {
	recs, err := m.store.list(ctx)
	if err != nil {
		return nil, err
	}
	health, err := m.reg.health(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ContainerView, 0, len(recs))
	for _, c := range recs {
		v := ContainerView{Container: *c, Health: health[c.ServiceID()]}
		if c.State == StateRunning && c.Check.Type == "none" && v.Health == "" {
			v.Health = "passing"
		}
		out = append(out, v)
	}
	return out, nil
}

func (m *Manager) handleList(w http.ResponseWriter, r *http.Request) {
	cs, err := m.Containers(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, cs)
}

func (m *Manager) handleGet(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	cs, err := m.Containers(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	var out []ContainerView
	for _, c := range cs {
		if c.Name == name {
			out = []ContainerView{c}
			break
		}
		if c.Service == name {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		writeErr(w, &RequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no container or service named %s (see micado ps)", name)})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (m *Manager) handleExplain(w http.ResponseWriter, r *http.Request) {
	out, err := m.Explain(r.Context(), r.PathValue("name"))
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

func (m *Manager) handleEvents(w http.ResponseWriter, r *http.Request) {
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

func (m *Manager) handleLaunch(w http.ResponseWriter, r *http.Request) {
	var req LaunchRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeErr(w, err)
		return
	}
	resp, err := m.Launch(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, resp)
}

func (m *Manager) handleStop(w http.ResponseWriter, r *http.Request) {
	names, err := m.Stop(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string][]string{"stopped": names})
}

func (m *Manager) handleApps(w http.ResponseWriter, r *http.Request) {
	as, err := m.Apps(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, as)
}

func (m *Manager) handleApp(w http.ResponseWriter, r *http.Request) {
	st, err := m.AppStatus(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (m *Manager) handleDeploy(w http.ResponseWriter, r *http.Request) {
	var req DeployRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeErr(w, err)
		return
	}
	st, err := m.Deploy(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, st)
}

func (m *Manager) handleUndeploy(w http.ResponseWriter, r *http.Request) {
	if err := m.Undeploy(r.Context(), r.PathValue("name")); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"undeployed": r.PathValue("name")})
}

func (m *Manager) handleConsolidate(w http.ResponseWriter, r *http.Request) {
	var req ConsolidateRequest
	if err := decodeOptionalBody(w, r, &req); err != nil {
		writeErr(w, err)
		return
	}
	res := m.Consolidate(r.Context(), true, req.DryRun)
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
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	var re *RequestError
	if errors.As(err, &re) {
		writeJSON(w, re.Status, ErrorBody{Error: re.Msg, Decisions: re.Decisions})
		return
	}
	writeJSON(w, http.StatusInternalServerError, ErrorBody{Error: err.Error()})
}
