package openstack

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"

	"github.com/micado-scale/micado/cloudapi"
)

// The tests talk only to fakeCloud on 127.0.0.1, through loopbackClient,
// whose dialer refuses anything else.

const (
	testUser    = "micado"
	testPass    = "s3cret"
	testProject = "micado-proj"
	testDomain  = "Default"
	testRegion  = "RegionTest"
)

func loopbackClient(t *testing.T) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil || host != "127.0.0.1" {
				t.Errorf("test tried to dial %s: only 127.0.0.1 is allowed", addr)
				return nil, fmt.Errorf("dial %s refused by test: loopback only", addr)
			}
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// fakeServer is one row of the fake Nova's server table.
type fakeServer struct {
	ID, Name, Status, Flavor, Image, KeyName, IP string
	Metadata                                     map[string]string
	Created                                      time.Time
	Deleted                                      bool
}

// fakeCloud fakes Keystone v3 (password auth, token with a service catalog)
// and the parts of Nova v2.1 the provider uses, in their JSON wire format,
// backed by an in-memory server table. Servers go BUILD -> ACTIVE after they
// have been listed once.
type fakeCloud struct {
	t   *testing.T
	srv *httptest.Server

	mu          sync.Mutex
	servers     []*fakeServer
	nextID      int
	tokens      map[string]bool
	tokenCount  int
	creates     []map[string]any // "server" objects of POST /servers bodies
	listCalls   []url.Values     // queries of GET /servers/detail
	deletes     []string
	failCreate  func(w http.ResponseWriter) bool
	maxLimit    int // Nova's osapi_max_limit: servers per page
	flavorsSeen int // GET /flavors/detail calls
}

func newFakeCloud(t *testing.T) *fakeCloud {
	f := &fakeCloud{t: t, tokens: map[string]bool{}, maxLimit: 2}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v3/auth/tokens", f.authTokens)
	mux.HandleFunc("GET /v2.1/flavors/detail", f.authed(f.listFlavors))
	mux.HandleFunc("POST /v2.1/servers", f.authed(f.createServer))
	mux.HandleFunc("GET /v2.1/servers/detail", f.authed(f.listServers))
	mux.HandleFunc("DELETE /v2.1/servers/{id}", f.authed(f.deleteServer))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("fake: unexpected %s %s", r.Method, r.URL)
		writeJSON(w, 404, map[string]any{"itemNotFound": map[string]any{"code": 404, "message": "no such route in fake"}})
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	if u, _ := url.Parse(f.srv.URL); u.Hostname() != "127.0.0.1" {
		t.Fatalf("fake listens on %s, want 127.0.0.1", u.Host)
	}
	return f
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeCloud) seed(name, status string, md map[string]string) *fakeServer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.add(name, status, "1", "img-seed", "", md)
}

func (f *fakeCloud) add(name, status, flavor, image, key string, md map[string]string) *fakeServer {
	f.nextID++
	s := &fakeServer{
		ID:       fmt.Sprintf("8d5b2c3e-0000-4000-8000-%012d", f.nextID),
		Name:     name,
		Status:   status,
		Flavor:   flavor,
		Image:    image,
		KeyName:  key,
		IP:       fmt.Sprintf("192.168.7.%d", 10+f.nextID),
		Metadata: md,
		Created:  time.Date(2025, 3, 1, 12, 0, f.nextID, 0, time.UTC),
	}
	f.servers = append(f.servers, s)
	return s
}

// revokeTokens makes every issued token invalid, as if it had expired.
func (f *fakeCloud) revokeTokens() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.tokens)
}

