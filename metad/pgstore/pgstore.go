// Package pgstore is the metad.Store on PostgreSQL (pgx v5): every record
// of metad in one table of byte-string keys and values, so that the
// metadata lives in a database server that can be replicated and backed up
// apart from the metad host. docs/POSTGRES.md describes the schema and how
// to run it.
//
// Schema (version 1; Open creates or migrates it, under an advisory lock,
// and records the version in metad_schema):
//
//	metad_schema (version integer)                  -- one row
//	metad_kv     (key bytea PRIMARY KEY, value bytea NOT NULL)
//	metad_seq_<hex of name>                         -- one SEQUENCE per NextID name
//
// bytea compares byte-wise as unsigned bytes, shorter first on a common
// prefix, which is the key order metad.Store promises; a prefix scan is a
// range scan [prefix, successor(prefix)) of the primary key index.
//
// Transactions: Update runs fn in a SERIALIZABLE transaction and retries it
// on a serialization failure or deadlock (SQLSTATE 40001, 40P01), which the
// Store contract allows (fn may run more than once). View runs fn in a
// REPEATABLE READ READ ONLY transaction: one snapshot of committed data,
// which is what badger's View gives. Writes of an Update are kept in memory
// until fn returns (Get and Iterate see them merged with the table) and are
// then sent in one round trip: one INSERT … ON CONFLICT DO UPDATE over
// unnest() of arrays of keys and values, and one DELETE … = ANY() of an
// array, per 4096 keys, in a pgx.Batch. A large commit therefore costs a
// few statements, not a round trip per key. Iterate reads in pages of
// iteratePage rows, so fn may call Get while iterating.
//
// Durability: a transaction is durable when Update returns nil (the
// server's synchronous_commit, on by default); the store is not a
// metad.Syncer. An error from the commit itself because the connection
// broke leaves it unknown whether the transaction committed; Update then
// returns the error without retrying.
package pgstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"stasis/metad"
)

// Options tune the store. Zero fields take the defaults noted.
type Options struct {
	// MaxConns bounds the connections of the transaction pool. Default 16.
	MaxConns int32
	// Logger receives retries at Debug level. Nil: discarded.
	Logger *slog.Logger
}

// Store is the PostgreSQL metad.Store. Safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	// seqPool serves NextID on connections of its own: the Service calls
	// NextID inside Update, and with one pool a full pool of open
	// transactions would each wait for a connection to draw a number.
	seqPool *pgxpool.Pool
	log     *slog.Logger
	retries atomic.Uint64

	seqMu sync.Mutex
	seqs  map[string]*lease // under seqMu
}

// lease is a block of sequence numbers drawn at once: [next, end).
type lease struct{ next, end uint64 }

var (
	_ metad.Store   = (*Store)(nil)
	_ metad.Statser = (*Store)(nil)
)

const (
	// schemaVersion is the version Open migrates to.
	schemaVersion = 1
	// migrateLock is the advisory lock key that serialises migrations of
	// concurrent Opens ("metad" in ASCII).
	migrateLock = 0x6d65746164
	// seqLease is the increment of every sequence: NextID draws a block of
	// this many numbers per round trip (badger's store leases 1000).
	seqLease = 64
	// maxRetries bounds Update's attempts after serialization failures.
	maxRetries = 64
	// iteratePage is the rows Iterate fetches per query.
	iteratePage = 1024
	// writeChunk is the keys per INSERT or DELETE statement at commit.
	writeChunk = 4096
)

// migrations[i] moves the schema from version i to i+1.
var migrations = []string{
	`CREATE TABLE metad_kv (key bytea PRIMARY KEY, value bytea NOT NULL)`,
}

