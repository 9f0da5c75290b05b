package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"stasis/experiment"
)

// The agent's HTTP API (served on a unix socket by `stasis agent`) is
// experiment.Host over JSON:
//
//	GET  /healthz
//	GET  /metrics                                  Prometheus
//	GET  /v1/host                                  {"name": ...}
//	GET  /v1/experiments                           [{"project","name"}...]
//	POST /v1/experiments/{project}/{name}/{op}     op: start connect preflight freeze cut
//	                                               end save resume destroy restore continue status
//
// Errors are JSON {"error", "step", "node", "host"} with status 409 for a
// failed step and 400 for a bad request; a StepError survives the trip.
// save streams newline-delimited JSON: progress lines, then the result.

// apiError is an error on the wire.
type apiError struct {
	Error string `json:"error"`
	Step  string `json:"step,omitempty"`
	Node  string `json:"node,omitempty"`
	Host  string `json:"host,omitempty"`
}

func toAPIError(err error) apiError {
	var se *experiment.StepError
	if errors.As(err, &se) {
		return apiError{Error: se.Err.Error(), Step: se.Step, Node: se.Node, Host: se.Host}
	}
	return apiError{Error: err.Error()}
}

func (e apiError) err() error {
	if e.Step != "" {
		return &experiment.StepError{Step: e.Step, Node: e.Node, Host: e.Host, Err: errors.New(e.Error)}
	}
	return errors.New(e.Error)
}

type startResp struct {
	Trunk string `json:"trunk"`
}

type connectReq struct {
	Peers map[string]string `json:"peers"`
}

type freezeReq struct {
	Epoch uint64 `json:"epoch"`
}

type endResp struct {
	Log []byte `json:"log"`
}

type saveReq struct {
	Dir    string    `json:"dir"`
	Paused time.Time `json:"paused"`
}

// saveLine is one line of save's streamed answer.
type saveLine struct {
	Progress *progressMsg           `json:"progress,omitempty"`
	Nodes    []experiment.NodeSaved `json:"nodes,omitempty"`
	Err      *apiError              `json:"err,omitempty"`
	Done     bool                   `json:"done,omitempty"`
}

type progressMsg struct {
	Node  string `json:"node"`
	Phase string `json:"phase"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
}

type metrics struct {
	reg  *prometheus.Registry
	ops  *prometheus.CounterVec
	dur  *prometheus.HistogramVec
	exps prometheus.GaugeFunc
}

// NewHandler serves a's API.
func NewHandler(a *Agent) http.Handler {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.ops = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stasis_agent_operations_total", Help: "Experiment operations by op and result."}, []string{"op", "result"})
	m.dur = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "stasis_agent_operation_seconds", Help: "Experiment operation durations.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}, []string{"op"})
	m.exps = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "stasis_agent_experiments", Help: "Experiments with a part on this host."},
		func() float64 { return float64(len(a.Experiments())) })
	m.reg.MustRegister(m.ops, m.dur, m.exps, prometheus.NewGoCollector())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/host", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"name": a.Name()})
	})
	mux.HandleFunc("GET /v1/experiments", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Experiments())
	})
	mux.HandleFunc("POST /v1/experiments/{project}/{name}/{op}", func(w http.ResponseWriter, r *http.Request) {
		k := experiment.Key{Project: r.PathValue("project"), Name: r.PathValue("name")}
		op := r.PathValue("op")
		t0 := time.Now()
		err := serveOp(r.Context(), a, k, op, w, r)
		result := "ok"
		if err != nil {
			result = "error"
		}
		m.ops.WithLabelValues(op, result).Inc()
		m.dur.WithLabelValues(op).Observe(time.Since(t0).Seconds())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad request body: %w", err)
	}
	return nil
}

// serveOp runs one operation and writes its answer; it returns the
// operation's error for the metrics.
func serveOp(ctx context.Context, a *Agent, k experiment.Key, op string, w http.ResponseWriter, r *http.Request) error {
	reply := func(v any, err error) error {
		if err != nil {
			writeJSON(w, http.StatusConflict, toAPIError(err))
			return err
		}
		if v == nil {
			v = struct{}{}
		}
		writeJSON(w, http.StatusOK, v)
		return nil
	}
	bad := func(err error) error {
		writeJSON(w, http.StatusBadRequest, apiError{Error: err.Error()})
		return err
	}
	switch op {
	case "start":
		var req experiment.StartRequest
		if err := decode(r, &req); err != nil {
			return bad(err)
		}
		req.Key = k
		t, err := a.Start(ctx, req)
		return reply(startResp{t}, err)
	case "restore":
		var req experiment.RestoreRequest
		if err := decode(r, &req); err != nil {
			return bad(err)
		}
		req.Key = k
		t, err := a.Restore(ctx, req)
		return reply(startResp{t}, err)
	case "connect":
		var req connectReq
		if err := decode(r, &req); err != nil {
			return bad(err)
		}
		return reply(nil, a.Connect(ctx, k, req.Peers))
	case "freeze":
		var req freezeReq
		if err := decode(r, &req); err != nil {
			return bad(err)
		}
		return reply(nil, a.Freeze(ctx, k, req.Epoch))
	case "end":
		lg, err := a.EndCheckpoint(ctx, k)
		return reply(endResp{lg}, err)
	case "save":
		var req saveReq
		if err := decode(r, &req); err != nil {
			return bad(err)
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		enc := json.NewEncoder(w)
		lines := make(chan saveLine, 64)
		done := make(chan struct{})
		go func() {
			defer close(done)
			last := time.Time{}
			for l := range lines {
				// Progress at most every 100 ms per stream; results always.
				if l.Progress != nil && time.Since(last) < 100*time.Millisecond {
					continue
				}
				last = time.Now()
				enc.Encode(l)
				rc.Flush()
			}
		}()
		nodes, err := a.Save(ctx, k, req.Dir, req.Paused, func(node, phase string, d, t int64) {
			select {
			case lines <- saveLine{Progress: &progressMsg{node, phase, d, t}}:
			default: // a slow reader loses progress lines, never results
			}
		})
		fin := saveLine{Nodes: nodes, Done: true}
		if err != nil {
			e := toAPIError(err)
			fin.Err = &e
		}
		lines <- fin
		close(lines)
		<-done
		return err
	case "status":
		st, err := a.Status(ctx, k)
		return reply(st, err)
	case "preflight":
		return reply(nil, a.Preflight(ctx, k))
	case "cut":
		return reply(nil, a.Cut(ctx, k))
	case "resume":
		return reply(nil, a.Resume(ctx, k))
	case "destroy":
		return reply(nil, a.Destroy(ctx, k))
	case "continue":
		return reply(nil, a.Continue(ctx, k))
	default:
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("unknown operation %q", op)})
		return errors.New("unknown operation")
	}
}

// Client is an agent reached over its HTTP API; it implements
// experiment.Host.
type Client struct {
	name string
	base string
	hc   *http.Client
}

var _ experiment.Host = (*Client)(nil)

// Dial connects to the agent serving on the unix socket path and asks its
// name.
func Dial(ctx context.Context, path string) (*Client, error) {
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	c := &Client{base: "http://agent", hc: hc}
	var h struct {
		Name string `json:"name"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/host", nil, &h); err != nil {
		return nil, fmt.Errorf("agent on %s: %w (is `stasis agent` running there?)", path, err)
	}
	c.name = h.Name
	return c, nil
}

