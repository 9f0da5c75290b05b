// Package serve holds what the stasis daemons (blockd, metad) share once
// their stores are open: serving an HTTP handler on a listener until the
// context ends, bounding what one client can hold of the daemon (Limits),
// publishing the bound address, and shutting down gracefully.
package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ShutdownTimeout is how long in-flight requests get to finish once the
// daemon is told to stop.
const ShutdownTimeout = 30 * time.Second

// Options says what HTTP does around serving.
type Options struct {
	// AddrFile, when set, receives the bound address ("host:port\n"),
	// written atomically before serving starts, so a caller that asked for
	// port 0 can learn the port.
	AddrFile string
	// Listening is called with the bound address just before serving
	// starts (the daemon logs its own start line there).
	Listening func(addr string)
	// Close releases the daemon's store after the HTTP server has shut down.
	Close func() error
	// Limits bound what clients can hold; zero fields take the defaults.
	Limits Limits
}

// Server serves one handler under Limits. HTTP is New + Serve.
type Server struct {
	log *slog.Logger
	hs  *http.Server
	ln  *limitListener
	o   Options

	bodyTimeouts atomic.Int64
	shedRequests atomic.Int64
}

// ConnStats is what a Server holds right now and has refused so far.
type ConnStats struct {
	Open         int   // connections admitted and not yet closed
	Shed         int   // connections over a cap, answered 503 and closed
	ShedTotal    int64 // connections over a cap since start (shed or dropped)
	ShedRequests int64 // requests answered 503 because their connection was over a cap
	BodyTimeouts int64 // request bodies cut off by the read deadline
}

