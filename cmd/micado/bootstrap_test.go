package main

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	dockerclient "github.com/docker/docker/client"
	"github.com/micado-scale/micado/cloudapi"
	cdocker "github.com/micado-scale/micado/cloudapi/docker"
	"github.com/micado-scale/micado/internal/testtls"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
)

// debianImage is the stock Debian image `make image-debian` builds: no
// Docker, no micado, Debian's cloud-init and a local copy of the Debian
// packages Docker needs (the test runs offline).
func debianImage() string {
	return cmp.Or(os.Getenv("MICADO_DEBIAN_IMAGE"), "micado/debian-cloud:bookworm")
}

// preloadUnits stand in for the registry this machine lacks: a layer on
// the stock image loads the demo image into the instance's own Docker
// engine (once cloud-init has installed it) before the worker starts.
const (
	preloadService = `[Unit]
Description=Load the test's images into Docker (no registry here)
Requires=docker.service
After=docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/docker load -i /var/local/micado-test/images.tar
`
	preloadDropIn = `[Unit]
Requires=micado-test-preload.service
After=micado-test-preload.service
`
)

// buildPreloadImage builds the stock image plus the images the test's
// workloads need, and removes it when the test ends.
func buildPreloadImage(t *testing.T, dc *dockerclient.Client, base string, images ...string) string {
	t.Helper()
	ctx := context.Background()
	if _, err := dc.ImageInspect(ctx, base); err != nil {
		t.Fatalf("this test needs the stock Debian image %s: build it with `make image-debian`: %v", base, err)
	}
	saved, err := dc.ImageSave(ctx, images)
	if err != nil {
		t.Fatal(err)
	}
	imgTar, err := io.ReadAll(saved)
	saved.Close()
	if err != nil {
		t.Fatal(err)
	}
	buildCtx, err := wire.TarFiles([]wire.File{
		{Path: "/Dockerfile", Mode: 0o644, Data: []byte("FROM " + base + "\n" +
			"COPY images.tar /var/local/micado-test/images.tar\n" +
			"COPY preload.service /etc/systemd/system/micado-test-preload.service\n" +
			"COPY preload.conf /etc/systemd/system/micado-worker.service.d/preload.conf\n")},
		{Path: "/images.tar", Mode: 0o644, Data: imgTar},
		{Path: "/preload.service", Mode: 0o644, Data: []byte(preloadService)},
		{Path: "/preload.conf", Mode: 0o644, Data: []byte(preloadDropIn)},
	})
	if err != nil {
		t.Fatal(err)
	}
	tag := "micado/debian-cloud:test-" + newClusterName("preload")
	resp, err := dc.ImageBuild(ctx, bytes.NewReader(buildCtx), types.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true,
		Labels: map[string]string{"io.micado.test": "bootstrap"}})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Cleanup(func() {
		_, _ = dc.ImageRemove(context.Background(), tag, image.RemoveOptions{Force: true, PruneChildren: true})
	})
	if _, err := dc.ImageInspect(ctx, tag); err != nil {
		t.Fatalf("building %s: %v\n%s", tag, err, out)
	}
	return tag
}

// vmExec runs a shell command in a machine container and returns its
// output and exit code.
func vmExec(t *testing.T, dc *dockerclient.Client, id, script string) (string, int) {
	t.Helper()
	ctx := context.Background()
	ex, err := dc.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: []string{"sh", "-c", script}, AttachStdout: true, AttachStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	att, err := dc.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	_, _ = io.Copy(&out, att.Reader) // multiplexed: the frame headers do not matter to the checks
	att.Close()
	ins, err := dc.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), ins.ExitCode
}

