package cloudapi

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"text/template"

	"gopkg.in/yaml.v3"
)

// Paths and names used by the rendered cloud-init document.
const (
	// DefaultBinary is where the bootstrap installs the micado binary it
	// fetches from the manager.
	DefaultBinary = "/usr/local/bin/micado"
	// ClusterKeyPath is where the bootstrap writes the cluster key it gets
	// for the join token, mode 0600. The key is never in the user data.
	ClusterKeyPath = "/etc/micado/cluster.key"
	// JoinEnvPath holds the join token, the manager's URL and the binary's
	// checksum (mode 0600); the bootstrap removes it once the token is spent.
	JoinEnvPath = "/etc/micado/join.env"
	// ManagerCAPath is the certificate the bootstrap trusts for the
	// manager's API, and nothing else.
	ManagerCAPath = "/etc/micado/manager-ca.pem"
	// BootstrapPath is the bootstrap script cloud-init runs once.
	BootstrapPath = "/usr/local/lib/micado/bootstrap"
	// WorkerUnitPath is where the systemd unit is written.
	WorkerUnitPath = "/etc/systemd/system/micado-worker.service"
	// WorkerUnit is the name of the systemd unit.
	WorkerUnit = "micado-worker.service"
	// JoinBinaryPath and JoinPath are the manager's join endpoints: GET the
	// binary, POST to spend the token for the cluster key.
	JoinBinaryPath = "/v1/join/micado"
	JoinPath       = "/v1/join"
	// JoinKeyFile and JoinRegistryAuthFile are the files of the tar archive
	// POST JoinPath answers with, unpacked into /etc/micado.
	JoinKeyFile          = "cluster.key"
	JoinRegistryAuthFile = "registry-auth.json"
	// RegistryAuthPath is where the worker reads its registry credentials.
	RegistryAuthPath = "/etc/micado/" + JoinRegistryAuthFile
)

//go:embed bootstrap.sh
var bootstrapScript string

// UserDataParams are the inputs of RenderUserData.
type UserDataParams struct {
	// Cluster is the cluster name (--cluster).
	Cluster string
	// Name is the worker's node name (--name), normally Spec.Name.
	Name string
	// Join is the manager address the worker joins (--join), e.g.
	// "10.0.0.2:7946"; several addresses may be comma separated.
	Join string
	// Tags are the worker's tags, e.g. "role=proxy"; each becomes one
	// --tag flag.
	Tags []string
	// Memory is the number of bytes the worker offers to containers
	// (--memory), normally Spec.Type.Memory.
	Memory int64
	// JoinURL is the manager API's https:// base URL as the instance
	// reaches it, e.g. "https://10.0.0.2:8080".
	JoinURL string
	// JoinToken is the instance's single-use join token, exchanged at
	// JoinURL for the cluster key. The cluster key itself is never in the
	// user data: clouds let processes on the instance read user data back.
	JoinToken string
	// ManagerCA is the PEM certificate (one or more) the bootstrap trusts
	// for JoinURL: the manager API's CA, or its self-signed certificate.
	ManagerCA string
	// BinarySHA256 is the hex SHA-256 of the micado binary the manager
	// serves; the bootstrap refuses any other.
	BinarySHA256 string
	// Binary is where the binary is installed; DefaultBinary if empty.
	Binary string
	// RegistryAuth says the manager hands out registry credentials with
	// the key: the worker then reads them from RegistryAuthPath.
	RegistryAuth bool
}

// Conservative character sets: every value ends up as a systemd ExecStart
// argument or a shell variable, where spaces, quotes, '%', '$' and '\' have
// meaning, so they are rejected rather than escaped.
var (
	identRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	joinRE   = regexp.MustCompile(`^[A-Za-z0-9.:\[\]_,-]+$`)
	tagRE    = regexp.MustCompile(`^[A-Za-z0-9._:/@+-]+=[A-Za-z0-9._:/=@+-]*$`)
	binaryRE = regexp.MustCompile(`^/[A-Za-z0-9._/-]+$`)
	tokenRE  = regexp.MustCompile(`^[A-Za-z0-9_-]{16,128}$`)
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	urlRE    = regexp.MustCompile(`^https://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._/-]*)?$`)
)

