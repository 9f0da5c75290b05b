package blockd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"golang.org/x/sys/unix"

	"stasis/cas"
	"stasis/internal/badgersync"
)

// PackConfig configures a PackStore.
type PackConfig struct {
	Dir    string       // holds packs/ and index/; created if missing
	Logger *slog.Logger // nil: discard
	// Small shrinks the index's memtables and caches and the pack size,
	// for tests and embedded use.
	Small bool
	// PackSize is the size at which the current pack file is sealed and a
	// new one started (default 1 GiB, 64 MiB when Small). A pack may end
	// up larger by one batch: a batch's records are never split.
	PackSize int64
	// GCInterval is how often sealed packs are checked for compaction
	// (default 10 minutes; negative disables). GCDiscardRatio is the dead
	// fraction above which a sealed pack is rewritten (default 0.5).
	GCInterval     time.Duration
	GCDiscardRatio float64
	// MinFreeBytes is the free space a Put leaves on the packs' file
	// system (default 256 MiB, 32 MiB when Small): a batch that would
	// leave less, counting concurrent batches being written, is refused
	// with ErrNoSpace before anything is written. Pack writes are plain
	// pwrite (a full disk is an ENOSPC error, never a crash), but the
	// index is badger, which writes its memtable log through a memory map.
	// Negative disables the check.
	MinFreeBytes int64
	// MaxBytes, when positive, is a quota on the pack files' bytes: a
	// batch that would take them past it is refused with ErrNoSpace, as
	// for MinFreeBytes. Deleted chunks count until compaction removes or
	// rewrites their pack.
	MaxBytes int64
	// BufferedWrites writes packs through the page cache (pwritev) even
	// where O_DIRECT works. By default the current pack is written with
	// O_DIRECT from a 4 MiB aligned staging buffer, each batch's region
	// starting at a 4 KiB boundary: on the VM disks measured, buffered
	// writes + fdatasync of 32 MiB ran at ~250 MB/s and O_DIRECT +
	// fdatasync at 500-650 MB/s (the data does not pass through, or
	// stay in, the page cache either). File systems without O_DIRECT
	// fall back to buffered writes.
	BufferedWrites bool
	// DirectReads reads batches (GetMany) with O_DIRECT into reused
	// aligned buffers instead of through the page cache, where the file
	// system allows it (single-chunk Gets stay buffered). For a store whose
	// only reader keeps its own chunk cache (casfs's embedded mode) the
	// page cache is a second copy: filling it cost more than the read
	// itself on the VMs measured (fresh page-cache pages; bench/RESULTS.md).
	// A blockd serving many nodes may want the page cache shared instead.
	DirectReads bool
}

