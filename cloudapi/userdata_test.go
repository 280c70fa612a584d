package cloudapi

import (
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// cloudConfig is the part of cloud-init's schema RenderUserData uses.
type cloudConfig struct {
	WriteFiles []struct {
		Path        string `yaml:"path"`
		Owner       string `yaml:"owner"`
		Permissions string `yaml:"permissions"`
		Encoding    string `yaml:"encoding"`
		Content     string `yaml:"content"`
	} `yaml:"write_files"`
	RunCmd [][]string `yaml:"runcmd"`
}

func parseUserData(t *testing.T, ud string) cloudConfig {
	t.Helper()
	if !strings.HasPrefix(ud, "#cloud-config\n") {
		t.Fatalf("user data does not start with #cloud-config:\n%s", ud)
	}
	var cc cloudConfig
	dec := yaml.NewDecoder(strings.NewReader(ud))
	dec.KnownFields(true)
	if err := dec.Decode(&cc); err != nil {
		t.Fatalf("user data is not valid YAML: %v\n%s", err, ud)
	}
	return cc
}

// execStart returns the ExecStart arguments of the unit.
func execStart(t *testing.T, unit string) []string {
	t.Helper()
	for l := range strings.Lines(unit) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "ExecStart="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("no ExecStart in unit:\n%s", unit)
	return nil
}

// testParams are valid inputs.
func testParams() UserDataParams {
	p := TestUserDataParams("w-proxy-3f2a")
	p.Tags = []string{"role=proxy", "zone=eu-west-1a"}
	return p
}

func fileOf(t *testing.T, cc cloudConfig, path string) (content, mode string) {
	t.Helper()
	for _, f := range cc.WriteFiles {
		if f.Path == path {
			if f.Owner != "root:root" {
				t.Errorf("%s is owned by %q", path, f.Owner)
			}
			return f.Content, f.Permissions
		}
	}
	t.Fatalf("user data writes no %s", path)
	return "", ""
}

func TestRenderUserData(t *testing.T) {
	p := testParams()
	ud, err := RenderUserData(p)
	if err != nil {
		t.Fatal(err)
	}
	cc := parseUserData(t, ud)
	if len(cc.WriteFiles) != 4 {
		t.Fatalf("want 4 write_files, got %d", len(cc.WriteFiles))
	}
	env, mode := fileOf(t, cc, JoinEnvPath)
	want := "MICADO_JOIN_URL=https://10.0.0.2:8080\nMICADO_JOIN_TOKEN=" + p.JoinToken + "\nMICADO_BINARY_SHA256=" + p.BinarySHA256 + "\nMICADO_BINARY=" + DefaultBinary + "\n"
	if env != want || mode != "0600" {
		t.Errorf("%s (%s) =\n%s\nwant\n%s", JoinEnvPath, mode, env, want)
	}
	if ca, _ := fileOf(t, cc, ManagerCAPath); ca != testCA+"\n" {
		t.Errorf("CA file = %q", ca)
	}
	if script, mode := fileOf(t, cc, BootstrapPath); script != bootstrapScript || mode != "0700" {
		t.Errorf("bootstrap script (%s) differs from bootstrap.sh", mode)
	}
	unit, mode := fileOf(t, cc, WorkerUnitPath)
	if mode != "0644" {
		t.Errorf("unit mode %s", mode)
	}
	for _, want := range []string{"[Unit]\n", "[Service]\n", "Restart=always\n", "[Install]\nWantedBy=multi-user.target\n", "After=network-online.target docker.service\n", "ConditionPathExists=" + ClusterKeyPath + "\n"} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
	args := execStart(t, unit)
	wantArgs := []string{DefaultBinary, "worker",
		"--cluster", "prod",
		"--name", "w-proxy-3f2a",
		"--join", "10.0.0.2:7946",
		"--tag", "role=proxy",
		"--tag", "zone=eu-west-1a",
		"--memory", "2147483648",
		"--key-file", ClusterKeyPath,
	}
	if !slices.Equal(args, wantArgs) {
		t.Errorf("ExecStart = %q\nwant       %q", args, wantArgs)
	}
	if wantCmds := [][]string{{BootstrapPath}}; !slices.EqualFunc(cc.RunCmd, wantCmds, slices.Equal) {
		t.Errorf("runcmd = %q, want %q", cc.RunCmd, wantCmds)
	}
	for _, f := range cc.WriteFiles {
		if f.Path == ClusterKeyPath {
			t.Error("the user data writes the cluster key")
		}
	}
}

// The script spends the token only after the binary passed its checksum,
// and removes the token's file once spent.
func TestBootstrapScriptOrder(t *testing.T) {
	at := func(s string) int {
		i := strings.Index(bootstrapScript, s)
		if i < 0 {
			t.Fatalf("bootstrap.sh lacks %q", s)
		}
		return i
	}
	get, sum, post, rm, start := at("call GET "+JoinBinaryPath), at(`[ "$got" = "$MICADO_BINARY_SHA256" ]`), at("call POST "+JoinPath), at("rm -f /etc/micado/join.tar "+JoinEnvPath), at("enable --now micado-worker.service")
	if !(get < sum && sum < post && post < rm && rm < start) {
		t.Errorf("bootstrap steps out of order: get %d, checksum %d, spend %d, forget %d, start %d", get, sum, post, rm, start)
	}
	if !strings.HasPrefix(bootstrapScript, "#!/bin/sh\n") || !strings.Contains(bootstrapScript, "set -eu\n") {
		t.Error("bootstrap.sh is not a strict POSIX sh script")
	}
}

func TestRenderUserDataNoTagsCustomBinary(t *testing.T) {
	p := testParams()
	p.Tags, p.Join, p.Binary, p.RegistryAuth = nil, "[fd00::1]:7946,10.0.0.3:7946", "/opt/micado/bin/micado", true
	ud, err := RenderUserData(p)
	if err != nil {
		t.Fatal(err)
	}
	cc := parseUserData(t, ud)
	unit, _ := fileOf(t, cc, WorkerUnitPath)
	args := execStart(t, unit)
	if args[0] != "/opt/micado/bin/micado" || slices.Contains(args, "--tag") || args[slices.Index(args, "--join")+1] != "[fd00::1]:7946,10.0.0.3:7946" ||
		args[len(args)-2] != "--registry-auth-file" || args[len(args)-1] != RegistryAuthPath {
		t.Errorf("ExecStart = %q", args)
	}
	if env, _ := fileOf(t, cc, JoinEnvPath); !strings.Contains(env, "MICADO_BINARY=/opt/micado/bin/micado\n") {
		t.Errorf("join.env:\n%s", env)
	}
}

func TestRenderUserDataRejects(t *testing.T) {
	bad := map[string]func(*UserDataParams){
		"cluster with space":   func(p *UserDataParams) { p.Cluster = "a b" },
		"empty cluster":        func(p *UserDataParams) { p.Cluster = "" },
		"name with newline":    func(p *UserDataParams) { p.Name = "n\nExecStartPre=/bin/evil" },
		"name with specifier":  func(p *UserDataParams) { p.Name = "n%h" },
		"join with dollar":     func(p *UserDataParams) { p.Join = "$HOST:1" },
		"empty join":           func(p *UserDataParams) { p.Join = "" },
		"tag with quote":       func(p *UserDataParams) { p.Tags = []string{`role="x"`} },
		"tag with space":       func(p *UserDataParams) { p.Tags = []string{"role=a b"} },
		"tag without =":        func(p *UserDataParams) { p.Tags = []string{"proxy"} },
		"zero memory":          func(p *UserDataParams) { p.Memory = 0 },
		"relative binary path": func(p *UserDataParams) { p.Binary = "micado" },
		"plain http join URL":  func(p *UserDataParams) { p.JoinURL = "http://10.0.0.2:8080" },
		"join URL with query":  func(p *UserDataParams) { p.JoinURL = "https://10.0.0.2:8080/?a=$(x)" },
		"empty token":          func(p *UserDataParams) { p.JoinToken = "" },
		"token with dollar":    func(p *UserDataParams) { p.JoinToken = "abcdefghijklmnop$(reboot)" },
		"short checksum":       func(p *UserDataParams) { p.BinarySHA256 = "abc" },
		"no CA":                func(p *UserDataParams) { p.ManagerCA = "" },
		"CA that is a key":     func(p *UserDataParams) { p.ManagerCA = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----" },
	}
	for name, mutate := range bad {
		p := testParams()
		mutate(&p)
		if _, err := RenderUserData(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := RenderUserData(testParams()); err != nil {
		t.Errorf("baseline rejected: %v", err)
	}
}

// JoinTokenOf, which the providers' tests use on what reached the cloud,
// finds a key written in any form.
func TestJoinTokenOfRefusesAKey(t *testing.T) {
	ud, _ := RenderUserData(testParams())
	if tok, err := JoinTokenOf(ud); err != nil || tok != testParams().JoinToken {
		t.Fatalf("JoinTokenOf(rendered) = %q, %v", tok, err)
	}
	withKey := strings.Replace(ud, "write_files:\n", "write_files:\n  - path: \""+ClusterKeyPath+"\"\n    content: \"c2VjcmV0\"\n", 1)
	encoded := strings.Replace(ud, "write_files:\n", "write_files:\n  - path: \"/etc/x\"\n    encoding: b64\n    content: \"c2VjcmV0\"\n", 1)
	noToken := strings.Replace(ud, "MICADO_JOIN_TOKEN=", "MICADO_JOIN_TOKEN_=", 1)
	for name, doc := range map[string]string{"key file": withKey, "encoded file": encoded, "no token": noToken, "not cloud-config": "#!/bin/sh\n"} {
		if _, err := JoinTokenOf(doc); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
