package definitions

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseExamples(t *testing.T) {
	webshop := &App{Name: "webshop", File: "webshop.yaml", Services: []Service{
		{
			Name: "proxy", Image: "micado/demo-proxy", Role: "proxy", Memory: 64 << 20, Replicas: 1,
			Ports:     []PortSpec{{Port: 8080, Protocol: "tcp", Check: &CheckSpec{HTTP: "/health"}}},
			DependsOn: []string{"app"}, Links: []string{"app"}, Line: 9,
		},
		{
			Name: "app", Image: "micado/demo-web", Role: "app", Memory: 64 << 20, Replicas: 2,
			Ports:     []PortSpec{{Port: 8080, Protocol: "tcp", Check: &CheckSpec{HTTP: "/health"}}},
			Env:       map[string]string{"MESSAGE": "webshop"},
			DependsOn: []string{"db"}, Links: []string{"db"}, Line: 19,
		},
		{
			Name: "db", Image: "micado/demo-web", Role: "db", Memory: 128 << 20, Replicas: 1,
			Ports:  []PortSpec{{Port: 8080, Protocol: "tcp", Check: &CheckSpec{TCP: true}}},
			Env:    map[string]string{"ROLE": "db"},
			Pinned: true, Line: 32,
		},
	}}
	science := &App{Name: "science-pipeline", File: "science.yaml", Services: []Service{
		{
			Name: "gateway", Image: "micado/demo-proxy", Role: "proxy", Memory: 64 << 20, Replicas: 1,
			Ports:     []PortSpec{{Port: 8080, Protocol: "tcp", Check: &CheckSpec{HTTP: "/health", Interval: "10s"}}},
			DependsOn: []string{"workers"}, Links: []string{"workers"}, Line: 19,
		},
		{
			Name: "workers", Image: "micado/demo-web", Role: "app", Memory: 96 << 20, Replicas: 4,
			Ports:     []PortSpec{{Port: 8080, Protocol: "tcp", Check: &CheckSpec{HTTP: "/health", Interval: "5s"}}},
			Env:       map[string]string{"MESSAGE": "worker", "BATCH_SIZE": "64"},
			DependsOn: []string{"collector"}, Links: []string{"collector"}, Line: 30,
		},
		{
			Name: "collector", Image: "micado/demo-web", Role: "app", Memory: 256 << 20, Replicas: 1,
			Ports:  []PortSpec{{Port: 8080, Protocol: "tcp", Check: &CheckSpec{TCP: true}}},
			Env:    map[string]string{"MESSAGE": "collector"},
			Pinned: true, Line: 43,
		},
	}}
	for _, tc := range []struct {
		file   string
		want   *App
		levels [][]string
	}{
		{"webshop.yaml", webshop, [][]string{{"db"}, {"app"}, {"proxy"}}},
		{"science.yaml", science, [][]string{{"collector"}, {"workers"}, {"gateway"}}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := ParseFile(tc.file)
			if err != nil {
				t.Fatalf("ParseFile: %v", err)
			}
			for i := range max(len(got.Services), len(tc.want.Services)) {
				if i >= len(got.Services) || i >= len(tc.want.Services) || !reflect.DeepEqual(got.Services[i], tc.want.Services[i]) {
					t.Errorf("service %d:\n got %s\nwant %s", i, dump(got.Services, i), dump(tc.want.Services, i))
				}
			}
			if got.Name != tc.want.Name || got.File != tc.want.File {
				t.Errorf("got name %q file %q, want %q %q", got.Name, got.File, tc.want.Name, tc.want.File)
			}
			levels, err := got.Levels()
			if err != nil || !reflect.DeepEqual(levels, tc.levels) {
				t.Errorf("Levels() = %v, %v; want %v", levels, err, tc.levels)
			}
			if s, ok := got.Service(tc.want.Services[1].Name); !ok || s != &got.Services[1] {
				t.Errorf("Service(%q) = %v, %v", tc.want.Services[1].Name, s, ok)
			}
			if _, ok := got.Service("nope"); ok {
				t.Errorf("Service(nope) found a service")
			}
		})
	}
}