// Name is the agent's host name.
func (c *Client) Name() string { return c.name }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return readReply(resp, out)
}

func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return c.hc.Do(req)
}

func readReply(resp *http.Response, out any) error {
	if resp.StatusCode != http.StatusOK {
		var e apiError
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			return fmt.Errorf("agent: %s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		return e.err()
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (c *Client) op(ctx context.Context, k experiment.Key, op string, in, out any) error {
	return c.do(ctx, http.MethodPost, "/v1/experiments/"+k.Project+"/"+k.Name+"/"+op, in, out)
}

func (c *Client) Start(ctx context.Context, req experiment.StartRequest) (string, error) {
	var r startResp
	err := c.op(ctx, req.Key, "start", req, &r)
	return r.Trunk, err
}

func (c *Client) Connect(ctx context.Context, k experiment.Key, peers map[string]string) error {
	return c.op(ctx, k, "connect", connectReq{peers}, nil)
}

func (c *Client) Preflight(ctx context.Context, k experiment.Key) error {
	return c.op(ctx, k, "preflight", nil, nil)
}

func (c *Client) Freeze(ctx context.Context, k experiment.Key, epoch uint64) error {
	return c.op(ctx, k, "freeze", freezeReq{epoch}, nil)
}

func (c *Client) Cut(ctx context.Context, k experiment.Key) error {
	return c.op(ctx, k, "cut", nil, nil)
}

func (c *Client) EndCheckpoint(ctx context.Context, k experiment.Key) ([]byte, error) {
	var r endResp
	err := c.op(ctx, k, "end", nil, &r)
	return r.Log, err
}

// Save streams the agent's progress to p and returns its result.
func (c *Client) Save(ctx context.Context, k experiment.Key, dir string, paused time.Time, p experiment.ProgressFunc) ([]experiment.NodeSaved, error) {
	resp, err := c.send(ctx, http.MethodPost, "/v1/experiments/"+k.Project+"/"+k.Name+"/save", saveReq{dir, paused})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, readReply(resp, nil)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var l saveLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return nil, fmt.Errorf("agent %s: bad save stream: %w", c.name, err)
		}
		if l.Progress != nil && p != nil {
			p(l.Progress.Node, l.Progress.Phase, l.Progress.Done, l.Progress.Total)
		}
		if l.Done {
			if l.Err != nil {
				return l.Nodes, l.Err.err()
			}
			return l.Nodes, nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("agent %s: save: %w", c.name, err)
	}
	return nil, fmt.Errorf("agent %s: save: the answer ended before the result (did the agent die?)", c.name)
}

func (c *Client) Resume(ctx context.Context, k experiment.Key) error {
	return c.op(ctx, k, "resume", nil, nil)
}

func (c *Client) Destroy(ctx context.Context, k experiment.Key) error {
	return c.op(ctx, k, "destroy", nil, nil)
}

func (c *Client) Restore(ctx context.Context, req experiment.RestoreRequest) (string, error) {
	var r startResp
	err := c.op(ctx, req.Key, "restore", req, &r)
	return r.Trunk, err
}

func (c *Client) Continue(ctx context.Context, k experiment.Key) error {
	return c.op(ctx, k, "continue", nil, nil)
}

func (c *Client) Status(ctx context.Context, k experiment.Key) ([]experiment.NodeStatus, error) {
	var st []experiment.NodeStatus
	err := c.op(ctx, k, "status", nil, &st)
	return st, err
}

// Serve serves a's API on the unix socket path (mode 0600: only its owner
// may drive the agent) until ctx ends.
func Serve(ctx context.Context, a *Agent, path string) error {
	ln, err := listenUnix(path)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: NewHandler(a), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
