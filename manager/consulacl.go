package manager

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"

	"github.com/hashicorp/consul/api"
)

// checkConsulAccess proves at start that Consul accepts the manager's ACL
// token (Config.ConsulToken) for what the manager does: writing its
// desired state under micado/<cluster>/. It matters because Consul with
// ACLs answers reads by a token without rights with an empty result, not
// an error: a manager started without a token would see no desired state
// and stop every container as an orphan. The probe is a check-and-set
// that can never succeed, so it writes nothing; Consul checks the token
// before the index. With ACLs off it passes.
func (m *Manager) checkConsulAccess(ctx context.Context) error {
	key := "micado/" + m.cfg.Cluster + "/.access-check"
	_, _, err := m.consul.KV().CAS(&api.KVPair{Key: key, ModifyIndex: math.MaxInt64}, (&api.WriteOptions{}).WithContext(ctx))
	if err == nil {
		return nil
	}
	return consulAccessError(m.cfg.ConsulAddr, m.cfg.Cluster, err)
}

// consulAccessError explains a Consul error that is an ACL refusal, and
// returns other errors wrapped as they are.
func consulAccessError(addr, cluster string, err error) error {
	var se api.StatusError
	denied := errors.As(err, &se) && se.Code == http.StatusForbidden
	msg := err.Error()
	if !denied {
		return fmt.Errorf("consul at %s: %w", addr, err)
	}
	need := fmt.Sprintf("a token that may write keys under micado/%s/ and register services (key_prefix \"micado/%s/\" write, service_prefix \"\" write, node_prefix \"\" read)", cluster, cluster)
	switch {
	case strings.Contains(msg, "ACL not found"):
		return fmt.Errorf("consul ACL: Consul at %s does not know the manager's token (CONSUL_HTTP_TOKEN or --consul-token-file): it is mistyped or was deleted; give it %s: %w", addr, need, err)
	case strings.Contains(msg, "anonymous token"):
		return fmt.Errorf("consul ACL: Consul at %s has ACLs on and the manager has no token: set CONSUL_HTTP_TOKEN or --consul-token-file to %s: %w", addr, need, err)
	default:
		return fmt.Errorf("consul ACL: the manager's token lacks permissions at Consul %s: the manager needs %s: %w", addr, need, err)
	}
}
