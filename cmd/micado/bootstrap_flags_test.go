package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/micado-scale/micado/internal/testtls"
)

// A manager that would hand cloud instances a join token refuses to start
// unless they can spend it over TLS, with a message naming the flag; so
// do a bad join URL, CA or binary, and `up` without what cloud-init boot
// needs. Each is refused before anything is contacted or created.
func TestBootstrapFlagsAreChecked(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	notPEM := filepath.Join(dir, "notpem")
	for f, v := range map[string]string{keyFile: base64.StdEncoding.EncodeToString(make([]byte, 32)), notPEM: "hello"} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ca := testtls.NewCA(t, dir, "ca")
	srv := ca.Server(t, dir, "srv", "10.0.0.5")
	base := []string{"manager", "--cluster", "bt", "--key-file", keyFile, "--consul", "127.0.0.1:1"}
	tls := []string{"--tls-cert", srv.CertFile, "--tls-key", srv.KeyFile}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--provider", "ec2", "--ec2-ami", "ami-1", "--join-addr", "10.0.0.5:7946"}, "--tls-cert"},
		{[]string{"--provider", "openstack", "--os-image", "img", "--join-addr", "10.0.0.5:7946"}, "--tls-cert"},
		{append([]string{"--provider", "ec2", "--ec2-ami", "ami-1"}, tls...), "--join-url"},
		{append([]string{"--provider", "ec2", "--ec2-ami", "ami-1", "--join-url", "http://10.0.0.5:8080"}, tls...), "https://"},
		{append([]string{"--provider", "ec2", "--ec2-ami", "ami-1", "--join-addr", "10.0.0.5:7946", "--join-ca", notPEM}, tls...), "PEM"},
		{append([]string{"--provider", "ec2", "--ec2-ami", "ami-1", "--join-addr", "10.0.0.5:7946", "--worker-binary", filepath.Join(dir, "nope")}, tls...), "--worker-binary"},
		{append([]string{"--provider", "ec2", "--ec2-ami", "ami-1", "--join-addr", "10.0.0.5:7946", "--join-token-ttl", "-1m"}, tls...), "--join-token-ttl"},
		{append([]string{"--provider", "ec2", "--ec2-ami", "ami-1", "--join-addr", "10.0.0.5:7946", "--registry-auth-file", notPEM}, tls...), "--registry-auth-file"},
		{[]string{"--provider", "docker", "--docker-boot", "vm"}, "--docker-boot"},
	} {
		_, _, err := runCLI(t, append(base, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("micado manager %s: %v, want an error naming %q", strings.Join(c.args, " "), err, c.want)
		}
	}
	// The worker reads registry credentials as `docker login` writes them.
	if _, _, err := runCLI(t, "worker", "--cluster", "bt", "--name", "w", "--memory", "1GiB", "--key-file", keyFile, "--registry-auth-file", notPEM); err == nil ||
		!strings.Contains(err.Error(), "--registry-auth-file") || !strings.Contains(err.Error(), "config.json") {
		t.Errorf("micado worker with a registry-auth-file that is not a config.json: %v", err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--worker-boot", "vm"}, "--worker-boot"},
		{[]string{"--worker-boot", "cloud-init", "--scale-image", "micado/debian-cloud:bookworm"}, "--tls-cert"},
	} {
		_, _, err := runCLI(t, append([]string{"up", "--home", t.TempDir(), "--cluster", "btup"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("micado up %s: %v, want an error naming %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
