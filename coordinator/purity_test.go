package coordinator

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/micado-scale/micado/internal/golist"
)

const modulePath = "github.com/micado-scale/micado"

// TestPurity keeps the coordinator a pure decision core: it may depend
// only on the standard library and on this module, never on the network
// or on running programs, and it does not itself import the clock, the
// OS or randomness (those reach it only through its inputs).
func TestPurity(t *testing.T) {
	root := golist.ModuleRoot(t)

	// Everything the (non-test) package links.
	deps := golist.List(t, "-deps", "-f", "{{.ImportPath}} {{.Standard}}", "./coordinator")
	forbidden := map[string]bool{"net": true, "net/http": true, "os/exec": true}
	for _, line := range deps {
		path, std, _ := strings.Cut(line, " ")
		first, _, _ := strings.Cut(path, "/")
		inModule := path == modulePath || strings.HasPrefix(path, modulePath+"/")
		switch {
		case forbidden[path]:
			t.Errorf("coordinator depends on %s", path)
		case strings.Contains(first, ".") && !inModule:
			t.Errorf("coordinator depends on %s, outside the standard library and %s", path, modulePath)
		case std != "true" && !inModule:
			t.Errorf("coordinator depends on %s, which is not in the standard library", path)
		}
	}
	if len(deps) == 0 {
		t.Fatal("go list -deps listed nothing")
	}

	// Its own imports: fmt reaches os and time, but the package itself must
	// not read the environment or a random source. It may use time's
	// values (durations, instants passed in), never the clock: see below.
	direct := golist.List(t, "-f", `{{join .Imports "\n"}}`, "./coordinator")
	own := map[string]bool{
		"os": true, "os/exec": true, "net": true, "net/http": true, "syscall": true,
		"math/rand": true, "math/rand/v2": true, "crypto/rand": true, "unsafe": true,
	}
	for _, path := range direct {
		if own[path] {
			t.Errorf("coordinator imports %s", path)
		}
	}
	files, err := filepath.Glob(filepath.Join(root, "coordinator", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	clock := []string{"time.Now", "time.Since", "time.Until", "time.Sleep", "time.After", "time.Tick", "time.NewTimer", "time.NewTicker"}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range clock {
			if strings.Contains(string(b), c) {
				t.Errorf("%s reads the clock (%s): pass now in instead", filepath.Base(f), c)
			}
		}
	}
}
