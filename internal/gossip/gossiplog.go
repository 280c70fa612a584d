// Package gossip configures memberlist the same way for every member of a
// cluster, managers and worker agents alike: LAN defaults, gossip
// encrypted with the cluster key, memberlist's log lines as structured
// records (with rejected, keyless gossip named as such), and the direct
// load message a member sends the managers ahead of gossip.
package gossip

import (
	"strings"
)

// MsgGossipRejected is the message of the warning a member logs when it
// drops gossip from a node that does not hold the cluster key: one with no
// key at all, or with another cluster's key. memberlist reports these as
// low-level decryption errors; this line says what they mean.
const MsgGossipRejected = "rejected gossip from a node without the cluster key"

// gossipRejection recognises memberlist's log lines about gossip that
// could not be decrypted with the cluster key. It returns why, in the
// user's terms, and the peer's address as memberlist gave it ("from=").
//
// memberlist writes, for a stream (a join or a push/pull):
//
//	[ERR] memberlist: failed to receive: encryption is configured but remote state is not encrypted from=10.0.0.7:53112
//	[ERR] memberlist: failed to receive: No installed keys could decrypt the message from=10.0.0.7:53112
//
// and for a UDP packet:
//
//	[ERR] memberlist: Decrypt packet failed: No installed keys could decrypt the message from=10.0.0.7:7946
//	[ERR] memberlist: Decrypt packet failed: payload is too small to decrypt: 12 from=10.0.0.7:7946
func gossipRejection(line string) (reason, from string, ok bool) {
	l := strings.ToLower(line)
	switch {
	case strings.Contains(l, "encryption is configured but remote state is not encrypted"):
		reason = "it sent unencrypted gossip: it has no cluster key"
	case strings.Contains(l, "no installed keys could decrypt"):
		reason = "its gossip is encrypted with another key: it has a wrong cluster key"
	case strings.Contains(l, "decrypt packet failed"):
		// A plain packet read as ciphertext: too short, or a first byte
		// that is no encryption version.
		reason = "it sent gossip that is not encrypted with the cluster key"
	default:
		return "", "", false
	}
	from = "unknown"
	if i := strings.LastIndex(line, "from="); i >= 0 {
		f := line[i+len("from="):]
		if j := strings.IndexAny(f, " \t\r\n"); j >= 0 {
			f = f[:j]
		}
		if f != "" {
			from = f
		}
	}
	return reason, from, true
}

// JoinHint explains a failed join in the user's terms: a join that fails
// on decryption means this node and the member it contacted do not share
// the cluster key.
func JoinHint(err error) string {
	if err == nil {
		return ""
	}
	l := strings.ToLower(err.Error())
	if strings.Contains(l, "decrypt") || strings.Contains(l, "encrypt") {
		return "the member did not accept our gossip or we cannot read its: check that this node has the cluster's key (MICADO_CLUSTER_KEY or --key-file)"
	}
	return "check that the address is the manager's gossip address and reachable"
}
