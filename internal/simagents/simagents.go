// Package simagents simulates thousands of worker agents behind one
// listener, for benchmarks of the manager at sizes no machine here can
// run for real: each worker has an address of its own on loopback
// (127.1.x.y, all routed to the one listener bound to 0.0.0.0), speaks the
// agent API the manager uses (list, start, stop, leave; the load report
// with every start and stop answer), and answers at once. Containers are
// records; nothing runs.
package simagents

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/micado-scale/micado/internal/wire"
)

// MaxWorkers is how many workers fit the address plan (127.1.x.y).
const MaxWorkers = 250 * 250

// Server is the simulated workers.
type Server struct {
	port    int
	ln      net.Listener
	srv     *http.Server
	started int64
	workers []*simWorker
	starts  int64
	mu      sync.Mutex
}

type simWorker struct {
	mu     sync.Mutex
	name   string
	tags   []string
	memory int64
	seq    uint64
	copies map[string]wire.ContainerInfo // by instance/generation
	port   int
}

// WorkerName is the name of worker i (0-based): "w-1", "w-2", ….
func WorkerName(i int) string { return "w-" + strconv.Itoa(i+1) }

// IP is the loopback address of worker i.
func IP(i int) net.IP { return net.IPv4(127, 1, byte(i/250), byte(1+i%250)) }

// index returns the worker an address belongs to.
func index(ip net.IP) (int, bool) {
	ip = ip.To4()
	if ip == nil || ip[0] != 127 || ip[1] != 1 || ip[3] == 0 {
		return 0, false
	}
	return int(ip[2])*250 + int(ip[3]) - 1, true
}

// New starts n simulated workers with the given tags per worker and
// memory, listening on a free port of 0.0.0.0; seed gives each worker the
// containers it already runs (may be nil).
func New(n int, tags func(i int) []string, memory int64, seed func(i int) []wire.ContainerInfo) (*Server, error) {
	if n > MaxWorkers {
		return nil, fmt.Errorf("at most %d simulated workers", MaxWorkers)
	}
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		return nil, err
	}
	s := &Server{port: ln.Addr().(*net.TCPAddr).Port, ln: ln, started: time.Now().Unix()}
	for i := range n {
		w := &simWorker{name: WorkerName(i), tags: tags(i), memory: memory, seq: 1, copies: map[string]wire.ContainerInfo{}}
		if seed != nil {
			for _, c := range seed(i) {
				w.copies[key(c.Instance, c.Generation)] = c
			}
		}
		s.workers = append(s.workers, w)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/containers", s.with(func(w *simWorker, rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		out := make([]wire.ContainerInfo, 0, len(w.copies))
		for _, c := range w.copies {
			out = append(out, c)
		}
		w.mu.Unlock()
		writeJSON(rw, out)
	}))
	mux.HandleFunc("POST /v1/containers", s.with(func(w *simWorker, rw http.ResponseWriter, r *http.Request) {
		var req wire.StartRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(rw, `{"error":"bad body"}`, http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.starts++
		id := fmt.Sprintf("%064x", s.starts)
		s.mu.Unlock()
		w.mu.Lock()
		info := wire.ContainerInfo{ID: id, Instance: req.Instance, Service: req.Service, App: req.App, Image: req.Image,
			Node: w.name, Memory: req.Memory, State: "running", Address: IP(0).String(), Generation: req.Generation}
		for _, p := range req.Ports {
			w.port++
			info.Ports = append(info.Ports, wire.Binding{Container: p.Container, Protocol: p.Protocol, Host: 20000 + w.port%40000})
		}
		w.copies[key(req.Instance, req.Generation)] = info
		w.seq++
		l := s.loadLocked(w)
		w.mu.Unlock()
		s.header(rw, l)
		writeJSON(rw, info)
	}))
	mux.HandleFunc("DELETE /v1/containers/{instance}", s.with(func(w *simWorker, rw http.ResponseWriter, r *http.Request) {
		gen := -1
		if g := r.URL.Query().Get("generation"); g != "" {
			gen, _ = strconv.Atoi(g)
		}
		w.mu.Lock()
		found := false
		for k, c := range w.copies {
			if c.Instance == r.PathValue("instance") && (gen < 0 || c.Generation == gen) {
				delete(w.copies, k)
				found = true
			}
		}
		w.seq++
		l := s.loadLocked(w)
		w.mu.Unlock()
		s.header(rw, l)
		writeJSON(rw, map[string]bool{"found": found})
	}))
	mux.HandleFunc("POST /v1/leave", s.with(func(w *simWorker, rw http.ResponseWriter, r *http.Request) {
		writeJSON(rw, map[string]bool{"left": true})
	}))
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// with finds the worker a request was sent to by the address it reached.
func (s *Server) with(h func(*simWorker, http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		la, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		ta, _ := la.(*net.TCPAddr)
		if ta == nil {
			http.Error(rw, `{"error":"no local address"}`, http.StatusInternalServerError)
			return
		}
		i, ok := index(ta.IP)
		if !ok || i >= len(s.workers) {
			http.Error(rw, `{"error":"no such worker"}`, http.StatusNotFound)
			return
		}
		h(s.workers[i], rw, r)
	}
}

func key(instance string, gen int) string { return instance + "/" + strconv.Itoa(gen) }

// Close stops the server.
func (s *Server) Close() { _ = s.srv.Close() }

// Port is the listener's port.
func (s *Server) Port() int { return s.port }

// API is worker i's agent address.
func (s *Server) API(i int) string { return net.JoinHostPort(IP(i).String(), strconv.Itoa(s.port)) }

// Load is worker i's current load report.
func (s *Server) Load(i int) wire.Load {
	w := s.workers[i]
	w.mu.Lock()
	defer w.mu.Unlock()
	return s.loadLocked(w)
}

// Starts counts the start calls answered.
func (s *Server) Starts() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts
}

func (s *Server) loadLocked(w *simWorker) wire.Load {
	l := wire.Load{Kind: wire.KindWorker, Tags: w.tags, Capacity: w.memory, Started: s.started, Seq: w.seq,
		API: s.API(indexOf(w.name))}
	cs := make([]wire.ContainerInfo, 0, len(w.copies))
	for _, c := range w.copies {
		l.Reserved += c.Memory
		l.Containers++
		cs = append(cs, c)
	}
	l.Digest = wire.ContainersDigest(cs)
	return l
}

func indexOf(name string) int {
	n, _ := strconv.Atoi(name[2:])
	return n - 1
}

func (s *Server) header(rw http.ResponseWriter, l wire.Load) {
	if b, err := json.Marshal(l); err == nil {
		rw.Header().Set(wire.LoadHeader, string(b))
	}
}

func writeJSON(rw http.ResponseWriter, v any) {
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(v)
}
