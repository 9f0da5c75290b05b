package metad

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"

	"stasis/internal/badgersync"
)

// SyncMode chooses when the badger store's transactions reach stable
// storage. In every mode a committed transaction survives the process being
// killed (SIGKILL, a crash of metad): badger copies it into its
// memory-mapped write-ahead log (a *.mem file, and a *.vlog file for values
// of 1 MiB and more) before Update returns (badger v4 db.go writeRequests:
// vlog.write, then writeToLSM -> memTable.Put -> wal.writeEntry, before the
// request is marked done), and the kernel's page cache keeps those pages
// when the process dies. The modes differ in what survives a power loss or
// kernel crash.
type SyncMode uint8

const (
	// SyncNone never syncs: after a machine crash any suffix of recent
	// transactions may be lost. Sync is a no-op. For tests and scratch
	// stores; the zero value.
	SyncNone SyncMode = iota
	// SyncCommits writes transactions without an fsync and syncs on Sync
	// (which the Service calls for content commits, snapshot creation and
	// deletion, before GC deletes chunks from blockd, and on a client's
	// explicit request), plus in the background within FlushInterval of an
	// unsynced transaction. A Sync makes every earlier transaction durable,
	// so a machine crash loses at most the namespace changes of the last
	// FlushInterval that no later Sync covered, like ext4's commit interval.
	// Transactions that write a value of the value-log size are synced
	// before Update returns (see Update).
	SyncCommits
	// SyncAll syncs every transaction before Update returns (badger's
	// SyncWrites): one fsync per namespace change.
	SyncAll
)

// String returns the mode's name as ParseSyncMode accepts it.
func (m SyncMode) String() string {
	switch m {
	case SyncNone:
		return "none"
	case SyncCommits:
		return "commits"
	case SyncAll:
		return "all"
	}
	return fmt.Sprintf("SyncMode(%d)", uint8(m))
}

// ParseSyncMode parses "none", "commits" or "all".
func ParseSyncMode(s string) (SyncMode, error) {
	for _, m := range []SyncMode{SyncNone, SyncCommits, SyncAll} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("%w: sync mode %q: want none, commits or all", ErrInvalid, s)
}

// BadgerOptions tunes the badger backend. Zero fields take the defaults noted.
type BadgerOptions struct {
	// Sync is the durability mode (see SyncMode). Default SyncNone.
	Sync SyncMode
	// SyncWrites is the older spelling of Sync: SyncAll; when set it wins.
	SyncWrites bool
	// FlushInterval bounds, in SyncCommits mode, how long a transaction
	// stays unsynced: a background flusher syncs when it finds unsynced
	// transactions, at most this often. Default 1 s.
	FlushInterval time.Duration
	// MemTableSize bounds one transaction too: badger refuses a transaction
	// over 15% of it (about MemTableSize/650 keys). Default 64 MiB, enough to
	// commit a manifest of ~100k chunks (6 GiB at 64 KiB chunks).
	MemTableSize int64
	// BlockCacheSize and IndexCacheSize; defaults 32 MiB and 16 MiB.
	BlockCacheSize, IndexCacheSize int64
	// ValueLogFileSize; default 256 MiB.
	ValueLogFileSize int64
	// Logger receives badger's own messages at Debug level (Warn for
	// warnings and errors), and the flusher's errors. Nil: discarded.
	Logger *slog.Logger
}

func (o *BadgerOptions) validate() error {
	if o.Sync > SyncAll {
		return fmt.Errorf("%w: badger options: unknown sync mode %d", ErrInvalid, o.Sync)
	}
	if o.FlushInterval < 0 || o.MemTableSize < 0 || o.BlockCacheSize < 0 || o.IndexCacheSize < 0 || o.ValueLogFileSize < 0 {
		return fmt.Errorf("%w: badger options: negative size or interval", ErrInvalid)
	}
	return nil
}

