package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/micado-scale/micado/internal/testprom"
)

// promDemo is a tiny metrics endpoint on 127.0.0.1 that a real Prometheus
// scrapes: demo_requests_total, which the test increments, and
// demo_labeled_total with two series.
type promDemo struct {
	srv      *httptest.Server
	requests prometheus.Counter
}

func startPromDemo(t *testing.T) *promDemo {
	t.Helper()
	reg := prometheus.NewRegistry()
	d := &promDemo{requests: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "demo_requests_total", Help: "Requests served by the demo.",
	})}
	labeled := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "demo_labeled_total", Help: "A counter with two series.",
	}, []string{"path"})
	labeled.WithLabelValues("/a").Add(1)
	labeled.WithLabelValues("/b").Add(2)
	reg.MustRegister(d.requests, labeled)
	d.srv = httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(d.srv.Close)
	if !strings.HasPrefix(d.srv.URL, "http://127.0.0.1:") {
		t.Fatalf("demo server is not on loopback: %s", d.srv.URL)
	}
	return d
}

func (d *promDemo) scrapeConfig() string {
	return fmt.Sprintf(`- job_name: demo
  static_configs:
    - targets: ['%s']
`, strings.TrimPrefix(d.srv.URL, "http://"))
}

// pollProm retries f every 250ms until it returns true or timeout passes.
func pollProm(t *testing.T, timeout time.Duration, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, msg := f()
		if ok {
			return
		}
		last = msg
		if time.Now().After(deadline) {
			t.Fatalf("not done after %s; last: %s", timeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func TestPromSourceAgainstPrometheus(t *testing.T) {
	demo := startPromDemo(t)
	url := testprom.Start(t, demo.scrapeConfig())
	src, err := NewPromSource(url)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	t.Run("RateBecomesPositive", func(t *testing.T) {
		const q = `sum(rate(demo_requests_total[5s]))`
		var got float64
		pollProm(t, 20*time.Second, func() (bool, string) {
			demo.requests.Add(10)
			v, err := src.Value(ctx, q)
			if err != nil {
				return false, err.Error()
			}
			got = v
			return v > 0, fmt.Sprintf("value %v", v)
		})
		t.Logf("%s = %v", q, got)
	})

	t.Run("TwoSeriesMustBeAggregated", func(t *testing.T) {
		pollProm(t, 20*time.Second, func() (bool, string) {
			_, err := src.Value(ctx, `demo_labeled_total`)
			if err == nil {
				return false, "no error"
			}
			return strings.Contains(err.Error(), `query "demo_labeled_total" returned 2 series; aggregate it with sum(...)`), err.Error()
		})
		// Aggregated, the same metric is one number.
		v, err := src.Value(ctx, `sum(demo_labeled_total)`)
		if err != nil || v != 3 {
			t.Fatalf("sum(demo_labeled_total) = %v, %v; want 3", v, err)
		}
	})

	t.Run("AbsentMetricIsNoData", func(t *testing.T) {
		for _, q := range []string{`demo_absent_total`, `sum(rate(demo_absent_total[5s]))`} {
			_, err := src.Value(ctx, q)
			if !errors.Is(err, ErrNoData) {
				t.Errorf("%s: err = %v; want ErrNoData", q, err)
			}
		}
	})

	t.Run("ScalarAndOneSample", func(t *testing.T) {
		for q, want := range map[string]float64{`1 + 2`: 3, `vector(4)`: 4, `scalar(vector(5))`: 5} {
			v, err := src.Value(ctx, q)
			if err != nil || v != want {
				t.Errorf("%s = %v, %v; want %v", q, v, err, want)
			}
		}
	})

	t.Run("NaNAndInfAreErrors", func(t *testing.T) {
		for q, want := range map[string]string{`0/0`: "NaN", `1/0`: "+Inf", `vector(-1/0)`: "-Inf"} {
			_, err := src.Value(ctx, q)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: err = %v; want one naming %s", q, err, want)
			}
		}
	})

	t.Run("RangeVectorIsAnError", func(t *testing.T) {
		_, err := src.Value(ctx, `demo_requests_total[1m]`)
		if err == nil || !strings.Contains(err.Error(), "range vector") {
			t.Errorf("err = %v; want a range vector error", err)
		}
		if err := src.Check(ctx, `demo_requests_total[1m]`); err == nil || !strings.Contains(err.Error(), "range vector") {
			t.Errorf("Check: err = %v; want a range vector error", err)
		}
	})

	t.Run("CheckAcceptsGoodQueries", func(t *testing.T) {
		for _, q := range []string{
			`sum(rate(demo_requests_total[1m]))`,
			`sum(rate(demo_absent_total{job="demo", path=~"/a|/b"}[1m])) # no data yet is fine`,
			`demo_labeled_total`, // several series now; may be aggregated later
		} {
			if err := src.Check(ctx, q); err != nil {
				t.Errorf("Check(%s) = %v", q, err)
			}
		}
	})

	t.Run("CheckRefusesUnclosedParenthesis", func(t *testing.T) {
		const q = `sum(rate(x[1m])`
		err := src.Check(ctx, q)
		want := `query "sum(rate(x[1m])": parse error: unclosed left parenthesis`
		if err == nil || err.Error() != want {
			t.Fatalf("Check(%s) = %v; want %s", q, err, want)
		}
	})

	t.Run("CheckQuotesPrometheusParseErrors", func(t *testing.T) {
		// Balanced, so the local checks pass and Prometheus' parser
		// refuses them: its message is quoted.
		for q, want := range map[string]string{
			`sum(rate(x[1m])) +`:  "unexpected end of input",
			`rate(x)`:             `expected type range vector in call to function "rate", got instant vector`,
			`sum(rate(x[1m]) by)`: "parse error",
			`nosuchfunc(x)`:       `unknown function with name "nosuchfunc"`,
		} {
			err := src.Check(ctx, q)
			if err == nil {
				t.Errorf("Check(%s) = nil; want a parse error", q)
				continue
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, fmt.Sprintf("query %q: ", q)) || !strings.Contains(msg, want) ||
				strings.Contains(msg, "invalid parameter") || errors.Is(err, ErrPromUnreachable) {
				t.Errorf("Check(%s) = %q; want `query %q: …%s…`", q, msg, q, want)
			}
			t.Logf("Check(%s): %v", q, err)
			// Value refuses it the same way.
			if _, err := src.Value(ctx, q); err == nil || err.Error() != msg {
				t.Errorf("Value(%s) = %v; want %s", q, err, msg)
			}
		}
	})
}

func TestPromUnreachable(t *testing.T) {
	var url string
	// The Prometheus started in the subtest is killed when it ends.
	if !t.Run("Start", func(t *testing.T) { url = testprom.Start(t, "") }) {
		t.FailNow()
	}
	src, err := NewPromSource(url)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want := fmt.Sprintf("Prometheus at %s cannot be reached: ", url)
	if _, err := src.Value(ctx, `vector(1)`); !errors.Is(err, ErrPromUnreachable) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Value on a stopped Prometheus: err = %v; want %q…", err, want)
	}
	err = src.Check(ctx, `sum(rate(demo_requests_total[1m]))`)
	if !errors.Is(err, ErrPromUnreachable) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Check on a stopped Prometheus: err = %v; want %q…", err, want)
	}
	t.Log(err)
	// A bad query is still refused locally, before Prometheus is asked.
	if err := src.Check(ctx, `sum(x`); err == nil || errors.Is(err, ErrPromUnreachable) {
		t.Errorf("Check(sum(x) = %v; want the local parse error", err)
	}
	// The caller's own cancellation is not blamed on Prometheus.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := src.Value(cctx, `vector(1)`); !errors.Is(err, context.Canceled) || errors.Is(err, ErrPromUnreachable) {
		t.Errorf("Value with a canceled context: err = %v; want context.Canceled", err)
	}
}

