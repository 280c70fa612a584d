package daemon

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/micado-scale/micado/internal/testtls"
	. "github.com/micado-scale/micado/manager"
)

// TestAPIOverTLS runs a real manager with a certificate signed by a CA
// made here: a client trusting that CA gets in with the token; plain HTTP,
// a client that does not trust the CA, and TLS 1.1 are all turned away.
func TestAPIOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testtls.NewCA(t, dir, "test-ca")
	srvPair := ca.Server(t, dir, "manager", "127.0.0.1", "localhost")

	consulAddr := startConsul(t)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	const token = "s3cret-api-token"
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cfg := Config{Cluster: "tls", ClusterKey: key, APIToken: token, TLSCert: srvPair.CertFile, TLSKey: srvPair.KeyFile,
		BindAddr: "127.0.0.1", AdvertiseAddr: "127.0.0.1", BindPort: freePort(t), APIAddr: addr, ConsulAddr: consulAddr,
		ConsolidateSchedule: "off", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() { cancel(); <-done })

	trusting := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	get := func(cl *http.Client, url, tok string) (*http.Response, string, error) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := cl.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b), nil
	}
	base := "https://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, body, err := get(trusting, base+"/v1/status", token)
		if err == nil && resp.StatusCode == http.StatusOK {
			var st Status
			if err := json.Unmarshal([]byte(body), &st); err != nil || st.Cluster != "tls" {
				t.Fatalf("status over TLS: %s", body)
			}
			if resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
				t.Fatalf("connection state %+v", resp.TLS)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("manager stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("manager API over TLS did not answer: %v %v", resp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	t.Run("the token is still required over TLS", func(t *testing.T) {
		resp, _, err := get(trusting, base+"/v1/status", "")
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("no token: %v %v, want 401", resp, err)
		}
		resp, _, err = get(trusting, base+"/v1/status", "wrong")
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("wrong token: %v %v, want 401", resp, err)
		}
	})

	t.Run("plain HTTP gets nothing", func(t *testing.T) {
		resp, body, err := get(&http.Client{Timeout: 5 * time.Second}, "http://"+addr+"/v1/status", token)
		if err == nil && (resp.StatusCode == http.StatusOK || strings.Contains(body, `"cluster"`)) {
			t.Fatalf("plain HTTP was served: %s %s", resp.Status, body)
		}
	})

	t.Run("a client that does not trust the CA refuses the certificate", func(t *testing.T) {
		other := testtls.NewCA(t, dir, "other-ca")
		for name, cfg := range map[string]*tls.Config{"system roots": {}, "another CA": {RootCAs: other.Pool()}} {
			cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
			_, _, err := get(cl, base+"/v1/status", token)
			var unknown x509.UnknownAuthorityError
			var verr *tls.CertificateVerificationError
			if err == nil || !(errors.As(err, &unknown) || errors.As(err, &verr)) {
				t.Errorf("%s: error %v, want a certificate verification error", name, err)
			}
		}
	})

	t.Run("TLS older than 1.2 is refused", func(t *testing.T) {
		old := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: ca.Pool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}}}
		if resp, _, err := get(old, base+"/v1/status", token); err == nil {
			t.Fatalf("a TLS 1.1 client got %s", resp.Status)
		}
	})
}

// TestTLSFileErrors: unreadable, missing or mismatched certificate files
// stop the manager at once with an error naming them.
func TestTLSFileErrors(t *testing.T) {
	dir := t.TempDir()
	ca := testtls.NewCA(t, dir, "ca")
	a := ca.Server(t, dir, "a", "127.0.0.1")
	b := ca.Server(t, dir, "b", "127.0.0.1")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.crt")
	key := make([]byte, 16)
	for _, tc := range []struct {
		cert, key string
		want      []string
	}{
		{missing, a.KeyFile, []string{"cannot read the TLS certificate", missing, "no such file"}},
		{a.CertFile, missing, []string{"cannot read the TLS key", missing}},
		{a.CertFile, b.KeyFile, []string{a.CertFile, b.KeyFile, "not a usable pair", "private key does not match"}},
		{garbage, a.KeyFile, []string{garbage, "not a usable pair"}},
		{a.CertFile, "", []string{"--tls-cert and --tls-key together"}},
		{"", a.KeyFile, []string{"--tls-cert and --tls-key together"}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		// No Consul is running: the files are checked before anything else.
		err := Run(ctx, Config{Cluster: "x", ClusterKey: key, TLSCert: tc.cert, TLSKey: tc.key, ConsulAddr: "127.0.0.1:1",
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		cancel()
		if err == nil {
			t.Errorf("cert %q key %q: no error", tc.cert, tc.key)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("cert %q key %q: error %q lacks %q", tc.cert, tc.key, err, w)
			}
		}
	}
}
