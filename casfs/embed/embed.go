// Package embed runs casfs's backends in-process: a metad Service and a
// blockd store under one data directory, for `casfs mount --data`.
//
// Layout of the data directory:
//
//	DIR/meta/     metad's badger database
//	DIR/blocks/   blockd's chunk store (blockd.OpenStore): a pack store
//	              (packs/ and index/) for a new directory; a badger
//	              database in one made before pack stores existed
//	DIR/staging/  casfs spill files for random writes (always empty at rest)
//	DIR/secret    token signing key (created on first use, mode 0600)
package embed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"stasis/blockd"
	"stasis/cas"
	"stasis/casfs"
	"stasis/metad"
)

// Config configures the embedded stores.
type Config struct {
	// Dir is the data directory; created if missing.
	Dir string
	// Logger; nil discards.
	Logger *slog.Logger
	// Policy is metad's default chunker policy (zero: metad's default).
	Policy cas.Policy
	// NoSync turns off metad's fsyncs (metad.SyncNone: a commit then
	// survives a process crash but not a power loss). Otherwise metad runs
	// in metad.SyncCommits mode: content commits, snapshots and fsync are
	// synced, other namespace changes within a second. blockd always syncs
	// chunk puts.
	NoSync bool
	// Small shrinks badger's memory (tests, small machines).
	Small bool
	// GCInterval is the period of metad's garbage collection (its first
	// pass after metad's TokenTTL, 10 minutes) and of the block store's
	// compaction (default DefaultGCInterval; negative disables both). A
	// put refused for lack of space runs a pass at once (Stores.Reclaim,
	// casfs.Config.Reclaim) whatever this says.
	GCInterval time.Duration
	// MaxBlockBytes, when positive, caps the bytes of the block store's
	// pack files (blockd.PackConfig.MaxBytes): a quota, under the disk's
	// own limit (the store keeps blockd's MinFreeBytes free).
	MaxBlockBytes int64
}

// DefaultGCInterval is how often embedded mode collects garbage.
const DefaultGCInterval = 10 * time.Minute

// ReclaimDiscardRatio is the dead fraction above which Reclaim rewrites a
// pack (the block store's default for its periodic compaction too).
const ReclaimDiscardRatio = 0.5

// Stores are the running embedded backends.
type Stores struct {
	Meta       *metad.Service
	Blocks     blockd.DiskStore
	Transport  casfs.Transport
	StagingDir string
}

// Open opens (or creates) the stores under cfg.Dir.
func Open(cfg Config) (*Stores, error) {
	if cfg.Dir == "" {
		return nil, errors.New("embed: Dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case cfg.GCInterval == 0:
		cfg.GCInterval = DefaultGCInterval
	case cfg.GCInterval < 0:
		cfg.GCInterval = -1
	}
	staging := filepath.Join(cfg.Dir, "staging")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return nil, err
	}
	kr, err := loadSecret(filepath.Join(cfg.Dir, "secret"))
	if err != nil {
		return nil, err
	}
	// 256 MiB packs whatever Small says: casfs puts batches of 32 MiB,
	// and a pack of Small's 64 MiB would hold only one of them (a batch's
	// records are not split between packs), costing a pack creation and
	// its syncs per batch.
	blocks, _, err := blockd.OpenStore(blockd.StoreConfig{Dir: filepath.Join(cfg.Dir, "blocks"), Logger: cfg.Logger,
		Small: cfg.Small, PackSize: 256 << 20, GCInterval: cfg.GCInterval, MaxBytes: cfg.MaxBlockBytes,
		// casfs keeps its own chunk cache: the page cache would be a second copy.
		DirectReads: true})
	if err != nil {
		return nil, fmt.Errorf("embed: block store: %w", err)
	}
	// A 128 MiB memtable, not metad's default 64 MiB: not for transaction
	// size (a manifest too big for one transaction commits in batches) but
	// for memory. The arena is Go heap allocated whole and mostly untouched,
	// so it counts toward the GC's goal under casfs's memory limit without
	// being resident: the GC runs earlier and RSS stays lower. With 64 MiB,
	// writing 4 GiB peaked 57-73 MiB higher (bench/RESULTS.md, run L) at the
	// same speed, with fewer GCs.
	bo := metad.BadgerOptions{Sync: metad.SyncCommits, Logger: cfg.Logger, MemTableSize: 128 << 20}
	if cfg.NoSync {
		bo.Sync = metad.SyncNone
	}
	if cfg.Small {
		bo.BlockCacheSize, bo.IndexCacheSize = 8<<20, 4<<20
	}
	meta, err := metad.Open(metad.Config{
		Dir:           filepath.Join(cfg.Dir, "meta"),
		Badger:        bo,
		Keyring:       kr,
		Blocks:        []metad.BlockBackend{{Endpoint: metad.Endpoint{Name: "local", URL: "inproc:"}, Store: blocks}},
		DefaultPolicy: cfg.Policy,
		Logger:        cfg.Logger,
		GCInterval:    max(cfg.GCInterval, 0),
	})
	if err != nil {
		blocks.Close()
		return nil, fmt.Errorf("embed: metadata store: %w", err)
	}
	return &Stores{Meta: meta, Blocks: blocks, Transport: casfs.StoreTransport{Store: blocks}, StagingDir: staging}, nil
}

// Reclaim runs one garbage collection pass now: metad deletes the chunks
// no file or snapshot references from the block store, then the store
// rewrites or removes the packs more than ReclaimDiscardRatio dead (the
// one being written included). casfs runs it when a put is refused for
// lack of space (casfs.Config.Reclaim). Unlike metad's timer, it does not
// wait a token TTL after start: that wait protects plans handed out before
// a restart, and embedded metad's only client is this process.
func (s *Stores) Reclaim(ctx context.Context) error {
	if _, err := s.Meta.GC(ctx); err != nil {
		return fmt.Errorf("embed: gc: %w", err)
	}
	switch b := s.Blocks.(type) {
	case *blockd.PackStore:
		if _, err := b.Compact(ctx, ReclaimDiscardRatio); err != nil {
			return fmt.Errorf("embed: compaction: %w", err)
		}
	case *blockd.BadgerStore:
		b.RunGC(ReclaimDiscardRatio)
	}
	return nil
}

// Close closes metad, then the block store.
func (s *Stores) Close() error {
	return errors.Join(s.Meta.Close(), s.Blocks.Close())
}

func loadSecret(path string) (*cas.Keyring, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		b = cas.NewSecretFile(1)
		err = os.WriteFile(path, b, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("embed: secret: %w", err)
	}
	return cas.ParseKeyring(b)
}
