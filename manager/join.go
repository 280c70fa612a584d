package manager

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/micado-scale/micado/cloudapi"
	"github.com/micado-scale/micado/internal/registryauth"
	"github.com/micado-scale/micado/internal/wire"
)

// Bootstrap lets new cloud instances start from a stock image: their
// cloud-init user data (cloudapi.RenderUserData) holds a join token, the
// manager's URL and CA and the checksum of Binary; the instance fetches
// Binary from the manager and spends the token for the cluster key, over
// TLS. The cluster key is never in user data, which clouds let any
// process on the instance read back from their metadata service.
type Bootstrap struct {
	// URL is the manager API's https:// URL as new instances reach it.
	URL string
	// CA is the PEM certificate(s) instances trust for URL.
	CA string
	// TokenTTL is how long a join token is valid after its instance was
	// asked for (default DefaultJoinTokenTTL).
	TokenTTL time.Duration
	// Binary is the file of the micado binary served to instances (linux,
	// static): normally the manager's own executable, so workers run its
	// version. It is hashed at start and served from disk, not held in
	// memory; a file changed since then no longer matches the checksum the
	// user data carries, and instances refuse it.
	Binary string
	// RegistryAuth, when set, is a Docker config.json of registry
	// credentials the workers' pulls use; instances get it with the key.
	RegistryAuth []byte

	sum string // hex SHA-256 of Binary at start
}

// DefaultJoinTokenTTL covers a slow boot that installs Docker from the
// distribution's packages. An instance that has not joined by the join
// timeout (DefaultJoinTimeout) is terminated and its token forgotten
// anyway.
const DefaultJoinTokenTTL = 10 * time.Minute

// Events of the join exchange.
const (
	EventKeyIssued   = "key-issued"   // an instance spent its join token for the cluster key
	EventJoinRefused = "join-refused" // an instance's join token was refused, and why
)

func (b *Bootstrap) check() error {
	if err := cloudapi.CheckJoinURL(b.URL); err != nil {
		return err
	}
	if err := cloudapi.CheckCA(b.CA); err != nil {
		return err
	}
	if b.Binary == "" {
		return errors.New("no micado binary to serve to new instances")
	}
	if len(b.RegistryAuth) > 0 {
		if _, err := registryauth.Parse(b.RegistryAuth); err != nil {
			return fmt.Errorf("registry credentials: %w", err)
		}
	}
	if b.TokenTTL == 0 {
		b.TokenTTL = DefaultJoinTokenTTL
	}
	if b.TokenTTL < 0 {
		return fmt.Errorf("the join token lifetime %s is negative", b.TokenTTL)
	}
	f, err := os.Open(b.Binary)
	if err != nil {
		return fmt.Errorf("the micado binary to serve to new instances: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read the micado binary %s: %w", b.Binary, err)
	}
	b.sum = hex.EncodeToString(h.Sum(nil))
	return nil
}

// newJoinToken returns a fresh token (256 random bits, URL-safe) and the
// hash the journal keeps of it: the token itself is only in the user data.
func newJoinToken() (token, hash string) {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	token = base64.RawURLEncoding.EncodeToString(b)
	return token, hashJoinToken(token)
}

func hashJoinToken(token string) string {
	s := sha256.Sum256([]byte(token))
	return hex.EncodeToString(s[:])
}

// userData gives an instance its join token and renders its user data.
// The token's hash and expiry are in the journal before the user data
// exists, so any manager that leads next can honour or refuse it.
func (l *leader) userData(ctx context.Context, in *InstanceRecord, memory int64) (string, error) {
	m := l.m
	b := m.cfg.Bootstrap
	token, hash := newJoinToken()
	expires := time.Now().Add(b.TokenTTL).UTC()
	err := l.store.Update(ctx, func(tx *Tx) error {
		cur := tx.Instance(in.Name)
		if cur == nil {
			return ErrNotFound
		}
		cur.JoinToken, cur.JoinExpires, cur.JoinedWith = hash, expires, time.Time{}
		tx.PutInstance(cur)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("record the join token: %w", err)
	}
	return cloudapi.RenderUserData(cloudapi.UserDataParams{
		Cluster: m.cfg.Cluster, Name: in.Name, Join: m.joinAddr(), Tags: in.Tags, Memory: memory,
		JoinURL: b.URL, JoinToken: token, ManagerCA: b.CA, BinarySHA256: b.sum, RegistryAuth: len(b.RegistryAuth) > 0,
	})
}

// joinTokenOf finds the instance whose join token the request bears.
// It refuses, with a message for the instance's bootstrap log, a missing,
// unknown, spent or expired token.
func (l *leader) joinTokenOf(r *http.Request) (*InstanceRecord, error) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return nil, &RequestError{Status: http.StatusUnauthorized, Msg: "no join token: send Authorization: Bearer TOKEN"}
	}
	hash := []byte(hashJoinToken(tok))
	for _, in := range l.store.Instances() {
		if in.JoinToken == "" || subtle.ConstantTimeCompare([]byte(in.JoinToken), hash) != 1 {
			continue
		}
		switch {
		case !in.JoinedWith.IsZero():
			return in, spentErr(in)
		case time.Now().After(in.JoinExpires):
			return in, &RequestError{Status: http.StatusForbidden, Msg: fmt.Sprintf("the join token of instance %s expired at %s", in.Name, in.JoinExpires.Format(time.RFC3339))}
		}
		return in, nil
	}
	return nil, &RequestError{Status: http.StatusForbidden, Msg: "unknown join token: no instance that is still being created has it"}
}

