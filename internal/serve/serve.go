// Package serve holds what the stasis daemons (blockd, metad) share once
// their stores are open: serving an HTTP handler on a listener until the
// context ends, publishing the bound address, and shutting down gracefully.
package serve

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
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
}

// HTTP serves h on ln until ctx is done, then shuts down gracefully
// (in-flight requests get ShutdownTimeout) and calls o.Close. It returns
// early with an error if serving fails.
func HTTP(ctx context.Context, log *slog.Logger, ln net.Listener, h http.Handler, o Options) error {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	addr := ln.Addr().String()
	if o.AddrFile != "" {
		if err := WriteFileAtomic(o.AddrFile, []byte(addr+"\n")); err != nil {
			return fmt.Errorf("--addr-file: %w", err)
		}
	}
	if o.Listening != nil {
		o.Listening(addr)
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("shutdown incomplete", "err", err)
	}
	if o.Close != nil {
		if err := o.Close(); err != nil {
			return fmt.Errorf("closing store: %w", err)
		}
	}
	log.Info("stopped")
	return nil
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