// Validate checks the config and fills defaults.
func (c *PackConfig) Validate() error {
	if c.Dir == "" {
		return errors.New("blockd: pack config needs a Dir")
	}
	if c.PackSize == 0 {
		c.PackSize = 1 << 30
		if c.Small {
			c.PackSize = 64 << 20
		}
	}
	if c.PackSize < 4096 {
		return fmt.Errorf("blockd: pack size %d is below 4096 bytes", c.PackSize)
	}
	if c.GCInterval == 0 {
		c.GCInterval = 10 * time.Minute
	}
	if c.GCDiscardRatio == 0 {
		c.GCDiscardRatio = 0.5
	}
	if c.GCDiscardRatio <= 0 || c.GCDiscardRatio >= 1 {
		return fmt.Errorf("blockd: GC discard ratio %v must be in (0, 1)", c.GCDiscardRatio)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MinFreeBytes == 0 {
		c.MinFreeBytes = 256 << 20
		if c.Small {
			c.MinFreeBytes = 32 << 20
		}
	}
	return nil
}

// PackStore is the default persistent PruneStore: chunk records appended
// to pack files with O_DIRECT (or pwritev where O_DIRECT is refused) and
// read with pread — no memory map, so stored data never counts toward the
// process's RSS — and a small badger index from chunk ID to pack, offset
// and length. The format is described in pack_format.go.
//
// A Put writes the batch's new chunks to the current pack, fdatasyncs the
// pack, then commits the index entries and syncs the index: data is
// durable before any index entry points at it, and Put returns only after
// both syncs. Concurrent Puts share both syncs (group commit). After a
// crash every index entry points at whole, synced data; bytes written but
// not indexed are dead, and at open the last pack is cut back to the end of
// its last indexed record.
//
// Deleting drops index entries; the records become dead bytes, counted per
// pack. Compaction (Compact, and a periodic loop) rewrites a sealed pack
// whose dead fraction exceeds GCDiscardRatio: live records are copied to
// the current pack and synced, index entries are moved (only those still
// pointing at the old copy), the index is synced, and the old file is
// removed. Get retries when a pack disappears under it, so it never fails
// because of a concurrent move.
type PackStore struct {
	cfg     PackConfig
	log     *slog.Logger
	packDir string
	db      *badger.DB

	dataSync  *groupSync // fdatasync of every pack written since the last one
	indexSync *groupSync // badger's Sync

	closeMu sync.RWMutex // held shared by operations, exclusively by Close
	closed  bool
	done    chan struct{}
	wg      sync.WaitGroup

	mu     sync.Mutex // guards the fields below and every packFile's size, live and writers
	packs  map[uint32]*packFile
	cur    *packFile // the pack being appended to; never compacted
	dirty  map[*packFile]struct{}
	failed error // sticky: set when a sync failed (data may be lost; writes stop)
	stats  Stats

	pending pendingSet // indexed, index sync not finished

	spaceMu  sync.Mutex
	inflight int64 // bytes of batches being written, reserved against free space

	gcMu sync.Mutex // one compaction at a time
}

// packFile is one open pack.
type packFile struct {
	num  uint32
	path string
	rw   sync.RWMutex // shared by reads, writes and syncs of f; exclusive to remove
	f    *os.File     // nil once removed
	df   *os.File     // O_DIRECT, write-only; the current pack's while it has writers (nil: write through f)
	rf   *os.File     // O_DIRECT, read-only, for batched reads (nil: read through f)

	// Under PackStore.mu:
	size    int64 // end of the last record placed (file size plus regions being written)
	live    int64 // bytes of indexed records, headers included
	writers int   // batches placed here and not yet indexed (a pack with writers is never compacted)

	raLast atomic.Int64 // end of the last record read
	raNext atomic.Int64 // end of the range already asked to be read ahead
}

var (
	_ PruneStore = (*PackStore)(nil)
	_ StatStore  = (*PackStore)(nil)
	_ UsageStore = (*PackStore)(nil)
)

// errPackGone: the pack was removed (by compaction) between the index
// lookup and the read; the caller looks the chunk up again.
var errPackGone = errors.New("pack removed")

// OpenPack opens (or creates) the pack store in cfg.Dir: it scans the
// index (counting chunks and live bytes per pack), opens every pack, cuts
// the last one back to its last indexed record, and starts the compaction
// loop. Close stops the loop and closes everything.
func OpenPack(cfg PackConfig) (*PackStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	packDir := filepath.Join(cfg.Dir, "packs")
	indexDir := filepath.Join(cfg.Dir, "index")
	for _, d := range []string{cfg.Dir, packDir, indexDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("blockd: pack store: %w", err)
		}
	}
	opts := badger.DefaultOptions(indexDir).
		WithLogger(badgerLogger{cfg.Logger}).
		WithSyncWrites(false).
		WithCompression(options.None).
		WithNumVersionsToKeep(1).
		WithMetricsEnabled(false).
		WithValueThreshold(1 << 10). // values are 20 bytes: all in the LSM tree
		WithNumMemtables(2).
		WithNumCompactors(2)
	if cfg.Small {
		opts = opts.WithMemTableSize(2 << 20).
			WithNumLevelZeroTables(2).
			WithNumLevelZeroTablesStall(8).
			WithBlockCacheSize(1 << 20).
			WithIndexCacheSize(1 << 20).
			WithValueLogFileSize(4 << 20).
			WithNumGoroutines(2)
	} else {
		opts = opts.WithMemTableSize(8 << 20).
			WithBlockCacheSize(16 << 20).
			WithIndexCacheSize(8 << 20).
			WithValueLogFileSize(16 << 20)
	}
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("blockd: open pack index in %s: %w", indexDir, err)
	}
	s := &PackStore{cfg: cfg, log: cfg.Logger, packDir: packDir, db: db, done: make(chan struct{}),
		packs: map[uint32]*packFile{}, dirty: map[*packFile]struct{}{}}
	s.dataSync = newGroupSync(s.syncPacks)
	// Index values are 20 bytes, below the value threshold: no value log.
	indexSyncer := badgersync.New(indexDir)
	s.indexSync = newGroupSync(func() error { return indexSyncer.Sync(false) })
	if err := s.load(); err != nil {
		s.closeFiles()
		db.Close()
		return nil, err
	}
	if cfg.GCInterval > 0 {
		s.wg.Add(1)
		go s.gcLoop()
	}
	return s, nil
}

