package main

import (
	"strings"
	"testing"
)

func TestParseReadsMetricsOfBenchmarksAndSubBenchmarks(t *testing.T) {
	out := `goos: linux
cpu: AMD EPYC 7B13
BenchmarkPlace1000x100k-2   	       1	  18817470 ns/op	   5314099 placements/s
BenchmarkConsolidationDay/spread-2         	       1	1234 ns/op	 1.137 ratio	 1.278 baseline-ratio
BenchmarkUnplaceableToCreateCall 1 99 ns/op 5.5 p50-ms 10.3 p99-ms
--- FAIL: BenchmarkOther
`
	got := map[string]map[string]float64{}
	cpu := ""
	if err := parse(strings.NewReader(out), got, &cpu); err != nil {
		t.Fatal(err)
	}
	if cpu != "AMD EPYC 7B13" {
		t.Errorf("cpu %q", cpu)
	}
	for _, c := range []struct {
		bench, metric string
		want          float64
	}{
		{"BenchmarkPlace1000x100k", "placements/s", 5314099},
		{"BenchmarkConsolidationDay/spread", "ratio", 1.137},
		{"BenchmarkConsolidationDay/spread", "baseline-ratio", 1.278},
		{"BenchmarkUnplaceableToCreateCall", "p99-ms", 10.3},
	} {
		if v, ok := got[c.bench][c.metric]; !ok || v != c.want {
			t.Errorf("%s %s = %v (%v), want %v", c.bench, c.metric, v, ok, c.want)
		}
	}
	for _, r := range rows {
		if r.ok != nil && r.target == "" {
			t.Errorf("%s has a check but no target text", r.figure)
		}
	}
}
