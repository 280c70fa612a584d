package manager

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// PromQueryTimeout bounds one query to Prometheus, both on our side and as
// the evaluation timeout asked of Prometheus.
const PromQueryTimeout = 5 * time.Second

// MaxPromQueryLen is the longest scaling query accepted.
const MaxPromQueryLen = 4096

// ErrNoData is returned (wrapped) by PromSource.Value when the query
// returns an empty vector: the metric is missing, e.g. nothing has been
// scraped yet, and the caller should treat it as such rather than as 0.
var ErrNoData = errors.New("query returned no data")

// ErrPromUnreachable is matched (errors.Is) by the error that PromSource
// returns when Prometheus cannot be reached at all (connection refused,
// DNS failure, timeout), as opposed to Prometheus refusing the query.
var ErrPromUnreachable = errors.New("Prometheus cannot be reached")

// PromUnreachableError says that the Prometheus at URL did not answer.
type PromUnreachableError struct {
	URL string
	Err error
}

func (e *PromUnreachableError) Error() string {
	return fmt.Sprintf("Prometheus at %s cannot be reached: %v", e.URL, e.Err)
}

func (e *PromUnreachableError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrPromUnreachable) true.
func (e *PromUnreachableError) Is(target error) bool { return target == ErrPromUnreachable }

// PromSource reads a service's scaling metric from a Prometheus HTTP API.
type PromSource struct {
	url string
	api promv1.API
}

