package definitions

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseScaling(t *testing.T) {
	const file = `application: shop
services:
  app:
    image: micado/demo-web
    role: app
    scaling:
      min: 2
      max: 12
      cpu: 60%
      memory: 70
      query: 'sum(rate(http_requests_total{service="shop-app"}[1m]))'
      per_replica: 50
      stabilization: 5m
      schedule:
        - {cron: "0 8 * * 1-5", duration: 10h, min: 4}
        - {cron: "@daily", duration: 1h, max: 3}
`
	app, err := Parse("x.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	s := app.Services[0]
	want := &Scaling{Min: 2, Max: 12, CPU: 60, Memory: 70, Query: `sum(rate(http_requests_total{service="shop-app"}[1m]))`,
		PerReplica: 50, Stabilization: "5m", Schedule: []Window{{Cron: "0 8 * * 1-5", Duration: "10h", Min: 4}, {Cron: "@daily", Duration: "1h", Max: 3}}}
	if !reflect.DeepEqual(s.Scaling, want) {
		t.Fatalf("scaling = %+v, want %+v", s.Scaling, want)
	}
	if s.Replicas != 2 {
		t.Errorf("replicas without a replicas field = %d, want min 2", s.Replicas)
	}
}

func TestParseScalingProblems(t *testing.T) {
	head := "application: shop\nservices:\n  app:\n    image: micado/demo-web\n    role: app\n"
	for _, tc := range []struct{ name, body, want string }{
		{"min above max", "    scaling: {min: 5, max: 2, cpu: 60%}\n", "x.yaml:6: services.app.scaling.min: 5 is above max 2"},
		{"target zero", "    scaling: {min: 1, max: 2, cpu: 0%}\n", "services.app.scaling.cpu: must be above 0%, not '0%'"},
		{"cpu over 100", "    scaling: {min: 1, max: 2, cpu: 150%}\n", "services.app.scaling.cpu: must be above 0% and at most 100% (of one core per replica), not 150%"},
		{"negative target", "    scaling: {min: 1, max: 2, cpu: -5%}\n", "services.app.scaling.cpu: must be above 0%"},
		{"memory over 100", "    scaling: {min: 1, max: 2, memory: 120%}\n", "services.app.scaling.memory: must be above 0% and at most 100% of the memory request, not 120%"},
		{"not a percentage", "    scaling: {min: 1, max: 2, cpu: lots}\n", "services.app.scaling.cpu: 'lots' is not a percentage"},
		{"unknown metric", "    scaling: {min: 1, max: 2, gpu: 50%}\n", "services.app.scaling.gpu: unknown field"},
		{"malformed query", "    scaling: {min: 1, max: 2, query: 'sum(rate(x[1m])', per_replica: 5}\n", `services.app.scaling.query: "sum(rate(x[1m])" has an unclosed "("`},
		{"query without per_replica", "    scaling: {min: 1, max: 2, query: 'up'}\n", "services.app.scaling.per_replica: is required with query"},
		{"malformed cron", "    scaling:\n      min: 1\n      max: 4\n      schedule:\n        - {cron: '0 25 * * *', duration: 1h, min: 2}\n", "x.yaml:10: services.app.scaling.schedule[0].cron: \"0 25 * * *\" is not a cron expression"},
		{"window without bound", "    scaling:\n      min: 1\n      max: 4\n      schedule:\n        - {cron: '@daily', duration: 1h}\n", "services.app.scaling.schedule[0]: needs min or max"},
		{"window min above max", "    scaling:\n      min: 1\n      max: 4\n      schedule:\n        - {cron: '@daily', duration: 1h, min: 6}\n", "services.app.scaling.schedule[0].min: 6 is above the policy's max 4"},
		{"bad duration", "    scaling:\n      min: 1\n      max: 4\n      schedule:\n        - {cron: '@daily', duration: soon, min: 2}\n", `schedule[0].duration: "soon" is not a duration`},
		{"bad stabilization", "    scaling: {min: 1, max: 2, cpu: 50%, stabilization: 5 minutes}\n", `services.app.scaling.stabilization: "5 minutes" is not a duration`},
		{"min missing", "    scaling: {max: 2, cpu: 50%}\n", "services.app.scaling.min: is required"},
		{"replicas outside", "    replicas: 9\n    scaling: {min: 1, max: 2, cpu: 50%}\n", "x.yaml:6: services.app.replicas: 9 is outside the scaling policy's min 1 and max 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.yaml", []byte(head+tc.body))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.body)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q\ndoes not contain %q", err, tc.want)
			}
		})
	}
}

func TestScalingProblemsFromTheAPI(t *testing.T) {
	// The same checks serve policies that come from the CLI or the API.
	s := &Scaling{Min: 3, Max: 2, CPU: 7000}
	err := s.Validate()
	if err == nil || !strings.Contains(err.Error(), "min: 3 is above max 2") || !strings.Contains(err.Error(), "cpu: must be above 0% and at most 100%") {
		t.Fatalf("Validate = %v", err)
	}
	ok := &Scaling{Min: 1, Max: 3, Schedule: []Window{{Cron: "0 8 * * 1-5", Duration: "10h", Min: 2}}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("a schedule-only policy: %v", err)
	}
	for _, in := range []string{"60%", "60", " 12.5 % "} {
		if _, err := ParsePercent(in); err != nil {
			t.Errorf("ParsePercent(%q): %v", in, err)
		}
	}
	if _, err := ParsePercent("sixty"); err == nil {
		t.Error("ParsePercent(sixty) accepted")
	}
}
