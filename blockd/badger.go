package blockd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"stasis/cas"
	"stasis/internal/badgersync"
)

// Badger key layout:
//
//	"c" | 32-byte chunk ID  ->  the encoded chunk (cas.Encode output)
//	"u"                     ->  saved counters (see saveCounts): present
//	                            only while the store is closed cleanly
//
// Values are larger than ValueThreshold (1 KiB) except for tiny, highly
// compressed chunks, so they live in badger's value log and the LSM tree
// holds only keys and value pointers; value-log GC reclaims deleted chunks.
// Writes are not synced by badger (SyncWrites=false): Put syncs once per
// group of concurrent Puts (see groupSync) before it returns.
const keyPrefixChunk = 'c'

// keyCounts holds the totals (Stats) as of a clean Close, so that the next
// open need not read every chunk to count them. Open reads it and deletes
// it (synced) before the store accepts a write: once the store is open the
// key is absent, so after a crash the next open finds none and counts.
var keyCounts = []byte{'u'}

// countsVersion leads the saved counters' value: version, then Chunks,
// EncodedBytes and RawBytes as big-endian int64s.
const countsVersion = 1

func chunkKey(id cas.ChunkID) []byte {
	k := make([]byte, 1+cas.IDSize)
	k[0] = keyPrefixChunk
	copy(k[1:], id[:])
	return k
}

// BadgerConfig configures a BadgerStore.
type BadgerConfig struct {
	Dir    string       // directory holding the database; created if missing
	Logger *slog.Logger // badger's own messages go here (info as debug); nil: discard
	// Small shrinks memtables, caches and value-log files for tests and
	// embedded use, where many stores share a machine.
	Small bool
	// GCInterval is how often value-log GC runs (default 10 minutes;
	// negative disables it). GCDiscardRatio is the fraction of a value-log
	// file that must be garbage before it is rewritten (default 0.5).
	GCInterval     time.Duration
	GCDiscardRatio float64
	// MinFreeBytes is the free space Put leaves on the file system
	// (default 256 MiB, 32 MiB when Small). Badger writes values through
	// a memory map, and a write into a mapped file on a full file system
	// kills the process with SIGBUS; so Put refuses (ErrNoSpace) a batch
	// that would leave less than this free, counting the batches of
	// concurrent Puts still being written. Negative disables the check.
	MinFreeBytes int64
}

