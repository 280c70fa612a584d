package definitions

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the .err files of testdata/compose")

// comparable returns a copy of app without File and lines, and with empty
// lists and maps as nil, for comparing applications read from different
// files and formats.
func comparable(app *App) *App {
	out := &App{Name: app.Name}
	for _, s := range app.Services {
		s.Line = 0
		if len(s.Tags) == 0 {
			s.Tags = nil
		}
		if len(s.Ports) == 0 {
			s.Ports = nil
		}
		if len(s.Env) == 0 {
			s.Env = nil
		}
		if len(s.DependsOn) == 0 {
			s.DependsOn = nil
		}
		if len(s.Links) == 0 {
			s.Links = nil
		}
		out.Services = append(out.Services, s)
	}
	return out
}

func sameApp(t *testing.T, what string, got, want *App) {
	t.Helper()
	g, w := comparable(got), comparable(want)
	if g.Name != w.Name {
		t.Errorf("%s: name %q, want %q", what, g.Name, w.Name)
	}
	for i := range max(len(g.Services), len(w.Services)) {
		if i >= len(g.Services) || i >= len(w.Services) || !reflect.DeepEqual(g.Services[i], w.Services[i]) {
			t.Errorf("%s: service %d:\n got %s\nwant %s", what, i, dump(g.Services, i), dump(w.Services, i))
		}
	}
}

func TestComposeWebshopIsWebshop(t *testing.T) {
	want, err := ParseFile("webshop.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, warns, err := ParseComposeFile("webshop.compose.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) > 0 {
		t.Errorf("warnings: %q", warns)
	}
	if got.File != "webshop.compose.yaml" {
		t.Errorf("File %q", got.File)
	}
	sameApp(t, "webshop.compose.yaml", got, want)
}

