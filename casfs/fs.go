package casfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/semaphore"

	"stasis/blockd"
	"stasis/cas"
	"stasis/metad"
)

// FS is the filesystem logic of one casfs mount. It is safe for concurrent use.
type FS struct {
	cfg       Config
	meta      metad.API
	transport Transport
	log       *slog.Logger

	cache    *chunkCache
	disk     *diskCache          // nil without DiskCacheDir
	mem      *semaphore.Weighted // in-flight pipeline bytes
	starving signal              // a writer waits for mem
	work     chan func()         // CPU work: zero-detect, hash, compress
	workers  sync.WaitGroup
	prefetch *semaphore.Weighted // concurrent read-ahead fetches

	mu     sync.Mutex
	inodes map[metad.Node]*inode // files with open handles or unflushed data
	gens   map[metad.Node]uint64 // content generation the kernel may cache, for closed files

	stats counters

	reclaimMu  sync.Mutex    // one Reclaim at a time
	reclaimGen atomic.Uint64 // Reclaim runs finished
}

type counters struct {
	written, holeBytes, staged               atomic.Uint64
	uploadedChunks, uploadedRaw, uploadedEnc atomic.Uint64
	dupChunks, dupBytes                      atomic.Uint64
	fetchedChunks, fetchedEnc, cacheHits     atomic.Uint64
	diskHits                                 atomic.Uint64
}

// New validates cfg and starts the worker pool. Call Close when done.
func New(cfg Config) (*FS, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(cfg.StagingDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%w: StagingDir %q is not a directory", ErrConfig, cfg.StagingDir)
	}
	f := &FS{
		cfg:       cfg,
		meta:      cfg.Meta,
		transport: cfg.Transport,
		log:       cfg.Logger,
		cache:     newChunkCache(cfg.CacheBytes),
		mem:       semaphore.NewWeighted(cfg.InFlightBytes),
		work:      make(chan func(), 2*cfg.Workers),
		prefetch:  semaphore.NewWeighted(int64(4 * cfg.Workers)),
		inodes:    make(map[metad.Node]*inode),
		gens:      make(map[metad.Node]uint64),
	}
	if cfg.DiskCacheDir != "" {
		dc, err := openDiskCache(cfg.DiskCacheDir, cfg.DiskCacheBytes, cfg.Logger)
		if err != nil {
			return nil, err
		}
		f.disk = dc
	}
	for range cfg.Workers {
		f.workers.Add(1)
		go func() {
			defer f.workers.Done()
			for fn := range f.work {
				fn()
			}
		}()
	}
	return f, nil
}

// Meta returns the metadata service, for namespace calls that need no
// file-state overlay.
func (f *FS) Meta() metad.API { return f.meta }

// Config returns the effective configuration (defaults applied).
func (f *FS) Config() Config { return f.cfg }

// Close commits every file with unflushed data, then stops the workers.
// It returns the joined errors of files that could not be committed.
func (f *FS) Close(ctx context.Context) error {
	f.mu.Lock()
	ins := make([]*inode, 0, len(f.inodes))
	for _, in := range f.inodes {
		ins = append(ins, in)
	}
	f.mu.Unlock()
	var errs []error
	for _, in := range ins {
		in.mu.Lock()
		err := in.flushLocked(ctx)
		in.dropLocked()
		in.mu.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("ino %d: %w", in.node.Ino, err))
		}
	}
	close(f.work)
	f.workers.Wait()
	return errors.Join(errs...)
}

// retry runs fn until it succeeds, fails with a non-transient error, or
// RetryDeadline passes. Each try gets the remaining time as its deadline.
func (f *FS) retry(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(f.cfg.RetryDeadline)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	wait := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !transient(err) {
			return err
		}
		if time.Until(deadline) < wait {
			f.log.Error("giving up", "op", what, "attempts", attempt, "err", err)
			return fmt.Errorf("%s: gave up after %d attempts: %w", what, attempt, err)
		}
		f.log.Warn("retrying", "op", what, "attempt", attempt, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error: %w)", what, ctx.Err(), err)
		}
		wait = min(2*wait, time.Second)
	}
}

