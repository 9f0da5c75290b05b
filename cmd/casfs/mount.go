package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // served only with --debug-addr
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"stasis/blockd"
	"stasis/cas"
	"stasis/casfs"
	"stasis/casfs/embed"
	"stasis/casfs/fusefs"
	"stasis/metad"
)

type mountOptions struct {
	Data       string
	Meta       string
	SecretFile string
	Staging    string
	Subject    string
	Policy     string
	CacheMiB   int64
	InFlightMi int64
	NoSync     bool
	AllowOther bool
	Debug      bool
	LogLevel   string
	AttrTTL    time.Duration
	DebugAddr  string
	BatchMiB   int64
	Uploads    int
	MemLimit   int64
	DiskCache  string
	DiskCacheM int64
	CachedWr   bool
	ReadAhead  int
	GCEvery    time.Duration
}

func init() {
	o := &mountOptions{}
	cmd := &cobra.Command{
		Use:   "mount (--data DIR | --meta URL --secret-file F) MOUNTPOINT",
		Short: "Mount casfs in the foreground (Ctrl-C or SIGTERM flushes and unmounts)",
		Args:  cobra.ExactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return runMount(cmd.Context(), o, args) },
	}
	f := cmd.Flags()
	f.StringVar(&o.Data, "data", "", "embedded mode: run metad (badger) and blockd (pack files) in-process on stores under `DIR`")
	f.StringVar(&o.Meta, "meta", "", "daemon mode: base `URL` of metad (blockd servers come from metad's plans)")
	f.StringVar(&o.SecretFile, "secret-file", "", "daemon mode: token secret shared with metad")
	f.StringVar(&o.Staging, "staging", "", "directory for random-write spill files (default DIR/staging or $TMPDIR/casfs-staging)")
	f.StringVar(&o.Subject, "subject", "", "name this node uses in tokens (default the hostname)")
	f.StringVar(&o.Policy, "policy", "", "embedded mode: default chunker policy of new files, e.g. fixed:64k or cdc:16k")
	f.Int64Var(&o.CacheMiB, "cache-mib", 128, "in-memory chunk cache size")
	f.Int64Var(&o.InFlightMi, "inflight-mib", 0, "bytes held by the write pipeline (0: casfs default)")
	f.BoolVar(&o.NoSync, "no-sync", false, "embedded mode: do not fsync metadata commits (survives process crashes, not power loss)")
	f.BoolVar(&o.AllowOther, "allow-other", false, "let other users access the mount")
	f.BoolVar(&o.Debug, "debug", false, "log every FUSE request")
	f.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.DiskCache, "disk-cache", "", "keep fetched chunks in this local `DIR` (a second-level cache)")
	f.Int64Var(&o.DiskCacheM, "disk-cache-mib", 1024, "size bound of --disk-cache")
	f.Int64Var(&o.BatchMiB, "batch-mib", 0, "raw bytes per dedup negotiation and upload batch (0: casfs default)")
	f.IntVar(&o.Uploads, "uploads", 0, "batches uploaded concurrently per file (0: casfs default)")
	f.Int64Var(&o.MemLimit, "memory-limit-mib", 384, "soft limit of the Go heap (GOMEMLIMIT); 0 leaves the runtime default")
	f.StringVar(&o.DebugAddr, "debug-addr", "", "serve /debug/pprof on this `ADDR` (e.g. 127.0.0.1:6060)")
	f.BoolVar(&o.CachedWr, "cached-writes", false, "send writes of write-only opens through the kernel page cache (default: direct, which skips filling cache pages casfs never reads back)")
	f.IntVar(&o.ReadAhead, "kernel-readahead-kib", fusefs.DefaultKernelReadAheadKiB, "the kernel's read-ahead window for the mount (FUSE's own is 128 KiB, which leaves sequential reads waiting on every request); -1 keeps the kernel's")
	f.DurationVar(&o.GCEvery, "gc-interval", embed.DefaultGCInterval, "embedded mode: period of garbage collection and pack compaction (the first after 10 minutes; 0 or negative disables; a write to a full store runs one at once)")
	f.DurationVar(&o.AttrTTL, "attr-timeout", time.Second, "kernel entry/attribute cache time for the live tree")
	rootCmd.AddCommand(cmd)
}

