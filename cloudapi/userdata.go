package cloudapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"text/template"
)

// Paths and names used by the rendered cloud-init document.
const (
	// DefaultBinary is where RenderUserData expects the micado binary. The
	// worker image must already contain it (and a running Docker engine):
	// the rendered document downloads nothing.
	DefaultBinary = "/usr/local/bin/micado"
	// ClusterKeyPath is where the cluster key is written, mode 0600.
	ClusterKeyPath = "/etc/micado/cluster.key"
	// WorkerUnitPath is where the systemd unit is written.
	WorkerUnitPath = "/etc/systemd/system/micado-worker.service"
	// WorkerUnit is the name of the systemd unit.
	WorkerUnit = "micado-worker.service"
)

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
	// ClusterKey is the shared cluster secret exactly as the worker reads it
	// from MICADO_CLUSTER_KEY or --key-file (base64 text). It is written to
	// ClusterKeyPath with mode 0600 and passed as --key-file; it never
	// appears on a command line.
	ClusterKey string
	// Binary is the micado binary on the image; DefaultBinary if empty.
	Binary string
}

// Conservative character sets: every value ends up as a systemd ExecStart
// argument, where spaces, quotes, '%', '$' and '\' have meaning, so they are
// rejected rather than escaped.
var (
	identRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	joinRE   = regexp.MustCompile(`^[A-Za-z0-9.:\[\]_,-]+$`)
	tagRE    = regexp.MustCompile(`^[A-Za-z0-9._:/@+-]+=[A-Za-z0-9._:/=@+-]*$`)
	binaryRE = regexp.MustCompile(`^/[A-Za-z0-9._/-]+$`)
)

// RenderUserData renders a cloud-init "#cloud-config" document for a new
// worker. It writes the cluster key to ClusterKeyPath (mode 0600, root-owned),
// writes a systemd unit that runs
//
//	micado worker --cluster C --name N --join J --tag T1 --tag T2 --memory M --key-file /etc/micado/cluster.key
//
// and enables and starts that unit. It downloads and installs nothing: the
// image must already contain the micado binary at Binary (DefaultBinary by
// default) and a Docker engine.
//
// Values are validated against conservative character sets so that they
// need no quoting in the unit file; strings placed in YAML are quoted, and the
// key is base64 encoded.
func RenderUserData(p UserDataParams) (string, error) {
	if p.Binary == "" {
		p.Binary = DefaultBinary
	}
	switch {
	case !identRE.MatchString(p.Cluster):
		return "", fmt.Errorf("cloudapi: user data: invalid cluster name %q", p.Cluster)
	case !identRE.MatchString(p.Name):
		return "", fmt.Errorf("cloudapi: user data: invalid node name %q", p.Name)
	case !joinRE.MatchString(p.Join):
		return "", fmt.Errorf("cloudapi: user data: invalid join address %q", p.Join)
	case p.Memory <= 0:
		return "", fmt.Errorf("cloudapi: user data: memory must be positive, got %d", p.Memory)
	case p.ClusterKey == "":
		return "", errors.New("cloudapi: user data: empty cluster key")
	case !binaryRE.MatchString(p.Binary):
		return "", fmt.Errorf("cloudapi: user data: invalid binary path %q", p.Binary)
	}
	for _, t := range p.Tags {
		if !tagRE.MatchString(t) {
			return "", fmt.Errorf("cloudapi: user data: invalid tag %q: want key=value without spaces or quotes", t)
		}
	}

	var unit bytes.Buffer
	if err := unitTemplate.Execute(&unit, p); err != nil {
		return "", fmt.Errorf("cloudapi: user data: %w", err)
	}
	var out bytes.Buffer
	err := cloudConfigTemplate.Execute(&out, map[string]any{
		"Unit":     unit.String(),
		"UnitPath": WorkerUnitPath,
		"UnitName": WorkerUnit,
		"KeyPath":  ClusterKeyPath,
		"KeyB64":   base64.StdEncoding.EncodeToString([]byte(p.ClusterKey)),
	})
	if err != nil {
		return "", fmt.Errorf("cloudapi: user data: %w", err)
	}
	return out.String(), nil
}

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

[Service]
ExecStart={{.Binary}} worker --cluster {{.Cluster}} --name {{.Name}} --join {{.Join}}{{range .Tags}} --tag {{.}}{{end}} --memory {{.Memory}} --key-file ` + ClusterKeyPath + `
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
`))

var cloudConfigTemplate = template.Must(template.New("cloud-config").Funcs(funcs).Parse(`#cloud-config
# Rendered by micado. Starts a micado worker; the image must already contain
# the micado binary and Docker, nothing is downloaded.
write_files:
  - path: {{yaml .KeyPath}}
    owner: "root:root"
    permissions: "0600"
    encoding: b64
    content: {{yaml .KeyB64}}
  - path: {{yaml .UnitPath}}
    owner: "root:root"
    permissions: "0644"
    content: |
{{indent 6 .Unit}}
runcmd:
  - ["systemctl", "daemon-reload"]
  - ["systemctl", "enable", "--now", {{yaml .UnitName}}]
`))
