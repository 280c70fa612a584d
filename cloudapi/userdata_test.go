package cloudapi

import (
	"encoding/base64"
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

func TestRenderUserData(t *testing.T) {
	key := "s3cr3t: with \"quotes\", 'apostrophes', #hash and\nnewline"
	ud, err := RenderUserData(UserDataParams{
		Cluster:    "prod",
		Name:       "w-proxy-3f2a",
		Join:       "10.0.0.2:7946",
		Tags:       []string{"role=proxy", "zone=eu-west-1a"},
		Memory:     2 << 30,
		ClusterKey: key,
	})
	if err != nil {
		t.Fatal(err)
	}
	cc := parseUserData(t, ud)
	if len(cc.WriteFiles) != 2 {
		t.Fatalf("want 2 write_files, got %d", len(cc.WriteFiles))
	}

	kf := cc.WriteFiles[0]
	if kf.Path != ClusterKeyPath || kf.Permissions != "0600" || kf.Owner != "root:root" || kf.Encoding != "b64" {
		t.Errorf("key file = %+v", kf)
	}
	dec, err := base64.StdEncoding.DecodeString(kf.Content)
	if err != nil || string(dec) != key {
		t.Errorf("key content decodes to %q, %v; want %q", dec, err, key)
	}
	if strings.Contains(ud, "s3cr3t") {
		t.Error("cluster key appears in clear in the user data")
	}

	uf := cc.WriteFiles[1]
	if uf.Path != WorkerUnitPath || uf.Permissions != "0644" {
		t.Errorf("unit file = %+v", uf)
	}
	for _, want := range []string{"[Unit]\n", "[Service]\n", "Restart=always\n", "[Install]\nWantedBy=multi-user.target\n", "After=network-online.target docker.service\n"} {
		if !strings.Contains(uf.Content, want) {
			t.Errorf("unit lacks %q:\n%s", want, uf.Content)
		}
	}
	args := execStart(t, uf.Content)
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

	wantCmds := [][]string{{"systemctl", "daemon-reload"}, {"systemctl", "enable", "--now", WorkerUnit}}
	if !slices.EqualFunc(cc.RunCmd, wantCmds, slices.Equal) {
		t.Errorf("runcmd = %q, want %q", cc.RunCmd, wantCmds)
	}
	for _, s := range []string{"curl", "wget", "http://", "https://"} {
		if strings.Contains(ud, s) {
			t.Errorf("user data mentions %q; it must download nothing", s)
		}
	}
}

func TestRenderUserDataNoTagsCustomBinary(t *testing.T) {
	ud, err := RenderUserData(UserDataParams{Cluster: "c", Name: "n", Join: "[fd00::1]:7946,10.0.0.3:7946", Memory: 1, ClusterKey: "k", Binary: "/opt/micado/bin/micado"})
	if err != nil {
		t.Fatal(err)
	}
	args := execStart(t, parseUserData(t, ud).WriteFiles[1].Content)
	if args[0] != "/opt/micado/bin/micado" || slices.Contains(args, "--tag") || args[slices.Index(args, "--join")+1] != "[fd00::1]:7946,10.0.0.3:7946" {
		t.Errorf("ExecStart = %q", args)
	}
}

func TestRenderUserDataRejects(t *testing.T) {
	ok := UserDataParams{Cluster: "c", Name: "n", Join: "10.0.0.2:7946", Memory: 1, ClusterKey: "k"}
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
		"empty key":            func(p *UserDataParams) { p.ClusterKey = "" },
		"relative binary path": func(p *UserDataParams) { p.Binary = "micado" },
	}
	for name, mutate := range bad {
		p := ok
		mutate(&p)
		if _, err := RenderUserData(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := RenderUserData(ok); err != nil {
		t.Errorf("baseline rejected: %v", err)
	}
}
