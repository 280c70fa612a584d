package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/micado-scale/micado/internal/wire"
)

// BenchmarkFailover measures how long a cluster goes without a working
// manager when the leader dies: from `docker kill -s KILL` of the leading
// manager's container until a standby has completed its first reconcile
// round as the new leader (its micado_reconcile_duration_seconds count
// grows while micado_leader is 1), polled every 50 ms on every standby's
// own /metrics. One cluster (three managers, the default 10 s session TTL,
// one worker running two replicas) serves all iterations: after each, the
// killed manager is started again and must stand by before the next kill.
// Beside failover-ms it reports the median time until a standby called
// itself leader (leader-ms): the rest is loading the journal and the
// first round.
// Run: go test -run '^$' -bench Failover -benchtime 5x ./cmd/micado
func BenchmarkFailover(b *testing.B) {
	c := newTestCluster(b, "--managers", "3", "--workers", "1", "--roles", "app", "--worker-memory", "512MiB", "--provider", "none")
	c.mustMicado("launch", "micado/demo-web", "--role", "app", "--name", "web", "--replicas", "2",
		"--memory", "64MiB", "--port", "8080", "--health-path", "/health")
	st := c.state()
	tokenB, err := os.ReadFile(st.TokenFile)
	if err != nil {
		b.Fatal(err)
	}
	token := strings.TrimSpace(string(tokenB))
	names := make([]string, len(st.Managers))
	for i := range names {
		names[i] = "manager-" + strconv.Itoa(i+1)
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	// scrape reads micado_leader and the reconcile round count of one manager.
	scrape := func(u string) (leader bool, rounds float64, err error) {
		req, _ := http.NewRequest(http.MethodGet, u+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			return false, 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			io.Copy(io.Discard, resp.Body)
			return false, 0, fmt.Errorf("%s/metrics: %s", u, resp.Status)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "micado_leader "); ok {
				leader = strings.TrimSpace(v) == "1"
			}
			if v, ok := strings.CutPrefix(line, "micado_reconcile_duration_seconds_count "); ok {
				rounds, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		}
		return leader, rounds, sc.Err()
	}
	ctx := context.Background()
	var failover, leader []time.Duration
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		l, ms := c.leaderNode()
		alive := 0
		for _, m := range ms {
			if m.Status == "alive" {
				alive++
			}
		}
		if l.Name == "" || alive != len(names) {
			b.Fatalf("before kill %d: leader %q, %d of %d managers alive", i, l.Name, alive, len(names))
		}
		// The standbys' round counts before the kill.
		base := map[int]float64{}
		for j, n := range names {
			if n == l.Name {
				continue
			}
			_, r, err := scrape(st.Managers[j])
			if err != nil {
				b.Fatal(err)
			}
			base[j] = r
		}

		b.StartTimer()
		kill := time.Now()
		if err := c.dc.ContainerKill(ctx, c.containerName(l.Name), "KILL"); err != nil {
			b.Fatal(err)
		}
		var led, done time.Time
		who := ""
		for deadline := kill.Add(2 * time.Minute); done.IsZero() && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			for j := range base {
				isLeader, r, err := scrape(st.Managers[j])
				if err != nil || !isLeader {
					continue
				}
				if led.IsZero() {
					led = time.Now()
				}
				if r > base[j] {
					done, who = time.Now(), names[j]
					break
				}
			}
		}
		b.StopTimer()
		if done.IsZero() {
			b.Fatalf("no standby completed a reconcile round within 2 minutes of kill -9 of %s", l.Name)
		}
		failover = append(failover, done.Sub(kill))
		leader = append(leader, led.Sub(kill))
		b.Logf("kill %d: %s killed; %s led after %s and completed its first round after %s",
			i, l.Name, who, led.Sub(kill).Round(time.Millisecond), done.Sub(kill).Round(time.Millisecond))

		// The killed manager comes back as a standby before the next kill.
		if err := c.dc.ContainerStart(ctx, c.containerName(l.Name), container.StartOptions{}); err != nil {
			b.Fatal(err)
		}
		ok := false
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			l2, ms := c.leaderNode()
			alive := 0
			for _, m := range ms {
				if m.Status == "alive" && m.Kind == wire.KindManager {
					alive++
				}
			}
			if l2.Name == who && alive == len(names) {
				ok = true
				break
			}
		}
		if !ok {
			b.Fatalf("%s did not come back as a standby within a minute", l.Name)
		}
	}
	b.ReportMetric(medianMS(failover), "failover-ms")
	b.ReportMetric(medianMS(leader), "leader-ms")
}