// Validate checks the config and fills defaults.
func (c *BadgerConfig) Validate() error {
	if c.Dir == "" {
		return errors.New("blockd: badger config needs a Dir")
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

// BadgerStore is the persistent PruneStore: chunks in a badger database.
type BadgerStore struct {
	db   *badger.DB
	log  *slog.Logger
	gs   *groupSync
	done chan struct{}
	wg   sync.WaitGroup

	closeMu sync.RWMutex // held shared by operations, exclusively by Close
	closed  bool

	statsMu sync.Mutex
	stats   Stats

	pending pendingSet // committed to badger, sync not finished

	noSaveCounts bool // tests: Close leaves no counters, as a crash does

	dir      string
	minFree  int64
	spaceMu  sync.Mutex
	inflight int64 // bytes of Puts being written, reserved against free space
}

var (
	_ PruneStore = (*BadgerStore)(nil)
	_ StatStore  = (*BadgerStore)(nil)
	_ UsageStore = (*BadgerStore)(nil)
)

// ErrClosed is returned by operations on a closed store.
var ErrClosed = errors.New("blockd: store closed")

// OpenBadger opens (or creates) the store in cfg.Dir, takes the counters of
// what it holds (Stats, Usage) from a clean Close or, after a crash, counts
// them (one pass over the keys, reading each value's codec header), and
// starts the value-log GC loop. Close stops the loop, saves the counters
// and closes the database.
func OpenBadger(cfg BadgerConfig) (*BadgerStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := badger.DefaultOptions(cfg.Dir).
		WithLogger(badgerLogger{cfg.Logger}).
		WithSyncWrites(false).
		WithValueThreshold(1 << 10).
		WithCompression(options.None). // values are LZ4 already; keys are hashes
		WithNumVersionsToKeep(1).
		WithMetricsEnabled(false)
	if cfg.Small {
		opts = opts.WithMemTableSize(4 << 20).
			WithNumMemtables(2).
			WithNumLevelZeroTables(2).
			WithNumLevelZeroTablesStall(8).
			WithBlockCacheSize(1 << 20).
			WithIndexCacheSize(1 << 20).
			WithValueLogFileSize(64 << 20).
			WithNumCompactors(2).
			WithNumGoroutines(2)
	} else {
		opts = opts.WithBlockCacheSize(64 << 20).WithIndexCacheSize(32 << 20)
	}
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("blockd: open badger in %s: %w", cfg.Dir, err)
	}
	s := &BadgerStore{db: db, log: cfg.Logger, done: make(chan struct{}), dir: cfg.Dir, minFree: cfg.MinFreeBytes}
	syncer := badgersync.New(cfg.Dir)
	s.gs = newGroupSync(func() error { return syncer.Sync(true) })
	if err := s.loadCounts(); err != nil {
		db.Close()
		return nil, err
	}
	if cfg.GCInterval > 0 {
		s.wg.Add(1)
		go s.gcLoop(cfg.GCInterval, cfg.GCDiscardRatio)
	}
	return s, nil
}

// loadCounts sets the counters from those a clean Close saved, or else by
// counting every chunk; either way the saved counters are gone (durably)
// when it returns, so a crash from now on cannot leave stale ones behind.
func (s *BadgerStore) loadCounts() error {
	var saved []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(keyCounts)
		if err != nil {
			return err
		}
		saved, err = item.ValueCopy(nil)
		return err
	})
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		s.log.Info("counting chunks (the store was not closed cleanly)")
		return s.count()
	case err != nil:
		return fmt.Errorf("blockd: reading saved counters: %w", err)
	}
	if len(saved) != 1+3*8 || saved[0] != countsVersion {
		s.log.Warn("saved counters unreadable; counting chunks", "bytes", len(saved))
		if err := s.count(); err != nil {
			return err
		}
	} else {
		s.stats = Stats{
			Chunks:       int64(binary.BigEndian.Uint64(saved[1:])),
			EncodedBytes: int64(binary.BigEndian.Uint64(saved[9:])),
			RawBytes:     int64(binary.BigEndian.Uint64(saved[17:])),
		}
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(keyCounts) }); err != nil {
		return fmt.Errorf("blockd: dropping saved counters: %w", err)
	}
	if err := badgersync.Sync(s.dir, true); err != nil {
		return fmt.Errorf("blockd: dropping saved counters: %w", err)
	}
	return nil
}

// saveCounts stores the counters for the next open; Close calls it when no
// operation is running and none can start.
func (s *BadgerStore) saveCounts() error {
	st := s.Stats()
	v := make([]byte, 1, 1+3*8)
	v[0] = countsVersion
	v = binary.BigEndian.AppendUint64(v, uint64(st.Chunks))
	v = binary.BigEndian.AppendUint64(v, uint64(st.EncodedBytes))
	v = binary.BigEndian.AppendUint64(v, uint64(st.RawBytes))
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(keyCounts, v) }); err != nil {
		return err
	}
	return badgersync.Sync(s.dir, true)
}

func (s *BadgerStore) count() error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{keyPrefixChunk}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := it.Item().Value(func(v []byte) error {
				s.stats.add(v, 1)
				return nil
			}); err != nil {
				return fmt.Errorf("blockd: counting chunks: %w", err)
			}
		}
		return nil
	})
}

// Close stops value-log GC, saves the counters (so the next open need not
// count the chunks) and closes the database. Operations after Close return
// ErrClosed.
func (s *BadgerStore) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	close(s.done)
	s.wg.Wait()
	if !s.noSaveCounts {
		if err := s.saveCounts(); err != nil {
			// Not fatal: the next open counts the chunks.
			s.log.Warn("saving counters failed; the next open will count chunks", "err", err)
		}
	}
	return s.db.Close()
}

