package blockd

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"stasis/cas"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	Store   WriteStore   // required; delete and list also need a PruneStore
	Keyring *cas.Keyring // verifies tokens; required
	Name    string       // this server's token scope (default "blockd")
	Logger  *slog.Logger // nil: discard
	Now     func() time.Time
	// BatchBytes bounds the encoded bytes of one streamed put batch that is
	// verified and then stored (default 1 MiB). A put request
	// holds at most six buffers of BatchBytes + cas.MaxEncodedSize.
	BatchBytes int
}

// Validate checks the config and fills defaults.
func (c *ServerConfig) Validate() error {
	if c.Store == nil {
		return errors.New("blockd: server needs a Store")
	}
	if c.Keyring == nil {
		return errors.New("blockd: server needs a Keyring")
	}
	if c.Name == "" {
		c.Name = "blockd"
	}
	if len(c.Name) > 255 || strings.ContainsAny(c.Name, " \t\n") {
		return fmt.Errorf("blockd: bad server name %q", c.Name)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.BatchBytes == 0 {
		c.BatchBytes = 1 << 20
	}
	if c.BatchBytes < 0 {
		return fmt.Errorf("blockd: negative BatchBytes %d", c.BatchBytes)
	}
	return nil
}

// Server is the HTTP face of a store. Every /v1/ call needs a token
// ("Authorization: Bearer TOKEN") granting the call's operation for the
// server's name:
//
//	POST /v1/missing     has     ID list in, the absent IDs out (input order)
//	POST /v1/put         put     frames in (streamed), JSON {"stored": N} out
//	GET  /v1/chunks/{id} get     the encoded chunk
//	POST /v1/get         get     ID list in, frames of the stored ones out (input order)
//	POST /v1/delete      delete  ID list in (metad's garbage collector only)
//	GET  /v1/list        delete  listing of every chunk, in ID order
//	GET  /v1/usage       delete  JSON Usage {"chunks", "encoded_bytes"} (admin read, like list)
//	GET  /healthz, GET /metrics  no token
//
// Put is streamed: frames are read in bounded batches (BatchBytes); one
// batch is stored while the next is decoded and re-hashed and the one
// after that is read; the body is never buffered whole. The response comes only once everything
// stored is durable (a badger store syncs once per request; other stores
// once per batch). The rule
// for a refused put: the chunks before the first bad frame are stored (the
// error response says how many, in "stored"); the bad chunk and everything
// after it are not. A chunk whose content does not match its ID is never
// stored. So a request whose first frame is bad changes nothing.
//
// Errors are JSON {"error", "reason", "chunk"?, "stored"?} with status 400
// (bad-frame, bad-request), 401 (token-malformed, token-unknown-key,
// token-forged, token-expired), 403 (token-scope), 404 (not-found), 413
// (too-large), 422 (hash-mismatch, corrupt), 501 (unsupported: the store
// keeps no Usage), 507 (no-space) or 500 (store).
type Server struct {
	cfg   ServerConfig
	store WriteStore
	prune PruneStore // nil if the store cannot delete
	log   *slog.Logger
	m     *metrics
	mux   *http.ServeMux
	// arenas hold the frame data of one put batch (or decode scratch);
	// each has room for BatchBytes plus the largest chunk.
	arenas sync.Pool
}

// NewServer builds a server over cfg.Store.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, store: cfg.Store, log: cfg.Logger, m: newMetrics(cfg.Store), mux: http.NewServeMux()}
	s.prune, _ = cfg.Store.(PruneStore)
	s.arenas.New = func() any {
		b := make([]byte, 0, cfg.BatchBytes+maxFrameHeader+cas.MaxEncodedSize)
		return &b
	}
	s.route("POST /v1/missing", "missing", cas.OpHas, s.handleMissing)
	s.route("POST /v1/put", "put", cas.OpPut, s.handlePut)
	s.route("GET /v1/chunks/{id}", "get", cas.OpGet, s.handleGet)
	s.route("POST /v1/get", "getmany", cas.OpGet, s.handleGetMany)
	s.route("POST /v1/delete", "delete", cas.OpDelete, s.handleDelete)
	s.route("GET /v1/list", "list", cas.OpDelete, s.handleList)
	s.route("GET /v1/usage", "usage", cas.OpDelete, s.handleUsage)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{}))
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// errorResponse is the JSON body of every refusal, and of put results.
type errorResponse struct {
	Error  string       `json:"error,omitempty"`
	Reason string       `json:"reason,omitempty"`
	Chunk  *cas.ChunkID `json:"chunk,omitempty"`
	Stored *int         `json:"stored,omitempty"`
}