// putChunks stores chunks on ep, retrying transient failures. A refusal
// for lack of space is not retried (waiting cannot help a full store) but,
// with Config.Reclaim, space is reclaimed once and the put tried again.
func (f *FS) putChunks(ctx context.Context, ep metad.Endpoint, token string, chunks []blockd.Chunk) error {
	put := func(ctx context.Context) error { return f.transport.Put(ctx, ep, token, chunks) }
	gen := f.reclaimGen.Load()
	err := f.retry(ctx, "put chunks", put)
	if err == nil || f.cfg.Reclaim == nil || !noSpace(err) {
		return err
	}
	if rerr := f.reclaim(ctx, gen); rerr != nil {
		f.log.Warn("reclaiming space failed", "err", rerr)
		return err
	}
	return f.retry(ctx, "put chunks", put)
}

// reclaim runs Config.Reclaim unless a run finished since gen (another
// writer's, started after this writer's put failed).
func (f *FS) reclaim(ctx context.Context, gen uint64) error {
	f.reclaimMu.Lock()
	defer f.reclaimMu.Unlock()
	if f.reclaimGen.Load() != gen {
		return nil
	}
	defer f.reclaimGen.Add(1)
	f.log.Warn("block store full: reclaiming space before giving up")
	return f.cfg.Reclaim(ctx)
}

// Stats combines metad's store-wide totals with this mount's counters.
type Stats struct {
	// Store-wide, from metad (see metad.Stats). StoredRaw is the raw size
	// of the distinct chunks files and snapshots reference; StoredEncoded
	// is what the blockd servers hold, compressed, including chunks no
	// longer referenced that garbage collection has not deleted yet
	// (BlockChunks then exceeds Chunks). BlocksUnreported > 0 means that
	// many blockd servers did not answer and StoredEncoded lacks their share.
	LogicalBytes     uint64 `json:"logical_bytes"`
	StoredRaw        uint64 `json:"stored_raw"`
	StoredEncoded    uint64 `json:"stored_encoded"`
	Chunks           uint64 `json:"chunks"`
	BlockChunks      uint64 `json:"block_chunks"`
	BlocksUnreported int    `json:"blocks_unreported,omitempty"`
	HoleBytes        uint64 `json:"hole_bytes"`
	Inodes           uint64 `json:"inodes"`
	Snapshots        uint64 `json:"snapshots"`
	// DedupRatio is logical non-hole bytes over distinct stored raw bytes.
	DedupRatio float64 `json:"dedup_ratio"`
	// CompressionRatio is stored raw over stored encoded bytes; absent
	// when nothing is stored or a blockd did not report. Garbage awaiting
	// collection counts in the encoded bytes only, so it reads low then.
	CompressionRatio float64 `json:"compression_ratio,omitempty"`

	// Since this mount started.
	Mount MountStats `json:"mount"`
}

// MountStats are counters of one mount since it started.
type MountStats struct {
	BytesWritten     uint64 `json:"bytes_written"`      // chunked by the write pipeline (and holes a sequential writer skipped)
	HoleBytesWritten uint64 `json:"hole_bytes_written"` // of which all-zero, never uploaded
	BytesStaged      uint64 `json:"bytes_staged"`       // written out of order: kept in a staging file, re-chunked at flush
	ChunksUploaded   uint64 `json:"chunks_uploaded"`    // missing chunks sent to blockd
	BytesUploadedRaw uint64 `json:"bytes_uploaded_raw"` // their raw size
	BytesUploadedEnc uint64 `json:"bytes_uploaded"`     // their encoded size (what crossed the wire)
	ChunksDuplicate  uint64 `json:"chunks_duplicate"`   // chunks the store already held
	BytesSkippedDup  uint64 `json:"bytes_skipped_dup"`  // their raw size, not uploaded
	ChunksFetched    uint64 `json:"chunks_fetched"`     // chunk cache misses fetched from blockd
	BytesFetched     uint64 `json:"bytes_fetched"`      // their encoded size
	CacheHits        uint64 `json:"cache_hits"`         // reads served from the chunk cache
	CacheBytes       int64  `json:"cache_bytes"`        // decoded bytes held by the cache
	DiskCacheHits    uint64 `json:"disk_cache_hits"`    // chunks read from the local disk cache
	DiskCacheBytes   int64  `json:"disk_cache_bytes"`   // encoded bytes in the disk cache
	OpenFiles        int    `json:"open_files"`         // files with handles or unflushed data
}

