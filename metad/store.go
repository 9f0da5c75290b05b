package metad

import (
	"context"
	"errors"
)

// Store is the transactional, ordered key-value store under the Service.
// The Service keeps every record in it (see keys.go for the schema); the
// badger backend (OpenBadgerStore) is the durable one, the memory backend
// (NewMemStore) serves fast unit tests, and metad/pgstore keeps the records
// in PostgreSQL. All pass one conformance suite (metad/storetest). Service
// code knows a backend only through this interface and the optional rungs
// below (Syncer, Maintainer, Statser, and txnLimiter in batch.go); it never
// asks for a concrete type.
//
// Contract:
//   - View runs fn on a consistent, read-only snapshot of the store.
//   - Update runs fn in a read-write transaction and commits it atomically:
//     after Update returns nil every write of fn is durable (per the
//     backend's sync setting) and visible to later transactions; after it
//     returns an error none is. fn may run more than once (the store retries
//     conflicting transactions), so it must not have side effects outside
//     the transaction. Update returns ErrConflict when retries run out and
//     ErrTxnTooBig when fn writes more than one transaction can hold.
//   - Keys and values handed to callbacks are valid only until the callback
//     returns; copy them to keep them. Values passed to Set are owned by the
//     store after the call.
//   - NextID returns increasing, never reused numbers per sequence name;
//     numbers may be skipped (for example after a restart).
//
// Implementations are safe for concurrent use.
type Store interface {
	View(ctx context.Context, fn func(Txn) error) error
	Update(ctx context.Context, fn func(Txn) error) error
	NextID(name string) (uint64, error)
	Close() error
}

// Txn is one transaction. Get returns ErrNoKey for an absent key. Iterate
// calls fn for every key with the prefix, in key order, starting at the
// first key >= start (start nil: the prefix itself), until fn returns an
// error; ErrStop ends the iteration without error. fn must not write to the
// transaction while iterating.
type Txn interface {
	Get(key []byte) ([]byte, error)
	Set(key, val []byte) error
	Delete(key []byte) error
	Iterate(prefix, start []byte, fn func(key, val []byte) error) error
}

// Syncer is the rung of a Store whose transactions can commit before they
// are durable against power loss (BadgerStore in SyncCommits mode).
//
// Contract: Sync returns nil only when every transaction whose Update
// returned before Sync was called is durable (on stable storage, surviving a
// machine crash), together with everything the store holds that was written
// earlier. A store that syncs every transaction, or never syncs (a test or
// scratch store), returns nil at once. After a failed Sync the store cannot
// tell which writes reached the disk, so implementations keep the error and
// fail every later Sync too. Safe for concurrent use; concurrent calls share
// one disk sync where they can.
type Syncer interface {
	Sync(ctx context.Context) error
}

// Maintainer is the rung of a Store that needs background upkeep (badger:
// value-log GC). The Service's GC loop calls Maintain after each pass; it
// does as much upkeep as is due and returns, early when stop closes. A
// store without upkeep does not implement it.
type Maintainer interface {
	Maintain(stop <-chan struct{})
}

// StoreStats are a store's own counters, exported on /metrics.
type StoreStats struct {
	Syncs    uint64 // disk syncs done by Sync (Syncer stores)
	Unsynced bool   // committed transactions wait for a Sync
	Retries  uint64 // transactions run again after a conflict
}

// Statser is the rung of a Store that reports StoreStats. Safe for
// concurrent use and cheap (no I/O): /metrics calls it on every scrape.
type Statser interface {
	StoreStats() StoreStats
}

// Store errors.
var (
	ErrNoKey     = errors.New("metad store: key not found")
	ErrStop      = errors.New("metad store: stop iteration")
	ErrTxnTooBig = errors.New("metad store: transaction too big")
)