// BadgerStore is the durable Store, on badger v4. In SyncCommits mode it is
// also a Syncer.
type BadgerStore struct {
	db     *badger.DB
	dir    string
	syncer *badgersync.Syncer
	mode   SyncMode
	log    *slog.Logger
	mu     sync.Mutex
	seqs   map[string]*badger.Sequence

	// Sync bookkeeping (SyncCommits mode). written counts committed
	// transactions, synced the value of written that the last successful
	// sync covered: synced < written means unsynced transactions exist.
	vlogMin   int64 // values this long or longer go to the value log
	written   atomic.Uint64
	synced    atomic.Uint64
	vlogDirty atomic.Bool // a value-log write since the last sync
	syncMu    sync.Mutex  // one disk sync at a time; later callers share it
	syncErr   error       // sticky, under syncMu
	failed    atomic.Bool // syncErr is set
	syncs     atomic.Uint64
	retries   atomic.Uint64
	stopFlush chan struct{}
	flushDone chan struct{}
}

var (
	_ Syncer     = (*BadgerStore)(nil)
	_ Maintainer = (*BadgerStore)(nil)
	_ Statser    = (*BadgerStore)(nil)
	_ txnLimiter = (*BadgerStore)(nil)
)

// maxRetries bounds Update's retries on badger.ErrConflict.
const maxRetries = 64

// OpenBadgerStore opens (creating if needed) a badger store in dir. Only
// one process can hold a directory open.
func OpenBadgerStore(dir string, o BadgerOptions) (*BadgerStore, error) {
	if dir == "" {
		return nil, errors.New("metad: badger store needs a directory")
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.SyncWrites {
		o.Sync = SyncAll
	}
	mt := orDefault(o.MemTableSize, 64<<20)
	vt := min(int64(1<<20), mt*15/100/2) // badger wants it below its batch limit
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(o.Sync == SyncAll).
		WithMemTableSize(mt).
		WithValueThreshold(vt).
		WithVerifyValueChecksum(true). // value-log values (≥ vt) are checked on read: a torn one is an error, never wrong data
		WithBlockCacheSize(orDefault(o.BlockCacheSize, 32<<20)).
		WithIndexCacheSize(orDefault(o.IndexCacheSize, 16<<20)).
		WithValueLogFileSize(orDefault(o.ValueLogFileSize, 256<<20)).
		WithNumCompactors(2).
		WithNumGoroutines(2).
		WithMetricsEnabled(false).
		WithLogger(badgerLogger{o.Logger})
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("metad: open badger in %s: %w", dir, err)
	}
	b := &BadgerStore{db: db, dir: dir, syncer: badgersync.New(dir), mode: o.Sync, log: o.Logger, seqs: map[string]*badger.Sequence{}, vlogMin: vt}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.mode == SyncCommits {
		every := o.FlushInterval
		if every == 0 {
			every = time.Second
		}
		b.stopFlush, b.flushDone = make(chan struct{}), make(chan struct{})
		go b.flushLoop(every)
	}
	return b, nil
}

func orDefault(v, d int64) int64 {
	if v > 0 {
		return v
	}
	return d
}

// DB exposes the badger handle (for value-log GC and backups).
func (b *BadgerStore) DB() *badger.DB { return b.db }

// View implements Store.
func (b *BadgerStore) View(ctx context.Context, fn func(Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.View(func(tx *badger.Txn) error { return fn(badgerTxn{tx: tx}) })
}

// Update implements Store; it retries on conflict with a short random backoff.
//
// In SyncCommits mode a transaction that wrote a value of vlogMin bytes or
// more is synced before Update returns. Such a value goes to the value log
// and only a pointer to it into the write-ahead log, and without a sync the
// kernel may write the pointer's page back before the value's: a power loss
// then leaves a key whose value cannot be read. (Badger with SyncWrites
// syncs the value log before it writes the pointers: value.go write.) The
// window that remains is the moment between the commit and this sync.
// Those values are manifests and chunk lists of files with tens of
// thousands of chunks, written by commits, which sync anyway.
func (b *BadgerStore) Update(ctx context.Context, fn func(Txn) error) error {
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		var marks txnMarks
		err := b.db.Update(func(tx *badger.Txn) error {
			marks = txnMarks{}
			return fn(badgerTxn{tx: tx, vlogMin: b.vlogMin, marks: &marks})
		})
		switch {
		case err == nil:
			if b.mode != SyncCommits || !marks.wrote {
				return nil // a transaction without writes commits nothing
			}
			big := marks.big
			if big {
				b.vlogDirty.Store(true) // before written moves: a sync that counts this transaction sees the flag
			}
			b.written.Add(1)
			if big {
				// The transaction is committed whatever the sync says; a
				// failure sticks and fails the caller's next Sync.
				if err := b.Sync(context.WithoutCancel(ctx)); err != nil {
					b.log.Error("sync after a value-log write failed", "err", err)
				}
			}
			return nil
		case errors.Is(err, badger.ErrConflict):
			if attempt >= maxRetries {
				return fmt.Errorf("%w: gave up after %d attempts", ErrConflict, attempt+1)
			}
			b.retries.Add(1)
			d := time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 6)))
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ctx.Err()
			}
		case errors.Is(err, badger.ErrTxnTooBig):
			return fmt.Errorf("%w: %v", ErrTxnTooBig, err)
		default:
			return err
		}
	}
}

