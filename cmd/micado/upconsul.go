package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// The Consul of a local cluster runs with ACLs on (default deny) and
// encrypted gossip. `up` chooses every secret itself before Consul starts:
// the gossip key and the SecretIDs of the management, agent and DNS tokens
// go into one config file that every Consul container reads with
// -config-file, so that none of them is on a command line or in an
// environment (`docker inspect` shows both). Once Consul has a leader, `up`
// creates the policies and the tokens behind those SecretIDs, and the
// manager's and the discovery token, with the management token.

// consulConfigMountPath is where Consul containers find the config file.
const consulConfigMountPath = "/consul/config/micado.json"

// Where the managers find their Consul tokens.
const (
	consulTokenMountPath     = "/etc/micado/consul-token"
	consulDiscoveryMountPath = "/etc/micado/consul-discovery-token"
)

// consulSecrets are the secrets `up` chooses for Consul.
type consulSecrets struct {
	management string // initial management token: everything; the operator's
	agent      string // the Consul agents' own token: register their node
	dns        string // answers DNS queries: read services and nodes
	encrypt    string // gossip key: base64 of 32 random bytes
}

func newConsulSecrets() consulSecrets {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return consulSecrets{management: randomUUID(), agent: randomUUID(), dns: randomUUID(),
		encrypt: base64.StdEncoding.EncodeToString(key)}
}

// randomUUID is a random (version 4) UUID, the form of Consul SecretIDs.
func randomUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// config is the Consul agent configuration (JSON) with the secrets. Servers
// and client agents read the same file: initial_management only matters on
// servers, the agent and DNS tokens on every agent.
func (s consulSecrets) config() []byte {
	type tokens struct {
		InitialManagement string `json:"initial_management"`
		Agent             string `json:"agent"`
		DNS               string `json:"dns"`
	}
	type acl struct {
		Enabled                bool   `json:"enabled"`
		DefaultPolicy          string `json:"default_policy"`
		EnableTokenPersistence bool   `json:"enable_token_persistence"`
		Tokens                 tokens `json:"tokens"`
	}
	// The update check would only fail (no Internet on a cluster
	// network, as a rule) and log an error every time.
	b, _ := json.MarshalIndent(struct {
		ACL                acl    `json:"acl"`
		Encrypt            string `json:"encrypt"`
		DisableUpdateCheck bool   `json:"disable_update_check"`
	}{acl{Enabled: true, DefaultPolicy: "deny", Tokens: tokens{s.management, s.agent, s.dns}}, s.encrypt, true}, "", "  ")
	return append(b, '\n')
}

// Policies of a local cluster's Consul.
const (
	agentPolicy     = "micado-agent"
	discoveryPolicy = "micado-discovery"
)

func managerPolicy(cluster string) string { return "micado-manager-" + cluster }

// consulRules are the rules of the policies `up` creates, by name.
func consulRules(cluster string) map[string]string {
	return map[string]string{
		// A Consul agent registers its own node and syncs the services
		// registered on it.
		agentPolicy: `node_prefix "" { policy = "write" }
service_prefix "" { policy = "read" }`,
		// Service discovery, over HTTP and DNS: read, nothing else.
		discoveryPolicy: `service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }`,
		// The manager: its desired state under micado/<cluster>/, the
		// leader lock (sessions) and the services of the containers.
		managerPolicy(cluster): fmt.Sprintf(`key_prefix "micado/%s/" { policy = "write" }
session_prefix "" { policy = "write" }
service_prefix "" { policy = "write" }
node_prefix "" { policy = "read" }
agent_prefix "" { policy = "read" }`, cluster),
	}
}

// consulTokens are the token files `up` writes into the state directory.
type consulTokens struct {
	management, manager, discovery string // file paths
}

// setupConsulACL waits until Consul at addr (host:port) has a leader and
// accepts the management token, then creates the policies and tokens of a
// local cluster and writes the management, manager and discovery tokens
// into dir (mode 0600).
func setupConsulACL(ctx context.Context, addr, cluster, dir string, s consulSecrets) (consulTokens, error) {
	cl, err := consul.NewClient(&consul.Config{Address: addr, Token: s.management})
	if err != nil {
		return consulTokens{}, err
	}
	// The leader makes the initial management token when it takes office:
	// until then the token is unknown.
	var last error
	for {
		leader, err := cl.Status().LeaderWithQueryOptions((&consul.QueryOptions{}).WithContext(ctx))
		if err == nil && leader != "" {
			if _, _, err = cl.ACL().TokenReadSelf((&consul.QueryOptions{}).WithContext(ctx)); err == nil {
				break
			}
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return consulTokens{}, userErr("Consul at %s did not come up with ACLs: %v", addr, last)
		case <-time.After(300 * time.Millisecond):
		}
	}
	wo := (&consul.WriteOptions{}).WithContext(ctx)
	for name, rules := range consulRules(cluster) {
		p := &consul.ACLPolicy{Name: name, Rules: rules, Description: "micado cluster " + cluster}
		if _, _, err := cl.ACL().PolicyCreate(p, wo); err != nil {
			return consulTokens{}, userErr("Consul: cannot create policy %s: %v", name, err)
		}
	}
	token := func(secret, policy, desc string) (string, error) {
		t := &consul.ACLToken{SecretID: secret, Description: desc, Policies: []*consul.ACLTokenPolicyLink{{Name: policy}}}
		made, _, err := cl.ACL().TokenCreate(t, wo)
		if err != nil {
			return "", userErr("Consul: cannot create the %s: %v", desc, err)
		}
		return made.SecretID, nil
	}
	if _, err := token(s.agent, agentPolicy, "agent token (micado "+cluster+")"); err != nil {
		return consulTokens{}, err
	}
	if _, err := token(s.dns, discoveryPolicy, "DNS token (micado "+cluster+")"); err != nil {
		return consulTokens{}, err
	}
	disc, err := token(randomUUID(), discoveryPolicy, "discovery token (micado "+cluster+")")
	if err != nil {
		return consulTokens{}, err
	}
	mgr, err := token(randomUUID(), managerPolicy(cluster), "manager token (micado "+cluster+")")
	if err != nil {
		return consulTokens{}, err
	}
	t := consulTokens{management: filepath.Join(dir, "consul-management.token"),
		manager: filepath.Join(dir, "consul-manager.token"), discovery: filepath.Join(dir, "consul-discovery.token")}
	for path, v := range map[string]string{t.management: s.management, t.manager: mgr, t.discovery: disc} {
		if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
			return consulTokens{}, err
		}
	}
	return t, nil
}
