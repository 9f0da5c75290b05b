package vswitch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The control API over HTTP, for a swap orchestration that runs in another
// process than the switch:
//
//	POST /v1/checkpoint/begin          body {"epoch": N}
//	POST /v1/ports/{name}/freeze
//	POST /v1/ports/{name}/checkpointed
//	POST /v1/checkpoint/end            response: the Log in its file format
//	POST /v1/restore                   body: a Log in its file format
//	POST /v1/resume
//	GET  /v1/status                    response Status as JSON
//
// Errors are plain text with status 409 (ErrCheckpoint), 404
// (ErrUnknownPort), 400 (ErrCorruptLog or a bad request), 410 (ErrClosed),
// 500 otherwise; the header Vswitch-Error names the sentinel error wrapped
// (errorKinds) and Client maps it back so that errors.Is works across the
// wire. Client
// and the Switch itself both implement Checkpointer, with the same
// semantics.

// maxLogBody bounds a restore request (MaxInFlight frames of every port
// would be far less).
const maxLogBody = 1 << 30

// NewHandler returns the HTTP control API of sw.
func NewHandler(sw *Switch) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/checkpoint/begin", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Epoch uint64 `json:"epoch"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<10)).Decode(&req); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		reply(w, sw.BeginCheckpoint(r.Context(), req.Epoch))
	})
	mux.HandleFunc("POST /v1/ports/{name}/freeze", func(w http.ResponseWriter, r *http.Request) {
		reply(w, sw.FreezePort(r.Context(), r.PathValue("name")))
	})
	mux.HandleFunc("POST /v1/ports/{name}/checkpointed", func(w http.ResponseWriter, r *http.Request) {
		reply(w, sw.PortCheckpointed(r.Context(), r.PathValue("name")))
	})
	mux.HandleFunc("POST /v1/checkpoint/end", func(w http.ResponseWriter, r *http.Request) {
		lg, err := sw.EndCheckpoint(r.Context())
		if err != nil {
			reply(w, err)
			return
		}
		var buf bytes.Buffer
		if _, err := lg.WriteTo(&buf); err != nil {
			reply(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(buf.Bytes())
	})
	mux.HandleFunc("POST /v1/restore", func(w http.ResponseWriter, r *http.Request) {
		lg, err := ReadLog(io.LimitReader(r.Body, maxLogBody))
		if err != nil {
			reply(w, err)
			return
		}
		reply(w, sw.Restore(r.Context(), lg))
	})
	mux.HandleFunc("POST /v1/resume", func(w http.ResponseWriter, r *http.Request) {
		reply(w, sw.Resume(r.Context()))
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := sw.Status(r.Context())
		if err != nil {
			reply(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	return mux
}

// errorKinds are the sentinel errors that keep their identity across the
// wire: the handler names the one an error wraps in the Vswitch-Error
// header, and the Client wraps it again.
var errorKinds = []struct {
	name   string
	err    error
	status int
}{
	{"checkpoint", ErrCheckpoint, http.StatusConflict},
	{"unknown-port", ErrUnknownPort, http.StatusNotFound},
	{"corrupt-log", ErrCorruptLog, http.StatusBadRequest},
	{"closed", ErrClosed, http.StatusGone},
	{"in-flight-limit", ErrInFlightLimit, http.StatusInternalServerError},
	{"trunk-gap", ErrTrunkGap, http.StatusInternalServerError},
}

const errorHeader = "Vswitch-Error"

func reply(w http.ResponseWriter, err error) {
	if err == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			w.Header().Set(errorHeader, k.name)
			http.Error(w, err.Error(), k.status)
			return
		}
	}
	http.Error(w, err.Error(), http.StatusInternalServerError)
}

// Client calls a switch's HTTP control API. It implements Checkpointer
// with the Switch's semantics.
type Client struct {
	// Base is the API's base URL, e.g. "http://127.0.0.1:7070".
	Base string
	// HTTP is the client to use; nil means http.DefaultClient. Calls are
	// bounded by their context.
	HTTP *http.Client
}

// NewClient returns a Client for the API at base (e.g.
// "http://127.0.0.1:7070") that uses hc (nil: http.DefaultClient).
func NewClient(base string, hc *http.Client) *Client {
	return &Client{Base: base, HTTP: hc}
}

// NewUnixClient returns a Client for an API served on the unix socket at
// path, as a host agent serves its switches. Every connection dials path;
// the URL's host is ignored.
func NewUnixClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{Base: "http://vswitch", HTTP: &http.Client{Transport: tr}}
}

// CloseIdleConnections closes the client's idle connections (for a
// client from NewUnixClient, the only ones it keeps).
func (c *Client) CloseIdleConnections() {
	if c.HTTP != nil {
		c.HTTP.CloseIdleConnections()
	}
}

// RemoteError is an error reported by the switch.
type RemoteError struct {
	Status int
	Msg    string
	kind   error
}

func (e *RemoteError) Error() string { return fmt.Sprintf("vswitch: remote: %s", e.Msg) }
func (e *RemoteError) Unwrap() error { return e.kind }

func (c *Client) call(ctx context.Context, path string, body []byte) ([]byte, error) {
	return c.do(ctx, http.MethodPost, path, body)
}

func (c *Client) do(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.Base, "/")+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxLogBody))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		e := &RemoteError{Status: resp.StatusCode, Msg: strings.TrimSpace(string(b))}
		name := resp.Header.Get(errorHeader)
		for _, k := range errorKinds {
			if k.name == name {
				e.kind = k.err
			}
		}
		return nil, e
	}
	return b, nil
}

// BeginCheckpoint calls Switch.BeginCheckpoint.
func (c *Client) BeginCheckpoint(ctx context.Context, epoch uint64) error {
	_, err := c.call(ctx, "/v1/checkpoint/begin", fmt.Appendf(nil, `{"epoch":%d}`, epoch))
	return err
}

// FreezePort calls Switch.FreezePort.
func (c *Client) FreezePort(ctx context.Context, name string) error {
	_, err := c.call(ctx, "/v1/ports/"+url.PathEscape(name)+"/freeze", nil)
	return err
}

// PortCheckpointed calls Switch.PortCheckpointed.
func (c *Client) PortCheckpointed(ctx context.Context, name string) error {
	_, err := c.call(ctx, "/v1/ports/"+url.PathEscape(name)+"/checkpointed", nil)
	return err
}

// EndCheckpoint calls Switch.EndCheckpoint; the log is checked on arrival.
func (c *Client) EndCheckpoint(ctx context.Context) (*Log, error) {
	b, err := c.call(ctx, "/v1/checkpoint/end", nil)
	if err != nil {
		return nil, err
	}
	return ReadLog(bytes.NewReader(b))
}

// Restore calls Switch.Restore.
func (c *Client) Restore(ctx context.Context, lg *Log) error {
	var buf bytes.Buffer
	if _, err := lg.WriteTo(&buf); err != nil {
		return err
	}
	_, err := c.call(ctx, "/v1/restore", buf.Bytes())
	return err
}

// Resume calls Switch.Resume.
func (c *Client) Resume(ctx context.Context) error {
	_, err := c.call(ctx, "/v1/resume", nil)
	return err
}

// Status calls Switch.Status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	b, err := c.do(ctx, http.MethodGet, "/v1/status", nil)
	if err != nil {
		return Status{}, err
	}
	var st Status
	if err := json.Unmarshal(b, &st); err != nil {
		return Status{}, fmt.Errorf("vswitch: status: %w", err)
	}
	return st, nil
}
