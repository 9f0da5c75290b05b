// Command metad is the stasis metadata daemon: namespace, file manifests,
// snapshots, chunk reference counts and garbage collection, and the tokens
// that let clients talk to blockd directly. It serves the HTTP/JSON API of
// package metad (docs/API.md). "metad fsck" checks a stopped store.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"stasis/blockd"
	"stasis/cas"
	"stasis/internal/serve"
	"stasis/metad"
	"stasis/metad/pgstore"
)

type serveOptions struct {
	limits     serve.Limits
	data       string
	store      string
	listen     string
	secretFile string
	blockds    []string
	addrFile   string
	logLevel   string
	small      bool
	sync       string
	flushEvery time.Duration
	gcInterval time.Duration
	sweep      time.Duration
	tokenTTL   time.Duration
	policy     string
}

func newRootCmd() *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "metad --data DIR --secret-file FILE --blockd NAME=URL [--blockd NAME=URL ...] [--listen ADDR]",
		Short: "The stasis metadata daemon",
		Long: `metad keeps the namespace, file manifests, snapshots and chunk reference counts
of a stasis store in a badger database under --data, and serves the API of
docs/API.md at --listen (POST /v1/<method>, GET /healthz, GET /metrics).

Chunks live in the blockd servers named by --blockd NAME=URL (repeatable); NAME
must be the server's --name, the scope of the tokens metad mints for it.
Chunks are placed over the servers by rendezvous hashing on NAME, so the set
must not change once data is stored. --store postgres://USER@HOST/DB keeps the
records in PostgreSQL instead of badger (docs/POSTGRES.md; --data, --sync,
--flush-interval and --small then do not apply: every change is durable when
the database commits it). --secret-file holds the token keys
shared with blockd and casfs (lines "KEYID HEX64"; create with "blockd keygen").

Every /v1/ call needs a bearer token with the admin operation for scope
"metad", minted from the same secret. Garbage collection runs every
--gc-interval, first after --token-ttl (pins do not survive a restart).
SIGTERM or SIGINT stops metad gracefully; SIGKILL loses nothing committed.

--sync chooses what survives a power loss. "commits" (default): content
commits, snapshot creation and deletion, and POST /v1/sync (casfs's fsync and
fsyncdir) are synced before they return, and each sync covers every change
before it; other namespace changes (create, mkdir, rename, setattr, ...) are
synced by a background flush within --flush-interval. "all": every change is synced
before it returns (one fsync each, several times slower for small files).
"none": nothing is synced; for scratch stores.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.data, "data", "", "directory of the badger metadata database (created if missing; required with --store badger)")
	f.StringVar(&o.store, "store", "badger", "metadata store: badger (under --data) or a PostgreSQL URL postgres://USER@HOST:PORT/DB (see docs/POSTGRES.md)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:7000", "address to serve HTTP on (host:port; port 0 picks one)")
	f.StringVar(&o.secretFile, "secret-file", "", "token key file shared with blockd (required)")
	f.StringArrayVar(&o.blockds, "blockd", nil, "blockd server as NAME=URL (repeatable; at least one)")
	f.StringVar(&o.addrFile, "addr-file", "", "write the bound address (host:port) to this file once listening")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&o.small, "small", false, "use small badger caches and memtables (tests, small machines)")
	f.StringVar(&o.sync, "sync", "commits", "when to fsync: commits (content commits, snapshots, client syncs, and namespace changes within a second), all (every change), none (survives process crashes only)")
	f.DurationVar(&o.flushEvery, "flush-interval", time.Second, "with --sync=commits: longest time a namespace change waits for the background sync")
	f.DurationVar(&o.gcInterval, "gc-interval", 5*time.Minute, "garbage collection period (0 disables)")
	f.DurationVar(&o.sweep, "sweep-interval", time.Hour, "period of sweeping every blockd for chunks nothing references (0 disables)")
	f.DurationVar(&o.tokenTTL, "token-ttl", 10*time.Minute, "life of get/put tokens and of upload pins")
	f.StringVar(&o.policy, "default-policy", "fixed:64k", "chunker policy of new files without one")
	o.limits.AddFlags(f)
	cmd.AddCommand(newFsckCmd())
	return cmd
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "metad:", err)
		var fe *fsckFailed
		if errors.As(err, &fe) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func readKeyring(path string) (*cas.Keyring, error) {
	if path == "" {
		return nil, errors.New("--secret-file FILE is required (create one with: blockd keygen FILE)")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading secret file: %w", err)
	}
	k, err := cas.ParseKeyring(b)
	if err != nil {
		return nil, fmt.Errorf("malformed secret file %s: %w", path, err)
	}
	return k, nil
}

// parseBlockd parses NAME=URL.
func parseBlockd(s string) (metad.Endpoint, error) {
	name, url, ok := strings.Cut(s, "=")
	if !ok || name == "" || !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
		return metad.Endpoint{}, fmt.Errorf("--blockd %q: want NAME=http://HOST:PORT", s)
	}
	return metad.Endpoint{Name: name, URL: strings.TrimRight(url, "/")}, nil
}

// blockTokens mints the tokens metad itself uses on one blockd server.
func blockTokens(keys *cas.Keyring, scope string) blockd.TokenSource {
	return func(op cas.Op) (string, error) {
		return keys.Mint(cas.Claims{Ops: op, Subject: "metad", Scope: scope, Expiry: time.Now().Add(5 * time.Minute)})
	}
}

func runServe(ctx context.Context, o serveOptions) error {
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	pg := strings.HasPrefix(o.store, "postgres://") || strings.HasPrefix(o.store, "postgresql://")
	switch {
	case pg && o.data != "":
		return errors.New("--data is for the badger store; with --store postgres://… leave it out")
	case !pg && o.store != "badger":
		return fmt.Errorf("--store %q: want badger or a postgres:// URL", o.store)
	case !pg && o.data == "":
		return errors.New("--data DIR is required")
	}
	keys, err := readKeyring(o.secretFile)
	if err != nil {
		return err
	}
	if len(o.blockds) == 0 {
		return errors.New("at least one --blockd NAME=URL is required")
	}
	policy, err := cas.ParsePolicy(o.policy)
	if err != nil {
		return fmt.Errorf("--default-policy: %w", err)
	}
	syncMode, err := metad.ParseSyncMode(o.sync)
	if err != nil {
		return fmt.Errorf("--sync: %w", err)
	}
	hc := &http.Client{Timeout: 2 * time.Minute}
	cfg := metad.Config{
		Dir: o.data, Keyring: keys, TokenTTL: o.tokenTTL, GCInterval: o.gcInterval, SweepInterval: o.sweep,
		DefaultPolicy: policy, Logger: log,
		Badger: metad.BadgerOptions{Sync: syncMode, FlushInterval: o.flushEvery, Logger: log.With("component", "badger")},
	}
	if o.small {
		cfg.Badger.MemTableSize, cfg.Badger.BlockCacheSize, cfg.Badger.IndexCacheSize, cfg.Badger.ValueLogFileSize = 16<<20, 4<<20, 2<<20, 16<<20
	}
	for _, b := range o.blockds {
		ep, err := parseBlockd(b)
		if err != nil {
			return err
		}
		cfg.Blocks = append(cfg.Blocks, metad.BlockBackend{Endpoint: ep, Store: blockd.NewClient(ep.URL, blockTokens(keys, ep.Name), hc)})
	}
	if pg {
		st, err := pgstore.Open(ctx, o.store, pgstore.Options{Logger: log.With("component", "pgstore")})
		if err != nil {
			return err
		}
		cfg.Store, cfg.Dir = st, "" // the Service closes it
	} else if err := os.MkdirAll(o.data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.listen, err)
	}
	defer ln.Close()
	svc, err := metad.Open(cfg)
	if err != nil {
		if cfg.Store != nil {
			cfg.Store.Close()
		}
		return err
	}
	defer svc.Close()
	srv, err := metad.NewServer(svc, metad.ServerConfig{Keyring: keys, Logger: log})
	if err != nil {
		return err
	}
	return serve.HTTP(ctx, log, ln, srv, serve.Options{
		AddrFile: o.addrFile,
		Limits:   o.limits,
		Listening: func(addr string) {
			log.Info("metad listening", "addr", addr, "store", storeName(o), "blockd", len(cfg.Blocks), "key_id", keys.CurrentKeyID())
		},
		Close: svc.Close,
	})
}

// storeName is what the log says about the store: the badger directory,
// or the PostgreSQL URL without its password.
func storeName(o serveOptions) string {
	if o.data != "" {
		return "badger:" + o.data
	}
	if u, err := url.Parse(o.store); err == nil {
		return u.Redacted()
	}
	return "postgres"
}