// RenderUserData renders the cloud-init "#cloud-config" document of a new
// worker on a stock Debian or Ubuntu image. It writes the join
// parameters (JoinEnvPath, 0600), the manager's CA, the systemd unit that
// runs
//
//	micado worker --cluster C --name N --join J --tag T1 --memory M --key-file /etc/micado/cluster.key
//
// and the bootstrap script (bootstrap.sh), which cloud-init runs once: it
// fetches the binary from the manager and checks its SHA-256, installs
// Docker from the distribution's packages when it is missing, spends the
// join token for the cluster key, and starts the unit.
//
// Values are validated against conservative character sets so that they
// need no quoting in the unit or the shell; strings placed in YAML are
// quoted.
func RenderUserData(p UserDataParams) (string, error) {
	if p.Binary == "" {
		p.Binary = DefaultBinary
	}
	if err := p.check(); err != nil {
		return "", fmt.Errorf("cloudapi: user data: %w", err)
	}
	var unit bytes.Buffer
	if err := unitTemplate.Execute(&unit, p); err != nil {
		return "", fmt.Errorf("cloudapi: user data: %w", err)
	}
	env := fmt.Sprintf("MICADO_JOIN_URL=%s\nMICADO_JOIN_TOKEN=%s\nMICADO_BINARY_SHA256=%s\nMICADO_BINARY=%s\n",
		strings.TrimRight(p.JoinURL, "/"), p.JoinToken, p.BinarySHA256, p.Binary)
	var out bytes.Buffer
	err := cloudConfigTemplate.Execute(&out, map[string]any{
		"Files": []file{
			{Path: JoinEnvPath, Mode: "0600", Content: env},
			{Path: ManagerCAPath, Mode: "0644", Content: strings.TrimSpace(p.ManagerCA) + "\n"},
			{Path: WorkerUnitPath, Mode: "0644", Content: unit.String()},
			{Path: BootstrapPath, Mode: "0700", Content: bootstrapScript},
		},
		"Bootstrap": BootstrapPath,
	})
	if err != nil {
		return "", fmt.Errorf("cloudapi: user data: %w", err)
	}
	return out.String(), nil
}

func (p UserDataParams) check() error {
	switch {
	case !identRE.MatchString(p.Cluster):
		return fmt.Errorf("invalid cluster name %q", p.Cluster)
	case !identRE.MatchString(p.Name):
		return fmt.Errorf("invalid node name %q", p.Name)
	case !joinRE.MatchString(p.Join):
		return fmt.Errorf("invalid join address %q", p.Join)
	case p.Memory <= 0:
		return fmt.Errorf("memory must be positive, got %d", p.Memory)
	case !binaryRE.MatchString(p.Binary):
		return fmt.Errorf("invalid binary path %q", p.Binary)
	case !tokenRE.MatchString(p.JoinToken):
		return errors.New("the join token must be 16 to 128 characters of A-Z, a-z, 0-9, '-' and '_'")
	case !sha256RE.MatchString(p.BinarySHA256):
		return fmt.Errorf("the binary checksum %q is not a hex SHA-256", p.BinarySHA256)
	}
	if err := CheckJoinURL(p.JoinURL); err != nil {
		return err
	}
	if err := CheckCA(p.ManagerCA); err != nil {
		return err
	}
	for _, t := range p.Tags {
		if !tagRE.MatchString(t) {
			return fmt.Errorf("invalid tag %q: want key=value without spaces or quotes", t)
		}
	}
	return nil
}

// CheckJoinURL checks the manager URL new workers are told to fetch the
// binary and the key from: https, a host, no query.
func CheckJoinURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || !urlRE.MatchString(s) || u.Host == "" {
		return fmt.Errorf("the join URL %q is not an https://HOST[:PORT] URL: workers fetch the cluster key from it, so it must be TLS", s)
	}
	return nil
}

// CheckCA accepts one or more PEM certificates and nothing else.
func CheckCA(s string) error {
	rest := []byte(strings.TrimSpace(s))
	n := 0
	for len(rest) > 0 {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil || b.Type != "CERTIFICATE" {
			return errors.New("the manager CA must be PEM certificates only")
		}
		rest = bytes.TrimSpace(rest)
		n++
	}
	if n == 0 {
		return errors.New("no manager CA: workers would have nothing to check the manager's TLS certificate against")
	}
	return nil
}

// file is one write_files entry.
type file struct{ Path, Mode, Content string }

// yamlQuote renders s as a YAML double-quoted scalar. JSON string syntax is a
// subset of YAML's double-quoted style, so encoding/json does the escaping.
func yamlQuote(s string) string {
	b, _ := json.Marshal(s) // cannot fail for a string
	return string(b)
}

// indent prefixes every line of s with n spaces, for YAML block scalars.
func indent(n int, s string) string {
	pad := strings.Repeat(" ", n)
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = pad + l
		}
	}
	return strings.Join(lines, "\n")
}

var funcs = template.FuncMap{
	"yaml":   yamlQuote,
	"indent": indent,
}

