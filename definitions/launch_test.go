package definitions

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// A launch is a one-service application: the same service as the file
// that says the same things, with the same defaults.
func TestLaunchIsAOneServiceApplication(t *testing.T) {
	for _, tc := range []struct {
		launch Launch
		file   string
	}{
		{Launch{Image: "micado/demo-web", Role: "proxy"},
			"image: micado/demo-web\n    role: proxy"},
		{Launch{Image: "registry:5000/team/demo-web:1.2", Name: "api", Role: "app", Tags: []string{"zone=a"}, Memory: "512m",
			Ports: []string{"8080", "53/udp"}, Env: map[string]string{"A": "b"}, Replicas: 3, Check: &CheckSpec{HTTP: "/health", Interval: "5s"}, Pinned: true},
			"image: registry:5000/team/demo-web:1.2\n    role: app\n    tags: [zone=a]\n    memory: 512MiB\n    replicas: 3\n    ports:\n      - port: 8080\n        check: {http: /health, interval: 5s}\n      - {port: 53, protocol: udp}\n    env: {A: b}\n    pinned: true"},
		{Launch{Image: "micado/demo-web", Role: "app", Ports: []string{"8080"}, Scaling: &Scaling{Min: 2, Max: 5, CPU: 60}},
			"image: micado/demo-web\n    role: app\n    ports: [{port: 8080}]\n    scaling: {min: 2, max: 5, cpu: 60%}"},
	} {
		got, err := ParseLaunch(tc.launch)
		if err != nil {
			t.Fatalf("%+v: %v", tc.launch, err)
		}
		name := tc.launch.Name
		if name == "" {
			name = DefaultServiceName(tc.launch.Image)
		}
		want, err := Parse("x.yaml", []byte("application: x\nservices:\n  "+name+":\n    "+tc.file+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		ws := want.Services[0]
		ws.Line = 0
		if got.Name != "" || len(got.Services) != 1 || !reflect.DeepEqual(got.Services[0], ws) {
			t.Errorf("launch %+v\n gives %+v\n the file %+v", tc.launch, got.Services, ws)
		}
	}
}

// Every problem of a launch is reported at once, under the launch's field
// names, with the message a definition file gets for the same value.
func TestLaunchProblems(t *testing.T) {
	_, err := ParseLaunch(Launch{Image: "Bad Image!", Name: "-x-", Role: "a b", Tags: []string{"nokey", "role=x"}, Memory: "12XB",
		Ports: []string{"0", "http", "8080/sctp", "8080", "8080/tcp"}, Env: map[string]string{"1X": "y", "MICADO_X": "z"}, Replicas: -1,
		Check: &CheckSpec{HTTP: "no slash"}, Scaling: &Scaling{Min: 3, Max: 2, CPU: 150}})
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("error %v is not Problems", err)
	}
	var got []string
	for _, p := range ps {
		if p.File != "" || p.Line != 0 {
			t.Errorf("a launch problem has a file or line: %+v", p)
		}
		got = append(got, p.Path+": "+p.Msg)
	}
	for _, want := range []string{
		"name: '-x-' is not a valid service name",
		"image: 'Bad Image!' is not a valid image reference: invalid reference format",
		"role: 'a b' is not a valid role",
		"tags[0]: 'nokey' is not a valid tag",
		"tags[1]: give the role with the field role, not as a tag",
		"memory: '12XB' is not a size: unknown unit \"XB\"",
		"replicas: must be from 0 to 1000, not -1",
		"ports[0].port: must be from 1 to 65535, not 0",
		"ports[1].port: must be a number",
		"ports[2].protocol: 'sctp' is not a protocol: use tcp or udp",
		"ports[4].port: port 8080/tcp is listed twice",
		"env.1X:",
		"env.MICADO_X: MICADO_X is reserved",
		"check.http: 'no slash' is not a path",
		"scaling.min:",
		"scaling.cpu:",
	} {
		found := false
		for _, g := range got {
			found = found || strings.HasPrefix(g, want)
		}
		if !found {
			t.Errorf("no problem starts with %q; got:\n%s", want, strings.Join(got, "\n"))
		}
	}
	// The same value in a file gets the same message.
	_, ferr := Parse("x.yaml", []byte("application: x\nservices:\n  web:\n    image: micado/demo-web\n    role: app\n    memory: 12XB\n"))
	if !errors.As(ferr, &ps) || len(ps) != 1 || !strings.Contains(strings.Join(got, "\n"), "memory: "+ps[0].Msg) {
		t.Errorf("the file's message %v is not the launch's", ferr)
	}
	// Role is required, as in a file; a check needs a port.
	_, err = ParseLaunch(Launch{Image: "micado/demo-web", Check: &CheckSpec{HTTP: "/health"}})
	if err == nil || !strings.Contains(err.Error(), "role: is required") || !strings.Contains(err.Error(), "check: a check needs a published TCP port") {
		t.Errorf("launch without role and port: %v", err)
	}
}

func TestDefaultServiceName(t *testing.T) {
	for in, want := range map[string]string{
		"micado/demo-web": "demo-web", "registry:5000/team/App_1:1.2": "app-1", "x@sha256:abc": "x", "ubuntu": "ubuntu",
	} {
		if got := DefaultServiceName(in); got != want {
			t.Errorf("DefaultServiceName(%q) = %q, want %q", in, got, want)
		}
	}
}
