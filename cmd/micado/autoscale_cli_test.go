package main

import (
	"strings"
	"testing"

	"github.com/micado-scale/micado/definitions"
)

func TestScalingFlags(t *testing.T) {
	ok := scalingFlags{min: 2, max: 12, cpu: "60%", memory: "70", stabilization: "3m", schedule: []string{"0 8 * * 1-5 for 10h min 4", "@daily for 1h max 3"}}
	p, err := ok.policy()
	if err != nil {
		t.Fatal(err)
	}
	want := definitions.Scaling{Min: 2, Max: 12, CPU: 60, Memory: 70, Stabilization: "3m",
		Schedule: []definitions.Window{{Cron: "0 8 * * 1-5", Duration: "10h", Min: 4}, {Cron: "@daily", Duration: "1h", Max: 3}}}
	if p.Min != want.Min || p.CPU != want.CPU || p.Memory != want.Memory || len(p.Schedule) != 2 || p.Schedule[0] != want.Schedule[0] || p.Schedule[1] != want.Schedule[1] {
		t.Fatalf("policy %+v, want %+v", p, want)
	}
	for _, tc := range []struct {
		f    scalingFlags
		want string
	}{
		{scalingFlags{min: 5, max: 2, cpu: "60%"}, "--min: 5 is above max 2"},
		{scalingFlags{min: 1, max: 2, cpu: "lots"}, `--cpu: "lots" is not a percentage`},
		{scalingFlags{min: 1, max: 2}, "the scaling flags: needs a metric to scale on"},
		{scalingFlags{min: 1, max: 2, cpu: "0%"}, "--cpu 0%: the target must be above 0%"},
		{scalingFlags{min: 1, max: 2, cpu: "150%"}, "--cpu: must be above 0% and at most 100%"},
		{scalingFlags{min: 1, max: 2, memory: "150%"}, "--memory-target: must be above 0% and at most 100%"},
		{scalingFlags{min: 1, max: 2, query: "up"}, "--per-replica: is required with query"},
		{scalingFlags{min: 1, max: 3, schedule: []string{"0 8 * * 1-5 10h min 4"}}, `write it as "CRON for DURATION min N [max N]"`},
		{scalingFlags{min: 1, max: 3, schedule: []string{"0 25 * * * for 1h min 2"}}, "--schedule [0].cron"},
		{scalingFlags{min: 1, max: 3, schedule: []string{"@daily for 1h min two"}}, `min "two" is not a number`},
	} {
		_, err := tc.f.policy()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.f, err, tc.want)
		}
	}
}