func (f *fakeCloud) authTokens(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Auth struct {
			Identity struct {
				Methods  []string `json:"methods"`
				Password struct {
					User struct {
						Name     string `json:"name"`
						Password string `json:"password"`
						Domain   struct {
							Name string `json:"name"`
						} `json:"domain"`
					} `json:"user"`
				} `json:"password"`
			} `json:"identity"`
			Scope struct {
				Project struct {
					Name   string `json:"name"`
					Domain struct {
						Name string `json:"name"`
					} `json:"domain"`
				} `json:"project"`
			} `json:"scope"`
		} `json:"auth"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeJSON(w, 400, map[string]any{"error": map[string]any{"code": 400, "message": err.Error(), "title": "Bad Request"}})
		return
	}
	a := body.Auth
	u := a.Identity.Password.User
	if !slices.Equal(a.Identity.Methods, []string{"password"}) || u.Name != testUser || u.Password != testPass || u.Domain.Name != testDomain ||
		a.Scope.Project.Name != testProject || a.Scope.Project.Domain.Name != testDomain {
		writeJSON(w, 401, map[string]any{"error": map[string]any{"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}})
		return
	}
	f.mu.Lock()
	f.tokenCount++
	tok := fmt.Sprintf("gAAAAAfaketoken%d", f.tokenCount)
	f.tokens[tok] = true
	f.mu.Unlock()

	base := f.srv.URL
	endpoint := func(iface, region, u string) map[string]any {
		return map[string]any{"id": iface + region, "interface": iface, "region": region, "region_id": region, "url": u}
	}
	w.Header().Set("X-Subject-Token", tok)
	writeJSON(w, 201, map[string]any{"token": map[string]any{
		"methods":    []string{"password"},
		"user":       map[string]any{"domain": map[string]any{"id": "default", "name": testDomain}, "id": "u-1", "name": testUser, "password_expires_at": nil},
		"audit_ids":  []string{"3T2dc1CGQxyJsHdDu1xkcw"},
		"expires_at": time.Now().Add(time.Hour).UTC().Format("2006-01-02T15:04:05.000000Z"),
		"issued_at":  time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"),
		"project":    map[string]any{"domain": map[string]any{"id": "default", "name": testDomain}, "id": "p-1", "name": testProject},
		"is_domain":  false,
		"roles":      []any{map[string]any{"id": "r-1", "name": "member"}},
		"catalog": []any{
			map[string]any{"id": "svc-nova", "type": "compute", "name": "nova", "endpoints": []any{
				// Wrong interface and wrong region point at a closed
				// loopback port: choosing them fails the test.
				endpoint("internal", testRegion, "http://127.0.0.1:1/v2.1"),
				endpoint("public", "OtherRegion", "http://127.0.0.1:1/v2.1"),
				endpoint("public", testRegion, base+"/v2.1"),
			}},
			map[string]any{"id": "svc-keystone", "type": "identity", "name": "keystone", "endpoints": []any{
				endpoint("public", testRegion, base+"/v3"),
			}},
		},
	}})
}

// authed checks X-Auth-Token before calling h with the table locked.
func (f *fakeCloud) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if !f.tokens[r.Header.Get("X-Auth-Token")] {
			writeJSON(w, 401, map[string]any{"error": map[string]any{"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}})
			return
		}
		h(w, r)
	}
}

func (f *fakeCloud) listFlavors(w http.ResponseWriter, r *http.Request) {
	f.flavorsSeen++
	flavor := func(id, name string, ram, vcpus int) map[string]any {
		return map[string]any{
			"id": id, "name": name, "ram": ram, "vcpus": vcpus, "disk": 20, "swap": "", "rxtx_factor": 1.0,
			"OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": false, "os-flavor-access:is_public": true,
			"links": []any{map[string]any{"rel": "self", "href": f.srv.URL + "/v2.1/flavors/" + id}},
		}
	}
	writeJSON(w, 200, map[string]any{"flavors": []any{
		flavor("1", "m1.tiny", 512, 1),
		flavor("2", "m1.small", 2048, 1),
		flavor("7b3c9f1e-large", "m1.large", 8192, 4),
	}})
}

func (f *fakeCloud) createServer(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Server map[string]any `json:"server"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Server == nil {
		writeJSON(w, 400, map[string]any{"badRequest": map[string]any{"code": 400, "message": fmt.Sprintf("Malformed request body: %v", err)}})
		return
	}
	s := body.Server
	f.creates = append(f.creates, s)
	if f.failCreate != nil && f.failCreate(w) {
		return
	}
	str := func(k string) string { v, _ := s[k].(string); return v }
	for _, k := range []string{"name", "imageRef", "flavorRef"} {
		if str(k) == "" {
			writeJSON(w, 400, map[string]any{"badRequest": map[string]any{"code": 400, "message": "Invalid input for field/attribute " + k}})
			return
		}
	}
	if ud, ok := s["user_data"]; ok {
		if _, err := base64.StdEncoding.DecodeString(fmt.Sprint(ud)); err != nil {
			writeJSON(w, 400, map[string]any{"badRequest": map[string]any{"code": 400, "message": "User data needs to be valid base 64."}})
			return
		}
	}
	if !slices.Contains([]string{"1", "2", "7b3c9f1e-large"}, str("flavorRef")) {
		writeJSON(w, 400, map[string]any{"badRequest": map[string]any{"code": 400, "message": "Flavor " + str("flavorRef") + " could not be found."}})
		return
	}
	md := map[string]string{}
	if m, ok := s["metadata"].(map[string]any); ok {
		for k, v := range m {
			md[k] = fmt.Sprint(v)
		}
	}
	srv := f.add(str("name"), "BUILD", str("flavorRef"), str("imageRef"), str("key_name"), md)
	writeJSON(w, 202, map[string]any{"server": map[string]any{
		"id":                srv.ID,
		"links":             []any{map[string]any{"rel": "self", "href": f.srv.URL + "/v2.1/servers/" + srv.ID}},
		"OS-DCF:diskConfig": "MANUAL",
		"security_groups":   []any{map[string]any{"name": "default"}},
		"adminPass":         "fakeAdminPass",
	}})
}

