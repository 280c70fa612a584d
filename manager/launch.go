package manager

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions"
)

// RequestError is a launch or stop request the manager refuses; it maps to
// a 4xx answer and nothing has been changed.
type RequestError struct {
	Status    int
	Msg       string
	Decisions []coordinator.Decision
}

func (e *RequestError) Error() string { return e.Msg }

func badRequest(format string, a ...any) error {
	return &RequestError{Status: http.StatusBadRequest, Msg: fmt.Sprintf(format, a...)}
}

// validate checks a launch request and turns it into container records. A
// launch is an application of one service: it goes through the checks,
// defaults and record builder of a definition file's service, and reports
// every problem at once, each starting with the request field it is about.
func validate(req LaunchRequest, now time.Time) ([]*Container, error) {
	l, err := req.Launch()
	var errs []string
	if err != nil {
		errs = append(errs, err.Error())
	}
	app, err := definitions.ParseLaunch(l)
	var probs definitions.Problems
	if errors.As(err, &probs) {
		for _, p := range probs {
			errs = append(errs, p.Path+": "+p.Msg)
		}
	} else if err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return nil, &RequestError{Status: http.StatusBadRequest, Msg: strings.Join(errs, "; ")}
	}
	s := &app.Services[0]
	return newRecords(app, s, 1, s.Replicas, s.Env, now), nil
}

// Launch is the request as the definitions model has it. A check type other
// than http or tcp is an error (the check is then left out).
func (req LaunchRequest) Launch() (definitions.Launch, error) {
	l := definitions.Launch{Name: req.Name, Image: req.Image, Role: req.Role, Tags: req.Tags, Memory: req.Memory,
		Ports: req.Ports, Env: req.Env, Replicas: req.Replicas, Pinned: req.Pinned, Scaling: req.Scaling}
	if c := req.Check; c != nil {
		switch c.Type {
		case "http":
			l.Check = &definitions.CheckSpec{HTTP: c.Path, Interval: c.Interval}
		case "tcp":
			l.Check = &definitions.CheckSpec{TCP: true, Interval: c.Interval}
		default:
			return l, fmt.Errorf("check.type: %q is not a check type: use http (with a path) or tcp (a first TCP port gets a tcp check by default)", c.Type)
		}
	}
	return l, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