func dump(ss []Service, i int) string {
	if i >= len(ss) {
		return "nothing"
	}
	s := ss[i]
	out := strings.Builder{}
	out.WriteString(strings.TrimSpace(strings.ReplaceAll(
		strings.ReplaceAll(strings.TrimSpace(fmt.Sprintf("%+v", s)), "\n", " "), "  ", " ")))
	for _, p := range s.Ports {
		if p.Check != nil {
			out.WriteString(fmt.Sprintf(" check %d: %+v", p.Port, *p.Check))
		}
	}
	return out.String()
}

// The exact rendering of a problem, as the README promises it.
func TestProblemFormat(t *testing.T) {
	src := `application: webshop
services:
  proxy:
    image: micado/demo-proxy
    role: proxy
    memory: 64MiB
    ports:
      - port: 8080
        check:
          http: /health
  app:
    image: micado/demo-web
    role: app
    memory: 12XB
`
	_, err := Parse("webshop.yaml", []byte(src))
	const want = "webshop.yaml:14: services.app.memory: '12XB' is not a size: unknown unit \"XB\" (use B, KiB, MiB, GiB, TiB (or k, m, g, t as Docker writes them), KB, MB, GB, TB)"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
	var ps Problems
	if !errors.As(err, &ps) || len(ps) != 1 {
		t.Fatalf("error is %T, not one Problem", err)
	}
	if p := ps[0]; p != (Problem{File: "webshop.yaml", Line: 14, Path: "services.app.memory", Msg: "'12XB' is not a size: unknown unit \"XB\" (use B, KiB, MiB, GiB, TiB (or k, m, g, t as Docker writes them), KB, MB, GB, TB)"}) {
		t.Errorf("problem = %#v", p)
	}
	for _, tc := range []struct {
		p    Problem
		want string
	}{
		{Problem{File: "a.yaml", Msg: "m"}, "a.yaml: m"},
		{Problem{File: "a.yaml", Line: 2, Msg: "m"}, "a.yaml:2: m"},
		{Problem{Line: 2, Path: "x", Msg: "m"}, "2: x: m"},
		{Problem{Msg: "m"}, "m"},
	} {
		if got := tc.p.Error(); got != tc.want {
			t.Errorf("%#v.Error() = %q, want %q", tc.p, got, tc.want)
		}
	}
}

const okService = "    image: micado/demo-web\n    role: app\n"

