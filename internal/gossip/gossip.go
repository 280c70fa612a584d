package gossip

import (
	"context"
	"log"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/micado-scale/micado/internal/wire"
)

// slogWriter turns memberlist's log lines into structured records.
type slogWriter struct{ l *slog.Logger }

func (s slogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if reason, from, ok := gossipRejection(msg); ok {
		s.l.Warn(MsgGossipRejected, "from", from, "reason", reason, "component", "memberlist", "detail", msg)
		return len(p), nil
	}
	lvl := slog.LevelDebug
	switch {
	case strings.Contains(msg, "[ERR]"):
		lvl = slog.LevelError
	case strings.Contains(msg, "[WARN]"):
		lvl = slog.LevelWarn
	case strings.Contains(msg, "[INFO]"):
		lvl = slog.LevelInfo
	}
	s.l.Log(context.Background(), lvl, msg, "component", "memberlist")
	return len(p), nil
}

// Config is the memberlist configuration every member of a cluster
// uses: LAN defaults, one port for binding and advertising, gossip
// encrypted with the cluster key, and memberlist's log lines turned into
// structured records.
func Config(name, bindAddr string, port int, advertise string, key []byte, logger *slog.Logger) *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.Name = name
	c.BindAddr = bindAddr
	c.BindPort = port
	c.AdvertisePort = port
	c.AdvertiseAddr = advertise
	c.SecretKey = key
	// A member that comes back with another address (a restarted worker
	// container, a reconnected network) may take over its dead entry.
	c.DeadNodeReclaimTime = time.Second
	c.Logger = SlogWriter(logger)
	return c
}

// SlogWriter adapts a slog.Logger for libraries that log through log.Logger.
func SlogWriter(l *slog.Logger) *log.Logger { return log.New(slogWriter{l}, "", 0) }

// SendLoad sends the load report meta of member name straight to every
// manager it sees (one UDP packet each), ahead of gossip.
func SendLoad(ml *memberlist.Memberlist, name string, meta []byte) error {
	msg := wire.EncodeLoadMsg(name, meta)
	var first error
	for _, n := range ml.Members() {
		if n.Name == name {
			// Its own entry: not a manager, and UpdateNode may be
			// rewriting its Meta right now.
			continue
		}
		if l, err := wire.DecodeLoad(n.Meta); err == nil && l.Kind == wire.KindManager {
			if err := ml.SendBestEffort(n, msg); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}
