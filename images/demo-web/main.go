// Command demo-web is a tiny HTTP server used to demonstrate and test micado
// deployments. It reports which container answered a request so that load
// balancing and scaling can be observed from the outside.
//
// Endpoints:
//
//	GET /        text/plain "hello from <hostname> (<service>)", header X-Served-By
//	GET /health  200 "ok"
//	GET /whoami  JSON {"hostname", "service", "instance", "node"}
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
	return mux
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
