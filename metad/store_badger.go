package metad

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// BadgerOptions tunes the badger backend. Zero fields take the defaults noted.
type BadgerOptions struct {
	// SyncWrites makes every committed transaction durable against power
	// loss (fsync). Without it a commit survives a process crash (SIGKILL)
	// but not a machine crash. Default false.
	SyncWrites bool
	// MemTableSize bounds one transaction too: badger refuses a transaction
	// over 15% of it (about MemTableSize/650 keys). Default 64 MiB, enough to
	// commit a manifest of ~100k chunks (6 GiB at 64 KiB chunks).
	MemTableSize int64
	// BlockCacheSize and IndexCacheSize; defaults 32 MiB and 16 MiB.
	BlockCacheSize, IndexCacheSize int64
	// ValueLogFileSize; default 256 MiB.
	ValueLogFileSize int64
	// Logger receives badger's own messages at Debug level (Warn for
	// warnings and errors). Nil: discarded.
	Logger *slog.Logger
}

// BadgerStore is the durable Store, on badger v4.
type BadgerStore struct {
	db   *badger.DB
	mu   sync.Mutex
	seqs map[string]*badger.Sequence
}

// maxRetries bounds Update's retries on badger.ErrConflict.
const maxRetries = 64

// OpenBadgerStore opens (creating if needed) a badger store in dir. Only
// one process can hold a directory open.
func OpenBadgerStore(dir string, o BadgerOptions) (*BadgerStore, error) {
	if dir == "" {
		return nil, errors.New("metad: badger store needs a directory")
	}
	mt := orDefault(o.MemTableSize, 64<<20)
	vt := min(int64(1<<20), mt*15/100/2) // badger wants it below its batch limit
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(o.SyncWrites).
		WithMemTableSize(mt).
		WithValueThreshold(vt).
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
	return &BadgerStore{db: db, seqs: map[string]*badger.Sequence{}}, nil
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
	return b.db.View(func(tx *badger.Txn) error { return fn(badgerTxn{tx}) })
}

// Update implements Store; it retries on conflict with a short random backoff.
func (b *BadgerStore) Update(ctx context.Context, fn func(Txn) error) error {
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := b.db.Update(func(tx *badger.Txn) error { return fn(badgerTxn{tx}) })
		switch {
		case err == nil:
			return nil
		case errors.Is(err, badger.ErrConflict):
			if attempt >= maxRetries {
				return fmt.Errorf("%w: gave up after %d attempts", ErrConflict, attempt+1)
			}
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

// Close releases the sequences and closes badger.
func (b *BadgerStore) Close() error {
	b.mu.Lock()
	var errs []error
	for _, s := range b.seqs {
		errs = append(errs, s.Release())
	}
	b.seqs = map[string]*badger.Sequence{}
	b.mu.Unlock()
	errs = append(errs, b.db.Close())
	return errors.Join(errs...)
}

type badgerTxn struct{ tx *badger.Txn }

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
	err := t.tx.Set(key, val)
	if errors.Is(err, badger.ErrTxnTooBig) {
		return fmt.Errorf("%w: %v", ErrTxnTooBig, err)
	}
	return err
}

func (t badgerTxn) Delete(key []byte) error {
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

// valueLogGC rewrites value-log files that are mostly garbage (large
// manifests live there) until none is left or stop closes.
func (b *BadgerStore) valueLogGC(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		if err := b.db.RunValueLogGC(0.5); err != nil {
			return // badger.ErrNoRewrite: nothing (more) to do
		}
	}
}
