package main

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkloadsCannotTouchTheControlPlane attacks a running application from
// a container on the workload network, as a compromised web application
// would. With no token, and with the discovery token that linked containers
// get, it can neither read nor write micado's desired state, deregister a
// service, create a token nor create a session; with the discovery token it
// still finds its upstreams through Consul's health API, and Consul DNS works
// without one. A container without links holds no token, and the token shows
// in no docker inspect and no --json output.
func TestWorkloadsCannotTouchTheControlPlane(t *testing.T) {
	c := newTestCluster(t, "--workers", "3", "--roles", "proxy,app,db", "--worker-memory", "1GiB")
	if out, errOut, err := c.micado("deploy", repoFile(t, "definitions/webshop.yaml")); err != nil {
		t.Fatalf("deploy: %v\n%s%s", err, out, errOut)
	}
	st := c.state()
	ctx := context.Background()

	// The discovery token as a linked container holds it: a file in the
	// proxy's container (the proxy has links).
	proxy := c.appContainers("webshop-proxy")
	if len(proxy) != 1 {
		t.Fatalf("%d proxy containers", len(proxy))
	}
	rc, _, err := c.dc.CopyFromContainer(ctx, proxy[0].ID, "/run/secrets/micado-consul-token")
	if err != nil {
		t.Fatalf("the linked proxy has no token file: %v", err)
	}
	discovery := readTarFile(t, rc)
	rc.Close()
	if discovery == "" {
		t.Fatal("the proxy's token file is empty")
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "discovery.token")
	if err := os.WriteFile(tokenFile, []byte(discovery), 0o644); err != nil {
		t.Fatal(err)
	}
	db := c.appContainers("webshop-db")
	if len(db) == 0 {
		t.Fatal("no db container")
	}
	if _, _, err := c.dc.CopyFromContainer(ctx, db[0].ID, "/run/secrets/micado-consul-token"); err == nil {
		t.Error("the db, which has no links, holds a Consul token")
	}

	consul := "http://micado-" + c.name + "-consul:8500"
	key := "micado/" + c.name + "/containers/webshop-app-1"
	attacks := []struct{ what, req string }{
		{"read a container record", "GET " + consul + "/v1/kv/" + key},
		{"read the leader record", "GET " + consul + "/v1/kv/micado/" + c.name + "/leader"},
		{"rewrite a container record", "PUT " + consul + "/v1/kv/" + key + ` {"image":"evil"}`},
		{"delete the desired state", "DELETE " + consul + "/v1/kv/micado/" + c.name + "/?recurse"},
		{"write any key", "PUT " + consul + "/v1/kv/probe/x 1"},
		{"deregister a service", "PUT " + consul + "/v1/agent/service/deregister/webshop-app-1"},
		{"create a token", "PUT " + consul + `/v1/acl/token {"Description":"mine","Policies":[{"Name":"global-management"}]}`},
		{"create a session", "PUT " + consul + `/v1/session/create {"Name":"mine"}`},
	}
	var probes []string
	for _, a := range attacks {
		probes = append(probes, "req:"+a.req)
	}
	probes = append(probes, "token:/token")
	for _, a := range attacks {
		probes = append(probes, "req:"+a.req)
	}
	probes = append(probes,
		"req:GET "+consul+"/v1/health/service/webshop-app?passing",
		"dns:micado-"+c.name+"-consul:8600:webshop-app.service.consul")
	out := runProbeWith(t, c, st.AppsNetwork, map[string]string{tokenFile: "/token"}, probes...)
	if len(out) != len(probes) {
		t.Fatalf("probe printed %d lines for %d probes: %q", len(out), len(probes), out)
	}
	for i, a := range attacks {
		for _, r := range []struct {
			who  string
			line string
		}{{"without a token", out[i]}, {"with the discovery token", out[len(attacks)+1+i]}} {
			if !strings.HasPrefix(r.line, "OK 403") {
				t.Errorf("%s a workload could %s: %s (want 403)", r.who, a.what, r.line)
			}
		}
	}
	// A passing instance: a non-empty list.
	if health := out[2*len(attacks)+1]; !strings.HasPrefix(health, "OK 200 [{") {
		t.Errorf("the discovery token does not read the app's health: %s", health)
	}
	if dns := out[2*len(attacks)+2]; !strings.HasPrefix(dns, "OK "+st.Gateway) {
		t.Errorf("Consul DNS from a workload: %s, want the app at %s", dns, st.Gateway)
	}
	if c.kvCount() == 0 {
		t.Fatal("the desired state is gone")
	}
	// The proxy, following its links with the token, still serves.
	es := passing(t, c.consul(), "webshop-proxy")
	if len(es) != 1 {
		t.Fatalf("%d passing proxies", len(es))
	}

	// The token is in no inspect output and no --json output.
	info, err := c.dc.ContainerInspect(ctx, proxy[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Join(info.Config.Env, " ")
	if strings.Contains(env, discovery) || strings.Contains(strings.Join(info.Config.Cmd, " "), discovery) {
		t.Error("the discovery token is in the proxy's environment or command")
	}
	if !strings.Contains(env, "CONSUL_HTTP_TOKEN_FILE=/run/secrets/micado-consul-token") {
		t.Errorf("the proxy is not told where its token is: %v", info.Config.Env)
	}
	for _, args := range [][]string{{"ps", "--json"}, {"status", "webshop", "--json"}, {"nodes", "--json"}, {"events", "--json"}} {
		if out := c.mustMicado(args...); strings.Contains(out, discovery) {
			t.Errorf("micado %v prints the discovery token", args)
		}
	}
}

// readTarFile returns the first file of a tar stream, as CopyFromContainer
// gives it.
func readTarFile(t *testing.T, r io.Reader) string {
	t.Helper()
	tr := tar.NewReader(r)
	if _, err := tr.Next(); err != nil {
		t.Fatalf("reading the copied file: %v", err)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
