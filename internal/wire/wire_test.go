package wire

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestWireFormat pins the JSON that managers and agents of other builds
// read: a renamed field or tag breaks a running cluster.
func TestWireFormat(t *testing.T) {
	at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	for name, tc := range map[string]struct {
		v    any
		want string
	}{
		"load": {Load{Kind: KindWorker, Tags: []string{"role=app"}, Capacity: 1, Reserved: 2, Used: 3, CPU: 0.5, Containers: 4,
			API: "10.0.0.2:7947", Started: 5, Draining: true, Seq: 6, Digest: 7},
			`{"k":"worker","t":["role=app"],"c":1,"r":2,"u":3,"l":0.5,"n":4,"a":"10.0.0.2:7947","s":5,"d":true,"q":6,"h":7}`},
		"empty load": {Load{Kind: KindManager}, `{"k":"manager"}`},
		"start request": {StartRequest{Instance: "web-1", Service: "web", App: "shop", Image: "nginx", Memory: 8,
			Ports: []Port{{Container: 80, Protocol: "tcp"}}, Env: map[string]string{"A": "b"}, Generation: 2},
			`{"instance":"web-1","service":"web","app":"shop","image":"nginx","memory":8,"ports":[{"container":80,"protocol":"tcp"}],"env":{"A":"b"},"generation":2}`},
		"start request with a file": {StartRequest{Instance: "web-1", Service: "web", Image: "nginx", Memory: 8,
			Files: []File{{Path: "/run/secrets/t", Mode: 0o444, Data: []byte("s3cret")}}},
			`{"instance":"web-1","service":"web","image":"nginx","memory":8,"files":[{"path":"/run/secrets/t","mode":292,"data":"czNjcmV0"}]}`},
		"container info": {ContainerInfo{ID: "id", Name: "n", Instance: "web-1", Service: "web", App: "shop", Image: "nginx", Node: "w-1",
			Memory: 8, Used: 4, State: "running", Address: "10.0.0.3", Ports: []Binding{{Container: 80, Protocol: "tcp", Host: 20000}}, Generation: 1, Created: at},
			`{"id":"id","name":"n","instance":"web-1","service":"web","app":"shop","image":"nginx","node":"w-1","memory":8,"used":4,"state":"running","address":"10.0.0.3","ports":[{"container":80,"protocol":"tcp","host":20000}],"generation":1,"created":"2024-05-06T07:08:09Z"}`},
		"stats": {Stats{Node: "w-1", CPUs: 2, CPU: 0.25, Memory: 3, Capacity: 4, At: at,
			Containers: []ContainerStats{{Instance: "web-1", Service: "web", App: "shop", Generation: 1, CPU: 50, Memory: 5, Limit: 6, At: at, HasCPU: true}}},
			`{"node":"w-1","cpus":2,"cpu":0.25,"memory":3,"capacity":4,"containers":[{"instance":"web-1","service":"web","app":"shop","generation":1,"cpu":50,"memory":5,"limit":6,"at":"2024-05-06T07:08:09Z","has_cpu":true}],"at":"2024-05-06T07:08:09Z"}`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", name, b, tc.want)
		}
	}
}

func TestLoadMessageRoundTrip(t *testing.T) {
	l := Load{Kind: KindWorker, Tags: []string{"role=db"}, Capacity: 1 << 30, Seq: 3}
	meta, err := l.Encode()
	if err != nil {
		t.Fatal(err)
	}
	name, got, err := DecodeLoadMsg(EncodeLoadMsg("w-1", meta))
	if err != nil || name != "w-1" || got.Capacity != l.Capacity || got.Seq != 3 || len(got.Tags) != 1 {
		t.Fatalf("DecodeLoadMsg: %q %+v %v", name, got, err)
	}
	if _, _, err := DecodeLoadMsg([]byte("X")); err == nil {
		t.Error("DecodeLoadMsg accepted a message that is not one")
	}
	if _, err := (Load{Kind: KindWorker, Tags: make([]string, MaxMetaSize)}).Encode(); err == nil {
		t.Error("Encode accepted a report larger than memberlist's limit")
	}
	if TermOf(WithTerm(context.Background(), 7)) != 7 || TermOf(context.Background()) != 0 {
		t.Error("WithTerm/TermOf do not round-trip")
	}
	if s := fmt.Sprintf("%v %+v %#v %s", File{Path: "/p", Data: []byte("s3cret")}, File{Path: "/p", Data: []byte("s3cret")},
		[]File{{Path: "/p", Data: []byte("s3cret")}}, File{Path: "/p", Data: []byte("s3cret")}); strings.Contains(s, "s3cret") {
		t.Errorf("a printed File shows its contents: %s", s)
	}
	if AgentToken([]byte("k")) == AgentToken([]byte("l")) {
		t.Error("AgentToken does not depend on the key")
	}
}
