package gossip

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestGossipRejectionLines checks the recogniser on memberlist's own
// wording, and that other lines pass through at their level.
func TestGossipRejectionLines(t *testing.T) {
	var logs bytes.Buffer
	w := SlogWriter(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	w.Printf("[ERR] memberlist: failed to receive: encryption is configured but remote state is not encrypted from=1.2.3.4:7946")
	w.Printf("[ERR] memberlist: Decrypt packet failed: payload is too small to decrypt: 3 from=5.6.7.8:7946")
	w.Printf("[ERR] memberlist: failed to receive: No installed keys could decrypt the message from=[fd00::1]:7946")
	w.Printf("[ERR] memberlist: Failed to send gossip to 9.9.9.9:7946: connection refused")
	w.Printf("[DEBUG] memberlist: Stream connection from=1.2.3.4:7946")
	got := strings.Split(strings.TrimSpace(logs.String()), "\n")
	want := []string{
		`level=WARN msg="rejected gossip from a node without the cluster key" from=1.2.3.4:7946 reason="it sent unencrypted gossip: it has no cluster key"`,
		`level=WARN msg="rejected gossip from a node without the cluster key" from=5.6.7.8:7946 reason="it sent gossip that is not encrypted with the cluster key"`,
		`level=WARN msg="rejected gossip from a node without the cluster key" from=[fd00::1]:7946 reason="its gossip is encrypted with another key: it has a wrong cluster key"`,
		`level=ERROR msg="[ERR] memberlist: Failed to send gossip to 9.9.9.9:7946: connection refused" component=memberlist`,
		`level=DEBUG msg="[DEBUG] memberlist: Stream connection from=1.2.3.4:7946" component=memberlist`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines:\n%s", len(got), logs.String())
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("line %d:\n got %s\nwant %s", i, got[i], want[i])
		}
	}
}