// Open connects to the database dsn (a postgres:// URL or key=value
// string) and creates or migrates the schema.
func Open(ctx context.Context, dsn string, o Options) (*Store, error) {
	if o.MaxConns < 0 {
		return nil, fmt.Errorf("%w: pgstore: negative MaxConns", metad.ErrInvalid)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: pgstore: %v", metad.ErrInvalid, err)
	}
	cfg.MaxConns = 16
	if o.MaxConns > 0 {
		cfg.MaxConns = o.MaxConns
	}
	scfg := cfg.Copy()
	scfg.MaxConns, scfg.MinConns = 2, 0
	s := &Store{log: o.Logger, seqs: map[string]*lease{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	if s.seqPool, err = pgxpool.NewWithConfig(ctx, scfg); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// migrate brings the schema to schemaVersion in one transaction under an
// advisory lock, so concurrent Opens of one database migrate once.
func (s *Store) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLock)); err != nil {
			return fmt.Errorf("pgstore: migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS metad_schema (version integer NOT NULL)`); err != nil {
			return fmt.Errorf("pgstore: create metad_schema: %w", err)
		}
		v := 0
		err := tx.QueryRow(ctx, `SELECT version FROM metad_schema`).Scan(&v)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if _, err := tx.Exec(ctx, `INSERT INTO metad_schema (version) VALUES (0)`); err != nil {
				return fmt.Errorf("pgstore: %w", err)
			}
		case err != nil:
			return fmt.Errorf("pgstore: read schema version: %w", err)
		}
		if v > schemaVersion {
			return fmt.Errorf("pgstore: the database has schema version %d, newer than this metad's %d", v, schemaVersion)
		}
		for ; v < schemaVersion; v++ {
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return fmt.Errorf("pgstore: migrate schema %d to %d: %w", v, v+1, err)
			}
		}
		_, err = tx.Exec(ctx, `UPDATE metad_schema SET version = $1`, schemaVersion)
		return err
	})
}

// Close closes the connection pools.
func (s *Store) Close() error {
	s.pool.Close()
	s.seqPool.Close()
	return nil
}

// StoreStats implements metad.Statser.
func (s *Store) StoreStats() metad.StoreStats {
	return metad.StoreStats{Retries: s.retries.Load()}
}

// View implements metad.Store.
func (s *Store) View(ctx context.Context, fn func(metad.Txn) error) error {
	return s.run(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, false, fn)
}

// Update implements metad.Store.
func (s *Store) Update(ctx context.Context, fn func(metad.Txn) error) error {
	return s.run(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable}, true, fn)
}

func (s *Store) run(ctx context.Context, opts pgx.TxOptions, write bool, fn func(metad.Txn) error) error {
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := s.attempt(ctx, opts, write, fn)
		if err == nil || !retryable(err) {
			return err
		}
		if attempt >= maxRetries {
			return fmt.Errorf("%w: gave up after %d attempts: %v", metad.ErrConflict, attempt+1, err)
		}
		s.retries.Add(1)
		s.log.Debug("retrying a transaction", "attempt", attempt+1, "err", err)
		d := time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 6)))
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// retryable reports a serialization failure or a deadlock: the transaction
// was rolled back and may simply run again.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

