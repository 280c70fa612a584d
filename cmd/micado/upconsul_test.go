package main

import (
	"encoding/base64"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// TestConsulSecretsConfig: the config file `up` gives every Consul agent
// turns ACLs on with default deny, names the pre-chosen tokens and the
// gossip key, and the secrets are fresh random values each time.
func TestConsulSecretsConfig(t *testing.T) {
	uuidRE := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	s := newConsulSecrets()
	var cfg struct {
		ACL struct {
			Enabled                bool              `json:"enabled"`
			DefaultPolicy          string            `json:"default_policy"`
			EnableTokenPersistence *bool             `json:"enable_token_persistence"`
			Tokens                 map[string]string `json:"tokens"`
		} `json:"acl"`
		Encrypt string `json:"encrypt"`
	}
	if err := json.Unmarshal(s.config(), &cfg); err != nil {
		t.Fatalf("config is not JSON: %v\n%s", err, s.config())
	}
	if !cfg.ACL.Enabled || cfg.ACL.DefaultPolicy != "deny" || cfg.ACL.EnableTokenPersistence == nil || *cfg.ACL.EnableTokenPersistence {
		t.Errorf("acl = %+v, want enabled, default deny, no token persistence", cfg.ACL)
	}
	want := map[string]string{"initial_management": s.management, "agent": s.agent, "dns": s.dns}
	for k, v := range want {
		if cfg.ACL.Tokens[k] != v || !uuidRE.MatchString(v) {
			t.Errorf("tokens.%s = %q, want the UUID %q", k, cfg.ACL.Tokens[k], v)
		}
	}
	if k, err := base64.StdEncoding.DecodeString(cfg.Encrypt); err != nil || len(k) != 32 || cfg.Encrypt != s.encrypt {
		t.Errorf("encrypt %q is not base64 of 32 bytes (%v)", cfg.Encrypt, err)
	}
	if o := newConsulSecrets(); o.management == s.management || o.agent == s.agent || o.encrypt == s.encrypt {
		t.Error("two calls chose the same secrets")
	}
}

// TestConsulRules: the manager may write its own cluster's keys only; the
// discovery and agent policies write no keys at all.
func TestConsulRules(t *testing.T) {
	r := consulRules("prod")
	if got := r[managerPolicy("prod")]; !strings.Contains(got, `key_prefix "micado/prod/" { policy = "write" }`) ||
		!strings.Contains(got, `session_prefix "" { policy = "write" }`) || strings.Contains(got, `key_prefix "" `) {
		t.Errorf("manager rules:\n%s", got)
	}
	for _, p := range []string{agentPolicy, discoveryPolicy} {
		if strings.Contains(r[p], "key") || strings.Contains(r[p], "acl") {
			t.Errorf("%s rules reach keys or ACLs:\n%s", p, r[p])
		}
	}
	if strings.Contains(r[discoveryPolicy], "write") {
		t.Errorf("the discovery policy writes:\n%s", r[discoveryPolicy])
	}
}
