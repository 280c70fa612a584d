package worker

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/micado-scale/micado/internal/wire"
)

// TestStartWritesFilesBeforeTheContainerStarts starts a container with a
// secret file through the agent API: the running container has the file
// with its contents and mode, while its environment, command, labels and
// the agent's log do not carry the secret. Files with unsafe paths are
// refused.
func TestStartWritesFilesBeforeTheContainerStarts(t *testing.T) {
	docker, ctx, cluster := dockerForTest(t, "wf")
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	logs := &syncBuffer{}
	apiAddr := "127.0.0.1:" + strconv.Itoa(freeTCPPort(t))
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Cluster: cluster, Name: "w-files", Memory: 512 << 20,
			BindAddr: "127.0.0.1", BindPort: freeTCPPort(t), AdvertiseAddr: "127.0.0.1",
			APIAddr: apiAddr, PublishAddr: "127.0.0.1", ClusterKey: key,
			Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		})
	}()
	defer func() { cancel(); <-done }()
	c := wire.NewClient(key)
	waitFor(t, 20*time.Second, "the agent API answers", func() bool {
		_, err := c.List(ctx, apiAddr)
		return err == nil
	})

	secret := "d1sc0very-" + hex.EncodeToString(key[:8])
	const p = "/run/secrets/micado-consul-token"
	info, err := c.Start(ctx, apiAddr, wire.StartRequest{Instance: "web-1", Service: "web", Image: "micado/demo-web", Memory: 64 << 20,
		Env:   map[string]string{"CONSUL_HTTP_TOKEN_FILE": p},
		Files: []wire.File{{Path: p, Mode: 0o444, Data: []byte(secret)}}})
	if err != nil {
		t.Fatal(err)
	}
	ci, err := docker.ContainerInspect(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ci.State == nil || !ci.State.Running {
		t.Fatalf("the container does not run: %+v", ci.State)
	}
	rc, _, err := docker.CopyFromContainer(ctx, info.ID, p)
	if err != nil {
		t.Fatalf("the file is not in the container: %v", err)
	}
	tr := tar.NewReader(rc)
	h, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(tr)
	rc.Close()
	if string(got) != secret || h.Mode&0o7777 != 0o444 || h.Uid != 0 {
		t.Fatalf("file %s: %q mode %#o uid %d, want the secret, 0444, root", p, got, h.Mode&0o7777, h.Uid)
	}
	var seen []string
	seen = append(seen, ci.Config.Env...)
	seen = append(seen, ci.Config.Cmd...)
	seen = append(seen, ci.Config.Entrypoint...)
	for k, v := range ci.Config.Labels {
		seen = append(seen, k+"="+v)
	}
	seen = append(seen, ci.Path)
	seen = append(seen, ci.Args...)
	for _, s := range seen {
		if strings.Contains(s, secret) {
			t.Errorf("docker inspect shows the secret: %q", s)
		}
	}
	if !strings.Contains(strings.Join(ci.Config.Env, "\n"), "CONSUL_HTTP_TOKEN_FILE="+p) {
		t.Errorf("env %v lacks CONSUL_HTTP_TOKEN_FILE", ci.Config.Env)
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("the agent logged the secret:\n%s", logs.String())
	}

	for _, bad := range []wire.File{
		{Path: "run/secrets/x", Mode: 0o444},
		{Path: "/run/../etc/passwd", Mode: 0o444},
		{Path: "/", Mode: 0o444},
		{Path: "/run/x", Mode: 0o4755},
	} {
		_, err := c.Start(ctx, apiAddr, wire.StartRequest{Instance: "bad-1", Service: "bad", Image: "micado/demo-web", Memory: 64 << 20,
			Files: []wire.File{bad}})
		var ae *wire.APIError
		if !errors.As(err, &ae) || ae.Status != 400 {
			t.Errorf("file %s: %v, want a 400", bad, err)
		}
	}
}