// Reasons for refusals that are not about one chunk.
const (
	ReasonBadRequest     = "bad-request"
	ReasonNotFound       = "not-found"
	ReasonNoSpace        = "no-space"
	ReasonStore          = "store"
	ReasonTokenMalformed = "token-malformed"
	ReasonTokenUnknown   = "token-unknown-key"
	ReasonTokenForged    = "token-forged"
	ReasonTokenExpired   = "token-expired"
	ReasonTokenScope     = "token-scope"
	ReasonUnsupported    = "unsupported"
)

// statusWriter records the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type handler func(w http.ResponseWriter, r *http.Request, c cas.Claims)

func (s *Server) route(pattern, name string, op cas.Op, h handler) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			code := sw.code
			if code == 0 {
				code = http.StatusOK
			}
			s.m.latency.WithLabelValues(name, strconv.Itoa(code)).Observe(time.Since(start).Seconds())
		}()
		claims, err := s.authorize(r, op)
		if err != nil {
			// Refused before its body is read: close the connection
			// rather than read (or wait for) a body nobody needs.
			sw.Header().Set("Connection", "close")
			s.fail(sw, r, err, nil)
			return
		}
		h(sw, r, claims)
	})
}

func (s *Server) authorize(r *http.Request, op cas.Op) (cas.Claims, error) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return cas.Claims{}, fmt.Errorf("%w: no bearer token", cas.ErrTokenMalformed)
	}
	return s.cfg.Keyring.Verify(tok, op, s.cfg.Name, s.cfg.Now())
}

// classify maps an error to a status code and reason.
func classify(err error) (int, string) {
	var re *RejectError
	switch {
	case errors.As(err, &re):
		switch re.Reason {
		case ReasonTooLarge:
			return http.StatusRequestEntityTooLarge, re.Reason
		case ReasonBadFrame:
			return http.StatusBadRequest, re.Reason
		}
		return http.StatusUnprocessableEntity, re.Reason
	case errors.Is(err, ErrBadFrame):
		return http.StatusBadRequest, ReasonBadFrame
	case errors.Is(err, cas.ErrTokenMalformed):
		return http.StatusUnauthorized, ReasonTokenMalformed
	case errors.Is(err, cas.ErrTokenUnknownKey):
		return http.StatusUnauthorized, ReasonTokenUnknown
	case errors.Is(err, cas.ErrTokenForged):
		return http.StatusUnauthorized, ReasonTokenForged
	case errors.Is(err, cas.ErrTokenExpired):
		return http.StatusUnauthorized, ReasonTokenExpired
	case errors.Is(err, cas.ErrTokenScope):
		return http.StatusForbidden, ReasonTokenScope
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, ReasonNotFound
	case errors.Is(err, ErrNoSpace), errors.Is(err, syscall.ENOSPC):
		return http.StatusInsufficientStorage, ReasonNoSpace
	case errors.Is(err, errBadRequest):
		return http.StatusBadRequest, ReasonBadRequest
	case errors.Is(err, errors.ErrUnsupported):
		return http.StatusNotImplemented, ReasonUnsupported
	}
	return http.StatusInternalServerError, ReasonStore
}

var errBadRequest = errors.New("bad request")