// load rebuilds the in-memory state from the index and the pack files.
func (s *PackStore) load() error {
	type packIndex struct{ live, end int64 }
	indexed := map[uint32]*packIndex{}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{keyPrefixChunk}, PrefetchValues: true, PrefetchSize: 256})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var loc packLoc
			if err := it.Item().Value(func(v []byte) (err error) { loc, err = decodeLoc(v); return err }); err != nil {
				return err
			}
			pi := indexed[loc.pack]
			if pi == nil {
				pi = &packIndex{}
				indexed[loc.pack] = pi
			}
			pi.live += loc.recLen()
			pi.end = max(pi.end, loc.off+loc.recLen())
			s.stats.Chunks++
			s.stats.EncodedBytes += int64(loc.encLen)
			s.stats.RawBytes += int64(loc.rawLen)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("blockd: scanning the pack index: %w", err)
	}
	ents, err := os.ReadDir(s.packDir)
	if err != nil {
		return fmt.Errorf("blockd: pack store: %w", err)
	}
	var nums []uint32
	for _, e := range ents {
		if n, ok := parsePackName(e.Name()); ok && e.Type().IsRegular() {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	for i, n := range nums {
		p := &packFile{num: n, path: filepath.Join(s.packDir, packName(n))}
		if p.f, err = os.OpenFile(p.path, os.O_RDWR, 0); err != nil {
			return fmt.Errorf("blockd: open pack: %w", err)
		}
		adviseSequential(p.f)
		p.rf = s.openDirectRead(p.path)
		s.packs[n] = p
		fi, err := p.f.Stat()
		if err != nil {
			return fmt.Errorf("blockd: pack store: %w", err)
		}
		p.size = fi.Size()
		var pi packIndex
		if x := indexed[n]; x != nil {
			pi = *x
		}
		p.live = pi.live
		hdr := make([]byte, packHeaderSize)
		_, herr := p.f.ReadAt(hdr, 0)
		if herr == nil {
			herr = checkPackFileHeader(hdr)
		}
		last := i == len(nums)-1
		switch {
		case herr != nil && pi.live > 0:
			s.log.Error("pack file header unreadable; its chunks may be lost", "pack", p.path, "chunks_bytes", pi.live, "err", herr)
		case herr != nil:
			s.log.Warn("pack file with a bad header and no indexed chunks (a crash while it was created?)", "pack", p.path, "err", herr)
		case p.size < pi.end:
			s.log.Error("pack file shorter than its index says; some chunks are lost", "pack", p.path, "size", p.size, "indexed_end", pi.end)
		case last:
			// The only pack that can have an unindexed tail worth
			// reusing: cut it back and append after its last record
			// (and its region's padding, if it was written direct).
			end := max(pi.end, packHeaderSize)
			if p.df = s.openDirect(p.path); p.df != nil && p.size >= alignUp(end) {
				end = alignUp(end)
			}
			if p.size > end {
				if err := p.f.Truncate(end); err != nil {
					return fmt.Errorf("blockd: cut back pack %s: %w", p.path, err)
				}
				if err := p.f.Sync(); err != nil {
					return fmt.Errorf("blockd: cut back pack %s: %w", p.path, err)
				}
				s.log.Info("dropped unindexed tail of the last pack", "pack", p.path, "bytes", p.size-end)
				p.size = end
			}
			s.cur = p
		}
		delete(indexed, n)
	}
	for n, pi := range indexed {
		s.log.Error("pack file missing; its chunks are lost", "pack", filepath.Join(s.packDir, packName(n)), "bytes", pi.live)
	}
	if s.cur == nil {
		// No pack yet, or the last one is damaged: start a new one.
		n := uint32(1)
		if len(nums) > 0 {
			n = nums[len(nums)-1] + 1
		}
		p, err := s.createPack(n)
		if err != nil {
			return err
		}
		s.packs[n] = p
		s.cur = p
	}
	return nil
}

// createPack creates pack n with its header, durably (file and directory
// entry synced).
func (s *PackStore) createPack(n uint32) (*packFile, error) {
	p := &packFile{num: n, path: filepath.Join(s.packDir, packName(n)), size: packHeaderSize}
	f, err := os.OpenFile(p.path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("blockd: create pack: %w", err)
	}
	if _, err := f.WriteAt(packFileHeader(), 0); err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = syncDir(s.packDir)
	}
	if err != nil {
		f.Close()
		os.Remove(p.path)
		return nil, s.wrapErr("create pack", err)
	}
	p.f = f
	p.df = s.openDirect(p.path)
	p.rf = s.openDirectRead(p.path)
	adviseSequential(f)
	return p, nil
}

// readAheadWindow is how far past a forward-moving reader a pack is read
// ahead.
const readAheadWindow = 8 << 20

// readAhead asks the kernel to start reading the window after a record
// when reads of this pack move forward. The kernel's own readahead does not
// follow them: casfs fetches a file's chunks several at a time, so
// concurrent preads of neighbouring records reach the file out of order
// (measured: cold reads through casfs at 200-300 MB/s from packs that dd
// reads at 850 MB/s). Called with p.rw held shared.
func (p *packFile) readAhead(off, n int64) {
	end := off + n
	last := p.raLast.Swap(end)
	if off < last-readAheadWindow || off > last+readAheadWindow {
		return // not near the previous read: no pattern
	}
	next := p.raNext.Load()
	if next >= end+readAheadWindow/2 && next <= end+readAheadWindow {
		return // far enough ahead already
	}
	start := next
	if next < end || next > end+readAheadWindow {
		start = end // behind the reader, or left from a jump back
	}
	stop := end + readAheadWindow
	if !p.raNext.CompareAndSwap(next, stop) {
		return // another reader is doing it
	}
	if rc, err := p.f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.Fadvise(int(fd), start, stop-start, unix.FADV_WILLNEED) })
	}
}

// adviseSequential asks for a larger readahead on a pack: chunks of a file
// are stored in file order, so reads of a file through casfs walk a pack
// forward (a hint only; errors are ignored).
func adviseSequential(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.Fadvise(int(fd), 0, 0, unix.FADV_SEQUENTIAL) })
	}
}

// dioAlign is the alignment of O_DIRECT offsets, lengths and buffers.
const dioAlign = 4096

func alignUp(n int64) int64 { return (n + dioAlign - 1) &^ (dioAlign - 1) }

