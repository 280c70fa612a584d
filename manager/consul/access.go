package consul

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// WaitReady waits until Consul at addr has elected a leader, up to wait.
func WaitReady(ctx context.Context, c *api.Client, addr string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		if err == nil && leader != "" {
			return nil
		}
		if hint := TLSHint(err); hint != "" {
			// Waiting does not mend a certificate.
			return fmt.Errorf("consul at %s: %s: %w", addr, hint, err)
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("no leader elected")
			}
			return fmt.Errorf("consul at %s is not ready after %s: %w", addr, wait, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// TLSHint says what to do about an error of the TLS connection to Consul
// (an untrusted or misnamed certificate, a missing client certificate,
// TLS on one side only), or "" when err is not one. The manager's Consul
// client takes its TLS settings from Consul's own environment variables:
// CONSUL_CACERT (or CONSUL_CAPATH), CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY,
// CONSUL_TLS_SERVER_NAME, and https:// in --consul or CONSUL_HTTP_SSL=true.
func TLSHint(err error) string {
	if err == nil {
		return ""
	}
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var verify *tls.CertificateVerificationError
	msg := err.Error()
	switch {
	case errors.As(err, &host):
		return "Consul's certificate is not valid for the address dialled: connect with a name or address the certificate names, or set CONSUL_TLS_SERVER_NAME"
	case errors.As(err, &unknown) || errors.As(err, &verify):
		return "Consul's certificate is not trusted: set CONSUL_CACERT to the file of the CA that signed it"
	case strings.Contains(msg, "tls: certificate required") || strings.Contains(msg, "tls: bad certificate") ||
		strings.Contains(msg, "tls: unknown certificate authority") || strings.Contains(msg, "tls: expired certificate"):
		return "Consul refused the manager's client certificate (it verifies incoming connections): set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY to a certificate and key signed by a CA that Consul trusts"
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return "Consul answers plain HTTP at this address: drop https:// from --consul (and CONSUL_HTTP_SSL), or give Consul's HTTPS port"
	case strings.Contains(msg, "malformed HTTP response \"\\x15\\x03") || strings.Contains(msg, "Client sent an HTTP request to an HTTPS server"):
		return "Consul speaks TLS at this address: use --consul https://<address> (or CONSUL_HTTP_SSL=true) and set CONSUL_CACERT"
	}
	return ""
}

// CheckAccess proves at start that Consul accepts the manager's ACL token
// for what the manager does, and says which right is missing if not: it
// matters because Consul with ACLs answers reads by a token without rights
// with an empty result, not an error, and a manager that saw no desired
// state would stop every container as an orphan.
//   - KV: a check-and-set under micado/<cluster>/ that can never succeed,
//     so it writes nothing (Consul checks the token before the index);
//   - sessions (the leader lock): a session is created and destroyed;
//   - reading nodes and services (the registry's health view): Consul
//     does not refuse these reads, it leaves out what the token may not
//     see and says so (X-Consul-Results-Filtered-By-ACLs), so the catalog
//     of nodes and of services is read and must come back unfiltered.
//     Every cluster has at least one node and the "consul" service, so a
//     token without node or service read is always caught;
//   - registering services: AccessCheckService is registered on the
//     local agent and deregistered at once, without checks and without
//     micado's metadata, so no manager takes it for a container.
//
// With ACLs off all pass.
func CheckAccess(ctx context.Context, c *api.Client, addr, cluster string) error {
	key := Prefix(cluster) + ".access-check"
	if _, _, err := c.KV().CAS(&api.KVPair{Key: key, ModifyIndex: math.MaxInt64}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return AccessError(addr, cluster, "write keys under "+Prefix(cluster), err)
	}
	id, _, err := c.Session().Create(&api.SessionEntry{Name: "micado access check", TTL: "10s"}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return AccessError(addr, cluster, "create sessions (the leader lock)", err)
	}
	_, _ = c.Session().Destroy(id, (&api.WriteOptions{}).WithContext(ctx))
	q := (&api.QueryOptions{}).WithContext(ctx)
	_, meta, err := c.Catalog().Nodes(q)
	if err == nil && meta.ResultsFilteredByACLs {
		err = errFiltered
	}
	if err != nil {
		return AccessError(addr, cluster, "read nodes (node_prefix \"\" read)", err)
	}
	_, meta, err = c.Catalog().Services(q)
	if err == nil && meta.ResultsFilteredByACLs {
		err = errFiltered
	}
	if err != nil {
		return AccessError(addr, cluster, "read services (service_prefix \"\" read)", err)
	}
	sid := AccessCheckService + "-" + cluster
	if err := c.Agent().ServiceRegisterOpts(&api.AgentServiceRegistration{ID: sid, Name: AccessCheckService}, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return AccessError(addr, cluster, "register services (service_prefix \"\" write)", err)
	}
	if err := c.Agent().ServiceDeregisterOpts(sid, q); err != nil {
		return AccessError(addr, cluster, "deregister services (service_prefix \"\" write)", err)
	}
	return nil
}

// AccessCheckService is the name of the service CheckAccess registers and
// deregisters at once, with ID AccessCheckService-<cluster>.
const AccessCheckService = "micado-access-check"

// errFiltered stands for a read that Consul answered with some results
// left out for want of rights, which it does instead of refusing.
var errFiltered = errors.New("consul left results out of the answer for want of ACL rights (X-Consul-Results-Filtered-By-ACLs)")

// AccessError explains a Consul error that is an ACL refusal (naming the
// right that is missing), and returns other errors wrapped as they are.
func AccessError(addr, cluster, right string, err error) error {
	var se api.StatusError
	denied := errors.As(err, &se) && se.Code == http.StatusForbidden || errors.Is(err, errFiltered)
	msg := err.Error()
	if !denied {
		return fmt.Errorf("consul at %s: %w", addr, err)
	}
	need := fmt.Sprintf("a token that may write keys under micado/%s/, create sessions and register services (key_prefix \"micado/%s/\" write, session_prefix \"\" write, service_prefix \"\" write, node_prefix \"\" read)", cluster, cluster)
	switch {
	case strings.Contains(msg, "ACL not found"):
		return fmt.Errorf("consul ACL: Consul at %s does not know the manager's token (CONSUL_HTTP_TOKEN or --consul-token-file): it is mistyped or was deleted; give it %s: %w", addr, need, err)
	case strings.Contains(msg, "anonymous token"):
		return fmt.Errorf("consul ACL: Consul at %s has ACLs on and the manager has no token: set CONSUL_HTTP_TOKEN or --consul-token-file to %s: %w", addr, need, err)
	default:
		return fmt.Errorf("consul ACL: the manager's token may not %s at Consul %s: the manager needs %s: %w", right, addr, need, err)
	}
}
