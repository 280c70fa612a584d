// Package testprom runs a real Prometheus server for tests: the
// `prometheus` binary on PATH (Debian package prometheus; `make prometheus`
// installs it). A test that needs Prometheus fails, saying how to get it,
// when the binary is missing; it never skips.
//
// The server listens on loopback only, keeps its data in the test's
// temporary directory, scrapes every second and is killed when the test
// ends. The systemd service that the Debian package may install is never
// used.
package testprom

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/micado-scale/micado/internal/testnet"
)

// ReadyTimeout is how long Start waits for /-/ready to answer 200.
const ReadyTimeout = 30 * time.Second

// Binary finds the prometheus binary on PATH or fails the test.
func Binary(tb testing.TB) string {
	tb.Helper()
	p, err := exec.LookPath("prometheus")
	if err != nil {
		tb.Fatal("prometheus not found: run `make prometheus`")
	}
	return p
}

// Config returns the prometheus.yml that Start writes: a global scrape and
// evaluation interval of 1s and the given scrape configs. scrapeConfigYAML
// is either the YAML sequence of scrape configs, e.g.
//
//	# scrape_configs as a YAML sequence:
//	- job_name: demo
//	  static_configs:
//	    - targets: ['127.0.0.1:8080']
//
// or the same under a top-level "scrape_configs:" key; empty means no
// scrape configs.
func Config(scrapeConfigYAML string) string {
	var b strings.Builder
	b.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n")
	body := strings.TrimSpace(scrapeConfigYAML)
	switch {
	case body == "":
	case strings.HasPrefix(body, "scrape_configs:"):
		b.WriteString(strings.TrimRight(scrapeConfigYAML, " \t\r\n"))
		b.WriteString("\n")
	default:
		b.WriteString("scrape_configs:\n")
		b.WriteString(strings.TrimRight(scrapeConfigYAML, " \t\r\n"))
		b.WriteString("\n")
	}
	return b.String()
}

// checkLoopbackTargets refuses a configuration that is not YAML or whose
// static scrape targets are not on loopback: tests send traffic only to
// this machine.
func checkLoopbackTargets(config string) error {
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal([]byte(config), &cfg); err != nil {
		return fmt.Errorf("scrape config is not valid YAML: %w", err)
	}
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, _, err := net.SplitHostPort(target)
				if err != nil {
					host = target
				}
				if !isLoopback(host) {
					return fmt.Errorf("job %q: target %q is not a loopback address (tests scrape only 127.0.0.0/8, ::1 or localhost)", sc.JobName, target)
				}
			}
		}
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// Start runs a Prometheus server on 127.0.0.1 for one test, scraping what
// scrapeConfigYAML says (see Config), waits until /-/ready answers 200 and
// returns its base URL, e.g. "http://127.0.0.1:41234". The server is
// killed when the test ends.
func Start(tb testing.TB, scrapeConfigYAML string) (url string) {
	tb.Helper()
	bin := Binary(tb)
	config := Config(scrapeConfigYAML)
	if err := checkLoopbackTargets(config); err != nil {
		tb.Fatalf("testprom: %v", err)
	}
	dir := tb.TempDir()
	configFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		tb.Fatal(err)
	}
	// The free port may be taken by someone else between FreePort and
	// prometheus binding it: then prometheus exits at once and we retry
	// with another port.
	var lastLog string
	for attempt := 0; attempt < 3; attempt++ {
		dataDir := filepath.Join(dir, "data"+strconv.Itoa(attempt))
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testnet.FreePort(tb)))
		cmd := exec.Command(bin,
			"--config.file="+configFile,
			"--storage.tsdb.path="+dataDir,
			"--web.listen-address="+addr,
			"--log.level=warn",
		)
		cmd.Dir = dir
		out := &testnet.LogBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			tb.Fatalf("start prometheus: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			_ = cmd.Process.Kill()
			<-exited
		}
		tb.Cleanup(stop)
		base := "http://" + addr
		switch waitReady(base, exited) {
		case nil:
			return base
		case errExited:
			lastLog = out.String()
			if strings.Contains(lastLog, "address already in use") {
				continue
			}
			tb.Fatalf("prometheus exited before it was ready:\n%s", lastLog)
		default:
			stop()
			tb.Fatalf("prometheus at %s was not ready in %s; its output:\n%s", base, ReadyTimeout, out.String())
		}
	}
	tb.Fatalf("prometheus could not bind a free loopback port:\n%s", lastLog)
	return ""
}

var (
	errExited  = fmt.Errorf("prometheus exited")
	errTimeout = fmt.Errorf("prometheus not ready in time")
)

// waitReady polls base/-/ready until it answers 200, the process exits or
// ReadyTimeout passes.
func waitReady(base string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: 2 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), ReadyTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/-/ready", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return errTimeout
		case <-tick.C:
		}
	}
}