// openDirect opens path for O_DIRECT writes, or returns nil if the store
// writes buffered or the file system refuses O_DIRECT.
func (s *PackStore) openDirect(path string) *os.File {
	if s.cfg.BufferedWrites {
		return nil
	}
	return s.openODirect(path, os.O_WRONLY, "writes")
}

// openDirectRead opens path for O_DIRECT batched reads, or returns nil if
// the store reads buffered or the file system refuses O_DIRECT.
func (s *PackStore) openDirectRead(path string) *os.File {
	if !s.cfg.DirectReads {
		return nil
	}
	return s.openODirect(path, os.O_RDONLY, "reads")
}

// openODirect opens path with mode|O_DIRECT, or returns nil (and logs,
// naming what goes through the page cache instead) if that is refused.
func (s *PackStore) openODirect(path string, mode int, what string) *os.File {
	f, err := os.OpenFile(path, mode|syscall.O_DIRECT, 0)
	if err != nil {
		s.log.Debug("pack "+what+" go through the page cache: no O_DIRECT here", "pack", path, "err", err)
		return nil
	}
	return f
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *PackStore) closeFiles() {
	for _, p := range s.packs {
		p.closeFiles()
	}
}

func (p *packFile) closeFiles() {
	if p.df != nil {
		p.df.Close()
		p.df = nil
	}
	if p.rf != nil {
		p.rf.Close()
		p.rf = nil
	}
	if p.f != nil {
		p.f.Close()
		p.f = nil
	}
}

// Close stops compaction, then closes the index and the packs. Operations
// after Close return ErrClosed.
func (s *PackStore) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.closeMu.Unlock() // no operation is running, and none will start
	s.wg.Wait()
	err := s.db.Close()
	s.mu.Lock()
	s.closeFiles()
	s.mu.Unlock()
	return err
}

func (s *PackStore) enter() error {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (s *PackStore) leave() { s.closeMu.RUnlock() }

func (s *PackStore) failedErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// fail makes the store refuse writes after a failed sync: the kernel may
// have dropped the dirty pages, so nothing written since the last good
// sync can be trusted.
func (s *PackStore) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed == nil {
		s.failed = fmt.Errorf("blockd: pack store stopped writing after a failed sync (restart it): %w", err)
		s.log.Error("sync failed; pack store refuses writes until restarted", "err", err)
	}
}

// Get implements Store. The record is read with one pread and its header
// checked against the index (CRC, ID, length) before the data is returned;
// the data is checked by the reader (see pack_format.go).
func (s *PackStore) Get(ctx context.Context, id cas.ChunkID) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	return s.getLocked(id)
}

// getLocked is Get, called between enter and leave.
func (s *PackStore) getLocked(id cas.ChunkID) ([]byte, error) {
	var prev packLoc
	for attempt := 0; ; attempt++ {
		loc, err := s.lookup(id)
		if err != nil {
			return nil, err
		}
		data, err := s.readChunk(id, loc)
		if errors.Is(err, errPackGone) {
			if attempt == 0 || (loc != prev && attempt < 100) {
				prev = loc // moved by compaction: look again
				continue
			}
			return nil, fmt.Errorf("%w: pack %s holding chunk %s is missing", ErrPackCorrupt, packName(loc.pack), id.Short())
		}
		if err != nil {
			return nil, err
		}
		if err := s.awaitDurable([]cas.ChunkID{id}); err != nil {
			return nil, err
		}
		return data, nil
	}
}

func (s *PackStore) lookup(id cas.ChunkID) (packLoc, error) {
	var loc packLoc
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(chunkKey(id))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) (err error) { loc, err = decodeLoc(v); return err })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return loc, fmt.Errorf("chunk %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return loc, fmt.Errorf("blockd: get %s: %w", id.Short(), err)
	}
	return loc, nil
}

// readChunk reads and checks the record at loc; it returns the chunk's
// encoded bytes (a fresh slice) or errPackGone.
func (s *PackStore) readChunk(id cas.ChunkID, loc packLoc) ([]byte, error) {
	s.mu.Lock()
	p := s.packs[loc.pack]
	s.mu.Unlock()
	if p == nil {
		return nil, errPackGone
	}
	buf := make([]byte, loc.recLen())
	p.rw.RLock()
	if p.f == nil {
		p.rw.RUnlock()
		return nil, errPackGone
	}
	p.readAhead(loc.off, loc.recLen())
	n, err := p.f.ReadAt(buf, loc.off)
	p.rw.RUnlock()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: pack %s ends %d bytes into the %d-byte record of chunk %s at offset %d",
			ErrPackCorrupt, packName(loc.pack), n, len(buf), id.Short(), loc.off)
	}
	if err != nil {
		return nil, fmt.Errorf("blockd: read chunk %s: %w", id.Short(), err)
	}
	if err := checkRecord(buf, id, loc.encLen); err != nil {
		return nil, fmt.Errorf("pack %s offset %d: %w", packName(loc.pack), loc.off, err)
	}
	return buf[recordHeaderLen:], nil
}

// awaitDurable returns once every one of the (present) ids is durable: if
// any is indexed by a Put whose index sync has not finished, it waits for
// an index sync that starts now.
func (s *PackStore) awaitDurable(present []cas.ChunkID) error {
	if !s.pending.anyOf(present) {
		return nil
	}
	return s.syncIndex()
}

