package cloudapi

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// debianImage is the stock Debian image `make image-debian` builds; it
// has Debian's cloud-init package.
func debianImage() string {
	if v := os.Getenv("MICADO_DEBIAN_IMAGE"); v != "" {
		return v
	}
	return "micado/debian-cloud:bookworm"
}

// cloudInit runs cloud-init's own commands in the Debian image, on the
// documents in dir (mounted read-only at /ud).
func cloudInit(t *testing.T, dir string, script string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Fatal("this test needs the docker command and a running engine")
	}
	img := debianImage()
	if out, err := exec.Command("docker", "image", "inspect", "-f", "{{.Id}}", img).CombinedOutput(); err != nil {
		t.Fatalf("this test needs the image %s (Debian with its cloud-init package): build it with `make image-debian`: %s", img, out)
	}
	out, err := exec.Command("docker", "run", "--rm", "--network", "none", "--label", "io.micado.test=cloudapi-schema",
		"-v", dir+":/ud:ro", "--entrypoint", "/bin/sh", img, "-c", script).CombinedOutput()
	return string(out), err
}

// schemaScript validates every document in /ud as `cloud-init schema
// --config-file` does, in one Python process, and says how many it checked.
const schemaScript = `python3 - <<'PY'
import glob, sys
from cloudinit.config.schema import get_schema, validate_cloudconfig_file
schema, failed, files = get_schema(), 0, sorted(glob.glob("/ud/*"))
for f in files:
    try:
        validate_cloudconfig_file(f, schema)
    except Exception as e:
        failed += 1
        print("FAIL", f, e)
print("checked", len(files))
sys.exit(1 if failed else 0)
PY`

// Every document micado renders passes cloud-init's schema validation,
// for every provider (each sends the document as rendered) and every
// combination of the options: tags, join addresses, binary path, CA
// chain, join URL and registry credentials.
func TestUserDataPassesCloudInitSchema(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	chain := testCA + "\n" + testCA
	var names []string
	for _, provider := range []string{"ec2", "openstack", "docker"} {
		for ti, tags := range [][]string{nil, {"role=proxy"}, {"role=app", "zone=eu-west-1a", "gpu=true", "owner=team@example.org"}} {
			for ji, join := range []string{"10.0.0.2:7946", "[fd00::2]:7946,10.0.0.3:7946,micado-prod-manager-2:7946"} {
				for bi, bin := range []string{"", "/opt/micado/bin/micado"} {
					for ci, ca := range []string{testCA, chain} {
						for ui, u := range []string{"https://10.0.0.2:8080", "https://manager.internal.example:443/micado"} {
							for _, auth := range []bool{false, true} {
								p := TestUserDataParams(fmt.Sprintf("w-%s-%d%d%d%d%d-%t", provider, ti, ji, bi, ci, ui, auth))
								p.Tags, p.Join, p.Binary, p.ManagerCA, p.JoinURL, p.RegistryAuth = tags, join, bin, ca, u, auth
								ud, err := RenderUserData(p)
								if err != nil {
									t.Fatalf("%s: %v", p.Name, err)
								}
								if err := os.WriteFile(filepath.Join(dir, p.Name), []byte(ud), 0o644); err != nil {
									t.Fatal(err)
								}
								names = append(names, p.Name)
							}
						}
					}
				}
			}
		}
	}
	// One process checks them all with the validator of ` + "`cloud-init schema --config-file`" + `
	// (one call per document costs 0.6 s); a document that fails is named.
	out, err := cloudInit(t, dir, schemaScript)
	if err != nil {
		t.Fatalf("cloud-init schema refused documents: %v\n%s", err, out)
	}
	if !strings.Contains(out, fmt.Sprintf("checked %d", len(names))) {
		t.Fatalf("cloud-init did not check all %d documents:\n%s", len(names), out)
	}
	t.Logf("cloud-init schema: %d documents valid (%s)", len(names), strings.TrimSpace(out))
}

// The check above can fail: a document with an error in its schema is
// refused by the same command.
func TestCloudInitSchemaRefusesAnInvalidDocument(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ud, err := RenderUserData(TestUserDataParams("w-bad"))
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(ud, `permissions: "0600"`, `permissions: ["0600"]`, 1)
	if err := os.WriteFile(filepath.Join(dir, "bad"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := cloudInit(t, dir, schemaScript)
	if err == nil {
		t.Fatalf("cloud-init schema accepted a document whose permissions is a list:\n%s", out)
	}
	if !strings.Contains(out, "FAIL /ud/bad") || !strings.Contains(out, "permissions") {
		t.Errorf("cloud-init's refusal does not name the field:\n%s", out)
	}
}