// fail writes an error response. stored, if not nil, is the number of
// chunks of a put that were stored.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error, stored *int) {
	code, reason := classify(err)
	resp := errorResponse{Error: err.Error(), Reason: reason, Stored: stored}
	var re *RejectError
	if errors.As(err, &re) {
		resp.Chunk = &re.ID
	}
	if code == http.StatusNotFound {
		s.log.Debug("not found", "path", r.URL.Path)
	} else {
		s.m.rejects.WithLabelValues(reason).Inc()
		lvl := slog.LevelWarn
		if code >= 500 {
			lvl = slog.LevelError
		}
		s.log.Log(r.Context(), lvl, "request refused", "path", r.URL.Path, "remote", r.RemoteAddr,
			"reason", reason, "err", err)
	}
	writeJSON(w, code, resp)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func (s *Server) handleMissing(w http.ResponseWriter, r *http.Request, _ cas.Claims) {
	ids, err := readIDs(r.Body)
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: %w", errBadRequest, err), nil)
		return
	}
	missing, err := s.store.Missing(r.Context(), ids)
	if err != nil {
		s.fail(w, r, err, nil)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(appendIDs(make([]byte, 0, len(missing)*cas.IDSize), missing))
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request, _ cas.Claims) {
	id, err := cas.ParseChunkID(r.PathValue("id"))
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: %w", errBadRequest, err), nil)
		return
	}
	data, err := s.store.Get(r.Context(), id)
	if err != nil {
		s.fail(w, r, err, nil)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Write(data)
}

