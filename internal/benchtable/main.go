// Command benchtable reads the output of the project's `go test -bench`
// runs and prints one table of micado's figures against their targets
// (issue: make bench). `make bench` runs the benchmarks and then this.
//
//	go run ./internal/benchtable bench-output.txt [more.txt ...]
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
)

// row is one figure of the table: which benchmark and metric it comes
// from, and its target (if any).
type row struct {
	figure string
	bench  string // benchmark name without the -GOMAXPROCS suffix
	metric string // the unit passed to b.ReportMetric
	format func(float64) string
	target string
	ok     func(float64) bool // nil: no target
}

func ms(v float64) string  { return fmt.Sprintf("%.0f ms", v) }
func ms1(v float64) string { return fmt.Sprintf("%.1f ms", v) }
func num(v float64) string { return fmt.Sprintf("%.0f/s", v) }
func ratio(v float64) string {
	return fmt.Sprintf("%.3f", v)
}
func mb(v float64) string    { return fmt.Sprintf("%.0f MB", v) }
func bytes(v float64) string { return fmt.Sprintf("%.0f B/s", v) }

func atMost(t float64) func(float64) bool  { return func(v float64) bool { return v <= t } }
func atLeast(t float64) func(float64) bool { return func(v float64) bool { return v >= t } }

var rows = []row{
	{"1. placement rate, 1,000 workers × 100,000 containers", "BenchmarkPlace1000x100k", "placements/s", num, "≥ 80,000/s", atLeast(80000)},
	{"1. placement rate, 5,000 workers × 1,000,000 containers", "BenchmarkPlace5000x1M", "placements/s", num, "", nil},
	{"2. micado launch → passing in Consul (median)", "BenchmarkLaunchVsDockerRun", "micado-ms", ms, "", nil},
	{"2. docker run + Consul registration → passing (median)", "BenchmarkLaunchVsDockerRun", "docker-ms", ms, "", nil},
	{"2. launch / docker run, median ratio", "BenchmarkLaunchVsDockerRun", "ratio", ratio, "≤ 1.3", atMost(1.3)},
	{"3. unplaceable request → cloud create call, p50", "BenchmarkUnplaceableToCreateCall", "p50-ms", ms1, "≤ 1 s", atMost(1000)},
	{"3. unplaceable request → cloud create call, p99", "BenchmarkUnplaceableToCreateCall", "p99-ms", ms1, "≤ 1 s", atMost(1000)},
	{"3. held container → passing in Consul, docker provider (median)", "BenchmarkHeldLaunchDocker", "launch-to-passing-ms", ms, "", nil},
	{"4. worker killed → all its containers passing elsewhere (median)", "BenchmarkWorkerLossRecovery", "recovery-ms", ms, "≤ 10 s", atMost(10000)},
	{"5. gossip, 100 agents: manager sees every load change", "BenchmarkGossip100", "all-seen-ms", ms, "", nil},
	{"5. gossip, 100 agents: bytes per second per agent", "BenchmarkGossip100", "bytes-per-sec-per-agent", bytes, "", nil},
	{"5. gossip, 500 agents: manager sees every load change", "BenchmarkGossip500", "all-seen-ms", ms, "≤ 3 s", atMost(3000)},
	{"5. gossip, 500 agents: bytes per second per agent", "BenchmarkGossip500", "bytes-per-sec-per-agent", bytes, "", nil},
	{"6. consolidation, synthetic day, spread: node-hours / lower bound", "BenchmarkConsolidationDay/spread", "ratio", ratio, "≤ 1.05", atMost(1.05)},
	{"6. consolidation, synthetic day, binpack: node-hours / lower bound", "BenchmarkConsolidationDay/binpack", "ratio", ratio, "≤ 1.05", atMost(1.05)},
	{"6. consolidation, priced day (two types): cost / lower-bound cost", "BenchmarkConsolidationDayPriced", "cost-ratio", ratio, "", nil},
	{"6. repack from spread, 120 containers: workers left / fresh FFD (5 seeds)", "BenchmarkRepack120", "workers-left/ffd", ratio, "", nil},
	{"6. repack from spread, 120 containers: most workers above FFD", "BenchmarkRepack120", "max-over-ffd", count, "≤ 1", atMost(1)},
	{"6. repack from spread, 1,000 containers: most workers above FFD", "BenchmarkRepack1000", "max-over-ffd", count, "≤ 1", atMost(1)},
	{"6. repack from spread, 1,000 containers: workers left / lower bound", "BenchmarkRepack1000", "workers-left/lower-bound", ratio, "", nil},
	{"6. repack from spread, 1,000 containers: rounds to stable (mean)", "BenchmarkRepack1000", "rounds", num1, "", nil},
	{"6. consolidation plan, 5,000 workers × 100,000 containers, typical", "BenchmarkPlanConsolidation5000x100k/typical", "ms/plan", ms1, "≤ 200 ms", atMost(200)},
	{"6. consolidation plan, 5,000 × 100,000, nothing removable", "BenchmarkPlanConsolidation5000x100k/none-removable", "ms/plan", ms1, "≤ 200 ms", atMost(200)},
	{"6. consolidation plan, 5,000 × 100,000, every trial fails late", "BenchmarkPlanConsolidation5000x100k/late-failure", "ms/plan", ms1, "≤ 200 ms", atMost(200)},
	{"7. manager resident memory, 5,000 workers, 100,000 containers", "BenchmarkManagerMemory5000x100k", "rss-mb", mb, "≤ 150 MB", atMost(150)},
	{"7. manager heap in use, 5,000 workers, 100,000 containers", "BenchmarkManagerMemory5000x100k", "heap-mb", mb, "", nil},
	{"8. reconcile round with nothing to repair, 100,000 containers (mean)", "BenchmarkManagerMemory5000x100k", "reconcile-ms", ms1, "≤ 50 ms", atMost(50)},
	{"8. API → placement → KV → agents, 100,000 containers on 5,000 workers", "BenchmarkThroughput100kOn5000", "containers/s", num, "≥ 3,750/s", atLeast(3750)},
	{"8. idle manager's Consul requests per minute, 100 containers", "BenchmarkIdleConsulRequests", "req/min-100", perMin, "", nil},
	{"8. idle manager's Consul requests per minute, 1,000 containers", "BenchmarkIdleConsulRequests", "req/min-1000", perMin, "", nil},
	{"8. idle manager's Consul requests per minute, 1,000 containers, 5 dashboards", "BenchmarkIdleConsulRequests", "req/min-1000-dashboards", perMin, "", nil},
	{"8. kill -9 of the leader → standby's first reconcile (median)", "BenchmarkFailover", "failover-ms", ms, "≤ 15 s", atMost(15000)},
	{"9. load step → first new replica passing in Consul (median of 5)", "BenchmarkAutoscaleReaction", "reaction-ms", ms, "≤ 20 s", atMost(20000)},
	{"9. scale changes in 10 min of steady noisy load, Docker", "BenchmarkAutoscaleSteady", "changes-10m", count, "0", atMost(0)},
	{"9. scale changes after 1 min, steady load ±20% noise, simulated, 3.3 cores", "BenchmarkAutoscaleStability/load=3.3", "changes-after-1m", count, "0", atMost(0)},
	{"9. scale changes after 1 min, steady load ±20% noise, simulated, 7.7 cores", "BenchmarkAutoscaleStability/load=7.7", "changes-after-1m", count, "0", atMost(0)},
	{"9. simulated day: node-hours / provisioned for the spike all day", "BenchmarkSimulatedDay", "node-hours/peak-provisioned", ratio, "", nil},
	{"9. simulated day: node-hours / provisioned for the daily peak", "BenchmarkSimulatedDay", "node-hours/diurnal-peak-provisioned", ratio, "", nil},
	{"9. simulated day: minutes a replica was above its target by > 50%", "BenchmarkSimulatedDay", "overloaded-min", count, "", nil},
}

