package manager

// Fuzz tests of every request the manager API decodes: the JSON bodies of
// POST /v1/containers, POST /v1/apps and POST /v1/consolidate, and the
// path parameters (and any query) of GET and DELETE /v1/containers/{name}
// and /v1/apps/{name}. Each target drives the real API of one real
// manager (real Consul dev agent, real HTTP server) for all its
// iterations, and checks what a user relies on:
//
//   - the server never panics (a panic drops the connection: the request
//     fails);
//   - a bad request gets exactly the 4xx the request calls for, with a JSON
//     body {"error": "..."} that names the problem;
//   - a rejected request changes nothing in the desired state: every key
//     under micado/ in Consul KV (but the event log, a record of
//     decisions) keeps its value and its modify index.
//
// What the answer must be comes from an oracle written from the API's
// contract: the body is one JSON value of the endpoint's type and nothing
// else, launch requests are checked by validate and definitions by
// definitions.Parse (both fuzzed or tested on their own), and the manager
// has no workers and no cloud provider for launches (so no launch can be
// accepted), and seeded state: a failed container keep-web-1 of service keep-web
// and a failed application keepapp.
//
// The manager runs in this process on the in-memory world (journal, lock,
// registry, agents), so a fuzzer makes thousands of requests a second; the
// journal is what "the desired state" means here.
//
// The seeds run with `go test`; fuzz by hand with e.g.
//
//	go test -run '^$' -fuzz FuzzLaunchRequest -fuzztime 45s ./manager

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/micado-scale/micado/definitions"
)

const (
	fuzzAPIToken = "fuzz-api-token"
	fuzzPrefix   = "" // journal keys are relative to the cluster's prefix
)

// apiFuzz is one real manager shared by every iteration of a fuzz target.
type apiFuzz struct {
	base     string
	w        *world
	hc       *http.Client
	baseline kvState
}

// kvState is every key under micado/ with its modify index and value.
type kvState map[string]kvEntry

type kvEntry struct {
	index uint64
	value string
}

const keepApp = `application: keepapp
services:
  web:
    image: micado/demo-web
    role: app
    memory: 64MiB
`