// badCases are files with problems and exactly the problems Parse must
// report. FuzzParse starts from them too.
var badCases = []struct {
	name string
	src  string
	want []string
}{
	{"empty", "", []string{"x.yaml:1: the file is empty: it needs application and services"}},
	{"only comments", "# nothing\n", []string{"x.yaml:1: the file is empty: it needs application and services"}},
	{"not a mapping", "- application: a\n", []string{"x.yaml:1: the file must be a mapping with application and services, not a list"}},
	{"two documents", "application: a\nservices:\n  s:\n" + okService + "---\napplication: b\n", []string{
		"x.yaml:7: the file holds more than one YAML document (---): keep one application per file",
	}},
	{"syntax error", "application: a\nservices: [\n", []string{"x.yaml:2: invalid YAML: did not find expected node content"}},
	{"tabs", "application: a\nservices:\n  s:\n\timage: x\n", []string{
		"x.yaml:4: invalid YAML: found character that cannot start any token (indent with spaces: YAML does not allow tabs)",
	}},
	{"unknown anchor", "application: a\nservices:\n  s: *svc\n", []string{"x.yaml:3: invalid YAML: unknown anchor 'svc' referenced"}},
	{"missing top fields", "version: 2\n", []string{
		"x.yaml:1: version: unknown field (known fields: application, services)",
		"x.yaml:1: application: is required (the application's name, e.g. application: webshop)",
		"x.yaml:1: services: is required (a mapping of service names to services)",
	}},
	{"unknown fields", "application: a\nservices:\n  s:\n    imgae: micado/demo-web\n    role: app\n    ports:\n      - port: 80\n        proto: udp\n    dependson: []\n", []string{
		"x.yaml:3: services.s.image: is required",
		"x.yaml:4: services.s.imgae: unknown field (did you mean image?)",
		"x.yaml:8: services.s.ports[0].proto: unknown field (did you mean protocol?)",
		"x.yaml:9: services.s.dependson: unknown field (did you mean depends_on?)",
	}},
	{"unknown field listed", "application: a\nservices:\n  s:\n" + okService + "    command: [run]\n", []string{
		"x.yaml:6: services.s.command: unknown field (known fields: image, role, tags, memory, replicas, ports, env, depends_on, links, pinned, scaling)",
	}},
	{"missing image and role", "application: a\nservices:\n  s:\n    replicas: 2\n  t: {}\n", []string{
		"x.yaml:3: services.s.image: is required",
		"x.yaml:3: services.s.role: is required (the worker role, e.g. role: app)",
		"x.yaml:5: services.t.image: is required",
		"x.yaml:5: services.t.role: is required (the worker role, e.g. role: app)",
	}},
	{"bad names", "application: Web Shop\nservices:\n  Web_1:\n" + okService + "  " + strings.Repeat("a", 41) + ":\n" + okService, []string{
		"x.yaml:1: application: 'Web Shop' is not a valid application name: use 1 to 48 lowercase letters, digits and '-', starting and ending with a letter or digit",
		"x.yaml:3: services.Web_1: 'Web_1' is not a valid service name: use 1 to 40 lowercase letters, digits and '-', starting and ending with a letter or digit",
		"x.yaml:6: services." + strings.Repeat("a", 41) + ": '" + strings.Repeat("a", 41) + "' is not a valid service name: use 1 to 40 lowercase letters, digits and '-', starting and ending with a letter or digit",
	}},
	{"no services", "application: a\nservices: {}\n", []string{"x.yaml:2: services: needs at least one service"}},
	{"services not a mapping", "application: a\nservices: [web]\n", []string{"x.yaml:2: services: must be a mapping of service names to services"}},
	{"service not a mapping", "application: a\nservices:\n  s:\n", []string{"x.yaml:3: services.s: must be a mapping (a service needs at least image and role)"}},
	{"bad values", "application: a\nservices:\n  s:\n    image: micado/demo web\n    role: app server\n    tags: [zone, role=x, zone=a, zone=b]\n    memory: 4MiB\n", []string{
		"x.yaml:4: services.s.image: 'micado/demo web' is not a valid image reference: invalid reference format (e.g. micado/demo-web or registry:5000/team/app:1.2)",
		"x.yaml:5: services.s.role: 'app server' is not a valid role: use up to 63 letters, digits, '.', '_' and '-'",
		"x.yaml:6: services.s.tags[0]: 'zone' is not a valid tag: use key=value with letters, digits, '.', '_' and '-'",
		"x.yaml:6: services.s.tags[1]: give the role with the field role, not as a tag",
		"x.yaml:6: services.s.tags[3]: tag zone is given twice (first at line 6)",
		"x.yaml:7: services.s.memory: '4MiB' is below the minimum of 6MiB",
	}},
	{"sizes", "application: a\nservices:\n  a:\n" + okService + "    memory: 0\n  b:\n" + okService + "    memory: 99999999TiB\n  c:\n" + okService + "    memory: [1]\n  d:\n" + okService + "    memory: 1.5GiB\n", []string{
		"x.yaml:6: services.a.memory: '0' is below the minimum of 6MiB",
		"x.yaml:10: services.b.memory: '99999999TiB' is not a size: it is too large",
		"x.yaml:14: services.c.memory: must be a size such as 64MiB",
	}},
	{"wrong types", "application: a\nservices:\n  s:\n    image: 1\n    role: app\n    replicas: \"2\"\n    tags: zone=a\n    pinned: yes\n    env: [A=1]\n    depends_on: t\n    ports: {port: 80}\n", []string{
		`x.yaml:4: services.s.image: must be a string (quote it: "1")`,
		"x.yaml:6: services.s.replicas: must be a number",
		"x.yaml:7: services.s.tags: must be a list",
		"x.yaml:8: services.s.pinned: must be true or false",
		"x.yaml:9: services.s.env: must be a mapping of variable names to values",
		"x.yaml:10: services.s.depends_on: must be a list",
		"x.yaml:11: services.s.ports: must be a list",
	}},
	{"replicas", "application: a\nservices:\n  s:\n" + okService + "    replicas: 1001\n  t:\n" + okService + "    replicas: 1.5\n  u:\n" + okService + "    replicas: -1\n", []string{
		"x.yaml:6: services.s.replicas: must be from 0 to 1000, not 1001",
		"x.yaml:10: services.t.replicas: must be a whole number, not '1.5'",
		"x.yaml:14: services.u.replicas: must be from 0 to 1000, not -1",
	}},
	{"bad ports", "application: a\nservices:\n  s:\n" + okService + "    ports:\n      - port: 70000\n      - port: \"8080\"\n      - port: 80\n        protocol: sctp\n      - port: 81\n      - port: 81\n        protocol: tcp\n      - port: 81\n        protocol: udp\n      - 82\n      - protocol: udp\n", []string{
		"x.yaml:7: services.s.ports[0].port: must be from 1 to 65535, not 70000",
		"x.yaml:8: services.s.ports[1].port: must be a number",
		"x.yaml:10: services.s.ports[2].protocol: 'sctp' is not a protocol: use tcp or udp",
		"x.yaml:12: services.s.ports[4].port: port 81/tcp is listed twice (first at line 11)",
		"x.yaml:16: services.s.ports[6]: must be a mapping (e.g. - port: 8080)",
		"x.yaml:17: services.s.ports[7].port: is required",
	}},
	{"bad checks", "application: a\nservices:\n  s:\n" + okService + "    ports:\n      - port: 80\n        check: {http: health, tcp: false, interval: 1h}\n      - port: 81\n        check: {tcp: true}\n  t:\n" + okService + "    ports:\n      - port: 80\n        protocol: udp\n        check: {interval: 500ms}\n", []string{
		"x.yaml:8: services.s.ports[0].check.http: 'health' is not a path: it starts with / and has no spaces",
		"x.yaml:8: services.s.ports[0].check.tcp: must be true (leave out the check for none)",
		"x.yaml:8: services.s.ports[0].check: give one of http or tcp, not both",
		"x.yaml:8: services.s.ports[0].check.interval: '1h' is not a valid interval: use a duration from 1s to 10m, e.g. 5s",
		"x.yaml:10: services.s.ports[1].check: only the first port may have a check: Consul checks a container through its first port",
		"x.yaml:17: services.t.ports[0].check: needs http: /path or tcp: true",
		"x.yaml:17: services.t.ports[0].check.interval: '500ms' is not a valid interval: use a duration from 1s to 10m, e.g. 5s",
		"x.yaml:17: services.t.ports[0].check: a check needs a tcp port",
	}},
	{"bad env", "application: a\nservices:\n  s:\n" + okService + "    env:\n      1BAD: x\n      with-dash: x\n      MICADO_NODE: x\n      PORT: 8080\n      EMPTY:\n      OK: \"\"\n", []string{
		"x.yaml:7: services.s.env.1BAD: '1BAD' is not a valid environment variable name: use letters, digits and '_', not starting with a digit",
		"x.yaml:8: services.s.env.with-dash: 'with-dash' is not a valid environment variable name: use letters, digits and '_', not starting with a digit",
		"x.yaml:9: services.s.env.MICADO_NODE: MICADO_NODE is reserved: micado sets MICADO_* variables itself",
		`x.yaml:10: services.s.env.PORT: must be a string (quote it: "8080")`,
		`x.yaml:11: services.s.env.EMPTY: must be a string (write "" for an empty value)`,
	}},
	{"duplicate keys", "application: a\nservices:\n  s:\n" + okService + "    image: other\n  s:\n" + okService + "application: b\n", []string{
		"x.yaml:6: services.s.image: defined twice (first at line 4)",
		"x.yaml:7: services.s: defined twice (first at line 3)",
		"x.yaml:10: application: defined twice (first at line 1)",
	}},
	{"non-string keys", "application: a\nservices:\n  8080:\n" + okService + "  [x]: {}\n", []string{
		`x.yaml:3: services.8080: names must be strings (quote it: "8080")`,
		"x.yaml:6: services: keys must be strings, not a list",
	}},
	{"cycle", "application: a\nservices:\n  a:\n" + okService + "    depends_on: [b]\n  b:\n" + okService + "    depends_on: [c]\n  c:\n" + okService + "    depends_on: [a]\n  d:\n" + okService + "    depends_on: [e]\n  e:\n" + okService + "    depends_on: [d]\n", []string{
		"x.yaml:6: services.a.depends_on[0]: depends_on cycle: a -> b -> c -> a",
		"x.yaml:18: services.d.depends_on[0]: depends_on cycle: d -> e -> d",
	}},
	{"bad references", "application: a\nservices:\n  app:\n" + okService + "    depends_on: [app, dbb, db, db]\n    links: [app, cache]\n  db:\n" + okService + "    links: [app]\n", []string{
		"x.yaml:6: services.app.depends_on[0]: a service cannot depend on itself",
		"x.yaml:6: services.app.depends_on[1]: unknown service 'dbb' (did you mean db?)",
		"x.yaml:6: services.app.depends_on[3]: 'db' is listed twice (first at line 6)",
		"x.yaml:7: services.app.links[0]: a service cannot link to itself",
		"x.yaml:7: services.app.links[1]: unknown service 'cache' (services are: db)",
	}},
	{"merge problems", "application: a\nx-base: &base [1]\nservices:\n  s:\n    <<: *base\n" + okService + "  t: &t\n    <<: *t\n" + okService, []string{
		"x.yaml:5: services.s[\"<<\"]: merge needs a mapping or a list of mappings, not a list holding a number",
		"x.yaml:8: services.t[\"<<\"]: the merge contains the mapping it is in",
	}},
	{"several at once", "application: shop\nservices:\n  proxy:\n    image: micado/demo-proxy\n    role: proxy\n    memory: lots\n    ports:\n      - port: 0\n    depends_on: [api]\n  app:\n    image: micado/demo-web\n    replicas: many\n    env: {MICADO_X: y}\n    colour: blue\n", []string{
		"x.yaml:6: services.proxy.memory: 'lots' is not a size: write a number followed by a unit, e.g. 512MiB or 1g",
		"x.yaml:8: services.proxy.ports[0].port: must be from 1 to 65535, not 0",
		"x.yaml:9: services.proxy.depends_on[0]: unknown service 'api' (did you mean app?)",
		"x.yaml:10: services.app.role: is required (the worker role, e.g. role: app)",
		"x.yaml:12: services.app.replicas: must be a number",
		"x.yaml:13: services.app.env.MICADO_X: MICADO_X is reserved: micado sets MICADO_* variables itself",
		"x.yaml:14: services.app.colour: unknown field (known fields: image, role, tags, memory, replicas, ports, env, depends_on, links, pinned, scaling)",
	}},
}

