package metad

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
)

// MemStore is the in-memory Store: a sorted key slice and a map behind one
// lock. Update holds the write lock for the whole transaction (so there are
// never conflicts) and undoes its writes when fn fails. It is for tests.
type MemStore struct {
	mu     sync.RWMutex
	keys   []string // sorted
	vals   map[string][]byte
	closed bool
	seqMu  sync.Mutex // separate, so NextID works inside Update
	seqs   map[string]uint64
}

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore {
	return &MemStore{vals: map[string][]byte{}, seqs: map[string]uint64{}}
}

var errClosed = errors.New("metad store: closed")

// View implements Store.
func (m *MemStore) View(ctx context.Context, fn func(Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return errClosed
	}
	return fn(&memTxn{m: m})
}

// Update implements Store.
func (m *MemStore) Update(ctx context.Context, fn func(Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errClosed
	}
	t := &memTxn{m: m, write: true, undo: map[string]*[]byte{}}
	if err := fn(t); err != nil {
		t.rollback()
		return err
	}
	return nil
}

// NextID implements Store.
func (m *MemStore) NextID(name string) (uint64, error) {
	m.seqMu.Lock()
	defer m.seqMu.Unlock()
	m.seqs[name]++
	return m.seqs[name], nil
}

// Close implements Store.
func (m *MemStore) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

type memTxn struct {
	m     *MemStore
	write bool
	undo  map[string]*[]byte // original value (nil pointer: absent) of each key written
}

func (t *memTxn) Get(key []byte) ([]byte, error) {
	v, ok := t.m.vals[string(key)]
	if !ok {
		return nil, ErrNoKey
	}
	return bytes.Clone(v), nil
}

func (t *memTxn) remember(k string) {
	if _, done := t.undo[k]; done {
		return
	}
	if v, ok := t.m.vals[k]; ok {
		t.undo[k] = &v
	} else {
		t.undo[k] = nil
	}
}

func (t *memTxn) Set(key, val []byte) error {
	if !t.write {
		return errors.New("metad store: write in a read-only transaction")
	}
	k := string(key)
	t.remember(k)
	t.m.put(k, bytes.Clone(val))
	return nil
}

func (t *memTxn) Delete(key []byte) error {
	if !t.write {
		return errors.New("metad store: write in a read-only transaction")
	}
	k := string(key)
	t.remember(k)
	t.m.del(k)
	return nil
}

func (t *memTxn) rollback() {
	for k, v := range t.undo {
		if v == nil {
			t.m.del(k)
		} else {
			t.m.put(k, *v)
		}
	}
}

func (m *MemStore) put(k string, v []byte) {
	if _, ok := m.vals[k]; !ok {
		i, _ := slices.BinarySearch(m.keys, k)
		m.keys = slices.Insert(m.keys, i, k)
	}
	m.vals[k] = v
}

func (m *MemStore) del(k string) {
	if _, ok := m.vals[k]; !ok {
		return
	}
	delete(m.vals, k)
	if i, ok := slices.BinarySearch(m.keys, k); ok {
		m.keys = slices.Delete(m.keys, i, i+1)
	}
}

func (t *memTxn) Iterate(prefix, start []byte, fn func(key, val []byte) error) error {
	if start == nil || bytes.Compare(start, prefix) < 0 {
		start = prefix
	}
	i, _ := slices.BinarySearch(t.m.keys, string(start))
	for ; i < len(t.m.keys); i++ {
		k := t.m.keys[i]
		if len(k) < len(prefix) || k[:len(prefix)] != string(prefix) {
			break
		}
		if err := fn([]byte(k), t.m.vals[k]); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}