func (s *PackStore) setPending(ids []cas.ChunkID, delta int) { s.pending.add(ids, delta) }

func (s *PackStore) syncIndex() error {
	if err := s.indexSync.Sync(); err != nil {
		s.fail(err)
		return s.wrapErr("sync index", err)
	}
	return nil
}

// Missing implements Store.
func (s *PackStore) Missing(ctx context.Context, ids []cas.ChunkID) ([]cas.ChunkID, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	out, present, err := s.partition(ctx, ids)
	if err != nil {
		return nil, err
	}
	if err := s.awaitDurable(present); err != nil {
		return nil, err
	}
	return out, nil
}

// partition splits ids into absent and present ones (as the index has
// them now), keeping input order.
func (s *PackStore) partition(ctx context.Context, ids []cas.ChunkID) (absent, present []cas.ChunkID, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		for i, id := range ids {
			if i%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			_, err := txn.Get(chunkKey(id))
			switch {
			case errors.Is(err, badger.ErrKeyNotFound):
				absent = append(absent, id)
			case err != nil:
				return err
			default:
				present = append(present, id)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("blockd: missing: %w", err)
	}
	return absent, present, nil
}

// Put implements WriteStore: new chunks (not indexed, first of their ID in
// the batch) are written to the current pack as one region, the pack is
// synced, the index entries committed and the index synced. Chunks already
// stored are skipped (if one was indexed by a concurrent Put whose sync is
// still running, Put waits for an index sync).
func (s *PackStore) Put(ctx context.Context, chunks []Chunk) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := s.failedErr(); err != nil {
		return err
	}
	todo, present, err := s.newChunks(ctx, chunks, make(map[cas.ChunkID]struct{}, len(chunks)))
	if err != nil {
		return err
	}
	if len(todo) == 0 {
		return s.awaitDurable(present)
	}
	p, locs, err := s.writeBatch(todo)
	if err != nil {
		return err
	}
	written, err := s.indexNew(p, todo, locs)
	s.unplace(p)
	defer s.setPending(written, -1)
	if err != nil {
		if len(written) > 0 {
			// Entries of the failed batch are visible: make them
			// durable before they stop being pending.
			if serr := s.syncIndex(); serr != nil {
				s.log.Error("index sync after a failed put", "err", serr)
			}
		}
		return s.wrapErr("put index", err)
	}
	// This sync starts after our commit and after the commits of the
	// present chunks (they were visible to partition), so it covers both.
	return s.syncIndex()
}