func TestParseProblems(t *testing.T) {
	for _, tc := range badCases {
		t.Run(tc.name, func(t *testing.T) {
			app, err := Parse("x.yaml", []byte(tc.src))
			if app != nil {
				t.Errorf("Parse returned an App along with problems")
			}
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("error %v (%T) is not Problems", err, err)
			}
			got := strings.Split(err.Error(), "\n")
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			for _, p := range ps {
				if p.File != "x.yaml" {
					t.Errorf("problem %q has file %q", p.Msg, p.File)
				}
			}
		})
	}
}

// featuresSrc uses YAML features a definition may use: merge keys,
// anchors, flow style, hexadecimal numbers.
const featuresSrc = `application: a
x-env: &env {LOG: debug, MESSAGE: base}
x-small: &small {memory: 32MiB}
services:
  web:
    <<: [*small, {memory: 1GiB, replicas: 3}]
    image: registry.example.com:5000/team/web:1.2
    role: app
    tags: [zone=a, disk.type=ssd]
    env:
      <<: *env
      MESSAGE: override
      EMPTY: ""
    ports:
      - {port: 0x50}
      - {port: 80, protocol: udp}
      - port: 81
    replicas: 2.0
    links: [db]
  db:
    image: micado/demo-web
    role: db
    memory: 7340032
`