func newAPIFuzz(f *testing.F, cfg Config) *apiFuzz {
	f.Helper()
	w := newWorld(f)
	base := testConfig()
	base.APIToken = fuzzAPIToken
	base.ServiceWait = 5 * time.Second
	base.Provider, base.InstanceTypes = cfg.Provider, cfg.InstanceTypes
	now := time.Now().UTC()
	keep, _ := json.Marshal(&Container{Name: "keep-web-1", Spec: &Spec{Service: "keep-web", Image: "micado/demo-web", Tags: []string{"role=app"},
		Memory: 64 << 20, Check: Check{Type: "none"}}, State: StateFailed, Reason: "seeded by the fuzz test", CreatedAt: now, UpdatedAt: now})
	app, _ := json.Marshal(&AppRecord{Name: "keepapp", File: "keep.yaml", Definition: keepApp, State: AppFailed, Error: "seeded by the fuzz test", UpdatedAt: now})
	w.journal.Put(containersPrefix+"keep-web-1", keep)
	w.journal.Put(appsPrefix+"keepapp", app)
	m := w.start("m1", base)
	w.leader()
	a := &apiFuzz{base: m.base, w: w, hc: &http.Client{
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
	// Wait until the manager has written what it writes at start.
	prev := a.state(f)
	for stable := 0; stable < 5; {
		time.Sleep(50 * time.Millisecond)
		cur := a.state(f)
		if diff := prev.diff(cur); diff == "" {
			stable++
		} else {
			stable = 0
		}
		prev = cur
	}
	a.baseline = prev
	return a
}

func (a *apiFuzz) state(tb testing.TB) kvState {
	tb.Helper()
	s := kvState{}
	for _, k := range a.w.journal.Keys("") {
		// The event log records decisions; it is not desired state.
		if strings.HasPrefix(k, eventsPrefix) {
			continue
		}
		p, _ := a.w.journal.Get(k)
		s[k] = kvEntry{p.Index, string(p.Value)}
	}
	return s
}

// diff describes how s2 differs from s ("" when equal).
func (s kvState) diff(s2 kvState) string {
	var out []string
	for k, e := range s {
		e2, ok := s2[k]
		switch {
		case !ok:
			out = append(out, "deleted "+k)
		case e2.index != e.index || e2.value != e.value:
			out = append(out, fmt.Sprintf("rewrote %s (index %d -> %d): %s", k, e.index, e2.index, e2.value))
		}
	}
	for k, e := range s2 {
		if _, ok := s[k]; !ok {
			out = append(out, fmt.Sprintf("created %s: %s", k, e.value))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// reset puts the desired state back to the baseline after a request that
// was meant to change it, and takes the result as the new baseline.
func (a *apiFuzz) reset(t *testing.T) {
	t.Helper()
	// Put the journal back as it was and have the manager load it again
	// (a new term), as a restarted leader would.
	cur := a.state(t)
	changed := false
	for k := range cur {
		if _, ok := a.baseline[k]; !ok {
			a.w.journal.mu.Lock()
			delete(a.w.journal.data, k)
			a.w.journal.mu.Unlock()
			changed = true
		}
	}
	for k, e := range a.baseline {
		if c, ok := cur[k]; !ok || c.value != e.value {
			a.w.journal.Put(k, []byte(e.value))
			changed = true
		}
	}
	if changed {
		term := a.w.lock.Holder().Term
		a.w.lock.Break()
		eventually(t, 10*time.Second, "the manager leads again", func() bool {
			return a.w.lock.Holder().Term > term && a.w.managers[0].IsLeader()
		})
	}
	a.baseline = a.state(t)
}

// unchanged fails the test when the desired state moved from the baseline.
func (a *apiFuzz) unchanged(t testing.TB, what string) {
	t.Helper()
	if d := a.baseline.diff(a.state(t)); d != "" {
		t.Fatalf("%s changed the desired state in the journal:\n%s", what, d)
	}
}

type apiAnswer struct {
	code  int
	ctype string
	body  []byte
}

func (r apiAnswer) String() string { return fmt.Sprintf("%d %s", r.code, r.body) }

// do sends one request; ok is false when Go cannot even build it.
func (a *apiFuzz) do(t testing.TB, method, target, ctype string, body []byte, chunked, token bool) (apiAnswer, bool) {
	t.Helper()
	var rd io.Reader
	if body != nil || chunked {
		rd = bytes.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd) // hides the length: sent chunked
		}
	}
	req, err := http.NewRequest(method, a.base+target, rd)
	if err != nil {
		return apiAnswer{}, false
	}
	if chunked {
		req.ContentLength = -1
	}
	if ctype != "" {
		req.Header["Content-Type"] = []string{ctype}
	}
	if token {
		req.Header.Set("Authorization", "Bearer "+fuzzAPIToken)
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		if strings.Contains(err.Error(), "invalid header field value") || strings.Contains(err.Error(), "invalid URL") {
			return apiAnswer{}, false
		}
		t.Fatalf("%s %s: the manager dropped the request (did the handler panic?): %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, target, err)
	}
	return apiAnswer{resp.StatusCode, resp.Header.Get("Content-Type"), b}, true
}

// wantError checks an error answer: the status, a JSON body that is
// {"error": "..."} (plus placement decisions on 422) and a message that
// contains every one of want.
func wantError(t testing.TB, what string, r apiAnswer, code int, want ...string) string {
	t.Helper()
	if r.code != code {
		t.Fatalf("%s: got %s, want status %d (%q)", what, r, code, want)
	}
	if !strings.HasPrefix(r.ctype, "application/json") {
		t.Fatalf("%s: error answer has Content-Type %q", what, r.ctype)
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatalf("%s: error answer is not a JSON object: %v: %s", what, err, r.body)
	}
	var msg string
	if err := json.Unmarshal(body["error"], &msg); err != nil || strings.TrimSpace(msg) == "" {
		t.Fatalf("%s: error answer has no error message: %s", what, r.body)
	}
	for k := range body {
		if k != "error" && !(k == "decisions" && code == http.StatusUnprocessableEntity) {
			t.Fatalf("%s: error answer has an unexpected field %q: %s", what, k, r.body)
		}
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Fatalf("%s: error %q does not say %q", what, msg, w)
		}
	}
	return msg
}

// bodyVerdict is what the contract says of a JSON body before the
// endpoint looks at its content.
type bodyVerdict struct {
	code int    // 0: the body decodes
	msg  string // what the error must say
}

var jsonDetailRe = regexp.MustCompile(`^request body is not valid JSON for this endpoint: \S`)

// decodeVerdict decodes body into v as the API contract demands: at most
// MaxBodyBytes of application/json holding one JSON value of v's type,
// with no unknown fields and nothing but white space after it.
func decodeVerdict(ctype string, body []byte, v any) bodyVerdict {
	ctype = strings.Trim(ctype, " \t") // as every HTTP header value
	if ctype != "" && !strings.HasPrefix(ctype, "application/json") {
		return bodyVerdict{http.StatusUnsupportedMediaType, "request body must be application/json"}
	}
	if len(body) > MaxBodyBytes {
		return bodyVerdict{http.StatusRequestEntityTooLarge, "request body is larger than"}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return bodyVerdict{http.StatusBadRequest, "request body is not valid JSON for this endpoint: "}
	}
	if len(bytes.TrimLeft(body[dec.InputOffset():], " \t\r\n")) > 0 {
		return bodyVerdict{http.StatusBadRequest, "request body has data after the JSON value"}
	}
	return bodyVerdict{}
}

func checkDecodeError(t *testing.T, what string, r apiAnswer, v bodyVerdict) {
	t.Helper()
	msg := wantError(t, what, r, v.code, v.msg)
	if strings.HasPrefix(v.msg, "request body is not valid JSON") && !jsonDetailRe.MatchString(msg) {
		t.Fatalf("%s: error %q does not say what is wrong with the JSON", what, msg)
	}
}

// launchFieldRe: every problem validate reports starts with the field it
// is about.
var launchFieldRe = regexp.MustCompile(`^(image|name|role|tags\[\d+\]|memory|ports\[\d+\](\.\w+)?|env(\.\S*)?|replicas|pinned|check(\.\w+)?|scaling(\.\w+)*(\[\d+\](\.\w+)?)?): `)

// httpPathRe is what a definition file accepts as an http check path.
var httpPathRe = regexp.MustCompile(`^/[!-~]*$`)

// FuzzLaunchRequest fuzzes POST /v1/containers (LaunchRequest).
func FuzzLaunchRequest(f *testing.F) {
	a := newAPIFuzz(f, Config{})
	for _, s := range []struct{ ctype, body string }{
		{"application/json", `{"image":"micado/demo-web"}`},
		{"", `{"image":"registry:5000/micado/demo-web:1.2","name":"web","role":"app","tags":["zone=a"],"memory":"128MiB","ports":["8080","53/udp"],"env":{"MESSAGE":"hi"},"replicas":3,"check":{"type":"http","path":"/health","interval":"5s"},"app":"shop","pinned":true}`},
		{"application/json; charset=utf-8", `{"image":"micado/demo-web","name":"keep-web"}`},
		{"application/json", `{"image":"micado/demo-web","name":"keep-web-1"}`},
		{"application/json", `{"image":"Bad Image!","name":"-x-","role":"a b","tags":["nokey"],"memory":"1KiB","ports":["0","70000","8080/sctp","8080","8080/tcp"],"env":{"1X":"y","MICADO_X":"z"},"replicas":-1,"check":{"type":"grpc"}}`},
		{"application/json", `{"image":"micado/demo-web","check":{"type":"http","path":"health"},"ports":["8080"]}`},
		{"application/json", `{"image":"micado/demo-web","check":{"type":"tcp","interval":"1ms"}}`},
		{"application/json", `{"image":"micado/demo-web","ports":["8080"],"check":{"type":"http","path":"/a b"}}`},
		{"application/json", `{"image":"micado/demo-web","replicas":1001}`},
		{"application/json", `{"image":"micado/demo-web","replicas":1e99}`},
		{"application/json", `{"image":"micado/demo-web","memory":"99999999999999999999TiB"}`},
		{"application/json", `{"image":"micado/demo-web","bogus":1}`},
		{"application/json", `{"image":"micado/demo-web"} {"image":"x"}`},
		{"application/json", `{"image":"micado/demo-web"`},
		{"application/json", `[]`},
		{"application/json", `null`},
		{"application/json", ``},
		{"text/plain", `{"image":"micado/demo-web"}`},
		{"application/x-www-form-urlencoded", `image=micado/demo-web`},
		{"application/json", "{\"image\":\"micado/demo-web\",\"name\":\"w\u00e9b\"}"},
		{"application/json", "{\"image\":\"micado/demo-web\",\"env\":{\"A\":\"\\u0000\"}}"},
	} {
		f.Add(s.ctype, []byte(s.body))
	}
	// Bodies over the limit are refused before they are read whole (too
	// big to fuzz with).
	for _, chunked := range []bool{false, true} {
		big := append([]byte(`{"image":"micado/demo-web","env":{"A":"`), bytes.Repeat([]byte("x"), MaxBodyBytes)...)
		big = append(big, `"}}`...)
		r, _ := a.do(f, http.MethodPost, "/v1/containers", "application/json", big, chunked, true)
		wantError(f, "a launch request over MaxBodyBytes", r, http.StatusRequestEntityTooLarge, "request body is larger than")
		a.unchanged(f, "a launch request over MaxBodyBytes")
	}
	f.Fuzz(func(t *testing.T, ctype string, body []byte) {
		r, ok := a.do(t, http.MethodPost, "/v1/containers", ctype, body, false, true)
		if !ok {
			return
		}
		what := fmt.Sprintf("POST /v1/containers (Content-Type %q) %q", ctype, body)
		var req LaunchRequest
		if v := decodeVerdict(ctype, body, &req); v.code != 0 {
			checkDecodeError(t, what, r, v)
			a.unchanged(t, what)
			return
		}
		cs, err := validate(req, time.Now())
		switch {
		case err != nil:
			msg := wantError(t, what, r, http.StatusBadRequest, err.Error())
			for _, p := range strings.Split(msg, "; ") {
				if !launchFieldRe.MatchString(p) {
					t.Fatalf("%s: problem %q does not name the field it is about", what, p)
				}
			}
		case cs[0].Service == "keep-web" || cs[0].Service == "keep-web-1":
			wantError(t, what, r, http.StatusConflict, "a service named "+cs[0].Service+" already exists")
		default:
			// Valid, but the manager has no workers and no provider.
			wantError(t, what, r, http.StatusUnprocessableEntity, "scale-out is off")
			if c := cs[0].Check; c.Type == "http" && !httpPathRe.MatchString(c.Path) {
				t.Fatalf("%s: accepted the http check path %q, which is no URL path (a definition file refuses it)", what, c.Path)
			}
		}
		a.unchanged(t, what)
	})
}

// FuzzConsolidateRequest fuzzes POST /v1/consolidate (ConsolidateRequest,
// optional). The manager has a cloud provider but no workers: a round has
// nothing to do.
func FuzzConsolidateRequest(f *testing.F) {
	a := newAPIFuzz(f, Config{Provider: &fakeCloud{journal: NewMemJournal(nil)}, InstanceTypes: testTypes})
	for _, s := range []struct {
		ctype, body string
		chunked     bool
	}{
		{"", "", false},
		{"application/json", "", true},
		{"application/json", `{}`, false},
		{"application/json", `{"dry_run":true}`, false},
		{"application/json", `{"dry_run":false}`, true},
		{"application/json", `{"dry_run":"yes"}`, false},
		{"application/json", `{"dryrun":true}`, false},
		{"application/json", `{"dry_run":true}]`, false},
		{"application/json", `{"dry_run":true} x`, false},
		{"text/plain", `{"dry_run":true}`, false},
		{"application/json", `{"dry_run":tru`, true},
	} {
		f.Add(s.ctype, []byte(s.body), s.chunked)
	}
	f.Fuzz(func(t *testing.T, ctype string, body []byte, chunked bool) {
		r, ok := a.do(t, http.MethodPost, "/v1/consolidate", ctype, body, chunked, true)
		if !ok {
			return
		}
		what := fmt.Sprintf("POST /v1/consolidate (Content-Type %q, chunked %v) %q", ctype, chunked, body)
		var req ConsolidateRequest
		if len(body) > 0 { // no body: a round with the defaults
			if v := decodeVerdict(ctype, body, &req); v.code != 0 {
				checkDecodeError(t, what, r, v)
				a.unchanged(t, what)
				return
			}
		}
		var res ConsolidateResult
		if r.code != http.StatusOK || json.Unmarshal(r.body, &res) != nil {
			t.Fatalf("%s: got %s, want 200 with a result", what, r)
		}
		if !res.Manual || res.DryRun != req.DryRun || res.Outcome != "nothing-to-do" {
			t.Fatalf("%s: result %s", what, r.body)
		}
		a.unchanged(t, what)
	})
}

// FuzzDeployRequest fuzzes POST /v1/apps (DeployRequest: a definition
// document). A body is either raw bytes or, when raw is empty, the
// envelope around file and definition (so the fuzzer mutates the YAML
// itself). An accepted definition is undeployed again before the next
// iteration.
func FuzzDeployRequest(f *testing.F) {
	a := newAPIFuzz(f, Config{})
	files, _ := filepath.Glob("../definitions/*.yaml")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add("application/json", []byte(nil), filepath.Base(file), string(b))
	}
	for _, d := range []string{
		keepApp,
		"application: keep\nservices:\n  web:\n    image: micado/demo-web\n    role: app\n",
		"application: tiny\nservices:\n  one:\n    image: micado/demo-web\n    role: app\n    replicas: 0\n",
		"application: Bad_Name\nservices: {}\n",
		"application: loop\nservices:\n  a:\n    image: x\n    role: r\n    depends_on: [b]\n  b:\n    image: x\n    role: r\n    depends_on: [a]\n",
		"a: &a [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n",
		"application: two\n---\napplication: docs\n",
		"\t- not yaml",
		"",
	} {
		f.Add("application/json", []byte(nil), "f.yaml", d)
	}
	for _, raw := range []string{`{"file":"x.yaml"}`, `{"definition":5}`, `{"definition":"x","extra":1}`, `{"file":"a","definition":"b"}{}`, `"application: x"`, `{`} {
		f.Add("application/json", []byte(raw), "", "")
	}
	f.Add("text/yaml", []byte(nil), "f.yaml", keepApp)
	f.Fuzz(func(t *testing.T, ctype string, raw []byte, file, definition string) {
		body := raw
		if len(raw) == 0 {
			body, _ = json.Marshal(DeployRequest{File: file, Definition: definition})
		}
		r, ok := a.do(t, http.MethodPost, "/v1/apps", ctype, body, false, true)
		if !ok {
			return
		}
		what := fmt.Sprintf("POST /v1/apps (Content-Type %q) %q", ctype, body)
		var req DeployRequest
		if v := decodeVerdict(ctype, body, &req); v.code != 0 {
			checkDecodeError(t, what, r, v)
			a.unchanged(t, what)
			return
		}
		name := req.File
		if name == "" {
			name = "definition.yaml"
		}
		app, err := definitions.Parse(name, []byte(req.Definition))
		if err != nil {
			wantError(t, what, r, http.StatusBadRequest, err.Error())
			a.unchanged(t, what)
			return
		}
		for _, s := range app.Services {
			if consulName(app.Name, s.Name) == "keep-web" {
				wantError(t, what, r, http.StatusConflict, "service "+s.Name+" of application "+app.Name+" would be named keep-web")
				a.unchanged(t, what)
				return
			}
		}
		var st AppStatus
		if r.code != http.StatusAccepted || json.Unmarshal(r.body, &st) != nil || st.Name != app.Name {
			t.Fatalf("%s: got %s, want 202 with the status of %s", what, r, app.Name)
		}
		// Accepted: recorded first; the deployment fails in the background
		// (no workers) or, with no replicas, is done. Then undeploy it.
		key := fuzzPrefix + "apps/" + app.Name
		deadline := time.Now().Add(20 * time.Second)
		for {
			p, ok := a.w.journal.Get(key)
			var rec AppRecord
			if ok && json.Unmarshal(p.Value, &rec) == nil && (rec.State == AppFailed || rec.State == AppDeployed) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the deployment of %s did not end (record %s)", what, app.Name, p.Value)
			}
			time.Sleep(10 * time.Millisecond)
		}
		u, ok := a.do(t, http.MethodDelete, "/v1/apps/"+url.PathEscape(app.Name), "", nil, false, true)
		if !ok || u.code != http.StatusOK {
			t.Fatalf("%s: undeploy: %s", what, u)
		}
		a.reset(t)
	})
}

var (
	eventParamRe = regexp.MustCompile(`^(since|limit|wait)=|^unknown query parameter `)
	digits18Re   = regexp.MustCompile(`^[0-9]{1,18}$`)
	digits9Re    = regexp.MustCompile(`^[0-9]{1,9}$`)
)

// plainEventQuery reports whether q is a query of GET /v1/events that must
// be answered: since and limit given at most once each as plain numbers.
func plainEventQuery(q string) bool {
	vs, err := url.ParseQuery(q)
	if err != nil {
		return false
	}
	for k, v := range vs {
		switch {
		case len(v) != 1:
			return false
		case k == "since" && digits18Re.MatchString(v[0]), k == "limit" && digits9Re.MatchString(v[0]):
		default:
			return false
		}
	}
	return true
}

// FuzzPathParams fuzzes the name in GET and DELETE /v1/containers/{name},
// GET /v1/containers/{name}/explain and GET and DELETE /v1/apps/{name},
// with any query, and the query of GET /v1/events, with and without the
// API token.
// Only the seeded keep-web, keep-web-1 and keepapp exist; stopping or undeploying
// them is the one change allowed, and it is undone after each iteration.
func FuzzPathParams(f *testing.F) {
	a := newAPIFuzz(f, Config{})
	for _, s := range []struct {
		op          uint8
		name, query string
		token       bool
	}{
		{0, "keep-web", "", true}, {0, "keep-web-1", "", true}, {0, "web", "", true}, {0, "", "", true},
		{1, "keep-web", "", true}, {1, "keep-web-1", "x=1", true}, {1, "keep-2", "", true}, {1, "keep-web", "", false},
		{2, "keepapp", "", true}, {2, "nope", "", true}, {2, "..", "", true}, {2, "keepapp", "", false},
		{3, "keepapp", "", true}, {3, "nope", "", true}, {3, "x/../../containers/keep-web-1", "", true}, {3, "keepapp/", "", true},
		{1, "../apps/keepapp", "", true}, {0, "keep-web\x00", "a=%zz", true}, {3, "keepapp?recurse", "", true}, {2, "*", "", true},
		{1, "%2e%2e", "", true}, {3, ".", "", true}, {0, "\xff", "", true},
		{4, "keep-web", "", true}, {4, "keep-web-1", "", true}, {4, "nope", "", true}, {4, "/", "", true}, {4, "", "", true}, {4, "keep-web", "", false},
		{5, "", "since=0&limit=5", true}, {5, "", "since=-1", true}, {5, "", "limit=x", true}, {5, "", "wait=10ms", true},
		{5, "", "wait=2h", true}, {5, "", "bogus=1", true}, {5, "", "since=18446744073709551616", true}, {5, "", "", false},
	} {
		f.Add(s.op, s.name, s.query, s.token)
	}
	f.Fuzz(func(t *testing.T, op uint8, name, query string, token bool) {
		method, prefix, suffix := http.MethodGet, "/v1/containers/", ""
		switch op % 6 {
		case 1:
			method = http.MethodDelete
		case 2:
			prefix = "/v1/apps/"
		case 3:
			method, prefix = http.MethodDelete, "/v1/apps/"
		case 4:
			suffix = "/explain"
		case 5:
			prefix, name = "/v1/events", ""
		}
		target := prefix + url.PathEscape(name) + suffix
		if query != "" {
			// Any query, as far as it can stand in a request line.
			var q strings.Builder
			for _, b := range []byte(query) {
				if b <= ' ' || b >= 0x7f || b == '#' {
					fmt.Fprintf(&q, "%%%02X", b)
				} else {
					q.WriteByte(b)
				}
			}
			target += "?" + q.String()
			query = q.String()
		}
		if prefix == "/v1/events" {
			// A long poll waits for the next event: keep waits short.
			if vs, _ := url.ParseQuery(query); vs.Get("wait") != "" {
				if d, err := time.ParseDuration(vs.Get("wait")); err == nil && d > 100*time.Millisecond && d <= time.Minute {
					return
				}
			}
		}
		r, ok := a.do(t, method, target, "", nil, false, token)
		if !ok {
			return
		}
		what := fmt.Sprintf("%s %s (token %v)", method, target, token)
		// The mux cleans the (escaped) path first: a name that is . or ..
		// is redirected, never served.
		p := prefix + url.PathEscape(name) + suffix
		clean := path.Clean(p)
		if strings.HasSuffix(p, "/") && clean != "/" {
			clean += "/"
		}
		// A name that is not valid UTF-8 cannot be quoted back verbatim.
		named := []string{name}
		if !utf8.ValidString(name) {
			named = nil
		}
		switch {
		case clean != p && !(suffix != "" && name == "/"):
			// Path cleaning comes before the token check; a redirect does
			// nothing.
			if r.code/100 != 3 {
				t.Fatalf("%s: got %s, want a redirect to the clean path %s", what, r, clean)
			}
		case !token:
			wantError(t, what, r, http.StatusUnauthorized, "API token")
		case prefix == "/v1/events":
			if r.code == http.StatusOK {
				var evs []Event
				if err := json.Unmarshal(r.body, &evs); err != nil {
					t.Fatalf("%s: got %s, want a JSON list of events", what, r)
				}
				break
			}
			msg := wantError(t, what, r, http.StatusBadRequest)
			if !eventParamRe.MatchString(msg) {
				t.Fatalf("%s: error %q does not name the parameter", what, msg)
			}
			if plainEventQuery(query) {
				t.Fatalf("%s: refused a well-formed query: %q", what, msg)
			}
		case suffix != "" && name == "/":
			// The mux reads /v1/containers/%2F/explain as ///explain.
			if r.code/100 != 3 {
				wantError(t, what, r, http.StatusNotFound, "no API endpoint")
			}
		case name == "" || name == "/":
			// No name, or one the mux reads as an empty segment
			// (/v1/apps/%2F is /v1/apps// once decoded): no endpoint.
			wantError(t, what, r, http.StatusNotFound, "no API endpoint")
		case suffix == "/explain" && (name == "keep-web" || name == "keep-web-1"):
			var ex []json.RawMessage
			if r.code != http.StatusOK || json.Unmarshal(r.body, &ex) != nil || len(ex) != 1 {
				t.Fatalf("%s: got %s, want the explanation of keep-web-1", what, r)
			}
		case prefix == "/v1/containers/" && (name == "keep-web" || name == "keep-web-1"):
			if method == http.MethodGet {
				var cs []ContainerView
				if r.code != http.StatusOK || json.Unmarshal(r.body, &cs) != nil || len(cs) != 1 || cs[0].Name != "keep-web-1" {
					t.Fatalf("%s: got %s, want keep-web-1", what, r)
				}
				break
			}
			if r.code != http.StatusOK || !bytes.Contains(r.body, []byte(`"keep-web-1"`)) {
				t.Fatalf("%s: got %s, want keep-web-1 stopped", what, r)
			}
			if d := a.baseline.diff(a.state(t)); d != "deleted "+fuzzPrefix+"containers/keep-web-1" {
				t.Fatalf("%s: stopping keep-web-1 changed:\n%s", what, d)
			}
			a.reset(t)
			return
		case prefix == "/v1/containers/":
			wantError(t, what, r, http.StatusNotFound, append([]string{"no container or service named "}, named...)...)
		case definitions.CheckAppName(name) != nil:
			// No application can have this name: refused before the name
			// goes near a Consul key.
			wantError(t, what, r, http.StatusBadRequest, "is not a valid application name")
		case name == "keepapp":
			if method == http.MethodGet {
				var st AppStatus
				if r.code != http.StatusOK || json.Unmarshal(r.body, &st) != nil || st.Name != "keepapp" || st.State != AppFailed {
					t.Fatalf("%s: got %s, want keepapp", what, r)
				}
				break
			}
			if r.code != http.StatusOK {
				t.Fatalf("%s: got %s, want keepapp undeployed", what, r)
			}
			if d := a.baseline.diff(a.state(t)); d != "deleted "+fuzzPrefix+"apps/keepapp" {
				t.Fatalf("%s: undeploying keepapp changed:\n%s", what, d)
			}
			a.reset(t)
			return
		default:
			wantError(t, what, r, http.StatusNotFound, append([]string{"no application named "}, named...)...)
		}
		a.unchanged(t, what)
	})
}