// composeCases are Compose files and the application micado reads in them.
var composeCases = []struct {
	name  string
	yaml  string
	env   map[string]string
	want  *App
	warns []string // substrings of the warnings, in order
}{
	{
		name: "short forms",
		yaml: `
name: shop
x-micado: {role: app}
services:
  web:
    image: micado/demo-web:${TAG:-1.0}
    scale: 3
    mem_limit: 256m
    ports: ["80:8080", "9000/udp"]
    environment: [A=1, "B=two words", FROM_ENV, NOT_SET]
    depends_on: [db]
    links: ["db:database"]
    healthcheck:
      test: curl -fsS http://localhost:8080/health?full=1 || exit 1
      interval: 200ms
      retries: 3
  db:
    image: postgres
    expose: ["5432"]
`,
		env: map[string]string{"FROM_ENV": "x"},
		want: &App{Name: "shop", Services: []Service{
			{Name: "web", Image: "micado/demo-web:1.0", Role: "app", Memory: 256 << 20, Replicas: 3,
				Ports: []PortSpec{
					{Port: 8080, Protocol: "tcp", Check: &CheckSpec{HTTP: "/health?full=1", Interval: "1s"}},
					{Port: 9000, Protocol: "udp"},
				},
				Env:       map[string]string{"A": "1", "B": "two words", "FROM_ENV": "x"},
				DependsOn: []string{"db"}, Links: []string{"db"}},
			{Name: "db", Image: "postgres", Role: "app", Memory: DefaultMemory, Replicas: 1,
				Ports: []PortSpec{{Port: 5432, Protocol: "tcp"}}},
		}},
		warns: []string{
			"9: services.web.ports[0]: the host port 80 cannot be honoured",
			"10: services.web.environment[3]: NOT_SET has no value and is not set: it is left out",
			"12: services.web.links[0]: the alias 'database' is ignored",
			"15: services.web.healthcheck.interval: 200ms is below micado's shortest interval: the check runs every 1s",
			"16: services.web.healthcheck.retries: ignored",
		},
	},
	{
		name: "long forms and x-micado",
		yaml: `
services:
  api:
    image: registry:5000/team/api:2
    container_name: api
    restart: always
    deploy:
      replicas: 2
      resources:
        limits: {memory: 1gb, cpus: "0.5"}
        reservations: {memory: 512MiB}
      placement:
        constraints: ["node.labels.zone == a", node.labels.role==api]
    ports:
      - target: 8080
        published: "8080"
        protocol: tcp
    environment:
      MODE: fast
      EMPTY: ""
    depends_on:
      cache:
        condition: service_healthy
      queue:
        condition: service_started
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/ready"]
      interval: 1m30s
    x-micado:
      tags: [disk=ssd]
      pinned: true
      scaling: {min: 2, max: 6, cpu: 60%, schedule: [{cron: "0 8 * * 1-5", duration: 10h, min: 4}]}
  cache:
    image: redis:7
    ports: ["6379"]
    healthcheck: {disable: true}
    x-micado: {role: cache, check: {tcp: true, interval: 5s}}
  queue:
    image: rabbitmq:3
    ports: ["5672"]
    healthcheck:
      test: ["CMD", "rabbitmq-diagnostics", "ping"]
    networks: [default]
    x-micado: {role: queue}
`,
		env: map[string]string{"COMPOSE_PROJECT_NAME": "team-api"},
		want: &App{Name: "team-api", Services: []Service{
			{Name: "api", Image: "registry:5000/team/api:2", Role: "api", Tags: []string{"disk=ssd", "zone=a"}, Memory: 1 << 30, Replicas: 2,
				Ports:     []PortSpec{{Port: 8080, Protocol: "tcp", Check: &CheckSpec{HTTP: "/ready", Interval: "1m30s"}}},
				Env:       map[string]string{"MODE": "fast", "EMPTY": ""},
				DependsOn: []string{"cache", "queue"}, Pinned: true,
				Scaling: &Scaling{Min: 2, Max: 6, CPU: 60, Schedule: []Window{{Cron: "0 8 * * 1-5", Duration: "10h", Min: 4}}}},
			{Name: "cache", Image: "redis:7", Role: "cache", Memory: DefaultMemory, Replicas: 1,
				Ports: []PortSpec{{Port: 6379, Protocol: "tcp", Check: &CheckSpec{TCP: true, Interval: "5s"}}}},
			{Name: "queue", Image: "rabbitmq:3", Role: "queue", Memory: DefaultMemory, Replicas: 1,
				Ports: []PortSpec{{Port: 5672, Protocol: "tcp"}}},
		}},
		warns: []string{
			"5: services.api.container_name: ignored: micado names containers itself",
			"6: services.api.restart: ignored",
			"10: services.api.deploy.resources.limits.cpus: ignored: micado places containers by memory only",
			"11: services.api.deploy.resources.reservations.memory: ignored: micado gives a container one memory size, reserved and limit at once, and takes deploy.resources.limits.memory (1GiB)",
			"15: services.api.ports[0]: the host port 8080 cannot be honoured",
			"36: services.cache.healthcheck: ignored: x-micado.check gives the check",
			"42: services.queue.healthcheck.test: micado runs only HTTP checks",
			"43: services.queue.networks: ignored",
		},
	},
	{
		name: "the directory names the application",
		yaml: `
services:
  web: {image: nginx, mem_reservation: 100000000, x-micado: {role: web}}
`,
		want: &App{Name: "my-project", Services: []Service{
			{Name: "web", Image: "nginx", Role: "web", Memory: 100000000, Replicas: 1},
		}},
	},
}

func TestComposeMapping(t *testing.T) {
	for _, tc := range composeCases {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "My_Project", "compose.yaml")
			got, warns, err := ParseCompose(file, []byte(tc.yaml), tc.env)
			if err != nil {
				t.Fatalf("%v", err)
			}
			sameApp(t, tc.name, got, tc.want)
			if len(warns) != len(tc.warns) {
				t.Errorf("%d warnings, want %d:\n%s", len(warns), len(tc.warns), strings.Join(warns, "\n"))
			}
			for i := range min(len(warns), len(tc.warns)) {
				if !strings.Contains(warns[i], file+":"+tc.warns[i]) {
					t.Errorf("warning %d:\n got %s\nwant %s", i, warns[i], tc.warns[i])
				}
			}
		})
	}
}