// Stats returns store-wide totals and this mount's counters.
func (f *FS) Stats(ctx context.Context) (Stats, error) {
	ms, err := f.meta.Stats(ctx)
	if err != nil {
		return Stats{}, err
	}
	s := Stats{
		LogicalBytes: ms.LogicalBytes, StoredRaw: ms.StoredRaw, StoredEncoded: ms.StoredEncoded,
		Chunks: ms.Chunks, BlockChunks: ms.BlockChunks, BlocksUnreported: ms.BlocksUnreported,
		HoleBytes: ms.HoleBytes, Inodes: ms.Inodes, Snapshots: ms.Snapshots,
	}
	if ms.StoredRaw > 0 && ms.LogicalBytes > ms.HoleBytes {
		s.DedupRatio = float64(ms.LogicalBytes-ms.HoleBytes) / float64(ms.StoredRaw)
	}
	if ms.StoredEncoded > 0 && ms.BlocksUnreported == 0 {
		s.CompressionRatio = float64(ms.StoredRaw) / float64(ms.StoredEncoded)
	}
	c := &f.stats
	cb, _ := f.cache.usage()
	f.mu.Lock()
	open := len(f.inodes)
	f.mu.Unlock()
	s.Mount = MountStats{
		BytesWritten: c.written.Load(), HoleBytesWritten: c.holeBytes.Load(), BytesStaged: c.staged.Load(),
		ChunksUploaded: c.uploadedChunks.Load(), BytesUploadedRaw: c.uploadedRaw.Load(), BytesUploadedEnc: c.uploadedEnc.Load(),
		ChunksDuplicate: c.dupChunks.Load(), BytesSkippedDup: c.dupBytes.Load(),
		ChunksFetched: c.fetchedChunks.Load(), BytesFetched: c.fetchedEnc.Load(), CacheHits: c.cacheHits.Load(),
		CacheBytes: cb, OpenFiles: open, DiskCacheHits: c.diskHits.Load(),
	}
	if f.disk != nil {
		s.Mount.DiskCacheBytes = f.disk.usage()
	}
	return s, nil
}