// spentErr refuses the token of an instance that already spent it.
func spentErr(in *InstanceRecord) error {
	return &RequestError{Status: http.StatusForbidden, Msg: fmt.Sprintf("the join token of instance %s was already used at %s: a token is spent once", in.Name, in.JoinedWith.Format(time.RFC3339))}
}

func (m *Manager) refuseJoin(w http.ResponseWriter, r *http.Request, in *InstanceRecord, err error) {
	subject := ""
	if in != nil {
		subject = in.Name
	}
	m.log.Warn("join refused", "instance", subject, "from", r.RemoteAddr, "err", err)
	m.event(EventJoinRefused, subject, "%s %s from %s: %v", r.Method, r.URL.Path, r.RemoteAddr, err)
	writeErr(w, err)
}

// handleJoinBinary serves the micado binary to an instance with a valid
// join token; the token stays valid.
func (m *Manager) handleJoinBinary(l *leader, w http.ResponseWriter, r *http.Request) {
	in, err := l.joinTokenOf(r)
	if err != nil {
		m.refuseJoin(w, r, in, err)
		return
	}
	b := m.cfg.Bootstrap
	m.log.Info("serving the micado binary to a new instance", "instance", in.Name, "from", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Micado-Sha256", b.sum)
	f, err := os.Open(b.Binary)
	if err != nil {
		writeErr(w, fmt.Errorf("open the micado binary: %w", err))
		return
	}
	defer f.Close()
	http.ServeContent(w, r, "micado", m.started, f)
}

// handleJoin spends an instance's join token for its secrets: a tar
// archive of cloudapi.JoinKeyFile (the cluster key, base64 text as
// --key-file reads it) and, with registry credentials,
// cloudapi.JoinRegistryAuthFile, both mode 0600. The token is marked spent
// in the journal before anything is sent: a second request with it is
// refused.
func (m *Manager) handleJoin(l *leader, w http.ResponseWriter, r *http.Request) {
	in, err := l.joinTokenOf(r)
	if err != nil {
		m.refuseJoin(w, r, in, err)
		return
	}
	now := time.Now().UTC()
	err = l.store.Update(r.Context(), func(tx *Tx) error {
		cur := tx.Instance(in.Name)
		if cur == nil || cur.JoinToken != in.JoinToken {
			return &RequestError{Status: http.StatusForbidden, Msg: fmt.Sprintf("instance %s no longer has this join token", in.Name)}
		}
		if !cur.JoinedWith.IsZero() {
			return spentErr(cur)
		}
		cur.JoinedWith = now
		tx.PutInstance(cur)
		return nil
	})
	if err != nil {
		var re *RequestError
		if errors.As(err, &re) {
			m.refuseJoin(w, r, in, err)
			return
		}
		writeErr(w, err)
		return
	}
	m.log.Info("join token spent for the cluster key", "instance", in.Name, "from", r.RemoteAddr)
	m.event(EventKeyIssued, in.Name, "instance %s spent its join token for the cluster key (from %s)", in.Name, r.RemoteAddr)
	files := []wire.File{{Path: "/" + cloudapi.JoinKeyFile, Mode: 0o600, Data: []byte(base64.StdEncoding.EncodeToString(m.cfg.ClusterKey) + "\n")}}
	if auth := m.cfg.Bootstrap.RegistryAuth; len(auth) > 0 {
		files = append(files, wire.File{Path: "/" + cloudapi.JoinRegistryAuthFile, Mode: 0o600, Data: auth})
	}
	archive, err := wire.TarFiles(files)
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(archive)
}
