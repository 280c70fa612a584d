// Package registryauth reads registry credentials in the format `docker
// login` writes (~/.docker/config.json, its "auths") and picks the ones
// for an image's registry, as the Docker CLI does for a pull.
package registryauth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/registry"
)

// dockerHub is the key `docker login` uses for Docker Hub.
const dockerHub = "https://index.docker.io/v1/"

// Auths are credentials by registry host (e.g. "registry.example.com:5000",
// "docker.io").
type Auths map[string]registry.AuthConfig

// Parse reads a Docker config.json. Each entry of "auths" needs "auth"
// (base64 of user:password) or "username" and "password", or an
// "identitytoken". A file without entries is an error: it would pull
// anonymously while the user meant otherwise.
func Parse(data []byte) (Auths, error) {
	var cfg struct {
		Auths map[string]struct {
			Auth          string `json:"auth"`
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("not a Docker config.json: %w", err)
	}
	if len(cfg.Auths) == 0 {
		return nil, errors.New(`no registry in "auths": give the file ` + "`docker login`" + ` writes, e.g. {"auths": {"registry.example.com": {"auth": "BASE64(user:password)"}}}`)
	}
	out := Auths{}
	for server, a := range cfg.Auths {
		ac := registry.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, ServerAddress: server}
		if a.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("auths[%q].auth is not base64: %w", server, err)
			}
			user, pass, ok := strings.Cut(string(dec), ":")
			if !ok || user == "" {
				return nil, fmt.Errorf("auths[%q].auth is not base64 of user:password", server)
			}
			ac.Username, ac.Password = user, pass
		}
		if ac.Username == "" && ac.IdentityToken == "" {
			return nil, fmt.Errorf("auths[%q] has no auth, username or identitytoken (a credential helper's entry cannot be used here)", server)
		}
		out[host(server)] = ac
	}
	return out, nil
}

// host reduces a config.json key (a host, or a URL such as
// "https://index.docker.io/v1/") to the registry host.
func host(server string) string {
	if server == dockerHub {
		return "docker.io"
	}
	s := strings.TrimPrefix(strings.TrimPrefix(server, "https://"), "http://")
	s, _, _ = strings.Cut(s, "/")
	if s == "index.docker.io" || s == "registry-1.docker.io" {
		return "docker.io"
	}
	return s
}

// For returns the encoded X-Registry-Auth for pulling image, or "" when
// no credentials are for its registry (the pull is then anonymous).
func (a Auths) For(image string) (string, error) {
	if len(a) == 0 {
		return "", nil
	}
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", fmt.Errorf("image %q: %w", image, err)
	}
	ac, ok := a[reference.Domain(named)]
	if !ok {
		return "", nil
	}
	return registry.EncodeAuthConfig(ac)
}
