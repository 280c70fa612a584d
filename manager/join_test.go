package manager

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/micado-scale/micado/cloudapi"
)

// bootstrapConfig is a scale-out configuration whose instances bootstrap
// from a stock image with a join token.
func bootstrapConfig(t *testing.T, ttl time.Duration) Config {
	binary := filepath.Join(t.TempDir(), "micado")
	if err := os.WriteFile(binary, []byte("#!micado binary\x00\x01"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := scaleConfig()
	cfg.ClusterKey = []byte("0123456789abcdef0123456789abcdef")
	cfg.APIToken = "api-token"
	cfg.JoinAddr = "10.0.0.2:7946"
	cfg.Bootstrap = &Bootstrap{URL: "https://10.0.0.2:8080", CA: cloudapi.TestUserDataParams("").ManagerCA,
		TokenTTL: ttl, Binary: binary,
		RegistryAuth: []byte(`{"auths": {"registry.example.com": {"auth": "dXNlcjpwYXNz"}}}`)}
	return cfg
}

// joinCall calls a join endpoint with a bearer token and returns the
// status and body.
func joinCall(t *testing.T, tm *testManager, method, path, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, tm.base+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scaleOutOne starts a leading manager with cfg and a fake cloud, launches
// a container that needs a new instance, and returns the manager and the
// spec the cloud was asked for.
func scaleOutOne(t *testing.T, cfg Config) (*testManager, cloudapi.Spec) {
	t.Helper()
	w := newWorld(t)
	cfg.Provider = w.cloud
	m := w.start("m1", cfg)
	w.leader()
	created := make(chan cloudapi.Spec, 4)
	w.cloud.onCreate = func(s cloudapi.Spec) { created <- s }
	if code, msg := m.launch(LaunchRequest{Image: "micado/demo-web", Name: "a", Role: "app", Memory: "64MiB"}); code != http.StatusAccepted {
		t.Fatalf("launch: %d %s", code, msg)
	}
	select {
	case s := <-created:
		return m, s
	case <-time.After(5 * time.Second):
		t.Fatal("the cloud was never asked for an instance")
	}
	return nil, cloudapi.Spec{}
}

// A new instance's user data holds a join token and never the cluster key;
// the journal holds only the token's hash; the token fetches the binary
// (as often as needed) and is spent once for the key; a spent, unknown or
// missing token is refused, and so is the API token.
func TestJoinTokenIsSpentOnceForTheKey(t *testing.T) {
	cfg := bootstrapConfig(t, time.Hour)
	m, spec := scaleOutOne(t, cfg)

	token, err := cloudapi.JoinTokenOf(spec.UserData)
	if err != nil {
		t.Fatalf("user data sent to the cloud: %v", err)
	}
	key := base64.StdEncoding.EncodeToString(cfg.ClusterKey)
	if strings.Contains(spec.UserData, key) || strings.Contains(spec.UserData, string(cfg.ClusterKey)) {
		t.Fatal("the user data holds the cluster key")
	}
	binary, err := os.ReadFile(cfg.Bootstrap.Binary)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(binary)
	if !strings.Contains(spec.UserData, "MICADO_BINARY_SHA256="+hex.EncodeToString(sum[:])) {
		t.Error("the user data lacks the binary's checksum")
	}
	for _, k := range m.w.journal.Keys("") {
		if p, _ := m.w.journal.Get(k); strings.Contains(string(p.Value), token) {
			t.Fatalf("the journal holds the join token in clear (%s)", k)
		}
	}
	in, _ := m.current().store.Instance(spec.Name)
	if in.JoinToken != hashJoinToken(token) || in.JoinExpires.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("instance record: %+v", in)
	}

	for i := 0; i < 2; i++ {
		code, body := joinCall(t, m, "GET", cloudapi.JoinBinaryPath, token)
		if code != http.StatusOK || !bytes.Equal([]byte(body), binary) {
			t.Fatalf("GET binary #%d: %d %q", i+1, code, body)
		}
	}
	code, body := joinCall(t, m, "POST", cloudapi.JoinPath, token)
	if code != http.StatusOK {
		t.Fatalf("POST join: %d %q", code, body)
	}
	files := untar(t, body)
	if strings.TrimSpace(files[cloudapi.JoinKeyFile]) != key || files[cloudapi.JoinRegistryAuthFile] != string(cfg.Bootstrap.RegistryAuth) || len(files) != 2 {
		t.Fatalf("POST join answered %q", files)
	}
	if !strings.Contains(spec.UserData, "--registry-auth-file "+cloudapi.RegistryAuthPath) || strings.Contains(spec.UserData, "dXNlcjpwYXNz") {
		t.Error("the worker's unit does not read the registry credentials, or the user data holds them")
	}
	for _, c := range []struct{ method, path, token, want string }{
		{"POST", cloudapi.JoinPath, token, "already used"},
		{"GET", cloudapi.JoinBinaryPath, token, "already used"},
		{"POST", cloudapi.JoinPath, "notatokenofanyinstance000", "unknown join token"},
		{"POST", cloudapi.JoinPath, "", "no join token"},
		{"POST", cloudapi.JoinPath, cfg.APIToken, "unknown join token"},
	} {
		code, body := joinCall(t, m, c.method, c.path, c.token)
		if code != http.StatusForbidden && code != http.StatusUnauthorized || !strings.Contains(body, c.want) || strings.Contains(body, key) {
			t.Errorf("%s %s with %q: %d %s, want a refusal saying %q", c.method, c.path, c.token, code, body, c.want)
		}
	}
	// The rest of the API still wants the API token, not a join token.
	if code, _ := joinCall(t, m, "GET", "/v1/containers", token); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/containers with a join token: %d", code)
	}
	evs, _ := m.events.since(0, 1000)
	var issued, refused int
	for _, e := range evs {
		switch e.Kind {
		case EventKeyIssued:
			issued++
		case EventJoinRefused:
			refused++
		}
	}
	if issued != 1 || refused < 4 {
		t.Errorf("events: %d key-issued, %d join-refused", issued, refused)
	}
}

// An expired token fetches nothing.
func TestExpiredJoinTokenIsRefused(t *testing.T) {
	m, spec := scaleOutOne(t, bootstrapConfig(t, time.Millisecond))
	token, err := cloudapi.JoinTokenOf(spec.UserData)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	for _, path := range []string{cloudapi.JoinBinaryPath, cloudapi.JoinPath} {
		method := map[string]string{cloudapi.JoinBinaryPath: "GET", cloudapi.JoinPath: "POST"}[path]
		if code, body := joinCall(t, m, method, path, token); code != http.StatusForbidden || !strings.Contains(body, "expired") {
			t.Errorf("%s %s with an expired token: %d %s", method, path, code, body)
		}
	}
}

// A bootstrap with a bad URL, CA or no binary stops the manager at start.
func TestBootstrapConfigIsChecked(t *testing.T) {
	for name, mutate := range map[string]func(*Bootstrap){
		"plain http":   func(b *Bootstrap) { b.URL = "http://10.0.0.2:8080" },
		"CA not PEM":   func(b *Bootstrap) { b.CA = "not a certificate" },
		"no binary":    func(b *Bootstrap) { b.Binary = filepath.Join(t.TempDir(), "missing") },
		"negative TTL": func(b *Bootstrap) { b.TokenTTL = -time.Second },
	} {
		cfg := bootstrapConfig(t, time.Hour)
		mutate(cfg.Bootstrap)
		if err := cfg.defaults(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// untar reads the join answer: file name to content; every file 0600.
func untar(t *testing.T, body string) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(strings.NewReader(body))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("the join answer is not a tar archive: %v", err)
		}
		if h.Mode != 0o600 {
			t.Errorf("%s has mode %o", h.Name, h.Mode)
		}
		b, _ := io.ReadAll(tr)
		out[h.Name] = string(b)
	}
}