// handleGetMany streams the frames of the stored chunks among the requested
// ones, in request order; absent chunks are skipped. A store that is a
// BatchGetter reads them in batches. A store error after the response has
// started aborts the connection, so the client sees a truncated stream
// rather than a short, well-formed one.
func (s *Server) handleGetMany(w http.ResponseWriter, r *http.Request, _ cas.Claims) {
	ids, err := readIDs(r.Body)
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: %w", errBadRequest, err), nil)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	var buf []byte
	started := false
	var writeErr error
	err = GetMany(r.Context(), s.store, ids, func(id cas.ChunkID, data []byte) error {
		buf = AppendFrame(buf[:0], Chunk{ID: id, Data: data})
		if _, writeErr = w.Write(buf); writeErr != nil {
			return writeErr
		}
		started = true
		return nil
	})
	switch {
	case err == nil, errors.Is(err, ErrNotFound):
		return // absent chunks are skipped
	case writeErr != nil:
		return // client gone
	case !started:
		s.fail(w, r, err, nil)
		return
	}
	s.log.Error("get stream aborted", "err", err)
	panic(http.ErrAbortHandler)
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request, c cas.Claims) {
	if s.prune == nil {
		s.fail(w, r, fmt.Errorf("%w: this store cannot delete", errBadRequest), nil)
		return
	}
	ids, err := readIDs(r.Body)
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: %w", errBadRequest, err), nil)
		return
	}
	if err := s.prune.Delete(r.Context(), ids); err != nil {
		s.fail(w, r, err, nil)
		return
	}
	s.log.Info("deleted chunks", "count", len(ids), "subject", c.Subject)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request, _ cas.Claims) {
	if s.prune == nil {
		s.fail(w, r, fmt.Errorf("%w: this store cannot list", errBadRequest), nil)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	var buf []byte
	started := false
	err := s.prune.List(r.Context(), func(info ChunkInfo) error {
		buf = append(buf, info.ID[:]...)
		buf = binary.AppendUvarint(buf, uint64(info.EncodedSize))
		if len(buf) >= 64<<10 {
			started = true
			_, err := w.Write(buf)
			buf = buf[:0]
			return err
		}
		return nil
	})
	if err == nil {
		_, err = w.Write(buf)
		return
	}
	if !started {
		s.fail(w, r, err, nil)
		return
	}
	s.log.Error("list stream aborted", "err", err)
	panic(http.ErrAbortHandler)
}

// handleUsage answers the store's Usage, or 501 if it keeps none.
func (s *Server) handleUsage(w http.ResponseWriter, r *http.Request, _ cas.Claims) {
	u, err := UsageOf(r.Context(), s.store)
	if err != nil {
		s.fail(w, r, err, nil)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

// handlePut runs a put as three stages on their own goroutines, so that
// one request uses more than one core: the handler reads frames into
// pooled arenas (one per batch of up to BatchBytes), a verifier decodes and
// re-hashes each batch's chunks, and a store writer writes verified
// batches. A batch moves on once the stage before is done with it; each
// channel holds one, so a request holds at most six arenas. The first bad
// chunk ends verification: the chunks before it go on to the store, the
// rest are not stored, and the reader stops. A store failure stops the
// reader too. With a put session (badger, pack) the writer starts a background
// sync after each batch while more are coming (early writeback) and syncs
// once at the end before acknowledging. Arenas go back to the pool once a
// batch is stored or dropped (a store keeps no reference to Data after
// Put).
func (s *Server) handlePut(w http.ResponseWriter, r *http.Request, c cas.Claims) {
	// Answer a refusal while the client may still be sending, without
	// the connection being reset under the response.
	rc := http.NewResponseController(w)
	rc.EnableFullDuplex()

	ctx := r.Context()
	type batch struct {
		chunks []Chunk
		arena  *[]byte
	}
	toVerify := make(chan batch, 1)
	toStore := make(chan batch, 1)
	storeDone := make(chan struct{})
	// stop is closed when verification or the store fails: reading on
	// would be wasted.
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	var readDone atomic.Bool // no batch after the one being stored
	var stored int           // chunks acknowledged; read after storeDone
	var storeErr, verifyErr error

	go func() {
		defer close(toStore)
		scratch := s.getArena() // decode buffer
		defer s.arenas.Put(scratch)
		for b := range toVerify {
			if verifyErr == nil {
				for i, ch := range b.chunks {
					var err error
					if *scratch, err = CheckChunk((*scratch)[:0], ch); err != nil {
						verifyErr = err
						b.chunks = b.chunks[:i] // the valid prefix is stored
						halt()
						break
					}
				}
				if len(b.chunks) > 0 {
					toStore <- b
					continue
				}
			}
			s.arenas.Put(b.arena)
		}
	}()

	// The whole frames before a failure are stored (the rule above), also
	// when the failure is the connection's: net/http cancels the request's
	// context when a body read fails (a client cut off by its read
	// deadline, or gone), which would turn them into a 500 "context
	// canceled". A batch is at most BatchBytes, so this is bounded work.
	storeCtx := context.WithoutCancel(ctx)
	go func() {
		defer close(storeDone)
		// With a put session (badger, pack), batches are written as they
		// come and synced once at the end; otherwise each batch is one Put.
		var sess putSession
		if ss, ok := s.store.(sessionStore); ok {
			if sess, storeErr = ss.beginPut(); storeErr != nil {
				halt()
			}
		}
		written, writtenBytes := 0, 0
		for b := range toStore {
			if storeErr == nil {
				var err error
				if sess != nil {
					err = sess.write(storeCtx, b.chunks)
				} else {
					err = s.store.Put(storeCtx, b.chunks)
				}
				if err != nil {
					storeErr = err
					halt()
				} else {
					written += len(b.chunks)
					for _, c := range b.chunks {
						writtenBytes += len(c.Data)
					}
					if sess != nil && !readDone.Load() {
						sess.writeback()
					}
				}
			}
			s.arenas.Put(b.arena)
		}
		if sess != nil {
			// Acknowledge what was written (the valid prefix, even
			// when a later batch failed) only once it is synced.
			if written > 0 {
				if err := sess.commit(); err != nil {
					storeErr, written, writtenBytes = err, 0, 0
				}
			}
			sess.close()
		}
		stored = written
		s.m.putChunks.Add(float64(written))
		s.m.putBytes.Add(float64(writtenBytes))
	}()

	// Frames are read in large reads straight into the batch's arena and
	// parsed in place: a chunk's Data is a slice of the arena, so no
	// byte is copied after the socket read except the few read past the
	// end of a batch, which move to the next arena. Reads stop at the end
	// of the frame that crosses BatchBytes, and the arena has room for
	// that whole frame.
	cur := batch{arena: s.getArena()}
	a := *cur.arena // bytes read into the current arena
	p := 0          // start of the first unparsed frame in a
	eof := false
	var readErr error
	for readErr == nil {
		select {
		case <-stop:
			readErr = errStop
			continue
		default:
		}
		id, n, hdr, ok, err := parseFrameHeader(a[p:])
		if err != nil {
			readErr = err
			break
		}
		if ok && p+hdr+n <= len(a) {
			end := p + hdr + n
			cur.chunks = append(cur.chunks, Chunk{ID: id, Data: a[p+hdr : end : end]})
			p = end
			if p >= s.cfg.BatchBytes {
				next := s.getArena()
				*next = append(*next, a[p:]...)
				*cur.arena = a[:p]
				toVerify <- cur
				cur = batch{arena: next}
				a, p = *next, 0
			}
			continue
		}
		if eof {
			switch {
			case p == len(a): // a clean end
			case ok:
				readErr = fmt.Errorf("%w: chunk %s: truncated after %d of %d bytes: %w",
					ErrBadFrame, id.Short(), len(a)-p-hdr, n, io.ErrUnexpectedEOF)
			default:
				readErr = fmt.Errorf("%w: truncated frame header (%d bytes): %w", ErrBadFrame, len(a)-p, io.ErrUnexpectedEOF)
			}
			break
		}
		end := max(s.cfg.BatchBytes, p+maxFrameHeader)
		if ok {
			end = max(end, p+hdr+n)
		}
		end = min(end, cap(a))
		if end <= len(a) { // cannot happen: the arena holds a batch plus a frame
			readErr = fmt.Errorf("blockd: put reader stuck at %d of %d bytes", len(a), cap(a))
			break
		}
		k, err := r.Body.Read(a[len(a):end])
		a = a[:len(a)+k]
		if err == io.EOF {
			eof = true
		} else if err != nil {
			readErr = fmt.Errorf("%w: reading frames: %w", ErrBadFrame, err)
		}
	}
	// The frames before a bad one are whole: verify and store them too.
	readDone.Store(true)
	*cur.arena = a[:p]
	if len(cur.chunks) > 0 {
		toVerify <- cur
	} else {
		s.arenas.Put(cur.arena)
	}
	close(toVerify)
	<-storeDone
	// The earliest failure is reported: a store error (it stops
	// everything), else a chunk that did not verify (it precedes any
	// frame the reader had trouble with), else the reader's.
	reqErr := readErr
	switch {
	case storeErr != nil:
		reqErr = storeErr
	case verifyErr != nil:
		reqErr = verifyErr
	}
	if reqErr != nil {
		// The rest of the body is not read to its end (below, at most
		// a bound): the connection cannot carry another request.
		w.Header().Set("Connection", "close")
		s.fail(w, r, reqErr, &stored)
		// Send the refusal now, then read on (up to a bound) while the
		// client, still sending, notices it and stops: it reads the
		// refusal instead of a reset connection.
		rc.Flush()
		io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
		return
	}
	s.log.Debug("put", "chunks", stored, "subject", c.Subject)
	writeJSON(w, http.StatusOK, errorResponse{Stored: &stored})
}

// errStop ends reading a put whose store has failed; the store's error is
// the one reported.
var errStop = errors.New("stopped after a store error")

// getArena returns an empty arena that holds at least one batch.
func (s *Server) getArena() *[]byte {
	a := s.arenas.Get().(*[]byte)
	*a = (*a)[:0]
	return a
}
