// Command demo-web is a tiny HTTP server used to demonstrate and test micado
// deployments. It reports which container answered a request so that load
// balancing and scaling can be observed from the outside.
//
// Endpoints:
//
//	GET /        text/plain "hello from <hostname> (<service>)", header X-Served-By
//	GET /health  200 "ok"
//	GET /whoami  JSON {"hostname", "service", "instance", "node"}
//	GET /burn?ms=N  busy-loops on one goroutine, burning one core for N
//	             milliseconds (1 ≤ N ≤ 10000), then answers 200 text/plain
//	             "burned N ms on <hostname>"; a bad N is a 400 naming the
//	             problem. It stops early if the client goes away. Load for
//	             CPU autoscaling.
//
// Configuration (environment):
//
//	PORT             listen port (default 8080)
//	MICADO_SERVICE   service name (default "demo-web")
//	MICADO_INSTANCE  instance identifier reported by /whoami
//	MICADO_NODE      node name reported by /whoami
//	MESSAGE          optional prefix for the greeting on /
//
// The server shuts down gracefully on SIGTERM or SIGINT.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// identity describes the running instance as reported to clients.
type identity struct {
	Hostname string `json:"hostname"`
	Service  string `json:"service"`
	Instance string `json:"instance"`
	Node     string `json:"node"`
}

// identityFromEnv builds the identity from the host name and environment.
func identityFromEnv() identity {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return identity{
		Hostname: host,
		Service:  envOr("MICADO_SERVICE", "demo-web"),
		Instance: os.Getenv("MICADO_INSTANCE"),
		Node:     os.Getenv("MICADO_NODE"),
	}
}

// newHandler returns the HTTP handler serving all endpoints.
func newHandler(id identity, message string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Served-By", id.Hostname)
		if message != "" {
			fmt.Fprint(w, message, " ")
		}
		fmt.Fprintf(w, "hello from %s (%s)\n", id.Hostname, id.Service)
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Served-By", id.Hostname)
		_ = json.NewEncoder(w).Encode(id)
	})
	mux.HandleFunc("GET /burn", func(w http.ResponseWriter, r *http.Request) {
		ms, err := burnMillis(r.URL.Query().Get("ms"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		burn(r.Context(), time.Duration(ms)*time.Millisecond)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Served-By", id.Hostname)
		fmt.Fprintf(w, "burned %d ms on %s\n", ms, id.Hostname)
	})
	return mux
}

// maxBurn is the longest /burn, in milliseconds.
const maxBurn = 10000

// burnMillis reads the ms parameter of /burn.
func burnMillis(v string) (int, error) {
	if v == "" {
		return 0, fmt.Errorf("missing ms: use /burn?ms=N with 1 ≤ N ≤ %d milliseconds", maxBurn)
	}
	ms, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("ms=%q is not a whole number of milliseconds (1 ≤ ms ≤ %d)", v, maxBurn)
	}
	if ms < 1 || ms > maxBurn {
		return 0, fmt.Errorf("ms=%d is out of range: 1 ≤ ms ≤ %d", ms, maxBurn)
	}
	return ms, nil
}

// burnSink keeps the compiler from dropping burn's arithmetic.
var burnSink atomic.Uint64

// burn keeps the calling goroutine busy computing for d (one core's
// worth of CPU), or until ctx ends.
func burn(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	x := uint64(time.Now().UnixNano())
	for i := 0; ; i++ {
		for range 10000 {
			x = x*6364136223846793005 + 1442695040888963407
		}
		if !time.Now().Before(deadline) {
			break
		}
		if i%16 == 0 && ctx.Err() != nil {
			break
		}
	}
	burnSink.Add(x)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("demo-web: ")

	id := identityFromEnv()
	srv := &http.Server{
		Addr:              ":" + envOr("PORT", "8080"),
		Handler:           newHandler(id, os.Getenv("MESSAGE")),
		ReadHeaderTimeout: 10 * time.Second,
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Printf("listening on %s as %s (%s)", srv.Addr, id.Hostname, id.Service)

	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			log.Fatalf("shutdown: %v", err)
		}
	}
}
