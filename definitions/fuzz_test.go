package definitions

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// FuzzParse checks that Parse never panics, that it either returns an App
// or Problems, that every App it returns holds the format's invariants, and
// that the schema accepts every file Parse accepts.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, tc := range badCases {
		f.Add([]byte(tc.src))
	}
	f.Add([]byte(featuresSrc))
	f.Fuzz(func(t *testing.T, data []byte) {
		app, err := Parse("f.yaml", data)
		if err != nil {
			checkProblems(t, app, err)
		} else {
			checkApp(t, app)
			if doc, err := yamlToJSON(data); err == nil {
				if err := schema(t).Validate(doc); err != nil {
					t.Errorf("the schema rejects a file Parse accepts:\n%s\n%v", data, err)
				}
			}
		}
		_, err2 := Parse("f.yaml", data)
		if (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() {
			t.Errorf("Parse is not deterministic:\n%v\n----\n%v", err, err2)
		}
	})
}

func checkProblems(t *testing.T, app *App, err error) {
	var ps Problems
	if !errors.As(err, &ps) || len(ps) == 0 {
		t.Fatalf("error %v (%T) is not Problems", err, err)
	}
	if app != nil {
		t.Errorf("Parse returned an App along with problems")
	}
	for i, p := range ps {
		if p.File != "f.yaml" || p.Msg == "" || p.Line < 0 {
			t.Errorf("bad problem %#v", p)
		}
		if i > 0 && ps[i-1].Line > p.Line {
			t.Errorf("problems not sorted by line: %v", err)
		}
	}
}

func checkApp(t *testing.T, app *App) {
	if app == nil {
		t.Fatal("Parse returned neither an App nor an error")
	}
	if !appNameRe.MatchString(app.Name) || app.File != "f.yaml" || len(app.Services) == 0 {
		t.Errorf("bad app %q %q with %d services", app.Name, app.File, len(app.Services))
	}
	names := map[string]bool{}
	for _, s := range app.Services {
		if names[s.Name] || !serviceNameRe.MatchString(s.Name) {
			t.Errorf("service name %q is duplicated or invalid", s.Name)
		}
		names[s.Name] = true
	}
	for _, s := range app.Services {
		if s.Image == "" || s.Role == "" || s.Line < 1 {
			t.Errorf("service %s: image %q, role %q, line %d", s.Name, s.Image, s.Role, s.Line)
		}
		if s.Memory < MinMemory || s.Replicas < 0 || s.Replicas > MaxReplicas {
			t.Errorf("service %s: memory %d, replicas %d", s.Name, s.Memory, s.Replicas)
		}
		for _, list := range [][]string{s.DependsOn, s.Links} {
			for i, d := range list {
				if !names[d] || d == s.Name || slices.Contains(list[:i], d) {
					t.Errorf("service %s refers to %q", s.Name, d)
				}
			}
		}
		seen := map[string]bool{}
		for i, p := range s.Ports {
			key := strconv.Itoa(p.Port) + "/" + p.Protocol
			if p.Port < 1 || p.Port > 65535 || p.Protocol != "tcp" && p.Protocol != "udp" || seen[key] {
				t.Errorf("service %s: bad port %+v", s.Name, p)
			}
			seen[key] = true
			if c := p.Check; c != nil && (i > 0 || p.Protocol != "tcp" || (c.HTTP == "") == !c.TCP) {
				t.Errorf("service %s: bad check %+v on port %d", s.Name, *c, i)
			}
		}
		for k := range s.Env {
			if !envNameRe.MatchString(k) {
				t.Errorf("service %s: bad env name %q", s.Name, k)
			}
		}
	}
	levels, err := app.Levels()
	if err != nil {
		t.Fatalf("Levels: %v", err)
	}
	level := map[string]int{}
	for i, l := range levels {
		if len(l) == 0 || !slices.IsSorted(l) {
			t.Errorf("level %d is %v", i, l)
		}
		for _, n := range l {
			if _, dup := level[n]; dup || !names[n] {
				t.Errorf("level %d holds %q", i, n)
			}
			level[n] = i
		}
	}
	if len(level) != len(names) {
		t.Errorf("levels %v miss services", levels)
	}
	for _, s := range app.Services {
		for _, d := range s.DependsOn {
			if level[d] >= level[s.Name] {
				t.Errorf("%s (level %d) depends on %s (level %d)", s.Name, level[s.Name], d, level[d])
			}
		}
	}
}