// newChunks returns the chunks of the batch that are to be written: not
// in seen (which it adds them to), first of their ID, and not indexed; and
// the IDs of those that are indexed already.
func (s *PackStore) newChunks(ctx context.Context, chunks []Chunk, seen map[cas.ChunkID]struct{}) (todo []Chunk, present []cas.ChunkID, err error) {
	uniq := make([]Chunk, 0, len(chunks))
	ids := make([]cas.ChunkID, 0, len(chunks))
	for _, c := range chunks {
		if _, dup := seen[c.ID]; dup {
			continue
		}
		if len(c.Data) > 1<<30 {
			return nil, nil, fmt.Errorf("blockd: put: chunk %s of %d bytes is too large for a pack record", c.ID.Short(), len(c.Data))
		}
		seen[c.ID] = struct{}{}
		uniq = append(uniq, c)
		ids = append(ids, c.ID)
	}
	absent, present, err := s.partition(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	todo = uniq[:0]
	for i, j := 0, 0; i < len(uniq) && j < len(absent); i++ {
		if uniq[i].ID == absent[j] {
			todo = append(todo, uniq[i])
			j++
		}
	}
	return todo, present, nil
}

// writeBatch places the chunks' records in the current pack as one region,
// writes them and syncs the pack (group sync). It returns the
// pack, with a writer reference the caller drops with unplace once the
// records are indexed, and each chunk's location.
func (s *PackStore) writeBatch(chunks []Chunk) (*packFile, []packLoc, error) {
	p, locs, err := s.writeRegion(chunks)
	if err != nil {
		return nil, nil, err
	}
	if err := s.dataSync.Sync(); err != nil {
		s.fail(err)
		s.unplace(p)
		return nil, nil, s.wrapErr("sync pack", err)
	}
	return p, locs, nil
}

// writeRegion is writeBatch without the sync: the records are written and
// the pack marked dirty.
func (s *PackStore) writeRegion(chunks []Chunk) (*packFile, []packLoc, error) {
	var need int64
	for _, c := range chunks {
		need += recordHeaderLen + int64(len(c.Data))
	}
	release, err := s.reserve(need)
	if err != nil {
		return nil, nil, err
	}
	defer release()
	p, off, span, err := s.place(need)
	if err != nil {
		return nil, nil, err
	}
	locs := make([]packLoc, len(chunks))
	pos := off
	for i, c := range chunks {
		raw, _ := cas.RawSize(c.Data) // unverified stores may hold junk: count it as 0
		locs[i] = packLoc{pack: p.num, off: pos, encLen: uint32(len(c.Data)), rawLen: uint32(raw)}
		pos += locs[i].recLen()
	}
	if err := s.writeRecords(p, off, chunks); err != nil {
		s.abandon(p, off, span)
		s.unplace(p)
		return nil, nil, s.wrapErr("write pack", err)
	}
	s.mu.Lock()
	s.dirty[p] = struct{}{}
	s.mu.Unlock()
	return p, locs, nil
}

// place reserves need bytes at the end of the current pack, sealing it
// and starting a new one first if the region would take it past PackSize.
// It returns the region's offset and its span (need, padded to dioAlign
// for a pack written with O_DIRECT).
func (s *PackStore) place(need int64) (p *packFile, off, span int64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed != nil {
		return nil, 0, 0, s.failed
	}
	p = s.cur
	off, span = p.region(need)
	if p.size > packHeaderSize && off+span > s.cfg.PackSize {
		np, err := s.createPack(p.num + 1)
		if err != nil {
			return nil, 0, 0, err
		}
		s.packs[np.num] = np
		s.cur = np
		if p.writers == 0 {
			p.closeDirect()
		}
		p = np
		off, span = p.region(need)
	}
	p.size = off + span
	p.writers++
	return p, off, span, nil
}

// region is where a region of need bytes would go in p, and its span.
func (p *packFile) region(need int64) (off, span int64) {
	if p.df == nil {
		return p.size, need
	}
	return alignUp(p.size), alignUp(need)
}

// unplace drops a writer reference; a sealed pack's O_DIRECT file is
// closed with its last writer.
func (s *PackStore) unplace(p *packFile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.writers--
	if p != s.cur && p.writers == 0 {
		p.closeDirect()
	}
}

func (p *packFile) closeDirect() {
	p.rw.Lock()
	defer p.rw.Unlock()
	if p.df != nil {
		p.df.Close()
		p.df = nil
	}
}

// abandon gives back a region whose write failed, if nothing was placed
// after it (so a failed write on a full disk frees what it took).
func (s *PackStore) abandon(p *packFile, off, need int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.size != off+need {
		return // a later region exists; these bytes stay dead
	}
	p.rw.RLock()
	defer p.rw.RUnlock()
	if p.f == nil {
		return
	}
	if err := p.f.Truncate(off); err != nil {
		s.log.Warn("cannot give back a failed pack write", "pack", p.path, "err", err)
		return
	}
	p.size = off
}

// writeRecords writes the chunks' records at off: through the O_DIRECT file
// via the staging buffer, or with pwritev straight from the callers'
// buffers.
func (s *PackStore) writeRecords(p *packFile, off int64, chunks []Chunk) error {
	hdrs := make([]byte, recordHeaderLen*len(chunks))
	iovs := make([][]byte, 0, 2*len(chunks))
	for i, c := range chunks {
		h := hdrs[i*recordHeaderLen : (i+1)*recordHeaderLen]
		putRecordHeader(h, c.ID, c.Data)
		iovs = append(iovs, h)
		if len(c.Data) > 0 {
			iovs = append(iovs, c.Data)
		}
	}
	p.rw.RLock()
	defer p.rw.RUnlock()
	if p.f == nil {
		return fmt.Errorf("pack %s was removed", p.path)
	}
	if p.df != nil {
		return writeDirect(p.df, off, iovs)
	}
	return pwritevAll(p.f, iovs, off)
}

// stagingSize is the size of one O_DIRECT write.
const stagingSize = 4 << 20

var staging = sync.Pool{New: func() any {
	b := alignedBuf(stagingSize)
	return &b
}}

func alignedBuf(n int) []byte {
	b := make([]byte, n+dioAlign)
	o := int(uintptr(unsafe.Pointer(&b[0])) & (dioAlign - 1))
	if o != 0 {
		o = dioAlign - o
	}
	return b[o : o+n : o+n]
}

// writeDirect writes the bytes of iovs at off (aligned) through an aligned
// staging buffer, stagingSize at a time, zero-padding the end to dioAlign.
func writeDirect(f *os.File, off int64, iovs [][]byte) error {
	bp := staging.Get().(*[]byte)
	defer staging.Put(bp)
	buf := *bp
	n := 0
	flush := func(final bool) error {
		w := n
		if final {
			w = int(alignUp(int64(n)))
			clear(buf[n:w])
		}
		if w == 0 {
			return nil
		}
		if _, err := f.WriteAt(buf[:w], off); err != nil {
			return err
		}
		off += int64(w)
		n = 0
		return nil
	}
	for _, b := range iovs {
		for len(b) > 0 {
			k := copy(buf[n:], b)
			n += k
			b = b[k:]
			if n == len(buf) {
				if err := flush(false); err != nil {
					return err
				}
			}
		}
	}
	return flush(true)
}

// pwritevAll writes every byte of iovs at off (IOV_MAX at a time, resuming
// after short writes).
func pwritevAll(f *os.File, iovs [][]byte, off int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	for len(iovs) > 0 {
		batch := iovs[:min(len(iovs), 1024)]
		var n int
		var werr error
		if err := rc.Control(func(fd uintptr) { n, werr = unix.Pwritev(int(fd), batch, off) }); err != nil {
			return err
		}
		if errors.Is(werr, unix.EINTR) {
			continue
		}
		if werr != nil {
			return &os.PathError{Op: "pwritev", Path: f.Name(), Err: werr}
		}
		if n == 0 {
			return &os.PathError{Op: "pwritev", Path: f.Name(), Err: io.ErrShortWrite}
		}
		off += int64(n)
		for n > 0 {
			if n >= len(iovs[0]) {
				n -= len(iovs[0])
				iovs = iovs[1:]
			} else {
				iovs[0] = iovs[0][n:]
				n = 0
			}
		}
	}
	return nil
}

// syncPacks fdatasyncs every pack written since the previous call (the
// data groupSync's sync function). A failure is sticky (fail): the dirty
// set is already taken, and on Linux a later fdatasync does not report the
// earlier error, so a later round must not pass for a good one — whether the
// failed round was waited for or only kicked off by a put session.
func (s *PackStore) syncPacks() error {
	if err := s.failedErr(); err != nil {
		return err
	}
	if err := s.syncPacksOnce(); err != nil {
		s.fail(err)
		return err
	}
	return nil
}

func (s *PackStore) syncPacksOnce() error {
	s.mu.Lock()
	ps := make([]*packFile, 0, len(s.dirty))
	for p := range s.dirty {
		ps = append(ps, p)
	}
	clear(s.dirty)
	s.mu.Unlock()
	for _, p := range ps {
		if err := p.datasync(); err != nil {
			return err
		}
	}
	return nil
}

// packDatasync syncs a pack file's data; tests replace it to make syncs fail.
var packDatasync = unix.Fdatasync

func (p *packFile) datasync() error {
	p.rw.RLock()
	defer p.rw.RUnlock()
	if p.f == nil {
		return nil
	}
	rc, err := p.f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = packDatasync(int(fd)) }); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: p.path, Err: serr}
	}
	return nil
}

