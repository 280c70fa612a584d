package manager

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestEventLogKeepsOrderWaitsAndSurvivesARestart: events come back in
// order, limit gives the newest, a long poll wakes on the next event, and a
// new log (a restarted manager) reads the persisted ones and numbers on.
func TestEventLogKeepsOrderWaitsAndSurvivesARestart(t *testing.T) {
	cl, err := api.NewClient(&api.Config{Address: startConsul(t)})
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := newEventLog(cl.KV(), "ev", 5, quiet)
	go l.persist(ctx)
	for i := 1; i <= 7; i++ {
		l.add(EventPlaced, "web-"+string(rune('0'+i)), "placed web-%d on w-1", i)
	}
	all, _ := l.since(0, 0)
	if len(all) != 5 || all[0].Seq != 3 || all[4].Seq != 7 || all[4].Message != "placed web-7 on w-1" {
		t.Fatalf("kept %+v, want seq 3..7", all)
	}
	if last, _ := l.since(0, 2); len(last) != 2 || last[0].Seq != 6 {
		t.Fatalf("limit 2 gave %+v", last)
	}

	got := make(chan []Event, 1)
	go func() { got <- l.wait(ctx, 7, 0, 10*time.Second) }()
	time.Sleep(100 * time.Millisecond)
	l.add(EventScaleOut, "w-app-1", "asked docker for one medium instance")
	select {
	case evs := <-got:
		if len(evs) != 1 || evs[0].Seq != 8 || evs[0].Kind != EventScaleOut {
			t.Fatalf("long poll woke with %+v", evs)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll did not wake on a new event")
	}

	// A restarted manager sees the persisted events and numbers on.
	deadline := time.Now().Add(10 * time.Second)
	for {
		keys, _, _ := cl.KV().Keys("micado/ev/events/", "", nil)
		if len(keys) >= 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events persisted, want 8", len(keys))
		}
		time.Sleep(50 * time.Millisecond)
	}
	l2 := newEventLog(cl.KV(), "ev", 5, quiet)
	if err := l2.load(ctx); err != nil {
		t.Fatal(err)
	}
	old, _ := l2.since(0, 0)
	if len(old) != 5 || old[4].Seq != 8 {
		t.Fatalf("after a restart: %+v", old)
	}
	if e := l2.add(EventJoined, "w-2", "joined"); e.Seq != 9 {
		t.Fatalf("numbering restarted at %d", e.Seq)
	}
}

func TestParseEventQueryNamesTheProblem(t *testing.T) {
	for q, want := range map[string]string{
		"since=abc":  `since="abc" is not a sequence number`,
		"limit=-1":   `limit="-1" is not a non-negative number`,
		"wait=2h":    `wait="2h" must be a duration between 0s and 1m0s`,
		"wait=soon":  `wait="soon" must be a duration`,
		"follow=yes": `unknown query parameter "follow"`,
	} {
		v, _ := url.ParseQuery(q)
		if _, err := ParseEventQuery(v); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", q, err, want)
		}
	}
	v, _ := url.ParseQuery("since=12&limit=3&wait=5s")
	if eq, err := ParseEventQuery(v); err != nil || eq.Since != 12 || eq.Limit != 3 || eq.Wait != 5*time.Second {
		t.Fatalf("%+v %v", eq, err)
	}
}
