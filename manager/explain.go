package manager

import (
	"context"
	"fmt"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions/bytesize"
)

// Explanation says why a container is where it is, or why it still
// waits, worker by worker. It comes from the same filters that place
// containers (coordinator.Explain), not from a second code path.
type Explanation struct {
	Container  string `json:"container"`
	Service    string `json:"service"`
	State      State  `json:"state"`
	Node       string `json:"node,omitempty"`
	WaitingFor string `json:"waiting_for,omitempty"`
	// Placement is why it was put on Node, as decided then.
	Placement string `json:"placement,omitempty"`
	// Reason is the record's current reason (why it waits or failed).
	Reason string `json:"reason,omitempty"`
	// Now is what placement would decide on the current snapshot, with
	// the container's own reservation taken off its worker.
	Now string `json:"now"`
	// Workers gives every worker's verdict.
	Workers []WorkerVerdict `json:"workers"`
}

// WorkerVerdict is one worker's answer to one request.
type WorkerVerdict struct {
	Worker  string   `json:"worker"`
	Tags    []string `json:"tags,omitempty"`
	Booting bool     `json:"booting,omitempty"`
	Fits    bool     `json:"fits"`
	Filter  string   `json:"filter,omitempty"` // the filter that rejected it
	Reason  string   `json:"reason"`
	Free    int64    `json:"free"` // free memory for placement, bytes
}

// Explain explains the container name, or every container of the
// service name.
func (l *leader) Explain(_ context.Context, name string) ([]Explanation, error) {
	var targets []*Container
	if c, ok := l.store.Container(name); ok {
		targets = []*Container{c}
	} else {
		targets = l.store.Service(name)
	}
	if len(targets) == 0 {
		return nil, &RequestError{Status: 404, Msg: fmt.Sprintf("no container or service named %s (see micado ps)", name)}
	}
	o := l.m.cfg.Placement
	var out []Explanation
	for _, c := range targets {
		// The snapshot without this container: as if placing it now.
		snap := l.snapshotWithout(c)
		l.withBooting(snap)
		d := coordinator.Explain(snap, c.Request(), o)
		rejected := map[string]coordinator.Rejection{}
		for _, rj := range d.Rejections {
			rejected[rj.Worker] = rj
		}
		e := Explanation{Container: c.Name, Service: c.Service, State: c.State, Node: c.Node, WaitingFor: c.WaitingFor,
			Placement: c.Placement, Reason: c.Reason, Now: d.Reason}
		for i := range snap.Workers {
			w := &snap.Workers[i]
			v := WorkerVerdict{Worker: w.Name, Tags: w.Tags, Booting: w.Booting, Free: o.Free(w)}
			if rj, ok := rejected[w.Name]; ok {
				v.Filter, v.Reason = rj.Filter, rj.Reason
			} else {
				v.Fits = true
				v.Reason = fmt.Sprintf("passes every filter: %s free", bytesize.Format(v.Free))
				if w.Name == d.Worker {
					v.Reason += " (the best by " + string(o.Strategy) + ")"
				}
			}
			e.Workers = append(e.Workers, v)
		}
		out = append(out, e)
	}
	return out, nil
}
