package metad

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"stasis/cas"
)

// AuthScope is the token scope of metad's own API: every call except
// /healthz and /metrics needs a bearer token with cas.OpAdmin for it.
const AuthScope = "metad"

// MaxRequestBody bounds a request body. A commit's manifest costs about
// 110 bytes of JSON per extent: 256 MiB carries ~2.4M extents (9 GiB of
// non-zero data at 4 KiB chunks, 150 GiB at 64 KiB). metad itself commits
// manifests of any size (in batches); this is the daemon's bound on one
// request's memory.
const MaxRequestBody = 256 << 20

// ServerConfig configures the HTTP adapter.
type ServerConfig struct {
	// Keyring verifies bearer tokens. Required.
	Keyring *cas.Keyring
	// Logger; nil discards.
	Logger *slog.Logger
	// Registry receives the server's metrics; nil makes a private one that
	// also holds Go and process collectors. /metrics serves it.
	Registry *prometheus.Registry
	// Now is the clock for token expiry; nil means time.Now.
	Now func() time.Time
}

// Server is the HTTP/JSON adapter over an API (normally a *Service).
type Server struct {
	api     API
	cfg     ServerConfig
	log     *slog.Logger
	mux     *http.ServeMux
	reqs    *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

// gcer is implemented by *Service; the server exposes it as /v1/gc.
type gcer interface {
	GC(ctx context.Context) (int, error)
	Sweep(ctx context.Context) (int, error)
}

// NewServer builds the HTTP handler.
func NewServer(api API, cfg ServerConfig) (*Server, error) {
	if api == nil || cfg.Keyring == nil {
		return nil, fmt.Errorf("%w: server needs an API and a Keyring", ErrInvalid)
	}
	s := &Server{api: api, cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.cfg.Now == nil {
		s.cfg.Now = time.Now
	}
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metad_requests_total", Help: "API requests by method and result code.",
	}, []string{"method", "code"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "metad_request_seconds", Help: "API request latency by method.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
	}, []string{"method"})
	if err := reg.Register(s.reqs); err != nil {
		return nil, err
	}
	if err := reg.Register(s.latency); err != nil {
		return nil, err
	}
	if st, ok := api.(interface {
		Stats(context.Context) (Stats, error)
	}); ok {
		// One Stats call (which asks every blockd for its usage) serves
		// all the gauges of a scrape.
		var memo struct {
			sync.Mutex
			at  time.Time
			v   Stats
			err error
		}
		stats := func() (Stats, error) {
			memo.Lock()
			defer memo.Unlock()
			if !memo.at.IsZero() && time.Since(memo.at) < time.Second {
				return memo.v, memo.err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			memo.v, memo.err = st.Stats(ctx)
			memo.at = time.Now()
			return memo.v, memo.err
		}
		gauge := func(name, help string, f func(Stats) uint64) {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
				v, err := stats()
				if err != nil {
					return -1
				}
				return float64(f(v))
			}))
		}
		gauge("metad_inodes", "Live inodes.", func(v Stats) uint64 { return v.Inodes })
		gauge("metad_logical_bytes", "Sum of live file sizes.", func(v Stats) uint64 { return v.LogicalBytes })
		gauge("metad_chunks", "Distinct referenced chunks.", func(v Stats) uint64 { return v.Chunks })
		gauge("metad_stored_raw_bytes", "Raw bytes of distinct referenced chunks.", func(v Stats) uint64 { return v.StoredRaw })
		gauge("metad_snapshots", "Snapshots.", func(v Stats) uint64 { return v.Snapshots })
		gauge("metad_stored_encoded_bytes", "Encoded bytes the blockd servers hold (including garbage not yet collected).", func(v Stats) uint64 { return v.StoredEncoded })
		gauge("metad_block_chunks", "Chunks the blockd servers hold.", func(v Stats) uint64 { return v.BlockChunks })
		gauge("metad_blocks_unreported", "blockd servers whose usage the last stats lacked.", func(v Stats) uint64 { return uint64(v.BlocksUnreported) })
	}
	if sv, ok := api.(interface{ Store() Store }); ok {
		if ss, ok := sv.Store().(Statser); ok {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "metad_store_syncs_total", Help: "Disk syncs of the metadata store (badger sync mode commits).",
			}, func() float64 { return float64(ss.StoreStats().Syncs) }))
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "metad_store_unsynced", Help: "1 while committed transactions wait for a disk sync (badger sync mode commits).",
			}, func() float64 {
				if ss.StoreStats().Unsynced {
					return 1
				}
				return 0
			}))
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "metad_store_retries_total", Help: "Store transactions run again after a conflict or serialization failure.",
			}, func() float64 { return float64(ss.StoreStats().Retries) }))
		}
	}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s.routes()
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// handle registers POST /v1/<method> decoding Req and encoding the result.
func handle[Req any](s *Server, method string, fn func(ctx context.Context, req *Req) (any, error)) {
	s.mux.HandleFunc("POST /v1/"+method, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		code := "ok"
		defer func() {
			s.reqs.WithLabelValues(method, code).Inc()
			s.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
		}()
		fail := func(err error) {
			var status int
			code, status = codeOf(err)
			if status >= 500 {
				s.log.Error("request failed", "method", method, "err", err)
			} else {
				s.log.Debug("request refused", "method", method, "code", code, "err", err)
			}
			writeJSON(w, status, errorBody{Error: err.Error(), Code: code})
		}
		if err := s.authorize(r); err != nil {
			// Refused before its body is read: close the connection
			// rather than read (or wait for) a body nobody needs.
			w.Header().Set("Connection", "close")
			fail(fmt.Errorf("%w: %v", ErrUnauthorized, err))
			return
		}
		req := new(Req)
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRequestBody))
		if err != nil {
			fail(fmt.Errorf("%w: reading body: %v", ErrInvalid, err))
			return
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(req); err != nil {
			fail(fmt.Errorf("%w: malformed JSON: %v", ErrInvalid, err))
			return
		}
		if dec.More() {
			fail(fmt.Errorf("%w: trailing data after the JSON body", ErrInvalid))
			return
		}
		resp, err := fn(r.Context(), req)
		if err != nil {
			fail(err)
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

func (s *Server) authorize(r *http.Request) error {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return errors.New("missing bearer token")
	}
	_, err := s.cfg.Keyring.Verify(tok, cas.OpAdmin, AuthScope, s.cfg.Now())
	return err
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encoding response","code":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func (s *Server) routes() {
	a := s.api
	handle(s, "lookup", func(ctx context.Context, r *lookupReq) (any, error) { return a.Lookup(ctx, r.Parent, r.Name) })
	handle(s, "getattr", func(ctx context.Context, r *nodeReq) (any, error) { return a.GetAttr(ctx, r.Node) })
	handle(s, "setattr", func(ctx context.Context, r *setAttrReq) (any, error) { return a.SetAttr(ctx, r.Ino, r.Attr) })
	handle(s, "create", func(ctx context.Context, r *CreateRequest) (any, error) { return a.Create(ctx, *r) })
	handle(s, "readlink", func(ctx context.Context, r *nodeReq) (any, error) {
		t, err := a.Readlink(ctx, r.Node)
		return readlinkResp{t}, err
	})
	handle(s, "link", func(ctx context.Context, r *linkReq) (any, error) { return a.Link(ctx, r.Ino, r.NewParent, r.NewName) })
	handle(s, "unlink", func(ctx context.Context, r *entryReq) (any, error) { return empty{}, a.Unlink(ctx, r.Parent, r.Name) })
	handle(s, "rmdir", func(ctx context.Context, r *entryReq) (any, error) { return empty{}, a.Rmdir(ctx, r.Parent, r.Name) })
	handle(s, "rename", func(ctx context.Context, r *renameReq) (any, error) {
		return empty{}, a.Rename(ctx, r.OldParent, r.OldName, r.NewParent, r.NewName, r.Flags)
	})
	handle(s, "readdir", func(ctx context.Context, r *readDirReq) (any, error) {
		e, err := a.ReadDir(ctx, r.Dir, r.After, r.Limit)
		if e == nil {
			e = []DirEntry{}
		}
		return readDirResp{e}, err
	})
	handle(s, "getxattr", func(ctx context.Context, r *xattrReq) (any, error) {
		v, err := a.GetXattr(ctx, r.Node, r.Name)
		return xattrResp{v}, err
	})
	handle(s, "listxattr", func(ctx context.Context, r *nodeReq) (any, error) {
		n, err := a.ListXattr(ctx, r.Node)
		if n == nil {
			n = []string{}
		}
		return listXattrResp{n}, err
	})
	handle(s, "setxattr", func(ctx context.Context, r *setXattrReq) (any, error) {
		return empty{}, a.SetXattr(ctx, r.Ino, r.Name, r.Value, r.Flags)
	})
	handle(s, "removexattr", func(ctx context.Context, r *removeXattrReq) (any, error) {
		return empty{}, a.RemoveXattr(ctx, r.Ino, r.Name)
	})
	handle(s, "open", func(ctx context.Context, r *inoReq) (any, error) { return empty{}, a.Open(ctx, r.Ino) })
	handle(s, "release", func(ctx context.Context, r *inoReq) (any, error) { return empty{}, a.Release(ctx, r.Ino) })
	handle(s, "readplan", func(ctx context.Context, r *nodeReq) (any, error) { return a.ReadPlan(ctx, r.Node) })
	handle(s, "prepare", func(ctx context.Context, r *prepareReq) (any, error) { return a.PrepareUpload(ctx, r.IDs) })
	handle(s, "commit", func(ctx context.Context, r *CommitRequest) (any, error) { return a.Commit(ctx, *r) })
	handle(s, "snapshot/create", func(ctx context.Context, r *snapReq) (any, error) { return a.CreateSnapshot(ctx, r.Dir, r.Name) })
	handle(s, "snapshot/list", func(ctx context.Context, r *listSnapReq) (any, error) {
		l, err := a.ListSnapshots(ctx, r.Dir)
		return listSnapResp{l}, err
	})
	handle(s, "snapshot/delete", func(ctx context.Context, r *snapReq) (any, error) {
		return empty{}, a.DeleteSnapshot(ctx, r.Dir, r.Name)
	})
	handle(s, "stats", func(ctx context.Context, r *empty) (any, error) { return a.Stats(ctx) })
	handle(s, "sync", func(ctx context.Context, r *empty) (any, error) { return empty{}, a.Sync(ctx) })
	if g, ok := a.(gcer); ok {
		handle(s, "gc", func(ctx context.Context, r *gcReq) (any, error) {
			var resp gcResp
			var err error
			if resp.Deleted, err = g.GC(ctx); err != nil || !r.Sweep {
				return resp, err
			}
			resp.Swept, err = g.Sweep(ctx)
			return resp, err
		})
	}
}
