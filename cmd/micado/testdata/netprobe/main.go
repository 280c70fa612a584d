// Command netprobe is run by the end-to-end tests inside a container, to
// see what a workload can reach. Each argument is one probe; it prints one
// line per probe, "OK <detail>" or "ERR <error>":
//
//	tcp:HOST:PORT          connect
//	http:URL               GET, detail is the status code
//	dns:SERVER:PORT:NAME   look NAME up (A) at the DNS server SERVER:PORT
//	token:FILE             send the Consul token in FILE with the requests that follow
//	req:METHOD URL [BODY]  any request; detail is the status code and the start of the body
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// token is sent as X-Consul-Token once a token: probe has read it.
var token string

func main() {
	for _, a := range os.Args[1:] {
		kind, rest, _ := strings.Cut(a, ":")
		detail, err := probe(kind, rest)
		if err != nil {
			fmt.Printf("ERR %v\n", err)
		} else {
			fmt.Printf("OK %s\n", detail)
		}
	}
}

func probe(kind, rest string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	switch kind {
	case "tcp":
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", rest)
		if err != nil {
			return "", err
		}
		c.Close()
		return "connected", nil
	case "token":
		b, err := os.ReadFile(rest)
		if err != nil {
			return "", err
		}
		token = strings.TrimSpace(string(b))
		return "token", nil
	case "req":
		parts := strings.SplitN(rest, " ", 3)
		if len(parts) < 2 {
			return "", fmt.Errorf("req needs METHOD URL")
		}
		var body io.Reader
		if len(parts) == 3 {
			body = strings.NewReader(parts[2])
		}
		req, err := http.NewRequestWithContext(ctx, parts[0], parts[1], body)
		if err != nil {
			return "", err
		}
		if token != "" {
			req.Header.Set("X-Consul-Token", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return fmt.Sprintf("%d %s", resp.StatusCode, strings.Join(strings.Fields(string(b)), " ")), nil
	case "http":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rest, nil)
		if err != nil {
			return "", err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		resp.Body.Close()
		return fmt.Sprint(resp.StatusCode), nil
	case "dns":
		i := strings.LastIndex(rest, ":")
		server, name := rest[:i], rest[i+1:]
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "udp", server)
		}}
		addrs, err := r.LookupHost(ctx, name)
		if err != nil {
			return "", err
		}
		return strings.Join(addrs, ","), nil
	}
	return "", fmt.Errorf("unknown probe %q", kind)
}
