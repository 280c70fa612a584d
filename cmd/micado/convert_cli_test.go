package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/micado-scale/micado/definitions"
)

// runCLI runs the micado command in-process, as a user would, and returns
// its stdout, stderr and error.
func runCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	root := newRoot()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), errOut.String(), err
}

func TestConvertCLI(t *testing.T) {
	compose := repoFile(t, "definitions/webshop.compose.yaml")
	micadoFile := repoFile(t, "definitions/webshop.yaml")
	want, err := definitions.ParseFile(micadoFile)
	if err != nil {
		t.Fatal(err)
	}

	// Compose → micado by default, and back with --to compose.
	out, errOut, err := runCLI(t, "convert", compose)
	if err != nil || errOut != "" {
		t.Fatalf("convert: %v %s", err, errOut)
	}
	got, err := definitions.Parse("converted.yaml", []byte(out))
	if err != nil {
		t.Fatalf("the converted file does not parse: %v\n%s", err, out)
	}
	if !strings.HasPrefix(out, "# webshop.compose.yaml converted by micado convert\napplication: webshop\n") {
		t.Errorf("output starts %q", out[:min(len(out), 80)])
	}
	if len(got.Services) != 3 || got.Services[1].Replicas != 2 || got.Services[2].Pinned != true || got.Services[0].Ports[0].Check.HTTP != "/health" {
		t.Errorf("converted webshop: %+v", got.Services)
	}
	levels, _ := got.Levels()
	wantLevels, _ := want.Levels()
	if strings.Join(levels[0], ",") != strings.Join(wantLevels[0], ",") || len(levels) != 3 {
		t.Errorf("levels %v, want %v", levels, wantLevels)
	}

	// micado → Compose by default; the Compose file converts back.
	out, _, err = runCLI(t, "convert", micadoFile)
	if err != nil || !strings.Contains(out, "\nname: webshop\n") || !strings.Contains(out, "x-micado:") {
		t.Fatalf("convert to compose: %v\n%s", err, out)
	}
	f := filepath.Join(t.TempDir(), "shop", "compose.yaml")
	os.MkdirAll(filepath.Dir(f), 0o755)
	if err := os.WriteFile(f, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	back, _, err := runCLI(t, "convert", f, "--to", "micado")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := definitions.Parse("b.yaml", []byte(back)); b == nil || len(b.Services) != 3 || b.Name != "webshop" {
		t.Errorf("round trip through the CLI:\n%s", back)
	}

	if _, errOut, err := runCLI(t, "convert", compose, "--to", "helm"); err == nil || !strings.Contains(err.Error(), "--to helm: use micado or compose") {
		t.Errorf("--to helm: %v %s", err, errOut)
	}
}

func TestValidateComposeCLI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "Shop_2")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// .env next to the file is read, and the environment overrides it.
	write(".env", "TAG=1.0\nROLE=app\n")
	t.Setenv("TAG", "2.0")
	good := write("compose.yaml", "services:\n  web:\n    image: micado/demo-web:${TAG}\n    container_name: web\n    ports: [\"80:8080\"]\n    x-micado: {role: \"${ROLE}\"}\n")
	out, errOut, err := runCLI(t, "validate", good)
	if err != nil {
		t.Fatalf("validate: %v\n%s", err, errOut)
	}
	if !strings.Contains(out, "is valid: application shop-2, 1 services") {
		t.Errorf("stdout: %s", out)
	}
	for _, w := range []string{"warning: " + good + ":4: services.web.container_name: ignored", "warning: " + good + ":5: services.web.ports[0]: the host port 80 cannot be honoured"} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
	conv, _, err := runCLI(t, "convert", good)
	if err != nil || !strings.Contains(conv, "image: micado/demo-web:2.0") || !strings.Contains(conv, "role: app") {
		t.Errorf("convert: %v\n%s", err, conv)
	}

	// What deploy sends: micado's format, which the manager parses.
	app, def, compose, err := loadDefinition(good, &bytes.Buffer{})
	if err != nil || !compose {
		t.Fatalf("loadDefinition: %v %v", compose, err)
	}
	sent, err := definitions.Parse("compose.yaml", def)
	if err != nil || sent.Name != app.Name || sent.Services[0].Image != "micado/demo-web:2.0" {
		t.Fatalf("the definition sent does not parse back: %v\n%s", err, def)
	}

	bad := write("bad.yaml", "services:\n  web:\n    image: micado/demo-web\n    build: .\n    volumes: [\"./data:/data\"]\n")
	_, _, err = runCLI(t, "validate", bad)
	if err == nil {
		t.Fatal("validate accepted a file with build and volumes")
	}
	for _, want := range []string{
		bad + ":2: services.web.x-micado.role: is required",
		bad + ":4: services.web.build: micado does not build images",
		bad + ":5: services.web.volumes: micado has no volumes",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	// deploy refuses before it needs a manager.
	if _, _, err := runCLI(t, "deploy", bad, "--home", t.TempDir()); err == nil || !strings.Contains(err.Error(), "nothing was changed") || !strings.Contains(err.Error(), "services.web.build") {
		t.Errorf("deploy of a refused file: %v", err)
	}
}