// reserve claims space for a batch, or refuses it with ErrNoSpace if the
// packs' file system would be left with less than MinFreeBytes.
func (s *PackStore) reserve(need int64) (release func(), err error) {
	if s.cfg.MinFreeBytes < 0 && s.cfg.MaxBytes <= 0 {
		return func() {}, nil
	}
	need += 64 * (need/(64<<10) + 1) // index entries, roughly
	var used int64
	if s.cfg.MaxBytes > 0 {
		used = s.packBytes()
	}
	free := int64(math.MaxInt64 / 2)
	if s.cfg.MinFreeBytes >= 0 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(s.packDir, &st); err != nil {
			return nil, fmt.Errorf("blockd: statfs %s: %w", s.packDir, err)
		}
		free = int64(st.Bavail) * int64(st.Bsize)
	}
	s.spaceMu.Lock()
	defer s.spaceMu.Unlock()
	if s.cfg.MinFreeBytes >= 0 && free-s.inflight-need < s.cfg.MinFreeBytes {
		return nil, fmt.Errorf("blockd: put of %d bytes: %d bytes free, %d being written, %d kept free: %w (%w)",
			need, free, s.inflight, s.cfg.MinFreeBytes, ErrNoSpace, syscall.ENOSPC)
	}
	if s.cfg.MaxBytes > 0 && used+s.inflight+need > s.cfg.MaxBytes {
		return nil, fmt.Errorf("blockd: put of %d bytes: packs hold %d bytes, %d being written, quota %d: %w (%w)",
			need, used, s.inflight, s.cfg.MaxBytes, ErrNoSpace, syscall.ENOSPC)
	}
	s.inflight += need
	return func() {
		s.spaceMu.Lock()
		s.inflight -= need
		s.spaceMu.Unlock()
	}, nil
}

// packBytes is the size of every pack file, regions being written
// included.
func (s *PackStore) packBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, p := range s.packs {
		n += p.size
	}
	return n
}

// indexNew commits index entries for chunks written at locs in p, in as
// many transactions as needed, skipping chunks a concurrent Put indexed
// first (their records here become dead bytes). It returns the IDs it
// indexed, which it has marked pending (the caller unmarks them after the
// index sync).
func (s *PackStore) indexNew(p *packFile, chunks []Chunk, locs []packLoc) ([]cas.ChunkID, error) {
	var written []cas.ChunkID
	for len(chunks) > 0 {
		n, w, err := s.indexTxn(p, chunks, locs)
		written = append(written, w...)
		if err != nil {
			return written, err
		}
		chunks, locs = chunks[n:], locs[n:]
	}
	return written, nil
}

