package wire

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const modulePath = "github.com/micado-scale/micado"

// TestWireIsStandardLibraryOnly keeps this package small: whoever speaks
// to agents (the manager, providers, test doubles) links it, so it must
// not bring memberlist, Docker or Prometheus along.
func TestWireIsStandardLibraryOnly(t *testing.T) {
	for _, line := range goList(t, "-deps", "-f", "{{.ImportPath}} {{.Standard}}", "./internal/wire") {
		path, std, _ := strings.Cut(line, " ")
		if std != "true" && path != modulePath+"/internal/wire" {
			t.Errorf("internal/wire depends on %s, which is not in the standard library", path)
		}
	}
}

// TestOnlyTheDaemonLinksTheAgent checks that the manager, the cloud
// providers and the simulated agents reach workers through package wire
// only: none of them, nor their tests, depends on package worker (the
// agent daemon with its Docker engine and memberlist). Only the daemon
// wiring (cmd/micado) starts agents.
func TestOnlyTheDaemonLinksTheAgent(t *testing.T) {
	const agent = modulePath + "/worker"
	for _, pkg := range []string{"./manager/...", "./cloudapi/...", "./internal/simagents", "./internal/gossip", "./coordinator/..."} {
		for _, args := range [][]string{
			{"-deps", pkg},          // what the packages link
			{"-deps", "-test", pkg}, // and what their tests link
		} {
			for _, path := range goList(t, args...) {
				if path == agent {
					t.Errorf("go list %s: depends on %s; use %s/internal/wire for what managers and agents exchange", strings.Join(args, " "), agent, modulePath)
				}
			}
		}
	}
}

// goList runs go list in the module root.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("this test needs the go tool on PATH:", err)
	}
	cmd := exec.Command(goTool, append([]string{"list"}, args...)...)
	cmd.Dir = moduleRoot(t)
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatalf("go list %s: %v", strings.Join(args, " "), err)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		t.Fatalf("go list %s listed nothing", strings.Join(args, " "))
	}
	return lines
}

// moduleRoot walks up from the test's directory to the go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}