var unitTemplate = template.Must(template.New("unit").Funcs(funcs).Parse(`[Unit]
Description=micado worker {{.Name}} of cluster {{.Cluster}}
Wants=network-online.target docker.service
After=network-online.target docker.service
ConditionPathExists=` + ClusterKeyPath + `

[Service]
ExecStart={{.Binary}} worker --cluster {{.Cluster}} --name {{.Name}} --join {{.Join}}{{range .Tags}} --tag {{.}}{{end}} --memory {{.Memory}} --key-file ` + ClusterKeyPath + `{{if .RegistryAuth}} --registry-auth-file ` + RegistryAuthPath + `{{end}}
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
`))

var cloudConfigTemplate = template.Must(template.New("cloud-config").Funcs(funcs).Parse(`#cloud-config
# Rendered by micado: bootstraps a micado worker on a stock Debian or
# Ubuntu image. It holds a single-use join token, never the cluster key.
write_files:
{{- range .Files}}
  - path: {{yaml .Path}}
    owner: "root:root"
    permissions: {{yaml .Mode}}
    content: |
{{indent 6 .Content}}
{{- end}}
runcmd:
  - [{{yaml .Bootstrap}}]
`))

// JoinTokenOf reads back the join token of a document RenderUserData
// rendered, and checks that the document carries no cluster key: it
// writes no ClusterKeyPath and no encoded file. Tests of the providers
// use it on the user data that reached the cloud's API.
func JoinTokenOf(userData string) (string, error) {
	var doc struct {
		WriteFiles []struct {
			Path     string `yaml:"path"`
			Encoding string `yaml:"encoding"`
			Content  string `yaml:"content"`
		} `yaml:"write_files"`
	}
	if !strings.HasPrefix(userData, "#cloud-config\n") {
		return "", errors.New("not a #cloud-config document")
	}
	if err := yaml.Unmarshal([]byte(userData), &doc); err != nil {
		return "", fmt.Errorf("not YAML: %w", err)
	}
	token := ""
	for _, f := range doc.WriteFiles {
		switch {
		case f.Path == ClusterKeyPath:
			return "", fmt.Errorf("the user data writes the cluster key %s", ClusterKeyPath)
		case f.Encoding != "":
			return "", fmt.Errorf("the user data writes %s encoded (%s): it may hide a secret", f.Path, f.Encoding)
		case f.Path == JoinEnvPath:
			for l := range strings.Lines(f.Content) {
				if v, ok := strings.CutPrefix(strings.TrimSpace(l), "MICADO_JOIN_TOKEN="); ok {
					token = v
				}
			}
		}
	}
	if !tokenRE.MatchString(token) {
		return "", fmt.Errorf("no join token in %s", JoinEnvPath)
	}
	return token, nil
}

// TestUserDataParams are valid parameters for the providers' tests, for
// a worker named name: a fixed join token and a throwaway self-signed CA.
func TestUserDataParams(name string) UserDataParams {
	return UserDataParams{
		Cluster: "prod", Name: name, Join: "10.0.0.2:7946", Tags: []string{"role=proxy"}, Memory: 2 << 30,
		JoinURL: "https://10.0.0.2:8080", JoinToken: "tok_abcdefghijklmnopqrstuvwxyz0123456789",
		ManagerCA: testCA, BinarySHA256: strings.Repeat("ab", 32),
	}
}

// testCA is a PEM certificate for the tests (its content is not checked
// beyond being PEM).
const testCA = `-----BEGIN CERTIFICATE-----
MIIBhTCCASugAwIBAgIQIRi6zePL6mKjOipn+dNuaTAKBggqhkjOPQQDAjASMRAw
DgYDVQQKEwdBY21lIENvMB4XDTE3MTAyMDE5NDMwNloXDTE4MTAyMDE5NDMwNlow
EjEQMA4GA1UEChMHQWNtZSBDbzBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABD0d
7VNhbWvZLWPuj/RtHFjvtJBEwOkhbN/BnnE8rnZR8+sbwnc/KhCk3FhnpHZnQz7B
5aETbbIgmuvewdjvSBSjYzBhMA4GA1UdDwEB/wQEAwICpDATBgNVHSUEDDAKBggr
BgEFBQcDATAPBgNVHRMBAf8EBTADAQH/MCkGA1UdEQQiMCCCDmxvY2FsaG9zdDo1
NDUzgg4xMjcuMC4wLjE6NTQ1MzAKBggqhkjOPQQDAgNIADBFAiEA2zpJEPQyz6/l
Wf86aX6PepsntZv2GYlA5UpabfT2EZICICpJ5h/iI+i341gBmLiAFQOyTDT+/wQc
6MF9+Yw1Yy0t
-----END CERTIFICATE-----`