// NewPromSource returns a source reading from the Prometheus HTTP API at
// rawURL, e.g. "http://127.0.0.1:9090" (a path prefix is kept, for a
// Prometheus behind a reverse proxy). It only checks the URL; it does not
// contact Prometheus.
func NewPromSource(rawURL string) (*PromSource, error) {
	s := strings.TrimSpace(rawURL)
	if s == "" {
		return nil, errors.New("Prometheus URL is empty: give it as http://HOST:PORT")
	}
	if !strings.Contains(s, "://") {
		return nil, fmt.Errorf("Prometheus URL %q has no scheme: give it as http://HOST:PORT or https://HOST:PORT", rawURL)
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("Prometheus URL %q is not a valid URL: %v", rawURL, err)
	}
	switch u.Scheme {
	case "http", "https":
	case "":
		return nil, fmt.Errorf("Prometheus URL %q has no scheme: give it as http://HOST:PORT or https://HOST:PORT", rawURL)
	default:
		return nil, fmt.Errorf("Prometheus URL %q has scheme %q: only http and https are supported", rawURL, u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("Prometheus URL %q has no host: give it as %s://HOST:PORT", rawURL, u.Scheme)
	}
	if u.RawQuery != "" || u.ForceQuery {
		return nil, fmt.Errorf("Prometheus URL %q must not have a query string", rawURL)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("Prometheus URL %q must not have a fragment", rawURL)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	client, err := promapi.NewClient(promapi.Config{Address: u.String()})
	if err != nil {
		return nil, fmt.Errorf("Prometheus URL %q: %v", rawURL, err)
	}
	return &PromSource{url: u.String(), api: promv1.NewAPI(client)}, nil
}

// URL returns the base URL of the Prometheus HTTP API.
func (p *PromSource) URL() string { return p.url }

// Value runs query as an instant query now and returns its single value:
// a scalar, or an instant vector with exactly one sample. An empty vector
// is ErrNoData (wrapped); more than one series, a range vector, a string,
// NaN or ±Inf is an error, and so is a query Prometheus refuses. An
// unreachable Prometheus gives an error matching ErrPromUnreachable.
// Warnings from Prometheus are ignored.
func (p *PromSource) Value(ctx context.Context, query string) (float64, error) {
	res, err := p.query(ctx, query)
	if err != nil {
		return 0, err
	}
	var v model.SampleValue
	switch r := res.(type) {
	case *model.Scalar:
		v = r.Value
	case model.Vector:
		switch len(r) {
		case 0:
			return 0, fmt.Errorf("query %s: %w", quoteQuery(query), ErrNoData)
		case 1:
			if r[0].Histogram != nil {
				return 0, fmt.Errorf("query %s returned a native histogram, not a number", quoteQuery(query))
			}
			v = r[0].Value
		default:
			return 0, fmt.Errorf("query %s returned %d series; aggregate it with sum(...)", quoteQuery(query), len(r))
		}
	case model.Matrix:
		return 0, fmt.Errorf("query %s returned a range vector (%d series); scaling needs one number, e.g. sum(rate(metric[1m]))", quoteQuery(query), len(r))
	case *model.String:
		return 0, fmt.Errorf("query %s returned a string, not a number", quoteQuery(query))
	case nil:
		return 0, fmt.Errorf("query %s: Prometheus at %s returned no result", quoteQuery(query), p.url)
	default:
		return 0, fmt.Errorf("query %s returned a %s, not a number", quoteQuery(query), res.Type())
	}
	f := float64(v)
	if math.IsNaN(f) {
		return 0, fmt.Errorf("query %s returned NaN", quoteQuery(query))
	}
	if math.IsInf(f, 0) {
		return 0, fmt.Errorf("query %s returned %v", quoteQuery(query), f)
	}
	return f, nil
}

// Check validates a scaling query before a policy is accepted: first the
// local checks of CheckQuerySyntax, then Prometheus evaluates it. A query
// Prometheus cannot parse or evaluate is refused with Prometheus' message;
// so is one whose result is a range vector or a string, which can never
// be a scaling value. A query that evaluates to no data or to several
// series is accepted: that may change as metrics are scraped (Value
// reports it then). An unreachable Prometheus gives an error matching
// ErrPromUnreachable, so the caller can tell it from a bad query.
func (p *PromSource) Check(ctx context.Context, query string) error {
	if err := CheckQuerySyntax(query); err != nil {
		return err
	}
	res, err := p.query(ctx, query)
	if err != nil {
		return err
	}
	switch res.(type) {
	case model.Matrix:
		return fmt.Errorf("query %s returns a range vector; scaling needs one number, e.g. sum(rate(metric[1m]))", quoteQuery(query))
	case *model.String:
		return fmt.Errorf("query %s returns a string; scaling needs one number", quoteQuery(query))
	}
	return nil
}

// query runs an instant query with PromQueryTimeout and turns the client's
// errors into ours.
func (p *PromSource) query(ctx context.Context, query string) (model.Value, error) {
	qctx, cancel := context.WithTimeout(ctx, PromQueryTimeout)
	defer cancel()
	res, _, _, err := p.api.Query(qctx, query, time.Now(), promv1.WithTimeout(PromQueryTimeout))
	if err == nil {
		return res, nil
	}
	var apiErr *promv1.Error
	if errors.As(err, &apiErr) {
		switch apiErr.Type {
		case promv1.ErrBadData:
			// e.g. `invalid parameter "query": 1:16: parse error: ...`
			msg := strings.TrimPrefix(apiErr.Msg, `invalid parameter "query": `)
			return nil, fmt.Errorf("query %s: %s", quoteQuery(query), msg)
		case promv1.ErrExec, promv1.ErrTimeout, promv1.ErrCanceled:
			return nil, fmt.Errorf("query %s: Prometheus could not evaluate it: %s", quoteQuery(query), apiErr.Msg)
		default:
			// bad_response, client_error, server_error: something answered
			// but not as a working Prometheus API does.
			msg := apiErr.Msg
			if apiErr.Detail != "" && len(apiErr.Detail) < 200 {
				msg += " (" + strings.TrimSpace(apiErr.Detail) + ")"
			}
			return nil, fmt.Errorf("query %s: Prometheus at %s answered with an error: %s: %s", quoteQuery(query), p.url, apiErr.Type, msg)
		}
	}
	if ctx.Err() != nil {
		// The caller gave up: not Prometheus' fault.
		return nil, fmt.Errorf("query %s: %w", quoteQuery(query), ctx.Err())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("no answer within %s", PromQueryTimeout)
	}
	return nil, &PromUnreachableError{URL: p.url, Err: err}
}

// quoteQuery quotes a query for an error message, shortened when long.
func quoteQuery(q string) string {
	const max = 120
	if len(q) > max {
		cut := max
		for cut > 0 && !isRuneStart(q[cut]) {
			cut--
		}
		return fmt.Sprintf("%q…", q[:cut])
	}
	return fmt.Sprintf("%q", q)
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// CheckQuerySyntax is the local part of Check, used when no Prometheus is
// configured: the query is not empty, at most MaxPromQueryLen bytes, its
// strings ("…", '…', `…`) are closed and its (), [] and {} are balanced
// and properly nested outside strings and # comments. It does not parse
// PromQL: Prometheus itself does that in Check.
func CheckQuerySyntax(q string) error {
	if strings.TrimSpace(q) == "" {
		return errors.New("scaling query is empty")
	}
	if len(q) > MaxPromQueryLen {
		return fmt.Errorf("query %s is %d bytes long; at most %d are allowed", quoteQuery(q), len(q), MaxPromQueryLen)
	}
	type open struct {
		c   byte
		pos int
	}
	names := map[byte]string{
		'(': "left parenthesis", ')': "right parenthesis",
		'[': "left bracket", ']': "right bracket",
		'{': "left brace", '}': "right brace",
	}
	closer := map[byte]byte{')': '(', ']': '[', '}': '{'}
	var stack []open
	fail := func(format string, args ...any) error {
		return fmt.Errorf("query %s: parse error: "+format, append([]any{quoteQuery(q)}, args...)...)
	}
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch c {
		case '#': // comment to the end of the line
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case '"', '\'', '`':
			start := i
			i++
			for ; i < len(q); i++ {
				if q[i] == '\\' && c != '`' {
					i++ // skip the escaped character
					continue
				}
				if q[i] == '\n' && c != '`' {
					return fail("unterminated quoted string starting at offset %d", start)
				}
				if q[i] == c {
					break
				}
			}
			if i >= len(q) {
				return fail("unterminated quoted string starting at offset %d", start)
			}
		case '(', '[', '{':
			stack = append(stack, open{c, i})
		case ')', ']', '}':
			if len(stack) == 0 {
				return fail("unexpected %s %q at offset %d", names[c], c, i)
			}
			top := stack[len(stack)-1]
			if top.c != closer[c] {
				return fail("unexpected %s %q at offset %d: the %s at offset %d is not closed", names[c], c, i, names[top.c], top.pos)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if len(stack) > 0 {
		top := stack[len(stack)-1]
		return fail("unclosed %s", names[top.c])
	}
	return nil
}