// NextID implements Store with a badger sequence per name (leases of 1000).
func (b *BadgerStore) NextID(name string) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	seq, ok := b.seqs[name]
	if !ok {
		var err error
		seq, err = b.db.GetSequence(seqKey(name), 1000)
		if err != nil {
			return 0, err
		}
		b.seqs[name] = seq
	}
	for {
		n, err := seq.Next()
		if err != nil || n > 0 { // 0 is never handed out, so it can mean "none"
			return n, err
		}
	}
}

// Close stops the flusher, syncs, releases the sequences and closes badger.
func (b *BadgerStore) Close() error {
	var errs []error
	if b.stopFlush != nil {
		close(b.stopFlush)
		<-b.flushDone
		b.stopFlush = nil
		errs = append(errs, b.Sync(context.Background()))
	}
	b.mu.Lock()
	for _, s := range b.seqs {
		errs = append(errs, s.Release())
	}
	b.seqs = map[string]*badger.Sequence{}
	b.mu.Unlock()
	errs = append(errs, b.db.Close())
	return errors.Join(errs...)
}

type badgerTxn struct {
	tx      *badger.Txn
	vlogMin int64
	marks   *txnMarks // nil in View
}

// txnMarks records what an update transaction wrote.
type txnMarks struct {
	wrote bool // any Set or Delete
	big   bool // a value that goes to the value log
}

func (t badgerTxn) Get(key []byte) ([]byte, error) {
	it, err := t.tx.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrNoKey
	}
	if err != nil {
		return nil, err
	}
	return it.ValueCopy(nil)
}

func (t badgerTxn) Set(key, val []byte) error {
	if t.marks != nil {
		t.marks.wrote = true
		t.marks.big = t.marks.big || int64(len(val)) >= t.vlogMin
	}
	err := t.tx.Set(key, val)
	if errors.Is(err, badger.ErrTxnTooBig) {
		return fmt.Errorf("%w: %v", ErrTxnTooBig, err)
	}
	return err
}

func (t badgerTxn) Delete(key []byte) error {
	if t.marks != nil {
		t.marks.wrote = true
	}
	err := t.tx.Delete(key)
	if errors.Is(err, badger.ErrTxnTooBig) {
		return fmt.Errorf("%w: %v", ErrTxnTooBig, err)
	}
	return err
}

func (t badgerTxn) Iterate(prefix, start []byte, fn func(key, val []byte) error) error {
	opts := badger.DefaultIteratorOptions
	opts.Prefix = prefix
	opts.PrefetchValues = false
	it := t.tx.NewIterator(opts)
	defer it.Close()
	if start == nil || bytes.Compare(start, prefix) < 0 {
		start = prefix
	}
	for it.Seek(start); it.ValidForPrefix(prefix); it.Next() {
		item := it.Item()
		var ferr error
		if err := item.Value(func(v []byte) error { ferr = fn(item.Key(), v); return nil }); err != nil {
			return err
		}
		if ferr != nil {
			if errors.Is(ferr, ErrStop) {
				return nil
			}
			return ferr
		}
	}
	return nil
}

// badgerLogger forwards badger's logs to slog.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) log(level slog.Level, f string, a ...any) {
	if b.l != nil {
		b.l.Log(context.Background(), level, "badger: "+fmt.Sprintf(f, a...))
	}
}
func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelWarn, f, a...) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a...) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelDebug, f, a...) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(slog.LevelDebug, f, a...) }

// Maintain implements Maintainer: it rewrites value-log files that are
// mostly garbage (large manifests live there) until none is left or stop
// closes.
func (b *BadgerStore) Maintain(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		if err := b.runValueLogGC(); err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				b.log.Warn("value log GC", "err", err)
			}
			return // badger.ErrNoRewrite: nothing (more) to do
		}
	}
}

