package casfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"stasis/cas"
	"stasis/metad"
)

// Config configures an FS. Zero numeric fields take the defaults documented
// on each field; Meta, Transport and StagingDir are required.
type Config struct {
	// Meta is the metadata service (in-process or an HTTP client).
	Meta metad.API
	// Transport reaches the block stores named by metad's plans.
	Transport Transport
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// StagingDir holds spill files for random writes (unlinked at once, so
	// nothing is left behind after a crash). It must exist.
	StagingDir string

	// CacheBytes bounds the in-memory cache of decoded chunks (default 128 MiB).
	CacheBytes int64
	// DiskCacheDir, when set, keeps fetched chunks (encoded) in local files
	// there, up to DiskCacheBytes (default 1 GiB), so a remount or a node
	// re-reading a large file does not fetch it again.
	DiskCacheDir   string
	DiskCacheBytes int64
	// InFlightBytes bounds the chunk bytes held by the write pipeline across
	// all files (raw plus encoded copies; default 192 MiB). It is what keeps
	// memory flat whatever the file size.
	InFlightBytes int64
	// Workers hash and compress chunks (default GOMAXPROCS).
	Workers int
	// Uploads is the number of batches uploaded concurrently per file (default 3).
	Uploads int
	// BatchChunks and BatchBytes bound one PrepareUpload/Put batch
	// (defaults 4096 chunks, 32 MiB raw). Large batches amortize the
	// block store's fsync; see bench/RESULTS.md.
	BatchChunks int
	BatchBytes  int64
	// BatchIdle is how long a partial batch waits for more chunks before
	// it goes out anyway (default 100 ms).
	BatchIdle time.Duration
	// ReadAheadBytes is how far past a sequential reader chunks are fetched
	// in the background (default 32 MiB; negative disables read-ahead).
	ReadAheadBytes int64
	// RetryDeadline is how long calls to metad and block stores are retried
	// on transient errors before the writer gets EIO (default 30s).
	RetryDeadline time.Duration
	// DefaultPolicy is the chunker for new files when neither the file nor
	// metad names one (default DefaultPolicy).
	DefaultPolicy cas.Policy
	// Reclaim, when set, runs when a block store refuses a put for lack
	// of space, before the put is tried once more and the writer gets
	// ENOSPC: it frees what deleted files still hold (embedded mode:
	// metad's garbage collection, then pack compaction; embed.Stores).
	// Writers that run out of space at the same time share one run.
	Reclaim func(ctx context.Context) error
}

// DefaultPolicy is the fallback chunker policy, used only when metad records
// none for a file (metad applies the inherited user.casfs.chunker xattr and
// its own default first): fixed 64 KiB chunks, matching metad's default and
// qcow2's cluster size; see bench/RESULTS.md for the measurement.
var DefaultPolicy = cas.Fixed(64 << 10)

// ErrConfig is wrapped by every configuration validation error.
var ErrConfig = errors.New("casfs: bad config")

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = 128 << 20
	}
	if c.DiskCacheDir != "" && c.DiskCacheBytes == 0 {
		c.DiskCacheBytes = 1 << 30
	}
	if c.InFlightBytes == 0 {
		c.InFlightBytes = 192 << 20
	}
	if c.Workers == 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.Uploads == 0 {
		c.Uploads = 3
	}
	if c.BatchChunks == 0 {
		c.BatchChunks = 4096
	}
	if c.BatchIdle == 0 {
		c.BatchIdle = 100 * time.Millisecond
	}
	if c.BatchBytes == 0 {
		c.BatchBytes = 32 << 20
	}
	if c.ReadAheadBytes == 0 {
		c.ReadAheadBytes = 32 << 20
	}
	if c.RetryDeadline == 0 {
		c.RetryDeadline = 30 * time.Second
	}
	if c.DefaultPolicy.Kind == "" {
		c.DefaultPolicy = DefaultPolicy
	}
}

// Validate checks the configuration after defaults are applied.
func (c *Config) Validate() error {
	var errs []error
	if c.Meta == nil {
		errs = append(errs, errors.New("Meta is required"))
	}
	if c.Transport == nil {
		errs = append(errs, errors.New("Transport is required"))
	}
	if c.StagingDir == "" {
		errs = append(errs, errors.New("StagingDir is required"))
	}
	if c.CacheBytes < 0 || c.DiskCacheBytes < 0 {
		errs = append(errs, errors.New("CacheBytes and DiskCacheBytes must not be negative"))
	}
	if c.InFlightBytes < 4*cas.MaxChunkSize {
		errs = append(errs, fmt.Errorf("InFlightBytes must be at least %d", 4*cas.MaxChunkSize))
	}
	if c.Workers < 1 || c.Uploads < 1 || c.BatchChunks < 1 || c.BatchBytes < 1 {
		errs = append(errs, errors.New("Workers, Uploads, BatchChunks and BatchBytes must be positive"))
	}
	if c.RetryDeadline < 0 {
		errs = append(errs, errors.New("RetryDeadline must not be negative"))
	}
	if err := c.DefaultPolicy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

// LogValue prints the configuration's knobs (not its interfaces).
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("staging_dir", c.StagingDir),
		slog.Int64("cache_bytes", c.CacheBytes),
		slog.String("disk_cache_dir", c.DiskCacheDir),
		slog.Int64("disk_cache_bytes", c.DiskCacheBytes),
		slog.Int64("inflight_bytes", c.InFlightBytes),
		slog.Int("workers", c.Workers),
		slog.Int("uploads", c.Uploads),
		slog.Int("batch_chunks", c.BatchChunks),
		slog.Int64("batch_bytes", c.BatchBytes),
		slog.Duration("batch_idle", c.BatchIdle),
		slog.Int64("readahead_bytes", c.ReadAheadBytes),
		slog.Duration("retry_deadline", c.RetryDeadline),
		slog.String("default_policy", c.DefaultPolicy.String()),
	)
}