// readFile copies one file out of a container.
func readFile(t *testing.T, dc *dockerclient.Client, id, path string) string {
	t.Helper()
	rc, _, err := dc.CopyFromContainer(context.Background(), id, path)
	if err != nil {
		t.Fatalf("copy %s out of %s: %v", path, id, err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(tr)
	return string(b)
}

// TestWorkerBootstrapsFromAStockImage: scale-out on a stock Debian image.
// The manager asks its provider for an instance that boots like a cloud
// VM (systemd, cloud-init, the user data an EC2 or OpenStack instance
// gets). The user data holds a join token and not the cluster key.
// cloud-init installs Docker from Debian's packages, fetches micado from
// the manager over TLS and checks its checksum, spends the token for the
// key and starts the worker under systemd; the held launch then runs on
// it and passes its health check. A copy of the user data whose checksum
// does not match what the manager serves is refused before the token is
// spent, and a second use of the spent token is refused.
func TestWorkerBootstrapsFromAStockImage(t *testing.T) {
	dc := requireDocker(t)
	ctx := context.Background()
	vmImage := buildPreloadImage(t, dc, debianImage(), "micado/demo-web:latest")
	name := newClusterName("boot")
	dir := t.TempDir()
	ca := testtls.NewCA(t, dir, "ca")
	srv := ca.Server(t, dir, "manager", "127.0.0.1", "micado-"+name+"-manager")
	// Credentials for a registry (none runs here: the demo image is
	// preloaded), which the worker gets with the key, not in user data.
	regAuth := filepath.Join(dir, "config.json")
	const regCred = "bWljYWRvOnMzY3JldC1yZWdpc3RyeS1wYXNzd29yZA==" // micado:s3cret-registry-password
	if err := os.WriteFile(regAuth, []byte(`{"auths": {"registry.example.com": {"auth": "`+regCred+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newTestClusterNamed(t, name, "--workers", "0", "--roles", "app", "--provider", "docker", "--worker-boot", "cloud-init",
		"--scale-image", vmImage, "--instance-types", "small=512MiB", "--join-timeout", "10m", "--consolidate-schedule", "off",
		"--tls-cert", srv.CertFile, "--tls-key", srv.KeyFile, "--ca-cert", ca.File, "--registry-auth-file", regAuth)
	key, err := os.ReadFile(c.state().KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "web", "--memory", "64MiB", "--port", "8080", "--health-path", "/health", "--detach")

	// The instance scale-out asked for: hold it while a forged copy runs.
	var vm container.Summary
	eventually(t, time.Minute, "the manager asks for an instance", func() (bool, string) {
		cs, _ := dc.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
			filters.Arg("label", wire.LabelCluster+"="+name), filters.Arg("label", wire.LabelComponent+"="+wire.ComponentWorker))})
		if len(cs) == 1 {
			vm = cs[0]
		}
		ev, _, _ := c.micado("events", "-n", "8")
		return len(cs) == 1, fmt.Sprintf("%d workers; events:\n%s", len(cs), ev)
	})
	if err := dc.ContainerPause(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	ud := readFile(t, dc, vm.ID, "/var/lib/cloud/seed/nocloud/user-data")
	token, err := cloudapi.JoinTokenOf(ud)
	if err != nil {
		t.Fatalf("the instance's user data: %v", err)
	}
	if k := strings.TrimSpace(string(key)); strings.Contains(ud, k) || strings.Contains(ud, regCred) {
		t.Fatal("the instance's user data holds the cluster key or the registry credentials")
	}

	// A tampered binary: the same user data, expecting another checksum.
	other := sha256.Sum256([]byte("not the binary the manager serves"))
	forged := regexp.MustCompile(`MICADO_BINARY_SHA256=[0-9a-f]{64}`).ReplaceAllString(ud, "MICADO_BINARY_SHA256="+hex.EncodeToString(other[:]))
	if forged == ud {
		t.Fatal("no checksum in the user data to change")
	}
	forgedAt := time.Now()
	fid := startMachine(t, dc, name, debianImage(), "forged", forged)
	if out, _ := vmExec(t, dc, fid, "cloud-init status --wait >/dev/null; cat /var/log/cloud-init-output.log"); !strings.Contains(out, "not "+hex.EncodeToString(other[:])+": refused") {
		t.Fatalf("the forged instance's bootstrap did not refuse the binary:\n%s", out)
	}
	if out, code := vmExec(t, dc, fid, "test ! -e /etc/micado/cluster.key && test ! -e /usr/local/bin/micado && ! systemctl is-active --quiet micado-worker"); code != 0 {
		t.Fatalf("after refusing the binary the forged instance has a key, a binary or a worker: %s", out)
	}
	t.Logf("the forged instance refused the binary %s after it started (Docker installed from Debian's packages first)", time.Since(forgedAt).Round(time.Second))
	_ = dc.ContainerRemove(ctx, fid, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err := dc.ContainerUnpause(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()

	// The real instance boots, joins and runs the held launch.
	eventually(t, 8*time.Minute, "web passes on the new instance", func() (bool, string) {
		for _, x := range c.ps() {
			if x.Service == "web" && x.State == manager.StateRunning && x.Health == "passing" && strings.HasPrefix(x.Node, "w-app-") {
				return true, ""
			}
		}
		out, _ := vmExec(t, dc, vm.ID, "tail -n 3 /var/log/cloud-init-output.log")
		return false, out
	})
	t.Logf("from launch to a passing container on a bootstrapped stock Debian instance: %s, of which %s after the instance was let boot (it was held while the forged copy ran)",
		time.Since(start).Round(time.Second), time.Since(resumed).Round(time.Second))
	checks := `set -e
dpkg-query -W -f='${Status}\n' docker.io | grep -q 'install ok installed'
systemctl is-active --quiet docker micado-worker
test "$(sha256sum /usr/local/bin/micado | cut -d' ' -f1)" = "$(sed -n 's/^ *MICADO_BINARY_SHA256=//p' /var/lib/cloud/seed/nocloud/user-data)"
test "$(stat -c %a /etc/micado/cluster.key)" = 600
test "$(stat -c %a /etc/micado/registry-auth.json)" = 600
grep -q REGCRED /etc/micado/registry-auth.json
systemctl show -p ExecStart micado-worker | grep -q -- '--registry-auth-file /etc/micado/registry-auth.json'
test ! -e /etc/micado/join.env
docker ps --format '{{.Image}}' | grep -q micado/demo-web`
	if out, code := vmExec(t, dc, vm.ID, strings.ReplaceAll(checks, "REGCRED", regCred)); code != 0 {
		t.Fatalf("the bootstrapped instance (exit %d): %s", code, out)
	}
	// The token was spent once: using it again, from the instance, fails.
	reuse := fmt.Sprintf("curl -sS --cacert /etc/micado/manager-ca.pem -X POST -H 'Authorization: Bearer %s' -w ' %%{http_code}' https://micado-%s-manager:8080%s", token, name, cloudapi.JoinPath)
	if out, _ := vmExec(t, dc, vm.ID, reuse); !strings.Contains(out, "already used") || !strings.HasSuffix(strings.TrimSpace(out), "403") || strings.Contains(out, strings.TrimSpace(string(key))) {
		t.Fatalf("a second use of the join token: %s", out)
	}
}

// startMachine starts a machine container of the cluster's network from
// image, with userData as its NoCloud seed, as the docker provider's
// cloud-init mode does, labelled so the cluster's teardown removes it.
func startMachine(t *testing.T, dc *dockerclient.Client, cluster, image, name, userData string) string {
	t.Helper()
	ctx := context.Background()
	cfg := &container.Config{Image: image, Hostname: name, Labels: map[string]string{wire.LabelCluster: cluster, wire.LabelComponent: "test-machine"}}
	host := &container.HostConfig{}
	cdocker.MachineConfig(cfg, host)
	created, err := dc.ContainerCreate(ctx, cfg, host,
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{"micado-" + cluster: {}}}, nil, "micado-"+cluster+"-"+name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dc.ContainerRemove(context.Background(), created.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	})
	seed, err := wire.TarFiles([]wire.File{
		{Path: "/var/lib/cloud/seed/nocloud/meta-data", Mode: 0o600, Data: []byte("instance-id: " + name + "\nlocal-hostname: " + name + "\n")},
		{Path: "/var/lib/cloud/seed/nocloud/user-data", Mode: 0o600, Data: []byte(userData)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := dc.CopyToContainer(ctx, created.ID, "/", bytes.NewReader(seed), container.CopyToContainerOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := dc.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	return created.ID
}
