// Command probe is what an attacker inside a workload container would
// try: the end-to-end security tests run it, statically linked, in a
// container on a cluster's workload network. It prints one line per
// command and exits 0 whenever it got an answer (the answer is the test's
// business), 2 when it could not ask at all.
//
//	probe http METHOD URL [BODY]   → "status 403: Permission denied"
//	probe dns SERVER NAME          → "dns 10.0.0.3:31001 10.0.0.4:31002" (SRV) or "dns none: …"
//	probe tcp HOST:PORT            → "tcp open" or "tcp closed: …"
//
// With -token-file F (before the command), HTTP requests carry the token
// read from F as X-Consul-Token.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	tokenFile := flag.String("token-file", "", "file with a Consul token to send")
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe [-token-file F] http METHOD URL [BODY] | dns SERVER NAME | tcp HOST:PORT")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch args[0] {
	case "http":
		if len(args) < 3 {
			os.Exit(2)
		}
		var body io.Reader
		if len(args) > 3 {
			body = strings.NewReader(args[3])
		}
		req, err := http.NewRequestWithContext(ctx, args[1], args[2], body)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		if *tokenFile != "" {
			tok, err := os.ReadFile(*tokenFile)
			if err != nil {
				fmt.Println("error", err)
				os.Exit(2)
			}
			req.Header.Set("X-Consul-Token", strings.TrimSpace(string(tok)))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		fmt.Printf("status %d: %s\n", resp.StatusCode, strings.Join(strings.Fields(string(b)), " "))
	case "dns":
		if len(args) < 3 {
			os.Exit(2)
		}
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", args[1])
		}}
		_, srvs, err := r.LookupSRV(ctx, "", "", args[2])
		if err != nil || len(srvs) == 0 {
			fmt.Println("dns none:", err)
			return
		}
		var out []string
		for _, s := range srvs {
			ips, _ := r.LookupHost(ctx, s.Target)
			for _, ip := range ips {
				out = append(out, fmt.Sprintf("%s:%d", ip, s.Port))
			}
		}
		fmt.Println("dns", strings.Join(out, " "))
	case "tcp":
		c, err := (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, "tcp", args[1])
		if err != nil {
			fmt.Println("tcp closed:", err)
			return
		}
		c.Close()
		fmt.Println("tcp open")
	default:
		os.Exit(2)
	}
}