func runMount(ctx context.Context, o *mountOptions, args []string) error {
	mnt := args[0]
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if o.DebugAddr != "" {
		go func() { log.Warn("debug server stopped", "err", http.ListenAndServe(o.DebugAddr, nil)) }()
	}

	if o.MemLimit > 0 {
		debug.SetMemoryLimit(o.MemLimit << 20)
	}
	cfg := casfs.Config{
		Logger: log, CacheBytes: o.CacheMiB << 20, InFlightBytes: o.InFlightMi << 20, StagingDir: o.Staging,
		BatchBytes: o.BatchMiB << 20, Uploads: o.Uploads,
	}
	if o.DiskCache != "" {
		cfg.DiskCacheDir, cfg.DiskCacheBytes = o.DiskCache, o.DiskCacheM<<20
	}
	var closeStores func() error
	switch {
	case o.Data != "" && o.Meta == "":
		var pol cas.Policy
		if o.Policy != "" {
			p, err := cas.ParsePolicy(o.Policy)
			if err != nil {
				return fmt.Errorf("--policy: %w", err)
			}
			pol = p
		}
		gcEvery := o.GCEvery
		if gcEvery == 0 {
			gcEvery = -1 // 0 on the command line means off, as for the daemons
		}
		st, err := embed.Open(embed.Config{Dir: o.Data, Logger: log.With("component", "store"), Policy: pol, NoSync: o.NoSync, Small: true,
			GCInterval: gcEvery})
		if err != nil {
			return err
		}
		closeStores = st.Close
		cfg.Meta, cfg.Transport, cfg.Reclaim = st.Meta, st.Transport, st.Reclaim
		if cfg.StagingDir == "" {
			cfg.StagingDir = st.StagingDir
		}
	case o.Meta != "" && o.Data == "":
		if o.SecretFile == "" {
			return errors.New("--meta needs --secret-file")
		}
		b, err := os.ReadFile(o.SecretFile)
		if err != nil {
			return err
		}
		kr, err := cas.ParseKeyring(b)
		if err != nil {
			return fmt.Errorf("%s: %w", o.SecretFile, err)
		}
		subject := o.Subject
		if subject == "" {
			subject, _ = os.Hostname()
		}
		hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: time.Minute}}
		cfg.Meta = metad.NewClient(o.Meta, kr, "casfs@"+subject, hc)
		cfg.Transport = casfs.ClientTransport{New: func(ep metad.Endpoint, token string) blockd.WriteStore {
			return blockd.NewClient(ep.URL, func(cas.Op) (string, error) { return token, nil }, hc)
		}}
		if cfg.StagingDir == "" {
			cfg.StagingDir = filepath.Join(os.TempDir(), "casfs-staging")
		}
		if err := os.MkdirAll(cfg.StagingDir, 0o700); err != nil {
			return err
		}
		closeStores = func() error { return nil }
	default:
		return errors.New("give exactly one of --data (embedded) or --meta (daemon mode)")
	}

	fsys, err := casfs.New(cfg)
	if err != nil {
		closeStores()
		return err
	}
	log.Info("casfs config", "config", fsys.Config())
	srv, err := fusefs.Mount(mnt, fsys, fusefs.Options{
		EntryTimeout: o.AttrTTL, AttrTimeout: o.AttrTTL,
		AllowOther: o.AllowOther, Debug: o.Debug, Logger: log,
		FsName: fsName(o), CachedWrites: o.CachedWr, KernelReadAheadKiB: o.ReadAhead,
	})
	if err != nil {
		fsys.Close(context.Background())
		closeStores()
		return fmt.Errorf("mount %s: %w", mnt, err)
	}
	log.Info("mounted", "mountpoint", mnt)
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()

	select {
	case <-done:
		log.Info("unmounted from outside")
	case <-ctx.Done():
		log.Info("signal received; unmounting", "mountpoint", mnt)
		unmountServer(srv, mnt, log, done)
	}
	cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return errors.Join(fsys.Close(cctx), closeStores())
}

// unmountServer unmounts, retrying while the mount is busy, then detaches
// lazily (the session then ends when the last open file is closed).
func unmountServer(srv interface{ Unmount() error }, mnt string, log *slog.Logger, done <-chan struct{}) {
	for i := 0; ; i++ {
		err := srv.Unmount()
		if err == nil {
			break
		}
		if i == 20 {
			log.Warn("mount still busy; detaching lazily (it goes away when the last file is closed)", "err", err)
			if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
				log.Error("lazy unmount failed", "err", err)
			}
			break
		}
		log.Warn("unmount failed; retrying", "err", err)
		time.Sleep(250 * time.Millisecond)
	}
	<-done
}

func fsName(o *mountOptions) string {
	if o.Data != "" {
		abs, _ := filepath.Abs(o.Data)
		return "casfs:" + strings.ReplaceAll(abs, ",", "_")
	}
	return "casfs:" + o.Meta
}
