package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Client is the manager's client for worker agent APIs.
type Client struct {
	HTTP  *http.Client
	Token string
	// OnLoad, when set, receives the load report an agent attaches to its
	// answers to start and stop (addr is the agent API address).
	OnLoad func(addr string, l Load)
}

// NewClient returns a client that authenticates with the agent token
// derived from the cluster key.
func NewClient(clusterKey []byte) *Client {
	return &Client{HTTP: &http.Client{Timeout: 2 * time.Minute}, Token: AgentToken(clusterKey)}
}

// APIError is an error answer from an agent.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// IsNotFound reports whether err is an agent's 404.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

func (c *Client) do(ctx context.Context, method, addr, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if t := TermOf(ctx); t > 0 {
		req.Header.Set(TermHeader, strconv.FormatUint(t, 10))
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("worker agent at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if h := resp.Header.Get(LoadHeader); h != "" && c.OnLoad != nil {
		if l, err := DecodeLoad([]byte(h)); err == nil {
			c.OnLoad(addr, l)
		}
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("worker agent at %s answered %s", addr, resp.Status)
		}
		return &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("worker agent at %s: bad answer: %w", addr, err)
		}
	}
	return nil
}

// Start asks the agent at addr to run a container.
func (c *Client) Start(ctx context.Context, addr string, r StartRequest) (ContainerInfo, error) {
	var info ContainerInfo
	err := c.do(ctx, http.MethodPost, addr, "/v1/containers", r, &info)
	return info, err
}

// Stop asks the agent at addr to stop and remove instance; generation < 0
// removes every copy.
func (c *Client) Stop(ctx context.Context, addr, instance string, generation int) (bool, error) {
	var out struct {
		Found bool `json:"found"`
	}
	p := "/v1/containers/" + url.PathEscape(instance)
	if generation >= 0 {
		p += "?generation=" + strconv.Itoa(generation)
	}
	err := c.do(ctx, http.MethodDelete, addr, p, nil, &out)
	return out.Found, err
}

// List returns the containers the agent at addr runs for the cluster.
func (c *Client) List(ctx context.Context, addr string) ([]ContainerInfo, error) {
	var cs []ContainerInfo
	err := c.do(ctx, http.MethodGet, addr, "/v1/containers", nil, &cs)
	return cs, err
}

// Stats returns the CPU and memory the containers of the agent at addr
// use, as its last sampling round measured them.
func (c *Client) Stats(ctx context.Context, addr string) (Stats, error) {
	var st Stats
	err := c.do(ctx, http.MethodGet, addr, "/v1/stats", nil, &st)
	return st, err
}

// Leave asks the agent at addr to leave the gossip cluster for good (it is
// about to be terminated by scale-in) instead of being declared dead.
func (c *Client) Leave(ctx context.Context, addr string) error {
	return c.do(ctx, http.MethodPost, addr, "/v1/leave", nil, nil)
}