// runValueLogGC runs one badger value-log GC. It moves the live values of a
// file to the head of the log, then deletes the file. In SyncCommits mode
// the moved values are written without a sync, and a power loss after the
// delete would lose them; but badger deletes a rewritten file only when no
// iterator is open, else when the last one closes (value.go rewrite:
// filesToBeDeleted; decrIteratorCount). So an iterator is held across the
// rewrite and closed only after a sync.
func (b *BadgerStore) runValueLogGC() error {
	if b.mode != SyncCommits {
		return b.db.RunValueLogGC(0.5)
	}
	txn := b.db.NewTransaction(false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kVersion}})
	defer it.Close()
	if err := b.db.RunValueLogGC(0.5); err != nil {
		return err
	}
	b.vlogDirty.Store(true)
	b.written.Add(1)
	return b.Sync(context.Background())
}

// Sync implements Syncer. In SyncCommits mode it fsyncs every memtable
// write-ahead log of the store (and the newest value-log file when a value
// went there) unless no transaction committed since the last sync; in the
// other modes it returns nil at once.
//
// Why every *.mem file and not badger's DB.Sync: DB.Sync syncs only the
// active memtable's log and the newest value-log file (db.go Sync). A full
// memtable becomes immutable (db.go ensureRoomForWrite) without a sync of
// its log, and stays so until a background flush writes it to a table
// (synced: table.CreateTable msyncs, the manifest change is synced) and
// deletes the log. Writes in such a log would be outside DB.Sync. Every log
// still on disk is synced here; a log gone meanwhile was flushed to a
// synced table first. Older value-log files were synced when the log
// rotated (logFile.doneWriting truncates, which msyncs first), and new
// files' directory entries are synced when they are created (ristretto
// z.OpenMmapFileUsing). fsync through a second descriptor covers pages
// written through badger's shared mapping: Linux tracks the dirty pages of
// a shared file mapping in the page cache (msync(MS_SYNC) is an fsync of
// the range).
func (b *BadgerStore) Sync(ctx context.Context) error {
	if b.mode != SyncCommits {
		return nil
	}
	target := b.written.Load()
	if b.synced.Load() >= target && !b.failed.Load() {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	if b.syncErr != nil {
		return b.syncErr
	}
	if b.synced.Load() >= target {
		return nil // a sync that started after our transaction covered it
	}
	upto := b.written.Load()
	if err := b.syncFiles(b.vlogDirty.Swap(false)); err != nil {
		b.syncErr = fmt.Errorf("metad: syncing the store: %w", err)
		b.failed.Store(true)
		return b.syncErr
	}
	b.synced.Store(upto)
	b.syncs.Add(1)
	return nil
}

// Unsynced reports whether transactions committed since the last sync
// (always false outside SyncCommits mode).
func (b *BadgerStore) Unsynced() bool { return b.synced.Load() < b.written.Load() }

// Syncs is the number of disk syncs Sync has done.
func (b *BadgerStore) Syncs() uint64 { return b.syncs.Load() }

// MaxTxnWrites implements txnLimiter: badger's limit on the entries of one
// transaction.
func (b *BadgerStore) MaxTxnWrites() int { return int(b.db.MaxBatchCount()) }

// StoreStats implements Statser.
func (b *BadgerStore) StoreStats() StoreStats {
	return StoreStats{Syncs: b.syncs.Load(), Unsynced: b.Unsynced(), Retries: b.retries.Load()}
}

// syncFiles makes every committed transaction durable (badger's own
// DB.Sync misses memtables that filled up since: see internal/badgersync).
func (b *BadgerStore) syncFiles(vlog bool) error { return b.syncer.Sync(vlog) }

// flushLoop syncs unsynced transactions every interval until Close.
func (b *BadgerStore) flushLoop(every time.Duration) {
	defer close(b.flushDone)
	t := time.NewTicker(every)
	defer t.Stop()
	logged := false
	for {
		select {
		case <-b.stopFlush:
			return
		case <-t.C:
		}
		if !b.Unsynced() {
			continue
		}
		if err := b.Sync(context.Background()); err != nil && !logged {
			b.log.Error("background sync failed; transactions since the last good sync may not survive a power loss", "err", err)
			logged = true
		}
	}
}