func (s *BadgerStore) gcLoop(every time.Duration, ratio float64) {
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.RunGC(ratio)
		}
	}
}

// RunGC rewrites value-log files that are at least ratio garbage, until
// none is; it returns how many files it rewrote.
func (s *BadgerStore) RunGC(ratio float64) int {
	n := 0
	for {
		select {
		case <-s.done:
			return n
		default:
		}
		err := s.db.RunValueLogGC(ratio)
		if err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				s.log.Warn("value-log GC failed", "err", err)
			}
			return n
		}
		n++
	}
}

func (s *BadgerStore) enter() error {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (s *BadgerStore) leave() { s.closeMu.RUnlock() }

// Get implements Store.
func (s *BadgerStore) Get(ctx context.Context, id cas.ChunkID) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	var out []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(chunkKey(id))
		if err != nil {
			return err
		}
		out, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("chunk %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blockd: get %s: %w", id.Short(), err)
	}
	if err := s.awaitDurable([]cas.ChunkID{id}); err != nil {
		return nil, err
	}
	return out, nil
}

// awaitDurable returns once every one of the (present) ids is durable: if
// any is pending, it waits for a sync that starts now.
func (s *BadgerStore) awaitDurable(present []cas.ChunkID) error {
	if !s.pending.anyOf(present) {
		return nil
	}
	if err := s.gs.Sync(); err != nil {
		return s.wrapErr("sync", err)
	}
	return nil
}

func (s *BadgerStore) setPending(ids []cas.ChunkID, delta int) { s.pending.add(ids, delta) }