func TestPromNewPromSource(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:9090", "https://prom.example:9090/", "http://localhost:9090/prometheus", "http://[::1]:9090"} {
		p, err := NewPromSource(u)
		if err != nil {
			t.Errorf("NewPromSource(%q) = %v", u, err)
			continue
		}
		if strings.HasSuffix(p.URL(), "/") {
			t.Errorf("NewPromSource(%q).URL() = %q keeps a trailing slash", u, p.URL())
		}
	}
	for u, want := range map[string]string{
		"":                           "empty",
		"127.0.0.1:9090":             "scheme",
		"localhost:9090":             "scheme",
		"ftp://127.0.0.1:9090":       `scheme "ftp"`,
		"http://":                    "no host",
		"http://:9090":               "no host",
		"http:///api":                "no host",
		"http://127.0.0.1:9090/?x=1": "query string",
		"http://127.0.0.1:9090/#top": "fragment",
		"http://127.0.0.1:9090/%zz":  "not a valid URL",
	} {
		_, err := NewPromSource(u)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewPromSource(%q) = %v; want an error about %s", u, err, want)
		}
	}
}

func TestPromCheckQuerySyntax(t *testing.T) {
	good := []string{
		`sum(rate(demo_proxy_requests_total[1m]))`,
		`sum(rate(demo_proxy_requests_total{service="web", code=~"2.."}[1m])) / 50`,
		`max_over_time(x[5m:1m])`,
		`sum(x{a="(", b='[', c=` + "`{`" + `})`,
		`sum(x{a="esc\"aped)"})`,
		"sum(x) # a comment with ( [ {\n + 1",
		`vector(1)`,
		strings.Repeat("x", MaxPromQueryLen),
	}
	for _, q := range good {
		if err := CheckQuerySyntax(q); err != nil {
			t.Errorf("CheckQuerySyntax(%.60q) = %v", q, err)
		}
	}
	bad := map[string]string{
		``:                                     "empty",
		"  \n\t":                               "empty",
		strings.Repeat("x", MaxPromQueryLen+1): "at most 4096",
		`sum(rate(x[1m])`:                      `query "sum(rate(x[1m])": parse error: unclosed left parenthesis`,
		`sum(rate(x[1m)))`:                     `unexpected right parenthesis ')' at offset 13: the left bracket at offset 10 is not closed`,
		`sum(x))`:                              `unexpected right parenthesis ')' at offset 6`,
		`x{a="b"`:                              "unclosed left brace",
		`x}`:                                   "unexpected right brace",
		`rate(x[1m`:                            "unclosed left bracket",
		`x]`:                                   "unexpected right bracket",
		`x{a="b}`:                              "unterminated quoted string",
		`x{a='b}`:                              "unterminated quoted string",
		"x{a=`b}":                              "unterminated quoted string",
		`x{a="b\"}`:                            "unterminated quoted string",
		"x{a=\"b\n\"}":                         "unterminated quoted string",
	}
	for q, want := range bad {
		err := CheckQuerySyntax(q)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckQuerySyntax(%.60q) = %v; want an error containing %q", q, err, want)
		}
	}
	// A long query is shortened in the message.
	err := CheckQuerySyntax(strings.Repeat("(", MaxPromQueryLen))
	if err == nil || len(err.Error()) > 300 {
		t.Errorf("long query error = %v", err)
	}
}