// TestComposeRefused reads the Compose files of testdata/compose, each
// with things micado cannot honour, and compares every problem reported
// with the file's .err.
func TestComposeRefused(t *testing.T) {
	files, _ := filepath.Glob("testdata/compose/*.yaml")
	if len(files) < 10 {
		t.Fatalf("%d files in testdata/compose", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			app, _, err := ParseComposeFile(f, map[string]string{})
			if err == nil {
				t.Fatalf("accepted: %+v", app)
			}
			var ps Problems
			if !errorsAs(err, &ps) {
				t.Fatalf("error is %T, not Problems: %v", err, err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(f, ".yaml") + ".err"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("problems:\n%s\nwant (%s):\n%s", got, golden, want)
			}
		})
	}
}

func errorsAs(err error, ps *Problems) bool {
	p, ok := err.(Problems)
	*ps = p
	return ok
}

// TestMarshalRoundTrips writes every example and table case in both
// formats and reads it back.
func TestMarshalRoundTrips(t *testing.T) {
	apps := map[string]*App{}
	for _, f := range []string{"webshop.yaml", "science.yaml"} {
		app, err := ParseFile(f)
		if err != nil {
			t.Fatal(err)
		}
		apps[f] = app
	}
	app, _, err := ParseComposeFile("webshop.compose.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	apps["webshop.compose.yaml"] = app
	for _, tc := range composeCases {
		apps[tc.name] = tc.want
	}
	apps["odd values"] = &App{Name: "odd", Services: []Service{{
		Name: "s", Image: "x", Role: "r", Memory: 123456789, Replicas: 0,
		Env:     map[string]string{"DOLLAR": "$HOME and $${x}", "YES": "yes", "NUM": "0x10", "EMPTY": ""},
		Ports:   []PortSpec{{Port: 53, Protocol: "udp"}, {Port: 53, Protocol: "tcp"}},
		Scaling: nil,
	}, {
		Name: "q", Image: "x", Role: "r", Memory: 6 << 20, Replicas: 3,
		Scaling: &Scaling{Min: 1, Max: 5, Memory: 12.5, Query: `sum(rate(http_requests_total{job="$job"}[1m]))`, PerReplica: 0.5, Stabilization: "90s",
			Schedule: []Window{{Cron: "@daily", Duration: "1h", Max: 2}}},
	}}}
	for name, app := range apps {
		t.Run(name, func(t *testing.T) {
			y := Marshal(app)
			back, err := Parse("m.yaml", y)
			if err != nil {
				t.Fatalf("Parse(Marshal):\n%v\n%s", err, y)
			}
			sameApp(t, "Marshal", back, app)
			c := MarshalCompose(app)
			back, warns, err := ParseCompose("c.yaml", c, nil)
			if err != nil {
				t.Fatalf("ParseCompose(MarshalCompose):\n%v\n%s", err, c)
			}
			if len(warns) > 0 {
				t.Errorf("warnings: %q\n%s", warns, c)
			}
			sameApp(t, "MarshalCompose", back, app)
		})
	}
}

func TestLoadPicksTheFormat(t *testing.T) {
	for f, compose := range map[string]bool{"webshop.yaml": false, "science.yaml": false, "webshop.compose.yaml": true} {
		data, _ := os.ReadFile(f)
		if IsCompose(data) != compose {
			t.Errorf("IsCompose(%s) = %v", f, !compose)
		}
		app, _, err := Load(f, nil)
		if err != nil || app.Name != "webshop" && app.Name != "science-pipeline" {
			t.Errorf("Load(%s): %v %v", f, app, err)
		}
	}
	if IsCompose([]byte("application: x\nservices: {}\n")) || IsCompose([]byte("- a\n")) {
		t.Error("IsCompose took a micado file or a list for Compose")
	}
}