// overlay replaces size and mtime in a by those of unflushed local writes.
// Writes that failed are not applied: like reads (Handle.Read), attributes
// then show the last committed content, as a remount would (a size from
// the failed writes with the committed bytes behind it would read as a
// tail of zeros the kernel makes up).
func (f *FS) overlay(n metad.Node, a metad.Attr) metad.Attr {
	f.mu.Lock()
	in := f.inodes[n]
	f.mu.Unlock()
	if in == nil {
		return a
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.w != nil && in.w.err == nil {
		a.Size = in.w.size
		if in.w.mtime.After(a.Mtime) {
			a.Mtime = in.w.mtime
			a.Ctime = in.w.mtime
		}
	}
	return a
}

// Lookup finds name in parent; a file with unflushed local writes reports
// their size.
func (f *FS) Lookup(ctx context.Context, parent metad.Node, name string) (metad.Attr, error) {
	a, err := f.meta.Lookup(ctx, parent, name)
	if err != nil {
		return a, err
	}
	return f.overlay(metad.Node{Snap: parent.Snap, Ino: a.Ino}, a), nil
}

// GetAttr returns n's attributes, with unflushed local writes applied.
func (f *FS) GetAttr(ctx context.Context, n metad.Node) (metad.Attr, error) {
	a, err := f.meta.GetAttr(ctx, n)
	if err != nil {
		return a, err
	}
	return f.overlay(n, a), nil
}

// SetAttr changes attributes. A size change goes through the file's write
// state (it is committed at once when no handle holds the file open here,
// so a truncate is durable when it returns).
func (f *FS) SetAttr(ctx context.Context, n metad.Node, req metad.SetAttrRequest) (metad.Attr, error) {
	if n.Snap != metad.LiveSnap {
		return metad.Attr{}, metad.ErrReadOnly
	}
	if req.Size != nil {
		if err := f.truncate(ctx, n, *req.Size); err != nil {
			return metad.Attr{}, err
		}
		req.Size = nil
	}
	if req.Mode == nil && req.Uid == nil && req.Gid == nil && req.Atime == nil && req.Mtime == nil {
		return f.GetAttr(ctx, n)
	}
	a, err := f.meta.SetAttr(ctx, n.Ino, req)
	if err != nil {
		return a, err
	}
	return f.overlay(n, a), nil
}

// Create makes an inode (file, directory, symlink, special file).
func (f *FS) Create(ctx context.Context, req metad.CreateRequest) (metad.Attr, error) {
	if req.Policy != "" {
		if _, err := cas.ParsePolicy(req.Policy); err != nil {
			return metad.Attr{}, err
		}
	}
	return f.meta.Create(ctx, req)
}

// PolicyXattr is the extended attribute naming a file's or directory's
// chunker policy, inherited by new files (e.g. "fixed:4096", "cdc:16k").
const PolicyXattr = "user.casfs.chunker"

// posixACLPrefix names the POSIX ACL xattrs (system.posix_acl_access,
// system.posix_acl_default).
const posixACLPrefix = "system.posix_acl_"

// SetXattr sets an extended attribute; PolicyXattr values are validated.
// POSIX ACLs are refused with ErrNotSupported (EOPNOTSUPP): casfs does not
// enforce them, and stored as plain values they only confused tools — cp -p
// set one on a file it had created 0600 and, its ACL accepted, skipped the
// chmod to 0644. Refused, tools fall back to chmod.
func (f *FS) SetXattr(ctx context.Context, n metad.Node, name string, value []byte, flags uint32) error {
	if strings.HasPrefix(name, posixACLPrefix) {
		return fmt.Errorf("%w: POSIX ACLs (%s)", ErrNotSupported, name)
	}
	if n.Snap != metad.LiveSnap {
		return metad.ErrReadOnly
	}
	if name == PolicyXattr {
		if _, err := cas.ParsePolicy(string(value)); err != nil {
			return fmt.Errorf("%w: %w", metad.ErrInvalid, err)
		}
	}
	return f.meta.SetXattr(ctx, n.Ino, name, value, flags)
}

// Sync commits every file with unflushed writes on this mount.
func (f *FS) Sync(ctx context.Context) error {
	f.mu.Lock()
	ins := make([]*inode, 0, len(f.inodes))
	for _, in := range f.inodes {
		ins = append(ins, in)
	}
	f.mu.Unlock()
	var errs []error
	for _, in := range ins {
		in.mu.Lock()
		err := in.flushLocked(ctx)
		in.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SyncMeta makes every namespace change metad acknowledged so far durable
// against power loss (metad.API Sync); fsync of a directory and of a file
// without writes to commit call it.
func (f *FS) SyncMeta(ctx context.Context) error {
	return f.retry(ctx, "sync", func(ctx context.Context) error { return f.meta.Sync(ctx) })
}

// Snapshot commits this mount's unflushed writes (so the snapshot holds
// everything written here so far), then snapshots live directory dir.
func (f *FS) Snapshot(ctx context.Context, dir metad.Ino, name string) (metad.Snapshot, error) {
	if err := f.Sync(ctx); err != nil {
		return metad.Snapshot{}, err
	}
	return f.meta.CreateSnapshot(ctx, dir, name)
}

// StatfsInfo is what statfs(2) reports.
type StatfsInfo struct {
	TotalBytes, FreeBytes, AvailBytes uint64
	Inodes, FreeInodes                uint64
}

// Statfs reports capacity. Space is that of the filesystem holding
// StagingDir (in embedded mode, the disk under the stores), inode counts
// come from metad.
func (f *FS) Statfs(ctx context.Context) (StatfsInfo, error) {
	ms, err := f.meta.Stats(ctx)
	if err != nil {
		return StatfsInfo{}, err
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(f.cfg.StagingDir, &st); err != nil {
		return StatfsInfo{}, err
	}
	bs := uint64(st.Bsize)
	return StatfsInfo{
		TotalBytes: st.Blocks * bs, FreeBytes: st.Bfree * bs, AvailBytes: st.Bavail * bs,
		Inodes: ms.Inodes, FreeInodes: 1 << 32,
	}, nil
}