func count(v float64) string { return fmt.Sprintf("%.0f", v) }
func num1(v float64) string  { return fmt.Sprintf("%.1f", v) }

func perMin(v float64) string { return fmt.Sprintf("%.0f/min", v) }

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+\d+\s+(.*)$`)

// parse collects metric values by benchmark name from go test output.
func parse(r io.Reader, into map[string]map[string]float64, cpu *string) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if c, ok := strings.CutPrefix(line, "cpu: "); ok {
			*cpu = c
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		fields := strings.Fields(m[3])
		vals := into[m[1]]
		if vals == nil {
			vals = map[string]float64{}
			into[m[1]] = vals
		}
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err == nil {
				vals[fields[i+1]] = v
			}
		}
	}
	return sc.Err()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtable BENCH-OUTPUT...")
		os.Exit(2)
	}
	got := map[string]map[string]float64{}
	cpu := ""
	for _, p := range os.Args[1:] {
		f, err := os.Open(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(2)
		}
		err = parse(f, got, &cpu)
		f.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(2)
		}
	}
	docker := "unknown"
	if out, err := exec.Command("docker", "version", "--format", "{{.Server.Version}}").Output(); err == nil {
		docker = strings.TrimSpace(string(out))
	}
	fmt.Printf("micado benchmarks — %d cores (%s), %s, Docker %s\n\n", runtime.NumCPU(), cpu, runtime.Version(), docker)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tVALUE\tTARGET\tMET\tSOURCE")
	missing := 0
	for _, r := range rows {
		v, ok := got[r.bench][r.metric]
		value, met := "not run", "-"
		if ok {
			value = r.format(v)
			if r.ok != nil {
				met = "yes"
				if !r.ok(v) {
					met = "NO"
				}
			}
		} else {
			missing++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s %s\n", r.figure, value, orDash(r.target), met, r.bench, r.metric)
	}
	tw.Flush()
	if missing > 0 {
		fmt.Printf("\n%d figures were not run (see the benchmark output above for failures)\n", missing)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
