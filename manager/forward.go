package manager

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// ForwardedHeader marks an API call a standby forwarded to the leader
// (its value names the standby), so that a call never goes round in a
// circle while the lock changes hands.
const ForwardedHeader = "X-Micado-Forwarded-By"

// holderTTL is how long a standby trusts what it last read of the lock:
// the lock changes hands at most every few seconds, and a forwarded call
// to a manager that no longer leads is forwarded again or refused.
const holderTTL = time.Second

// holderCache remembers the lock's holder for holderTTL.
type holderCache struct {
	mu sync.Mutex
	h  Holder
	at time.Time
}

func (m *Manager) leaderNow(ctx context.Context) (Holder, error) {
	c := &m.holder
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < holderTTL {
		return c.h, nil
	}
	h, err := m.deps.Lock.Holder(ctx)
	if err != nil {
		return Holder{}, err
	}
	c.h, c.at = h, time.Now()
	return h, nil
}

// forward passes an API call a standby received to the leader, and the
// leader's answer back. While no manager leads (a failover), it answers
// 503 with Retry-After: the CLI waits and tries again.
func (m *Manager) forward(w http.ResponseWriter, r *http.Request) {
	unavailable := func(why string) {
		w.Header().Set("Retry-After", "2")
		writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: fmt.Sprintf("%s is standing by and %s; try again in a few seconds", m.cfg.NodeName, why)})
	}
	if by := r.Header.Get(ForwardedHeader); by != "" {
		unavailable("does not lead the cluster (the call came forwarded from " + by + ")")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	h, err := m.leaderNow(ctx)
	cancel()
	if err != nil {
		unavailable("cannot tell which manager leads: " + err.Error())
		return
	}
	if h.Name == "" || h.Name == m.cfg.NodeName {
		unavailable("no manager leads the cluster right now")
		return
	}
	mem, ok := m.members.get(h.Name)
	if !ok || mem.Status != MemberAlive || mem.Load.API == "" {
		unavailable("the leader " + h.Name + " is not reachable through gossip")
		return
	}
	scheme := "http"
	if m.cfg.TLSCert != "" {
		scheme = "https"
	}
	target := &url.URL{Scheme: scheme, Host: mem.Load.API}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Set(ForwardedHeader, m.cfg.NodeName)
		},
		Transport:     m.deps.Forward,
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			unavailable("cannot reach the leader " + h.Name + ": " + err.Error())
		},
	}
	proxy.ServeHTTP(w, r)
}
