// Command blockd is the stasis block store daemon: it stores compressed
// chunks by hash (in pack files indexed by badger, or in a badger database),
// verifies every chunk's hash on put,
// checks a token on every call, and serves the batch protocol of package
// blockd over HTTP.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"stasis/blockd"
	"stasis/cas"
	"stasis/internal/serve"
)

type serveOptions struct {
	limits     serve.Limits
	data       string
	listen     string
	secretFile string
	name       string
	addrFile   string
	logLevel   string
	small      bool
	store      string
	packSize   int64
	gcInterval time.Duration
	minFree    int64
	maxBytes   int64
	directRead bool
}

func newRootCmd() *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "blockd --data DIR --secret-file FILE [--listen ADDR] [--name NAME]",
		Short: "The stasis block store daemon",
		Long: `blockd stores chunks (LZ4-compressed, content-addressed by BLAKE3) under --data
and serves them over HTTP at --listen:

  POST /v1/missing  POST /v1/put  GET /v1/chunks/{id}  POST /v1/get
  POST /v1/delete   GET /v1/list  GET /healthz         GET /metrics

It recomputes the hash of every chunk it is given and refuses mismatches, and
acknowledges a put only once it is synced to disk. Every /v1/ call needs a
token minted by metad ("Authorization: Bearer ...") that is valid for this
server's --name; tokens are checked with the keys in --secret-file, which
metad shares (lines "KEYID HEX64"; the first key signs, all verify; create
one with "blockd keygen FILE").

With --listen 127.0.0.1:0 the kernel picks a port; blockd logs the bound
address and writes it to --addr-file if given. SIGTERM or SIGINT stops it
gracefully: in-flight requests finish, then the store is closed.

--store picks how chunks are kept: "pack" (the default for a new --data
directory) appends them to pack files (packs/, rolled at --pack-size) with
a small badger index (index/); "badger" keeps them in badger's value log.
The directory records its kind in DIR/STORE; a directory made before
STORE files existed holds a badger store and opens as one. Asking for the
other kind of an existing directory is an error.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.data, "data", "", "directory of the chunk database (created if missing; required)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:7001", "address to serve HTTP on (host:port; port 0 picks one)")
	f.StringVar(&o.secretFile, "secret-file", "", "token key file shared with metad (required)")
	f.StringVar(&o.name, "name", "blockd", "this server's name: the scope its tokens must carry")
	f.StringVar(&o.addrFile, "addr-file", "", "write the bound address (host:port) to this file once listening")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&o.small, "small", false, "use small badger caches and memtables and 64 MiB packs (tests, small machines)")
	f.StringVar(&o.store, "store", "", `chunk store kind: "pack" or "badger" (default: what --data holds; "pack" for a new directory)`)
	f.Int64Var(&o.packSize, "pack-size", 0, "pack store: seal a pack file at this many bytes (default 1 GiB, 64 MiB with --small)")
	f.DurationVar(&o.gcInterval, "gc-interval", 10*time.Minute, "pack compaction (or badger value-log GC) period (negative disables)")
	f.BoolVar(&o.directRead, "direct-reads", false, "pack store: read batches (/v1/get) with O_DIRECT, bypassing the page cache (for blockds whose clients cache chunks themselves; the default shares the page cache among clients)")
	f.Int64Var(&o.maxBytes, "max-bytes", 0, "pack store: quota on the bytes of the pack files; puts beyond it get 507 until deletes and compaction free space (0: none)")
	f.Int64Var(&o.minFree, "min-free", 256<<20, "bytes to keep free on the data file system; puts beyond it get 507 (badger, the badger store and the pack index, writes through mmap: a full disk would crash it)")
	o.limits.AddFlags(f)
	cmd.AddCommand(newKeygenCmd())
	return cmd
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "blockd:", err)
		os.Exit(1)
	}
}

func runServe(ctx context.Context, o serveOptions) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if o.data == "" {
		return errors.New("--data DIR is required")
	}
	if o.secretFile == "" {
		return errors.New("--secret-file FILE is required (create one with: blockd keygen FILE)")
	}
	secret, err := os.ReadFile(o.secretFile)
	if err != nil {
		return fmt.Errorf("reading secret file: %w", err)
	}
	keys, err := cas.ParseKeyring(secret)
	if err != nil {
		return fmt.Errorf("malformed secret file %s: %w", o.secretFile, err)
	}
	if err := checkWritableDir(o.data); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.listen, err)
	}
	defer ln.Close()

	store, kind, err := blockd.OpenStore(blockd.StoreConfig{Dir: o.data, Kind: o.store, Logger: log.With("component", "store"),
		Small: o.small, PackSize: o.packSize, GCInterval: o.gcInterval, MinFreeBytes: o.minFree, MaxBytes: o.maxBytes,
		DirectReads: o.directRead})
	if err != nil {
		return fmt.Errorf("--data %s: %w", o.data, err)
	}
	defer store.Close()
	srv, err := blockd.NewServer(blockd.ServerConfig{Store: store, Keyring: keys, Name: o.name, Logger: log})
	if err != nil {
		return err
	}
	return serve.HTTP(ctx, log, ln, srv, serve.Options{
		AddrFile: o.addrFile,
		Limits:   o.limits,
		Listening: func(addr string) {
			st := store.Stats()
			log.Info("blockd listening", "addr", addr, "name", o.name, "data", o.data, "store", kind,
				"chunks", st.Chunks, "encoded_bytes", st.EncodedBytes, "key_id", keys.CurrentKeyID())
		},
		Close: store.Close,
	})
}

// checkWritableDir creates dir if needed and proves it is writable.
func checkWritableDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	f, err := os.CreateTemp(dir, ".writable-*")
	if err != nil {
		return fmt.Errorf("data dir %s is not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}