func (s *Store) attempt(ctx context.Context, opts pgx.TxOptions, write bool, fn func(metad.Txn) error) (err error) {
	tx, err := s.pool.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("pgstore: begin: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	t := &txn{ctx: ctx, tx: tx, write: write}
	ferr := fn(t)
	if t.err != nil {
		// The database failed a statement, and PostgreSQL has aborted the
		// transaction: that error is the cause whatever fn made of it
		// (a serialization failure must be seen to be retried).
		return t.err
	}
	if ferr != nil {
		return ferr
	}
	if !write {
		return nil
	}
	if err := t.flush(); err != nil {
		return err
	}
	// Not canceled half-way: a commit cut off by the context could have
	// committed without Update knowing.
	committed = true
	if err := tx.Commit(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("pgstore: commit: %w", err)
	}
	return nil
}

// NextID implements metad.Store with a sequence per name that advances by
// seqLease: one round trip draws seqLease numbers. Numbers left in a lease
// when the store closes are skipped.
func (s *Store) NextID(name string) (uint64, error) {
	s.seqMu.Lock()
	defer s.seqMu.Unlock()
	l := s.seqs[name]
	if l != nil && l.next < l.end {
		n := l.next
		l.next++
		return n, nil
	}
	ctx := context.Background()
	seq := seqName(name)
	var v int64
	err := s.seqPool.QueryRow(ctx, `SELECT nextval($1::regclass)`, seq).Scan(&v)
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "42P01" { // undefined_table: a new sequence
		if err = s.createSeq(ctx, seq); err == nil {
			err = s.seqPool.QueryRow(ctx, `SELECT nextval($1::regclass)`, seq).Scan(&v)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("pgstore: sequence %q: %w", name, err)
	}
	l = &lease{next: uint64(v), end: uint64(v) + seqLease}
	s.seqs[name] = l
	n := l.next
	l.next++
	return n, nil
}

func (s *Store) createSeq(ctx context.Context, seq string) error {
	_, err := s.seqPool.Exec(ctx, `CREATE SEQUENCE IF NOT EXISTS `+seq+` AS bigint START 1 INCREMENT `+fmt.Sprint(seqLease))
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P07") {
		return nil // another store created it at the same moment
	}
	return err
}

// seqName is the SQL name of sequence name: hex keeps any name a plain
// identifier; a long name is hashed to stay within 63 bytes.
func seqName(name string) string {
	h := hex.EncodeToString([]byte(name))
	if len(h) > 48 {
		sum := sha256.Sum256([]byte(name))
		h = "h" + hex.EncodeToString(sum[:16])
	}
	return "metad_seq_" + h
}

// txn is one transaction. Writes wait in w until the commit.
type txn struct {
	ctx    context.Context
	tx     pgx.Tx
	write  bool
	w      map[string]pending
	sorted []string // keys of w in order; nil when w changed since
	err    error    // the first database error: the transaction is dead
}

// pending is a buffered write: a value, or a delete.
type pending struct {
	val []byte
	del bool
}

func (t *txn) fail(err error) error {
	if t.err == nil {
		t.err = fmt.Errorf("pgstore: %w", err)
	}
	return t.err
}

func (t *txn) Get(key []byte) ([]byte, error) {
	if t.err != nil {
		return nil, t.err
	}
	if p, ok := t.w[string(key)]; ok {
		if p.del {
			return nil, metad.ErrNoKey
		}
		return bytes.Clone(p.val), nil
	}
	var v []byte
	err := t.tx.QueryRow(t.ctx, `SELECT value FROM metad_kv WHERE key = $1`, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, metad.ErrNoKey
	}
	if err != nil {
		return nil, t.fail(err)
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

func (t *txn) put(key []byte, p pending) error {
	if !t.write {
		return errors.New("pgstore: write in a read-only transaction")
	}
	if t.err != nil {
		return t.err
	}
	if t.w == nil {
		t.w = map[string]pending{}
	}
	if _, ok := t.w[string(key)]; !ok {
		t.sorted = nil
	}
	t.w[string(key)] = p
	return nil
}

func (t *txn) Set(key, val []byte) error {
	if val == nil {
		val = []byte{} // value is NOT NULL; an empty value is a value
	}
	return t.put(key, pending{val: val})
}

func (t *txn) Delete(key []byte) error { return t.put(key, pending{del: true}) }

// successor returns the least key greater than every key with the prefix,
// or nil when there is none (an empty or all-0xff prefix).
func successor(prefix []byte) []byte {
	for i := len(prefix) - 1; i >= 0; i-- {
		if prefix[i] != 0xff {
			s := bytes.Clone(prefix[:i+1])
			s[i]++
			return s
		}
	}
	return nil
}

func (t *txn) Iterate(prefix, start []byte, fn func(key, val []byte) error) error {
	if t.err != nil {
		return t.err
	}
	if start == nil || bytes.Compare(start, prefix) < 0 {
		start = prefix
	}
	if start == nil {
		start = []byte{} // pgx sends a nil slice as NULL, which compares to nothing
	}
	end := successor(prefix)
	// The transaction's own writes in range, in order.
	if t.sorted == nil && len(t.w) > 0 {
		t.sorted = make([]string, 0, len(t.w))
		for k := range t.w {
			t.sorted = append(t.sorted, k)
		}
		slices.Sort(t.sorted)
	}
	ov := t.sorted
	i, _ := slices.BinarySearch(ov, string(start))
	ov = ov[i:]
	if end != nil {
		j, _ := slices.BinarySearch(ov, string(end))
		ov = ov[:j]
	}
	emitOv := func(k string) error {
		p := t.w[k]
		if p.del {
			return nil
		}
		return fn([]byte(k), p.val)
	}
	from, inclusive := start, true
	for {
		rows, err := t.page(from, inclusive, end)
		if err != nil {
			return t.fail(err)
		}
		for _, r := range rows {
			// Own writes before this row first, then the row unless an own
			// write replaced or deleted it.
			for len(ov) > 0 && ov[0] < string(r.k) {
				if err := emitOv(ov[0]); err != nil {
					return stopped(err)
				}
				ov = ov[1:]
			}
			if len(ov) > 0 && ov[0] == string(r.k) {
				err = emitOv(ov[0])
				ov = ov[1:]
			} else {
				err = fn(r.k, r.v)
			}
			if err != nil {
				return stopped(err)
			}
		}
		if len(rows) < iteratePage {
			break
		}
		from, inclusive = rows[len(rows)-1].k, false
	}
	for _, k := range ov {
		if err := emitOv(k); err != nil {
			return stopped(err)
		}
	}
	return nil
}

func stopped(err error) error {
	if errors.Is(err, metad.ErrStop) {
		return nil
	}
	return err
}

type row struct{ k, v []byte }

// page reads up to iteratePage rows from from (inclusive or not) below end
// (nil: no bound), in key order.
func (t *txn) page(from []byte, inclusive bool, end []byte) ([]row, error) {
	op := ">"
	if inclusive {
		op = ">="
	}
	var (
		rows pgx.Rows
		err  error
	)
	if end == nil {
		rows, err = t.tx.Query(t.ctx, `SELECT key, value FROM metad_kv WHERE key `+op+` $1 ORDER BY key LIMIT $2`, from, iteratePage)
	} else {
		rows, err = t.tx.Query(t.ctx, `SELECT key, value FROM metad_kv WHERE key `+op+` $1 AND key < $2 ORDER BY key LIMIT $3`, from, end, iteratePage)
	}
	if err != nil {
		return nil, err
	}
	out := make([]row, 0, 64)
	var r row
	_, err = pgx.ForEachRow(rows, []any{&r.k, &r.v}, func() error {
		out = append(out, r)
		r = row{}
		return nil
	})
	return out, err
}

// flush sends the buffered writes: per writeChunk keys one upsert over
// arrays and one delete over an array, all in one batch (one round trip).
func (t *txn) flush() error {
	if len(t.w) == 0 {
		return nil
	}
	var (
		setK, setV, delK [][]byte
		b                pgx.Batch
	)
	queue := func() {
		if len(setK) > 0 {
			b.Queue(`INSERT INTO metad_kv (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[]) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`, setK, setV)
			setK, setV = nil, nil
		}
		if len(delK) > 0 {
			b.Queue(`DELETE FROM metad_kv WHERE key = ANY($1::bytea[])`, delK)
			delK = nil
		}
	}
	for k, p := range t.w {
		if p.del {
			delK = append(delK, []byte(k))
		} else {
			setK, setV = append(setK, []byte(k)), append(setV, p.val)
		}
		if len(setK) >= writeChunk || len(delK) >= writeChunk {
			queue()
		}
	}
	queue()
	if err := t.tx.SendBatch(t.ctx, &b).Close(); err != nil {
		return t.fail(err)
	}
	return nil
}