func TestParseAcceptsYAMLFeatures(t *testing.T) {
	app, err := Parse("x.yaml", []byte(featuresSrc))
	if err != nil {
		t.Fatal(err)
	}
	web := app.Services[0]
	want := Service{
		Name: "web", Image: "registry.example.com:5000/team/web:1.2", Role: "app",
		Tags: []string{"zone=a", "disk.type=ssd"}, Memory: 32 << 20, Replicas: 2,
		Ports: []PortSpec{{Port: 80, Protocol: "tcp"}, {Port: 80, Protocol: "udp"}, {Port: 81, Protocol: "tcp"}},
		Env:   map[string]string{"LOG": "debug", "MESSAGE": "override", "EMPTY": ""},
		Links: []string{"db"}, Line: 5,
	}
	if !reflect.DeepEqual(web, want) {
		t.Errorf("web:\n got %+v\nwant %+v", web, want)
	}
	if db := app.Services[1]; db.Memory != 7<<20 || db.Replicas != 1 {
		t.Errorf("db: %+v", db)
	}
}

func TestLevels(t *testing.T) {
	app := &App{Services: []Service{
		{Name: "web", DependsOn: []string{"api", "cache"}},
		{Name: "api", DependsOn: []string{"db", "queue"}},
		{Name: "queue"},
		{Name: "db"},
		{Name: "cache", DependsOn: []string{"db"}},
		{Name: "batch", DependsOn: []string{"queue"}},
	}}
	got, err := app.Levels()
	want := [][]string{{"db", "queue"}, {"api", "batch", "cache"}, {"web"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Levels() = %v, %v; want %v", got, err, want)
	}
	for _, tc := range []struct {
		services []Service
		want     string
	}{
		{[]Service{{Name: "a", DependsOn: []string{"b"}}, {Name: "b", DependsOn: []string{"a"}}}, "depends_on cycle: a -> b -> a"},
		{[]Service{{Name: "a", DependsOn: []string{"a"}}}, "service a depends on itself"},
		{[]Service{{Name: "a", DependsOn: []string{"x"}}}, "service a depends on unknown service x"},
		{[]Service{{Name: "a"}, {Name: "a"}}, "service a is defined twice"},
	} {
		if _, err := (&App{Services: tc.services}).Levels(); err == nil || err.Error() != tc.want {
			t.Errorf("Levels(%v) error = %v, want %s", tc.services, err, tc.want)
		}
	}
	if got, err := (&App{}).Levels(); err != nil || len(got) != 0 {
		t.Errorf("Levels of no services = %v, %v", got, err)
	}
}

func TestParseFileErrors(t *testing.T) {
	if _, err := ParseFile("testdata/does-not-exist.yaml"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ParseFile of a missing file: %v", err)
	}
	_, err := Parse("big.yaml", []byte("application: a\n"+strings.Repeat("#", MaxFileSize)))
	if err == nil || !strings.Contains(err.Error(), "more than the limit of 1MiB") {
		t.Errorf("Parse of a big file: %v", err)
	}
}

// A small file can stand for a huge one through aliases; Parse gives up
// on it instead of reading millions of values.
func TestParseGivesUpOnAliasBombs(t *testing.T) {
	var b strings.Builder
	b.WriteString("application: a\nx-ports: &p\n")
	for i := range 10000 {
		fmt.Fprintf(&b, "  - {port: %d}\n", i+1)
	}
	b.WriteString("services:\n")
	for i := range 300 {
		fmt.Fprintf(&b, "  s%d: {image: i, role: r, ports: *p}\n", i)
	}
	_, err := Parse("bomb.yaml", []byte(b.String()))
	const want = "bomb.yaml: the file uses aliases too heavily: it stands for more than 2097152 values"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Parse of an alias bomb: %v", err)
	}
}
