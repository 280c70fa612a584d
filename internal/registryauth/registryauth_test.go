package registryauth

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/registry"
)

func decode(t *testing.T, enc string) registry.AuthConfig {
	t.Helper()
	b, err := base64.URLEncoding.DecodeString(enc)
	if err != nil {
		t.Fatal(err)
	}
	var ac registry.AuthConfig
	if err := json.Unmarshal(b, &ac); err != nil {
		t.Fatal(err)
	}
	return ac
}

// A pull gets the credentials of its image's registry, as `docker pull`
// would after `docker login`; other registries pull anonymously.
func TestCredentialsFollowTheImagesRegistry(t *testing.T) {
	cfg := `{"auths": {
		"registry.example.com:5000": {"auth": "` + base64.StdEncoding.EncodeToString([]byte("alice:s3cr:et")) + `"},
		"https://index.docker.io/v1/": {"username": "bob", "password": "hub"},
		"ghcr.io": {"identitytoken": "tok"}}}`
	a, err := Parse([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	for image, want := range map[string]string{
		"registry.example.com:5000/team/web:1.2":            "alice:s3cr:et",
		"nginx:1.27":                                        "bob:hub",
		"docker.io/library/nginx":                           "bob:hub",
		"ghcr.io/org/app@sha256:" + strings.Repeat("a", 64): ":",
		"quay.io/other/app":                                 "",
		"registry.example.com/team/web":                     "", // another port: another registry
	} {
		enc, err := a.For(image)
		if err != nil {
			t.Fatalf("%s: %v", image, err)
		}
		if want == "" {
			if enc != "" {
				t.Errorf("%s: credentials %q for a registry without any", image, enc)
			}
			continue
		}
		ac := decode(t, enc)
		if got := ac.Username + ":" + ac.Password; got != want {
			t.Errorf("%s: credentials %q, want %q", image, got, want)
		}
		if image[:5] == "ghcr." && ac.IdentityToken != "tok" {
			t.Errorf("%s: identity token %q", image, ac.IdentityToken)
		}
	}
}

func TestBadConfigIsRefusedByName(t *testing.T) {
	for cfg, want := range map[string]string{
		`not json`: "not a Docker config.json",
		`{}`:       "no registry",
		`{"auths": {"r.example": {"auth": "!!"}}}`:       `auths["r.example"].auth is not base64`,
		`{"auths": {"r.example": {"auth": "dXNlcg=="}}}`: "not base64 of user:password",
		`{"auths": {"r.example": {}}}`:                   "credential helper",
	} {
		if _, err := Parse([]byte(cfg)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%s) = %v, want an error saying %q", cfg, err, want)
		}
	}
}