// Missing implements Store.
func (s *BadgerStore) Missing(ctx context.Context, ids []cas.ChunkID) ([]cas.ChunkID, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	var out, present []cas.ChunkID
	err := s.db.View(func(txn *badger.Txn) error {
		for i, id := range ids {
			if i%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			_, err := txn.Get(chunkKey(id))
			switch {
			case errors.Is(err, badger.ErrKeyNotFound):
				out = append(out, id)
			case err != nil:
				return err
			default:
				present = append(present, id)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("blockd: missing: %w", err)
	}
	if err := s.awaitDurable(present); err != nil {
		return nil, err
	}
	return out, nil
}

// Put implements WriteStore. Chunks go into transactions (split when one
// grows too big, retried on conflicts with concurrent Puts of the same
// chunk); once all are committed, one group sync makes them durable.
func (s *BadgerStore) Put(ctx context.Context, chunks []Chunk) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := s.beginPut()
	if err != nil {
		return err
	}
	defer p.close()
	if err := p.write(ctx, chunks); err != nil {
		return err
	}
	return p.commit()
}

// putSession writes several batches that become durable together, so a
// streamed request can store one batch while it reads the next and still
// sync only once. write stores a batch (not acknowledged: it may not be
// durable yet); writeback starts making what was written durable in the
// background and returns at once; commit returns once everything written
// is durable (and, for a store that indexes, visible); close (always
// called, once) finishes the session: without a successful commit, the
// batches written may or may not be stored, each chunk whole or not at all.
// After a failed write, commit still makes the batches written before it
// durable.
type putSession interface {
	write(ctx context.Context, chunks []Chunk) error
	writeback()
	commit() error
	close()
}

// sessionStore is implemented by stores with put sessions.
type sessionStore interface {
	beginPut() (putSession, error)
}

var (
	_ sessionStore = (*BadgerStore)(nil)
	_ sessionStore = (*PackStore)(nil)
)

// badgerSession is BadgerStore's putSession: write commits a batch
// (visible, marked pending), commit syncs once for everything written,
// close makes sure of a sync, unmarks the chunks and releases the store.
type badgerSession struct {
	s       *BadgerStore
	written []cas.ChunkID
	synced  bool
}

func (s *BadgerStore) beginPut() (putSession, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	return &badgerSession{s: s}, nil
}

func (p *badgerSession) write(ctx context.Context, chunks []Chunk) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	release, err := p.s.reserve(chunks)
	if err != nil {
		return err
	}
	defer release()
	p.synced = false
	for len(chunks) > 0 {
		n, w, err := p.s.putTxn(chunks)
		p.written = append(p.written, w...)
		if err != nil {
			return p.s.wrapErr("put", err)
		}
		chunks = chunks[n:]
	}
	return nil
}

// writeback starts a sync of what is written so far in the background, if
// none is running, and returns at once: called between the batches of a
// long put, it lets the disk work while the next batch arrives, so that the
// sync commit waits for has less left to write.
func (p *badgerSession) writeback() { p.s.gs.Kick() }

func (p *badgerSession) commit() error {
	if err := p.s.gs.Sync(); err != nil {
		return p.s.wrapErr("sync", err)
	}
	p.synced = true
	return nil
}

func (p *badgerSession) close() {
	if !p.synced && len(p.written) > 0 {
		// Chunks of a failed write are visible: make them durable
		// before they stop being pending. A failure here means the
		// database itself is failing; its error went to the caller.
		if err := p.s.gs.Sync(); err != nil {
			p.s.log.Error("sync after a failed put", "err", err)
		}
	}
	p.s.setPending(p.written, -1)
	p.s.leave()
}

// reserve claims space for a batch, or refuses it with ErrNoSpace if the
// file system would be left with less than minFree bytes.
func (s *BadgerStore) reserve(chunks []Chunk) (release func(), err error) {
	if s.minFree < 0 {
		return func() {}, nil
	}
	var need int64
	for _, c := range chunks {
		need += int64(len(c.Data)) + 64 // value plus key, header and pointer
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err != nil {
		return nil, fmt.Errorf("blockd: statfs %s: %w", s.dir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	s.spaceMu.Lock()
	defer s.spaceMu.Unlock()
	if free-s.inflight-need < s.minFree {
		return nil, fmt.Errorf("blockd: put of %d bytes: %d bytes free, %d being written, %d kept free: %w (%w)",
			need, free, s.inflight, s.minFree, ErrNoSpace, syscall.ENOSPC)
	}
	s.inflight += need
	return func() {
		s.spaceMu.Lock()
		s.inflight -= need
		s.spaceMu.Unlock()
	}, nil
}

// putTxn commits a prefix of chunks in one transaction and returns its
// length and the IDs it wrote, which it has marked pending (the caller
// unmarks them after its sync).
func (s *BadgerStore) putTxn(chunks []Chunk) (int, []cas.ChunkID, error) {
	for {
		var added Stats
		var written []cas.ChunkID
		txn := s.db.NewTransaction(true)
		n := 0
		var err error
		for _, c := range chunks {
			key := chunkKey(c.ID)
			if _, err = txn.Get(key); err == nil {
				n++ // already stored (or earlier in this batch)
				continue
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				break
			}
			if err = txn.Set(key, c.Data); err != nil {
				break
			}
			added.add(c.Data, 1)
			written = append(written, c.ID)
			n++
		}
		if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
			err = nil // commit what fits; the caller sends the rest
		}
		if err == nil {
			// Pending before visible: a reader that sees the key
			// also sees it pending until the sync.
			s.setPending(written, 1)
			if err = txn.Commit(); err != nil {
				s.setPending(written, -1)
			}
		}
		txn.Discard()
		if errors.Is(err, badger.ErrConflict) {
			continue // a concurrent Put wrote one of these keys: recheck
		}
		if err != nil {
			return 0, nil, err
		}
		s.statsMu.Lock()
		s.stats.Chunks += added.Chunks
		s.stats.EncodedBytes += added.EncodedBytes
		s.stats.RawBytes += added.RawBytes
		s.statsMu.Unlock()
		return n, written, nil
	}
}

// Delete implements PruneStore. Deletions are synced like puts.
func (s *BadgerStore) Delete(ctx context.Context, ids []cas.ChunkID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		if err := s.deleteTxn(ids[:n]); err != nil {
			return s.wrapErr("delete", err)
		}
		ids = ids[n:]
	}
	if err := s.gs.Sync(); err != nil {
		return s.wrapErr("sync", err)
	}
	return nil
}

// updateRetrying runs fn in a badger update transaction, again from the
// start whenever the commit conflicts with a concurrent one (fn must reset
// whatever it collects).
func updateRetrying(db *badger.DB, fn func(txn *badger.Txn) error) error {
	for {
		err := db.Update(fn)
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
}

func (s *BadgerStore) deleteTxn(ids []cas.ChunkID) error {
	var removed Stats
	if err := updateRetrying(s.db, func(txn *badger.Txn) error {
		removed = Stats{}
		for _, id := range ids {
			key := chunkKey(id)
			item, err := txn.Get(key)
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if err := item.Value(func(v []byte) error { removed.add(v, 1); return nil }); err != nil {
				return err
			}
			if err := txn.Delete(key); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	s.statsMu.Lock()
	s.stats.Chunks -= removed.Chunks
	s.stats.EncodedBytes -= removed.EncodedBytes
	s.stats.RawBytes -= removed.RawBytes
	s.statsMu.Unlock()
	return nil
}

// List implements PruneStore. It reads pages of keys, each from a fresh
// read snapshot, and calls fn outside any transaction, so fn may call into
// the store (including Delete). A chunk added or deleted during List may or
// may not be listed; every chunk present throughout is listed once.
func (s *BadgerStore) List(ctx context.Context, fn func(ChunkInfo) error) error {
	return listPaged(ctx, fn, s.listPage)
}

// listPaged calls fn for every chunk key ("c" + ID), reading them a page at
// a time with listPage(seek, max, infos), which appends up to max infos of
// keys from seek on, each page from a fresh read snapshot; fn runs outside
// any transaction.
func listPaged(ctx context.Context, fn func(ChunkInfo) error, listPage func(seek []byte, max int, infos *[]ChunkInfo) error) error {
	const page = 1024
	infos := make([]ChunkInfo, 0, page)
	seek := []byte{keyPrefixChunk}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		infos = infos[:0]
		if err := listPage(seek, page, &infos); err != nil {
			return err
		}
		for _, info := range infos {
			if err := fn(info); err != nil {
				return err
			}
		}
		if len(infos) < page {
			return nil
		}
		last := infos[len(infos)-1].ID
		seek = append(chunkKey(last), 0) // the smallest key after last
	}
}

func (s *BadgerStore) listPage(seek []byte, max int, infos *[]ChunkInfo) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{keyPrefixChunk}})
		defer it.Close()
		for it.Seek(seek); it.Valid() && len(*infos) < max; it.Next() {
			item := it.Item()
			var info ChunkInfo
			copy(info.ID[:], item.Key()[1:])
			if err := item.Value(func(v []byte) error { info.EncodedSize = len(v); return nil }); err != nil {
				return fmt.Errorf("blockd: list: %w", err)
			}
			*infos = append(*infos, info)
		}
		return nil
	})
}

// Stats implements StatStore.
func (s *BadgerStore) Stats() Stats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	return s.stats
}

// Usage implements UsageStore: the counters that Put and Delete keep
// (each transaction that adds or removes a chunk updates them once it has
// committed; a conflicting concurrent Put or Delete of the same chunk is
// retried, so a chunk is counted once), which OpenBadger counts.
func (s *BadgerStore) Usage(ctx context.Context) (Usage, error) {
	if err := ctx.Err(); err != nil {
		return Usage{}, err
	}
	if err := s.enter(); err != nil {
		return Usage{}, err
	}
	defer s.leave()
	return s.Stats().usage(), nil
}

// Syncs is the number of syncs Put and Delete have run (each shared by
// every Put that was waiting when it started).
func (s *BadgerStore) Syncs() int64 { return s.gs.Count() }

func (s *BadgerStore) wrapErr(op string, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("blockd: %s: %w: %w", op, ErrNoSpace, err)
	}
	return fmt.Errorf("blockd: %s: %w", op, err)
}

// badgerLogger sends badger's messages to slog; its info chatter is debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Debugf(f string, a ...any)   {}