func (s *PackStore) indexTxn(p *packFile, chunks []Chunk, locs []packLoc) (int, []cas.ChunkID, error) {
	for {
		var added []int
		txn := s.db.NewTransaction(true)
		n := 0
		var err error
		for i, c := range chunks {
			key := chunkKey(c.ID)
			if _, err = txn.Get(key); err == nil {
				n++ // indexed by a concurrent Put
				continue
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				break
			}
			if err = txn.Set(key, locs[i].encode()); err != nil {
				break
			}
			added = append(added, i)
			n++
		}
		if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
			err = nil // commit what fits; the caller sends the rest
		}
		ids := make([]cas.ChunkID, len(added))
		for k, i := range added {
			ids[k] = chunks[i].ID
		}
		if err == nil {
			// Pending before visible: a reader that sees the entry
			// also sees it pending until the index sync.
			s.setPending(ids, 1)
			if err = txn.Commit(); err != nil {
				s.setPending(ids, -1)
			}
		}
		txn.Discard()
		if errors.Is(err, badger.ErrConflict) {
			continue // a concurrent Put indexed one of these: recheck
		}
		if err != nil {
			return 0, nil, err
		}
		s.mu.Lock()
		for _, i := range added {
			p.live += locs[i].recLen()
			s.stats.Chunks++
			s.stats.EncodedBytes += int64(locs[i].encLen)
			s.stats.RawBytes += int64(locs[i].rawLen)
		}
		s.mu.Unlock()
		return n, ids, nil
	}
}

// Delete implements PruneStore: index entries are removed (the records
// become dead bytes of their packs) and the index is synced.
func (s *PackStore) Delete(ctx context.Context, ids []cas.ChunkID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if len(ids) == 0 {
		return nil
	}
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		if err := s.deleteTxn(ids[:n]); err != nil {
			return s.wrapErr("delete", err)
		}
		ids = ids[n:]
	}
	return s.syncIndex()
}

func (s *PackStore) deleteTxn(ids []cas.ChunkID) error {
	var removed []packLoc
	if err := updateRetrying(s.db, func(txn *badger.Txn) error {
		removed = removed[:0]
		for _, id := range ids {
			key := chunkKey(id)
			item, err := txn.Get(key)
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			var loc packLoc
			if err := item.Value(func(v []byte) (err error) { loc, err = decodeLoc(v); return err }); err != nil {
				return err
			}
			if err := txn.Delete(key); err != nil {
				return err
			}
			removed = append(removed, loc)
		}
		return nil
	}); err != nil {
		return err
	}
	s.mu.Lock()
	for _, loc := range removed {
		if p := s.packs[loc.pack]; p != nil {
			p.live -= loc.recLen()
		}
		s.stats.Chunks--
		s.stats.EncodedBytes -= int64(loc.encLen)
		s.stats.RawBytes -= int64(loc.rawLen)
	}
	s.mu.Unlock()
	return nil
}

// List implements PruneStore. It reads pages of index entries, each from a
// fresh read snapshot, and calls fn outside any transaction, so fn may call
// into the store (including Delete). A chunk added or deleted during List
// may or may not be listed; every chunk present throughout is listed once.
func (s *PackStore) List(ctx context.Context, fn func(ChunkInfo) error) error {
	return listPaged(ctx, fn, s.listPage)
}

func (s *PackStore) listPage(seek []byte, max int, infos *[]ChunkInfo) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{keyPrefixChunk}, PrefetchValues: true, PrefetchSize: 256})
		defer it.Close()
		for it.Seek(seek); it.Valid() && len(*infos) < max; it.Next() {
			item := it.Item()
			var info ChunkInfo
			copy(info.ID[:], item.Key()[1:])
			if err := item.Value(func(v []byte) error {
				loc, err := decodeLoc(v)
				info.EncodedSize = int(loc.encLen)
				return err
			}); err != nil {
				return fmt.Errorf("blockd: list: %w", err)
			}
			*infos = append(*infos, info)
		}
		return nil
	})
}

// Stats implements StatStore.
func (s *PackStore) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Usage implements UsageStore: counters kept with every index change and
// rebuilt from the index at open.
func (s *PackStore) Usage(ctx context.Context) (Usage, error) {
	if err := ctx.Err(); err != nil {
		return Usage{}, err
	}
	if err := s.enter(); err != nil {
		return Usage{}, err
	}
	defer s.leave()
	st := s.Stats()
	return Usage{Chunks: uint64(st.Chunks), EncodedBytes: uint64(st.EncodedBytes)}, nil
}

// Syncs is the number of index syncs Put, Delete and compaction have run
// (each shared by every Put waiting for it; each Put that writes also has
// one pack sync before it).
func (s *PackStore) Syncs() int64 { return s.indexSync.Count() }

// PackInfo describes one pack file.
type PackInfo struct {
	Num       uint32
	Path      string
	Size      int64 // bytes, header included
	LiveBytes int64 // bytes of indexed records (headers included)
	Current   bool  // being appended to
}

// DeadBytes is what compaction would reclaim.
func (p PackInfo) DeadBytes() int64 { return p.Size - packHeaderSize - p.LiveBytes }

// Packs describes the pack files, in order.
func (s *PackStore) Packs() []PackInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PackInfo, 0, len(s.packs))
	for _, p := range s.packs {
		out = append(out, PackInfo{Num: p.num, Path: p.path, Size: p.size, LiveBytes: p.live, Current: p == s.cur})
	}
	slices.SortFunc(out, func(a, b PackInfo) int { return cmp.Compare(a.Num, b.Num) })
	return out
}

func (s *PackStore) wrapErr(op string, err error) error {
	if errors.Is(err, syscall.ENOSPC) && !errors.Is(err, ErrNoSpace) {
		return fmt.Errorf("blockd: %s: %w: %w", op, ErrNoSpace, err)
	}
	return fmt.Errorf("blockd: %s: %w", op, err)
}
