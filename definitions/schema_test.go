package definitions

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

var compiled = sync.OnceValues(func() (*jsonschema.Schema, error) {
	f, err := os.Open("micado-app.schema.json")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	const url = "https://github.com/micado-scale/micado/definitions/micado-app.schema.json"
	if err := c.AddResource(url, doc); err != nil {
		return nil, err
	}
	return c.Compile(url)
})

func schema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	sch, err := compiled()
	if err != nil {
		t.Fatalf("compiling micado-app.schema.json: %v", err)
	}
	return sch
}

// yamlToJSON turns a YAML document into the JSON value an editor's schema
// validator sees.
func yamlToJSON(data []byte) (any, error) {
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	b, err := json.Marshal(stringKeys(v))
	if err != nil {
		return nil, err
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(b))
}

// stringKeys converts the map[any]any that yaml.v3 makes for mappings with
// keys that are not strings, which JSON cannot hold.
func stringKeys(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = stringKeys(x)
		}
		return v
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[fmt.Sprint(k)] = stringKeys(x)
		}
		return m
	case []any:
		for i, x := range v {
			v[i] = stringKeys(x)
		}
		return v
	}
	return v
}

func TestSchemaAcceptsExamples(t *testing.T) {
	sch := schema(t)
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("examples: %v, %v", files, err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if IsCompose(data) {
			continue // a Compose example (compose_test.go reads it), not micado's format
		}
		doc, err := yamlToJSON(data)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if err := sch.Validate(doc); err != nil {
			t.Errorf("%s does not pass the schema: %v", file, err)
		}
		if _, err := Parse(file, data); err != nil {
			t.Errorf("%s does not parse: %v", file, err)
		}
	}
}

func TestSchemaRejectsBadDocuments(t *testing.T) {
	sch := schema(t)
	svc := func(extra string) string {
		return "application: a\nservices:\n  s:\n    image: micado/demo-web\n    role: app\n" + extra
	}
	for name, src := range map[string]string{
		"no services":         "application: a\n",
		"empty services":      "application: a\nservices: {}\n",
		"unknown top field":   svc("") + "version: 2\n",
		"unknown field":       svc("    command: run\n"),
		"unknown port field":  svc("    ports: [{port: 80, proto: udp}]\n"),
		"missing image":       "application: a\nservices:\n  s:\n    role: app\n",
		"bad app name":        strings.Replace(svc(""), "application: a", "application: Web_Shop", 1),
		"bad service name":    strings.Replace(svc(""), "  s:", "  S:", 1),
		"long service name":   strings.Replace(svc(""), "  s:", "  "+strings.Repeat("s", 41)+":", 1),
		"bad size":            svc("    memory: 12XB\n"),
		"small memory bytes":  svc("    memory: 1024\n"),
		"replicas as string":  svc("    replicas: \"2\"\n"),
		"too many replicas":   svc("    replicas: 1001\n"),
		"role tag":            svc("    tags: [role=db]\n"),
		"bad tag":             svc("    tags: [zone]\n"),
		"bad env name":        svc("    env: {1BAD: x}\n"),
		"reserved env":        svc("    env: {MICADO_NODE: x}\n"),
		"env number":          svc("    env: {PORT: 8080}\n"),
		"port out of range":   svc("    ports: [{port: 70000}]\n"),
		"bad protocol":        svc("    ports: [{port: 80, protocol: sctp}]\n"),
		"both checks":         svc("    ports: [{port: 80, check: {http: /h, tcp: true}}]\n"),
		"no check kind":       svc("    ports: [{port: 80, check: {interval: 5s}}]\n"),
		"tcp false":           svc("    ports: [{port: 80, check: {tcp: false}}]\n"),
		"relative http path":  svc("    ports: [{port: 80, check: {http: health}}]\n"),
		"bad interval":        svc("    ports: [{port: 80, check: {tcp: true, interval: 5 s}}]\n"),
		"check on second":     svc("    ports: [{port: 80}, {port: 81, check: {tcp: true}}]\n"),
		"check on udp":        svc("    ports: [{port: 80, protocol: udp, check: {tcp: true}}]\n"),
		"pinned yes":          svc("    pinned: yes\n"),
		"depends_on string":   svc("    depends_on: db\n"),
		"duplicate reference": svc("    links: [db, db]\n"),
	} {
		doc, err := yamlToJSON([]byte(src))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := sch.Validate(doc); err == nil {
			t.Errorf("%s: the schema accepts\n%s", name, src)
		}
		if _, err := Parse("x.yaml", []byte(src)); err == nil {
			t.Errorf("%s: Parse accepts\n%s", name, src)
		}
	}
}

// Whatever Parse accepts, the schema must accept too, or editors would
// flag good files.
func TestSchemaAcceptsWhatParseAccepts(t *testing.T) {
	sch := schema(t)
	srcs := []string{
		"application: a\nservices:\n  s: {image: i, role: r, memory: 6291456, replicas: 0, pinned: false, tags: [], env: {}, ports: [], links: [], depends_on: []}\n",
		"application: a\nservices:\n  s: {image: i, role: r, replicas: 2.0, ports: [{port: 0x50, protocol: udp}, {port: 81}]}\n",
		"application: a\nx-y: &y {role: r}\nservices:\n  s: {<<: *y, image: i, memory: \" 1 gb \", ports: [{port: 1, check: {http: \"/?a=b\", interval: 1m30s}}]}\n",
	}
	for _, src := range srcs {
		if _, err := Parse("x.yaml", []byte(src)); err != nil {
			t.Fatalf("Parse(%q): %v", src, err)
		}
		doc, err := yamlToJSON([]byte(src))
		if err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(doc); err != nil {
			t.Errorf("the schema rejects a file Parse accepts:\n%s\n%v", src, err)
		}
	}
}