// New wraps ln in o.Limits and prepares to serve h on it. It returns an
// error if the limits are invalid.
func New(log *slog.Logger, ln net.Listener, h http.Handler, o Options) (*Server, error) {
	if err := o.Limits.Validate(); err != nil {
		return nil, err
	}
	l := o.Limits
	s := &Server{log: log, o: o, ln: newLimitListener(ln, l)}
	s.hs = &http.Server{
		Handler:           s.wrap(h),
		ReadHeaderTimeout: positive(l.ReadHeaderTimeout),
		IdleTimeout:       positive(l.IdleTimeout),
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	return s, nil
}

// positive maps the "negative disables" convention of Limits onto
// net/http's "zero disables".
func positive(d time.Duration) time.Duration { return max(d, 0) }

// HTTP serves h on ln until ctx is done, then shuts down gracefully
// (in-flight requests get ShutdownTimeout) and calls o.Close. It returns
// early with an error if serving fails.
func HTTP(ctx context.Context, log *slog.Logger, ln net.Listener, h http.Handler, o Options) error {
	s, err := New(log, ln, h, o)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Conns reports the server's connections and refusals.
func (s *Server) Conns() ConnStats {
	open, shed, shedTotal := s.ln.stats()
	return ConnStats{Open: open, Shed: shed, ShedTotal: shedTotal,
		ShedRequests: s.shedRequests.Load(), BodyTimeouts: s.bodyTimeouts.Load()}
}

// Serve serves until ctx is done; see HTTP.
func (s *Server) Serve(ctx context.Context) error {
	o := s.o
	addr := s.Addr()
	if o.AddrFile != "" {
		if err := WriteFileAtomic(o.AddrFile, []byte(addr+"\n")); err != nil {
			return fmt.Errorf("--addr-file: %w", err)
		}
	}
	if o.Listening != nil {
		o.Listening(addr)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.hs.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := s.hs.Shutdown(sctx); err != nil {
		s.log.Warn("shutdown incomplete", "err", err)
	}
	if o.Close != nil {
		if err := o.Close(); err != nil {
			return fmt.Errorf("closing store: %w", err)
		}
	}
	s.log.Info("stopped")
	return nil
}

type connKey struct{}

// wrap sheds requests of connections over a cap and puts a read deadline
// on every request body.
func (s *Server) wrap(h http.Handler) http.Handler {
	l := s.o.Limits
	retryAfter := strconv.Itoa(int(max(1, (l.RetryAfter+time.Second-1)/time.Second)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(connKey{}).(*limitedConn); ok && c.shed {
			s.shedRequests.Add(1)
			w.Header().Set("Retry-After", retryAfter)
			w.Header().Set("Connection", "close")
			http.Error(w, "server busy: too many connections", http.StatusServiceUnavailable)
			// Do not wait for a body (see deadlineBody.finish).
			http.NewResponseController(w).SetReadDeadline(time.Unix(1, 0))
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			b := &deadlineBody{s: s, rc: http.NewResponseController(w), body: r.Body,
				start: time.Now(), idle: l.ReadTimeout, rate: l.MinReadRate}
			b.arm()
			// A shallow copy carries the wrapped body: net/http checks the
			// type of the original request's body after the handler to
			// learn whether the body was read to its end, and closes the
			// connection if not.
			r = r.WithContext(r.Context())
			r.Body = b
			defer b.finish(w, r)
		}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody keeps a read deadline on the connection while a request
// body is read: before each read it is now + idle (per progress), and
// never later than start + idle + bytes read so far / rate (overall: the
// body must keep arriving at rate on average). At the end of the body the
// deadline is cleared, so that net/http's background read of the idle
// connection does not time out while the handler works.
type deadlineBody struct {
	s     *Server
	rc    *http.ResponseController
	body  io.ReadCloser
	start time.Time
	idle  time.Duration
	rate  int64 // bytes per second; <= 0: no overall bound
	n     int64
	done  bool
	// timedOut is set when a read hit the deadline; read by the wrapper
	// once the handler has returned.
	timedOut bool
}

func (b *deadlineBody) arm() {
	if b.idle <= 0 {
		return
	}
	d := time.Now().Add(b.idle)
	if b.rate > 0 {
		overall := b.start.Add(b.idle + time.Duration(float64(b.n)/float64(b.rate)*float64(time.Second)))
		if overall.Before(d) {
			d = overall
		}
	}
	b.rc.SetReadDeadline(d)
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	if b.done {
		return b.body.Read(p)
	}
	b.arm()
	n, err := b.body.Read(p)
	b.n += int64(n)
	if err != nil {
		b.done = true
		if err == io.EOF {
			b.rc.SetReadDeadline(time.Time{})
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			b.timedOut = true
			b.s.bodyTimeouts.Add(1)
		}
	}
	return n, err
}

func (b *deadlineBody) Close() error { return b.body.Close() }

// finish runs once the handler has returned. A body the handler did not
// read to its end is not waited for: net/http would read up to 256 KiB of
// it (to reuse the connection) for as long as the client takes, so a
// refusal sent before the body (no token, 503) would wait on a stalled
// client. The read deadline is moved to the past, which makes net/http
// close the connection instead, unless what remains is already buffered.
// A body cut off by its deadline also closes the connection: a handler in
// full-duplex mode (blockd's put) leaves net/http unaware that the body
// was cut short, and it would wait for a next request.
func (b *deadlineBody) finish(w http.ResponseWriter, r *http.Request) {
	switch {
	case b.timedOut:
		http.NewResponseController(w).Flush()
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			c.Close()
		}
	case !b.done:
		b.rc.SetReadDeadline(time.Unix(1, 0))
	}
}

// limitListener admits at most MaxConns connections, MaxConnsPerIP from
// one address. A connection over a cap is still accepted, so that its
// first request can be answered 503 with Retry-After, but at most shedSlack
// such connections are kept at once; beyond that they are closed at accept.
type limitListener struct {
	net.Listener
	l Limits

	mu        sync.Mutex
	open      int
	perIP     map[string]int
	shed      int
	shedTotal int64
}

// shedSlack bounds connections kept open only to be answered 503.
const shedSlack = 64

func newLimitListener(ln net.Listener, l Limits) *limitListener {
	return &limitListener{Listener: ln, l: l, perIP: map[string]int{}}
}

func (ln *limitListener) stats() (open, shed int, shedTotal int64) {
	ln.mu.Lock()
	defer ln.mu.Unlock()
	return ln.open, ln.shed, ln.shedTotal
}

func (ln *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := c.RemoteAddr().String()
		if host, _, err := net.SplitHostPort(ip); err == nil {
			ip = host
		}
		ln.mu.Lock()
		over := ln.l.MaxConns > 0 && ln.open >= ln.l.MaxConns ||
			ln.l.MaxConnsPerIP > 0 && ln.perIP[ip] >= ln.l.MaxConnsPerIP
		if !over {
			ln.open++
			ln.perIP[ip]++
			ln.mu.Unlock()
			return &limitedConn{Conn: c, ln: ln, ip: ip}, nil
		}
		ln.shedTotal++
		if ln.shed >= shedSlack {
			ln.mu.Unlock()
			c.Close()
			continue
		}
		ln.shed++
		ln.mu.Unlock()
		return &limitedConn{Conn: c, ln: ln, ip: ip, shed: true}, nil
	}
}

type limitedConn struct {
	net.Conn
	ln   *limitListener
	ip   string
	shed bool
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() {
		ln := c.ln
		ln.mu.Lock()
		defer ln.mu.Unlock()
		if c.shed {
			ln.shed--
			return
		}
		ln.open--
		if ln.perIP[c.ip]--; ln.perIP[c.ip] == 0 {
			delete(ln.perIP, c.ip)
		}
	})
	return c.Conn.Close()
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory and a rename, so readers never see a partial file.
func WriteFileAtomic(path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