func (s *fakeServer) json(base string) map[string]any {
	launched := any(nil)
	if s.Status != "BUILD" {
		launched = s.Created.Add(30 * time.Second).Format("2006-01-02T15:04:05.000000")
	}
	return map[string]any{
		"id":        s.ID,
		"name":      s.Name,
		"status":    s.Status,
		"tenant_id": "p-1",
		"user_id":   "u-1",
		"metadata":  s.Metadata,
		"hostId":    "a8d2fb0bfa85ae4e4b14d1e5a2fa1b1c",
		"image":     map[string]any{"id": s.Image, "links": []any{}},
		"flavor":    map[string]any{"id": s.Flavor, "links": []any{}},
		"created":   s.Created.Format(time.RFC3339),
		"updated":   s.Created.Format(time.RFC3339),
		"addresses": map[string]any{
			"private": []any{
				map[string]any{"version": 6, "addr": "fd00::" + s.ID[len(s.ID)-2:], "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"},
				map[string]any{"version": 4, "addr": s.IP, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"},
			},
		},
		"accessIPv4":                           "",
		"accessIPv6":                           "",
		"key_name":                             s.KeyName,
		"progress":                             0,
		"config_drive":                         "",
		"links":                                []any{map[string]any{"rel": "self", "href": base + "/v2.1/servers/" + s.ID}},
		"OS-DCF:diskConfig":                    "MANUAL",
		"OS-EXT-AZ:availability_zone":          "nova",
		"OS-EXT-STS:task_state":                nil,
		"OS-EXT-STS:vm_state":                  strings.ToLower(s.Status),
		"OS-EXT-STS:power_state":               1,
		"OS-SRV-USG:launched_at":               launched,
		"OS-SRV-USG:terminated_at":             nil,
		"os-extended-volumes:volumes_attached": []any{},
		"security_groups":                      []any{map[string]any{"name": "default"}},
	}
}

// listServers pages like Nova: at most maxLimit per page, and a "next" link
// whenever a page is full (so the last page may be empty).
func (f *fakeCloud) listServers(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f.listCalls = append(f.listCalls, q)
	var visible []*fakeServer
	for _, s := range f.servers {
		if !s.Deleted {
			visible = append(visible, s)
		}
	}
	start := 0
	if m := q.Get("marker"); m != "" {
		i := slices.IndexFunc(visible, func(s *fakeServer) bool { return s.ID == m })
		if i < 0 {
			writeJSON(w, 400, map[string]any{"badRequest": map[string]any{"code": 400, "message": "marker [" + m + "] not found"}})
			return
		}
		start = i + 1
	}
	end := min(len(visible), start+f.maxLimit)
	page := []any{}
	for _, s := range visible[start:end] {
		page = append(page, s.json(f.srv.URL))
	}
	resp := map[string]any{"servers": page}
	if end-start == f.maxLimit {
		resp["servers_links"] = []any{map[string]any{"rel": "next", "href": f.srv.URL + "/v2.1/servers/detail?marker=" + visible[end-1].ID}}
	}
	writeJSON(w, 200, resp)
	// Time passes: listed servers finish building.
	for _, s := range visible[start:end] {
		if s.Status == "BUILD" {
			s.Status = "ACTIVE"
		}
	}
}

func (f *fakeCloud) deleteServer(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	f.deletes = append(f.deletes, id)
	i := slices.IndexFunc(f.servers, func(s *fakeServer) bool { return s.ID == id && !s.Deleted })
	if i < 0 {
		writeJSON(w, 404, map[string]any{"itemNotFound": map[string]any{"code": 404, "message": "Instance " + id + " could not be found."}})
		return
	}
	f.servers[i].Deleted = true
	w.WriteHeader(204)
}

// Tests.

func testConfig(f *fakeCloud) Config {
	return Config{
		Auth: gophercloud.AuthOptions{
			IdentityEndpoint: f.srv.URL + "/v3",
			Username:         testUser,
			Password:         testPass,
			DomainName:       testDomain,
			TenantName:       testProject,
		},
		Region:         testRegion,
		Image:          "img-0micado",
		Flavors:        map[string]string{"small": "m1.small", "large": "7b3c9f1e-large"},
		Networks:       []string{"net-aaaa", "net-bbbb"},
		SecurityGroups: []string{"micado-workers"},
		KeyName:        "micado-admin",
	}
}

func newTestProvider(t *testing.T, f *fakeCloud) *Provider {
	t.Helper()
	p, err := New(context.Background(), testConfig(f), WithHTTPClient(loopbackClient(t)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCreateListDelete(t *testing.T) {
	f := newFakeCloud(t)
	// Servers that List must not return.
	f.seed("w-other", "ACTIVE", map[string]string{cloudapi.TagCluster: "staging"})
	f.seed("bastion", "ACTIVE", nil)
	p := newTestProvider(t, f)
	ctx := context.Background()
	if p.Name() != "openstack" {
		t.Errorf("Name() = %q", p.Name())
	}

	ud, err := cloudapi.RenderUserData(cloudapi.TestUserDataParams("w-proxy-3f2a"))
	if err != nil {
		t.Fatal(err)
	}
	spec := cloudapi.Spec{
		Cluster:  "prod",
		Name:     "w-proxy-3f2a",
		Type:     cloudapi.InstanceType{Name: "small", Memory: 2 << 30},
		Tags:     []string{"role=proxy", "zone=a"},
		UserData: ud,
	}
	inst, err := p.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if inst.ID == "" || inst.Name != spec.Name || inst.Cluster != "prod" || inst.Type != "small" || inst.State != cloudapi.StatePending ||
		inst.CreatedAt.IsZero() || !slices.Equal(inst.Tags, spec.Tags) {
		t.Errorf("Create returned %+v", inst)
	}

	// What gophercloud really sent.
	if len(f.creates) != 1 {
		t.Fatalf("%d POST /servers, want 1", len(f.creates))
	}
	body, _ := json.Marshal(f.creates[0])
	var got struct {
		Name           string              `json:"name"`
		ImageRef       string              `json:"imageRef"`
		FlavorRef      string              `json:"flavorRef"`
		Networks       []map[string]string `json:"networks"`
		KeyName        string              `json:"key_name"`
		UserData       string              `json:"user_data"`
		Metadata       map[string]string   `json:"metadata"`
		SecurityGroups []map[string]string `json:"security_groups"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("create body %s: %v", body, err)
	}
	if got.Name != "w-proxy-3f2a" || got.ImageRef != "img-0micado" || got.KeyName != "micado-admin" {
		t.Errorf("name/imageRef/key_name = %q/%q/%q", got.Name, got.ImageRef, got.KeyName)
	}
	if got.FlavorRef != "2" {
		t.Errorf("flavorRef = %q, want 2 (m1.small resolved to its ID)", got.FlavorRef)
	}
	if want := []map[string]string{{"uuid": "net-aaaa"}, {"uuid": "net-bbbb"}}; !slices.EqualFunc(got.Networks, want, mapsEqual) {
		t.Errorf("networks = %v, want %v", got.Networks, want)
	}
	if want := []map[string]string{{"name": "micado-workers"}}; !slices.EqualFunc(got.SecurityGroups, want, mapsEqual) {
		t.Errorf("security_groups = %v", got.SecurityGroups)
	}
	dec, err := base64.StdEncoding.DecodeString(got.UserData)
	if err != nil || string(dec) != ud {
		t.Errorf("user_data decodes to %q, %v; want the rendered cloud-config", dec, err)
	}
	// Nova's metadata service hands user data to any process on the
	// server: what reached it holds the join token, never the cluster key.
	if tok, err := cloudapi.JoinTokenOf(string(dec)); err != nil || tok != cloudapi.TestUserDataParams("").JoinToken {
		t.Errorf("user_data sent to Nova: join token %q, %v", tok, err)
	}
	wantMD := map[string]string{
		cloudapi.TagCluster: "prod", cloudapi.TagRole: "proxy", cloudapi.TagNode: "w-proxy-3f2a",
		cloudapi.TagTags: "role=proxy,zone=a", cloudapi.TagType: "small",
	}
	if !mapsEqual(got.Metadata, wantMD) {
		t.Errorf("metadata = %v, want %v", got.Metadata, wantMD)
	}

	// Two more so that List needs several pages; one by flavor ID, one by
	// explicit ProviderType name.
	for _, s := range []cloudapi.Spec{
		{Cluster: "prod", Name: "w-db-1", Type: cloudapi.InstanceType{Name: "large"}},
		{Cluster: "prod", Name: "w-db-2", Type: cloudapi.InstanceType{Name: "tiny", ProviderType: "m1.tiny"}},
	} {
		if _, err := p.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if a, b := f.creates[1]["flavorRef"], f.creates[2]["flavorRef"]; a != "7b3c9f1e-large" || b != "1" {
		t.Errorf("flavorRefs = %v, %v", a, b)
	}
	if _, hasUD := f.creates[1]["user_data"]; hasUD {
		t.Error("user_data sent for a spec without user data")
	}
	if f.flavorsSeen != 1 {
		t.Errorf("flavors listed %d times, want once (cached)", f.flavorsSeen)
	}
	if _, err := p.Create(ctx, cloudapi.Spec{Cluster: "prod", Name: "w-x", Type: cloudapi.InstanceType{Name: "x", ProviderType: "m9.huge"}}); err == nil || !strings.Contains(err.Error(), `"m9.huge"`) {
		t.Errorf("unknown flavor: %v", err)
	}

	list := func() map[string]cloudapi.Instance {
		t.Helper()
		before := len(f.listCalls)
		insts, err := p.List(ctx, "prod")
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]cloudapi.Instance{}
		for _, in := range insts {
			if in.Cluster != "prod" {
				t.Errorf("List returned %+v of another cluster", in)
			}
			m[in.Name] = in
		}
		// 5 visible servers at 2 per page: 3 pages, or 2 plus an empty one.
		if calls := f.listCalls[before:]; len(calls) < 2 || calls[0].Get("marker") != "" || calls[1].Get("marker") == "" {
			t.Errorf("List did not follow servers_links: %v", calls)
		}
		return m
	}
	m := list()
	if len(m) != 3 {
		t.Fatalf("List = %+v, want the 3 created servers", m)
	}
	w := m["w-proxy-3f2a"]
	if w.ID != inst.ID || w.State != cloudapi.StatePending || w.Type != "small" || w.Address != "192.168.7.13" ||
		w.CreatedAt.IsZero() || !slices.Equal(w.Tags, spec.Tags) {
		t.Errorf("listed %+v", w)
	}
	if m = list(); m["w-proxy-3f2a"].State != cloudapi.StateRunning {
		t.Errorf("second List: state %q, want running", m["w-proxy-3f2a"].State)
	}

	if err := p.Terminate(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.deletes, []string{inst.ID}) {
		t.Errorf("DELETEs = %v", f.deletes)
	}
	m = list()
	if _, ok := m["w-proxy-3f2a"]; ok || len(m) != 2 {
		t.Errorf("List after Terminate = %+v", m)
	}
	err = p.Terminate(ctx, inst.ID)
	var ae *APIError
	if !errors.Is(err, cloudapi.ErrNotFound) || !errors.As(err, &ae) || ae.Status != 404 || !strings.Contains(err.Error(), "could not be found") {
		t.Errorf("second Terminate = %v, want ErrNotFound with Nova's message", err)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestCreateQuotaExceeded(t *testing.T) {
	f := newFakeCloud(t)
	f.failCreate = func(w http.ResponseWriter) bool {
		writeJSON(w, 403, map[string]any{"forbidden": map[string]any{"code": 403, "message": "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"}})
		return true
	}
	p := newTestProvider(t, f)
	_, err := p.Create(context.Background(), cloudapi.Spec{Cluster: "prod", Name: "w-1", Type: cloudapi.InstanceType{Name: "small"}})
	if err == nil {
		t.Fatal("Create succeeded")
	}
	t.Logf("error: %v", err)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 403 || !strings.HasPrefix(ae.Message, "Quota exceeded for instances") {
		t.Errorf("error is not a clear APIError: %#v", err)
	}
	if !errors.Is(err, cloudapi.ErrCapacity) || errors.Is(err, cloudapi.ErrNotFound) {
		t.Errorf("error should wrap ErrCapacity only: %v", err)
	}
	if want := "openstack: create server w-1 (flavor 2): HTTP 403: Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"; err.Error() != want {
		t.Errorf("error = %q\nwant    %q", err, want)
	}
	if !gophercloud.ResponseCodeIs(err, 403) {
		t.Error("gophercloud's error is not reachable with errors.As")
	}

	// A forbidden answer that is not about quota is not a capacity error.
	f.failCreate = func(w http.ResponseWriter) bool {
		writeJSON(w, 403, map[string]any{"forbidden": map[string]any{"code": 403, "message": "Policy doesn't allow os_compute_api:servers:create to be performed."}})
		return true
	}
	_, err = p.Create(context.Background(), cloudapi.Spec{Cluster: "prod", Name: "w-2", Type: cloudapi.InstanceType{Name: "small"}})
	if err == nil || errors.Is(err, cloudapi.ErrCapacity) || !strings.Contains(err.Error(), "Policy doesn't allow") {
		t.Errorf("policy error = %v", err)
	}
}

func TestReauthAfterTokenExpiry(t *testing.T) {
	f := newFakeCloud(t)
	p := newTestProvider(t, f)
	f.revokeTokens()
	if _, err := p.List(context.Background(), "prod"); err != nil {
		t.Fatalf("List after token expiry: %v", err)
	}
	if f.tokenCount != 2 {
		t.Errorf("%d tokens issued, want 2 (re-authenticated once)", f.tokenCount)
	}
}

func TestBadCredentials(t *testing.T) {
	f := newFakeCloud(t)
	cfg := testConfig(f)
	cfg.Auth.Password = "wrong"
	_, err := New(context.Background(), cfg, WithHTTPClient(loopbackClient(t)))
	if err == nil || !strings.Contains(err.Error(), "HTTP 401") || !strings.Contains(err.Error(), "requires authentication") {
		t.Errorf("New with a bad password = %v", err)
	}
}

func TestAuthFromEnv(t *testing.T) {
	f := newFakeCloud(t)
	for k, v := range map[string]string{
		"OS_AUTH_URL":                      f.srv.URL + "/v3",
		"OS_USERNAME":                      testUser,
		"OS_PASSWORD":                      testPass,
		"OS_PROJECT_NAME":                  testProject,
		"OS_DOMAIN_NAME":                   testDomain,
		"OS_REGION_NAME":                   testRegion,
		"OS_USERID":                        "",
		"OS_PROJECT_ID":                    "",
		"OS_TENANT_ID":                     "",
		"OS_TENANT_NAME":                   "",
		"OS_DOMAIN_ID":                     "",
		"OS_SYSTEM_SCOPE":                  "",
		"OS_PASSCODE":                      "",
		"OS_APPLICATION_CREDENTIAL_ID":     "",
		"OS_APPLICATION_CREDENTIAL_NAME":   "",
		"OS_APPLICATION_CREDENTIAL_SECRET": "",
	} {
		t.Setenv(k, v)
	}
	p, err := New(context.Background(), Config{Image: "img-1", Flavors: map[string]string{"small": "2"}}, WithHTTPClient(loopbackClient(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.List(context.Background(), "prod"); err != nil {
		t.Fatal(err)
	}

	if _, err := New(context.Background(), Config{}); err == nil {
		t.Error("New without image accepted")
	}
	t.Setenv("OS_AUTH_URL", "")
	if _, err := New(context.Background(), Config{Image: "img-1"}); err == nil || !strings.Contains(err.Error(), "OS_AUTH_URL") {
		t.Errorf("New without OS_AUTH_URL = %v", err)
	}
}
