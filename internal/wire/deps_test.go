package wire

import (
	"strings"
	"testing"

	"github.com/micado-scale/micado/internal/golist"
)

const modulePath = "github.com/micado-scale/micado"

// TestWireIsStandardLibraryOnly keeps this package small: whoever speaks
// to agents (the manager, providers, test doubles) links it, so it must
// not bring memberlist, Docker or Prometheus along.
func TestWireIsStandardLibraryOnly(t *testing.T) {
	for _, line := range golist.List(t, "-deps", "-f", "{{.ImportPath}} {{.Standard}}", "./internal/wire") {
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
			for _, path := range golist.List(t, args...) {
				if path == agent {
					t.Errorf("go list %s: depends on %s; use %s/internal/wire for what managers and agents exchange", strings.Join(args, " "), agent, modulePath)
				}
			}
		}
	}
}
