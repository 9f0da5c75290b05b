// Package faultstore wraps a blockd.PruneStore and injects failures: the
// Nth call of an operation fails, or every call from now on fails (a full
// disk). A failing Put may first store a prefix of its batch, whole chunks
// only, as a store that crashes mid-batch would. Tests use it to prove that
// errors surface and that nothing half-written becomes visible.
package faultstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"stasis/blockd"
	"stasis/cas"
)

// Op names an operation of the store ladder.
type Op string

const (
	OpGet     Op = "get"
	OpMissing Op = "missing"
	OpPut     Op = "put"
	OpDelete  Op = "delete"
	OpList    Op = "list"
	OpUsage   Op = "usage"
)

// ErrInjected is wrapped by every injected failure.
var ErrInjected = errors.New("faultstore: injected failure")

// ErrNoSpace is an injected out-of-space failure: it matches ErrInjected,
// blockd.ErrNoSpace and syscall.ENOSPC.
var ErrNoSpace = fmt.Errorf("%w: %w (%w)", ErrInjected, blockd.ErrNoSpace, syscall.ENOSPC)

type rule struct {
	nth     int // fail the nth later call (1-based); 0: every call
	err     error
	partial int // Put stores this many chunks of the batch before failing
}

// Store is the fault-injecting wrapper. It is safe for concurrent use.
type Store struct {
	inner blockd.PruneStore
	mu    sync.Mutex
	calls map[Op]int
	rules map[Op]*rule
}

var (
	_ blockd.PruneStore = (*Store)(nil)
	_ blockd.UsageStore = (*Store)(nil)
)

// New wraps inner.
func New(inner blockd.PruneStore) *Store {
	return &Store{inner: inner, calls: map[Op]int{}, rules: map[Op]*rule{}}
}

// FailNth makes the nth call of op from now on (1 is the next call) fail
// with err (wrapped with ErrInjected). For OpPut, the failing call first
// stores the first `partial` chunks of its batch.
func (s *Store) FailNth(op Op, nth int, err error, partial int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules[op] = &rule{nth: s.calls[op] + nth, err: err, partial: partial}
}

// FailAll makes every later call of op fail with err, until Clear.
func (s *Store) FailAll(op Op, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules[op] = &rule{err: err}
}

// Clear removes every rule.
func (s *Store) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.rules)
}

// Calls reports how many times op has been called.
func (s *Store) Calls(op Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// check counts a call and returns the rule that fails it, if any.
func (s *Store) check(op Op) *rule {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[op]++
	r := s.rules[op]
	if r == nil || (r.nth != 0 && r.nth != s.calls[op]) {
		return nil
	}
	if r.nth != 0 {
		delete(s.rules, op)
	}
	return r
}

func (r *rule) error(op Op) error {
	if errors.Is(r.err, ErrInjected) {
		return fmt.Errorf("%s: %w", op, r.err)
	}
	return fmt.Errorf("%s: %w: %w", op, ErrInjected, r.err)
}

// Get implements blockd.Store.
func (s *Store) Get(ctx context.Context, id cas.ChunkID) ([]byte, error) {
	if r := s.check(OpGet); r != nil {
		return nil, r.error(OpGet)
	}
	return s.inner.Get(ctx, id)
}

// Missing implements blockd.Store.
func (s *Store) Missing(ctx context.Context, ids []cas.ChunkID) ([]cas.ChunkID, error) {
	if r := s.check(OpMissing); r != nil {
		return nil, r.error(OpMissing)
	}
	return s.inner.Missing(ctx, ids)
}

// Put implements blockd.WriteStore.
func (s *Store) Put(ctx context.Context, chunks []blockd.Chunk) error {
	if r := s.check(OpPut); r != nil {
		if n := min(r.partial, len(chunks)); n > 0 {
			if err := s.inner.Put(ctx, chunks[:n]); err != nil {
				return err
			}
		}
		return r.error(OpPut)
	}
	return s.inner.Put(ctx, chunks)
}

// Delete implements blockd.PruneStore.
func (s *Store) Delete(ctx context.Context, ids []cas.ChunkID) error {
	if r := s.check(OpDelete); r != nil {
		return r.error(OpDelete)
	}
	return s.inner.Delete(ctx, ids)
}

// List implements blockd.PruneStore.
func (s *Store) List(ctx context.Context, fn func(blockd.ChunkInfo) error) error {
	if r := s.check(OpList); r != nil {
		return r.error(OpList)
	}
	return s.inner.List(ctx, fn)
}

// Stats passes through to the wrapped store when it keeps them.
func (s *Store) Stats() blockd.Stats {
	if ss, ok := s.inner.(blockd.StatStore); ok {
		return ss.Stats()
	}
	return blockd.Stats{}
}

// Usage implements blockd.UsageStore: the wrapped store's usage, an error
// wrapping errors.ErrUnsupported if it keeps none, or an injected failure.
func (s *Store) Usage(ctx context.Context) (blockd.Usage, error) {
	if r := s.check(OpUsage); r != nil {
		return blockd.Usage{}, r.error(OpUsage)
	}
	return blockd.UsageOf(ctx, s.inner)
}
